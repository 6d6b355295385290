//! The kernel objects the programmer owns, keyed like the kernel keys them: routes in the main
//! table by (destination, metric), neighbours by (interface, address, proxy or not). Both the
//! desired state and the programmer's view of the actual state are expressed in these types.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::nexthop::{NextHop, NextHops};
use super::types::MacAddr;
use super::{HashMap, HashSet};

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub ifindex: u32,
    /// Its name.
    pub name: String,
    /// Operationally up (IFF_RUNNING).
    pub running: bool,
}

/// The kernel's key of a route in the main table (TOS and source prefix are always zero here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// Destination prefix.
    pub dst: IpNet,
    /// Metric (priority).
    pub metric: u32,
}

/// One next hop of a gateway route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hop {
    /// The gateway.
    pub gateway: IpAddr,
    /// Its interface; `None` means "whichever the kernel resolves" (in a desired hop, and in
    /// the view for a route we wrote, until a resync reads the kernel's choice back).
    pub ifindex: Option<u32>,
}

/// Where a route sends packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Out of an interface, scope link (an endpoint's tap).
    Device(u32),
    /// Through one or more gateways (sorted; several make an ECMP route). Shared: routes with
    /// the same next hops hold one copy ([`HopSets`]).
    Gateways(Arc<[Hop]>),
}

/// A route's content: who owns it and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Route protocol number.
    pub protocol: u8,
    /// Where it goes.
    pub target: RouteTarget,
    /// The nexthop object a gateway route points at (`RTA_NH_ID`). In the view: the kernel's
    /// (`None`: the route names its gateways). In the desired state: the object that serves its
    /// next hops (`None`: none does yet, and any route with those gateways will do).
    pub nexthop: Option<u32>,
}

impl Route {
    /// A route with no nexthop object.
    pub fn new(protocol: u8, target: RouteTarget) -> Route {
        Route {
            protocol,
            target,
            nexthop: None,
        }
    }

    /// Whether the kernel's route `actual` is this desired route (no write needed). A route
    /// that should point at a nexthop object is satisfied by one that does, whatever the
    /// object's members are now (keeping them right is the object's business, not the
    /// route's).
    pub fn satisfied_by(&self, actual: &Route) -> bool {
        if self.protocol != actual.protocol {
            return false;
        }
        if self.nexthop.is_some() {
            return self.nexthop == actual.nexthop;
        }
        match (&self.target, &actual.target) {
            (RouteTarget::Device(want), RouteTarget::Device(have)) => want == have,
            (RouteTarget::Gateways(want), RouteTarget::Gateways(have)) => {
                want.len() == have.len()
                    && want.iter().zip(have.iter()).all(|(w, h)| {
                        w.gateway == h.gateway && (w.ifindex.is_none() || w.ifindex == h.ifindex)
                    })
            }
            _ => false,
        }
    }

    /// The interfaces the route uses, when known.
    pub fn ifindexes(&self) -> impl Iterator<Item = u32> + '_ {
        let (device, hops) = match &self.target {
            RouteTarget::Device(ifindex) => (Some(*ifindex), &[][..]),
            RouteTarget::Gateways(hops) => (None, &hops[..]),
        };
        device
            .into_iter()
            .chain(hops.iter().filter_map(|h| h.ifindex))
    }
}

/// One copy of each next-hop set: the 100,000 routes learned from the same two ToRs share
/// one allocation, in the desired state and in the view alike.
#[derive(Debug, Default)]
pub struct HopSets {
    sets: HashSet<Arc<[Hop]>>,
}

impl HopSets {
    /// The shared copy of `hops`.
    pub fn intern(&mut self, hops: impl Into<Arc<[Hop]>>) -> Arc<[Hop]> {
        let hops = hops.into();
        if let Some(known) = self.sets.get(&hops) {
            return Arc::clone(known);
        }
        self.sets.insert(Arc::clone(&hops));
        hops
    }

    /// `route` with its next hops shared.
    pub fn route(&mut self, route: Route) -> Route {
        match route.target {
            RouteTarget::Gateways(hops) => Route {
                target: RouteTarget::Gateways(self.intern(hops)),
                ..route
            },
            RouteTarget::Device(_) => route,
        }
    }

    /// Forgets the sets no route uses any more.
    pub fn prune(&mut self) {
        self.sets.retain(|set| Arc::strong_count(set) > 1);
    }

    /// Number of distinct sets held.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// The kernel's key of a neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighKey {
    /// Interface.
    pub ifindex: u32,
    /// Address.
    pub ip: IpAddr,
    /// A proxy ARP/NDP entry rather than a neighbour.
    pub proxy: bool,
}

/// A neighbour entry's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neigh {
    /// Link-layer address (none for proxy entries).
    pub mac: Option<MacAddr>,
    /// NUD_PERMANENT.
    pub permanent: bool,
    /// NDA_PROTOCOL (0 when unset).
    pub protocol: u8,
}

impl Neigh {
    /// Whether the kernel's entry `actual` is this desired entry (no write needed).
    pub fn satisfied_by(&self, actual: &Neigh, proxy: bool) -> bool {
        // Proxy entries carry no state or address worth comparing.
        proxy || (actual.permanent && actual.mac == self.mac && actual.protocol == self.protocol)
    }
}

