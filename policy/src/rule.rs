//! One Calico rule to nftables rule text: validation and rendering.
//!
//! A rule becomes zero, one or two nft rules: one without an IP-version match when nothing in it
//! is version-specific, otherwise one per IP version it can match (a rule without `ipVersion`
//! that uses a selector matches both the IPv4 and the IPv6 members). Lists of nets and ports are
//! anonymous sets, so one Calico rule never needs Felix's "match blocks".

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::model::{Action, EntityRule, Protocol, Rule};
use crate::names::{ALLOW_CHAIN, PASS_CHAIN, selector_set};

/// The mark bit set by a policy that allowed the packet (Felix's MarkAccept).
pub const MARK_ACCEPT: u32 = 0x0001_0000;
/// The mark bit set by a policy that passed the packet to the next tier (Felix's MarkPass).
pub const MARK_PASS: u32 = 0x0002_0000;

/// Why a rule was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error("ipVersion {0} is neither 4 nor 6")]
    BadIpVersion(u8),
    #[error("unknown protocol {0:?}")]
    UnknownProtocol(String),
    #[error("bad port {0:?} (want a number 0-65535 or a range \"low:high\" with low <= high)")]
    BadPort(String),
    #[error("ports need protocol TCP, UDP, SCTP or UDPLite")]
    PortsWithoutPortProtocol,
    #[error("icmp type/code need protocol ICMP or ICMPv6")]
    IcmpWithoutIcmpProtocol,
    #[error("icmp {field} {value} is out of range 0-255")]
    IcmpOutOfRange { field: &'static str, value: u16 },
    #[error("icmp code without icmp type")]
    IcmpCodeWithoutType,
    #[error("{what} {net} is not IPv{version}")]
    WrongFamily {
        what: &'static str,
        net: IpNet,
        version: u8,
    },
    #[error("protocol {protocol} contradicts ipVersion {version}")]
    ProtocolContradictsVersion { protocol: &'static str, version: u8 },
}

/// A checked protocol number with the name nft prints for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proto(pub(crate) u8);

pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
pub(crate) const ICMP: u8 = 1;
pub(crate) const ICMPV6: u8 = 58;
const SCTP: u8 = 132;
const UDPLITE: u8 = 136;

/// The protocol number of a Calico protocol (a number or a name), as the compiler reads it.
pub fn protocol_number(p: &Protocol) -> Result<u8, RuleProblem> {
    Proto::parse(p).map(|p| p.0)
}

impl Proto {
    fn parse(p: &Protocol) -> Result<Proto, RuleProblem> {
        match p {
            Protocol::Number(n) => Ok(Proto(*n)),
            Protocol::Name(name) => match name.to_ascii_lowercase().as_str() {
                "tcp" => Ok(Proto(TCP)),
                "udp" => Ok(Proto(UDP)),
                "icmp" => Ok(Proto(ICMP)),
                "icmpv6" => Ok(Proto(ICMPV6)),
                "sctp" => Ok(Proto(SCTP)),
                "udplite" => Ok(Proto(UDPLITE)),
                other => other
                    .parse::<u8>()
                    .map(Proto)
                    .map_err(|_| RuleProblem::UnknownProtocol(name.clone())),
            },
        }
    }

    fn nft(self) -> String {
        match self.0 {
            TCP => "tcp".to_owned(),
            UDP => "udp".to_owned(),
            ICMP => "icmp".to_owned(),
            ICMPV6 => "ipv6-icmp".to_owned(),
            SCTP => "sctp".to_owned(),
            n => n.to_string(),
        }
    }

    pub(crate) fn has_ports(self) -> bool {
        matches!(self.0, TCP | UDP | SCTP | UDPLITE)
    }

    /// The only IP version this protocol exists in, if any.
    pub(crate) fn version(self) -> Option<u8> {
        match self.0 {
            ICMP => Some(4),
            ICMPV6 => Some(6),
            _ => None,
        }
    }
}

/// A port or an inclusive port range; displays as nft writes it (`80`, `8000-8080`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortRange {
    pub(crate) low: u16,
    pub(crate) high: u16,
}

