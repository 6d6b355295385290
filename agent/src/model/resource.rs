//! Calico v3 resources as the agent uses them, and their decoding from the JSON that
//! networking-calico (or `calicoctl`) writes: lenient about unknown fields, strict about values.
//! A resource is either fully valid or rejected with a reason naming the offending field; the
//! caller keeps the key.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::bgp::{self, BgpConfiguration, BgpPeer, Node};
use super::key::{EndpointId, Kind, ResourceKey};
use super::selector::Selector;

/// Label Felix adds to every workload endpoint: its namespace.
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Label Felix adds to every workload endpoint: its orchestrator.
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";

/// A decoded resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A workload endpoint (any host).
    WorkloadEndpoint(WorkloadEndpoint),
    /// A namespaced network policy.
    NetworkPolicy(Policy),
    /// A (legacy) profile.
    Profile(Profile),
    /// Cluster-wide information.
    ClusterInformation(ClusterInformation),
    /// Felix configuration (`default` or `node.<host>`).
    FelixConfiguration(FelixConfiguration),
    /// A BGP peer (any node).
    BgpPeer(BgpPeer),
    /// BGP configuration (`default` or `node.<host>`).
    BgpConfiguration(BgpConfiguration),
    /// A node's BGP settings and labels.
    Node(Node),
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    /// Six hex octets separated by `:` or `-`.
    fn from_str(s: &str) -> Result<MacAddr, String> {
        let bad = || format!("invalid MAC address {s:?}");
        let mut octets = [0u8; 6];
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        for (octet, part) in octets.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(octets))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A floating IP: traffic to `external` is DNATed to `internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNat {
    /// The VM's fixed address.
    pub internal: IpAddr,
    /// The floating address.
    pub external: IpAddr,
}

/// A workload endpoint (a VM port).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadEndpoint {
    /// Identity from the key name.
    pub id: EndpointId,
    /// The tap interface (a valid Linux interface name).
    pub interface_name: String,
    /// The VM's MAC, if given.
    pub mac: Option<MacAddr>,
    /// Fixed IPs (/32, /128) and allowed-address-pair entries (may be whole CIDRs).
    pub ip_networks: Vec<IpNet>,
    /// Floating IPs.
    pub ip_nats: Vec<IpNat>,
    /// IPv4 subnet gateway.
    pub ipv4_gateway: Option<Ipv4Addr>,
    /// IPv6 subnet gateway.
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// Labels, plus the implicit namespace and orchestrator labels Felix adds.
    pub labels: BTreeMap<String, String>,
    /// Profiles (not written by networking-calico 2.0+; tolerated).
    pub profiles: Vec<String>,
}

/// Identity of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId {
    /// Namespace of the policy.
    pub namespace: String,
    /// Name (`ossg.default.<sg-id>` for security groups).
    pub name: String,
}

impl std::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A namespaced network policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Identity.
    pub id: PolicyId,
    /// `order` (absent: after every ordered policy; ties broken by name).
    pub order: Option<f64>,
    /// Which endpoints of the namespace it applies to.
    pub selector: Selector,
    /// Applies to traffic into the endpoint.
    pub applies_ingress: bool,
    /// Applies to traffic out of the endpoint.
    pub applies_egress: bool,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
}

/// A legacy profile: rules applied to endpoints that list it in `spec.profiles`.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Name.
    pub name: String,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Accept.
    Allow,
    /// Drop.
    Deny,
    /// Log and continue.
    Log,
    /// Skip to the next tier (profiles, for us).
    Pass,
}

/// IP version a rule is restricted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// An ICMP match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    /// ICMP type (0-254).
    pub icmp_type: Option<u8>,
    /// ICMP code (0-255); only with a type.
    pub code: Option<u8>,
}

/// An inclusive port range (a single port has `first == last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

/// Match criteria on one side (source or destination) of a rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityRule {
    /// Addresses in any of these.
    pub nets: Vec<IpNet>,
    /// Addresses in none of these.
    pub not_nets: Vec<IpNet>,
    /// Endpoints (in the rule's namespace) matching this.
    pub selector: Option<Selector>,
    /// Endpoints not matching this.
    pub not_selector: Option<Selector>,
    /// Ports in any of these ranges.
    pub ports: Vec<PortRange>,
    /// Ports in none of these ranges.
    pub not_ports: Vec<PortRange>,
}

