//! Calico's BGP resources (`BGPPeer`, `BGPConfiguration`, `Node`): their decoding, and
//! [`for_node`], the pure function that turns them into this node's BGP settings
//! ([`DatastoreBgp`]), which the model emits as [`ModelEvent::Bgp`](super::ModelEvent::Bgp).
//!
//! What is not supported is rejected with a reason naming the field rather than half applied:
//! `peerSelector` (node-to-node peering), `password` (a Kubernetes secret reference),
//! `localASNumber`, `filters`. Ignored: `nodeToNodeMeshEnabled`, `logSeverityScreen`,
//! `routeReflectorClusterID` and every other field.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::resource::{Rejection, from_spec};
use super::selector::Selector;

/// BGP settings for this node from the datastore (Calico BGPConfiguration, this node's Node,
/// BGPPeers selecting it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatastoreBgp {
    /// This node's AS: Node spec.bgp.asNumber, else BGPConfiguration (node-specific, then
    /// default) asNumber.
    pub asn: Option<u32>,
    /// Node spec.bgp.ipv4Address's address.
    pub router_id: Option<Ipv4Addr>,
    /// BGPConfiguration listenPort (node-specific, then default).
    pub listen_port: Option<u16>,
    /// Peers for this node, sorted by name.
    pub peers: Vec<DatastorePeer>,
}

/// One peer of this node from a BGPPeer resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastorePeer {
    /// `bgppeer/<resource name>` (unique, and distinct from config-file peer names).
    pub name: String,
    /// `peerIP`'s address.
    pub address: IpAddr,
    /// `peerIP`'s port, if it has one.
    pub port: Option<u16>,
    /// `asNumber`.
    pub asn: u32,
    /// The Node's address of the peer's family when `sourceAddress` is `UseNodeIP` (Calico's
    /// default), else `None`.
    pub source_address: Option<IpAddr>,
    /// `ttlSecurity` (0 or absent: off).
    pub ttl_security_hops: Option<u8>,
    /// `maxRestartTime` in whole seconds.
    pub max_restart_time_s: Option<u16>,
    /// `keepOriginalNextHop`.
    pub keep_original_next_hop: bool,
}

/// A valid BGPPeer resource.
#[derive(Debug, Clone, PartialEq)]
pub struct BgpPeer {
    /// `spec.node`: only this node.
    pub node: Option<String>,
    /// `spec.nodeSelector`: the nodes whose Node labels match.
    pub node_selector: Option<Selector>,
    pub address: IpAddr,
    pub port: Option<u16>,
    pub asn: u32,
    /// `sourceAddress` is `UseNodeIP` (or absent).
    pub use_node_ip: bool,
    pub ttl_security_hops: Option<u8>,
    pub max_restart_time_s: Option<u16>,
    pub keep_original_next_hop: bool,
}

/// The fields of a BGPConfiguration the agent uses (`default`, or `node.<host>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BgpConfiguration {
    pub asn: Option<u32>,
    pub listen_port: Option<u16>,
}

/// The fields of this node's Node resource the agent uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// `spec.bgp.asNumber`.
    pub asn: Option<u32>,
    /// `spec.bgp.ipv4Address` (a CIDR; its address).
    pub ipv4: Option<IpAddr>,
    /// `spec.bgp.ipv6Address`.
    pub ipv6: Option<IpAddr>,
    /// `metadata.labels`, for BGPPeer `nodeSelector`s.
    pub labels: BTreeMap<String, String>,
}

impl BgpPeer {
    /// Whether the peer applies to node `hostname` with `labels`.
    fn selects(&self, hostname: &str, labels: &BTreeMap<String, String>) -> bool {
        match (&self.node, &self.node_selector) {
            (Some(node), _) => node == hostname,
            (None, Some(selector)) => selector.matches(labels),
            (None, None) => true,
        }
    }
}

