//! Kernel nexthop objects (`ip nexthop`, Linux 5.3 and later) for learned routes: one object per
//! gateway, and one group per set of several next hops, which every learned route with that set
//! points at (`RTA_NH_ID`). Such a route costs the kernel no gateway validation and no per-CPU
//! route cache of its own, so 100,000 routes go in about a third faster (docs/decisions.md). A
//! group keeps its id while its members change (an uplink going down, and back): the kernel
//! shrinks it, we grow it back in place, and the routes are never rewritten for that.
//!
//! This module is the pure part: the messages (netlink-packet-route has none for nexthops, so
//! they are encoded and decoded here, for a netlink-proto connection of their own), and the
//! rules that find the object serving a set of next hops, pick free ids, and tell which objects
//! no route points at any more. Objects carry the learned-route protocol, have ids from a range
//! of their own (`protocol × 1,000,000` up, so `ip nexthop` shows whose they are), and are
//! adopted on start like routes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NlasIterator,
};

use super::HashSet;
use super::kernel::Hop;

/// `RTM_NEWNEXTHOP`.
pub const RTM_NEWNEXTHOP: u16 = 104;
/// `RTM_DELNEXTHOP`.
pub const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
/// `RTNLGRP_NEXTHOP`: notifications of nexthop objects.
pub const RTNLGRP_NEXTHOP: u32 = 32;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_ENCAP_TYPE: u16 = 7;
const NHA_FDB: u16 = 11;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Size of `struct nhmsg`.
const HEADER_LEN: usize = 8;
/// Size of `struct nexthop_grp`.
const GROUP_ENTRY_LEN: usize = 8;

/// Ids a learned-route protocol's objects get: `protocol × ID_BLOCK + 1` and up.
const ID_BLOCK: u32 = 1_000_000;

/// A nexthop object's content, as far as we use them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NextHop {
    /// A gateway through an interface.
    Gateway {
        /// The gateway.
        gateway: IpAddr,
        /// Its interface (the kernel requires one).
        ifindex: u32,
    },
    /// An equal-cost group of gateway objects, by id (sorted).
    Group(Vec<u32>),
}

/// The nexthop objects of ours in the kernel, by id.
pub type NextHops = BTreeMap<u32, NextHop>;

/// How a write treats an object that exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Fail if the id is taken.
    Create,
    /// Replace it (a group's members change in place; the routes that point at it stay).
    Replace,
}

/// A nexthop-family netlink message: a request, or what the kernel sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHopMessage {
    /// `RTM_NEWNEXTHOP`, `RTM_DELNEXTHOP` or `RTM_GETNEXTHOP`.
    pub message_type: u16,
    /// `nh_family`.
    pub family: u8,
    /// `nh_protocol`.
    pub protocol: u8,
    /// Attributes, (type, value), in order.
    pub attributes: Vec<(u16, Vec<u8>)>,
}

impl NextHopMessage {
    /// The request that creates or replaces object `id`.
    pub fn write(
        id: u32,
        protocol: u8,
        next_hop: &NextHop,
        write: Write,
    ) -> NetlinkMessage<NextHopMessage> {
        let mut attributes = vec![(NHA_ID, id.to_ne_bytes().to_vec())];
        let family = match next_hop {
            NextHop::Gateway { gateway, ifindex } => {
                attributes.push((NHA_OIF, ifindex.to_ne_bytes().to_vec()));
                let (family, bytes) = match gateway {
                    IpAddr::V4(v4) => (AF_INET, v4.octets().to_vec()),
                    IpAddr::V6(v6) => (AF_INET6, v6.octets().to_vec()),
                };
                attributes.push((NHA_GATEWAY, bytes));
                family
            }
            NextHop::Group(members) => {
                // struct nexthop_grp: id, weight - 1, and reserved bytes.
                let entries = members
                    .iter()
                    .flat_map(|m| m.to_ne_bytes().into_iter().chain([0; 4]))
                    .collect();
                attributes.push((NHA_GROUP, entries));
                AF_UNSPEC
            }
        };
        let msg = NextHopMessage {
            message_type: RTM_NEWNEXTHOP,
            family,
            protocol,
            attributes,
        };
        let existing = match write {
            Write::Create => NLM_F_EXCL,
            Write::Replace => NLM_F_REPLACE,
        };
        request(msg, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | existing)
    }