impl PortRange {
    pub(crate) fn contains(self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// A port or port range as Calico writes it (`"80"`, `"8000:8080"`).
fn parse_port(s: &str) -> Result<PortRange, RuleProblem> {
    let bad = || RuleProblem::BadPort(s.to_owned());
    let num = |t: &str| t.trim().parse::<u16>().map_err(|_| bad());
    let (low, high) = match s.split_once(':') {
        None => (num(s)?, num(s)?),
        Some((lo, hi)) => (num(lo)?, num(hi)?),
    };
    if low > high {
        return Err(bad());
    }
    Ok(PortRange { low, high })
}

/// `x` or `{ x, y }`.
pub(crate) fn one_or_set(items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        many => format!("{{ {} }}", many.join(", ")),
    }
}

/// A rule that passed validation, ready to render per IP version (or to evaluate, see
/// [`crate::trace`]).
#[derive(Debug)]
pub(crate) struct Checked<'r> {
    pub(crate) rule: &'r Rule,
    pub(crate) proto: Option<Proto>,
    pub(crate) not_proto: Option<Proto>,
    pub(crate) src_ports: Vec<PortRange>,
    pub(crate) src_not_ports: Vec<PortRange>,
    pub(crate) dst_ports: Vec<PortRange>,
    pub(crate) dst_not_ports: Vec<PortRange>,
}

/// Validates a rule: what the compiler accepts.
pub(crate) fn check(rule: &Rule) -> Result<Checked<'_>, RuleProblem> {
    if let Some(v) = rule.ip_version
        && v != 4
        && v != 6
    {
        return Err(RuleProblem::BadIpVersion(v));
    }
    let proto = rule.protocol.as_ref().map(Proto::parse).transpose()?;
    let not_proto = rule.not_protocol.as_ref().map(Proto::parse).transpose()?;
    if let (Some(p), Some(v)) = (proto, rule.ip_version)
        && let Some(pv) = p.version()
        && pv != v
    {
        return Err(RuleProblem::ProtocolContradictsVersion {
            protocol: if p.0 == ICMP { "ICMP" } else { "ICMPv6" },
            version: v,
        });
    }
    let ports = |list: &[String]| -> Result<Vec<PortRange>, RuleProblem> {
        list.iter().map(|p| parse_port(p)).collect()
    };
    let (src_ports, src_not_ports, dst_ports, dst_not_ports) = (
        ports(&rule.source.ports)?,
        ports(&rule.source.not_ports)?,
        ports(&rule.destination.ports)?,
        ports(&rule.destination.not_ports)?,
    );
    let any_ports = !(src_ports.is_empty()
        && src_not_ports.is_empty()
        && dst_ports.is_empty()
        && dst_not_ports.is_empty());
    if any_ports && !proto.is_some_and(Proto::has_ports) {
        return Err(RuleProblem::PortsWithoutPortProtocol);
    }
    if let Some(icmp) = rule.icmp {
        if proto.and_then(Proto::version).is_none() {
            return Err(RuleProblem::IcmpWithoutIcmpProtocol);
        }
        for (field, value) in [("type", icmp.r#type), ("code", icmp.code)] {
            if let Some(value) = value
                && value > 255
            {
                return Err(RuleProblem::IcmpOutOfRange { field, value });
            }
        }
        if icmp.code.is_some() && icmp.r#type.is_none() {
            return Err(RuleProblem::IcmpCodeWithoutType);
        }
    }
    if let Some(v) = rule.ip_version {
        for (what, nets) in [
            ("source net", &rule.source.nets),
            ("source notNet", &rule.source.not_nets),
            ("destination net", &rule.destination.nets),
            ("destination notNet", &rule.destination.not_nets),
        ] {
            if let Some(net) = nets.iter().find(|n| version_of(n) != v) {
                return Err(RuleProblem::WrongFamily {
                    what,
                    net: *net,
                    version: v,
                });
            }
        }
    }
    Ok(Checked {
        rule,
        proto,
        not_proto,
        src_ports,
        src_not_ports,
        dst_ports,
        dst_not_ports,
    })
}

