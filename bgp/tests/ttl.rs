//! eBGP multihop and TTL security (GTSM, RFC 5082) against real daemons. A multihop session
//! runs from a speaker in a VM namespace, so that the hypervisor routes (and decrements the
//! TTL of) every packet between it and the ToR; single-hop sessions run from the hypervisor.
//! Needs root; fails (never skips) without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use skog_bgp::config::DEFAULT_SELECTION_DEFERRAL;
use skog_bgp::{PeerConfig, Shutdown, SpeakerConfig};
use skog_testbed::{Testbed, TorDaemon, TorId, TorNeighbor, TorOptions, Uplink, VmSpec};

/// How long a session that must not come up is watched: several connect retries (1 s) and
/// a hold time (9 s).
const NEVER: Duration = Duration::from_secs(12);

/// A ToR peering (multihop 2) with a speaker in a VM behind hypervisor hv1, two hops away.
struct TwoHops {
    tb: Testbed,
    up: Uplink,
    vm_addr: Ipv4Addr,
    vm: skog_testbed::VmId,
}

/// Sets up [`TwoHops`] with `daemon` on the ToR, GTSM there if `ttl_security`.
fn two_hops(label: &str, daemon: TorDaemon, ttl_security: bool) -> (TwoHops, TorId) {
    let mut tb = Testbed::new(label).unwrap();
    let tor = tb.add_tor("tor1", daemon, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    let up = tb.link(hv, tor).unwrap();
    let vm = tb.add_vm(hv, VmSpec::numbered("vm1", 0)).unwrap();
    tb.plumb_vm_by_hand(vm).unwrap();
    // The hypervisor's default route (BGP brings it in production; proxy ARP for the VM's
    // gateway needs one).
    tb.hv(hv)
        .unwrap()
        .ns()
        .ip(&["route", "add", "default", "via", &up.tor_v4.to_string()])
        .unwrap();
    let vm_addr = tb.vm(vm).unwrap().spec.ipv4.unwrap();
    tb.set_tor_options(
        tor,
        TorOptions {
            multihop: Some(2),
            ttl_security,
            extra_neighbors: vec![TorNeighbor {
                address: vm_addr.into(),
                asn: HV_ASN,
                local: up.tor_v4.into(),
            }],
            ..TorOptions::default()
        },
    )
    .unwrap();
    tb.start_tor(tor).unwrap();
    // The way back to the VM, through the hypervisor.
    tb.tor(tor)
        .unwrap()
        .ns()
        .ip(&[
            "route",
            "add",
            &format!("{vm_addr}/32"),
            "via",
            &up.hv_v4.to_string(),
        ])
        .unwrap();
    (
        TwoHops {
            tb,
            up,
            vm_addr,
            vm,
        },
        tor,
    )
}

impl TwoHops {
    /// A speaker in the VM peering with the ToR's uplink address.
    fn speaker(&self, multihop_ttl: Option<u8>, ttl_security: bool) -> Running {
        let mut peer = PeerConfig::new("tor1", self.up.tor_v4.into(), 65001);
        peer.local_address = Some(self.vm_addr.into());
        peer.connect_retry = Duration::from_secs(1);
        peer.hold_time = 9;
        peer.multihop_ttl = multihop_ttl;
        peer.ttl_security = ttl_security;
        let cfg = SpeakerConfig {
            asn: HV_ASN,
            router_id: self.vm_addr,
            listen: Some(SocketAddr::from((self.vm_addr, 179))),
            peers: vec![peer],
            graceful_restart: None,
            export: vec![net("203.0.113.10/32")],
            selection_deferral: DEFAULT_SELECTION_DEFERRAL,
        };
        start_speaker_in(self.tb.vm(self.vm).unwrap().ns(), cfg)
    }
}

fn multihop(daemon: TorDaemon) {
    let (h, tor) = two_hops(&format!("bgp_multihop_{}", daemon.name()), daemon, false);
    // TTL 2 reaches the ToR: the session comes up and routes flow both ways.
    let speaker = h.speaker(Some(2), false);
    assert!(speaker.establishes("tor1", CONVERGE));
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(h.up.tor_v4)]);
    wait_tor_daemon(&h.tb, tor, net("203.0.113.10/32"), true);
    speaker.stop(Shutdown::Withdraw("test over".into()));
}

