//! The testbed's own tests: real packets across real routing daemons, etcd on the management
//! network, and teardown. They need root (namespaces) and fail, not skip, without it.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use skog_testbed::{
    EchoServer, HvId, ProbeOutcome, Protocol, Testbed, TorDaemon, VmId, VmSpec, clean_leftovers,
    wait_until,
};

const CONVERGE: Duration = Duration::from_secs(60);

/// Two hypervisors behind one ToR, one VM each, hypervisors plumbed by hand and announcing with
/// BIRD (Calico's path). Returns the bed and the two VMs.
fn two_hypervisors_one_tor(label: &str, daemon: TorDaemon) -> (Testbed, VmId, VmId) {
    let mut tb = Testbed::new(label).unwrap();
    let tor = tb.add_tor("tor1", daemon, 65001).unwrap();
    let mut vms = Vec::new();
    for i in 0..2 {
        let hv = tb
            .add_hypervisor(&format!("hv{}", i + 1), 65101 + i as u32)
            .unwrap();
        tb.link(hv, tor).unwrap();
        let vm = tb
            .add_vm(hv, VmSpec::numbered(&format!("vm{}", i + 1), i))
            .unwrap();
        tb.plumb_vm_by_hand(vm).unwrap();
        vms.push(vm);
    }
    tb.start_tor(tor).unwrap();
    for i in 0..2 {
        tb.start_reference_bird(HvId(i)).unwrap();
    }
    let expected: Vec<IpNet> = vms
        .iter()
        .flat_map(|&vm| {
            [
                tb.vm_addr(vm, false).unwrap(),
                tb.vm_addr(vm, true).unwrap(),
            ]
        })
        .map(IpNet::from)
        .collect();
    let t = tb.tor(tor).unwrap();
    wait_until("the ToR to learn both VMs' host routes", CONVERGE, || {
        let mut have = t.daemon_prefixes(false).map_err(|e| e.to_string())?;
        have.extend(t.daemon_prefixes(true).map_err(|e| e.to_string())?);
        if daemon.installs_routes() {
            // ... and to install them in its kernel.
            have.retain(|p| p.prefix_len() == 0); // keep defaults: not learned from hypervisors
            have.extend(
                t.kernel_routes(false)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|r| r.dst),
            );
            have.extend(
                t.kernel_routes(true)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|r| r.dst),
            );
        }
        let missing: Vec<_> = expected.iter().filter(|p| !have.contains(p)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .unwrap();
    // Every ToR announces a default route, which the hypervisors' BIRD installs.
    for hv in [HvId(0), HvId(1)] {
        let ns = tb.hv(hv).unwrap().ns();
        for v6 in [false, true] {
            wait_until(
                "the hypervisor to install the ToR's default route",
                CONVERGE,
                || {
                    let routes = ns.kernel_routes(v6).map_err(|e| e.to_string())?;
                    routes
                        .iter()
                        .find(|r| r.dst.prefix_len() == 0 && r.protocol == "bird")
                        .map(drop)
                        .ok_or_else(|| format!("{routes:?}"))
                },
            )
            .unwrap();
        }
    }
    (tb, vms[0], vms[1])
}

fn vms_reach_each_other_through(daemon: TorDaemon) {
    let (tb, vm1, vm2) = two_hypervisors_one_tor(&format!("reach_{}", daemon.name()), daemon);
    let tor = tb.tor(skog_testbed::TorId(0)).unwrap();
    let learned = tor.kernel_routes(false).unwrap();
    let vm1_route = learned
        .iter()
        .find(|r| r.dst == IpNet::from(tb.vm_addr(vm1, false).unwrap()));
    let uplink = &tb.hv(HvId(0)).unwrap().uplinks[0];
    assert_eq!(
        vm1_route.unwrap().gateways,
        vec![IpAddr::from(uplink.hv_v4)],
        "{learned:?}"
    );

    let (a, b) = (tb.vm(vm1).unwrap().ns(), tb.vm(vm2).unwrap().ns());
    for v6 in [false, true] {
        let to = tb.vm_addr(vm2, v6).unwrap();
        let pinged = wait_until("the first ping to get through", CONVERGE, || {
            a.ping(to, 1)
                .map_err(|e| e.to_string())?
                .then_some(())
                .ok_or_else(String::new)
        });
        pinged
            .unwrap_or_else(|e| panic!("{} cannot ping {to}: {e}", tb.vm(vm1).unwrap().spec.name));
        assert!(
            b.ping(tb.vm_addr(vm1, v6).unwrap(), 3).unwrap(),
            "ping back over v6={v6}"
        );

        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let any = if v6 {
                IpAddr::from([0u16; 8])
            } else {
                IpAddr::from([0u8; 4])
            };
            let _server = EchoServer::start(b, protocol, any, 8080).unwrap();
            let outcome = a
                .probe(protocol, SocketAddr::new(to, 8080), Duration::from_secs(3))
                .unwrap();
            assert_eq!(outcome, ProbeOutcome::Allowed, "{protocol:?} v6={v6}");
        }
        // Nobody listens on 8081: the probe must say refused, not allowed.
        let closed = a
            .probe(
                Protocol::Tcp,
                SocketAddr::new(to, 8081),
                Duration::from_secs(3),
            )
            .unwrap();
        assert_eq!(closed, ProbeOutcome::Refused, "v6={v6}");
    }
}

