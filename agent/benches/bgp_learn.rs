//! 100,000 routes learned from a BIRD ToR until all are in the hypervisor's kernel, installed
//! by the agent's own path: skog-bgp's route events fed to the dataplane `Programmer`; and the
//! memory held with 10,000 announced and 100,000 learned routes. Beside BIRD as Calico runs it
//! on the hypervisor (its kernel protocol installing what BGP learned), same test bed and run.
//!
//! Memory: skog's figure is the growth of this process's RSS from before the speaker and the
//! programmer started (runtime, RIBs, the programmer's desired state and kernel view), with
//! the allocator set as skogd sets it (`skog_agent::allocator`); BIRD's is its whole RSS. The 10,000 announced routes are the speaker's export set (in production
//! the programmer also holds them as endpoint routes; BIRD learns them from the kernel).
//!
//! Besides the BENCH lines it prints, on stderr, where skog's time goes: when the speaker held
//! every route, when it had handed the last one to the programmer, and when the kernel held
//! them all.
//!
//! `cargo bench -p skog-agent --bench bgp_learn [-- --quick]`; needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use skog_agent::daemon::learned::Burst;
use skog_agent::dataplane::{DataplaneConfig, Programmer, ProgrammerHandle};
use skog_bgp::config::{DEFAULT_SELECTION_DEFERRAL, ImportPolicy};
use skog_bgp::fsm::State;
use skog_bgp::{PeerConfig, RouteEvent, Shutdown, Speaker, SpeakerConfig, SpeakerHandle};
use skog_testbed::{Netns, Testbed, TorDaemon, TorId, TorOptions, VmSpec, wait_until};

const LEARNED: u32 = 100_000;
const ANNOUNCED: u32 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(300);
const HV_ASN: u32 = 4_200_000_001;

fn learned(i: u32) -> IpNet {
    let a = Ipv6Addr::from(0x2001_0db8_0200_0000_0000_0000_0000_0000u128 + u128::from(i) + 1);
    IpNet::from(IpAddr::V6(a))
}

fn announced(i: u32) -> IpNet {
    let a = Ipv6Addr::from(0x2001_0db8_0100_0000_0000_0000_0001_0000u128 + u128::from(i));
    IpNet::from(IpAddr::V6(a))
}

/// Counts the hypervisor's learned IPv6 routes of route protocol `proto` (a dump: used only
/// outside the timed windows, to check what the FIB count said). Streams `ip`'s output line by
/// line: this process's RSS is a figure, so the check must not hold megabytes of text.
fn count(ns: &Netns, proto: &str) -> usize {
    let mut ip = Command::new("ip")
        .args(["-n", ns.name(), "-6", "route", "show", "proto", proto])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ip.stdout.take().unwrap());
    let (mut n, mut line) = (0, Vec::with_capacity(256));
    while lines.read_until(b'\n', &mut line).unwrap() > 0 {
        n += usize::from(line.starts_with(b"2001:db8:200::"));
        line.clear();
    }
    assert!(ip.wait().unwrap().success(), "ip route show failed");
    n
}

/// The number of routes in the hypervisor's IPv6 FIB (`fib_rt_entries` of `rt6_stats`), read
/// in O(1): polling it every millisecond costs nothing, where dumping 100,000 routes every
/// 20 ms took a quarter of the CPU and held the IPv6 table's lock against the writers timed.
struct Ipv6Fib(File);

impl Ipv6Fib {
    fn open(ns: &Netns) -> Ipv6Fib {
        // Opened from a thread inside the namespace, the file reports that namespace's FIB.
        Ipv6Fib(
            ns.enter(|| File::open("/proc/thread-self/net/rt6_stats"))
                .unwrap()
                .unwrap(),
        )
    }

    fn routes(&mut self) -> usize {
        let mut text = String::new();
        self.0.seek(SeekFrom::Start(0)).unwrap();
        self.0.read_to_string(&mut text).unwrap();
        // fib_nodes fib_route_nodes fib_rt_alloc fib_rt_entries ..., in hex.
        let entries = text.split_whitespace().nth(3).unwrap();
        usize::from_str_radix(entries, 16).unwrap()
    }

