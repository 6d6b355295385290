//! Session features against real daemons: ECMP across two ToRs, graceful restart in both
//! roles, route refresh in both directions, TCP MD5 with the right and a wrong key, and IPv4
//! over an IPv6 session (RFC 8950). Needs root; fails (never skips) without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use ipnet::IpNet;
use skog_bgp::config::GracefulRestartConfig;
use skog_bgp::fsm::State;
use skog_bgp::{RouteEvent, Shutdown};
use skog_testbed::{Testbed, TorDaemon, TorOptions, wait_until};

const GR: GracefulRestartConfig = GracefulRestartConfig {
    restart_time: 120,
    restarting: false,
};

#[test]
fn two_tors_give_ecmp_and_both_learn_our_routes() {
    let mut tb = Testbed::new("bgp_ecmp").unwrap();
    let tor1 = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
    let tor2 = tb.add_tor("tor2", TorDaemon::Frr, 65002).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    let up1 = tb.link(hv, tor1).unwrap();
    let up2 = tb.link(hv, tor2).unwrap();
    tb.start_tor(tor1).unwrap();
    tb.start_tor(tor2).unwrap();
    let mut cfg = speaker_config(&tb, hv, None);
    cfg.export = vec![net("198.51.100.10/32")];
    let speaker = start_speaker(&tb, hv, cfg);
    speaker.wait_established(&["tor1_v4", "tor1_v6", "tor2_v4", "tor2_v6"]);
    speaker.wait_learned(
        "0.0.0.0/0",
        &[IpAddr::from(up1.tor_v4), IpAddr::from(up2.tor_v4)],
    );
    speaker.wait_learned(
        "::/0",
        &[IpAddr::from(up1.tor_v6), IpAddr::from(up2.tor_v6)],
    );
    // The hypervisor's kernel has the multipath default route.
    let routes = tb.hv(hv).unwrap().ns().kernel_routes(false).unwrap();
    let default = routes.iter().find(|r| r.dst.prefix_len() == 0).unwrap();
    assert_eq!(default.gateways.len(), 2, "{default:?}");
    wait_tor_kernel(
        &tb,
        tor1,
        net("198.51.100.10/32"),
        &[IpAddr::from(up1.hv_v4)],
    );
    wait_tor_kernel(
        &tb,
        tor2,
        net("198.51.100.10/32"),
        &[IpAddr::from(up2.hv_v4)],
    );

    // One ToR goes away for good (no graceful restart configured): ECMP shrinks to the other.
    tb.stop_tor(tor2).unwrap();
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(up1.tor_v4)]);
    speaker.stop(Shutdown::Withdraw("test over".into()));
}

#[test]
fn tor_crash_under_graceful_restart_keeps_forwarding() {
    let mut tb = Testbed::new("bgp_gr_helper").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    let up = tb.link(hv, tor).unwrap();
    tb.start_tor(tor).unwrap();
    let speaker = start_speaker(&tb, hv, speaker_config(&tb, hv, Some(GR)));
    speaker.wait_established(&["tor1_v4", "tor1_v6"]);
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(up.tor_v4)]);
    let restart = speaker
        .peers()
        .iter()
        .map(|p| p.negotiated.as_ref().unwrap().peer_graceful_restart.clone())
        .collect::<Vec<_>>();
    assert!(
        restart.iter().all(Option::is_some),
        "BIRD offers GR: {restart:?}"
    );

    tb.kill_tor(tor).unwrap();
    wait_until("the sessions to notice the crash", CONVERGE, || {
        let peers = speaker.peers();
        if peers
            .iter()
            .all(|p| p.state != State::Established && p.stale)
        {
            Ok(())
        } else {
            Err(format!("{peers:?}"))
        }
    })
    .unwrap();
    // Stale, but still installed.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        speaker
            .learned
            .lock()
            .unwrap()
            .contains_key(&net("0.0.0.0/0"))
    );

    tb.start_tor(tor).unwrap();
    speaker.wait_established(&["tor1_v4", "tor1_v6"]);
    wait_until("End-of-RIB to clear the stale marks", CONVERGE, || {
        let peers = speaker.peers();
        if peers.iter().all(|p| !p.stale) {
            Ok(())
        } else {
            Err(format!("{peers:?}"))
        }
    })
    .unwrap();
    let removed = speaker.removals();
    assert!(
        removed.is_empty(),
        "the default route was never removed: {removed:?}"
    );
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(up.tor_v4)]);
    speaker.stop(Shutdown::Withdraw("test over".into()));
}

