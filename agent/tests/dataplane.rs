//! The route programmer in real namespaces: a hypervisor with VMs behind veth taps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use skog_agent::dataplane::{DataplaneConfig, LearnedNextHop, LearnedRoute, RouteEvent, TapState};
use skog_testbed::{KernelNextHop, KernelRoute, Netns, Testbed, TorDaemon, VmSpec, wait_until};
use support::{InNamespace, add_gateway_addresses, block_on, endpoint_of};

const CONVERGE: Duration = Duration::from_secs(10);

fn routes_on(ns: &Netns, dev: &str) -> Vec<KernelRoute> {
    let mut all = ns.kernel_routes(false).unwrap();
    all.extend(ns.kernel_routes(true).unwrap());
    all.retain(|r| r.devices.iter().any(|d| d == dev));
    all
}

fn has_route(ns: &Netns, dst: &str, dev: &str) -> Result<(), String> {
    let dst: IpNet = dst.parse().unwrap();
    let routes = routes_on(ns, dev);
    if routes.iter().any(|r| r.dst == dst && r.protocol == "83") {
        Ok(())
    } else {
        Err(format!("{routes:?}"))
    }
}

fn no_route(ns: &Netns, dst: &str, dev: &str) -> Result<(), String> {
    has_route(ns, dst, dev).map_or(Ok(()), |()| Err(format!("{dst} still on {dev}")))
}

/// A test bed with one hypervisor linked to `N` ToRs (not started).
fn hypervisor_with_uplinks<const N: usize>(
    label: &str,
) -> (Testbed, skog_testbed::HvId, [skog_testbed::Uplink; N]) {
    let mut tb = Testbed::new(label).unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let uplinks = std::array::from_fn(|i| {
        let tor = tb
            .add_tor(&format!("tor{}", i + 1), TorDaemon::Bird, 65100)
            .unwrap();
        tb.link(hv, tor).unwrap()
    });
    (tb, hv, uplinks)
}

/// Sends `ops` through the netlink driver alone (batches of 4) inside `ns`; which succeeded.
fn apply_in(ns: &Netns, ops: Vec<skog_agent::dataplane::reconcile::Op>) -> Vec<bool> {
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nl =
                skog_agent::dataplane::netlink::Netlink::open(4, Duration::from_secs(5)).unwrap();
            let outcomes = nl.apply(&ops).await;
            outcomes.iter().map(Result::is_ok).collect()
        })
    })
    .unwrap()
}

/// A learned route to `prefix` through `gateways` (ECMP when several), interface left to
/// the kernel, as skog-bgp's routes are.
fn learned_via(prefix: IpNet, gateways: impl IntoIterator<Item = IpAddr>) -> LearnedRoute {
    LearnedRoute {
        prefix,
        next_hops: gateways
            .into_iter()
            .map(|gateway| LearnedNextHop {
                gateway,
                interface: None,
            })
            .collect(),
    }
}

#[test]
fn vms_ping_their_gateway_and_each_other_through_programmed_taps() {
    let mut tb = Testbed::new("dp_ping").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let vm1 = tb.add_vm(hv, VmSpec::numbered("vm1", 1)).unwrap();
    let vm2 = tb.add_vm(hv, VmSpec::numbered("vm2", 2)).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    add_gateway_addresses(ns);
    let p = InNamespace::start(ns, DataplaneConfig::default());
    p.set(endpoint_of(&tb, vm1));
    p.set(endpoint_of(&tb, vm2));
    p.complete();
    let tap1 = tb.vm(vm1).unwrap().tap.clone();

    let detail = ns.ip(&["route", "show", "198.51.100.11/32"]).unwrap();
    assert!(
        detail.contains(&format!("dev {tap1} proto 83 scope link metric 1024")),
        "{detail}"
    );
    let neigh = ns
        .ip(&["neigh", "show", "198.51.100.11", "dev", &tap1])
        .unwrap();
    assert!(
        neigh.contains("lladdr fa:16:3e:00:00:01 PERMANENT"),
        "{neigh}"
    );
    let proxy = ns
        .ip(&["-6", "neigh", "show", "proxy", "dev", &tap1])
        .unwrap();
    assert!(proxy.contains("2001:db8:100::1"), "{proxy}");
    assert_eq!(
        ns.read_sysctl(&format!("net.ipv4.conf.{tap1}.proxy_arp"))
            .unwrap(),
        "1"
    );
    assert_eq!(
        ns.read_sysctl(&format!("net.ipv6.conf.{tap1}.proxy_ndp"))
            .unwrap(),
        "1"
    );
    assert_eq!(
        ns.read_sysctl(&format!("net.ipv6.conf.{tap1}.accept_ra"))
            .unwrap(),
        "0"
    );
    // No random delay before answering by proxy (the kernel's default is up to 0.8 s).
    for family in ["ipv4", "ipv6"] {
        let key = format!("net.{family}.neigh.{tap1}.proxy_delay");
        assert_eq!(ns.read_sysctl(&key).unwrap(), "0", "{key}");
    }

    let a = tb.vm(vm1).unwrap().ns();
    for to in ["198.51.100.1", "2001:db8:100::1"] {
        let to: IpAddr = to.parse().unwrap();
        wait_until("the VM to ping its gateway", CONVERGE, || {
            a.ping(to, 1).unwrap().then_some(()).ok_or_else(String::new)
        })
        .unwrap();
    }
    for v6 in [false, true] {
        let to = tb.vm_addr(vm2, v6).unwrap();
        wait_until("vm1 to ping vm2", CONVERGE, || {
            a.ping(to, 1).unwrap().then_some(()).ok_or_else(String::new)
        })
        .unwrap();
    }
    let snap = p.snapshot();
    assert_eq!(snap.routes_programmed, 4);
    assert!(
        snap.endpoints
            .iter()
            .all(|e| e.tap == TapState::Up && e.errors.is_empty()),
        "{snap:?}"
    );
}

