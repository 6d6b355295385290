//! Outgoing UPDATEs: the attributes we put on our routes for one peer, and the packing of many
//! prefixes into as few UPDATEs as fit the negotiated size (4096 bytes, or 65535 with the
//! Extended Message capability). netgauze neither splits nor bounds UPDATEs, and writes a wrong
//! flag for long MP_REACH attributes unless told to use the extended length, so both are
//! handled here; every message is length-checked before it is written.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::community::{Community, LargeCommunity};
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::path_attribute::{
    As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, Communities,
    LargeCommunities, LocalPreference, MpReach, MpUnreach, NextHop, Origin, PathAttribute,
    PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_parse_utils::WritablePdu;

use crate::codec::{AS_TRANS, EncodeError, Family, write_message};

/// What we attach to every route we announce to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportAttrs {
    /// AS_PATH: `[our AS]` towards eBGP peers, empty towards iBGP peers.
    pub as_path: Vec<u32>,
    /// Whether the peer takes 4-octet AS numbers in AS_PATH.
    pub asn4: bool,
    /// LOCAL_PREF, sent to iBGP peers only.
    pub local_pref: Option<u32>,
    /// COMMUNITIES.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITIES.
    pub large_communities: Vec<(u32, u32, u32)>,
    /// Our address on the session (next-hop self).
    pub next_hop: NextHopSelf,
}

/// The next hop we announce: our end of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHopSelf {
    /// An IPv4 session.
    V4(Ipv4Addr),
    /// An IPv6 session: the global address and, when known, the interface's link-local one.
    V6 {
        /// Global address.
        global: Ipv6Addr,
        /// Link-local address of the session's interface.
        link_local: Option<Ipv6Addr>,
    },
}

/// How a family's NLRI travel on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// IPv4 in the UPDATE's own NLRI and withdrawn fields, with a NEXT_HOP attribute.
    Classic,
    /// In MP_REACH_NLRI / MP_UNREACH_NLRI (IPv6, and IPv4 with an IPv6 next hop per RFC 8950).
    Multiprotocol,
}

impl Encoding {
    /// The encoding for `family` given our next hop.
    pub fn for_family(family: Family, next_hop: NextHopSelf) -> Encoding {
        match (family, next_hop) {
            (Family::Ipv4, NextHopSelf::V4(_)) => Encoding::Classic,
            _ => Encoding::Multiprotocol,
        }
    }
}

fn attr(
    optional: bool,
    transitive: bool,
    extended: bool,
    value: PathAttributeValue,
) -> Result<PathAttribute, EncodeError> {
    PathAttribute::from(optional, transitive, false, extended, value)
        .map_err(|(v, e)| EncodeError::Attribute(format!("{e:?} for {v:?}")))
}

fn v4_nlri(prefixes: &[IpNet]) -> Result<Vec<Ipv4UnicastAddress>, EncodeError> {
    prefixes
        .iter()
        .map(|p| match p {
            IpNet::V4(n) => Ipv4Unicast::from_net(*n)
                .map(|u| Ipv4UnicastAddress::new(None, u))
                .map_err(|_| EncodeError::BadPrefix(*p)),
            IpNet::V6(_) => Err(EncodeError::BadPrefix(*p)),
        })
        .collect()
}

fn v6_nlri(prefixes: &[IpNet]) -> Result<Vec<Ipv6UnicastAddress>, EncodeError> {
    prefixes
        .iter()
        .map(|p| match p {
            IpNet::V6(n) => Ipv6Unicast::from_net(*n)
                .map(|u| Ipv6UnicastAddress::new(None, u))
                .map_err(|_| EncodeError::BadPrefix(*p)),
            IpNet::V4(_) => Err(EncodeError::BadPrefix(*p)),
        })
        .collect()
}

/// Bytes one prefix takes in NLRI: a length octet and the significant octets.
fn nlri_cost(prefix: &IpNet) -> usize {
    1 + usize::from(prefix.prefix_len()).div_ceil(8)
}

/// Splits `prefixes` into runs whose NLRI fit in `room` bytes each.
fn chunks(prefixes: &[IpNet], room: usize) -> Vec<&[IpNet]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, p) in prefixes.iter().enumerate() {
        let cost = nlri_cost(p);
        if used + cost > room && i > start {
            out.push(&prefixes[start..i]);
            (start, used) = (i, 0);
        }
        used += cost;
    }
    if start < prefixes.len() {
        out.push(&prefixes[start..]);
    }
    out
}

