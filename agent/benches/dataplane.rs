//! Route programmer benchmarks, each beside `ip` doing the same work in the same namespace:
//! programming 10,000 IPv6 host routes plus 254 IPv4 host routes with permanent ARP entries
//! into an empty table and removing them (`ip -batch` as reference), and the latency from
//! "tap came up" (the link-up netlink request sent) to "route present" (the Announce event,
//! sent once the route is in the kernel). `--quick` runs few repetitions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use skog_agent::dataplane::{DataplaneConfig, DesiredEndpoint, MacAddr, RouteEvent};
use skog_testbed::{Netns, Testbed};
use support::{InNamespace, block_on};

const TAPS: usize = 10;
const V6_ROUTES: usize = 10_000;
const V4_ROUTES: usize = 254;

fn endpoints() -> Vec<DesiredEndpoint> {
    let v6 = (0..V6_ROUTES).map(|i| {
        let ip = Ipv6Addr::from(
            u128::from(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0)) + i as u128 + 1,
        );
        (IpAddr::V6(ip), i)
    });
    let v4 = (0..V4_ROUTES).map(|i| (IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8 + 1)), i));
    v6.chain(v4)
        .map(|(ip, i)| DesiredEndpoint {
            id: format!("ep-{ip}"),
            interface: format!("btap{}", i % TAPS),
            mac: MacAddr([0xfa, 0x16, 0x3e, 0, (i >> 8) as u8, i as u8]),
            addresses: vec![ip.into()],
            floating_ips: vec![],
            ipv6_gateway: None,
        })
        .collect()
}

fn ip_batch(ns: &Netns, dir: &std::path::Path, name: &str, lines: &[String]) -> Duration {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);
    let started = Instant::now();
    ns.ip(&["-batch", path.to_str().unwrap()]).unwrap();
    started.elapsed()
}

fn reference_lines(eps: &[DesiredEndpoint], add: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for ep in eps {
        let ip = ep.addresses[0];
        let dev = &ep.interface;
        if add {
            lines.push(format!("route replace {ip} dev {dev} proto 90 metric 1024"));
            if ip.addr().is_ipv4() {
                lines.push(format!(
                    "neigh replace {} lladdr {} dev {dev} nud permanent",
                    ip.addr(),
                    ep.mac
                ));
            }
        } else {
            lines.push(format!("route del {ip} dev {dev} proto 90 metric 1024"));
            if ip.addr().is_ipv4() {
                lines.push(format!("neigh del {} dev {dev}", ip.addr()));
            }
        }
    }
    lines
}

/// Sets a link up or down over netlink from inside the namespace; returns when the request was
/// sent and when the kernel acknowledged it.
fn set_link(ns: &Netns, name: &str, up: bool) -> (Instant, Instant) {
    let name = name.to_owned();
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let msg = rtnetlink::LinkUnspec::new_with_name(&name);
            let msg = if up { msg.up() } else { msg.down() }.build();
            let sent = Instant::now();
            handle.link().set(msg).execute().await.unwrap();
            (sent, Instant::now())
        })
    })
    .unwrap()
}

fn median_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let p99 = v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1];
    (v[v.len() / 2], p99)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print(name: &str, skog: Vec<f64>, reference: &str, reference_times: Vec<f64>, target: &str) {
    let (m, p) = median_p99(skog);
    let (rm, _) = median_p99(reference_times);
    println!(
        "BENCH {{\"name\":\"{name}\",\"unit\":\"ms\",\"skog_median\":{m:.2},\"skog_p99\":{p:.2},\"reference\":\"{reference}\",\"reference_median\":{rm:.2},\"target\":\"{target}\"}}"
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 2 } else { 5 };
    let mut tb = Testbed::new("bench_dataplane").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    for t in 0..TAPS {
        ns.ip(&[
            "link",
            "add",
            &format!("btap{t}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("bpeer{t}"),
        ])
        .unwrap();
        ns.ip(&["link", "set", &format!("bpeer{t}"), "up"]).unwrap();
        ns.ip(&["link", "set", &format!("btap{t}"), "up"]).unwrap();
    }
    let eps = endpoints();
    let total = eps.len();
    let (mut add, mut del, mut ref_add, mut ref_del) = (vec![], vec![], vec![], vec![]);
    let p = InNamespace::start(ns, DataplaneConfig::default());
    p.complete();
    for _ in 0..reps {
        let started = Instant::now();
        block_on(p.handle.set_endpoints(eps.clone())).unwrap();
        let snap = p.snapshot();
        add.push(ms(started.elapsed()));
        assert_eq!(snap.routes_programmed, total, "{:?}", snap.last_apply);
        let started = Instant::now();
        block_on(
            p.handle
                .remove_endpoints(eps.iter().map(|e| e.id.clone()).collect()),
        )
        .unwrap();
        let snap = p.snapshot();
        del.push(ms(started.elapsed()));
        assert_eq!(snap.routes_programmed, 0);

        ref_add.push(ms(ip_batch(
            ns,
            tb.dir(),
            "add.batch",
            &reference_lines(&eps, true),
        )));
        ref_del.push(ms(ip_batch(
            ns,
            tb.dir(),
            "del.batch",
            &reference_lines(&eps, false),
        )));
    }
    print(
        "dataplane_program_10k_routes",
        add,
        "ip -batch",
        ref_add,
        "<= 1.0x ip -batch",
    );
    print(
        "dataplane_remove_10k_routes",
        del,
        "ip -batch",
        ref_del,
        "<= 1.0x ip -batch",
    );

    // Tap up -> route present (announced): one endpoint on a veth that goes down and up.
    let mut p = p;
    let mut ep = eps[0].clone();
    ep.id = "latency".into();
    ep.interface = "lat0".into();
    ns.ip(&[
        "link", "add", "lat0", "type", "veth", "peer", "name", "lat0p",
    ])
    .unwrap();
    ns.ip(&["link", "set", "lat0p", "up"]).unwrap();
    p.set(ep);
    let _ = p.snapshot();
    let (mut latency, mut reference) = (vec![], vec![]);
    for _ in 0..reps * 10 {
        let _ = p.take_events();
        let (sent, acked) = set_link(ns, "lat0", true);
        reference.push(ms(acked - sent));
        loop {
            match p.events.blocking_recv() {
                Some(RouteEvent::Announce(_)) => break,
                Some(RouteEvent::Withdraw(_)) => {}
                None => panic!("programmer stopped"),
            }
        }
        latency.push(ms(sent.elapsed()));
        let present = ns
            .ip(&["-6", "route", "show", "dev", "lat0", "proto", "83"])
            .unwrap();
        assert!(
            !present.is_empty(),
            "announced before the route was in the kernel"
        );
        set_link(ns, "lat0", false);
        while !matches!(
            p.events.blocking_recv(),
            Some(RouteEvent::Withdraw(_)) | None
        ) {}
    }
    print(
        "dataplane_tap_up_to_route",
        latency,
        "the link-up netlink request itself (sent to acked)",
        reference,
        "route present within a few ms of the link event",
    );
    p.stop();
}