#[test]
fn routes_exist_only_while_the_tap_is_up_and_follow_it_in_bgp_events() {
    let mut tb = Testbed::new("dp_updown").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let vm1 = tb.add_vm(hv, VmSpec::numbered("vm1", 1)).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    let tap = tb.vm(vm1).unwrap().tap.clone();
    let mut p = InNamespace::start(ns, DataplaneConfig::default());
    p.set(endpoint_of(&tb, vm1));
    p.complete();
    wait_until("route", CONVERGE, || {
        has_route(ns, "198.51.100.11/32", &tap)
    })
    .unwrap();
    let v4: IpNet = "198.51.100.11/32".parse().unwrap();
    assert!(p.take_events().contains(&RouteEvent::Announce(v4)));

    // Carrier loss (the VM's side goes down), then the tap itself goes down.
    let vm_ns = tb.vm(vm1).unwrap().ns();
    vm_ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    wait_until("route withdrawn on carrier loss", CONVERGE, || {
        no_route(ns, "198.51.100.11/32", &tap)
    })
    .unwrap();
    wait_until("v6 route withdrawn", CONVERGE, || {
        no_route(ns, "2001:db8:100::11/128", &tap)
    })
    .unwrap();
    assert_eq!(p.snapshot().endpoints[0].tap, TapState::Down);
    assert!(p.take_events().contains(&RouteEvent::Withdraw(v4)));
    vm_ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    wait_until("route back", CONVERGE, || {
        has_route(ns, "198.51.100.11/32", &tap)
    })
    .unwrap();
    assert!(p.take_events().contains(&RouteEvent::Announce(v4)));

    ns.ip(&["link", "set", &tap, "down"]).unwrap();
    wait_until("route gone with the tap down", CONVERGE, || {
        no_route(ns, "198.51.100.11/32", &tap)
    })
    .unwrap();
    ns.ip(&["link", "set", &tap, "up"]).unwrap();
    wait_until("route back with the tap up", CONVERGE, || {
        has_route(ns, "198.51.100.11/32", &tap)
    })
    .unwrap();
    wait_until("v6 route back", CONVERGE, || {
        has_route(ns, "2001:db8:100::11/128", &tap)
    })
    .unwrap();
    wait_until("ARP entry back", CONVERGE, || {
        let n = ns
            .ip(&["neigh", "show", "198.51.100.11", "dev", &tap])
            .unwrap();
        n.contains("PERMANENT").then_some(()).ok_or(n)
    })
    .unwrap();
}

#[test]
fn a_tap_recreated_with_a_new_ifindex_gets_its_routes_again() {
    let mut tb = Testbed::new("dp_recreate").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let vm1 = tb.add_vm(hv, VmSpec::numbered("vm1", 1)).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    let make = || {
        ns.ip(&[
            "link", "add", "tapre", "type", "veth", "peer", "name", "tapre-p",
        ])
        .unwrap();
        ns.ip(&["link", "set", "tapre-p", "up"]).unwrap();
        ns.ip(&["link", "set", "tapre", "up"]).unwrap();
    };
    let p = InNamespace::start(ns, DataplaneConfig::default());
    let mut ep = endpoint_of(&tb, vm1);
    ep.interface = "tapre".into();
    p.set(ep);
    p.complete();
    assert_eq!(p.snapshot().endpoints[0].tap, TapState::Missing);
    make();
    wait_until("route on the new tap", CONVERGE, || {
        has_route(ns, "198.51.100.11/32", "tapre")
    })
    .unwrap();
    ns.ip(&["link", "del", "tapre"]).unwrap();
    make();
    wait_until("route on the re-created tap", CONVERGE, || {
        has_route(ns, "198.51.100.11/32", "tapre")
    })
    .unwrap();
    assert_eq!(
        ns.read_sysctl("net.ipv4.conf.tapre.proxy_arp").unwrap(),
        "1"
    );
}