/// Builds one message per chunk with `build`, sizing chunks from the empty message.
fn packed(
    prefixes: &[IpNet],
    max_len: usize,
    build: impl Fn(&[IpNet]) -> Result<BgpMessage, EncodeError>,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    if prefixes.is_empty() {
        return Ok(Vec::new());
    }
    let overhead = build(&[])?.len();
    let room = max_len
        .checked_sub(overhead)
        .filter(|r| *r >= 17)
        .ok_or(EncodeError::TooLong {
            len: overhead,
            max: max_len,
        })?;
    chunks(prefixes, room)
        .into_iter()
        .map(|chunk| write_message(&build(chunk)?, max_len))
        .collect()
}

/// UPDATEs announcing `prefixes` (all of `family`) with `attrs`, each at most `max_len` bytes.
pub fn announcements(
    family: Family,
    attrs: &ExportAttrs,
    prefixes: &[IpNet],
    max_len: usize,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let common = common_attributes(attrs)?;
    let encoding = Encoding::for_family(family, attrs.next_hop);
    packed(prefixes, max_len, |chunk| {
        let mut path = common.clone();
        let nlri = match (encoding, attrs.next_hop) {
            (Encoding::Classic, NextHopSelf::V4(nh)) => {
                path.insert(
                    2,
                    attr(
                        false,
                        true,
                        false,
                        PathAttributeValue::NextHop(NextHop::new(nh)),
                    )?,
                );
                v4_nlri(chunk)?
            }
            (_, next_hop) => {
                let (global, link_local) = match next_hop {
                    NextHopSelf::V6 { global, link_local } => (global, link_local),
                    NextHopSelf::V4(_) => {
                        return Err(EncodeError::Attribute(
                            "IPv6 routes need an IPv6 next hop".into(),
                        ));
                    }
                };
                let reach = match family {
                    Family::Ipv4 => MpReach::Ipv4Unicast {
                        next_hop: IpAddr::V6(global),
                        next_hop_local: link_local,
                        nlri: v4_nlri(chunk)?.into(),
                    },
                    Family::Ipv6 => MpReach::Ipv6Unicast {
                        next_hop_global: global,
                        next_hop_local: link_local,
                        nlri: v6_nlri(chunk)?.into(),
                    },
                };
                // Always the extended length: netgauze's flag is wrong otherwise (> 255 B).
                path.push(attr(true, false, true, PathAttributeValue::MpReach(reach))?);
                Vec::new()
            }
        };
        Ok(BgpMessage::Update(BgpUpdateMessage::new(
            Vec::new(),
            path,
            nlri,
        )))
    })
}

/// UPDATEs withdrawing `prefixes` (all of `family`), each at most `max_len` bytes.
pub fn withdrawals(
    family: Family,
    encoding: Encoding,
    prefixes: &[IpNet],
    max_len: usize,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    packed(prefixes, max_len, |chunk| {
        Ok(match (family, encoding) {
            (Family::Ipv4, Encoding::Classic) => BgpMessage::Update(BgpUpdateMessage::new(
                v4_nlri(chunk)?,
                Vec::new(),
                Vec::new(),
            )),
            (family, _) => BgpMessage::Update(BgpUpdateMessage::new(
                Vec::new(),
                vec![mp_unreach(family, chunk)?],
                Vec::new(),
            )),
        })
    })
}

fn mp_unreach(family: Family, prefixes: &[IpNet]) -> Result<PathAttribute, EncodeError> {
    let unreach = match family {
        Family::Ipv4 => MpUnreach::Ipv4Unicast {
            nlri: v4_nlri(prefixes)?.into(),
        },
        Family::Ipv6 => MpUnreach::Ipv6Unicast {
            nlri: v6_nlri(prefixes)?.into(),
        },
    };
    attr(true, false, true, PathAttributeValue::MpUnreach(unreach))
}

/// The End-of-RIB marker for `family` (RFC 4724 §2).
pub fn end_of_rib(family: Family, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
    let attrs = match (family, encoding) {
        (Family::Ipv4, Encoding::Classic) => Vec::new(),
        (family, _) => vec![mp_unreach(family, &[])?],
    };
    write_message(
        &BgpMessage::Update(BgpUpdateMessage::new(Vec::new(), attrs, Vec::new())),
        crate::codec::MAX_MESSAGE_LEN,
    )
}

