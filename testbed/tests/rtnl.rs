//! The rtnetlink route writer and watcher against a real namespace's kernel. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use skog_testbed::{Testbed, VmSpec};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn written_routes_are_seen_arriving_and_leaving() {
    let mut tb = Testbed::new("rtnl_watch").unwrap();
    let hv = tb.add_hypervisor("hv1", 65101).unwrap();
    let vm = tb.add_vm(hv, VmSpec::numbered("vm1", 0)).unwrap();
    let tap = tb.vm(vm).unwrap().tap.clone();
    let ns = tb.hv(hv).unwrap().ns();
    let watch = ns.watch_routes().unwrap();
    let writer = ns.route_writer(&tap).unwrap();

    // More than one request datagram, both families.
    let mut dsts: Vec<IpNet> = (0..300u32)
        .map(|i| {
            let a = Ipv6Addr::from(0x2001_0db8_0100_0000_0000_0000_0001_0000u128 + u128::from(i));
            IpNet::from(IpAddr::V6(a))
        })
        .collect();
    dsts.push("198.51.100.200/32".parse().unwrap());

    let before = Instant::now();
    writer.add(&dsts).unwrap();
    let arrived = watch.wait_for(&dsts, true, WAIT).unwrap();
    assert!(arrived >= before);
    let v6 = ns.kernel_routes(true).unwrap();
    let ours = v6
        .iter()
        .filter(|r| dsts.contains(&r.dst) && r.protocol == "boot" && r.devices == [tap.clone()])
        .count();
    assert_eq!(ours, 300);
    let v4 = ns.kernel_routes(false).unwrap();
    assert!(
        v4.iter()
            .any(|r| r.dst == dsts[300] && r.devices == [tap.clone()])
    );

    // Adding an existing route is refused, naming the device.
    let err = writer.add(&dsts[..1]).unwrap_err().to_string();
    assert!(err.contains(&tap), "{err}");

    writer.delete(&dsts).unwrap();
    let gone = watch.wait_for(&dsts, false, WAIT).unwrap();
    assert!(gone >= arrived);
    assert!(
        ns.kernel_routes(true)
            .unwrap()
            .iter()
            .all(|r| !dsts.contains(&r.dst))
    );
    assert_eq!(watch.resyncs(), 0);
}

#[test]
fn waiting_for_a_route_that_never_comes_times_out() {
    let mut tb = Testbed::new("rtnl_timeout").unwrap();
    let hv = tb.add_hypervisor("hv1", 65101).unwrap();
    let watch = tb.hv(hv).unwrap().ns().watch_routes().unwrap();
    let never: IpNet = "198.51.100.201/32".parse().unwrap();
    let err = watch
        .wait_for(&[never], true, Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 not present"), "{err}");
    // Never seen counts as gone.
    watch.wait_for(&[never], false, WAIT).unwrap();
}
