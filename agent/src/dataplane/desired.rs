//! From the model (endpoints, learned routes) and the links present to the kernel objects that
//! should exist: a pure function. Bad input (a tap that does not exist, an address claimed by
//! two endpoints, a learned route through an unknown interface) is reported on the item concerned
//! and skipped; it never affects the other items.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::HashMap;
use super::kernel::{Hop, HopSets, Link, Neigh, NeighKey, Route, RouteKey, RouteTarget};
use super::types::{DataplaneConfig, DesiredEndpoint, LearnedNextHop, LearnedRoutes, TapState};

/// Who asked for a kernel object, to attribute errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A local endpoint, by id.
    Endpoint(String),
    /// A learned route, by prefix.
    Learned(IpNet),
}

/// A running tap that needs its per-interface sysctls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// The endpoint it belongs to.
    pub endpoint: String,
    /// Its index (sysctls are re-applied when it changes).
    pub ifindex: u32,
    /// Its name (sysctl paths use it).
    pub name: String,
}

/// Status of one endpoint as computed from the input alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointCheck {
    /// Its tap's state.
    pub tap: TapState,
    /// Input problems (conflicts), one message each.
    pub problems: Vec<String>,
}

/// Everything that should be in the kernel.
#[derive(Debug, Default, Clone)]
pub struct Desired {
    /// Routes, with their owner.
    pub routes: HashMap<RouteKey, (Route, Owner)>,
    /// Neighbour and proxy entries, with their owner.
    pub neighs: HashMap<NeighKey, (Neigh, Owner)>,
    /// Running taps of endpoints.
    pub taps: Vec<Tap>,
    /// Per endpoint, by id.
    pub endpoints: BTreeMap<String, EndpointCheck>,
    /// Problems with learned routes, by prefix.
    pub learned_problems: BTreeMap<IpNet, String>,
}

/// Computes the desired kernel state.
pub fn compute(
    endpoints: &BTreeMap<String, DesiredEndpoint>,
    learned: &LearnedRoutes,
    links: &HashMap<&str, &Link>,
    cfg: &DataplaneConfig,
    hop_sets: &mut HopSets,
) -> Desired {
    let mut desired = Desired::default();
    // Which endpoint claimed each destination first (endpoints are visited in id order, so the
    // outcome of a conflict does not depend on arrival order).
    let mut claimed: HashMap<IpNet, &str> = HashMap::default();
    for ep in endpoints.values() {
        let link = links.get(ep.interface.as_str());
        let tap = match link {
            None => TapState::Missing,
            Some(l) if !l.running => TapState::Down,
            Some(_) => TapState::Up,
        };
        let mut problems = Vec::new();
        let mut dsts: Vec<IpNet> = ep.addresses.iter().map(IpNet::trunc).collect();
        dsts.extend(ep.floating_ips.iter().map(|ip| IpNet::from(*ip)));
        dsts.sort();
        dsts.dedup();
        let mut mine = Vec::new();
        for dst in dsts {
            match claimed.get(&dst) {
                Some(other) => problems.push(format!(
                    "address {dst} is also claimed by endpoint {other}; skipped here"
                )),
                None => {
                    claimed.insert(dst, &ep.id);
                    mine.push(dst);
                }
            }
        }
        if let Some(link) = link.filter(|l| l.running) {
            let owner = Owner::Endpoint(ep.id.clone());
            for dst in &mine {
                let key = RouteKey {
                    dst: *dst,
                    metric: cfg.endpoint_metric,
                };
                let route = Route {
                    nexthop: None,
                    protocol: cfg.endpoint_protocol,
                    target: RouteTarget::Device(link.ifindex),
                };
                desired.routes.insert(key, (route, owner.clone()));
            }
            let arp_targets = ep
                .addresses
                .iter()
                .filter(|net| net.prefix_len() == net.max_prefix_len() && mine.contains(net))
                .map(IpNet::addr)
                .filter(IpAddr::is_ipv4);
            for ip in arp_targets {
                let key = NeighKey {
                    ifindex: link.ifindex,
                    ip,
                    proxy: false,
                };
                let neigh = Neigh {
                    mac: Some(ep.mac),
                    permanent: true,
                    protocol: cfg.endpoint_protocol,
                };
                desired.neighs.insert(key, (neigh, owner.clone()));
            }
            if let Some(gw) = ep.ipv6_gateway {
                let key = NeighKey {
                    ifindex: link.ifindex,
                    ip: IpAddr::V6(gw),
                    proxy: true,
                };
                let neigh = Neigh {
                    mac: None,
                    permanent: true,
                    protocol: cfg.endpoint_protocol,
                };
                desired.neighs.insert(key, (neigh, owner.clone()));
            }
            desired.taps.push(Tap {
                endpoint: ep.id.clone(),
                ifindex: link.ifindex,
                name: link.name.clone(),
            });
        }
        desired
            .endpoints
            .insert(ep.id.clone(), EndpointCheck { tap, problems });
    }
    for (prefix, next_hops) in learned {
        update_learned(&mut desired, *prefix, Some(next_hops), links, cfg, hop_sets);
    }
    desired
}