    /// Polls until the FIB holds `want` routes; returns when it first did.
    fn wait(&mut self, want: usize) -> Instant {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let have = self.routes();
            let now = Instant::now();
            if have == want {
                return now;
            }
            assert!(now < deadline, "{have} of {want} IPv6 routes");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Waits until the hypervisor has the ToR's IPv6 default route, installed by `proto`.
fn wait_default_route(ns: &Netns, proto: &str) {
    wait_until("the IPv6 default route", TIMEOUT, || {
        let out = Command::new("ip")
            .args([
                "-n",
                ns.name(),
                "-6",
                "route",
                "show",
                "default",
                "proto",
                proto,
            ])
            .output()
            .unwrap();
        if out.stdout.is_empty() {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        } else {
            Ok(())
        }
    })
    .unwrap();
}

fn rss_kib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Releases the ToR's extra routes, waits until the hypervisor's kernel has them all, takes
/// them back and waits until they are gone; checks that they were `proto`'s routes; returns
/// the first wait in milliseconds.
fn learn_once(tb: &Testbed, tor: TorId, hv_ns: &Netns, fib: &mut Ipv6Fib, proto: &str) -> f64 {
    let t = tb.tor(tor).unwrap();
    let before = fib.routes();
    let t0 = Instant::now();
    t.cli("enable extra6").unwrap();
    let done = fib.wait(before + LEARNED as usize);
    assert_eq!(count(hv_ns, proto), LEARNED as usize, "routes of {proto}");
    t.cli("disable extra6").unwrap();
    fib.wait(before);
    assert_eq!(count(hv_ns, proto), 0, "routes of {proto} left");
    ms(done - t0)
}

/// The time the consumer handed the last route event to the programmer.
type LastHandOff = Arc<Mutex<Option<Instant>>>;

/// What skogd does with the speaker's events (`skog_agent::daemon::learned`), noting when the
/// last burst was handed over.
async fn feed(
    mut events: tokio::sync::mpsc::UnboundedReceiver<RouteEvent>,
    programmer: ProgrammerHandle,
    last: LastHandOff,
) {
    while let Some(event) = events.recv().await {
        Burst::take(event, &mut events)
            .send(&programmer)
            .await
            .unwrap();
        *last.lock().unwrap() = Some(Instant::now());
    }
}

fn speaker_config(tb: &Testbed, hv: skog_testbed::HvId) -> SpeakerConfig {
    let h = tb.hv(hv).unwrap();
    let u = &h.uplinks[0];
    let mut peer = PeerConfig::new("tor1_v6", IpAddr::from(u.tor_v6), 65001);
    peer.local_address = Some(IpAddr::from(u.hv_v6));
    peer.connect_retry = Duration::from_secs(1);
    peer.import = ImportPolicy {
        default_route: true,
        prefixes: vec!["2001:db8:200::/48".parse().unwrap()],
    };
    SpeakerConfig {
        asn: h.asn,
        router_id: u.hv_v4,
        listen: Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 179))),
        peers: vec![peer],
        graceful_restart: None,
        export: (0..ANNOUNCED).map(announced).collect(),
        selection_deferral: DEFAULT_SELECTION_DEFERRAL,
    }
}

fn wait_established(rt: &tokio::runtime::Runtime, speaker: &SpeakerHandle) {
    wait_until("the v6 session", Duration::from_secs(60), || {
        let p = rt.block_on(speaker.peers()).unwrap().remove(0);
        if p.state == State::Established {
            Ok(())
        } else {
            Err(format!("{:?} {:?}", p.state, p.last_error))
        }
    })
    .unwrap();
}

