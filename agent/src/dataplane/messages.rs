//! Translation between our kernel objects ([`super::kernel`]) and rtnetlink messages: write
//! requests for [`Op`]s, dump requests, and decoding of what the kernel sends back (dumps and
//! multicast events). Decoding never fails: anything that is not one of ours or that we cannot
//! read is ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteProtocol, RouteScope, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::kernel::{Hop, Link, Neigh, NeighKey, Route, RouteKey, RouteTarget};
use super::nexthop::{self, NextHops};
use super::reconcile::Op;
use super::types::MacAddr;

/// A netlink route-family message.
pub type Message = NetlinkMessage<RouteNetlinkMessage>;

const WRITE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
const DELETE: u16 = NLM_F_REQUEST | NLM_F_ACK;
const DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;

fn with_flags(inner: RouteNetlinkMessage, flags: u16) -> Message {
    let mut msg = NetlinkMessage::from(inner);
    msg.header.flags = flags;
    msg
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The request that performs `op`.
pub fn op_request(op: &Op) -> Message {
    match op {
        Op::ReplaceRoute(key, route) => with_flags(
            RouteNetlinkMessage::NewRoute(route_message(key, route)),
            WRITE,
        ),
        Op::DeleteRoute(key, route) => with_flags(
            RouteNetlinkMessage::DelRoute(route_key_message(key, route)),
            DELETE,
        ),
        Op::ReplaceNeigh(key, neigh) => with_flags(
            RouteNetlinkMessage::NewNeighbour(neigh_message(key, Some(neigh))),
            WRITE,
        ),
        Op::DeleteNeigh(key) => with_flags(
            RouteNetlinkMessage::DelNeighbour(neigh_message(key, None)),
            DELETE,
        ),
    }
}

/// A route message with `key` and the route's protocol: all a delete needs (the kernel checks
/// the protocol, so a foreign route of the same key is never deleted).
fn route_key_message(key: &RouteKey, route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(key.dst.addr());
    msg.header.destination_prefix_length = key.dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(route.protocol);
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = match (&route.target, key.dst) {
        (RouteTarget::Device(_), IpNet::V4(_)) => RouteScope::Link,
        _ => RouteScope::Universe,
    };
    msg.attributes
        .push(RouteAttribute::Destination(key.dst.addr().into()));
    msg.attributes.push(RouteAttribute::Priority(key.metric));
    msg
}

/// The whole route: its key, and where it goes, through its nexthop object if it has one,
/// else to its gateways or device.
fn route_message(key: &RouteKey, route: &Route) -> RouteMessage {
    let mut msg = route_key_message(key, route);
    if let (Some(id), RouteTarget::Gateways(_)) = (route.nexthop, &route.target) {
        msg.attributes.push(RouteAttribute::NhId(id));
        return msg;
    }
    match &route.target {
        RouteTarget::Device(ifindex) => msg.attributes.push(RouteAttribute::Oif(*ifindex)),
        RouteTarget::Gateways(hops) => match &hops[..] {
            [hop] => {
                msg.attributes.push(gateway_attribute(key.dst, hop.gateway));
                if let Some(ifindex) = hop.ifindex {
                    msg.attributes.push(RouteAttribute::Oif(ifindex));
                }
            }
            hops => {
                let next_hops = hops
                    .iter()
                    .map(|hop| {
                        let mut nh = RouteNextHop::default();
                        nh.interface_index = hop.ifindex.unwrap_or(0);
                        nh.attributes.push(gateway_attribute(key.dst, hop.gateway));
                        nh
                    })
                    .collect();
                msg.attributes.push(RouteAttribute::MultiPath(next_hops));
            }
        },
    }
    msg
}

/// `RTA_GATEWAY`, or `RTA_VIA` for an IPv6 gateway of an IPv4 route (RFC 8950).
fn gateway_attribute(dst: IpNet, gateway: IpAddr) -> RouteAttribute {
    match (dst, gateway) {
        (IpNet::V4(_), IpAddr::V6(v6)) => RouteAttribute::Via(RouteVia::Inet6(v6)),
        _ => RouteAttribute::Gateway(gateway.into()),
    }
}

fn neigh_message(key: &NeighKey, neigh: Option<&Neigh>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(key.ip);
    msg.header.ifindex = key.ifindex;
    msg.header.kind = RouteType::Unspec;
    if key.proxy {
        msg.header.flags = NeighbourFlags::Proxy;
    }
    msg.attributes
        .push(NeighbourAttribute::Destination(key.ip.into()));
    if let Some(neigh) = neigh {
        msg.header.state = NeighbourState::Permanent;
        if let Some(mac) = neigh.mac {
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        }
        msg.attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::from(
                neigh.protocol,
            )));
    }
    msg
}