#[test]
fn a_resync_repairs_drift_and_never_touches_foreign_routes() {
    let mut tb = Testbed::new("dp_drift").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let vm1 = tb.add_vm(hv, VmSpec::numbered("vm1", 1)).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    let tap = tb.vm(vm1).unwrap().tap.clone();
    // Foreign routes on the tap: one beside ours, one for the same address at another metric.
    ns.ip(&[
        "route",
        "add",
        "203.0.113.77/32",
        "dev",
        &tap,
        "proto",
        "static",
    ])
    .unwrap();
    ns.ip(&[
        "route",
        "add",
        "198.51.100.11/32",
        "dev",
        &tap,
        "proto",
        "static",
        "metric",
        "50",
    ])
    .unwrap();
    let p = InNamespace::start(ns, DataplaneConfig::default());
    p.set(endpoint_of(&tb, vm1));
    p.complete();
    wait_until("route", CONVERGE, || {
        has_route(ns, "198.51.100.11/32", &tap)
    })
    .unwrap();

    // Drift: our route deleted by hand, a stray of ours, one of ours at a wrong metric.
    ns.ip(&[
        "route",
        "del",
        "198.51.100.11/32",
        "dev",
        &tap,
        "proto",
        "83",
        "metric",
        "1024",
    ])
    .unwrap();
    ns.ip(&["route", "add", "203.0.113.9/32", "dev", &tap, "proto", "83"])
        .unwrap();
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:100::11/128",
        "dev",
        &tap,
        "proto",
        "83",
        "metric",
        "7",
    ])
    .unwrap();
    p.resync();
    let shown = ns.ip(&["route", "show", "dev", &tap]).unwrap();
    assert!(
        shown.contains("198.51.100.11 proto 83 scope link metric 1024"),
        "{shown}"
    );
    assert!(!shown.contains("203.0.113.9"), "{shown}");
    assert!(shown.contains("203.0.113.77 proto static"), "{shown}");
    assert!(
        shown.contains("198.51.100.11 proto static scope link metric 50"),
        "{shown}"
    );
    let shown6 = ns.ip(&["-6", "route", "show", "dev", &tap]).unwrap();
    assert!(!shown6.contains("metric 7"), "{shown6}");
    assert!(
        shown6.contains("2001:db8:100::11 proto 83 metric 1024"),
        "{shown6}"
    );

    // Removing the endpoint removes only ours.
    block_on(p.handle.remove_endpoint(&endpoint_of(&tb, vm1).id)).unwrap();
    wait_until("our route removed", CONVERGE, || {
        let shown = ns.ip(&["route", "show", "dev", &tap]).unwrap();
        (!shown.contains("proto 83"))
            .then_some(shown.clone())
            .ok_or(shown)
    })
    .map(|shown| {
        assert!(shown.contains("203.0.113.77 proto static"), "{shown}");
        assert!(shown.contains("metric 50"), "{shown}");
    })
    .unwrap();
    // Its ARP and proxy NDP entries go too.
    wait_until("our neighbour entries removed", CONVERGE, || {
        let arp = ns
            .ip(&["neigh", "show", "dev", &tap, "nud", "permanent"])
            .unwrap();
        let proxy = ns
            .ip(&["-6", "neigh", "show", "proxy", "dev", &tap])
            .unwrap();
        (arp.trim().is_empty() && proxy.trim().is_empty())
            .then_some(())
            .ok_or(format!("{arp}{proxy}"))
    })
    .unwrap();
}

#[test]
fn a_restarted_programmer_adopts_the_kernel_without_a_single_write() {
    let mut tb = Testbed::new("dp_restart").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let vm1 = tb.add_vm(hv, VmSpec::numbered("vm1", 1)).unwrap();
    let vm2 = tb.add_vm(hv, VmSpec::numbered("vm2", 2)).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    let first = InNamespace::start(ns, DataplaneConfig::default());
    first.set(endpoint_of(&tb, vm1));
    first.set(endpoint_of(&tb, vm2));
    first.complete();
    assert_eq!(first.snapshot().routes_programmed, 4);
    let before = (
        ns.kernel_routes(false).unwrap(),
        ns.kernel_routes(true).unwrap(),
        ns.ip(&["neigh", "show", "nud", "permanent"]).unwrap(),
    );
    first.stop();
    // Shutdown leaves everything in place.
    let after_stop = (
        ns.kernel_routes(false).unwrap(),
        ns.kernel_routes(true).unwrap(),
        ns.ip(&["neigh", "show", "nud", "permanent"]).unwrap(),
    );
    assert_eq!(before, after_stop);

    let second = InNamespace::start(ns, DataplaneConfig::default());
    // Before the desired state is complete, nothing is deleted even though nothing is desired.
    assert_eq!(second.snapshot().kernel_writes, 0);
    second.set(endpoint_of(&tb, vm1));
    second.set(endpoint_of(&tb, vm2));
    second.complete();
    let snap = second.snapshot();
    assert_eq!(snap.kernel_writes, 0, "{snap:?}");
    assert_eq!(snap.routes_programmed, 4);
    let after = (
        ns.kernel_routes(false).unwrap(),
        ns.kernel_routes(true).unwrap(),
        ns.ip(&["neigh", "show", "nud", "permanent"]).unwrap(),
    );
    assert_eq!(before, after);
}

