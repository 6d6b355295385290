//! Endpoint routes from the hypervisor into a BIRD ToR's kernel: skog-bgp beside Calico's
//! path (routes added with `ip -batch`, learned by BIRD's kernel protocol on the hypervisor,
//! exported to the ToR), in the same test bed and run.
//!
//! Figures: 10,000 host routes announced until all are in the ToR's kernel, withdrawn until
//! all are gone, and one endpoint added until its route is in the ToR's kernel. For the bulk
//! figures the ToR's kernel is polled (`ip -6 route show proto bird`, a few ms per poll: `ip
//! monitor` loses events in such bursts); single routes are watched with `ip monitor route`.
//! Both paths are measured alike. IPv6 /128s: the IPv4
//! documentation ranges hold fewer than 10,000 hosts.
//!
//! `cargo bench -p skog-bgp --bench announce [-- --quick]`; needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv6Addr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{speaker_config, start_speaker};
use ipnet::IpNet;
use skog_bgp::Shutdown;
use skog_testbed::{HvId, Netns, Testbed, TorDaemon, VmSpec};

const ROUTES: u32 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(120);

fn host(i: u32) -> IpNet {
    let addr = Ipv6Addr::from(0x2001_0db8_0100_0000_0000_0000_0001_0000u128 + u128::from(i));
    IpNet::from(IpAddr::V6(addr))
}

/// `ip monitor route` in the ToR: every added or deleted route with its arrival time.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<(Instant, bool, IpNet)>,
}

impl Monitor {
    fn start(ns: &Netns) -> Monitor {
        let mut child = Command::new("ip")
            .args(["-n", ns.name(), "-6", "monitor", "route"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let now = Instant::now();
                let (deleted, rest) = match line.strip_prefix("Deleted ") {
                    Some(rest) => (true, rest),
                    None => (false, line.as_str()),
                };
                let Some(first) = rest.split_whitespace().next() else {
                    continue;
                };
                let prefix = first
                    .parse::<IpNet>()
                    .ok()
                    .or_else(|| first.parse::<IpAddr>().ok().map(IpNet::from));
                if let Some(p) = prefix
                    && tx.send((now, deleted, p)).is_err()
                {
                    return;
                }
            }
        });
        // Let `ip monitor` subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        Monitor { child, lines }
    }

    /// Forgets what was seen so far.
    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// Waits until every prefix of `want` was added (or deleted); returns the last time.
    fn wait_all(&self, want: &HashSet<IpNet>, deleted: bool) -> Instant {
        let mut seen = HashSet::new();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, del, p) = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{} of {} seen", seen.len(), want.len()));
            if del == deleted && want.contains(&p) {
                seen.insert(p);
                if seen.len() == want.len() {
                    return at;
                }
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Measurements of one path: bulk announce, bulk withdraw, single endpoint latencies.
#[derive(Default)]
struct Figures {
    announce: Vec<f64>,
    withdraw: Vec<f64>,
    single: Vec<f64>,
}

/// Polls the ToR's kernel until it holds `want` of our bulk routes; returns when it saw it.
fn wait_count(tor: &Netns, want: usize) -> Instant {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = Command::new("ip")
            .args(["-n", tor.name(), "-6", "route", "show", "proto", "bird"])
            .output()
            .unwrap();
        let now = Instant::now();
        let have = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("2001:db8:100::1:"))
            .count();
        if have == want {
            return now;
        }
        assert!(
            now < deadline,
            "{have} of {want} routes in the ToR's kernel"
        );
    }
}