#[test]
fn vms_on_two_hypervisors_reach_each_other_through_a_bird_tor() {
    vms_reach_each_other_through(TorDaemon::Bird);
}

#[test]
fn vms_on_two_hypervisors_reach_each_other_through_an_frr_tor() {
    vms_reach_each_other_through(TorDaemon::Frr);
}

#[test]
fn a_gobgp_tor_exchanges_routes_with_the_hypervisors() {
    // GoBGP has no FIB here (see TorDaemon::Gobgp): the exchange of routes is what is tested.
    let (tb, vm1, _) = two_hypervisors_one_tor("gobgp", TorDaemon::Gobgp);
    let neighbors = tb
        .tor(skog_testbed::TorId(0))
        .unwrap()
        .cli("neighbor")
        .unwrap();
    assert_eq!(neighbors.matches("Establ").count(), 4, "{neighbors}");
    // hv2 learned vm1's route through the ToR.
    let hv2 = tb.hv(HvId(1)).unwrap().ns();
    let vm1_addr = IpNet::from(tb.vm_addr(vm1, false).unwrap());
    wait_until("hv2 to learn vm1's route from GoBGP", CONVERGE, || {
        let routes = hv2.kernel_routes(false).map_err(|e| e.to_string())?;
        routes
            .iter()
            .find(|r| r.dst == vm1_addr)
            .map(drop)
            .ok_or_else(|| format!("{routes:?}"))
    })
    .unwrap();
}

#[test]
fn a_vm_without_host_routes_is_unreachable() {
    let mut tb = Testbed::new("unplumbed").unwrap();
    let hv = tb.add_hypervisor("hv1", 65101).unwrap();
    let vm1 = tb.add_vm(hv, VmSpec::numbered("vm1", 0)).unwrap();
    let vm2 = tb.add_vm(hv, VmSpec::numbered("vm2", 1)).unwrap();
    tb.plumb_vm_by_hand(vm1).unwrap();
    let a = tb.vm(vm1).unwrap().ns();
    assert!(
        !a.ping(tb.vm_addr(vm2, false).unwrap(), 2).unwrap(),
        "vm2 is not plumbed yet"
    );
    tb.plumb_vm_by_hand(vm2).unwrap();
    assert!(
        a.ping(tb.vm_addr(vm2, false).unwrap(), 3).unwrap(),
        "same-host VMs route via the host"
    );
    assert!(
        a.ping(tb.vm_addr(vm2, true).unwrap(), 3).unwrap(),
        "and over IPv6"
    );
}