/// The programmer's view of the kernel: every link, our routes and nexthop objects, the
/// neighbour entries.
#[derive(Debug, Default, Clone)]
pub struct KernelView {
    /// Our nexthop objects; `None` when the kernel has no nexthop objects (before 5.3).
    pub nexthops: Option<NextHops>,
    /// Links by index.
    pub links: HashMap<u32, Link>,
    /// Routes with one of our protocols.
    pub routes: HashMap<RouteKey, Route>,
    /// Neighbour and proxy entries.
    pub neighs: HashMap<NeighKey, Neigh>,
}

impl KernelView {
    /// Forgets a link and everything on it (the kernel removed the device and, silently for
    /// IPv4, its routes).
    pub fn forget_link(&mut self, ifindex: u32) {
        self.links.remove(&ifindex);
        self.routes
            .retain(|_, r| !r.ifindexes().any(|i| i == ifindex));
        self.neighs.retain(|k, _| k.ifindex != ifindex);
        if let Some(objects) = &mut self.nexthops {
            objects
                .retain(|_, o| !matches!(o, NextHop::Gateway { ifindex: i, .. } if *i == ifindex));
            let left: HashSet<u32> = objects.keys().copied().collect();
            objects.retain(|_, o| match o {
                NextHop::Group(members) => {
                    members.retain(|m| left.contains(m));
                    !members.is_empty()
                }
                NextHop::Gateway { .. } => true,
            });
        }
    }

    /// Links by name.
    pub fn links_by_name(&self) -> HashMap<&str, &Link> {
        self.links.values().map(|l| (l.name.as_str(), l)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(gw: &str, ifindex: Option<u32>) -> Hop {
        Hop {
            gateway: gw.parse().unwrap(),
            ifindex,
        }
    }

    #[test]
    fn gateway_routes_match_with_or_without_a_known_interface() {
        let want = Route::new(
            84,
            RouteTarget::Gateways(vec![hop("192.0.2.0", None), hop("192.0.2.2", Some(7))].into()),
        );
        let have = Route::new(
            84,
            RouteTarget::Gateways(
                vec![hop("192.0.2.0", Some(3)), hop("192.0.2.2", Some(7))].into(),
            ),
        );
        assert!(want.satisfied_by(&have));
        let moved = Route::new(
            84,
            RouteTarget::Gateways(
                vec![hop("192.0.2.0", Some(3)), hop("192.0.2.2", Some(8))].into(),
            ),
        );
        assert!(!want.satisfied_by(&moved));
        let fewer = Route::new(
            84,
            RouteTarget::Gateways(vec![hop("192.0.2.0", Some(3))].into()),
        );
        assert!(!want.satisfied_by(&fewer));
        let foreign = Route {
            protocol: 12,
            ..have
        };
        assert!(!want.satisfied_by(&foreign));
    }

    #[test]
    fn a_route_meant_for_a_nexthop_object_is_satisfied_only_by_one_pointing_at_it() {
        let hops: Arc<[Hop]> = vec![hop("192.0.2.0", None), hop("192.0.2.2", None)].into();
        let want = Route {
            nexthop: Some(7),
            ..Route::new(84, RouteTarget::Gateways(Arc::clone(&hops)))
        };
        // The object lost a member (an uplink went down): still the route we want.
        let shrunk = Route {
            nexthop: Some(7),
            ..Route::new(
                84,
                RouteTarget::Gateways(vec![hop("192.0.2.2", Some(3))].into()),
            )
        };
        assert!(want.satisfied_by(&shrunk));
        // The same gateways named, or another object: to be rewritten.
        let named = Route::new(84, RouteTarget::Gateways(Arc::clone(&hops)));
        assert!(!want.satisfied_by(&named));
        assert!(!want.satisfied_by(&Route {
            nexthop: Some(8),
            ..named.clone()
        }));
        // Without an object to point at, any route with those gateways will do (the shrunk
        // one has fewer).
        assert!(!named.satisfied_by(&shrunk));
        assert!(named.satisfied_by(&Route {
            nexthop: Some(8),
            ..named.clone()
        }));
    }

    #[test]
    fn forgetting_a_link_drops_what_was_on_it() {
        let mut view = KernelView::default();
        view.links.insert(
            5,
            Link {
                ifindex: 5,
                name: "tap1".into(),
                running: true,
            },
        );
        let key = |dst: &str| RouteKey {
            dst: dst.parse().unwrap(),
            metric: 1024,
        };
        view.routes.insert(
            key("198.51.100.10/32"),
            Route::new(83, RouteTarget::Device(5)),
        );
        view.routes.insert(
            key("198.51.100.11/32"),
            Route::new(83, RouteTarget::Device(6)),
        );
        view.neighs.insert(
            NeighKey {
                ifindex: 5,
                ip: "198.51.100.10".parse().unwrap(),
                proxy: false,
            },
            Neigh {
                mac: None,
                permanent: true,
                protocol: 83,
            },
        );
        view.forget_link(5);
        assert!(view.links.is_empty());
        assert_eq!(
            view.routes.keys().copied().collect::<Vec<_>>(),
            vec![key("198.51.100.11/32")]
        );
        assert!(view.neighs.is_empty());
    }
}
