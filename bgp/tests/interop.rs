//! The speaker against real BIRD 2, FRR and GoBGP ToRs in network namespaces: sessions over
//! IPv4 and IPv6 with a 4-byte AS, the ToR's default route learned (and installed in the
//! hypervisor's kernel from the events), endpoint routes reaching the ToR's kernel and leaving
//! it again. Needs root; fails (never skips) without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;

use common::*;
use skog_bgp::Shutdown;
use skog_bgp::fsm::State;
use skog_testbed::{HvId, Testbed, TorDaemon, TorId, VmSpec};

/// One hypervisor (AS 4200000001) linked to one ToR, the ToR started.
fn one_tor(label: &str, daemon: TorDaemon, tor_asn: u32) -> (Testbed, HvId, TorId) {
    let mut tb = Testbed::new(label).unwrap();
    let tor = tb.add_tor("tor1", daemon, tor_asn).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    tb.link(hv, tor).unwrap();
    tb.start_tor(tor).unwrap();
    (tb, hv, tor)
}

/// Sessions up on both families, default routes learned and installed, endpoint routes in and
/// out of the ToR (its kernel when it has one, else its RIB).
fn endpoint_routes_and_default_route(daemon: TorDaemon, tor_asn: u32) {
    let label = format!(
        "bgp_{}_{}",
        daemon.name(),
        if tor_asn == HV_ASN { "ibgp" } else { "ebgp" }
    );
    let (mut tb, hv, tor) = one_tor(&label, daemon, tor_asn);
    let vm = tb.add_vm(hv, VmSpec::numbered("vm1", 0)).unwrap();
    let speaker = start_speaker(&tb, hv, speaker_config(&tb, hv, None));
    speaker.wait_established(&["tor1_v4", "tor1_v6"]);
    let uplink = tb.hv(hv).unwrap().uplinks[0].clone();

    // The ToR's default routes, learned with the ToR as next hop, and in the kernel.
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(uplink.tor_v4)]);
    speaker.wait_learned("::/0", &[IpAddr::from(uplink.tor_v6)]);
    let hv_ns = tb.hv(hv).unwrap().ns();
    for v6 in [false, true] {
        let routes = hv_ns.kernel_routes(v6).unwrap();
        let default = routes.iter().find(|r| r.dst.prefix_len() == 0);
        assert!(default.is_some_and(|r| r.protocol == "bgp"), "{routes:?}");
    }

    // Endpoint routes: announced, in the ToR, withdrawn, gone.
    let v4 = net(&format!("{}/32", tb.vm_addr(vm, false).unwrap()));
    let v6 = net(&format!("{}/128", tb.vm_addr(vm, true).unwrap()));
    speaker.handle.announce(vec![v4, v6]).unwrap();
    if daemon.installs_routes() {
        wait_tor_kernel(&tb, tor, v4, &our_next_hops(&tb, hv, false));
        wait_tor_kernel(&tb, tor, v6, &our_next_hops(&tb, hv, true));
    } else {
        wait_tor_daemon(&tb, tor, v4, true);
        wait_tor_daemon(&tb, tor, v6, true);
    }

    let peers = speaker.peers();
    for p in &peers {
        assert_eq!(p.state, State::Established, "{p:?}");
        let n = p.negotiated.as_ref().unwrap();
        assert!(n.asn4, "{} did not negotiate 4-octet AS", p.name);
        assert_eq!(n.peer_asn, tor_asn);
        assert_eq!(p.advertised, 1, "{p:?}");
        assert_eq!(p.accepted, 1, "only the default route is accepted: {p:?}");
        assert!(p.established_since.is_some());
    }

    speaker.handle.withdraw(vec![v4, v6]).unwrap();
    if daemon.installs_routes() {
        wait_tor_kernel(&tb, tor, v4, &[]);
        wait_tor_kernel(&tb, tor, v6, &[]);
    } else {
        wait_tor_daemon(&tb, tor, v4, false);
        wait_tor_daemon(&tb, tor, v6, false);
    }
    speaker.stop(Shutdown::Withdraw("test over".into()));
    drop(tb);
}

#[test]
fn bird_ebgp() {
    endpoint_routes_and_default_route(TorDaemon::Bird, 65001);
}

#[test]
fn bird_ibgp() {
    endpoint_routes_and_default_route(TorDaemon::Bird, HV_ASN);
}

#[test]
fn frr_ebgp() {
    endpoint_routes_and_default_route(TorDaemon::Frr, 65001);
}

#[test]
fn frr_ibgp() {
    endpoint_routes_and_default_route(TorDaemon::Frr, HV_ASN);
}

#[test]
fn gobgp_ebgp() {
    endpoint_routes_and_default_route(TorDaemon::Gobgp, 65001);
}