fn measure(
    tor: &Netns,
    monitor: &Monitor,
    reps: usize,
    singles: u32,
    announce: &mut dyn FnMut(&[IpNet]),
    withdraw: &mut dyn FnMut(&[IpNet]),
) -> Figures {
    let all: Vec<IpNet> = (0..ROUTES).map(host).collect();
    let mut f = Figures::default();
    for _ in 0..reps {
        let t0 = Instant::now();
        announce(&all);
        f.announce.push(ms(wait_count(tor, all.len()) - t0));
        let t0 = Instant::now();
        withdraw(&all);
        f.withdraw.push(ms(wait_count(tor, 0) - t0));
    }
    for i in 0..singles {
        let one = [host(ROUTES + i)];
        let want: HashSet<IpNet> = one.iter().copied().collect();
        monitor.drain();
        let t0 = Instant::now();
        announce(&one);
        f.single.push(ms(monitor.wait_all(&want, false) - t0));
        withdraw(&one);
        monitor.wait_all(&want, true);
    }
    f
}

fn ip_batch(ns: &Netns, dev: &str, verb: &str, prefixes: &[IpNet]) {
    let file = std::env::temp_dir().join(format!("skog-bench-{}.batch", std::process::id()));
    let text: String = prefixes
        .iter()
        .map(|p| format!("route {verb} {p} dev {dev}\n"))
        .collect();
    std::fs::write(&file, text).unwrap();
    let ok = Command::new("ip")
        .args(["-n", ns.name(), "-batch"])
        .arg(&file)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ip -batch {verb}");
    let _ = std::fs::remove_file(file);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (reps, singles) = if quick { (1, 20) } else { (5, 200) };

    let mut tb = Testbed::new("bench_bgp_announce").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", common::HV_ASN).unwrap();
    tb.link(hv, tor).unwrap();
    tb.start_tor(tor).unwrap();
    let monitor = Monitor::start(tb.tor(tor).unwrap().ns());

    // skog-bgp.
    let speaker = start_speaker(&tb, hv, speaker_config(&tb, hv, None));
    speaker.wait_established(&["tor1_v6"]);
    let handle = speaker.handle.clone();
    let h2 = handle.clone();
    let tor_ns = tb.tor(tor).unwrap().ns();
    let skog = measure(
        tor_ns,
        &monitor,
        reps,
        singles,
        &mut |p| handle.announce(p.to_vec()).unwrap(),
        &mut |p| h2.withdraw(p.to_vec()).unwrap(),
    );
    speaker.stop(Shutdown::Withdraw("benchmark over".into()));

    // Calico's path on the same ToR: Felix's routes point at a VM's tap.
    let vm = tb.add_vm(hv, VmSpec::numbered("vm1", 0)).unwrap();
    let tap = tb.vm(vm).unwrap().tap.clone();
    tb.start_reference_bird(hv).unwrap();
    let ns = tb.hv(HvId(0)).unwrap().ns();
    // The first route tells us the sessions are up.
    let probe = [host(ROUTES + singles + 1)];
    ip_batch(ns, &tap, "add", &probe);
    monitor.wait_all(&probe.iter().copied().collect(), false);
    ip_batch(ns, &tap, "del", &probe);
    monitor.wait_all(&probe.iter().copied().collect(), true);
    let tor_ns = tb.tor(tor).unwrap().ns();
    let calico = measure(
        tor_ns,
        &monitor,
        reps,
        singles,
        &mut |p| ip_batch(ns, &tap, "add", p),
        &mut |p| ip_batch(ns, &tap, "del", p),
    );

    let reference = "Calico: ip -batch on the hypervisor + BIRD kernel protocol + BGP";
    for (name, target, s, c) in [
        (
            "bgp_announce_10k_to_tor_kernel",
            "<= 500 ms",
            skog.announce,
            calico.announce,
        ),
        (
            "bgp_withdraw_10k_from_tor_kernel",
            "<= 500 ms",
            skog.withdraw,
            calico.withdraw,
        ),
        (
            "bgp_endpoint_add_to_tor_kernel",
            "p99 <= 20 ms",
            skog.single,
            calico.single,
        ),
    ] {
        let (sm, sp) = stats(s);
        let (cm, _) = stats(c);
        println!(
            "BENCH {{\"name\":\"{name}\",\"unit\":\"ms\",\"skog_median\":{sm:.3},\"skog_p99\":{sp:.3},\"reference\":\"{reference}\",\"reference_median\":{cm:.3},\"target\":\"{target}\"}}"
        );
    }
}