fn version_of(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 6,
    }
}

/// The nft rules for one valid Calico rule, and the selector sets they use.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RenderedRule {
    pub lines: Vec<String>,
    /// (selector, is IPv6) for every named set referenced.
    pub sets: BTreeSet<(String, bool)>,
}

/// Validates `rule` and renders it. `log_prefix` must be plain text (it is quoted as is).
pub fn render(rule: &Rule, log_prefix: &str) -> Result<RenderedRule, RuleProblem> {
    let c = check(rule)?;
    let mut out = RenderedRule::default();
    let version_specific = rule.ip_version.is_some()
        || c.proto.and_then(Proto::version).is_some()
        || [&rule.source, &rule.destination].iter().any(|e| {
            !e.nets.is_empty()
                || !e.not_nets.is_empty()
                || e.selector.is_some()
                || e.not_selector.is_some()
        });
    if !version_specific {
        out.lines
            .push(render_for(&c, None, log_prefix, &mut out.sets));
        return Ok(out);
    }
    for version in [4u8, 6] {
        if rule.ip_version.is_some_and(|v| v != version)
            || c.proto
                .and_then(Proto::version)
                .is_some_and(|v| v != version)
        {
            continue;
        }
        // A positive nets list with no net of this version cannot match it.
        let impossible = [&rule.source.nets, &rule.destination.nets]
            .iter()
            .any(|nets| !nets.is_empty() && !nets.iter().any(|n| version_of(n) == version));
        if !impossible {
            let line = render_for(&c, Some(version), log_prefix, &mut out.sets);
            out.lines.push(line);
        }
    }
    Ok(out)
}

fn render_for(
    c: &Checked<'_>,
    version: Option<u8>,
    log_prefix: &str,
    sets: &mut BTreeSet<(String, bool)>,
) -> String {
    let mut s = String::new();
    let mut add = |part: &str| {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(part);
    };
    if let Some(v) = version {
        add(if v == 4 {
            "meta nfproto ipv4"
        } else {
            "meta nfproto ipv6"
        });
    }
    if let Some(p) = c.proto {
        add(&format!("meta l4proto {}", p.nft()));
    }
    if let Some(p) = c.not_proto {
        add(&format!("meta l4proto != {}", p.nft()));
    }
    if let Some(icmp) = c.rule.icmp {
        let kw = if c.proto.and_then(Proto::version) == Some(6) {
            "icmpv6"
        } else {
            "icmp"
        };
        if let Some(t) = icmp.r#type {
            add(&format!("{kw} type {t}"));
        }
        if let Some(code) = icmp.code {
            add(&format!("{kw} code {code}"));
        }
    }
    if let Some(v) = version {
        for (entity, dir) in [(&c.rule.source, "saddr"), (&c.rule.destination, "daddr")] {
            for part in address_matches(entity, v, dir, sets) {
                add(&part);
            }
        }
    }
    for (ports, op) in [
        (&c.src_ports, "th sport"),
        (&c.src_not_ports, "th sport !="),
        (&c.dst_ports, "th dport"),
        (&c.dst_not_ports, "th dport !="),
    ] {
        if !ports.is_empty() {
            let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
            add(&format!("{op} {}", one_or_set(&ports)));
        }
    }
    add(&match c.rule.action {
        Action::Allow => format!("goto {ALLOW_CHAIN}"),
        Action::Pass => format!("goto {PASS_CHAIN}"),
        Action::Deny => "drop".to_owned(),
        Action::Log => format!("log prefix \"{log_prefix}\""),
    });
    s
}