#[test]
fn etcd_answers_from_every_hypervisor() {
    let mut tb = Testbed::new("etcd").unwrap();
    let hv1 = tb.add_hypervisor("hv1", 65101).unwrap();
    let hv2 = tb.add_hypervisor("hv2", 65102).unwrap();
    tb.start_etcd().unwrap();
    let hv3 = tb.add_hypervisor("hv3", 65103).unwrap();
    tb.etcdctl(hv1, &["put", "/skog/test", "from-hv1"]).unwrap();
    for hv in [hv2, hv3] {
        let got = tb
            .etcdctl(hv, &["get", "--print-value-only", "/skog/test"])
            .unwrap();
        assert_eq!(got.trim(), "from-hv1");
    }
    // The management network is not the fabric: hypervisors have no route to VMs through it.
    assert!(
        tb.hv(hv1)
            .unwrap()
            .ns()
            .ip(&["route", "get", "198.51.100.10"])
            .is_err()
    );
}

fn namespace_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn dropping_the_testbed_removes_its_namespaces_and_daemons_even_on_panic() {
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = names.clone();
    let result = std::panic::catch_unwind(move || {
        let mut tb = Testbed::new("teardown").unwrap();
        let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
        let hv = tb.add_hypervisor("hv1", 65101).unwrap();
        tb.link(hv, tor).unwrap();
        tb.add_vm(hv, VmSpec::numbered("vm1", 0)).unwrap();
        tb.start_tor(tor).unwrap();
        *seen.lock().unwrap() = tb.namespaces();
        panic!("a failing test");
    });
    assert!(result.is_err());
    let names = names.lock().unwrap();
    assert_eq!(names.len(), 3);
    for name in names.iter() {
        assert!(!namespace_exists(name), "{name} leaked");
    }
}

#[test]
fn a_leaked_namespace_is_cleaned_up() {
    // A namespace owned by a process that has exited, as a killed test run leaves behind.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let leaked = format!("skog-{dead_pid}-0-leaked");
    let status = Command::new("ip")
        .args(["netns", "add", &leaked])
        .status()
        .unwrap();
    assert!(status.success());
    // One owned by this (live) process must survive a normal clean.
    let tb = Testbed::new("live").unwrap();
    let mut live = Testbed::new("live2").unwrap();
    let hv = live.add_hypervisor("hv1", 65101).unwrap();
    let live_name = live.hv(hv).unwrap().ns().name().to_owned();

    // Every Testbed::new cleans up too, so a test running in parallel may get there first.
    let removed = clean_leftovers(false).unwrap();
    assert!(
        !namespace_exists(&leaked),
        "{leaked} survived; removed {removed:?}"
    );
    assert!(
        namespace_exists(&live_name),
        "a live run's namespace was removed"
    );
    drop((tb, live));
    assert!(!namespace_exists(&live_name));
}

#[test]
fn ipv4_only_vm_has_no_ipv6_address() {
    let mut tb = Testbed::new("v4only").unwrap();
    let hv = tb.add_hypervisor("hv1", 65101).unwrap();
    let spec = VmSpec {
        ipv6: None,
        ipv4: Some(Ipv4Addr::new(198, 51, 100, 77)),
        ..VmSpec::numbered("vm1", 5)
    };
    let vm = tb.add_vm(hv, spec).unwrap();
    assert!(tb.vm_addr(vm, true).is_err());
    let v = tb.vm(vm).unwrap();
    assert_eq!(v.tap, "tap3a000505-5c");
    let link = tb
        .hv(hv)
        .unwrap()
        .ns()
        .ip(&["-j", "link", "show", &v.tap])
        .unwrap();
    assert!(link.contains("\"operstate\":\"UP\""), "{link}");
    let mac = v.ns().ip(&["-j", "link", "show", "eth0"]).unwrap();
    assert!(mac.contains(&v.spec.mac), "{mac}");
}