/// The kernel key of the learned route for `prefix`.
pub fn learned_key(prefix: IpNet, cfg: &DataplaneConfig) -> RouteKey {
    RouteKey {
        dst: prefix.trunc(),
        metric: cfg.learned_metric,
    }
}

/// Brings the desired state of one learned route up to date (`next_hops: None`: it is gone);
/// returns its kernel key. A learned route never displaces an endpoint's route.
pub fn update_learned(
    desired: &mut Desired,
    prefix: IpNet,
    next_hops: Option<&[LearnedNextHop]>,
    links: &HashMap<&str, &Link>,
    cfg: &DataplaneConfig,
    hop_sets: &mut HopSets,
) -> RouteKey {
    let key = learned_key(prefix, cfg);
    desired.learned_problems.remove(&prefix);
    if let Some((_, Owner::Endpoint(id))) = desired.routes.get(&key) {
        if next_hops.is_some() {
            let problem = format!("prefix is a local route of endpoint {id}; not installed");
            desired.learned_problems.insert(prefix, problem);
        }
        return key;
    }
    match next_hops.map(|hops| learned_route(prefix, hops, links, cfg, hop_sets)) {
        Some(Ok(kernel_route)) => {
            desired
                .routes
                .insert(key, (kernel_route, Owner::Learned(prefix)));
        }
        Some(Err(problem)) => {
            desired.routes.remove(&key);
            desired.learned_problems.insert(prefix, problem);
        }
        None => {
            desired.routes.remove(&key);
        }
    }
    key
}