#[test]
fn multihop_ttl_2_reaches_bird_two_hops_away() {
    multihop(TorDaemon::Bird);
}

#[test]
fn multihop_ttl_2_reaches_frr_two_hops_away() {
    multihop(TorDaemon::Frr);
}

#[test]
fn single_hop_ttl_1_does_not_reach_a_tor_two_hops_away() {
    let (h, _tor) = two_hops("bgp_multihop_ttl1", TorDaemon::Bird, false);
    // TTL 1 (the eBGP default) dies at the hypervisor, whichever side connects (our accepted
    // connections get TTL 1 as well).
    let speaker = h.speaker(None, false);
    assert!(
        !speaker.establishes("tor1", NEVER),
        "{:?}",
        speaker.peer("tor1")
    );
    speaker.stop(Shutdown::Withdraw("test over".into()));
}

/// A single-hop v4 session from hv1 with GTSM on our side; `tor_gtsm` on the ToR's.
fn gtsm_single_hop(daemon: TorDaemon, tor_gtsm: bool) -> bool {
    let label = format!("bgp_gtsm_{}_{tor_gtsm}", daemon.name());
    let mut tb = Testbed::new(&label).unwrap();
    let tor = tb.add_tor("tor1", daemon, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    let up = tb.link(hv, tor).unwrap();
    tb.set_tor_options(
        tor,
        TorOptions {
            ttl_security: tor_gtsm,
            ..TorOptions::default()
        },
    )
    .unwrap();
    tb.start_tor(tor).unwrap();
    let mut cfg = speaker_config(&tb, hv, None);
    cfg.peers.retain(|p| p.name == "tor1_v4");
    cfg.peers[0].ttl_security = true;
    let speaker = start_speaker(&tb, hv, cfg);
    let within = if tor_gtsm { CONVERGE } else { NEVER };
    let up_ok = speaker.establishes("tor1_v4", within);
    if up_ok {
        speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(up.tor_v4)]);
    }
    speaker.stop(Shutdown::Withdraw("test over".into()));
    up_ok
}

#[test]
fn gtsm_with_bird_establishes() {
    assert!(gtsm_single_hop(TorDaemon::Bird, true));
}

#[test]
fn gtsm_with_frr_establishes() {
    assert!(gtsm_single_hop(TorDaemon::Frr, true));
}

#[test]
fn gtsm_rejects_a_tor_sending_ttl_1() {
    // BIRD without GTSM sends single-hop eBGP with TTL 1: our minimum is 255.
    assert!(!gtsm_single_hop(TorDaemon::Bird, false));
}

// Both sides run GTSM over two hops; BIRD expects up to 2 (`multihop 2`, TTL >= 254).

#[test]
fn gtsm_for_one_hop_refuses_a_peer_two_hops_away() {
    let (h, _tor) = two_hops("bgp_gtsm_1hop", TorDaemon::Bird, true);
    // Ours, set for 1 hop, accepts TTL 255 only; BIRD's packets arrive with 254.
    let speaker = h.speaker(None, true);
    assert!(
        !speaker.establishes("tor1", NEVER),
        "{:?}",
        speaker.peer("tor1")
    );
    speaker.stop(Shutdown::Withdraw("test over".into()));
}

#[test]
fn gtsm_for_two_hops_accepts_a_peer_two_hops_away() {
    let (h, _tor) = two_hops("bgp_gtsm_2hops", TorDaemon::Bird, true);
    let speaker = h.speaker(Some(2), true);
    assert!(speaker.establishes("tor1", CONVERGE));
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(h.up.tor_v4)]);
    speaker.stop(Shutdown::Withdraw("test over".into()));
}