#[test]
fn ecmp_learned_routes_are_installed_and_replaced_when_next_hops_change() {
    let (tb, hv, [u1, u2]) = hypervisor_with_uplinks("dp_ecmp");
    let ns = tb.hv(hv).unwrap().ns();
    let v4: IpNet = "203.0.113.0/25".parse().unwrap();
    let v6: IpNet = "2001:db8:200::/48".parse().unwrap();
    let set = |p: &InNamespace, prefix: IpNet, hops: Vec<IpAddr>| {
        block_on(p.handle.set_learned_route(learned_via(prefix, hops))).unwrap();
    };
    let both = |p: &InNamespace| {
        set(p, v4, vec![u1.tor_v4.into(), u2.tor_v4.into()]);
        set(p, v6, vec![u1.tor_v6.into(), u2.tor_v6.into()]);
        p.complete();
    };
    let first = InNamespace::start(ns, DataplaneConfig::default());
    both(&first);
    let route = |v6: bool, dst: IpNet| -> Result<KernelRoute, String> {
        let routes = ns.kernel_routes(v6).unwrap();
        let r = routes
            .iter()
            .find(|r| r.dst == dst)
            .ok_or(format!("{routes:?}"))?;
        if r.protocol != "84" {
            return Err(format!("{r:?}"));
        }
        Ok(r.clone())
    };
    let gateways = |v6: bool, dst: IpNet| {
        route(v6, dst).map(|r| {
            let mut g = r.gateways;
            g.sort();
            g
        })
    };
    let until_gateways = |what: &str, v6: bool, dst: IpNet, mut want: Vec<IpAddr>| {
        want.sort();
        wait_until(what, CONVERGE, || {
            gateways(v6, dst).and_then(|g| (g == want).then_some(()).ok_or(format!("{g:?}")))
        })
        .unwrap();
    };
    let our_nexthops = || -> Vec<KernelNextHop> {
        let mut ours: Vec<_> = ns
            .kernel_nexthops()
            .unwrap()
            .into_iter()
            .filter(|n| n.protocol == "84")
            .collect();
        ours.sort_by_key(|n| n.id);
        ours
    };
    until_gateways(
        "v4 ECMP",
        false,
        v4,
        vec![u1.tor_v4.into(), u2.tor_v4.into()],
    );
    until_gateways(
        "v6 ECMP",
        true,
        v6,
        vec![u1.tor_v6.into(), u2.tor_v6.into()],
    );
    // Each points at a group of ours: four gateway objects and two groups.
    let objects = our_nexthops();
    for (v6, dst) in [(false, v4), (true, v6)] {
        let id = route(v6, dst)
            .unwrap()
            .nexthop_id
            .expect("a nexthop object");
        let group = objects.iter().find(|n| n.id == id).unwrap();
        assert_eq!(group.group.len(), 2, "{objects:?}");
    }
    assert_eq!(objects.len(), 6, "{objects:?}");

    // A restarted programmer adopts routes and objects without a write.
    first.stop();
    let p = InNamespace::start(ns, DataplaneConfig::default());
    both(&p);
    let snap = p.snapshot();
    assert_eq!(snap.kernel_writes, 0, "{snap:?}");
    assert_eq!(our_nexthops(), objects);

    set(&p, v4, vec![u2.tor_v4.into()]);
    set(&p, v6, vec![u1.tor_v6.into()]);
    until_gateways("v4 one hop", false, v4, vec![u2.tor_v4.into()]);
    until_gateways("v6 one hop", true, v6, vec![u1.tor_v6.into()]);
    // A full reconcile deletes the objects no route uses any more.
    p.resync();
    let mut left: Vec<Option<IpAddr>> = our_nexthops().iter().map(|n| n.gateway).collect();
    left.sort();
    assert_eq!(
        left,
        [Some(u2.tor_v4.into()), Some(u1.tor_v6.into())],
        "{:?}",
        our_nexthops()
    );
    block_on(p.handle.remove_learned_route(v4)).unwrap();
    wait_until("v4 removed", CONVERGE, || {
        gateways(false, v4).map_or(Ok(()), |g| Err(format!("{g:?}")))
    })
    .unwrap();
    p.resync();
    assert_eq!(our_nexthops().len(), 1);
    assert_eq!(p.snapshot().learned_routes, 1);
}