    /// The request that deletes object `id`.
    pub fn delete(id: u32) -> NetlinkMessage<NextHopMessage> {
        let msg = NextHopMessage {
            message_type: RTM_DELNEXTHOP,
            family: AF_UNSPEC,
            protocol: 0,
            attributes: vec![(NHA_ID, id.to_ne_bytes().to_vec())],
        };
        request(msg, NLM_F_REQUEST | NLM_F_ACK)
    }

    /// A dump of every nexthop object.
    pub fn dump() -> NetlinkMessage<NextHopMessage> {
        let msg = NextHopMessage {
            message_type: RTM_GETNEXTHOP,
            family: AF_UNSPEC,
            protocol: 0,
            attributes: Vec::new(),
        };
        request(msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// The object's id.
    pub fn id(&self) -> Option<u32> {
        self.attribute(NHA_ID).and_then(u32_of)
    }

    /// The object this message describes, if it is a gateway or an equal-cost group of the
    /// kind we write (not a blackhole, an FDB entry, an encapsulation, a resilient or weighted
    /// group, or anything else).
    pub fn next_hop(&self) -> Option<NextHop> {
        let plain = [NHA_FDB, NHA_ENCAP_TYPE]
            .iter()
            .all(|kind| self.attribute(*kind).is_none())
            && self.attribute(NHA_GROUP_TYPE).is_none_or(|t| t == [0, 0]);
        if !plain {
            return None;
        }
        if let Some(entries) = self.attribute(NHA_GROUP) {
            // struct nexthop_grp: id, weight - 1 (ours are all 0), reserved.
            if entries
                .chunks(GROUP_ENTRY_LEN)
                .any(|e| e.get(4..6) != Some(&[0, 0][..]))
            {
                return None;
            }
            let mut members: Vec<u32> = entries
                .chunks(GROUP_ENTRY_LEN)
                .map(|entry| entry.get(..4).and_then(u32_of))
                .collect::<Option<_>>()?;
            members.sort_unstable();
            return Some(NextHop::Group(members));
        }
        let gateway = match (self.family, self.attribute(NHA_GATEWAY)?) {
            (AF_INET, bytes) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
            (AF_INET6, bytes) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
            _ => return None,
        };
        let ifindex = self.attribute(NHA_OIF).and_then(u32_of)?;
        Some(NextHop::Gateway { gateway, ifindex })
    }

    fn attribute(&self, kind: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }
}

fn request(msg: NextHopMessage, flags: u16) -> NetlinkMessage<NextHopMessage> {
    let mut msg = NetlinkMessage::from(msg);
    msg.header.flags = flags;
    msg.finalize();
    msg
}

impl From<NextHopMessage> for NetlinkPayload<NextHopMessage> {
    fn from(msg: NextHopMessage) -> Self {
        NetlinkPayload::InnerMessage(msg)
    }
}

fn u32_of(bytes: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(bytes).ok().map(u32::from_ne_bytes)
}

impl NetlinkSerializable for NextHopMessage {
    fn message_type(&self) -> u16 {
        self.message_type
    }

    fn buffer_len(&self) -> usize {
        HEADER_LEN
            + self
                .attributes
                .iter()
                .map(|(_, v)| (4 + v.len()).next_multiple_of(4))
                .sum::<usize>()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        // netlink-proto hands a buffer of `buffer_len()` bytes; writes past it are skipped.
        let mut bytes = Vec::with_capacity(self.buffer_len());
        bytes.extend([self.family, 0, self.protocol, 0, 0, 0, 0, 0]);
        for (kind, value) in &self.attributes {
            let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
            bytes.extend(len.to_ne_bytes());
            bytes.extend(kind.to_ne_bytes());
            bytes.extend(value);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        for (slot, byte) in buffer.iter_mut().zip(bytes) {
            *slot = byte;
        }
    }
}

impl NetlinkDeserializable for NextHopMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let fixed = payload
            .get(..HEADER_LEN)
            .ok_or_else(|| DecodeError::from("nexthop message shorter than its header"))?;
        let attributes = NlasIterator::new(&payload[HEADER_LEN..])
            .map(|nla| {
                let nla = nla?;
                Ok((nla.kind(), nla.value().to_vec()))
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(NextHopMessage {
            message_type: header.message_type,
            family: fixed[0],
            protocol: fixed[2],
            attributes,
        })
    }
}

/// Whether object `id` serves `hops` (a route's desired next hops, sorted): a gateway object
/// for one hop, a group with one member per hop for several. A hop without an interface
/// matches a gateway object for that gateway on any interface.
pub fn serves(objects: &NextHops, id: u32, hops: &[Hop]) -> bool {
    match (objects.get(&id), hops) {
        (Some(NextHop::Group(members)), [_, _, ..]) => {
            members.len() == hops.len() && serves_some(objects, id, hops)
        }
        (Some(NextHop::Gateway { .. }), [_]) => serves_some(objects, id, hops),
        _ => false,
    }
}

/// Whether object `id` serves some of `hops`: a gateway object one of them, a group some of
/// them, one member each (a group the kernel shrank when an uplink went down).
pub fn serves_some(objects: &NextHops, id: u32, hops: &[Hop]) -> bool {
    let matches = |hop: &Hop, object: &NextHop| match object {
        NextHop::Gateway { gateway, ifindex } => {
            hop.gateway == *gateway && hop.ifindex.is_none_or(|i| i == *ifindex)
        }
        NextHop::Group(_) => false,
    };
    match objects.get(&id) {
        None => false,
        Some(NextHop::Group(members)) => {
            let Some(gateways) = members
                .iter()
                .map(|m| objects.get(m))
                .collect::<Option<Vec<_>>>()
            else {
                return false;
            };
            // Each member takes a hop of its own.
            let mut free: Vec<&Hop> = hops.iter().collect();
            !gateways.is_empty()
                && gateways
                    .iter()
                    .all(|g| match free.iter().position(|hop| matches(hop, g)) {
                        Some(at) => {
                            free.swap_remove(at);
                            true
                        }
                        None => false,
                    })
        }
        Some(object) => hops.iter().any(|hop| matches(hop, object)),
    }
}

/// The object of ours that serves `hops` (see [`serves`]) and that `usable` accepts, the
/// lowest id if several do.
pub fn find(objects: &NextHops, hops: &[Hop], usable: impl Fn(u32) -> bool) -> Option<u32> {
    objects
        .keys()
        .copied()
        .find(|id| serves(objects, *id, hops) && usable(*id))
}

/// Our object that is exactly `object` and that `usable` accepts, the lowest id if several are.
pub fn object_id(
    objects: &NextHops,
    object: &NextHop,
    usable: impl Fn(u32) -> bool,
) -> Option<u32> {
    objects
        .iter()
        .find_map(|(id, o)| (o == object && usable(*id)).then_some(*id))
}

/// The lowest id of the protocol's range that is neither ours already nor `taken` (found to
/// belong to someone else); `None` when the range is full.
pub fn free_id(objects: &NextHops, taken: &HashSet<u32>, protocol: u8) -> Option<u32> {
    let first = u32::from(protocol) * ID_BLOCK + 1;
    (first..first + ID_BLOCK - 1).find(|id| !objects.contains_key(id) && !taken.contains(id))
}

/// Our objects that none of `used` (the ids routes of ours point at, desired or in the kernel)
/// needs, groups before gateways (a gateway object still in a group cannot go first).
pub fn unused(objects: &NextHops, used: &HashSet<u32>) -> Vec<u32> {
    let mut keep = used.clone();
    for id in used {
        if let Some(NextHop::Group(members)) = objects.get(id) {
            keep.extend(members.iter().copied());
        }
    }
    let mut gone: Vec<(bool, u32)> = objects
        .iter()
        .filter(|(id, _)| !keep.contains(id))
        .map(|(id, o)| (matches!(o, NextHop::Gateway { .. }), *id))
        .collect();
    gone.sort_unstable();
    gone.into_iter().map(|(_, id)| id).collect()
}

/// The next hops a route pointing at object `id` has, from our objects (for a route the kernel
/// reports with only its nexthop id); `None` when the object is not ours.
pub fn hops_of(objects: &NextHops, id: u32) -> Option<Vec<Hop>> {
    let hop = |object: &NextHop| match object {
        NextHop::Gateway { gateway, ifindex } => Some(Hop {
            gateway: *gateway,
            ifindex: Some(*ifindex),
        }),
        NextHop::Group(_) => None,
    };
    let mut hops = match objects.get(&id)? {
        NextHop::Group(members) => members
            .iter()
            .map(|m| objects.get(m).and_then(hop))
            .collect::<Option<Vec<_>>>()?,
        object => vec![hop(object)?],
    };
    hops.sort();
    Some(hops)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkBuffer;

    use super::*;

    fn gw(ip: &str, ifindex: u32) -> NextHop {
        NextHop::Gateway {
            gateway: ip.parse().unwrap(),
            ifindex,
        }
    }

    fn hop(ip: &str, ifindex: Option<u32>) -> Hop {
        Hop {
            gateway: ip.parse().unwrap(),
            ifindex,
        }
    }

    fn find_any(objects: &NextHops, hops: &[Hop]) -> Option<u32> {
        find(objects, hops, |_| true)
    }

    /// Gateway objects 1 and 2 on interfaces 3 and 4, and group 3 of both.
    fn two_gateways_and_their_group() -> NextHops {
        [
            (1, gw("2001:db8:ffff::1", 3)),
            (2, gw("2001:db8:fffe::1", 4)),
            (3, NextHop::Group(vec![1, 2])),
        ]
        .into()
    }

    /// Serialises a request and parses it back, as the kernel would see it.
    fn round_trip(msg: &NetlinkMessage<NextHopMessage>) -> NextHopMessage {
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        let parsed = NetlinkBuffer::new_checked(&buf[..]).unwrap();
        assert_eq!(usize::try_from(parsed.length()).unwrap(), buf.len());
        let mut header = NetlinkHeader::default();
        header.message_type = parsed.message_type();
        NextHopMessage::deserialize(&header, parsed.payload()).unwrap()
    }

    #[test]
    fn requests_round_trip_through_the_wire_format() {
        for object in [
            gw("2001:db8:ffff::1", 3),
            gw("192.0.2.0", 4),
            NextHop::Group(vec![84_000_001, 84_000_002]),
        ] {
            let msg = round_trip(&NextHopMessage::write(
                84_000_007,
                84,
                &object,
                Write::Create,
            ));
            assert_eq!(msg.message_type, RTM_NEWNEXTHOP);
            assert_eq!(msg.protocol, 84);
            assert_eq!(msg.id(), Some(84_000_007));
            assert_eq!(msg.next_hop(), Some(object));
        }
        let del = round_trip(&NextHopMessage::delete(9));
        assert_eq!(
            (del.message_type, del.id(), del.next_hop()),
            (RTM_DELNEXTHOP, Some(9), None)
        );
        let flags = |write| {
            NextHopMessage::write(1, 84, &gw("192.0.2.0", 4), write)
                .header
                .flags
        };
        assert_eq!(
            flags(Write::Create),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(
            flags(Write::Replace),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
    }

    #[test]
    fn undecodable_messages_are_errors_and_odd_objects_are_not_ours_to_read() {
        let header = NetlinkHeader::default();
        assert!(NextHopMessage::deserialize(&header, &[0; 4]).is_err());
        // An attribute claiming more bytes than there are.
        assert!(
            NextHopMessage::deserialize(&header, &[10, 0, 84, 0, 0, 0, 0, 0, 40, 0, 6, 0]).is_err()
        );
        // A blackhole object (no gateway), and a gateway of the wrong length.
        let blackhole = NextHopMessage {
            message_type: RTM_NEWNEXTHOP,
            family: AF_INET6,
            protocol: 84,
            attributes: vec![(NHA_ID, 5u32.to_ne_bytes().to_vec()), (4, vec![])],
        };
        assert_eq!(blackhole.next_hop(), None);
        let short = NextHopMessage {
            attributes: vec![
                (NHA_GATEWAY, vec![1, 2, 3]),
                (NHA_OIF, 3u32.to_ne_bytes().to_vec()),
            ],
            ..blackhole
        };
        assert_eq!(short.next_hop(), None);
    }

    /// Bounded fuzzing of the decoder (the kernel's bytes): mutations of valid messages and
    /// random bytes never panic, and whatever decodes reads without panicking.
    #[test]
    fn the_decoder_never_panics_on_mutated_or_random_bytes() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let seeds: Vec<Vec<u8>> = [
            NextHopMessage::write(84_000_001, 84, &gw("2001:db8:ffff::1", 3), Write::Create),
            NextHopMessage::write(84_000_002, 84, &gw("192.0.2.0", 4), Write::Create),
            NextHopMessage::write(
                84_000_003,
                84,
                &NextHop::Group(vec![1, 2, 3]),
                Write::Create,
            ),
            NextHopMessage::delete(5),
        ]
        .iter()
        .map(|msg| {
            let mut buf = vec![0; msg.buffer_len()];
            msg.serialize(&mut buf);
            buf[16..].to_vec()
        })
        .collect();
        let header = NetlinkHeader::default();
        for i in 0..20_000 {
            let mut bytes = if i % 4 == 0 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                seeds[i % seeds.len()].clone()
            };
            for _ in 0..1 + next() % 4 {
                if bytes.is_empty() {
                    break;
                }
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, next() as u8),
                }
            }
            if let Ok(msg) = NextHopMessage::deserialize(&header, &bytes) {
                let _ = (msg.id(), msg.next_hop());
            }
        }
    }

    #[test]
    fn objects_of_kinds_we_do_not_write_are_not_read_as_ours() {
        let group = |attributes: Vec<(u16, Vec<u8>)>| NextHopMessage {
            message_type: RTM_NEWNEXTHOP,
            family: AF_UNSPEC,
            protocol: 84,
            attributes,
        };
        let entry = |id: u32, weight: u8| {
            let mut e = id.to_ne_bytes().to_vec();
            e.extend([weight, 0, 0, 0]);
            e
        };
        let plain = group(vec![(NHA_GROUP, [entry(1, 0), entry(2, 0)].concat())]);
        assert_eq!(plain.next_hop(), Some(NextHop::Group(vec![1, 2])));
        let weighted = group(vec![(NHA_GROUP, [entry(1, 0), entry(2, 4)].concat())]);
        assert_eq!(weighted.next_hop(), None);
        let resilient = group(vec![
            (NHA_GROUP, entry(1, 0)),
            (NHA_GROUP_TYPE, 1u16.to_ne_bytes().to_vec()),
        ]);
        assert_eq!(resilient.next_hop(), None);
        let mut fdb = NextHopMessage::write(5, 84, &gw("192.0.2.0", 4), Write::Create).payload;
        if let NetlinkPayload::InnerMessage(msg) = &mut fdb {
            msg.attributes.push((NHA_FDB, vec![]));
            assert_eq!(msg.next_hop(), None);
        }
    }

    #[test]
    fn a_set_finds_its_gateway_or_group_with_or_without_a_known_interface() {
        let objects = two_gateways_and_their_group();
        assert_eq!(
            find_any(&objects, &[hop("2001:db8:ffff::1", None)]),
            Some(1)
        );
        assert_eq!(
            find_any(&objects, &[hop("2001:db8:ffff::1", Some(3))]),
            Some(1)
        );
        assert_eq!(
            find_any(&objects, &[hop("2001:db8:ffff::1", Some(9))]),
            None
        );
        let both = [hop("2001:db8:fffe::1", None), hop("2001:db8:ffff::1", None)];
        assert_eq!(find_any(&objects, &both), Some(3));
        assert_eq!(find(&objects, &both, |id| id != 3), None);
        let other = [hop("2001:db8:fffe::1", None), hop("2001:db8:fffd::1", None)];
        assert_eq!(find_any(&objects, &other), None);
        assert_eq!(find_any(&objects, &[]), None);
        // A group shrunk by the kernel no longer serves the set (it is grown back in place).
        let shrunk: NextHops =
            [(2, gw("2001:db8:fffe::1", 4)), (3, NextHop::Group(vec![2]))].into();
        assert!(!serves(&shrunk, 3, &both));
        assert!(serves_some(&shrunk, 3, &both));
        assert!(serves(&objects, 3, &both));
        // A gateway object serves some of a set with its gateway; a group none of a set
        // without one of its members.
        assert!(serves_some(&objects, 1, &both) && !serves(&objects, 1, &both));
        assert!(!serves_some(&objects, 3, &[hop("2001:db8:ffff::1", None)]));
    }

    #[test]
    fn objects_are_found_exactly_and_new_ids_are_the_lowest_free_of_the_range() {
        let objects: NextHops = [(84_000_001, gw("2001:db8:ffff::1", 3))].into();
        assert_eq!(
            object_id(&objects, &gw("2001:db8:ffff::1", 3), |_| true),
            Some(84_000_001)
        );
        assert_eq!(
            object_id(&objects, &gw("2001:db8:ffff::1", 4), |_| true),
            None
        );
        assert_eq!(
            object_id(&objects, &gw("2001:db8:ffff::1", 3), |id| id != 84_000_001),
            None
        );
        let taken: HashSet<u32> = [84_000_002].into_iter().collect();
        assert_eq!(free_id(&objects, &taken, 84), Some(84_000_003));
        assert_eq!(
            free_id(&NextHops::new(), &HashSet::default(), 84),
            Some(84_000_001)
        );
    }

    #[test]
    fn unused_objects_are_the_ones_no_route_points_at_groups_first() {
        let mut objects = two_gateways_and_their_group();
        objects.insert(4, gw("2001:db8:fffd::1", 5));
        let used = |ids: &[u32]| ids.iter().copied().collect::<HashSet<u32>>();
        // A group keeps its members.
        assert_eq!(unused(&objects, &used(&[3])), [4]);
        assert_eq!(unused(&objects, &used(&[1])), [3, 2, 4]);
        assert_eq!(unused(&objects, &used(&[])), [3, 1, 2, 4]);
        // A group the kernel shrank to one member is still the one routes point at.
        let shrunk: NextHops =
            [(2, gw("2001:db8:fffe::1", 4)), (3, NextHop::Group(vec![2]))].into();
        assert!(unused(&shrunk, &used(&[3])).is_empty());
    }

    #[test]
    fn a_route_with_only_a_nexthop_id_gets_the_objects_hops() {
        let objects = two_gateways_and_their_group();
        assert_eq!(
            hops_of(&objects, 3),
            Some(vec![
                hop("2001:db8:fffe::1", Some(4)),
                hop("2001:db8:ffff::1", Some(3))
            ])
        );
        assert_eq!(
            hops_of(&objects, 1),
            Some(vec![hop("2001:db8:ffff::1", Some(3))])
        );
        assert_eq!(hops_of(&objects, 7), None);
    }
}
