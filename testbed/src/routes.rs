//! Reading the kernel's routing table and nexthop objects of a namespace (`ip -j route`,
//! `ip -j nexthop`).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::netns::Netns;
use crate::{Error, Result};

/// A route as the kernel holds it (`ip -j route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    /// Destination prefix.
    pub dst: IpNet,
    /// Gateways, one per next hop (empty for a device route).
    pub gateways: Vec<IpAddr>,
    /// Output devices, one per next hop.
    pub devices: Vec<String>,
    /// The route's protocol as `ip` names it (`bird`, `bgp`, `static`, a number, ...).
    pub protocol: String,
    /// The nexthop object it points at, if any.
    pub nexthop_id: Option<u32>,
}

/// A nexthop object as the kernel holds it (`ip -j nexthop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNextHop {
    /// Its id.
    pub id: u32,
    /// Its gateway (none for a group).
    pub gateway: Option<IpAddr>,
    /// Its members' ids (empty unless a group).
    pub group: Vec<u32>,
    /// Its protocol as `ip` names it.
    pub protocol: String,
}

impl Netns {
    /// The routes of one family in the namespace's main table.
    pub fn kernel_routes(&self, v6: bool) -> Result<Vec<KernelRoute>> {
        let family = if v6 { "-6" } else { "-4" };
        parse_kernel_routes(&self.ip(&["-j", family, "route", "show"])?, v6)
    }

    /// The namespace's nexthop objects.
    pub fn kernel_nexthops(&self) -> Result<Vec<KernelNextHop>> {
        parse_kernel_nexthops(&self.ip(&["-j", "nexthop", "show"])?)
    }
}

fn parse_kernel_nexthops(json: &str) -> Result<Vec<KernelNextHop>> {
    let parse_err = |reason: String| Error::Parse {
        tool: "ip -j nexthop".into(),
        reason,
    };
    // `ip` prints nothing at all when there are none.
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(json.trim()).map_err(|e| parse_err(e.to_string()))?;
    let id_of = |v: &serde_json::Value| {
        v.get("id")
            .and_then(|x| x.as_u64())
            .and_then(|x| u32::try_from(x).ok())
    };
    entries
        .iter()
        .map(|entry| {
            Ok(KernelNextHop {
                id: id_of(entry).ok_or_else(|| parse_err(format!("no id in {entry}")))?,
                gateway: entry.get("gateway").and_then(|g| g.as_str()?.parse().ok()),
                group: entry
                    .get("group")
                    .and_then(|g| g.as_array())
                    .map(|members| members.iter().filter_map(id_of).collect())
                    .unwrap_or_default(),
                protocol: entry
                    .get("protocol")
                    .and_then(|p| p.as_str())
                    .unwrap_or_default()
                    .to_owned(),
            })
        })
        .collect()
}

fn parse_kernel_routes(json: &str, v6: bool) -> Result<Vec<KernelRoute>> {
    let parse_err = |reason: String| Error::Parse {
        tool: "ip -j route".into(),
        reason,
    };
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(json.trim()).map_err(|e| parse_err(e.to_string()))?;
    let text =
        |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
    let mut routes = Vec::new();
    for entry in &entries {
        let dst = text(entry, "dst").ok_or_else(|| parse_err(format!("no dst in {entry}")))?;
        let dst: IpNet = match dst.as_str() {
            "default" if v6 => IpNet::V6(Default::default()),
            "default" => IpNet::V4(Default::default()),
            d if d.contains('/') => d.parse().map_err(|_| parse_err(format!("bad dst {d}")))?,
            d => IpNet::from(
                d.parse::<IpAddr>()
                    .map_err(|_| parse_err(format!("bad dst {d}")))?,
            ),
        };
        let hops: Vec<&serde_json::Value> = match entry.get("nexthops").and_then(|n| n.as_array()) {
            Some(hops) => hops.iter().collect(),
            None => vec![entry],
        };
        routes.push(KernelRoute {
            dst,
            // `via` for a gateway of the other family (an IPv4 route through IPv6).
            gateways: hops
                .iter()
                .filter_map(|h| {
                    text(h, "gateway")
                        .or_else(|| h.get("via").and_then(|v| text(v, "host")))?
                        .parse()
                        .ok()
                })
                .collect(),
            devices: hops.iter().filter_map(|h| text(h, "dev")).collect(),
            protocol: text(entry, "protocol").unwrap_or_else(|| "boot".into()),
            nexthop_id: entry
                .get("nhid")
                .and_then(|n| n.as_u64())
                .and_then(|n| u32::try_from(n).ok()),
        });
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_routes_are_parsed_with_multipath() {
        let json = r#"[{"dst":"default","gateway":"192.0.2.0","dev":"up0","protocol":"bird","flags":[]},
            {"dst":"198.51.100.10","protocol":"bird","flags":[],"nexthops":[
              {"gateway":"192.0.2.1","dev":"dn0","weight":1,"flags":[]},
              {"gateway":"192.0.2.3","dev":"dn1","weight":1,"flags":[]}]},
            {"dst":"192.0.2.0/31","dev":"up0","protocol":"kernel","scope":"link","flags":[]}]"#;
        let routes = parse_kernel_routes(json, false).unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
        assert_eq!(routes[1].dst, "198.51.100.10/32".parse::<IpNet>().unwrap());
        assert_eq!(routes[1].gateways.len(), 2);
        assert_eq!(routes[2].devices, vec!["up0".to_owned()]);
        assert!(routes[2].gateways.is_empty());
        assert_eq!(routes[0].nexthop_id, None);
    }

    #[test]
    fn nexthop_objects_and_routes_pointing_at_them_are_parsed() {
        let json = r#"[{"id":84000001,"gateway":"2001:db8:ffff::1","dev":"d0","scope":"link","protocol":"84","flags":[]},
            {"id":84000003,"group":[{"id":84000001},{"id":84000002}],"protocol":"84","flags":[]}]"#;
        let objects = parse_kernel_nexthops(json).unwrap();
        assert_eq!(
            objects[0].gateway,
            Some("2001:db8:ffff::1".parse().unwrap())
        );
        assert_eq!(objects[1].group, [84000001, 84000002]);
        assert_eq!(objects[1].protocol, "84");
        assert!(parse_kernel_nexthops("\n").unwrap().is_empty());
        let json = r#"[{"dst":"2001:db8:200::/64","nhid":84000003,"metric":1024,"flags":[],"nexthops":[
            {"gateway":"2001:db8:ffff::1","dev":"d0","weight":1,"flags":[]}]}]"#;
        let routes = parse_kernel_routes(json, true).unwrap();
        assert_eq!(routes[0].nexthop_id, Some(84000003));
        let json = r#"[{"dst":"203.0.113.0/25","nhid":1,"via":{"family":"inet6","host":"2001:db8:ffff::1"},"dev":"d0","protocol":"84","flags":[]}]"#;
        let routes = parse_kernel_routes(json, false).unwrap();
        assert_eq!(
            routes[0].gateways,
            ["2001:db8:ffff::1".parse::<IpAddr>().unwrap()]
        );
    }
}
