//! The reconcile core: desired state against the kernel view gives the kernel operations to
//! send. Pure, so every rule of ownership is unit-tested without netlink:
//! - adds are replaces, and only for objects that differ (an adopted, equal route is not
//!   rewritten);
//! - only routes with one of our protocol numbers, and only neighbour entries carrying our
//!   protocol, are ever deleted;
//! - until the desired state is known to be complete (start-up), nothing is deleted: endpoint
//!   objects once the datastore's initial load is in, learned routes once BGP has converged.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::HashSet;
use super::desired::{Desired, Owner};
use super::kernel::{KernelView, Neigh, NeighKey, Route, RouteKey};

/// One kernel write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a route.
    ReplaceRoute(RouteKey, Route),
    /// Delete a route of ours (the kernel deletes only if the protocol matches).
    DeleteRoute(RouteKey, Route),
    /// Create or replace a neighbour or proxy entry.
    ReplaceNeigh(NeighKey, Neigh),
    /// Delete a neighbour or proxy entry of ours.
    DeleteNeigh(NeighKey),
}

/// Which route protocols and neighbour protocol are ours.
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    /// Route protocols we own: endpoint routes, learned routes.
    pub route_protocols: [u8; 2],
    /// The protocol our neighbour entries carry.
    pub neigh_protocol: u8,
}

/// Which parts of the desired state are complete, so that what they do not name may go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Complete {
    /// Endpoints (routes and neighbour entries): the datastore's initial load is in.
    pub endpoints: bool,
    /// Learned routes: BGP has converged (every peer sent End-of-RIB, or the wait timed out).
    pub learned: bool,
}

impl Complete {
    /// Whether an undesired route of `protocol` may be deleted.
    fn deletes(self, own: Ownership, protocol: u8) -> bool {
        let [endpoint_protocol, learned_protocol] = own.route_protocols;
        (self.endpoints && protocol == endpoint_protocol)
            || (self.learned && protocol == learned_protocol)
    }
}

/// Operations that turn `actual` into `desired`, deletes first. Objects of ours that are not
/// desired are deleted only when their part of the desired state is [`Complete`]; before that
/// only creations and replacements are planned.
pub fn plan(desired: &Desired, actual: &KernelView, own: Ownership, complete: Complete) -> Vec<Op> {
    let deletable = |protocol: u8| complete.deletes(own, protocol);
    let mut ops = Vec::new();
    let mut stray: Vec<_> = actual
        .routes
        .iter()
        .filter(|(k, r)| deletable(r.protocol) && !desired.routes.contains_key(k))
        .map(|(k, r)| Op::DeleteRoute(*k, r.clone()))
        .collect();
    let mut stray_neighs: Vec<_> = actual
        .neighs
        .iter()
        .filter(|(k, n)| {
            complete.endpoints
                && n.protocol == own.neigh_protocol
                && !desired.neighs.contains_key(k)
        })
        .map(|(k, _)| Op::DeleteNeigh(*k))
        .collect();
    stray.sort_by_key(op_sort_key);
    stray_neighs.sort_by_key(op_sort_key);
    ops.extend(stray);
    ops.extend(stray_neighs);
    let mut writes: Vec<_> = desired
        .routes
        .iter()
        .filter(|(k, (want, _))| {
            !actual
                .routes
                .get(k)
                .is_some_and(|have| want.satisfied_by(have))
        })
        .map(|(k, (want, _))| Op::ReplaceRoute(*k, want.clone()))
        .chain(
            desired
                .neighs
                .iter()
                .filter(|(k, (want, _))| {
                    !actual
                        .neighs
                        .get(k)
                        .is_some_and(|have| want.satisfied_by(have, k.proxy))
                })
                .map(|(k, (want, _))| Op::ReplaceNeigh(*k, *want)),
        )
        .collect();
    writes.sort_by_key(op_sort_key);
    ops.extend(writes);
    ops
}

/// The operations for just the routes `keys` (sorted), as [`plan`] would plan them: the
/// incremental path when only single routes changed. Learned routes in `withdrawn` (this run
/// learned and then lost them) are deleted even before the learned routes are complete.
pub fn plan_routes(
    desired: &Desired,
    actual: &KernelView,
    own: Ownership,
    complete: Complete,
    keys: &[RouteKey],
    withdrawn: &HashSet<RouteKey>,
) -> Vec<Op> {
    let [_, learned_protocol] = own.route_protocols;
    let deletable = |key: &RouteKey, protocol: u8| {
        complete.deletes(own, protocol) || (protocol == learned_protocol && withdrawn.contains(key))
    };
    let mut deletes = Vec::new();
    let mut writes = Vec::new();
    for key in keys {
        match (desired.routes.get(key), actual.routes.get(key)) {
            (Some((want, _)), have) if !have.is_some_and(|h| want.satisfied_by(h)) => {
                writes.push(Op::ReplaceRoute(*key, want.clone()));
            }
            (None, Some(have)) if deletable(key, have.protocol) => {
                deletes.push(Op::DeleteRoute(*key, have.clone()));
            }
            _ => {}
        }
    }
    deletes.extend(writes);
    deletes
}