fn learned_route(
    prefix: IpNet,
    next_hops: &[LearnedNextHop],
    links: &HashMap<&str, &Link>,
    cfg: &DataplaneConfig,
    hop_sets: &mut HopSets,
) -> Result<Route, String> {
    if next_hops.is_empty() {
        return Err("no next hop".into());
    }
    let mut hops = Vec::new();
    for nh in next_hops {
        let ifindex = match &nh.interface {
            None => None,
            Some(name) => match links.get(name.as_str()) {
                Some(link) => Some(link.ifindex),
                None => {
                    return Err(format!(
                        "next hop {} through missing interface {name}",
                        nh.gateway
                    ));
                }
            },
        };
        // An IPv4 route may go through an IPv6 gateway (RFC 8950, `via inet6`); an IPv6 route
        // cannot go through an IPv4 one.
        if let (IpNet::V6(_), IpAddr::V4(gateway)) = (prefix, nh.gateway) {
            return Err(format!(
                "next hop {gateway} is an IPv4 address for an IPv6 prefix"
            ));
        }
        hops.push(Hop {
            gateway: nh.gateway,
            ifindex,
        });
    }
    hops.sort();
    hops.dedup();
    Ok(Route {
        nexthop: None,
        protocol: cfg.learned_protocol,
        target: RouteTarget::Gateways(hop_sets.intern(hops)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::LearnedRoute;
    use crate::dataplane::types::{LearnedNextHop, MacAddr};

    fn ep(id: &str, tap: &str, addrs: &[&str]) -> DesiredEndpoint {
        DesiredEndpoint {
            id: id.into(),
            interface: tap.into(),
            mac: MacAddr([0xfa, 0x16, 0x3e, 0, 0, 1]),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            floating_ips: vec![],
            ipv6_gateway: None,
        }
    }

    fn links() -> Vec<Link> {
        vec![
            Link {
                ifindex: 10,
                name: "tapa".into(),
                running: true,
            },
            Link {
                ifindex: 11,
                name: "tapb".into(),
                running: false,
            },
            Link {
                ifindex: 12,
                name: "tapc".into(),
                running: true,
            },
        ]
    }

    fn run(eps: Vec<DesiredEndpoint>, learned: Vec<LearnedRoute>) -> Desired {
        let links = links();
        let by_name = links.iter().map(|l| (l.name.as_str(), l)).collect();
        let eps = eps.into_iter().map(|e| (e.id.clone(), e)).collect();
        let learned = learned
            .into_iter()
            .map(|r| (r.prefix, r.next_hops))
            .collect();
        compute(
            &eps,
            &learned,
            &by_name,
            &DataplaneConfig::default(),
            &mut HopSets::default(),
        )
    }

    fn key(dst: &str) -> RouteKey {
        RouteKey {
            dst: dst.parse().unwrap(),
            metric: 1024,
        }
    }

    #[test]
    fn a_running_tap_gets_routes_arp_proxy_ndp_and_sysctls() {
        let mut e = ep("a", "tapa", &["198.51.100.10/32", "2001:db8:100::10/128"]);
        e.floating_ips = vec!["203.0.113.5".parse().unwrap()];
        e.ipv6_gateway = Some("2001:db8:100::1".parse().unwrap());
        let d = run(vec![e], vec![]);
        let mut dsts: Vec<_> = d.routes.keys().map(|k| k.dst.to_string()).collect();
        dsts.sort();
        assert_eq!(
            dsts,
            ["198.51.100.10/32", "2001:db8:100::10/128", "203.0.113.5/32"]
        );
        for (route, owner) in d.routes.values() {
            assert_eq!(
                route,
                &Route {
                    nexthop: None,
                    protocol: 83,
                    target: RouteTarget::Device(10)
                }
            );
            assert_eq!(owner, &Owner::Endpoint("a".into()));
        }
        let mut neighs: Vec<_> = d
            .neighs
            .keys()
            .map(|k| (k.ip.to_string(), k.proxy))
            .collect();
        neighs.sort();
        assert_eq!(
            neighs,
            [
                ("198.51.100.10".into(), false),
                ("2001:db8:100::1".into(), true)
            ]
        );
        assert_eq!(
            d.taps,
            [Tap {
                endpoint: "a".into(),
                ifindex: 10,
                name: "tapa".into()
            }]
        );
        assert_eq!(
            d.endpoints["a"],
            EndpointCheck {
                tap: TapState::Up,
                problems: vec![]
            }
        );
    }

    #[test]
    fn down_and_missing_taps_get_nothing_and_are_reported() {
        let d = run(
            vec![
                ep("b", "tapb", &["198.51.100.11/32"]),
                ep("m", "nope", &["198.51.100.12/32"]),
            ],
            vec![],
        );
        assert!(d.routes.is_empty() && d.neighs.is_empty() && d.taps.is_empty());
        assert_eq!(d.endpoints["b"].tap, TapState::Down);
        assert_eq!(d.endpoints["m"].tap, TapState::Missing);
    }

    #[test]
    fn an_address_on_two_endpoints_stays_with_the_first_and_is_reported_on_the_second() {
        let d = run(
            vec![
                ep("z", "tapc", &["198.51.100.10/32", "198.51.100.20/32"]),
                ep("a", "tapa", &["198.51.100.10/32"]),
            ],
            vec![],
        );
        assert_eq!(
            d.routes[&key("198.51.100.10/32")].0.target,
            RouteTarget::Device(10)
        );
        assert_eq!(
            d.routes[&key("198.51.100.20/32")].0.target,
            RouteTarget::Device(12)
        );
        assert!(d.endpoints["a"].problems.is_empty());
        let problems = &d.endpoints["z"].problems;
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("198.51.100.10/32") && problems[0].contains("endpoint a"),
            "{problems:?}"
        );
        // No ARP entry for the address the second endpoint lost.
        assert!(
            d.neighs
                .keys()
                .all(|k| k.ifindex != 12 || k.ip.to_string() == "198.51.100.20")
        );
    }

    #[test]
    fn learned_routes_become_sorted_ecmp_routes_and_bad_ones_are_reported() {
        let nh = |gw: &str, dev: Option<&str>| LearnedNextHop {
            gateway: gw.parse().unwrap(),
            interface: dev.map(Into::into),
        };
        let good = LearnedRoute {
            prefix: "192.0.2.128/25".parse().unwrap(),
            next_hops: vec![nh("192.0.2.2", Some("tapc")), nh("192.0.2.0", None)].into(),
        };
        let missing = LearnedRoute {
            prefix: "198.51.100.0/24".parse().unwrap(),
            next_hops: vec![nh("192.0.2.0", Some("gone"))].into(),
        };
        let family = LearnedRoute {
            prefix: "2001:db8::/48".parse().unwrap(),
            next_hops: vec![nh("192.0.2.0", None)].into(),
        };
        let v4_via_v6 = LearnedRoute {
            prefix: "203.0.113.0/25".parse().unwrap(),
            next_hops: vec![nh("2001:db8:ffff::1", None)].into(),
        };
        let clash = LearnedRoute {
            prefix: "198.51.100.10/32".parse().unwrap(),
            next_hops: vec![nh("192.0.2.0", None)].into(),
        };
        let d = run(
            vec![ep("a", "tapa", &["198.51.100.10/32"])],
            vec![good, missing, family, clash, v4_via_v6],
        );
        let (route, owner) = &d.routes[&key("192.0.2.128/25")];
        assert_eq!(owner, &Owner::Learned("192.0.2.128/25".parse().unwrap()));
        assert_eq!(
            route.target,
            RouteTarget::Gateways(
                vec![
                    Hop {
                        gateway: "192.0.2.0".parse().unwrap(),
                        ifindex: None
                    },
                    Hop {
                        gateway: "192.0.2.2".parse().unwrap(),
                        ifindex: Some(12)
                    },
                ]
                .into()
            )
        );
        assert_eq!(route.protocol, 84);
        assert_eq!(
            d.routes[&key("203.0.113.0/25")].0.target,
            RouteTarget::Gateways(
                vec![Hop {
                    gateway: "2001:db8:ffff::1".parse().unwrap(),
                    ifindex: None
                }]
                .into()
            )
        );
        assert_eq!(d.learned_problems.len(), 3, "{:?}", d.learned_problems);
        assert_eq!(
            d.routes[&key("198.51.100.10/32")].1,
            Owner::Endpoint("a".into())
        );
    }
}