/// A policy or profile rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The action.
    pub action: Action,
    /// Restricts the rule to one IP version.
    pub ip_version: Option<IpVersion>,
    /// IP protocol number (names are translated: TCP 6, UDP 17, ICMP 1, ICMPv6 58, SCTP 132,
    /// UDPLite 136).
    pub protocol: Option<u8>,
    /// Protocol it must not be.
    pub not_protocol: Option<u8>,
    /// ICMP type/code match.
    pub icmp: Option<IcmpMatch>,
    /// ICMP type/code it must not be.
    pub not_icmp: Option<IcmpMatch>,
    /// Source criteria.
    pub source: EntityRule,
    /// Destination criteria.
    pub destination: EntityRule,
}

impl Rule {
    /// The selectors the rule uses (source and destination, positive and negated).
    pub fn selectors(&self) -> impl Iterator<Item = &Selector> {
        [
            &self.source.selector,
            &self.source.not_selector,
            &self.destination.selector,
            &self.destination.not_selector,
        ]
        .into_iter()
        .flatten()
    }
}

/// `ClusterInformation` `default`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterInformation {
    /// Tri-state: `Some(false)` pauses dataplane changes.
    pub datastore_ready: Option<bool>,
}

/// `FelixConfiguration` fields the agent uses.
#[derive(Debug, Clone, PartialEq)]
pub struct FelixConfiguration {
    /// Comma-separated list of interface name prefixes (`tap` for OpenStack).
    pub interface_prefix: Option<Vec<String>>,
}

/// Why a resource was rejected.
pub type Rejection = String;

// ---------------------------------------------------------------------------------------------
// Wire shapes: exactly the fields the agent reads, everything else ignored.