/// Deterministic order: routes before neighbours, each by key, so batches and tests are
/// reproducible.
fn op_sort_key(op: &Op) -> (bool, Option<RouteKey>, Option<NeighKey>) {
    match op {
        Op::DeleteRoute(k, _) | Op::ReplaceRoute(k, _) => (false, Some(*k), None),
        Op::DeleteNeigh(k) | Op::ReplaceNeigh(k, _) => (true, None, Some(*k)),
    }
}

/// Who an operation is for, to report its failure.
pub fn owner_of<'a>(op: &Op, desired: &'a Desired) -> Option<&'a Owner> {
    match op {
        Op::ReplaceRoute(k, _) => desired.routes.get(k).map(|(_, o)| o),
        Op::ReplaceNeigh(k, _) => desired.neighs.get(k).map(|(_, o)| o),
        Op::DeleteRoute(..) | Op::DeleteNeigh(_) => None,
    }
}

/// Endpoint route prefixes that are desired and present in the kernel: what BGP announces.
pub fn announceable(desired: &Desired, actual: &KernelView) -> BTreeSet<IpNet> {
    desired
        .routes
        .iter()
        .filter(|(_, (_, owner))| matches!(owner, Owner::Endpoint(_)))
        .filter(|(k, (want, _))| {
            actual
                .routes
                .get(k)
                .is_some_and(|have| want.satisfied_by(have))
        })
        .map(|(k, _)| k.dst)
        .collect()
}