#[test]
fn speaker_restart_under_graceful_restart_keeps_our_routes_at_the_tor() {
    let mut tb = Testbed::new("bgp_gr_restart").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    let up = tb.link(hv, tor).unwrap();
    tb.start_tor(tor).unwrap();
    let (kept, dropped) = (net("198.51.100.10/32"), net("198.51.100.11/32"));
    let hv_v4 = [IpAddr::from(up.hv_v4)];

    let mut cfg = speaker_config(&tb, hv, Some(GR));
    cfg.export = vec![kept, dropped];
    let first = start_speaker(&tb, hv, cfg);
    first.wait_established(&["tor1_v4"]);
    wait_tor_kernel(&tb, tor, kept, &hv_v4);
    wait_tor_kernel(&tb, tor, dropped, &hv_v4);
    first.stop(Shutdown::Graceful);

    // While we are away the ToR keeps forwarding to us.
    std::thread::sleep(Duration::from_secs(3));
    assert!(tor_kernel_gateways(&tb, tor, kept).is_some());
    assert!(tor_kernel_gateways(&tb, tor, dropped).is_some());

    // Back, restarting, with only one of the two routes: our End-of-RIB purges the other.
    let mut cfg = speaker_config(
        &tb,
        hv,
        Some(GracefulRestartConfig {
            restarting: true,
            ..GR
        }),
    );
    cfg.export = vec![kept];
    let second = start_speaker(&tb, hv, cfg);
    second.wait_established(&["tor1_v4"]);
    wait_tor_kernel(&tb, tor, dropped, &[]);
    assert_eq!(tor_kernel_gateways(&tb, tor, kept), Some(hv_v4.to_vec()));
    second.stop(Shutdown::Withdraw("test over".into()));
    wait_tor_kernel(&tb, tor, kept, &[]);
}

/// The prefixes installed before the first `Converged`, and how many `Converged` there were.
fn installed_before_converged(events: &[RouteEvent]) -> (BTreeSet<IpNet>, usize) {
    let at = events
        .iter()
        .position(|e| *e == RouteEvent::Converged)
        .unwrap_or(events.len());
    let installed = events[..at]
        .iter()
        .filter_map(|e| match e {
            RouteEvent::Install { prefix, .. } => Some(*prefix),
            _ => None,
        })
        .collect();
    let count = events
        .iter()
        .filter(|e| **e == RouteEvent::Converged)
        .count();
    (installed, count)
}

/// `Converged` came once, after every route of `want` was installed.
fn assert_converged_after(speaker: &Running, want: &BTreeSet<IpNet>) {
    let (installed, count) = installed_before_converged(&speaker.events.lock().unwrap());
    assert_eq!(count, 1, "Converged exactly once");
    let missing: Vec<&IpNet> = want.difference(&installed).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} routes installed before Converged; missing e.g. {missing:?}",
        installed.len(),
        want.len()
    );
}

#[test]
fn speaker_restart_reports_converged_after_the_tors_routes_and_end_of_rib() {
    let mut tb = Testbed::new("bgp_gr_converged").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    tb.link(hv, tor).unwrap();
    // Enough routes that End-of-RIB comes well after the session is up.
    let extra: Vec<IpNet> = (0u128..3000)
        .map(|i| {
            IpNet::from(IpAddr::from(std::net::Ipv6Addr::from(
                0x2001_0db8_0200_u128 << 80 | i,
            )))
        })
        .collect();
    tb.set_tor_options(
        tor,
        TorOptions {
            extra_routes: extra.clone(),
            ..TorOptions::default()
        },
    )
    .unwrap();
    tb.start_tor(tor).unwrap();
    tb.tor(tor).unwrap().cli("enable extra6").unwrap();
    let mut want: BTreeSet<IpNet> = extra.into_iter().collect();
    want.extend([net("0.0.0.0/0"), net("::/0")]);
    let config = |restarting| {
        let mut cfg = speaker_config(&tb, hv, Some(GracefulRestartConfig { restarting, ..GR }));
        for p in &mut cfg.peers {
            p.import.prefixes = vec![net("2001:db8:200::/48")];
        }
        // Far beyond the test's wait: only End-of-RIB can end the deferral.
        cfg.selection_deferral = Duration::from_secs(600);
        cfg
    };
    let wait_converged = |speaker: &Running| {
        wait_until("Converged", CONVERGE, || {
            let events = speaker.events.lock().unwrap();
            match installed_before_converged(&events) {
                (_, 0) => Err(format!("{} events", events.len())),
                _ => Ok(()),
            }
        })
        .unwrap();
    };

    let first = start_speaker_events_only(&tb, hv, config(false));
    wait_converged(&first);
    assert_converged_after(&first, &want);
    first.stop(Shutdown::Graceful);

    // Restarting (the ToR keeps our session's routes): the consumer learns from Converged
    // when the ToR has sent its whole table again.
    let second = start_speaker_events_only(&tb, hv, config(true));
    wait_converged(&second);
    assert_converged_after(&second, &want);
    second.stop(Shutdown::Withdraw("test over".into()));
}