#[derive(Deserialize)]
struct Object {
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Value,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WepSpec {
    interface_name: Option<String>,
    mac: Option<String>,
    #[serde(default)]
    ip_networks: Vec<String>,
    #[serde(default, rename = "ipNATs")]
    ip_nats: Vec<WireNat>,
    ipv4_gateway: Option<String>,
    ipv6_gateway: Option<String>,
    #[serde(default)]
    profiles: Vec<String>,
}

#[derive(Deserialize)]
struct WireNat {
    #[serde(rename = "internalIP")]
    internal_ip: String,
    #[serde(rename = "externalIP")]
    external_ip: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PolicySpec {
    order: Option<f64>,
    selector: Option<String>,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    ingress: Vec<WireRule>,
    #[serde(default)]
    egress: Vec<WireRule>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ProfileSpec {
    #[serde(default)]
    ingress: Vec<WireRule>,
    #[serde(default)]
    egress: Vec<WireRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRule {
    action: String,
    ip_version: Option<i64>,
    protocol: Option<Value>,
    not_protocol: Option<Value>,
    icmp: Option<WireIcmp>,
    #[serde(rename = "notICMP")]
    not_icmp: Option<WireIcmp>,
    #[serde(default)]
    source: WireEntity,
    #[serde(default)]
    destination: WireEntity,
    #[serde(default)]
    http: Option<Value>,
}

#[derive(Deserialize)]
struct WireIcmp {
    #[serde(rename = "type")]
    icmp_type: Option<i64>,
    code: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireEntity {
    #[serde(default)]
    nets: Vec<String>,
    #[serde(default)]
    not_nets: Vec<String>,
    selector: Option<String>,
    not_selector: Option<String>,
    namespace_selector: Option<String>,
    #[serde(default)]
    ports: Vec<Value>,
    #[serde(default)]
    not_ports: Vec<Value>,
    services: Option<Value>,
    service_account: Option<Value>,
    service_accounts: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ClusterInfoSpec {
    datastore_ready: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FelixConfigSpec {
    interface_prefix: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Decoding and validation.

/// Decodes and validates the JSON value stored under `key`.
pub fn decode(key: &ResourceKey, value: &[u8]) -> Result<Resource, Rejection> {
    let object: Object =
        serde_json::from_slice(value).map_err(|e| format!("value is not valid JSON: {e}"))?;
    if let Some(kind) = &object.kind
        && kind != key.kind.name()
    {
        return Err(format!(
            "kind {kind:?} stored under a {} key",
            key.kind.plural()
        ));
    }
    let spec = object.spec;
    let spec_of = |what: &str| format!("spec is not a valid {what}");
    match key.kind {
        Kind::WorkloadEndpoint => {
            let namespace = key.namespace.as_deref().unwrap_or_default();
            let id = EndpointId::from_name(namespace, &key.name)?;
            let spec: WepSpec = from_spec(spec, || spec_of("WorkloadEndpoint"))?;
            let labels = object.metadata.labels.unwrap_or_default();
            decode_endpoint(id, spec, labels).map(Resource::WorkloadEndpoint)
        }
        Kind::NetworkPolicy => {
            let id = PolicyId {
                namespace: key.namespace.clone().unwrap_or_default(),
                name: key.name.clone(),
            };
            let spec: PolicySpec = from_spec(spec, || spec_of("NetworkPolicy"))?;
            decode_policy(id, spec).map(Resource::NetworkPolicy)
        }
        Kind::Profile => {
            let spec: ProfileSpec = from_spec(spec, || spec_of("Profile"))?;
            Ok(Resource::Profile(Profile {
                name: key.name.clone(),
                ingress: decode_rules(&spec.ingress, "ingress")?,
                egress: decode_rules(&spec.egress, "egress")?,
            }))
        }
        Kind::ClusterInformation => {
            let spec: ClusterInfoSpec = from_spec(spec, || spec_of("ClusterInformation"))?;
            Ok(Resource::ClusterInformation(ClusterInformation {
                datastore_ready: spec.datastore_ready,
            }))
        }
        Kind::FelixConfiguration => {
            let spec: FelixConfigSpec = from_spec(spec, || spec_of("FelixConfiguration"))?;
            let interface_prefix = spec.interface_prefix.map(|p| {
                p.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
            Ok(Resource::FelixConfiguration(FelixConfiguration {
                interface_prefix,
            }))
        }
        Kind::BgpPeer => bgp::decode_peer(spec).map(Resource::BgpPeer),
        Kind::BgpConfiguration => bgp::decode_config(spec).map(Resource::BgpConfiguration),
        Kind::Node => {
            let labels = object.metadata.labels.unwrap_or_default();
            bgp::decode_node(spec, labels).map(Resource::Node)
        }
    }
}

/// A spec into its wire shape (`null`: the default); `what` names it in the rejection.
pub(super) fn from_spec<T: serde::de::DeserializeOwned + Default>(
    spec: Value,
    what: impl Fn() -> String,
) -> Result<T, Rejection> {
    if spec.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(spec).map_err(|e| format!("{}: {e}", what()))
}

/// Linux rules for interface names (`dev_valid_name`): 1 to 15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace.
pub fn validate_interface_name(name: &str) -> Result<(), Rejection> {
    let bad = |why: &str| Err(format!("invalid interfaceName {name:?}: {why}"));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 15 {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        return bad("contains '/', ':' or whitespace");
    }
    Ok(())
}

/// A CIDR, or a bare address taken as a host route (as libcalico-go's `ParseCIDROrIP`).
fn parse_net(text: &str, field: &str) -> Result<IpNet, Rejection> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid CIDR {text:?} in {field}"))
}

fn parse_ip(text: &str, field: &str) -> Result<IpAddr, Rejection> {
    text.parse()
        .map_err(|_| format!("invalid IP address {text:?} in {field}"))
}

fn decode_endpoint(
    id: EndpointId,
    spec: WepSpec,
    mut labels: BTreeMap<String, String>,
) -> Result<WorkloadEndpoint, Rejection> {
    let interface_name = spec
        .interface_name
        .ok_or_else(|| "spec.interfaceName is missing".to_owned())?;
    validate_interface_name(&interface_name)?;
    let mac = spec.mac.as_deref().map(MacAddr::from_str).transpose()?;
    let ip_networks = spec
        .ip_networks
        .iter()
        .map(|n| parse_net(n, "ipNetworks"))
        .collect::<Result<Vec<_>, _>>()?;
    let ip_nats = spec
        .ip_nats
        .iter()
        .map(|nat| {
            let internal = parse_ip(&nat.internal_ip, "ipNATs.internalIP")?;
            let external = parse_ip(&nat.external_ip, "ipNATs.externalIP")?;
            if internal.is_ipv4() != external.is_ipv4() {
                return Err(format!(
                    "ipNATs entry {internal} -> {external} mixes IPv4 and IPv6"
                ));
            }
            Ok(IpNat { internal, external })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ipv4_gateway = spec
        .ipv4_gateway
        .as_deref()
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .map_err(|_| format!("invalid ipv4Gateway {g:?}"))
        })
        .transpose()?;
    let ipv6_gateway = spec
        .ipv6_gateway
        .as_deref()
        .map(|g| {
            g.parse::<Ipv6Addr>()
                .map_err(|_| format!("invalid ipv6Gateway {g:?}"))
        })
        .transpose()?;
    labels
        .entry(NAMESPACE_LABEL.to_owned())
        .or_insert_with(|| id.namespace.clone());
    labels
        .entry(ORCHESTRATOR_LABEL.to_owned())
        .or_insert_with(|| id.orchestrator.clone());
    Ok(WorkloadEndpoint {
        id,
        interface_name,
        mac,
        ip_networks,
        ip_nats,
        ipv4_gateway,
        ipv6_gateway,
        labels,
        profiles: spec.profiles,
    })
}

fn decode_policy(id: PolicyId, spec: PolicySpec) -> Result<Policy, Rejection> {
    let selector = match spec.selector.as_deref().map(str::trim) {
        None | Some("") => Selector::all(),
        Some(text) => Selector::parse(text).map_err(|e| format!("spec.selector: {e}"))?,
    };
    if let Some(order) = spec.order
        && !order.is_finite()
    {
        return Err(format!("spec.order {order} is not a finite number"));
    }
    let (mut applies_ingress, mut applies_egress) = (false, false);
    for t in &spec.types {
        match t.as_str() {
            "Ingress" => applies_ingress = true,
            "Egress" => applies_egress = true,
            other => return Err(format!("spec.types: unknown type {other:?}")),
        }
    }
    if spec.types.is_empty() {
        // Felix: no types means both directions (networking-calico writes none).
        (applies_ingress, applies_egress) = (true, true);
    }
    Ok(Policy {
        id,
        order: spec.order,
        selector,
        applies_ingress,
        applies_egress,
        ingress: decode_rules(&spec.ingress, "ingress")?,
        egress: decode_rules(&spec.egress, "egress")?,
    })
}

fn decode_rules(rules: &[WireRule], direction: &str) -> Result<Vec<Rule>, Rejection> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| decode_rule(r).map_err(|e| format!("spec.{direction}[{i}]: {e}")))
        .collect()
}

fn decode_rule(rule: &WireRule) -> Result<Rule, Rejection> {
    let action = match rule.action.as_str() {
        "Allow" | "allow" => Action::Allow,
        "Deny" | "deny" => Action::Deny,
        "Log" | "log" => Action::Log,
        "Pass" | "pass" => Action::Pass,
        other => return Err(format!("unknown action {other:?}")),
    };
    let ip_version = match rule.ip_version {
        None => None,
        Some(4) => Some(IpVersion::V4),
        Some(6) => Some(IpVersion::V6),
        Some(v) => return Err(format!("ipVersion {v} is neither 4 nor 6")),
    };
    if rule.http.is_some() {
        return Err("http match is not supported".into());
    }
    let protocol = rule.protocol.as_ref().map(parse_protocol).transpose()?;
    let not_protocol = rule.not_protocol.as_ref().map(parse_protocol).transpose()?;
    let icmp = rule.icmp.as_ref().map(parse_icmp).transpose()?;
    let not_icmp = rule.not_icmp.as_ref().map(parse_icmp).transpose()?;
    if icmp.is_some() || not_icmp.is_some() {
        match protocol {
            Some(1) if ip_version != Some(IpVersion::V6) => {}
            Some(58) if ip_version != Some(IpVersion::V4) => {}
            _ => {
                return Err(
                    "icmp/notICMP needs protocol ICMP (IPv4) or ICMPv6 (IPv6) to match".into(),
                );
            }
        }
    }
    let source = decode_entity(&rule.source).map_err(|e| format!("source: {e}"))?;
    let destination = decode_entity(&rule.destination).map_err(|e| format!("destination: {e}"))?;
    let has_ports = |e: &EntityRule| !e.ports.is_empty() || !e.not_ports.is_empty();
    if (has_ports(&source) || has_ports(&destination))
        && !matches!(protocol, Some(6 | 17 | 132 | 136))
    {
        return Err("ports need protocol TCP, UDP, SCTP or UDPLite".into());
    }
    for net in source.nets.iter().chain(&source.not_nets) {
        check_version(net, ip_version, "source")?;
    }
    for net in destination.nets.iter().chain(&destination.not_nets) {
        check_version(net, ip_version, "destination")?;
    }
    Ok(Rule {
        action,
        ip_version,
        protocol,
        not_protocol,
        icmp,
        not_icmp,
        source,
        destination,
    })
}

fn check_version(net: &IpNet, version: Option<IpVersion>, side: &str) -> Result<(), Rejection> {
    match (net, version) {
        (IpNet::V4(_), Some(IpVersion::V6)) | (IpNet::V6(_), Some(IpVersion::V4)) => Err(format!(
            "{side} net {net} does not match the rule's ipVersion"
        )),
        _ => Ok(()),
    }
}

fn parse_protocol(value: &Value) -> Result<u8, Rejection> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| format!("protocol {n} is not in 0..=255")),
        Value::String(s) => match s.as_str() {
            "TCP" | "tcp" => Ok(6),
            "UDP" | "udp" => Ok(17),
            "ICMP" | "icmp" => Ok(1),
            "ICMPv6" | "icmpv6" => Ok(58),
            "SCTP" | "sctp" => Ok(132),
            "UDPLite" | "udplite" => Ok(136),
            other => other
                .parse::<u8>()
                .map_err(|_| format!("unknown protocol {other:?}")),
        },
        other => Err(format!("protocol {other} is neither a number nor a name")),
    }
}

fn parse_icmp(icmp: &WireIcmp) -> Result<IcmpMatch, Rejection> {
    let icmp_type = icmp
        .icmp_type
        .map(|t| {
            u8::try_from(t)
                .ok()
                .filter(|t| *t <= 254)
                .ok_or_else(|| format!("icmp type {t} is not in 0..=254"))
        })
        .transpose()?;
    let code = icmp
        .code
        .map(|c| u8::try_from(c).map_err(|_| format!("icmp code {c} is not in 0..=255")))
        .transpose()?;
    if code.is_some() && icmp_type.is_none() {
        return Err("icmp code without a type".into());
    }
    Ok(IcmpMatch { icmp_type, code })
}

fn decode_entity(entity: &WireEntity) -> Result<EntityRule, Rejection> {
    if entity.namespace_selector.is_some() {
        return Err("namespaceSelector is not supported".into());
    }
    if entity.services.is_some() {
        return Err("services match is not supported".into());
    }
    if entity.service_account.is_some() || entity.service_accounts.is_some() {
        return Err("serviceAccounts match is not supported".into());
    }
    let nets = |list: &[String], field: &str| {
        list.iter()
            .map(|n| parse_net(n, field))
            .collect::<Result<Vec<_>, _>>()
    };
    let selector = |text: &Option<String>, field: &str| -> Result<Option<Selector>, Rejection> {
        match text.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(t) => Selector::parse(t)
                .map(Some)
                .map_err(|e| format!("{field}: {e}")),
        }
    };
    Ok(EntityRule {
        nets: nets(&entity.nets, "nets")?,
        not_nets: nets(&entity.not_nets, "notNets")?,
        selector: selector(&entity.selector, "selector")?,
        not_selector: selector(&entity.not_selector, "notSelector")?,
        ports: parse_ports(&entity.ports, "ports")?,
        not_ports: parse_ports(&entity.not_ports, "notPorts")?,
    })
}

fn parse_ports(ports: &[Value], field: &str) -> Result<Vec<PortRange>, Rejection> {
    ports
        .iter()
        .map(|p| parse_port(p).map_err(|e| format!("{field}: {e}")))
        .collect()
}

fn parse_port(value: &Value) -> Result<PortRange, Rejection> {
    let number = |text: &str| {
        text.trim()
            .parse::<u16>()
            .map_err(|_| format!("port {text:?} is not a number in 0..=65535"))
    };
    match value {
        Value::Number(n) => {
            let port = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("port {n} is not in 0..=65535"))?;
            Ok(PortRange {
                first: port,
                last: port,
            })
        }
        Value::String(s) => {
            let range = match s.split_once(':') {
                Some((a, b)) => PortRange {
                    first: number(a)?,
                    last: number(b)?,
                },
                None if s.trim().chars().all(|c| c.is_ascii_digit()) => {
                    let port = number(s)?;
                    PortRange {
                        first: port,
                        last: port,
                    }
                }
                None => return Err(format!("named port {s:?} is not supported")),
            };
            if range.first > range.last {
                return Err(format!("port range {s:?} is reversed"));
            }
            Ok(range)
        }
        other => Err(format!("port {other} is neither a number nor a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::key::RESOURCE_PREFIX;
    use serde_json::json;

    const WEP_NAME: &str = "compute--01-openstack-8e3941b4--a6e9--499f--a1ac--2a4662025cba-ce705c24--c1ef--408a--bda3--7bbd946164ab";
    const SG: &str = "751d740a-b52b-46d9-bca8-a21e75c8a727";

    fn wep_key() -> ResourceKey {
        ResourceKey::parse(&format!(
            "{RESOURCE_PREFIX}workloadendpoints/openstack/{WEP_NAME}"
        ))
        .unwrap()
    }

    fn policy_key() -> ResourceKey {
        ResourceKey::parse(&format!(
            "{RESOURCE_PREFIX}networkpolicies/openstack/ossg.default.{SG}"
        ))
        .unwrap()
    }

    /// The WorkloadEndpoint networking-calico writes (calico-datamodel.md §1.2).
    fn wep_json() -> Value {
        json!({
          "kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
          "metadata": {
            "name": WEP_NAME, "namespace": "openstack",
            "creationTimestamp": "2026-08-22T13:33:20Z", "uid": "5b0f0f3e-2a57-4b7e-9d57-2f6a1d0c6f11",
            "labels": {
              format!("sg.projectcalico.org/openstack-{SG}"): "web",
              "sg-name.projectcalico.org/openstack-web": SG,
              "projectcalico.org/namespace": "openstack",
              "projectcalico.org/orchestrator": "openstack",
              "projectcalico.org/openstack-project-id": "294b394e8f454cc8b26bbe342bc210d3"
            },
            "annotations": {"openstack.projectcalico.org/network-id": "99b8e526-e943-4463-aa28-a22395bed154"}
          },
          "spec": {
            "orchestrator": "openstack", "workload": "8e3941b4-a6e9-499f-a1ac-2a4662025cba",
            "node": "compute-01", "endpoint": "ce705c24-c1ef-408a-bda3-7bbd946164ab",
            "interfaceName": "tapce705c24-c1", "mac": "fa:16:3e:b1:3b:30",
            "ipNetworks": ["198.51.100.3/32", "2001:db8:1::3/128", "203.0.113.0/28"],
            "allowedIps": ["203.0.113.0/28"],
            "ipv4Gateway": "198.51.100.1", "ipv6Gateway": "2001:db8:1::1",
            "ipNATs": [{"internalIP": "198.51.100.3", "externalIP": "203.0.113.228"}],
            "qosControls": {"ingressBandwidth": 10000000}
          }
        })
    }

    /// The NetworkPolicy networking-calico writes for a security group (§1.3).
    fn policy_json() -> Value {
        json!({
          "kind": "NetworkPolicy", "apiVersion": "projectcalico.org/v3",
          "metadata": {"name": format!("ossg.default.{SG}"), "namespace": "openstack"},
          "spec": {
            "selector": format!("has(sg.projectcalico.org/openstack-{SG})"),
            "ingress": [
              {"action": "Allow", "ipVersion": 4, "protocol": 6,
               "source": {"nets": ["0.0.0.0/0"]}, "destination": {"ports": [22]}},
              {"action": "Allow", "ipVersion": 4, "protocol": 6, "destination": {"ports": ["8000:8080"]},
               "source": {"selector": format!("has(sg.projectcalico.org/openstack-{SG})")}},
              {"action": "Allow", "ipVersion": 4, "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
              {"action": "Allow", "ipVersion": 6, "protocol": "ICMPv6"},
              {"action": "Allow", "ipVersion": 4, "protocol": "47"}
            ],
            "egress": [ {"action": "Allow", "ipVersion": 4}, {"action": "Allow", "ipVersion": 6} ]
          }
        })
    }

    fn decode_json(key: &ResourceKey, v: &Value) -> Result<Resource, Rejection> {
        decode(key, &serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn networking_calico_endpoint_decodes() {
        let Resource::WorkloadEndpoint(wep) = decode_json(&wep_key(), &wep_json()).unwrap() else {
            panic!("not an endpoint");
        };
        assert_eq!(wep.id.host, "compute-01");
        assert_eq!(wep.id.endpoint, "ce705c24-c1ef-408a-bda3-7bbd946164ab");
        assert_eq!(wep.interface_name, "tapce705c24-c1");
        assert_eq!(wep.mac.unwrap().to_string(), "fa:16:3e:b1:3b:30");
        let nets: Vec<String> = wep.ip_networks.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            nets,
            ["198.51.100.3/32", "2001:db8:1::3/128", "203.0.113.0/28"]
        );
        assert_eq!(wep.ip_nats[0].external.to_string(), "203.0.113.228");
        assert_eq!(wep.ipv4_gateway.unwrap().to_string(), "198.51.100.1");
        assert_eq!(wep.ipv6_gateway.unwrap().to_string(), "2001:db8:1::1");
        assert_eq!(
            wep.labels[&format!("sg.projectcalico.org/openstack-{SG}")],
            "web"
        );
    }

    #[test]
    fn implicit_labels_are_added() {
        let mut v = wep_json();
        v["metadata"]["labels"] = json!({});
        let Resource::WorkloadEndpoint(wep) = decode_json(&wep_key(), &v).unwrap() else {
            panic!("not an endpoint");
        };
        assert_eq!(wep.labels[NAMESPACE_LABEL], "openstack");
        assert_eq!(wep.labels[ORCHESTRATOR_LABEL], "openstack");
    }

    #[test]
    fn security_group_policy_decodes() {
        let Resource::NetworkPolicy(p) = decode_json(&policy_key(), &policy_json()).unwrap() else {
            panic!("not a policy");
        };
        assert_eq!(p.id.name, format!("ossg.default.{SG}"));
        assert!(p.applies_ingress && p.applies_egress);
        assert_eq!(p.order, None);
        assert_eq!(p.ingress.len(), 5);
        let ssh = &p.ingress[0];
        assert_eq!(ssh.action, Action::Allow);
        assert_eq!(ssh.ip_version, Some(IpVersion::V4));
        assert_eq!(ssh.protocol, Some(6));
        assert_eq!(ssh.source.nets, ["0.0.0.0/0".parse::<IpNet>().unwrap()]);
        assert_eq!(
            ssh.destination.ports,
            [PortRange {
                first: 22,
                last: 22
            }]
        );
        let range = &p.ingress[1];
        assert_eq!(
            range.destination.ports,
            [PortRange {
                first: 8000,
                last: 8080
            }]
        );
        assert_eq!(range.selectors().count(), 1);
        assert_eq!(
            p.ingress[2].icmp,
            Some(IcmpMatch {
                icmp_type: Some(8),
                code: Some(0)
            })
        );
        assert_eq!(p.ingress[3].protocol, Some(58));
        assert_eq!(p.ingress[4].protocol, Some(47));
        assert_eq!(p.egress.len(), 2);
    }

    #[test]
    fn every_rule_field_decodes() {
        let mut v = policy_json();
        v["spec"]["order"] = json!(10.5);
        v["spec"]["types"] = json!(["Ingress"]);
        v["spec"]["ingress"] = json!([{
            "action": "Deny", "ipVersion": 6, "protocol": "UDP", "notProtocol": 6,
            "source": {"nets": ["2001:db8::/32"], "notNets": ["2001:db8:1::/48"],
                       "selector": "has(a)", "notSelector": "b == 'x'",
                       "ports": [53, "1000:2000"], "notPorts": ["1500:1600"]},
            "destination": {"notPorts": [80]}
        }, {
            "action": "Allow", "ipVersion": 4, "protocol": "ICMP", "notICMP": {"type": 3}
        }]);
        let Resource::NetworkPolicy(p) = decode_json(&policy_key(), &v).unwrap() else {
            panic!("not a policy");
        };
        assert_eq!(p.order, Some(10.5));
        assert!(p.applies_ingress && !p.applies_egress);
        let r = &p.ingress[0];
        assert_eq!(r.action, Action::Deny);
        assert_eq!(r.protocol, Some(17));
        assert_eq!(r.not_protocol, Some(6));
        assert_eq!(r.source.not_nets.len(), 1);
        assert_eq!(r.selectors().count(), 2);
        assert_eq!(r.source.ports.len(), 2);
        assert_eq!(r.source.not_ports[0].first, 1500);
        assert_eq!(r.destination.not_ports[0].last, 80);
        assert_eq!(p.ingress[1].not_icmp.unwrap().icmp_type, Some(3));
    }

    #[test]
    fn bad_values_are_rejected_with_the_field() {
        type Edit = fn(&mut Value);
        let endpoint_cases: [(Edit, &str); 9] = [
            (
                |v| v["spec"]["mac"] = json!("fa:16:3e:b1:3b"),
                "invalid MAC",
            ),
            (
                |v| v["spec"]["mac"] = json!("zz:16:3e:b1:3b:30"),
                "invalid MAC",
            ),
            (
                |v| v["spec"]["ipNetworks"] = json!(["198.51.100.300/32"]),
                "invalid CIDR",
            ),
            (
                |v| v["spec"]["ipNetworks"] = json!(["198.51.100.3/33"]),
                "invalid CIDR",
            ),
            (
                |v| v["spec"]["interfaceName"] = json!("tap0123456789abc"),
                "longer than 15",
            ),
            (|v| v["spec"]["interfaceName"] = json!("tap/x"), "'/'"),
            (
                |v| v["spec"]["interfaceName"] = json!("tap x"),
                "whitespace",
            ),
            (
                |v| v["spec"]["ipv4Gateway"] = json!("2001:db8::1"),
                "ipv4Gateway",
            ),
            (
                |v| v["spec"] = json!({"ipNetworks": []}),
                "interfaceName is missing",
            ),
        ];
        for (edit, want) in endpoint_cases {
            let mut v = wep_json();
            edit(&mut v);
            let err = decode_json(&wep_key(), &v).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let policy_cases: [(Edit, &str); 11] = [
            (|v| v["spec"]["selector"] = json!("has(a"), "spec.selector"),
            (
                |v| v["spec"]["ingress"][0]["action"] = json!("Accept"),
                "unknown action",
            ),
            (
                |v| v["spec"]["ingress"][0]["ipVersion"] = json!(5),
                "ipVersion 5",
            ),
            (
                |v| v["spec"]["ingress"][0]["protocol"] = json!(300),
                "protocol 300",
            ),
            (
                |v| v["spec"]["ingress"][0]["protocol"] = json!("bogus"),
                "unknown protocol",
            ),
            (
                |v| v["spec"]["ingress"][0]["source"]["nets"] = json!(["1.2.3/8"]),
                "invalid CIDR",
            ),
            (
                |v| v["spec"]["ingress"][0]["destination"]["ports"] = json!(["http"]),
                "named port",
            ),
            (
                |v| v["spec"]["ingress"][0]["destination"]["ports"] = json!(["90:80"]),
                "reversed",
            ),
            (
                |v| v["spec"]["ingress"][1]["source"]["selector"] = json!("a = 'b'"),
                "selector",
            ),
            (
                |v| v["spec"]["ingress"][2]["icmp"]["type"] = json!(255),
                "icmp type 255",
            ),
            (
                |v| v["spec"]["ingress"][0]["source"]["namespaceSelector"] = json!("all()"),
                "namespaceSelector",
            ),
        ];
        for (edit, want) in policy_cases {
            let mut v = policy_json();
            edit(&mut v);
            let err = decode_json(&policy_key(), &v).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
            assert!(err.contains("spec."), "{err} should name the field");
        }
        assert!(
            decode(&wep_key(), b"{not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
        let mut v = policy_json();
        v["kind"] = json!("WorkloadEndpoint");
        assert!(decode_json(&policy_key(), &v).unwrap_err().contains("kind"));
    }

    #[test]
    fn profiles_and_config_decode() {
        let key = ResourceKey::parse(&format!("{RESOURCE_PREFIX}profiles/openstack-sg-x")).unwrap();
        let v = json!({"kind": "Profile", "spec": {
            "ingress": [{"action": "Allow", "source": {"selector": "has(x)"}}],
            "egress": [{"action": "Allow"}], "labelsToApply": {"x": ""}}});
        let Resource::Profile(p) = decode_json(&key, &v).unwrap() else {
            panic!("not a profile");
        };
        assert_eq!(p.ingress.len(), 1);

        let key =
            ResourceKey::parse(&format!("{RESOURCE_PREFIX}felixconfigurations/default")).unwrap();
        let v = json!({"kind": "FelixConfiguration", "spec": {"interfacePrefix": "cali,tap", "endpointReportingEnabled": true}});
        assert_eq!(
            decode_json(&key, &v).unwrap(),
            Resource::FelixConfiguration(FelixConfiguration {
                interface_prefix: Some(vec!["cali".into(), "tap".into()])
            })
        );
        let key =
            ResourceKey::parse(&format!("{RESOURCE_PREFIX}clusterinformations/default")).unwrap();
        let v = json!({"kind": "ClusterInformation", "spec": {"clusterType": "openstack", "datastoreReady": false}});
        assert_eq!(
            decode_json(&key, &v).unwrap(),
            Resource::ClusterInformation(ClusterInformation {
                datastore_ready: Some(false)
            })
        );
    }

    #[test]
    fn arbitrary_json_never_panics() {
        let samples = [
            json!(null),
            json!([]),
            json!({"spec": []}),
            json!({"spec": {"ipNetworks": "x"}}),
            json!({"spec": {"ingress": [{"action": 1}]}}),
            json!({"spec": {"ingress": [{"action": "Allow", "icmp": {"type": -1}}]}}),
            json!({"spec": {"ingress": [{"action": "Allow", "protocol": 6, "destination": {"ports": [-1, 1.5, null]}}]}}),
            json!({"metadata": {"labels": {"a": 1}}}),
        ];
        for v in samples {
            for key in [wep_key(), policy_key()] {
                let _ = decode_json(&key, &v);
            }
        }
    }
}