fn main() {
    // The allocator as skogd sets it: this process stands in for skogd's memory.
    skog_agent::allocator::tune();
    let quick = std::env::args().any(|a| a == "--quick");
    // Five: on this shared 2-core machine a repetition now and then takes 20–40 % longer (the
    // first one often does: tables grow), and with three, two such made the median.
    let reps = if quick { 1 } else { 5 };

    let mut tb = Testbed::new("bench_bgp_learn").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    tb.link(hv, tor).unwrap();
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

    // skog: the speaker and the route programmer on one runtime inside the hypervisor.
    let rss_before = rss_kib("self");
    let dataplane = DataplaneConfig::default();
    let proto = dataplane.learned_protocol.to_string();
    let rt = tb.hv(hv).unwrap().ns().tokio_runtime(2).unwrap();
    let cfg = speaker_config(&tb, hv);
    let last = LastHandOff::default();
    let feed_last = Arc::clone(&last);
    let (speaker, programmer) = rt
        .block_on(rt.spawn(async move {
            let (endpoint_events, _) = tokio::sync::mpsc::unbounded_channel();
            let (programmer, _join) = Programmer::start(dataplane, endpoint_events).await.unwrap();
            programmer.desired_complete().await.unwrap();
            programmer.learned_complete().await.unwrap();
            let (speaker, events) = Speaker::start(cfg).await.unwrap();
            tokio::spawn(feed(events, programmer.clone(), feed_last));
            (speaker, programmer)
        }))
        .unwrap();
    wait_established(&rt, &speaker);
    let hv_ns = tb.hv(hv).unwrap().ns();
    // The ToR's default route first, so that the FIB counts below are the extra routes' alone.
    wait_default_route(hv_ns, &proto);
    let mut fib = Ipv6Fib::open(hv_ns);
    let skog: Vec<f64> = (0..reps)
        .map(|_| learn_once(&tb, tor, hv_ns, &mut fib, &proto))
        .collect();
    // Where the time goes: release again and note when the speaker's Loc-RIB holds every
    // route, when the last one was handed to the programmer (whose queue pushes back), and
    // when the kernel has them all.
    let before = fib.routes();
    let t0 = Instant::now();
    tb.tor(tor).unwrap().cli("enable extra6").unwrap();
    wait_until("the speaker to accept every route", TIMEOUT, || {
        let accepted = rt.block_on(speaker.peers()).unwrap()[0].accepted;
        // The ToR's default route besides the extra ones.
        if accepted > LEARNED as usize {
            Ok(())
        } else {
            Err(accepted.to_string())
        }
    })
    .unwrap();
    let in_speaker = Instant::now();
    let in_kernel = fib.wait(before + LEARNED as usize);
    let handed_over = last.lock().unwrap().unwrap();
    let snapshot = rt.block_on(programmer.snapshot()).unwrap();
    eprintln!(
        "skog: all {LEARNED} routes in the speaker after {:.0} ms, the last handed to the \
         programmer after {:.0} ms, all in the kernel after {:.0} ms ({} kernel writes and {} \
         resyncs so far)",
        ms(in_speaker - t0),
        ms(handed_over - t0),
        ms(in_kernel - t0),
        snapshot.kernel_writes,
        snapshot.resyncs
    );
    let skog_rss = rss_kib("self") - rss_before;
    tb.tor(tor).unwrap().cli("disable extra6").unwrap();
    fib.wait(before);
    rt.block_on(speaker.shutdown(Shutdown::Withdraw("benchmark over".into())))
        .unwrap();
    rt.block_on(programmer.shutdown()).unwrap();
    rt.shutdown_timeout(Duration::from_secs(5));

    // BIRD on the hypervisor, as Calico runs it, with the same 10,000 routes to announce.
    tb.start_reference_bird(hv).unwrap();
    let hv_ns = tb.hv(hv).unwrap().ns();
    let batch: String = (0..ANNOUNCED)
        .map(|i| format!("route add {} dev {tap}\n", announced(i)))
        .collect();
    let file = tb.dir().join("announced.batch");
    std::fs::write(&file, batch).unwrap();
    hv_ns
        .ip(&["-force", "-batch", file.to_str().unwrap()])
        .unwrap();
    wait_default_route(hv_ns, "bird");
    let bird: Vec<f64> = (0..reps)
        .map(|_| learn_once(&tb, tor, hv_ns, &mut fib, "bird"))
        .collect();
    let before = fib.routes();
    tb.tor(tor).unwrap().cli("enable extra6").unwrap();
    fib.wait(before + LEARNED as usize);
    let bird_pid = hv_ns.pids().first().copied().unwrap().to_string();
    let bird_rss = rss_kib(&bird_pid);

    eprintln!("skog: each repetition {skog:.0?} ms; BIRD: {bird:.0?} ms");
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