#[test]
fn route_refresh_in_both_directions_with_frr() {
    let mut tb = Testbed::new("bgp_refresh").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Frr, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    let up = tb.link(hv, tor).unwrap();
    tb.start_tor(tor).unwrap();
    let mut cfg = speaker_config(&tb, hv, None);
    cfg.export = vec![net("198.51.100.10/32")];
    let speaker = start_speaker(&tb, hv, cfg);
    speaker.wait_established(&["tor1_v4"]);
    wait_tor_kernel(&tb, tor, net("198.51.100.10/32"), &[IpAddr::from(up.hv_v4)]);
    let since = speaker.peers()[0].established_since;

    // FRR asks us (soft in): we answer, the session stays.
    let t = tb.tor(tor).unwrap();
    t.cli(&format!("clear bgp ipv4 unicast {} soft in", up.hv_v4))
        .unwrap();
    wait_until("our answer to FRR's refresh", CONVERGE, || {
        let p = speaker
            .peers()
            .into_iter()
            .find(|p| p.name == "tor1_v4")
            .unwrap();
        if p.refreshes_answered > 0 {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .unwrap();

    // We ask FRR: it counts a refresh received and re-sends its routes.
    speaker
        .rt
        .block_on(speaker.handle.refresh("tor1_v4"))
        .unwrap();
    wait_until("FRR to see our ROUTE-REFRESH", CONVERGE, || {
        let out = t
            .cli(&format!("show bgp neighbors {} json", up.hv_v4))
            .map_err(|e| e.to_string())?;
        let recv = out
            .lines()
            .find(|l| l.contains("\"routeRefreshRecv\""))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().trim_end_matches(',').to_owned());
        match recv.as_deref() {
            Some(n) if n != "0" => Ok(()),
            other => Err(format!("routeRefreshRecv {other:?}")),
        }
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let p = speaker
        .peers()
        .into_iter()
        .find(|p| p.name == "tor1_v4")
        .unwrap();
    assert_eq!(p.state, State::Established);
    assert_eq!(p.accepted, 1);
    assert_eq!(
        speaker.peers()[0].established_since,
        since,
        "no session reset"
    );
    assert!(tor_kernel_gateways(&tb, tor, net("198.51.100.10/32")).is_some());
    speaker.stop(Shutdown::Withdraw("test over".into()));
}

/// Whether a session with MD5 reaches Established within `deadline`.
fn md5_session(daemon: TorDaemon, our_key: &str, deadline: Duration) -> bool {
    let mut tb = Testbed::new(&format!("bgp_md5_{}", daemon.name())).unwrap();
    let tor = tb.add_tor("tor1", daemon, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    tb.link(hv, tor).unwrap();
    tb.set_tor_options(
        tor,
        TorOptions {
            md5_password: Some("fabric-secret".into()),
            ..TorOptions::default()
        },
    )
    .unwrap();
    tb.start_tor(tor).unwrap();
    let key_file = tb.dir().join("md5.key");
    std::fs::write(&key_file, format!("{our_key}\n")).unwrap();
    let mut cfg = speaker_config(&tb, hv, None);
    for p in &mut cfg.peers {
        p.md5_key_file = Some(key_file.clone());
    }
    let speaker = start_speaker(&tb, hv, cfg);
    let up = wait_until("the v4 session with MD5", deadline, || {
        let p = speaker
            .peers()
            .into_iter()
            .find(|p| p.name == "tor1_v4")
            .unwrap();
        if p.state == State::Established {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .is_ok();
    speaker.stop(Shutdown::Withdraw("test over".into()));
    up
}

#[test]
fn md5_with_the_right_key_establishes() {
    assert!(md5_session(TorDaemon::Bird, "fabric-secret", CONVERGE));
    assert!(md5_session(TorDaemon::Frr, "fabric-secret", CONVERGE));
}

#[test]
fn md5_with_a_wrong_key_never_establishes() {
    // Long enough for several connection attempts, each one dropped by the kernel.
    assert!(!md5_session(
        TorDaemon::Frr,
        "not-the-secret",
        Duration::from_secs(15)
    ));
}

#[test]
fn ipv4_over_an_ipv6_session_with_frr() {
    let mut tb = Testbed::new("bgp_enhe").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Frr, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    let up = tb.link(hv, tor).unwrap();
    tb.set_tor_options(
        tor,
        TorOptions {
            extended_next_hop: true,
            ..TorOptions::default()
        },
    )
    .unwrap();
    tb.start_tor(tor).unwrap();
    let mut cfg = speaker_config(&tb, hv, None);
    // Only the IPv6 session, carrying both families.
    cfg.peers.retain(|p| p.address.is_ipv6());
    cfg.peers[0].extended_next_hop = true;
    cfg.export = vec![net("198.51.100.10/32")];
    let speaker = start_speaker(&tb, hv, cfg);
    speaker.wait_established(&["tor1_v6"]);
    let n = speaker.peers()[0].negotiated.clone().unwrap();
    assert!(n.extended_next_hop_v4, "{n:?}");
    // FRR's IPv4 default route arrives with an IPv6 next hop.
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(up.tor_v6)]);
    // Our IPv4 endpoint route reaches FRR's kernel through the IPv6 link.
    let prefix = net("198.51.100.10/32");
    wait_until("the IPv4 route via IPv6 in FRR's kernel", CONVERGE, || {
        let routes = tb
            .tor(tor)
            .unwrap()
            .kernel_routes(false)
            .map_err(|e| e.to_string())?;
        match routes.iter().find(|r| r.dst == prefix) {
            Some(r) if r.devices.contains(&up.tor_if) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    let raw = tb
        .tor(tor)
        .unwrap()
        .ns()
        .ip(&["-4", "route", "show", "198.51.100.10"])
        .unwrap();
    assert!(raw.contains("via inet6"), "{raw}");
    speaker.stop(Shutdown::Withdraw("test over".into()));
}

#[test]
fn rfc8538_with_frr_a_plain_cease_keeps_routes_and_our_stop_is_a_hard_reset() {
    let mut tb = Testbed::new("bgp_rfc8538").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Frr, 65001).unwrap();
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    let up = tb.link(hv, tor).unwrap();
    tb.start_tor(tor).unwrap();
    // A restart time far beyond the waits below: stale routes would outlive them.
    let gr = GracefulRestartConfig {
        restart_time: 300,
        restarting: false,
    };
    let mut cfg = speaker_config(&tb, hv, Some(gr));
    cfg.peers.retain(|p| p.name == "tor1_v4");
    let ours = net("198.51.100.10/32");
    cfg.export = vec![ours];
    let speaker = start_speaker(&tb, hv, cfg);
    speaker.wait_established(&["tor1_v4"]);
    let first = speaker.peer("tor1_v4");
    assert!(first.negotiated.unwrap().graceful_notification, "N bit");
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(up.tor_v4)]);
    wait_tor_kernel(&tb, tor, ours, &[IpAddr::from(up.hv_v4)]);

    // FRR resets the session with a plain Cease / Administrative Reset: under RFC 8538 that is
    // a graceful restart, and we keep its default route while the session comes back.
    let t = tb.tor(tor).unwrap();
    t.cli("configure terminal\nrouter bgp 65001\nno bgp hard-administrative-reset")
        .unwrap();
    t.cli(&format!("clear bgp {}", up.hv_v4)).unwrap();
    wait_until("a new session", CONVERGE, || {
        let p = speaker.peer("tor1_v4");
        if p.state == State::Established && p.established_since != first.established_since {
            Ok(())
        } else {
            Err(format!("{:?} {:?}", p.state, p.last_error))
        }
    })
    .unwrap();
    let reset = speaker.peer("tor1_v4").last_error.unwrap_or_default();
    assert!(
        reset.contains("(6/4)"),
        "FRR sent Administrative Reset: {reset}"
    );
    let removed = speaker.removals();
    assert!(removed.is_empty(), "routes kept: {removed:?}");

    // Our administrative stop is a Hard Reset: FRR drops our route now rather than keeping it
    // stale for 300 s.
    speaker.stop(Shutdown::Withdraw("test over".into()));
    wait_tor_kernel(&tb, tor, ours, &[]);
}
