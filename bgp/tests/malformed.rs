//! A peer sending malformed UPDATEs (RFC 7606): a scripted peer in the ToR's namespace, since
//! no real daemon can be made to misbehave. Missing and malformed attributes are
//! treat-as-withdraw with the session kept; a malformed MP_REACH_NLRI resets the session with
//! an UPDATE Message Error NOTIFICATION. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;
use skog_bgp::Shutdown;
use skog_bgp::codec::{self, Capabilities, DecodeContext, Family, Message, Open};
use skog_bgp::fsm::State;
use skog_testbed::{Testbed, TorDaemon, wait_until};

fn read_message(s: &mut TcpStream) -> Message {
    let mut header = [0u8; codec::HEADER_LEN];
    s.read_exact(&mut header).unwrap();
    let len = codec::frame_length(&header, codec::MAX_MESSAGE_LEN).unwrap();
    let mut frame = header.to_vec();
    frame.resize(len, 0);
    s.read_exact(&mut frame[codec::HEADER_LEN..]).unwrap();
    codec::decode(&frame, DecodeContext { asn4: true }).unwrap()
}

/// Reads until a message that is not a KEEPALIVE.
fn read_non_keepalive(s: &mut TcpStream) -> Message {
    loop {
        match read_message(s) {
            Message::Keepalive => {}
            m => return m,
        }
    }
}

fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let len = 19 + 4 + attrs.len() + nlri.len();
    let mut f = vec![0xff; 16];
    f.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    f.push(2);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    f.extend_from_slice(attrs);
    f.extend_from_slice(nlri);
    f
}

const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
const AS_PATH: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9]; // 4-octet: AS 65001
const DEFAULT: [u8; 1] = [0]; // 0.0.0.0/0

#[test]
fn malformed_updates_get_rfc7606_treatment() {
    let mut tb = Testbed::new("bgp_malformed").unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap(); // never started
    let hv = tb.add_hypervisor("hv1", HV_ASN).unwrap();
    let up = tb.link(hv, tor).unwrap();
    let listen = SocketAddr::new(IpAddr::V4(up.tor_v4), 179);
    let listener = tb
        .tor(tor)
        .unwrap()
        .ns()
        .enter(move || TcpListener::bind(listen))
        .unwrap()
        .unwrap();
    let mut cfg = speaker_config(&tb, hv, None);
    cfg.peers.retain(|p| p.address.is_ipv4());
    let speaker = start_speaker(&tb, hv, cfg);

    listener.set_nonblocking(true).unwrap();
    let mut s = wait_until("the speaker to connect", CONVERGE, || {
        listener.accept().map(|(s, _)| s).map_err(|e| e.to_string())
    })
    .unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(matches!(read_message(&mut s), Message::Open(_)));
    let open = Open {
        version: 4,
        asn: 65001,
        // No hold timer: this peer sends no KEEPALIVEs of its own.
        hold_time: 0,
        router_id: Ipv4Addr::new(192, 0, 2, 200),
        capabilities: Capabilities {
            families: vec![Family::Ipv4],
            asn4: Some(65001),
            ..Capabilities::default()
        },
    };
    s.write_all(&open.encode().unwrap()).unwrap();
    s.write_all(&codec::keepalive()).unwrap();
    assert_eq!(read_message(&mut s), Message::Keepalive);
    speaker.wait_established(&["tor1_v4"]);
    // Our End-of-RIB.
    assert!(matches!(read_non_keepalive(&mut s), Message::Update(u) if u.end_of_rib.is_some()));

    let next_hop = [0x40, 3, 4, 192, 0, 2, 0];
    let valid = update(&[&ORIGIN[..], &AS_PATH, &next_hop].concat(), &DEFAULT);
    let no_as_path = update(&[&ORIGIN[..], &next_hop].concat(), &DEFAULT);
    let bad_origin = update(
        &[&[0x40, 1, 1, 7][..], &AS_PATH, &next_hop].concat(),
        &DEFAULT,
    );
    let bad_mp_reach = update(
        &[
            &ORIGIN[..],
            &AS_PATH,
            &[0x90, 14, 0, 6, 0, 2, 1, 16, 0x20, 0x01],
        ]
        .concat(),
        &[],
    );
    let settle = || std::thread::sleep(Duration::from_millis(500));

    // Missing AS_PATH: treat-as-withdraw; nothing learned, session up.
    s.write_all(&no_as_path).unwrap();
    settle();
    assert!(speaker.learned.lock().unwrap().is_empty());
    // A valid default route is learned.
    s.write_all(&valid).unwrap();
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(up.tor_v4)]);
    // A malformed ORIGIN withdraws it, and the session stays.
    s.write_all(&bad_origin).unwrap();
    wait_until("the default route withdrawn", CONVERGE, || {
        if speaker.learned.lock().unwrap().is_empty() {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .unwrap();
    assert_eq!(speaker.peers()[0].state, State::Established);

    // A malformed MP_REACH_NLRI: UPDATE Message Error, session reset.
    s.write_all(&valid).unwrap();
    speaker.wait_learned("0.0.0.0/0", &[IpAddr::from(up.tor_v4)]);
    s.write_all(&bad_mp_reach).unwrap();
    match read_non_keepalive(&mut s) {
        // Malformed Attribute List or Optional Attribute Error, depending on where the
        // codec notices it.
        Message::Notification(n) => assert!(n.code == 3 && [1, 9].contains(&n.subcode), "{n}"),
        other => panic!("expected a NOTIFICATION, got {other:?}"),
    }
    wait_until(
        "the session to reset and its routes to go",
        CONVERGE,
        || {
            let p = &speaker.peers()[0];
            if p.state != State::Established && speaker.learned.lock().unwrap().is_empty() {
                Ok(p.last_error.clone())
            } else {
                Err(format!("{p:?}"))
            }
        },
    )
    .map(|err| {
        assert!(
            err.unwrap_or_default().contains("UPDATE"),
            "last error names it"
        )
    })
    .unwrap();
    speaker.stop(Shutdown::Withdraw("test over".into()));
}