/// RFC 8950: an IPv4 route learned with an IPv6 next hop goes through it (`via inet6`), both
/// through a nexthop object and written with its gateway named (`RTA_VIA`), and a restart
/// adopts it.
#[test]
fn ipv4_routes_through_an_ipv6_gateway_are_installed_and_adopted() {
    use skog_agent::dataplane::kernel::{Hop, Route, RouteKey, RouteTarget};
    use skog_agent::dataplane::reconcile::Op;

    let (tb, hv, [up]) = hypervisor_with_uplinks("dp_v4via6");
    let ns = tb.hv(hv).unwrap().ns();
    let learned: IpNet = "203.0.113.0/25".parse().unwrap();
    let gateway = IpAddr::from(up.tor_v6);
    let through_v6 = |dst: IpNet| -> Result<KernelRoute, String> {
        let routes = ns.kernel_routes(false).unwrap();
        match routes.iter().find(|r| r.dst == dst && r.protocol == "84") {
            Some(r) if r.gateways == [gateway] && r.devices == [up.hv_if.clone()] => Ok(r.clone()),
            _ => Err(format!("{routes:?}")),
        }
    };
    let start = || {
        let p = InNamespace::start(ns, DataplaneConfig::default());
        block_on(p.handle.set_learned_route(learned_via(learned, [gateway]))).unwrap();
        p.complete();
        p
    };
    let first = start();
    let route = wait_until("the IPv4 route via IPv6", CONVERGE, || through_v6(learned)).unwrap();
    assert!(route.nexthop_id.is_some(), "{route:?}");
    first.stop();
    let second = start();
    let snap = second.snapshot();
    assert_eq!(snap.kernel_writes, 0, "{snap:?}");
    assert!(snap.learned_problems.is_empty(), "{snap:?}");
    second.stop();

    // Without a nexthop object: the gateway named with RTA_VIA.
    let named: IpNet = "203.0.113.128/25".parse().unwrap();
    let op = Op::ReplaceRoute(
        RouteKey {
            dst: named,
            metric: 1024,
        },
        Route {
            nexthop: None,
            protocol: 84,
            target: RouteTarget::Gateways(
                vec![Hop {
                    gateway,
                    ifindex: Some(ns.ifindex(&up.hv_if).unwrap()),
                }]
                .into(),
            ),
        },
    );
    assert_eq!(apply_in(ns, vec![op]), [true]);
    let route = through_v6(named).unwrap();
    assert_eq!(route.nexthop_id, None);
}

/// One uplink of two going down shrinks the ECMP routes' group in the kernel: the routes stay
/// and forward through the other uplink (nothing of ours deletes the group, nothing is
/// rewritten), and when the uplink is back the group gets its member back in place. Routes of
/// a previous run that name their gateways move onto the group.
#[test]
fn an_ecmp_group_survives_an_uplink_going_down_and_is_regrown_in_place() {
    let (tb, hv, [u1, u2]) = hypervisor_with_uplinks("dp_regroup");
    let ns = tb.hv(hv).unwrap().ns();
    // IPv6 addresses stay on a downed link, as on a hypervisor that configures them so.
    ns.sysctl(
        &format!("net.ipv6.conf.{}.keep_addr_on_down", u1.hv_if),
        "1",
    )
    .unwrap();
    let v4: IpNet = "203.0.113.0/25".parse().unwrap();
    let v6: IpNet = "2001:db8:200::/48".parse().unwrap();
    // A previous run's route, naming its gateways.
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:200::/48",
        "proto",
        "84",
        "nexthop",
        "via",
        &u1.tor_v6.to_string(),
        "dev",
        &u1.hv_if,
        "nexthop",
        "via",
        &u2.tor_v6.to_string(),
        "dev",
        &u2.hv_if,
    ])
    .unwrap();
    let p = InNamespace::start(ns, DataplaneConfig::default());
    block_on(
        p.handle
            .set_learned_route(learned_via(v4, [u1.tor_v4.into(), u2.tor_v4.into()])),
    )
    .unwrap();
    block_on(
        p.handle
            .set_learned_route(learned_via(v6, [u1.tor_v6.into(), u2.tor_v6.into()])),
    )
    .unwrap();
    p.complete();
    let route = |v6: bool, dst: IpNet| {
        ns.kernel_routes(v6)
            .unwrap()
            .into_iter()
            .find(|r| r.dst == dst)
    };
    let until = |what: &str, check: &dyn Fn(&KernelRoute) -> bool| {
        for (is_v6, dst) in [(false, v4), (true, v6)] {
            wait_until(what, CONVERGE, || match route(is_v6, dst) {
                Some(r) if check(&r) => Ok(()),
                other => Err(format!("{other:?}")),
            })
            .unwrap();
        }
    };
    until("ECMP through a group", &|r| {
        r.gateways.len() == 2 && r.nexthop_id.is_some()
    });
    let groups = [route(false, v4), route(true, v6)].map(|r| r.unwrap().nexthop_id);
    let same_group = |r: &KernelRoute| groups.contains(&r.nexthop_id);
    let writes = p.snapshot().kernel_writes;

    ns.ip(&["link", "set", &u1.hv_if, "down"]).unwrap();
    until("one gateway left, same group", &|r| {
        r.gateways.len() == 1 && r.devices == [u2.hv_if.clone()] && same_group(r)
    });
    // A full reconcile neither deletes the shrunk group nor rewrites its routes.
    p.resync();
    until("still through the shrunk group", &|r| {
        r.gateways.len() == 1 && same_group(r)
    });
    assert_eq!(p.snapshot().kernel_writes, writes);

    ns.ip(&["link", "set", &u1.hv_if, "up"]).unwrap();
    until("both gateways back, same group", &|r| {
        r.gateways.len() == 2 && same_group(r)
    });
    assert_eq!(p.snapshot().kernel_writes, writes);

    // Someone replaces the IPv6 group by hand with one member: it is put right at once.
    let group = groups[1].unwrap().to_string();
    let member = ns
        .kernel_nexthops()
        .unwrap()
        .into_iter()
        .find(|n| n.id.to_string() == group)
        .map(|n| n.group[0].to_string())
        .unwrap();
    ns.ip(&[
        "nexthop", "replace", "id", &group, "group", &member, "proto", "84",
    ])
    .unwrap();
    until("both gateways back after a replace by hand", &|r| {
        r.gateways.len() == 2 && same_group(r)
    });
    assert_eq!(p.snapshot().kernel_writes, writes);
}

