//! Bounded, deterministic fuzzing of everything peer bytes reach: frame header checks, the
//! decoder (netgauze underneath) and the session state machine. Random frames and mutations
//! of valid ones (OPENs, UPDATEs of both families, NOTIFICATIONs, ROUTE-REFRESH); a panic
//! fails the test and prints the input. `SKOG_FUZZ_ITERATIONS` raises the count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use skog_bgp::codec::{
    self, Capabilities, DecodeContext, Family, HEADER_LEN, MAX_EXTENDED_MESSAGE_LEN, Notification,
    Open,
};
use skog_bgp::fsm::{Event, Fsm, FsmConfig, State};
use skog_bgp::pack::{self, Encoding, ExportAttrs, NextHopSelf};

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn caps() -> Capabilities {
    Capabilities {
        families: vec![Family::Ipv4, Family::Ipv6],
        route_refresh: true,
        enhanced_route_refresh: true,
        asn4: Some(65001),
        graceful_restart: None,
        extended_message: true,
        extended_next_hop_v4: true,
    }
}

/// The OPEN of the peer the frames come from.
fn peer_open() -> Open {
    Open {
        version: 4,
        asn: 65001,
        hold_time: 90,
        router_id: Ipv4Addr::new(192, 0, 2, 200),
        capabilities: caps(),
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let v4: Vec<IpNet> = (0..40u32)
        .map(|i| IpNet::from(IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i))))
        .collect();
    let v6: Vec<IpNet> = (0..20u128)
        .map(|i| IpNet::from(IpAddr::V6((0x2001_0db8_0100u128 << 80 | i).into())))
        .collect();
    let attrs = ExportAttrs {
        as_path: vec![65001, 4_200_000_001],
        asn4: true,
        local_pref: Some(100),
        communities: vec![1, 2],
        large_communities: vec![(1, 2, 3)],
        next_hop: NextHopSelf::V4(Ipv4Addr::new(192, 0, 2, 1)),
    };
    let v6_attrs = ExportAttrs {
        next_hop: NextHopSelf::V6 {
            global: "2001:db8::1".parse().unwrap(),
            link_local: Some("fe80::1".parse().unwrap()),
        },
        ..attrs.clone()
    };
    let open = peer_open();
    let mut s = vec![
        open.encode().unwrap(),
        codec::keepalive(),
        codec::route_refresh(Family::Ipv4, 0),
        Notification::cease_with_text(2, "bye").encode(),
        pack::end_of_rib(Family::Ipv6, Encoding::Multiprotocol).unwrap(),
    ];
    s.extend(pack::announcements(Family::Ipv4, &attrs, &v4, 4096).unwrap());
    s.extend(pack::announcements(Family::Ipv6, &v6_attrs, &v6, 4096).unwrap());
    s.extend(pack::announcements(Family::Ipv4, &v6_attrs, &v4, 4096).unwrap());
    s.extend(pack::withdrawals(Family::Ipv6, Encoding::Multiprotocol, &v6, 4096).unwrap());
    s
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 | 1 => {
                let i = rng.below(f.len());
                if let Some(b) = f.get_mut(i) {
                    *b = rng.byte();
                }
            }
            2 => {
                let i = HEADER_LEN + rng.below(f.len().saturating_sub(HEADER_LEN));
                f.truncate(i);
            }
            3 => {
                let i = rng.below(f.len() + 1);
                let n = rng.below(8) + 1;
                for _ in 0..n {
                    f.insert(i.min(f.len()), rng.byte());
                }
            }
            4 => {
                // Interesting values in a length-ish position.
                let i = HEADER_LEN + rng.below(f.len().saturating_sub(HEADER_LEN));
                if let Some(b) = f.get_mut(i) {
                    *b = [0, 1, 0x7f, 0x80, 0xff, 32, 128, 129][rng.below(8)];
                }
            }
            _ => {
                let i = HEADER_LEN + rng.below(f.len().saturating_sub(HEADER_LEN));
                f.truncate(i.max(HEADER_LEN));
                let n = rng.below(64);
                for _ in 0..n {
                    f.push(rng.byte());
                }
            }
        }
    }
    // Mostly keep the header's length consistent so the body parsers get exercised.
    if rng.below(4) != 0 && f.len() >= HEADER_LEN {
        let len = u16::try_from(f.len()).unwrap_or(u16::MAX);
        f[16..18].copy_from_slice(&len.to_be_bytes());
    }
    f
}

fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let mut f = vec![0xff; 16];
    let body = rng.below(200);
    f.extend_from_slice(&u16::try_from(HEADER_LEN + body).unwrap().to_be_bytes());
    f.push(1 + rng.below(6) as u8);
    for _ in 0..body {
        f.push(rng.byte());
    }
    f
}

fn fsm_in(state: State) -> Fsm {
    let mut fsm = Fsm::new(FsmConfig {
        local_asn: 65101,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        peer_asn: 65001,
        hold_time: 90,
        connect_retry: Duration::from_secs(1),
        passive: false,
        idle_hold: Duration::from_secs(1),
        max_idle_hold: Duration::from_secs(60),
        capabilities: caps(),
    });
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnected);
    if state == State::Established {
        let open = peer_open();
        fsm.handle(Event::Message(codec::Message::Open(open)));
        fsm.handle(Event::Message(codec::Message::Keepalive));
    }
    assert_eq!(fsm.state(), state);
    fsm
}

/// What the session driver does with one frame: check the header, decode, feed the FSM.
fn feed(frame: &[u8], fsms: &mut [Fsm]) {
    let Some(header) = frame.get(..HEADER_LEN) else {
        return;
    };
    let header: &[u8; HEADER_LEN] = header.try_into().unwrap();
    let event = match codec::frame_length(header, MAX_EXTENDED_MESSAGE_LEN) {
        Err(n) => Event::DecodeError(n),
        Ok(len) => match frame.get(..len) {
            None => return, // the driver waits for more bytes
            Some(frame) => {
                let asn4 = frame[0] & 1 == 0;
                match codec::decode(frame, DecodeContext { asn4 }) {
                    Ok(m) => Event::Message(m),
                    Err(n) => {
                        // Every error we would send must encode.
                        assert!(n.encode().len() >= 21);
                        Event::DecodeError(n)
                    }
                }
            }
        },
    };
    for fsm in fsms.iter_mut() {
        fsm.handle(event.clone());
    }
}

#[test]
fn decoder_and_fsm_survive_random_and_mutated_frames() {
    let iterations: usize = std::env::var("SKOG_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seeds = seeds();
    let mut rng = Rng(0x5eed_b9b0_0c0d_e001);
    let (mut decoded, mut rejected) = (0usize, 0usize);
    for i in 0..iterations {
        let frame = if i % 5 == 0 {
            random_frame(&mut rng)
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        let mut fsms = [fsm_in(State::OpenSent), fsm_in(State::Established)];
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            feed(&frame, &mut fsms);
        }));
        if outcome.is_err() {
            panic!("input {i} panicked: {frame:02x?}");
        }
        let ok = frame.len() >= HEADER_LEN
            && codec::frame_length(frame[..HEADER_LEN].try_into().unwrap(), 65535).is_ok_and(|l| {
                frame.len() >= l && codec::decode(&frame[..l], DecodeContext { asn4: true }).is_ok()
            });
        if ok {
            decoded += 1;
        } else {
            rejected += 1;
        }
    }
    // The corpus must exercise both paths, or the test proves nothing.
    assert!(decoded > iterations / 20, "only {decoded} frames decoded");
    assert!(
        rejected > iterations / 20,
        "only {rejected} frames rejected"
    );
}