/// ORIGIN, AS_PATH, LOCAL_PREF and communities, in type-code order (NEXT_HOP goes at 2).
fn common_attributes(attrs: &ExportAttrs) -> Result<Vec<PathAttribute>, EncodeError> {
    let as_path = if attrs.as_path.is_empty() {
        AsPath::As4PathSegments(Box::new([]))
    } else if attrs.asn4 {
        AsPath::As4PathSegments(
            vec![As4PathSegment::new(
                AsPathSegmentType::AsSequence,
                attrs.as_path.clone(),
            )]
            .into(),
        )
    } else {
        let asns: Vec<u16> = attrs
            .as_path
            .iter()
            .map(|&a| u16::try_from(a).unwrap_or(AS_TRANS))
            .collect();
        AsPath::As2PathSegments(
            vec![As2PathSegment::new(AsPathSegmentType::AsSequence, asns)].into(),
        )
    };
    let mut out = vec![
        attr(false, true, false, PathAttributeValue::Origin(Origin::IGP))?,
        attr(false, true, false, PathAttributeValue::AsPath(as_path))?,
    ];
    if let Some(pref) = attrs.local_pref {
        out.push(attr(
            false,
            true,
            false,
            PathAttributeValue::LocalPreference(LocalPreference::new(pref)),
        )?);
    }
    if !attrs.communities.is_empty() {
        let list: Vec<Community> = attrs
            .communities
            .iter()
            .map(|&c| Community::new(c))
            .collect();
        out.push(attr(
            true,
            true,
            list.len() * 4 > 255,
            PathAttributeValue::Communities(Communities::new(list)),
        )?);
    }
    // RFC 6793 §4.2.2: a 2-octet peer sees AS_TRANS for 4-octet ASes in AS_PATH, and the
    // real path in AS4_PATH (optional transitive, type 17).
    if !attrs.asn4 && attrs.as_path.iter().any(|&a| u16::try_from(a).is_err()) {
        out.push(attr(
            true,
            true,
            false,
            PathAttributeValue::As4Path(As4Path::new(vec![As4PathSegment::new(
                AsPathSegmentType::AsSequence,
                attrs.as_path.clone(),
            )])),
        )?);
    }
    if !attrs.large_communities.is_empty() {
        let list: Vec<LargeCommunity> = attrs
            .large_communities
            .iter()
            .map(|&(g, a, b)| LargeCommunity::new(g, a, b))
            .collect();
        out.push(attr(
            true,
            true,
            list.len() * 12 > 255,
            PathAttributeValue::LargeCommunities(LargeCommunities::new(list)),
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::PathBuf;

    use super::*;
    use crate::codec::{DecodeContext, MAX_EXTENDED_MESSAGE_LEN, MAX_MESSAGE_LEN, Message, decode};

    fn ebgp_v4() -> ExportAttrs {
        ExportAttrs {
            as_path: vec![4_200_000_001],
            asn4: true,
            local_pref: None,
            communities: vec![(65000 << 16) | 100],
            large_communities: vec![(4_200_000_001, 1, 2)],
            next_hop: NextHopSelf::V4(Ipv4Addr::new(192, 0, 2, 1)),
        }
    }

    fn v6_session(attrs: ExportAttrs) -> ExportAttrs {
        ExportAttrs {
            next_hop: NextHopSelf::V6 {
                global: "2001:db8:ffff::2".parse().unwrap(),
                link_local: Some("fe80::1".parse().unwrap()),
            },
            ..attrs
        }
    }

    fn hosts_v4(n: u32) -> Vec<IpNet> {
        (0..n)
            .map(|i| IpNet::from(IpAddr::V4(Ipv4Addr::from(0xc633_6400u32 + i))))
            .collect()
    }

    fn hosts_v6(n: u32) -> Vec<IpNet> {
        (0..n)
            .map(|i| {
                IpNet::from(IpAddr::V6(Ipv6Addr::from(
                    0x2001_0db8_0100_0000_0000_0000_0000_0000u128 + u128::from(i),
                )))
            })
            .collect()
    }

    fn decode_all(frames: &[Vec<u8>]) -> Vec<crate::codec::Update> {
        frames
            .iter()
            .map(|f| match decode(f, DecodeContext { asn4: true }).unwrap() {
                Message::Update(u) => u,
                other => panic!("not an UPDATE: {other:?}"),
            })
            .collect()
    }

    fn hex(frames: &[Vec<u8>]) -> String {
        frames
            .iter()
            .map(|f| f.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
            .collect()
    }

    /// Compares with `testdata/<name>.hex`; `SKOG_BLESS=1` rewrites the file.
    fn golden(name: &str, frames: &[Vec<u8>]) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(format!("{name}.hex"));
        let got = hex(frames);
        if std::env::var_os("SKOG_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with SKOG_BLESS=1)", path.display()));
        assert_eq!(got, want, "{name} differs from {}", path.display());
    }

    #[test]
    fn golden_update_bytes() {
        let v4 = hosts_v4(3);
        let v6 = hosts_v6(2);
        golden(
            "announce_v4_ebgp",
            &announcements(Family::Ipv4, &ebgp_v4(), &v4, MAX_MESSAGE_LEN).unwrap(),
        );
        let ibgp = ExportAttrs {
            as_path: vec![],
            local_pref: Some(100),
            communities: vec![],
            large_communities: vec![],
            ..ebgp_v4()
        };
        golden(
            "announce_v4_ibgp",
            &announcements(Family::Ipv4, &ibgp, &v4, MAX_MESSAGE_LEN).unwrap(),
        );
        golden(
            "announce_v6_ebgp",
            &announcements(Family::Ipv6, &v6_session(ebgp_v4()), &v6, MAX_MESSAGE_LEN).unwrap(),
        );
        golden(
            "announce_v4_over_v6_rfc8950",
            &announcements(Family::Ipv4, &v6_session(ebgp_v4()), &v4, MAX_MESSAGE_LEN).unwrap(),
        );
        let two_octet_peer = ExportAttrs {
            asn4: false,
            ..ebgp_v4()
        };
        golden(
            "announce_v4_ebgp_2_octet_peer",
            &announcements(Family::Ipv4, &two_octet_peer, &v4, MAX_MESSAGE_LEN).unwrap(),
        );
        golden(
            "withdraw",
            &[
                withdrawals(Family::Ipv4, Encoding::Classic, &v4, MAX_MESSAGE_LEN).unwrap(),
                withdrawals(Family::Ipv6, Encoding::Multiprotocol, &v6, MAX_MESSAGE_LEN).unwrap(),
            ]
            .concat(),
        );
        golden(
            "end_of_rib",
            &[
                end_of_rib(Family::Ipv4, Encoding::Classic).unwrap(),
                end_of_rib(Family::Ipv6, Encoding::Multiprotocol).unwrap(),
            ],
        );
    }

    #[test]
    fn announcements_round_trip_with_next_hop_self_and_attributes() {
        let prefixes = hosts_v4(5);
        let frames = announcements(Family::Ipv4, &ebgp_v4(), &prefixes, MAX_MESSAGE_LEN).unwrap();
        let updates = decode_all(&frames);
        assert_eq!(updates.len(), 1);
        let u = &updates[0];
        assert_eq!(u.treat_as_withdraw, None);
        assert_eq!(u.reach[0].next_hop, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(u.reach[0].prefixes, prefixes);
        assert_eq!(u.attrs.as_path, vec![4_200_000_001]);
        assert_eq!(u.attrs.communities, vec![(65000 << 16) | 100]);
        assert_eq!(u.attrs.large_communities, vec![(4_200_000_001, 1, 2)]);

        let v6 = hosts_v6(4);
        let frames =
            announcements(Family::Ipv6, &v6_session(ebgp_v4()), &v6, MAX_MESSAGE_LEN).unwrap();
        let u = &decode_all(&frames)[0];
        assert_eq!(u.reach[0].prefixes, v6);
        assert_eq!(u.reach[0].next_hop_local, Some("fe80::1".parse().unwrap()));
    }

    #[test]
    fn a_two_octet_peer_gets_as_trans_and_as4_path() {
        let attrs = ExportAttrs {
            asn4: false,
            ..ebgp_v4()
        };
        let frames = announcements(Family::Ipv4, &attrs, &hosts_v4(2), MAX_MESSAGE_LEN).unwrap();
        // AS_PATH as the peer reads it: one 2-octet AS_TRANS.
        let as_path = [0x40, 2, 4, 2, 1, 0x5b, 0xa0];
        assert!(
            frames[0].windows(7).any(|w| w == as_path),
            "{:02x?}",
            frames[0]
        );
        // The 2-octet peer's decoding restores our AS from AS4_PATH.
        let u = match decode(&frames[0], DecodeContext { asn4: false }).unwrap() {
            Message::Update(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(u.attrs.as_path, vec![4_200_000_001]);
        assert!(u.discarded_attributes.is_empty());
        // A 2-octet AS of ours needs no AS4_PATH.
        let attrs = ExportAttrs {
            as_path: vec![65010],
            ..attrs
        };
        let frames = announcements(Family::Ipv4, &attrs, &hosts_v4(2), MAX_MESSAGE_LEN).unwrap();
        assert!(!frames[0].windows(2).any(|w| w == [0xc0, 17]));
    }

    #[test]
    fn rfc8950_ipv4_routes_carry_an_ipv6_next_hop() {
        let frames = announcements(
            Family::Ipv4,
            &v6_session(ebgp_v4()),
            &hosts_v4(2),
            MAX_MESSAGE_LEN,
        )
        .unwrap();
        let u = &decode_all(&frames)[0];
        assert_eq!(
            u.reach[0].next_hop,
            "2001:db8:ffff::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(u.reach[0].prefixes, hosts_v4(2));
    }

    fn assert_packed(frames: &[Vec<u8>], max: usize, want: &[IpNet], withdrawn: bool) {
        let mut seen = HashSet::new();
        for (f, u) in frames.iter().zip(decode_all(frames)) {
            assert!(f.len() <= max, "{} > {max}", f.len());
            let got: Vec<IpNet> = if withdrawn {
                u.withdrawn
            } else {
                u.reach.into_iter().flat_map(|r| r.prefixes).collect()
            };
            for p in got {
                assert!(seen.insert(p), "{p} sent twice");
            }
        }
        assert_eq!(seen.len(), want.len());
        assert!(want.iter().all(|p| seen.contains(p)));
    }

    #[test]
    fn ten_thousand_routes_pack_into_full_messages_within_the_limit() {
        for (family, prefixes, attrs) in [
            (Family::Ipv4, hosts_v4(10_000), ebgp_v4()),
            (Family::Ipv6, hosts_v6(10_000), v6_session(ebgp_v4())),
            (Family::Ipv4, hosts_v4(10_000), v6_session(ebgp_v4())),
        ] {
            for max in [MAX_MESSAGE_LEN, MAX_EXTENDED_MESSAGE_LEN] {
                let frames = announcements(family, &attrs, &prefixes, max).unwrap();
                assert_packed(&frames, max, &prefixes, false);
                // Every message but the last is nearly full: no prefix would have fit.
                let cost = nlri_cost(&prefixes[0]);
                for f in &frames[..frames.len() - 1] {
                    assert!(f.len() + cost > max, "{} bytes left room", f.len());
                }
                let encoding = Encoding::for_family(family, attrs.next_hop);
                let frames = withdrawals(family, encoding, &prefixes, max).unwrap();
                assert_packed(&frames, max, &prefixes, true);
            }
        }
    }

    #[test]
    fn mixed_prefix_lengths_are_costed_exactly() {
        let prefixes: Vec<IpNet> = ["0.0.0.0/0", "198.51.100.0/24", "203.0.113.128/25"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(
            prefixes.iter().map(nlri_cost).collect::<Vec<_>>(),
            vec![1, 4, 5]
        );
        let frames = announcements(Family::Ipv4, &ebgp_v4(), &prefixes, MAX_MESSAGE_LEN).unwrap();
        assert_packed(&frames, MAX_MESSAGE_LEN, &prefixes, false);
    }

    #[test]
    fn end_of_rib_markers_decode_as_such() {
        let v4 = decode_all(&[end_of_rib(Family::Ipv4, Encoding::Classic).unwrap()]);
        assert_eq!(v4[0].end_of_rib, Some(Family::Ipv4));
        let v6 = decode_all(&[end_of_rib(Family::Ipv6, Encoding::Multiprotocol).unwrap()]);
        assert_eq!(v6[0].end_of_rib, Some(Family::Ipv6));
    }

    #[test]
    fn ipv6_routes_need_an_ipv6_next_hop() {
        assert!(matches!(
            announcements(Family::Ipv6, &ebgp_v4(), &hosts_v6(1), MAX_MESSAGE_LEN),
            Err(EncodeError::Attribute(_))
        ));
    }
}