/// This node's BGP settings: `node` is this node's Node resource, `configs` the
/// BGPConfigurations `node.<host>` then `default`, `peers` every valid BGPPeer by name.
pub fn for_node(
    hostname: &str,
    node: Option<&Node>,
    configs: [Option<&BgpConfiguration>; 2],
    peers: &BTreeMap<String, BgpPeer>,
) -> DatastoreBgp {
    let no_labels = BTreeMap::new();
    let labels = node.map_or(&no_labels, |n| &n.labels);
    let from_configs = |field: fn(&BgpConfiguration) -> Option<u32>| {
        configs.iter().flatten().find_map(|c| field(c))
    };
    let router_id = match node.and_then(|n| n.ipv4) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let peers = peers
        .iter()
        .filter(|(_, p)| p.selects(hostname, labels))
        .map(|(name, p)| {
            let node_ip = node.and_then(|n| if p.address.is_ipv4() { n.ipv4 } else { n.ipv6 });
            DatastorePeer {
                name: format!("bgppeer/{name}"),
                address: p.address,
                port: p.port,
                asn: p.asn,
                source_address: node_ip.filter(|_| p.use_node_ip),
                ttl_security_hops: p.ttl_security_hops,
                max_restart_time_s: p.max_restart_time_s,
                keep_original_next_hop: p.keep_original_next_hop,
            }
        })
        .collect();
    DatastoreBgp {
        asn: node.and_then(|n| n.asn).or_else(|| from_configs(|c| c.asn)),
        router_id,
        listen_port: configs.iter().flatten().find_map(|c| c.listen_port),
        peers,
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PeerSpec {
    node: Option<String>,
    #[serde(rename = "peerIP")]
    peer_ip: Option<String>,
    as_number: Option<Value>,
    node_selector: Option<String>,
    peer_selector: Option<String>,
    source_address: Option<String>,
    max_restart_time: Option<String>,
    ttl_security: Option<Value>,
    keep_original_next_hop: Option<bool>,
    password: Option<Value>,
    #[serde(rename = "localASNumber")]
    local_as_number: Option<Value>,
    filters: Option<Vec<Value>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigSpec {
    as_number: Option<Value>,
    listen_port: Option<Value>,
}

#[derive(Deserialize, Default)]
struct NodeSpec {
    #[serde(default)]
    bgp: Option<NodeBgpSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NodeBgpSpec {
    as_number: Option<Value>,
    ipv4_address: Option<String>,
    ipv6_address: Option<String>,
}

/// A string field, with `""` counted as absent (as Go's `omitempty` writes it).
fn present(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Decodes a BGPPeer `spec`.
pub fn decode_peer(spec_value: Value) -> Result<BgpPeer, Rejection> {
    let s: PeerSpec = from_spec(spec_value, || "spec is not a valid BGPPeer".into())?;
    if present(&s.peer_selector).is_some() {
        return Err(
            "spec.peerSelector (peering with other Calico nodes) is not supported; \
             list the peer addresses instead"
                .into(),
        );
    }
    if s.password.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(
            "spec.password reads a Kubernetes secret, which Skog cannot; \
             configure this peer with its password in skogd's configuration file instead"
                .into(),
        );
    }
    if s.local_as_number.as_ref().is_some_and(|v| !v.is_null()) {
        return Err("spec.localASNumber is not supported".into());
    }
    if s.filters.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err("spec.filters (BGPFilter) is not supported".into());
    }
    let node = present(&s.node).map(str::to_owned);
    let node_selector = present(&s.node_selector)
        .map(|text| Selector::parse(text).map_err(|e| format!("spec.nodeSelector: {e}")))
        .transpose()?;
    if node.is_some() && node_selector.is_some() {
        return Err("spec.node and spec.nodeSelector cannot both be set".into());
    }
    let peer_ip = present(&s.peer_ip).ok_or("spec.peerIP is missing")?;
    let (address, port) = parse_peer_ip(peer_ip)?;
    let asn = s
        .as_number
        .as_ref()
        .map(|v| parse_asn(v, "spec.asNumber"))
        .transpose()?
        .ok_or("spec.asNumber is missing")?;
    let use_node_ip = match present(&s.source_address) {
        None | Some("UseNodeIP") => true,
        Some("None") => false,
        Some(other) => {
            return Err(format!(
                "spec.sourceAddress {other:?} is neither \"UseNodeIP\" nor \"None\""
            ));
        }
    };
    let ttl_security_hops = match &s.ttl_security {
        None | Some(Value::Null) => None,
        Some(v) => {
            let hops = v
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| format!("spec.ttlSecurity {v} is not a hop count in 0..=255"))?;
            (hops > 0).then_some(hops)
        }
    };
    let max_restart_time_s = present(&s.max_restart_time)
        .map(|text| {
            let secs = parse_go_duration(text)
                .map_err(|e| format!("spec.maxRestartTime {text:?}: {e}"))?;
            u16::try_from(secs)
                .map_err(|_| format!("spec.maxRestartTime {text:?} is longer than 65535 seconds"))
        })
        .transpose()?;
    Ok(BgpPeer {
        node,
        node_selector,
        address,
        port,
        asn,
        use_node_ip,
        ttl_security_hops,
        max_restart_time_s,
        keep_original_next_hop: s.keep_original_next_hop.unwrap_or(false),
    })
}

/// Decodes a BGPConfiguration `spec`.
pub fn decode_config(spec_value: Value) -> Result<BgpConfiguration, Rejection> {
    let s: ConfigSpec = from_spec(spec_value, || "spec is not a valid BGPConfiguration".into())?;
    let listen_port = match &s.listen_port {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("spec.listenPort {v} is not a port in 1..=65535"))?,
        ),
    };
    Ok(BgpConfiguration {
        asn: optional_asn(&s.as_number, "spec.asNumber")?,
        listen_port,
    })
}