/// Two sets of next hops never share a group, even when one's reachable part is the other
/// (`{A, B}` and `{A, B, C}` with C down): each group is regrown for its own set, and full
/// reconciles leave both alone.
#[test]
fn sets_with_the_same_reachable_gateways_get_groups_of_their_own() {
    let (tb, hv, [u1, u2, u3]) = hypervisor_with_uplinks("dp_groups");
    let ns = tb.hv(hv).unwrap().ns();
    ns.ip(&["link", "set", &u3.hv_if, "down"]).unwrap();
    let two: IpNet = "203.0.113.0/25".parse().unwrap();
    let three: IpNet = "203.0.113.128/25".parse().unwrap();
    let gateways = [u1.tor_v4, u2.tor_v4, u3.tor_v4].map(IpAddr::from);
    // After a restart BGP may hand the routes over one by one, each written in a round of its
    // own before BGP has converged, or all at once, written by the full reconcile.
    let start = |first: IpNet, in_rounds: bool| {
        let p = InNamespace::start(ns, DataplaneConfig::default());
        let two_route = learned_via(two, gateways[..2].to_vec());
        let three_route = learned_via(three, gateways);
        let routes = if first == two {
            [two_route, three_route]
        } else {
            [three_route, two_route]
        };
        for route in routes {
            block_on(p.handle.set_learned_route(route)).unwrap();
            if in_rounds {
                // Answered after the round that wrote it.
                p.snapshot();
            }
        }
        p.complete();
        p
    };
    let route = |dst: IpNet| {
        ns.kernel_routes(false)
            .unwrap()
            .into_iter()
            .find(|r| r.dst == dst)
    };
    let until = |what: &str, dst: IpNet, hops: usize| {
        wait_until(what, CONVERGE, || match route(dst) {
            Some(r) if r.gateways.len() == hops && r.nexthop_id.is_some() => Ok(r),
            other => Err(format!("{other:?}")),
        })
        .unwrap()
    };
    let p = start(two, false);
    let first = until("two through a group", two, 2).nexthop_id;
    let second = until("three through a group, C left out", three, 2).nexthop_id;
    assert_ne!(first, second);

    // A restart (the other set learned first) takes both groups back as they are, whether the
    // routes come in rounds or at once.
    let mut p = p;
    for in_rounds in [true, false] {
        p.stop();
        p = start(three, in_rounds);
        let snap = p.snapshot();
        assert_eq!(
            (snap.kernel_writes, snap.nexthop_writes),
            (0, 0),
            "in rounds: {in_rounds}, {snap:?}"
        );
        assert_eq!(route(two).unwrap().nexthop_id, first);
        assert_eq!(route(three).unwrap().nexthop_id, second);
    }

    ns.ip(&["link", "set", &u3.hv_if, "up"]).unwrap();
    until("three through all three", three, 3);
    let writes = p.snapshot().nexthop_writes;
    for _ in 0..4 {
        p.resync();
    }
    assert_eq!(route(two).unwrap().gateways.len(), 2);
    assert_eq!(route(three).unwrap().gateways.len(), 3);
    assert_eq!(p.snapshot().nexthop_writes, writes, "objects rewritten");
}

