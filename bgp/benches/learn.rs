//! 100,000 routes learned from a BIRD ToR until all are in the hypervisor's kernel, and the
//! memory held with 10,000 announced and 100,000 learned routes: skog-bgp beside BIRD as Calico
//! runs it on the hypervisor, in the same test bed and run.
//!
//! skog-bgp only emits route events; the agent's route programmer installs them. Until that
//! exists, this benchmark installs the events with `ip -batch` (everything queued at once, one
//! batch per wake-up), which is what a batching programmer does, minus netlink batching.
//! Memory: skog's figure is the growth of this process's RSS from before the speaker started
//! (runtime, RIBs, event consumer); BIRD's is its whole RSS.
//!
//! `cargo bench -p skog-bgp --bench learn [-- --quick]`; needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use common::speaker_config;
use ipnet::IpNet;
use skog_bgp::config::ImportPolicy;
use skog_bgp::{RouteEvent, Shutdown, Speaker};
use skog_testbed::{Netns, Testbed, TorDaemon, TorOptions, VmSpec};

const LEARNED: u32 = 100_000;
const ANNOUNCED: u32 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(300);

fn learned(i: u32) -> IpNet {
    let a = Ipv6Addr::from(0x2001_0db8_0200_0000_0000_0000_0000_0000u128 + u128::from(i) + 1);
    IpNet::from(IpAddr::V6(a))
}

fn announced(i: u32) -> IpNet {
    let a = Ipv6Addr::from(0x2001_0db8_0100_0000_0000_0000_0001_0000u128 + u128::from(i));
    IpNet::from(IpAddr::V6(a))
}