/// Records a successful operation in the view, so the next plan does not repeat it. This is
/// all the view learns of our own writes: their notifications are filtered out. A gateway's
/// interface thus stays unknown (`None`) until a resync reads it back.
pub fn record(actual: &mut KernelView, op: &Op) {
    match op {
        Op::ReplaceRoute(k, r) => {
            actual.routes.insert(*k, r.clone());
        }
        Op::DeleteRoute(k, _) => {
            actual.routes.remove(k);
        }
        Op::ReplaceNeigh(k, n) => {
            actual.neighs.insert(*k, *n);
        }
        Op::DeleteNeigh(k) => {
            actual.neighs.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::kernel::{Hop, RouteTarget};

    const OWN: Ownership = Ownership {
        route_protocols: [83, 84],
        neigh_protocol: 83,
    };
    const ALL: Complete = Complete {
        endpoints: true,
        learned: true,
    };

    fn key(dst: &str, metric: u32) -> RouteKey {
        RouteKey {
            dst: dst.parse().unwrap(),
            metric,
        }
    }

    fn dev(protocol: u8, ifindex: u32) -> Route {
        Route {
            nexthop: None,
            protocol,
            target: RouteTarget::Device(ifindex),
        }
    }

    fn endpoint(id: &str) -> Owner {
        Owner::Endpoint(id.into())
    }

    fn arp(ifindex: u32, ip: &str) -> NeighKey {
        NeighKey {
            ifindex,
            ip: ip.parse().unwrap(),
            proxy: false,
        }
    }

    fn perm(protocol: u8) -> Neigh {
        Neigh {
            mac: Some(crate::dataplane::types::MacAddr([2, 0, 0, 0, 0, 1])),
            permanent: true,
            protocol,
        }
    }

    #[test]
    fn an_empty_kernel_gets_every_object() {
        let mut desired = Desired::default();
        desired
            .routes
            .insert(key("198.51.100.10/32", 1024), (dev(83, 5), endpoint("a")));
        desired
            .neighs
            .insert(arp(5, "198.51.100.10"), (perm(83), endpoint("a")));
        let ops = plan(&desired, &KernelView::default(), OWN, ALL);
        assert_eq!(
            ops,
            [
                Op::ReplaceRoute(key("198.51.100.10/32", 1024), dev(83, 5)),
                Op::ReplaceNeigh(arp(5, "198.51.100.10"), perm(83)),
            ]
        );
    }

    #[test]
    fn adopted_equal_objects_are_not_rewritten() {
        let mut desired = Desired::default();
        desired
            .routes
            .insert(key("198.51.100.10/32", 1024), (dev(83, 5), endpoint("a")));
        desired
            .neighs
            .insert(arp(5, "198.51.100.10"), (perm(83), endpoint("a")));
        let mut actual = KernelView::default();
        actual
            .routes
            .insert(key("198.51.100.10/32", 1024), dev(83, 5));
        actual.neighs.insert(arp(5, "198.51.100.10"), perm(83));
        assert!(plan(&desired, &actual, OWN, ALL).is_empty());
        assert_eq!(announceable(&desired, &actual).len(), 1);
    }

    #[test]
    fn drift_is_repaired_and_only_our_strays_are_deleted() {
        let mut desired = Desired::default();
        desired
            .routes
            .insert(key("198.51.100.10/32", 1024), (dev(83, 5), endpoint("a")));
        desired
            .routes
            .insert(key("198.51.100.11/32", 1024), (dev(83, 6), endpoint("b")));
        desired
            .neighs
            .insert(arp(5, "198.51.100.10"), (perm(83), endpoint("a")));
        let mut actual = KernelView::default();
        // Wrong interface, and the same destination at a wrong metric.
        actual
            .routes
            .insert(key("198.51.100.10/32", 1024), dev(83, 9));
        actual
            .routes
            .insert(key("198.51.100.10/32", 100), dev(83, 5));
        // A stray learned route of ours, and a foreign route (never ours to delete).
        actual
            .routes
            .insert(key("203.0.113.0/25", 1024), dev(84, 3));
        actual.routes.insert(key("203.0.113.1/32", 1024), dev(4, 5));
        // dnsmasq downgraded our ARP entry; a stray entry of ours; a foreign entry.
        actual.neighs.insert(
            arp(5, "198.51.100.10"),
            Neigh {
                permanent: false,
                ..perm(83)
            },
        );
        actual.neighs.insert(arp(6, "198.51.100.99"), perm(83));
        actual.neighs.insert(arp(6, "198.51.100.98"), perm(0));
        let ops = plan(&desired, &actual, OWN, ALL);
        assert_eq!(
            ops,
            [
                Op::DeleteRoute(key("198.51.100.10/32", 100), dev(83, 5)),
                Op::DeleteRoute(key("203.0.113.0/25", 1024), dev(84, 3)),
                Op::DeleteNeigh(arp(6, "198.51.100.99")),
                Op::ReplaceRoute(key("198.51.100.10/32", 1024), dev(83, 5)),
                Op::ReplaceRoute(key("198.51.100.11/32", 1024), dev(83, 6)),
                Op::ReplaceNeigh(arp(5, "198.51.100.10"), perm(83)),
            ]
        );
        // Before the desired state is complete nothing is deleted.
        let adds_only = plan(&desired, &actual, OWN, Complete::default());
        assert!(
            adds_only
                .iter()
                .all(|op| matches!(op, Op::ReplaceRoute(..) | Op::ReplaceNeigh(..)))
        );
        assert_eq!(adds_only.len(), 3);
        // Endpoints complete, BGP not converged yet: the stray learned route stays.
        let endpoints_only = Complete {
            endpoints: true,
            learned: false,
        };
        let ops = plan(&desired, &actual, OWN, endpoints_only);
        assert!(ops.contains(&Op::DeleteRoute(key("198.51.100.10/32", 100), dev(83, 5))));
        assert!(
            !ops.iter()
                .any(|op| matches!(op, Op::DeleteRoute(_, r) if r.protocol == 84))
        );
    }

    #[test]
    fn a_changed_next_hop_set_replaces_the_ecmp_route_in_one_write() {
        let hop = |gw: &str, i: u32| Hop {
            gateway: gw.parse().unwrap(),
            ifindex: Some(i),
        };
        let two = Route {
            nexthop: None,
            protocol: 84,
            target: RouteTarget::Gateways(vec![hop("192.0.2.0", 2), hop("192.0.2.2", 3)].into()),
        };
        let one = Route {
            nexthop: None,
            protocol: 84,
            target: RouteTarget::Gateways(vec![hop("192.0.2.0", 2)].into()),
        };
        let k = key("0.0.0.0/0", 1024);
        let mut desired = Desired::default();
        desired
            .routes
            .insert(k, (one.clone(), Owner::Learned(k.dst)));
        let mut actual = KernelView::default();
        actual.routes.insert(k, two);
        let ops = plan(&desired, &actual, OWN, ALL);
        assert_eq!(ops, [Op::ReplaceRoute(k, one.clone())]);
        record(&mut actual, &ops[0]);
        assert!(plan(&desired, &actual, OWN, ALL).is_empty());
        // Learned routes are not announced as local endpoint routes.
        assert!(announceable(&desired, &actual).is_empty());
    }
}