#[test]
fn bad_endpoints_are_reported_and_skipped_without_affecting_others() {
    let mut tb = Testbed::new("dp_bad").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let vm1 = tb.add_vm(hv, VmSpec::numbered("vm1", 1)).unwrap();
    let vm2 = tb.add_vm(hv, VmSpec::numbered("vm2", 2)).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    let tap1 = tb.vm(vm1).unwrap().tap.clone();
    let tap2 = tb.vm(vm2).unwrap().tap.clone();
    let p = InNamespace::start(ns, DataplaneConfig::default());
    let mut missing = endpoint_of(&tb, vm1);
    missing.id = "a-missing".into();
    missing.interface = "tapnothere".into();
    missing.addresses = vec!["198.51.100.99/32".parse().unwrap()];
    let good = endpoint_of(&tb, vm1);
    // vm2's endpoint also claims vm1's address.
    let mut clash = endpoint_of(&tb, vm2);
    clash.id = "z-clash".into();
    clash.addresses.push("198.51.100.11/32".parse().unwrap());
    p.set(missing);
    p.set(good.clone());
    p.set(clash);
    p.complete();
    wait_until("good route", CONVERGE, || {
        has_route(ns, "198.51.100.11/32", &tap1)
    })
    .unwrap();
    wait_until("clashing endpoint's own route", CONVERGE, || {
        has_route(ns, "198.51.100.12/32", &tap2)
    })
    .unwrap();
    assert!(no_route(ns, "198.51.100.11/32", &tap2).is_ok());
    let snap = p.snapshot();
    let by_id = |id: &str| snap.endpoints.iter().find(|e| e.id == id).unwrap().clone();
    assert_eq!(by_id("a-missing").tap, TapState::Missing);
    assert!(by_id(&good.id).errors.is_empty());
    let clash = by_id("z-clash");
    assert!(
        clash
            .errors
            .iter()
            .any(|e| e.contains("198.51.100.11/32") && e.contains(&good.id)),
        "{clash:?}"
    );
    assert_eq!(snap.routes_programmed, 4);
}

#[test]
fn the_periodic_resync_repairs_drift_no_event_reports() {
    let mut tb = Testbed::new("dp_periodic").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let vm1 = tb.add_vm(hv, VmSpec::numbered("vm1", 1)).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    let tap = tb.vm(vm1).unwrap().tap.clone();
    let cfg = DataplaneConfig {
        resync_interval: Duration::from_secs(1),
        ..DataplaneConfig::default()
    };
    let p = InNamespace::start(ns, cfg);
    p.set(endpoint_of(&tb, vm1));
    p.complete();
    let key = format!("net.ipv4.conf.{tap}.proxy_arp");
    wait_until("sysctl", CONVERGE, || {
        let v = ns.read_sysctl(&key).unwrap();
        (v == "1").then_some(()).ok_or(v)
    })
    .unwrap();
    // A sysctl changed by hand raises no netlink event: only the periodic resync sees it.
    ns.sysctl(&key, "0").unwrap();
    wait_until("the resync to restore proxy_arp", CONVERGE, || {
        let v = ns.read_sysctl(&key).unwrap();
        (v == "1").then_some(()).ok_or(v)
    })
    .unwrap();
    assert!(p.snapshot().resyncs >= 1);
}

#[test]
fn learned_routes_of_a_previous_run_stay_until_bgp_has_converged() {
    let (tb, hv, [up]) = hypervisor_with_uplinks("dp_learned_gr");
    let ns = tb.hv(hv).unwrap().ns();
    let prefix: IpNet = "203.0.113.0/25".parse().unwrap();
    let present = || {
        ns.kernel_routes(false)
            .unwrap()
            .iter()
            .any(|r| r.dst == prefix)
    };
    let first = InNamespace::start(ns, DataplaneConfig::default());
    block_on(
        first
            .handle
            .set_learned_route(learned_via(prefix, [up.tor_v4.into()])),
    )
    .unwrap();
    first.complete();
    assert_eq!(first.snapshot().learned_routes, 1);
    assert!(present());
    first.stop();

    // The restarted agent has its endpoints (none) but BGP has not re-learned the route yet.
    let second = InNamespace::start(ns, DataplaneConfig::default());
    block_on(second.handle.desired_complete()).unwrap();
    let snap = second.snapshot();
    assert_eq!(snap.kernel_writes, 0, "{snap:?}");
    assert!(present(), "a learned route went before BGP converged");
    // A route this run learns and BGP then withdraws goes at once, converged or not.
    let fresh: IpNet = "203.0.113.128/25".parse().unwrap();
    let has_fresh = || {
        ns.kernel_routes(false)
            .unwrap()
            .iter()
            .any(|r| r.dst == fresh)
    };
    block_on(
        second
            .handle
            .set_learned_route(learned_via(fresh, [up.tor_v4.into()])),
    )
    .unwrap();
    second.snapshot();
    assert!(has_fresh());
    block_on(second.handle.remove_learned_route(fresh)).unwrap();
    second.snapshot();
    assert!(!has_fresh(), "a withdrawn route stayed until BGP converged");
    assert!(present(), "the stale route went with it");
    block_on(second.handle.learned_complete()).unwrap();
    second.snapshot();
    assert!(
        !present(),
        "the stale learned route stayed after BGP converged"
    );
}