/// Decodes a Node's `spec` (and its labels).
pub fn decode_node(spec_value: Value, labels: BTreeMap<String, String>) -> Result<Node, Rejection> {
    let s: NodeSpec = from_spec(spec_value, || "spec is not a valid Node".into())?;
    let bgp = s.bgp.unwrap_or_default();
    let address =
        |field: &Option<String>, name: &str, v4: bool| -> Result<Option<IpAddr>, Rejection> {
            let Some(text) = present(field) else {
                return Ok(None);
            };
            let addr = text
                .parse::<IpNet>()
                .map(|n| n.addr())
                .or_else(|_| text.parse::<IpAddr>())
                .map_err(|_| format!("spec.bgp.{name} {text:?} is not an address or CIDR"))?;
            if addr.is_ipv4() != v4 {
                return Err(format!(
                    "spec.bgp.{name} {text:?} is not an IPv{} address",
                    if v4 { 4 } else { 6 }
                ));
            }
            Ok(Some(addr))
        };
    Ok(Node {
        asn: optional_asn(&bgp.as_number, "spec.bgp.asNumber")?,
        ipv4: address(&bgp.ipv4_address, "ipv4Address", true)?,
        ipv6: address(&bgp.ipv6_address, "ipv6Address", false)?,
        labels,
    })
}

fn optional_asn(value: &Option<Value>, field: &str) -> Result<Option<u32>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_asn(v, field).map(Some),
    }
}

/// An AS number as Calico writes it: a number, or a string of a number or of the dotted form
/// `<high>.<low>` (RFC 5396). 0 is refused.
fn parse_asn(value: &Value, field: &str) -> Result<u32, Rejection> {
    let bad = || format!("{field} {value} is not an AS number in 1..=4294967295 (or high.low)");
    let asn = match value {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => match s.trim().split_once('.') {
            None => s.trim().parse::<u32>().ok(),
            Some((high, low)) => match (high.parse::<u16>(), low.parse::<u16>()) {
                (Ok(high), Ok(low)) => Some(u32::from(high) << 16 | u32::from(low)),
                _ => None,
            },
        },
        _ => None,
    };
    asn.filter(|a| *a != 0).ok_or_else(bad)
}

