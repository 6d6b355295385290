//! Two of our speakers peering with each other inside one namespace (on loopback addresses),
//! both active and passive so that their connections usually collide (RFC 4271 §6.8): one
//! session survives and carries 512 host routes in packed UPDATEs, withdrawals included;
//! removing a peer at runtime withdraws what it taught. Needs root (a namespace of its own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use skog_bgp::config::{GracefulRestartConfig, ImportPolicy};
use skog_bgp::fsm::State;
use skog_bgp::{PeerConfig, RouteEvent, Shutdown, Speaker, SpeakerConfig, SpeakerHandle};
use skog_testbed::{Testbed, wait_until};

fn config(me: u8, other: u8) -> SpeakerConfig {
    let addr = |n: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
    let mut peer = PeerConfig::new(
        format!("speaker{other}"),
        addr(other),
        65000 + u32::from(other),
    );
    peer.local_address = Some(addr(me));
    peer.connect_retry = Duration::from_secs(1);
    peer.hold_time = 9;
    peer.import = ImportPolicy {
        default_route: false,
        prefixes: vec![
            "198.51.100.0/24".parse().unwrap(),
            "203.0.113.0/24".parse().unwrap(),
        ],
    };
    SpeakerConfig {
        asn: 65000 + u32::from(me),
        router_id: Ipv4Addr::new(192, 0, 2, me),
        listen: Some(SocketAddr::new(addr(me), 179)),
        peers: vec![peer],
        graceful_restart: Some(GracefulRestartConfig {
            restart_time: 120,
            restarting: false,
        }),
        export: Vec::new(),
        selection_deferral: Duration::from_secs(600),
    }
}

#[test]
fn two_speakers_collide_settle_and_exchange_routes() {
    let mut tb = Testbed::new("bgp_pair").unwrap();
    let hv = tb.add_hypervisor("hv1", 65001).unwrap();
    let ns = tb.hv(hv).unwrap().ns();
    ns.ip(&["addr", "add", "127.0.0.2/8", "dev", "lo"]).unwrap();
    let rt = ns.tokio_runtime(2).unwrap();
    let start = |cfg: SpeakerConfig| -> (SpeakerHandle, _) {
        rt.block_on(rt.spawn(Speaker::start(cfg))).unwrap().unwrap()
    };
    let (a, mut a_events) = start(config(1, 2));
    let (b, mut b_events) = start(config(2, 1));
    let established = |h: &SpeakerHandle| {
        let p = rt.block_on(h.peers()).unwrap().remove(0);
        if p.state == State::Established {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    };
    wait_until("both sides established", Duration::from_secs(30), || {
        established(&a)?;
        established(&b)
    })
    .unwrap();
    let since = established(&a).unwrap().established_since;

    // Every host of two /24s; then 100 of them withdrawn.
    let prefixes: Vec<IpNet> = (0u32..256)
        .flat_map(|h| {
            [0xc633_6400u32 + h, 0xcb00_7100 + h]
                .map(|a| IpNet::from(IpAddr::V4(Ipv4Addr::from(a))))
        })
        .collect();
    // Each side's initial routing information is complete once the other's End-of-RIB (sent
    // after its empty initial table) arrived; the deferral timer (600 s) plays no part.
    for events in [&mut a_events, &mut b_events] {
        let first = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), events.recv()).await });
        assert_eq!(first.unwrap(), Some(RouteEvent::Converged));
    }
    a.announce(prefixes.clone()).unwrap();
    let mut learned = std::collections::BTreeSet::new();
    rt.block_on(async {
        while learned.len() < prefixes.len() {
            match tokio::time::timeout(Duration::from_secs(30), b_events.recv()).await {
                Ok(Some(RouteEvent::Install { prefix, next_hops })) => {
                    assert_eq!(next_hops[..], [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))]);
                    learned.insert(prefix);
                }
                other => panic!("{other:?} after {} routes", learned.len()),
            }
        }
    });
    let p = established(&b).unwrap();
    assert_eq!((p.received, p.accepted), (512, 512));
    assert_eq!(established(&a).unwrap().advertised, 512);

    a.withdraw(prefixes[..100].to_vec()).unwrap();
    rt.block_on(async {
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_secs(30), b_events.recv()).await {
                Ok(Some(RouteEvent::Remove { prefix })) => {
                    assert!(prefixes[..100].contains(&prefix));
                }
                other => panic!("{other:?}"),
            }
        }
    });
    assert_eq!(established(&b).unwrap().received, 412);
    // The collision left one stable session: it never reset.
    assert_eq!(established(&a).unwrap().established_since, since);

    // Removing the peer at runtime: B's routes from A go.
    rt.block_on(b.remove_peer("speaker1")).unwrap();
    rt.block_on(async {
        for _ in 0..412 {
            match tokio::time::timeout(Duration::from_secs(30), b_events.recv()).await {
                Ok(Some(RouteEvent::Remove { .. })) => {}
                other => panic!("{other:?}"),
            }
        }
    });
    assert!(rt.block_on(b.routes()).unwrap().is_empty());
    assert!(
        a_events.try_recv().is_err(),
        "B announced nothing, Converged came once"
    );
    rt.block_on(a.shutdown(Shutdown::Withdraw("done".into())))
        .unwrap();
    rt.block_on(b.shutdown(Shutdown::Withdraw("done".into())))
        .unwrap();
}