/// The address matches of one side of a rule for IP version `v`.
fn address_matches(
    e: &EntityRule,
    v: u8,
    dir: &str,
    sets: &mut BTreeSet<(String, bool)>,
) -> Vec<String> {
    let family = if v == 4 { "ip" } else { "ip6" };
    let of_version = |nets: &[IpNet]| -> Vec<String> {
        nets.iter()
            .filter(|n| version_of(n) == v)
            .map(|n| n.trunc().to_string())
            .collect()
    };
    let mut parts = Vec::new();
    let nets = of_version(&e.nets);
    if !nets.is_empty() {
        parts.push(format!("{family} {dir} {}", one_or_set(&nets)));
    }
    let not_nets = of_version(&e.not_nets);
    if !not_nets.is_empty() {
        parts.push(format!("{family} {dir} != {}", one_or_set(&not_nets)));
    }
    for (selector, op) in [(&e.selector, ""), (&e.not_selector, "!= ")] {
        if let Some(sel) = selector {
            sets.insert((sel.clone(), v == 6));
            parts.push(format!("{family} {dir} {op}@{}", selector_set(sel, v == 6)));
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Icmp;

    fn tcp(ports: &[&str]) -> Rule {
        let mut r = Rule::new(Action::Allow);
        r.protocol = Some(Protocol::Name("TCP".into()));
        r.destination.ports = ports.iter().map(|p| p.to_string()).collect();
        r
    }

    #[test]
    fn port_lists_and_ranges_become_one_anonymous_set() {
        let r = render(&tcp(&["22", "8000:8080", "443:443"]), "").unwrap();
        assert_eq!(
            r.lines,
            ["meta l4proto tcp th dport { 22, 8000-8080, 443 } goto policy-allow"]
        );
    }

    #[test]
    fn bad_ports_and_protocols_are_rejected() {
        assert_eq!(
            render(&tcp(&["90:80"]), ""),
            Err(RuleProblem::BadPort("90:80".into()))
        );
        assert_eq!(
            render(&tcp(&["http"]), ""),
            Err(RuleProblem::BadPort("http".into()))
        );
        assert_eq!(
            render(&tcp(&["65536"]), ""),
            Err(RuleProblem::BadPort("65536".into()))
        );
        let mut r = tcp(&[]);
        r.protocol = Some(Protocol::Name("tcpp".into()));
        assert_eq!(
            render(&r, ""),
            Err(RuleProblem::UnknownProtocol("tcpp".into()))
        );
        r.protocol = Some(Protocol::Name("icmp".into()));
        r.destination.ports = vec!["22".into()];
        assert_eq!(render(&r, ""), Err(RuleProblem::PortsWithoutPortProtocol));
    }

    #[test]
    fn a_selector_without_version_matches_both_families() {
        let mut r = Rule::new(Action::Allow);
        r.source.selector = Some("has(sg)".into());
        let out = render(&r, "").unwrap();
        assert_eq!(out.lines.len(), 2);
        assert!(out.lines[0].starts_with("meta nfproto ipv4 ip saddr @sel4-"));
        assert!(out.lines[1].starts_with("meta nfproto ipv6 ip6 saddr @sel6-"));
        assert_eq!(out.sets.len(), 2);
    }

    #[test]
    fn nets_pick_the_families_they_can_match() {
        let mut r = Rule::new(Action::Deny);
        r.source.nets = vec!["198.51.100.7/24".parse().unwrap()];
        let out = render(&r, "").unwrap();
        assert_eq!(
            out.lines,
            ["meta nfproto ipv4 ip saddr 198.51.100.0/24 drop"]
        );
        r.ip_version = Some(6);
        assert!(matches!(
            render(&r, ""),
            Err(RuleProblem::WrongFamily { .. })
        ));
    }

    #[test]
    fn icmp_type_and_code() {
        let mut r = Rule::new(Action::Allow);
        r.protocol = Some(Protocol::Name("ICMPv6".into()));
        r.icmp = Some(Icmp {
            r#type: Some(128),
            code: Some(0),
        });
        let out = render(&r, "").unwrap();
        assert_eq!(
            out.lines,
            [
                "meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type 128 icmpv6 code 0 goto policy-allow"
            ]
        );
        r.icmp = Some(Icmp {
            r#type: None,
            code: Some(0),
        });
        assert_eq!(render(&r, ""), Err(RuleProblem::IcmpCodeWithoutType));
        r.ip_version = Some(4);
        assert!(matches!(
            render(&r, ""),
            Err(RuleProblem::ProtocolContradictsVersion { .. })
        ));
    }
}