/// Polls the hypervisor's kernel until it holds `want` learned routes of protocol `proto`.
fn wait_count(ns: &Netns, proto: &str, want: usize) -> Instant {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = Command::new("ip")
            .args(["-n", ns.name(), "-6", "route", "show", "proto", proto])
            .output()
            .unwrap();
        let now = Instant::now();
        let have = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("2001:db8:200::"))
            .count();
        if have == want {
            return now;
        }
        assert!(now < deadline, "{have} of {want} routes ({proto})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rss_kib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn ip_batch(ns: &str, text: &str) {
    let file = std::env::temp_dir().join(format!("skog-learn-{}.batch", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let _ = Command::new("ip")
        .args(["-n", ns, "-force", "-batch"])
        .arg(&file)
        .status();
    let _ = std::fs::remove_file(file);
}

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Releases the ToR's extra routes, waits until the hypervisor's kernel has them all, takes
/// them back and waits until they are gone; returns the first wait in milliseconds.
fn learn_once(tb: &Testbed, tor: skog_testbed::TorId, hv_ns: &Netns, proto: &str) -> f64 {
    let t = tb.tor(tor).unwrap();
    let t0 = Instant::now();
    t.cli("enable extra6").unwrap();
    let done = wait_count(hv_ns, proto, LEARNED as usize);
    t.cli("disable extra6").unwrap();
    wait_count(hv_ns, proto, 0);
    (done - t0).as_secs_f64() * 1000.0
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 3 };

    let mut tb = Testbed::new("bench_bgp_learn").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", common::HV_ASN).unwrap();
    let up = tb.link(hv, tor).unwrap();
    tb.set_tor_options(
        tor,
        TorOptions {
            extra_routes: (0..LEARNED).map(learned).collect(),
            ..TorOptions::default()
        },
    )
    .unwrap();
    tb.start_tor(tor).unwrap();
    let vm = tb.add_vm(hv, VmSpec::numbered("vm1", 0)).unwrap();
    let tap = tb.vm(vm).unwrap().tap.clone();
    let hv_ns_name = tb.hv(hv).unwrap().ns().name().to_owned();

    // skog-bgp, its events installed with ip -batch.
    let rss_before = rss_kib("self");
    let mut cfg = speaker_config(&tb, hv, None);
    for p in &mut cfg.peers {
        p.import = ImportPolicy {
            default_route: true,
            prefixes: vec!["2001:db8:200::/48".parse().unwrap()],
        };
    }
    cfg.export = (0..ANNOUNCED).map(announced).collect();
    let rt = tb.hv(hv).unwrap().ns().tokio_runtime(2).unwrap();
    let (handle, mut events) = rt.block_on(rt.spawn(Speaker::start(cfg))).unwrap().unwrap();
    let gw = up.tor_v6;
    let ns = hv_ns_name.clone();
    rt.spawn(async move {
        while let Some(first) = events.recv().await {
            let mut batch = String::new();
            let mut add = |e: RouteEvent| match e {
                RouteEvent::Install { prefix, .. } if prefix.addr().is_ipv6() => {
                    let _ = writeln!(batch, "route replace {prefix} via {gw} proto bgp");
                }
                RouteEvent::Remove { prefix } if prefix.addr().is_ipv6() => {
                    let _ = writeln!(batch, "route del {prefix} proto bgp");
                }
                _ => {}
            };
            add(first);
            while let Ok(e) = events.try_recv() {
                add(e);
            }
            let ns = ns.clone();
            let _ = tokio::task::spawn_blocking(move || ip_batch(&ns, &batch)).await;
        }
    });
    let running = common::Running {
        rt,
        handle,
        learned: Default::default(),
        events: Default::default(),
    };
    running.wait_established(&["tor1_v6"]);
    let hv_ns = tb.hv(hv).unwrap().ns();
    let skog: Vec<f64> = (0..reps)
        .map(|_| learn_once(&tb, tor, hv_ns, "bgp"))
        .collect();
    tb.tor(tor).unwrap().cli("enable extra6").unwrap();
    wait_count(hv_ns, "bgp", LEARNED as usize);
    let skog_rss = rss_kib("self") - rss_before;
    tb.tor(tor).unwrap().cli("disable extra6").unwrap();
    running.stop(Shutdown::Withdraw("benchmark over".into()));

    // BIRD on the hypervisor, as Calico runs it, with the same 10,000 routes to announce.
    tb.start_reference_bird(hv).unwrap();
    let hv_ns = tb.hv(hv).unwrap().ns();
    let text: String = (0..ANNOUNCED)
        .map(|i| format!("route add {} dev {tap}\n", announced(i)))
        .collect();
    ip_batch(&hv_ns_name, &text);
    std::thread::sleep(Duration::from_secs(2)); // sessions up
    let bird: Vec<f64> = (0..reps)
        .map(|_| learn_once(&tb, tor, hv_ns, "bird"))
        .collect();
    tb.tor(tor).unwrap().cli("enable extra6").unwrap();
    wait_count(hv_ns, "bird", LEARNED as usize);
    let bird_pid = hv_ns.pids().first().copied().unwrap().to_string();
    let bird_rss = rss_kib(&bird_pid);

    let (sm, sp) = median(skog);
    let (bm, _) = median(bird);
    println!(
        "BENCH {{\"name\":\"bgp_learn_100k_to_hv_kernel\",\"unit\":\"ms\",\"skog_median\":{sm:.1},\"skog_p99\":{sp:.1},\"reference\":\"BIRD on the hypervisor (Calico)\",\"reference_median\":{bm:.1},\"target\":\"<= 1.0x BIRD\"}}"
    );
    println!(
        "BENCH {{\"name\":\"bgp_rss_10k_announced_100k_learned\",\"unit\":\"MiB\",\"skog_median\":{:.1},\"skog_p99\":{:.1},\"reference\":\"BIRD on the hypervisor (Calico)\",\"reference_median\":{:.1},\"target\":\"<= 3x BIRD\"}}",
        skog_rss / 1024.0,
        skog_rss / 1024.0,
        bird_rss / 1024.0
    );
}