/// Only the last write of a batch asks for an acknowledgement; a failure anywhere in a batch
/// is still reported on its own operation, and a delete of something already gone succeeds.
#[test]
fn each_failed_write_of_a_batch_is_reported_on_its_own_operation() {
    use std::sync::Arc;

    use skog_agent::dataplane::kernel::{Hop, Route, RouteKey, RouteTarget};
    use skog_agent::dataplane::reconcile::Op;

    let mut tb = Testbed::new("dp_errors").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    let key = |dst: &str| RouteKey {
        dst: dst.parse().unwrap(),
        metric: 1024,
    };
    let on_lo = Route {
        nexthop: None,
        protocol: 84,
        target: RouteTarget::Device(ns.ifindex("lo").unwrap()),
    };
    // No route leads to this gateway: the kernel refuses such a route.
    let unreachable = Route {
        nexthop: None,
        protocol: 84,
        target: RouteTarget::Gateways(Arc::from([Hop {
            gateway: "198.51.100.200".parse().unwrap(),
            ifindex: None,
        }])),
    };
    // Batches of 4, in flight together.
    // `true`: the write should succeed.
    let plan: [(&str, Option<&Route>, bool); 11] = [
        ("203.0.113.1/32", Some(&on_lo), true),
        ("203.0.113.2/32", Some(&unreachable), false), // inside batch 1
        ("203.0.113.3/32", Some(&on_lo), true),
        ("203.0.113.4/32", Some(&on_lo), true),
        ("203.0.113.5/32", None, true), // a delete of nothing
        ("203.0.113.6/32", Some(&on_lo), true),
        ("203.0.113.7/32", Some(&on_lo), true),
        ("203.0.113.8/32", Some(&unreachable), false), // batch 2's last
        ("203.0.113.9/32", Some(&on_lo), true),
        ("203.0.113.10/32", Some(&unreachable), false), // inside batch 3
        ("203.0.113.11/32", Some(&on_lo), true),
    ];
    let ops: Vec<Op> = plan
        .iter()
        .map(|(dst, route, _)| match route {
            Some(route) => Op::ReplaceRoute(key(dst), (*route).clone()),
            None => Op::DeleteRoute(key(dst), on_lo.clone()),
        })
        .collect();
    let outcomes = apply_in(ns, ops);
    let expected: Vec<bool> = plan.iter().map(|(_, _, ok)| *ok).collect();
    assert_eq!(outcomes, expected);
    let present: Vec<IpNet> = ns
        .kernel_routes(false)
        .unwrap()
        .into_iter()
        .filter(|r| r.protocol == "84")
        .map(|r| r.dst)
        .collect();
    let mut want: Vec<IpNet> = plan
        .iter()
        .filter(|(_, route, ok)| *ok && route.is_some())
        .map(|(dst, _, _)| dst.parse().unwrap())
        .collect();
    want.sort();
    let mut present = present;
    present.sort();
    assert_eq!(present, want);
}

/// The kernel drops an IPv4 gateway route without a notification when its uplink goes down;
/// once the uplink is back, the learned route is written again (not only at the next
/// periodic resync, 90 s away here). The same when someone deletes its nexthop object.
#[test]
fn learned_routes_come_back_after_their_uplink_flaps_or_their_nexthop_object_goes() {
    let (tb, hv, [up]) = hypervisor_with_uplinks("dp_uplink");
    let ns = tb.hv(hv).unwrap().ns();
    let p = InNamespace::start(ns, DataplaneConfig::default());
    let prefix: IpNet = "203.0.113.0/25".parse().unwrap();
    block_on(
        p.handle
            .set_learned_route(learned_via(prefix, [up.tor_v4.into()])),
    )
    .unwrap();
    p.complete();
    let installed = || {
        let routes = ns.kernel_routes(false).unwrap();
        if routes.iter().any(|r| r.dst == prefix && r.protocol == "84") {
            Ok(())
        } else {
            Err(format!("{routes:?}"))
        }
    };
    wait_until("the learned route", CONVERGE, installed).unwrap();
    ns.ip(&["link", "set", &up.hv_if, "down"]).unwrap();
    wait_until("the route gone with its uplink", CONVERGE, || {
        installed().map_or(Ok(()), |()| Err("still there".into()))
    })
    .unwrap();
    ns.ip(&["link", "set", &up.hv_if, "up"]).unwrap();
    wait_until("the learned route back", CONVERGE, installed).unwrap();
    // Deleting its nexthop object by hand takes the route with it: both come back at once.
    let id = ns
        .kernel_routes(false)
        .unwrap()
        .into_iter()
        .find(|r| r.dst == prefix)
        .and_then(|r| r.nexthop_id)
        .expect("a route through a nexthop object");
    let resyncs = p.snapshot().resyncs;
    ns.ip(&["nexthop", "del", "id", &id.to_string()]).unwrap();
    wait_until("the learned route and its object back", CONVERGE, || {
        installed()?;
        let objects = ns.kernel_nexthops().unwrap();
        match objects.iter().find(|n| n.protocol == "84") {
            Some(n) if n.gateway == Some(up.tor_v4.into()) => Ok(()),
            _ => Err(format!("{objects:?}")),
        }
    })
    .unwrap();
    // Repaired by the resync the deletion's notification made due (the periodic one is 90 s
    // away; the uplink's late "running" notification may have made one more).
    assert!(p.snapshot().resyncs > resyncs);
}
