//! Endpoint routes from a hypervisor into a BIRD ToR's kernel: skog-bgp beside Calico's path,
//! on the same ToR in the same run.
//!
//! - skog-bgp: the clock starts at `SpeakerHandle::announce` (or `withdraw`).
//! - Calico's path: the clock starts when the routes are written to the hypervisor's kernel
//!   (device routes to a VM tap, over netlink, as Felix writes them); BIRD's kernel protocol on
//!   the hypervisor learns them and exports them to the ToR over BGP.
//!
//! Either clock stops when the last of the routes is in the ToR's kernel (or gone from it), as
//! seen by an rtnetlink multicast listener opened in the ToR's namespace before the run
//! ([`skog_testbed::RouteWatch`]: each RTM_NEWROUTE / RTM_DELROUTE is timestamped on arrival,
//! no polling, no `ip` spawned while timing).
//!
//! Figures:
//! - one endpoint (an IPv4 /32) added until its route is in the ToR's kernel, and removed until
//!   it is gone: median and p99 over many repetitions;
//! - convergence against the number of endpoints, 1 to 10,000 IPv6 /128s (the IPv4
//!   documentation ranges hold fewer than 10,000 hosts), announce and withdraw, median of a few
//!   repetitions: `BENCH_SERIES` lines that `cargo xtask bench` draws; the 10,000 point is also
//!   a `BENCH` table row.
//!
//! `cargo bench -p skog-bgp --bench announce [-- --quick]`; needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use common::{speaker_config, start_speaker};
use ipnet::IpNet;
use skog_bgp::Shutdown;
use skog_testbed::{RouteWatch, Testbed, TorDaemon, VmSpec};

const TIMEOUT: Duration = Duration::from_secs(120);
/// The endpoint of the single-endpoint figure (above the testbed's VM addresses).
const SINGLE: &str = "198.51.100.200/32";
const REFERENCE: &str = "Calico: route in the hypervisor's kernel + BIRD kernel protocol + BGP";

/// How much to measure.
struct Plan {
    /// Endpoint counts of the convergence series.
    sizes: &'static [usize],
    /// Repetitions per point of the series.
    reps: usize,
    /// Repetitions of the single-endpoint figure.
    single_reps: usize,
}

const FULL: Plan = Plan {
    sizes: &[1, 10, 100, 1_000, 10_000],
    reps: 5,
    single_reps: 200,
};
const QUICK: Plan = Plan {
    sizes: &[1, 100, 10_000],
    reps: 1,
    single_reps: 20,
};

/// The `i`-th IPv6 endpoint route of the series.
fn host(i: usize) -> IpNet {
    let base = 0x2001_0db8_0100_0000_0000_0000_0001_0000u128;
    IpNet::from(IpAddr::V6(Ipv6Addr::from(base + i as u128)))
}

/// Hands a set of endpoint routes to the path under test.
type RouteAction<'a> = Box<dyn FnMut(&[IpNet]) + 'a>;

/// How endpoint routes get from the hypervisor to the ToR.
struct Path<'a> {
    label: &'static str,
    announce: RouteAction<'a>,
    withdraw: RouteAction<'a>,
}

/// Milliseconds to announce and to withdraw one set of routes, one entry per repetition.
#[derive(Default, Clone)]
struct Samples {
    announce: Vec<f64>,
    withdraw: Vec<f64>,
}

/// Everything measured for one path.
struct Figures {
    label: &'static str,
    single: Samples,
    /// (number of endpoints, samples), in the order of [`Plan::sizes`].
    series: Vec<(usize, Samples)>,
}

/// Milliseconds from `start` to `end`; `end` before `start` would mean the ToR changed on its
/// own, which must not be counted as a (zero) measurement.
fn ms_between(start: Instant, end: Instant) -> f64 {
    let d = end
        .checked_duration_since(start)
        .expect("the ToR's kernel changed before the routes were handed over");
    d.as_secs_f64() * 1000.0
}

/// Announces `dsts` and waits until all are in the ToR's kernel, then withdraws them and waits
/// until all are gone, `reps` times.
fn converge(tor: &RouteWatch, path: &mut Path, dsts: &[IpNet], reps: usize) -> Samples {
    let mut samples = Samples::default();
    for _ in 0..reps {
        tor.wait_for(dsts, false, TIMEOUT)
            .expect("the ToR still holds routes of the previous round");
        let t0 = Instant::now();
        (path.announce)(dsts);
        let done = tor.wait_for(dsts, true, TIMEOUT).unwrap();
        samples.announce.push(ms_between(t0, done));
        let t0 = Instant::now();
        (path.withdraw)(dsts);
        let done = tor.wait_for(dsts, false, TIMEOUT).unwrap();
        samples.withdraw.push(ms_between(t0, done));
    }
    samples
}

fn measure(tor: &RouteWatch, path: &mut Path, plan: &Plan) -> Figures {
    let single = [SINGLE.parse().unwrap()];
    eprintln!("{}: single endpoint x{}", path.label, plan.single_reps);
    let single = converge(tor, path, &single, plan.single_reps);
    let series = plan
        .sizes
        .iter()
        .map(|&n| {
            let dsts: Vec<IpNet> = (0..n).map(host).collect();
            let s = converge(tor, path, &dsts, plan.reps);
            eprintln!(
                "{}: {n} endpoints: announce {:.2} ms, withdraw {:.2} ms (median of {})",
                path.label,
                median(&s.announce),
                median(&s.withdraw),
                plan.reps
            );
            (n, s)
        })
        .collect();
    Figures {
        label: path.label,
        single,
        series,
    }
}

