//! Shared by the benchmarks: a large cloud model, a namespace to apply it in, timing and the
//! `BENCH` line. Every benchmark measures Skog beside `nft -f` of the equivalent text, run the
//! same way (through `ip netns exec`) in the same namespace.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use skog_policy::model::{Action, Endpoint, Icmp, Policy, PolicyModel, Protocol, Rule};
use skog_policy::netlink::NfWriter;
use skog_policy::{Applier, Nft};
use skog_testbed::{HvId, Testbed};

pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// A test bed with one hypervisor namespace to load rules into.
pub fn bed(label: &str) -> (Testbed, String) {
    let mut tb = Testbed::new(label).unwrap();
    tb.add_hypervisor("hv1", 65101).unwrap();
    let ns = tb.hv(HvId(0)).unwrap().ns().name().to_owned();
    (tb, ns)
}

/// `nft` in the bed's namespace, with room for a large table.
pub fn nft(ns: &str) -> Nft {
    Nft::new()
        .in_netns(ns)
        .with_timeout(Duration::from_secs(60))
}

/// An applier for the bed's namespace: nfnetlink opened there, `nft` as the fallback.
pub fn applier(tb: &Testbed, nft: &Nft) -> Applier {
    let writer = tb
        .hv(HvId(0))
        .unwrap()
        .ns()
        .enter(NfWriter::open)
        .unwrap()
        .unwrap();
    Applier::new(nft.clone()).with_netlink(writer)
}

pub fn sg_selector(i: usize) -> String {
    format!("has(sg.projectcalico.org/openstack-sg{i})")
}

pub fn sg_id(i: usize) -> String {
    format!("ossg.default.sg{i}")
}

pub const DEFAULT_SG: usize = 0;

fn v4(i: usize) -> IpNet {
    format!("198.51.{}.{}/32", 100 + i / 250, 1 + i % 250)
        .parse()
        .unwrap()
}

fn v6(i: usize) -> IpNet {
    format!("2001:db8:100::{:x}/128", 0x1000 + i)
        .parse()
        .unwrap()
}

/// 20 ingress rules of an OpenStack security group: ports, ranges, ICMP, remote groups.
fn sg_rules(i: usize, endpoints: usize) -> Vec<Rule> {
    let mut rules = Vec::new();
    let tcp = |ports: Vec<String>| {
        let mut r = Rule::new(Action::Allow);
        r.protocol = Some(Protocol::Name("TCP".into()));
        r.destination.ports = ports;
        r
    };
    for k in 0..8 {
        rules.push(tcp(vec![(1000 + 10 * i + k).to_string()]));
    }
    for k in 0..4 {
        let mut r = tcp(vec![format!("{}:{}", 20000 + k * 100, 20050 + k * 100)]);
        r.protocol = Some(Protocol::Name(
            if k % 2 == 0 { "TCP" } else { "UDP" }.into(),
        ));
        r.source.nets = vec![format!("192.0.2.{}/32", k * 8).parse().unwrap()];
        rules.push(r);
    }
    let mut ping = Rule::new(Action::Allow);
    ping.protocol = Some(Protocol::Name("ICMP".into()));
    ping.icmp = Some(Icmp {
        r#type: Some(8),
        code: None,
    });
    rules.push(ping);
    for k in 0..6 {
        let mut r = tcp(vec![(5000 + k).to_string()]);
        r.source.selector = Some(sg_selector(1 + (i + k) % endpoints));
        rules.push(r);
    }
    let mut from_default = Rule::new(Action::Allow);
    from_default.source.selector = Some(sg_selector(DEFAULT_SG));
    rules.push(from_default);
    assert_eq!(rules.len(), 20);
    rules
}

/// `endpoints` VMs, each in its own security group of 20 rules (so nothing is shared but the
/// "default" group every VM is in, whose rule every endpoint references).
pub fn cloud(endpoints: usize) -> PolicyModel {
    let mut m = PolicyModel::default();
    m.policies.insert(
        sg_id(DEFAULT_SG),
        Policy {
            ingress: Some(vec![]),
            egress: Some(vec![Rule::new(Action::Allow)]),
        },
    );
    for i in 1..=endpoints {
        m.policies.insert(
            sg_id(i),
            Policy {
                ingress: Some(sg_rules(i, endpoints)),
                egress: Some(vec![Rule::new(Action::Allow)]),
            },
        );
        let nets = vec![v4(i), v6(i)];
        m.selectors
            .entry(sg_selector(i))
            .or_insert_with(BTreeSet::new)
            .extend(nets.clone());
        m.selectors
            .entry(sg_selector(DEFAULT_SG))
            .or_insert_with(BTreeSet::new)
            .extend(nets.clone());
        m.endpoints.insert(
            format!("port{i}"),
            Endpoint {
                interface: format!("tap{i:08x}-00"),
                mac: None,
                ip_networks: nets,
                ip_nats: vec![],
                tiers: vec![vec![sg_id(DEFAULT_SG), sg_id(i)]],
            },
        );
    }
    m
}

/// Times `f` `n` times; returns sorted durations.
pub fn time_n<F: FnMut(usize)>(n: usize, mut f: F) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..n)
        .map(|k| {
            let t = Instant::now();
            f(k);
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Prints the `BENCH` line `cargo xtask bench` collects.
pub fn report(
    name: &str,
    skog: &[Duration],
    reference: &str,
    reference_times: &[Duration],
    target: &str,
) {
    println!(
        "BENCH {{\"name\":\"{name}\",\"unit\":\"ms\",\"skog_median\":{},\"skog_p99\":{},\"reference\":\"{reference}\",\"reference_median\":{},\"target\":\"{target}\"}}",
        ms(pct(skog, 0.5)),
        ms(pct(skog, 0.99)),
        ms(pct(reference_times, 0.5)),
    );
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