/// A dump of one family's main-table routes with protocol `protocol` (the kernel filters on a
/// strict-check socket; [`route_from_kernel`] filters again).
pub fn dump_routes(family: AddressFamily, protocol: u8) -> Message {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(protocol);
    with_flags(RouteNetlinkMessage::GetRoute(msg), DUMP)
}

/// A dump of one family's neighbour entries, or of its proxy entries.
pub fn dump_neighs(family: AddressFamily, proxy: bool) -> Message {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    if proxy {
        msg.header.flags = NeighbourFlags::Proxy;
    }
    with_flags(RouteNetlinkMessage::GetNeighbour(msg), DUMP)
}

/// A dump of every link.
pub fn dump_links() -> Message {
    with_flags(RouteNetlinkMessage::GetLink(LinkMessage::default()), DUMP)
}

/// A main-table unicast route with one of `protocols`, as our key and content. A route that
/// points at a nexthop object comes with that object's gateways (unless the kernel's
/// `nexthop_compat_mode` is off: then they are taken from our `nexthops`).
pub fn route_from_kernel(
    msg: &RouteMessage,
    protocols: &[u8],
    nexthops: Option<&NextHops>,
) -> Option<(RouteKey, Route)> {
    let h = &msg.header;
    let protocol = u8::from(h.protocol);
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if !protocols.contains(&protocol)
        || table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || h.kind != RouteType::Unicast
        || h.flags.contains(RouteFlags::Cloned)
        || h.source_prefix_length != 0
        || h.tos != 0
    {
        return None;
    }
    let mut dst = None;
    let mut metric = 0;
    let mut oif = None;
    let mut gateway = None;
    let mut multipath = None;
    let mut nexthop_id = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::NhId(id) => nexthop_id = Some(*id),
            RouteAttribute::Destination(a) => dst = ip_of(a),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => gateway = gateway_of(attr),
            RouteAttribute::MultiPath(hops) => multipath = Some(hops),
            _ => {}
        }
    }
    let dst = match (h.address_family, dst) {
        (_, Some(ip)) => ip,
        (AddressFamily::Inet, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (AddressFamily::Inet6, None) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let dst = IpNet::new(dst, h.destination_prefix_length).ok()?;
    let target = match (multipath, gateway, oif) {
        (None, None, None) => {
            // Only a nexthop id: ours, or (someone else's) no hop we could match.
            let hops = nexthop::hops_of(nexthops?, nexthop_id?).unwrap_or_default();
            RouteTarget::Gateways(hops.into())
        }
        (Some(hops), _, _) => {
            let mut hops: Vec<Hop> = hops
                .iter()
                .map(|nh| {
                    let gateway = nh.attributes.iter().find_map(gateway_of)?;
                    Some(Hop {
                        gateway,
                        ifindex: Some(nh.interface_index),
                    })
                })
                .collect::<Option<_>>()?;
            hops.sort();
            RouteTarget::Gateways(hops.into())
        }
        (None, Some(gateway), ifindex) => {
            RouteTarget::Gateways(vec![Hop { gateway, ifindex }].into())
        }
        (None, None, Some(ifindex)) => RouteTarget::Device(ifindex),
    };
    let nexthop = nexthop_id.filter(|_| matches!(target, RouteTarget::Gateways(_)));
    Some((
        RouteKey { dst, metric },
        Route {
            protocol,
            target,
            nexthop,
        },
    ))
}

/// The gateway an `RTA_GATEWAY` or `RTA_VIA` names.
fn gateway_of(attr: &RouteAttribute) -> Option<IpAddr> {
    match attr {
        RouteAttribute::Gateway(a) => ip_of(a),
        RouteAttribute::Via(RouteVia::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Via(RouteVia::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// An IPv4 or IPv6 neighbour or proxy entry.
pub fn neigh_from_kernel(msg: &NeighbourMessage) -> Option<(NeighKey, Neigh)> {
    let mut ip = None;
    let mut mac = None;
    let mut protocol = 0;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            NeighbourAttribute::LinkLayerAddress(lla) => {
                mac = <[u8; 6]>::try_from(lla.as_slice()).ok().map(MacAddr)
            }
            NeighbourAttribute::Protocol(p) => protocol = u8::from(*p),
            _ => {}
        }
    }
    let key = NeighKey {
        ifindex: msg.header.ifindex,
        ip: ip?,
        proxy: msg.header.flags.contains(NeighbourFlags::Proxy),
    };
    let neigh = Neigh {
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
        protocol,
    };
    Some((key, neigh))
}

/// A link with a name.
pub fn link_from_kernel(msg: &LinkMessage) -> Option<Link> {
    let name = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })?;
    Some(Link {
        ifindex: msg.header.index,
        name,
        running: msg.header.flags.contains(LinkFlags::Running),
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{
        NetlinkDeserializable, NetlinkHeader, NetlinkPayload, NetlinkSerializable,
    };

    use super::*;

    /// Serialises a message the way netlink-proto does and parses it back, as the kernel
    /// would see it.
    fn wire_round_trip(msg: &Message) -> RouteNetlinkMessage {
        let NetlinkPayload::InnerMessage(inner) = &msg.payload else {
            panic!("no inner message")
        };
        let mut buf = vec![0; inner.buffer_len()];
        inner.serialize(&mut buf);
        let mut header = NetlinkHeader::default();
        header.message_type = inner.message_type();
        RouteNetlinkMessage::deserialize(&header, &buf).unwrap()
    }

    fn kernel_route(msg: RouteNetlinkMessage) -> RouteMessage {
        match msg {
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => r,
            other => panic!("not a route: {other:?}"),
        }
    }

    #[test]
    fn endpoint_routes_round_trip_through_the_wire_format() {
        for (dst, scope) in [
            ("198.51.100.10/32", RouteScope::Link),
            ("2001:db8:100::10/128", RouteScope::Universe),
        ] {
            let key = RouteKey {
                dst: dst.parse().unwrap(),
                metric: 1024,
            };
            let route = Route {
                nexthop: None,
                protocol: 83,
                target: RouteTarget::Device(7),
            };
            let req = op_request(&Op::ReplaceRoute(key, route.clone()));
            assert_eq!(req.header.flags, WRITE);
            let parsed = kernel_route(wire_round_trip(&req));
            assert_eq!(parsed.header.scope, scope);
            assert_eq!(
                route_from_kernel(&parsed, &[83, 84], None),
                Some((key, route))
            );
            assert_eq!(
                route_from_kernel(&parsed, &[84], None),
                None,
                "foreign protocols are ignored"
            );
        }
    }

    #[test]
    fn ecmp_routes_round_trip_and_deletes_carry_only_key_and_protocol() {
        let key = RouteKey {
            dst: "0.0.0.0/0".parse().unwrap(),
            metric: 1024,
        };
        let hops = vec![
            Hop {
                gateway: "192.0.2.0".parse().unwrap(),
                ifindex: Some(2),
            },
            Hop {
                gateway: "192.0.2.2".parse().unwrap(),
                ifindex: Some(3),
            },
        ];
        let route = Route {
            nexthop: None,
            protocol: 84,
            target: RouteTarget::Gateways(hops.into()),
        };
        let parsed = kernel_route(wire_round_trip(&op_request(&Op::ReplaceRoute(
            key,
            route.clone(),
        ))));
        assert_eq!(
            route_from_kernel(&parsed, &[84], None),
            Some((key, route.clone()))
        );
        let del = op_request(&Op::DeleteRoute(key, route));
        assert_eq!(del.header.flags, DELETE);
        let parsed = kernel_route(wire_round_trip(&del));
        assert_eq!(u8::from(parsed.header.protocol), 84);
        assert!(parsed.attributes.iter().all(|a| matches!(
            a,
            RouteAttribute::Destination(_) | RouteAttribute::Priority(_)
        )));
    }

    #[test]
    fn ipv4_routes_through_ipv6_gateways_use_rta_via_and_round_trip() {
        let key = RouteKey {
            dst: "203.0.113.0/25".parse().unwrap(),
            metric: 1024,
        };
        let v6 = Hop {
            gateway: "2001:db8:ffff::1".parse().unwrap(),
            ifindex: Some(3),
        };
        let v4 = Hop {
            gateway: "192.0.2.0".parse().unwrap(),
            ifindex: Some(2),
        };
        for hops in [vec![v6], vec![v4, v6]] {
            let route = Route {
                nexthop: None,
                protocol: 84,
                target: RouteTarget::Gateways(hops.into()),
            };
            let request = op_request(&Op::ReplaceRoute(key, route.clone()));
            let parsed = kernel_route(wire_round_trip(&request));
            let vias = |attrs: &[RouteAttribute]| {
                attrs
                    .iter()
                    .filter(|a| matches!(a, RouteAttribute::Via(RouteVia::Inet6(_))))
                    .count()
            };
            let nested: usize = parsed
                .attributes
                .iter()
                .map(|a| match a {
                    RouteAttribute::MultiPath(hops) => {
                        hops.iter().map(|h| vias(&h.attributes)).sum()
                    }
                    _ => 0,
                })
                .sum();
            assert_eq!(vias(&parsed.attributes) + nested, 1, "{parsed:?}");
            assert_eq!(route_from_kernel(&parsed, &[84], None), Some((key, route)));
        }
    }

    #[test]
    fn gateway_routes_point_at_their_nexthop_object_and_read_back_through_it() {
        let key = RouteKey {
            dst: "2001:db8:200::/64".parse().unwrap(),
            metric: 1024,
        };
        let hops: Vec<Hop> = vec![Hop {
            gateway: "2001:db8:ffff::1".parse().unwrap(),
            ifindex: None,
        }];
        let route = Route {
            nexthop: Some(84_000_001),
            ..Route::new(84, RouteTarget::Gateways(hops.into()))
        };
        let parsed = kernel_route(wire_round_trip(&op_request(&Op::ReplaceRoute(
            key,
            route.clone(),
        ))));
        assert_eq!(
            route_from_kernel(&parsed, &[84], None),
            None,
            "no gateway, no objects"
        );
        assert!(
            parsed
                .attributes
                .contains(&RouteAttribute::NhId(84_000_001))
        );
        assert!(
            !parsed
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_)))
        );
        // Without the compatibility attributes the kernel adds by default, the object says
        // where the route goes; a foreign object matches no next hop.
        let objects: NextHops = [(
            84_000_001,
            nexthop::NextHop::Gateway {
                gateway: "2001:db8:ffff::1".parse().unwrap(),
                ifindex: 3,
            },
        )]
        .into();
        let (_, read) = route_from_kernel(&parsed, &[84], Some(&objects)).unwrap();
        let want = vec![Hop {
            gateway: "2001:db8:ffff::1".parse().unwrap(),
            ifindex: Some(3),
        }];
        assert_eq!(read.target, RouteTarget::Gateways(want.into()));
        assert_eq!(read.nexthop, Some(84_000_001));
        assert!(route.satisfied_by(&read));
        assert!(!route.satisfied_by(&Route {
            nexthop: None,
            ..read
        }));
        let (_, foreign) = route_from_kernel(&parsed, &[84], Some(&NextHops::new())).unwrap();
        assert_eq!(foreign.target, RouteTarget::Gateways(Vec::new().into()));
    }

    #[test]
    fn neighbour_entries_round_trip() {
        let mac = MacAddr([0xfa, 0x16, 0x3e, 0, 0, 1]);
        for (ip, proxy, mac) in [
            ("198.51.100.10", false, Some(mac)),
            ("2001:db8:100::1", true, None),
        ] {
            let key = NeighKey {
                ifindex: 7,
                ip: ip.parse().unwrap(),
                proxy,
            };
            let neigh = Neigh {
                mac,
                permanent: true,
                protocol: 83,
            };
            match wire_round_trip(&op_request(&Op::ReplaceNeigh(key, neigh))) {
                RouteNetlinkMessage::NewNeighbour(n) => {
                    assert_eq!(neigh_from_kernel(&n), Some((key, neigh)))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unreadable_or_foreign_kernel_messages_are_ignored() {
        assert_eq!(
            route_from_kernel(&RouteMessage::default(), &[0], None),
            None
        );
        let mut other_table = RouteMessage::default();
        other_table.header.table = 100;
        other_table.header.kind = RouteType::Unicast;
        other_table.attributes.push(RouteAttribute::Oif(3));
        assert_eq!(route_from_kernel(&other_table, &[0], None), None);
        assert_eq!(neigh_from_kernel(&NeighbourMessage::default()), None);
        assert_eq!(link_from_kernel(&LinkMessage::default()), None);
    }
}