/// The value at quantile `q` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// One table row: skog's samples beside the reference's.
fn bench_line(name: &str, target: &str, skog: &[f64], reference: &[f64]) {
    println!(
        "BENCH {{\"name\":\"{name}\",\"unit\":\"ms\",\"skog_median\":{:.3},\"skog_p99\":{:.3},\"reference\":\"{REFERENCE}\",\"reference_median\":{:.3},\"reference_p99\":{:.3},\"target\":\"{target}\"}}",
        median(skog),
        quantile(skog, 0.99),
        median(reference),
        quantile(reference, 0.99),
    );
}

/// One chart of `convergence.svg`: the median of every point of every path.
fn series_line(name: &str, title: &str, paths: &[&Figures], pick: fn(&Samples) -> &[f64]) {
    let series: Vec<String> = paths
        .iter()
        .map(|f| {
            let points: Vec<String> = f
                .series
                .iter()
                .map(|(n, s)| format!("[{n},{:.3}]", median(pick(s))))
                .collect();
            let label = f.label;
            format!(
                "{{\"label\":\"{label}\",\"points\":[{}]}}",
                points.join(",")
            )
        })
        .collect();
    println!(
        "BENCH_SERIES {{\"name\":\"{name}\",\"title\":\"{title}\",\"x_label\":\"endpoints\",\"unit\":\"ms\",\"file\":\"convergence\",\"series\":[{}]}}",
        series.join(",")
    );
}

fn main() {
    let plan = if std::env::args().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };

    let mut tb = Testbed::new("bench_bgp_announce").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", common::HV_ASN).unwrap();
    tb.link(hv, tor).unwrap();
    let vm = tb.add_vm(hv, VmSpec::numbered("vm1", 0)).unwrap();
    tb.start_tor(tor).unwrap();
    let watch = tb.tor(tor).unwrap().ns().watch_routes().unwrap();

    // skog-bgp.
    let speaker = start_speaker(&tb, hv, speaker_config(&tb, hv, None));
    speaker.wait_established(&["tor1_v4", "tor1_v6"]);
    let handle = speaker.handle.clone();
    let mut path = Path {
        label: "skog-bgp",
        announce: Box::new(|p| handle.announce(p.to_vec()).unwrap()),
        withdraw: Box::new(|p| handle.withdraw(p.to_vec()).unwrap()),
    };
    let skog = measure(&watch, &mut path, &plan);
    drop(path);
    speaker.stop(Shutdown::Withdraw("benchmark over".into()));

    // Calico's path on the same ToR: Felix's routes through the VM's tap, BIRD on the hypervisor.
    tb.start_reference_bird(hv).unwrap();
    let tap = tb.vm(vm).unwrap().tap.clone();
    let felix = tb.hv(hv).unwrap().ns().route_writer(&tap).unwrap();
    let mut path = Path {
        label: "BIRD kernel path (Calico)",
        announce: Box::new(|p| felix.add(p).unwrap()),
        withdraw: Box::new(|p| felix.delete(p).unwrap()),
    };
    // Both sessions carry a route before the clock runs.
    let probe = [SINGLE.parse().unwrap(), host(0)];
    (path.announce)(&probe);
    watch.wait_for(&probe, true, TIMEOUT).unwrap();
    (path.withdraw)(&probe);
    watch.wait_for(&probe, false, TIMEOUT).unwrap();
    let calico = measure(&watch, &mut path, &plan);

    if watch.resyncs() > 0 {
        println!(
            "note: the ToR watcher lost notifications {} times; those rounds are upper bounds",
            watch.resyncs()
        );
    }
    bench_line(
        "bgp_endpoint_add_to_tor_kernel",
        "p99 <= 20 ms",
        &skog.single.announce,
        &calico.single.announce,
    );
    bench_line(
        "bgp_endpoint_remove_from_tor_kernel",
        "-",
        &skog.single.withdraw,
        &calico.single.withdraw,
    );
    let at_10k = |f: &Figures| {
        f.series
            .iter()
            .find(|(n, _)| *n == 10_000)
            .unwrap()
            .1
            .clone()
    };
    let (s, c) = (at_10k(&skog), at_10k(&calico));
    bench_line(
        "bgp_announce_10k_to_tor_kernel",
        "<= 500 ms",
        &s.announce,
        &c.announce,
    );
    bench_line(
        "bgp_withdraw_10k_from_tor_kernel",
        "<= 500 ms",
        &s.withdraw,
        &c.withdraw,
    );
    let paths = [&skog, &calico];
    series_line(
        "announce convergence",
        "Announce: until all routes are in the ToR's kernel",
        &paths,
        |s| &s.announce,
    );
    series_line(
        "withdraw convergence",
        "Withdraw: until all routes are gone from the ToR's kernel",
        &paths,
        |s| &s.withdraw,
    );
}
