//! Reading the kernel's routing table of a namespace (`ip -j route`).

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
}

impl Netns {
    /// The routes of one family in the namespace's main table.
    pub fn kernel_routes(&self, v6: bool) -> Result<Vec<KernelRoute>> {
        let family = if v6 { "-6" } else { "-4" };
        parse_kernel_routes(&self.ip(&["-j", family, "route", "show"])?, v6)
    }
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
            gateways: hops
                .iter()
                .filter_map(|h| text(h, "gateway")?.parse().ok())
                .collect(),
            devices: hops.iter().filter_map(|h| text(h, "dev")).collect(),
            protocol: text(entry, "protocol").unwrap_or_else(|| "boot".into()),
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
    }
}