/// `peerIP`: `ip`, `ipv4:port` or `[ipv6]:port`.
fn parse_peer_ip(text: &str) -> Result<(IpAddr, Option<u16>), Rejection> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok((addr, None));
    }
    let socket = text.parse::<SocketAddr>().map_err(|_| {
        format!("spec.peerIP {text:?} is not an IP address, ipv4:port or [ipv6]:port")
    })?;
    if socket.port() == 0 {
        return Err(format!("spec.peerIP {text:?} has port 0"));
    }
    Ok((socket.ip(), Some(socket.port())))
}

/// A Go duration (`"120s"`, `"2m"`, `"1h30m"`, `"1.5s"`, `"0"`) in whole seconds (truncated).
fn parse_go_duration(text: &str) -> Result<u64, String> {
    if text == "0" {
        return Ok(0);
    }
    if text.starts_with('-') {
        return Err("negative".into());
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let mut rest = text;
    let mut nanos: u128 = 0;
    if rest.is_empty() {
        return Err("empty".into());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or("a number without a unit")?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(format!("unknown unit {other:?}")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err("a unit without a number".into());
        }
        let digits = |s: &str| -> Result<u128, String> {
            if s.is_empty() {
                Ok(0)
            } else {
                s.parse::<u128>().map_err(|_| format!("bad number {s:?}"))
            }
        };
        // Fractions beyond nanoseconds are dropped (at most 18 digits are read).
        let fraction = &fraction[..fraction.len().min(18)];
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(18));
        let fraction_nanos = digits(fraction)? * per_unit / scale;
        let value = digits(whole)?
            .checked_mul(per_unit)
            .and_then(|w| w.checked_add(fraction_nanos))
            .ok_or("too long")?;
        nanos = nanos.checked_add(value).ok_or("too long")?;
        rest = tail;
    }
    u64::try_from(nanos / 1_000_000_000).map_err(|_| "too long".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: &str = "compute-01";

    fn peer(spec: Value) -> Result<BgpPeer, Rejection> {
        decode_peer(spec)
    }

    #[test]
    fn peer_fields_decode() {
        let p = peer(
            json!({"node": HOST, "peerIP": "192.0.2.1", "asNumber": 65001,
            "ttlSecurity": 1, "maxRestartTime": "2m30s", "keepOriginalNextHop": true,
            "sourceAddress": "None", "nodeToNodeMeshEnabled": true}),
        )
        .unwrap();
        assert_eq!(p.node.as_deref(), Some(HOST));
        assert_eq!(p.address, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((p.port, p.asn), (None, 65001));
        assert_eq!(p.ttl_security_hops, Some(1));
        assert_eq!(p.max_restart_time_s, Some(150));
        assert!(p.keep_original_next_hop && !p.use_node_ip);

        let p = peer(json!({"peerIP": "[2001:db8::1]:1790", "asNumber": "1.10",
            "ttlSecurity": 0}))
        .unwrap();
        assert_eq!(p.address, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(p.port, Some(1790));
        assert_eq!(p.asn, 65546);
        assert_eq!(p.ttl_security_hops, None);
        assert!(p.use_node_ip, "UseNodeIP is the default");
        let p = peer(json!({"peerIP": "192.0.2.9:179", "asNumber": "4200000000"})).unwrap();
        assert_eq!((p.port, p.asn), (Some(179), 4_200_000_000));
    }

    #[test]
    fn bad_and_unsupported_peers_are_rejected_with_the_field() {
        for (spec, want) in [
            (json!({"asNumber": 65001}), "spec.peerIP is missing"),
            (json!({"peerIP": "192.0.2.1"}), "spec.asNumber is missing"),
            (
                json!({"peerIP": "192.0.2.300", "asNumber": 1}),
                "spec.peerIP",
            ),
            (json!({"peerIP": "192.0.2.1:0", "asNumber": 1}), "port 0"),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 0}),
                "spec.asNumber",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": "1.70000"}),
                "spec.asNumber",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": -1}),
                "spec.asNumber",
            ),
            (
                json!({"peerSelector": "all()", "asNumber": 1}),
                "spec.peerSelector",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 1,
                       "password": {"secretKeyRef": {"name": "s", "key": "k"}}}),
                "spec.password",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 1, "localASNumber": 2}),
                "localASNumber",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 1, "filters": ["f"]}),
                "filters",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 1, "node": HOST, "nodeSelector": "all()"}),
                "cannot both",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 1, "nodeSelector": "has("}),
                "spec.nodeSelector",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 1, "sourceAddress": "Auto"}),
                "sourceAddress",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 1, "ttlSecurity": 256}),
                "ttlSecurity",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 1, "maxRestartTime": "5 minutes"}),
                "maxRestartTime",
            ),
            (
                json!({"peerIP": "192.0.2.1", "asNumber": 1, "maxRestartTime": "19h"}),
                "65535",
            ),
            (json!({"peerIP": 7, "asNumber": 1}), "not a valid BGPPeer"),
        ] {
            let err = peer(spec.clone()).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn go_durations() {
        for (text, secs) in [
            ("0", 0),
            ("120s", 120),
            ("2m", 120),
            ("1h1m1s", 3661),
            ("1.5s", 1),
            ("1.5m", 90),
            ("1500ms", 1),
            ("90000000000ns", 90),
        ] {
            assert_eq!(parse_go_duration(text), Ok(secs), "{text}");
        }
        for bad in [
            "",
            "s",
            "10",
            "-1s",
            "1d",
            "1..5s",
            "99999999999999999999999999999h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configuration_and_node_decode() {
        let c = decode_config(json!({"asNumber": 64512, "listenPort": 1790,
            "nodeToNodeMeshEnabled": false, "logSeverityScreen": "Info"}))
        .unwrap();
        assert_eq!(
            c,
            BgpConfiguration {
                asn: Some(64512),
                listen_port: Some(1790)
            }
        );
        assert!(
            decode_config(json!({"listenPort": 0}))
                .unwrap_err()
                .contains("listenPort")
        );
        let labels = BTreeMap::from([("rack".to_owned(), "r1".to_owned())]);
        let n = decode_node(
            json!({"bgp": {"asNumber": 65101, "ipv4Address": "192.0.2.2/24",
                   "ipv6Address": "2001:db8::2/64", "routeReflectorClusterID": "224.0.0.1"}}),
            labels.clone(),
        )
        .unwrap();
        assert_eq!(n.asn, Some(65101));
        assert_eq!(n.ipv4, Some("192.0.2.2".parse().unwrap()));
        assert_eq!(n.ipv6, Some("2001:db8::2".parse().unwrap()));
        assert_eq!(n.labels, labels);
        assert_eq!(
            decode_node(Value::Null, BTreeMap::new()).unwrap(),
            Node::default()
        );
        let err = decode_node(
            json!({"bgp": {"ipv4Address": "2001:db8::2/64"}}),
            BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.contains("spec.bgp.ipv4Address"), "{err}");
    }

    #[test]
    fn peers_are_selected_for_this_node_and_sourced_from_its_addresses() {
        let node = decode_node(
            json!({"bgp": {"asNumber": 65101, "ipv4Address": "192.0.2.2/31",
                           "ipv6Address": "2001:db8::2/64"}}),
            BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
        )
        .unwrap();
        let peers: BTreeMap<String, BgpPeer> = [
            (
                "mine",
                json!({"node": HOST, "peerIP": "192.0.2.3", "asNumber": 65001}),
            ),
            (
                "other",
                json!({"node": "compute-02", "peerIP": "192.0.2.5", "asNumber": 65001}),
            ),
            (
                "global",
                json!({"peerIP": "2001:db8::1", "asNumber": 65002, "sourceAddress": "None"}),
            ),
            (
                "rack-r1",
                json!({"nodeSelector": "rack == 'r1'", "peerIP": "2001:db8::3", "asNumber": 65003}),
            ),
            (
                "rack-r2",
                json!({"nodeSelector": "rack == 'r2'", "peerIP": "192.0.2.7", "asNumber": 65003}),
            ),
        ]
        .into_iter()
        .map(|(name, spec)| (name.to_owned(), decode_peer(spec).unwrap()))
        .collect();
        let default = BgpConfiguration {
            asn: Some(64512),
            listen_port: Some(1790),
        };
        let node_config = BgpConfiguration {
            asn: Some(64513),
            listen_port: None,
        };
        let bgp = for_node(
            HOST,
            Some(&node),
            [Some(&node_config), Some(&default)],
            &peers,
        );
        assert_eq!(bgp.asn, Some(65101), "the Node's AS first");
        assert_eq!(bgp.router_id, Some("192.0.2.2".parse().unwrap()));
        assert_eq!(bgp.listen_port, Some(1790));
        let names: Vec<&str> = bgp.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bgppeer/global", "bgppeer/mine", "bgppeer/rack-r1"]);
        assert_eq!(bgp.peers[0].source_address, None, "sourceAddress None");
        assert_eq!(
            bgp.peers[1].source_address,
            Some("192.0.2.2".parse().unwrap())
        );
        assert_eq!(
            bgp.peers[2].source_address,
            Some("2001:db8::2".parse().unwrap())
        );

        // No Node: no labels (selectors other than all() miss), no source, config AS.
        let bgp = for_node(HOST, None, [Some(&node_config), Some(&default)], &peers);
        assert_eq!((bgp.asn, bgp.router_id), (Some(64513), None));
        let names: Vec<&str> = bgp.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bgppeer/global", "bgppeer/mine"]);
        assert_eq!(bgp.peers[1].source_address, None);
        assert_eq!(
            for_node(HOST, None, [None, None], &BTreeMap::new()),
            DatastoreBgp::default()
        );
    }

    /// xorshift64: deterministic pseudo-random numbers for the mutation tests.
    fn rng() -> impl FnMut() -> u64 {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn mutated_bgp_resources_and_durations_never_panic() {
        use crate::model::fixtures::{bgp_configuration, bgp_peer, node};
        use crate::model::key::ResourceKey;
        use crate::model::resource::decode;
        let seeds = [
            bgp_peer(
                "p",
                json!({"nodeSelector": "rack == 'r1'", "peerIP": "[2001:db8::1]:179",
                "asNumber": "1.10", "maxRestartTime": "1m30.5s", "ttlSecurity": 2}),
            ),
            bgp_configuration("default", json!({"asNumber": 64512, "listenPort": 179})),
            node(
                HOST,
                json!({"rack": "r1"}),
                json!({"asNumber": 65101,
                "ipv4Address": "192.0.2.2/24", "ipv6Address": "2001:db8::2/64"}),
            ),
        ];
        const INSERTED: &[u8] = b"{}[]\":,.0-9sm/";
        let mut next = rng();
        for round in 0..10_000 {
            let (key, value) = &seeds[round % seeds.len()];
            let key = ResourceKey::parse(key).unwrap();
            let mut bytes = serde_json::to_vec(value).unwrap();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.truncate(at.max(1)),
                    _ => bytes.insert(at, INSERTED[(next() as usize) % INSERTED.len()]),
                }
            }
            let _ = decode(&key, &bytes);
        }
        let alphabet: Vec<char> = "0123456789..smhun\u{b5}+-".chars().collect();
        for _ in 0..20_000 {
            let text: String = (0..next() % 12)
                .map(|_| alphabet[(next() as usize) % alphabet.len()])
                .collect();
            let _ = parse_go_duration(&text);
            let _ = parse_peer_ip(&text);
        }
    }
}
