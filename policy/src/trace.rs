//! `skogctl policy trace`: which rule of this node's table allows or drops one packet, and why.
//!
//! [`trace`] is a pure evaluator over the compiler's input: it walks the path the first packet
//! of a new connection takes through table `inet skog` as [`compile`](crate::compile()) builds
//! it (anti-spoofing, metadata and floating-IP DNAT, VM-to-host services, the sender's egress
//! then the receiver's ingress, tiers, Allow/Deny/Pass/Log, fail-closed invalid rules) and
//! names the deciding rule the way the compiler's problems and log prefixes do (rules counted
//! from 0). `tests/packets.rs` checks it against real packets on the same scenario.
//!
//! Conntrack is not modelled: replies of an allowed connection are always accepted
//! (`ct state established,related accept` comes first in every chain), and a trace is about
//! the packet that opens a connection.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::compile::{CompileError, METADATA_V4, admit_endpoints};
use crate::model::{Action, Endpoint, HostVerdict, PolicyModel, Protocol, Rule};
use crate::names::{self, Direction, endpoint_chain, policy_chain, spoof_chain};
use crate::rule::{self, Checked, ICMP, ICMPV6, PortRange, RuleProblem, TCP, UDP};

/// One packet to trace: the first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// `None`: not given; a rule that tests it is assumed not to match (and the reason says so).
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// The interface the packet arrives on. `None`: the tap of the endpoint owning `src`, if
    /// any (give it to trace a spoofed source, or an address outside every ipNetworks).
    pub in_interface: Option<String>,
}

/// Why a trace query is not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceQueryError {
    #[error("{what} address {value:?} is not an IP address")]
    BadAddress { what: &'static str, value: String },
    #[error("source {src} and destination {dst} are of different IP versions")]
    MixedVersions { src: IpAddr, dst: IpAddr },
    #[error("protocol: {0}")]
    Protocol(RuleProblem),
    #[error("protocol {protocol} does not exist in IPv{version}")]
    ProtocolVersion { protocol: String, version: u8 },
    #[error(
        "a port needs protocol TCP, UDP, SCTP or UDPLite (or ICMP/ICMPv6, where it is the type)"
    )]
    PortWithoutPorts,
    #[error("ICMP type {0} is out of range 0-255")]
    IcmpType(u16),
}

impl TracePacket {
    /// A packet with no ports, ICMP fields or interface given.
    pub fn new(src: IpAddr, dst: IpAddr, protocol: u8) -> TracePacket {
        TracePacket {
            src,
            dst,
            protocol,
            src_port: None,
            dst_port: None,
            icmp_type: None,
            icmp_code: None,
            in_interface: None,
        }
    }

    /// The packet of `skogctl policy trace <src> <dst> <proto>[/<port>]`: `proto` is a name
    /// or number as in Calico rules; `port` is the destination port, or for ICMP/ICMPv6 the
    /// type.
    pub fn parse(
        src: &str,
        dst: &str,
        proto: &str,
        port: Option<u16>,
    ) -> Result<TracePacket, TraceQueryError> {
        let addr = |what, value: &str| {
            value
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| TraceQueryError::BadAddress {
                    what,
                    value: value.to_owned(),
                })
        };
        let (src, dst) = (addr("source", src)?, addr("destination", dst)?);
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(TraceQueryError::MixedVersions { src, dst });
        }
        let protocol = rule::protocol_number(&Protocol::Name(proto.trim().to_owned()))
            .map_err(TraceQueryError::Protocol)?;
        let mut packet = TracePacket::new(src, dst, protocol);
        let icmp_version = match protocol {
            ICMP => Some(4),
            ICMPV6 => Some(6),
            _ => None,
        };
        if let Some(v) = icmp_version
            && v != packet.version()
        {
            return Err(TraceQueryError::ProtocolVersion {
                protocol: proto.to_owned(),
                version: packet.version(),
            });
        }
        if let Some(port) = port {
            if icmp_version.is_some() {
                let t = u8::try_from(port).map_err(|_| TraceQueryError::IcmpType(port))?;
                packet.icmp_type = Some(t);
            } else if rule::Proto(protocol).has_ports() {
                packet.dst_port = Some(port);
            } else {
                return Err(TraceQueryError::PortWithoutPorts);
            }
        }
        Ok(packet)
    }

    fn version(&self) -> u8 {
        if self.src.is_ipv4() { 4 } else { 6 }
    }
}

/// What the table does with the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Drop,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Drop => "drop",
        })
    }
}

/// The rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleRef {
    /// A policy's rule; `index` counts from 0, as in the compiler's problems and log
    /// prefixes.
    Policy {
        policy: String,
        direction: Direction,
        index: usize,
    },
    /// A rule the table has for every VM (anti-spoofing, VM-to-host services), in `chain`.
    Builtin { chain: String, what: &'static str },
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Policy {
                policy,
                direction,
                index,
            } => write!(f, "policy {policy} {direction} rule {index}"),
            RuleRef::Builtin { chain, what } => write!(f, "chain {chain}: {what}"),
        }
    }
}

/// The result of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub verdict: Verdict,
    /// The deciding rule; `None` for a default (end of tier, default deny, not filtered).
    pub rule: Option<RuleRef>,
    /// Why, including translations, Log and Pass rules met on the way, and what was assumed
    /// about fields the packet does not give.
    pub reason: String,
    /// The chains of table `inet skog` the packet goes through, in order (empty when not
    /// filtered): `nft list chain inet skog <name>` shows each. The one-rule chains an Allow
    /// or Pass rule goes to (`policy-allow`, `policy-pass`) are left out.
    pub path: Vec<String>,
    /// False when Skog does not filter this packet at all.
    pub filtered: bool,
}

/// Traces `packet` through the table `compile(model)` builds. `host_addresses` are this
/// node's own addresses (loopback, link-local, multicast and broadcast count as the host
/// anyway): traffic from a VM to them meets the VM-to-host rules, not policies.
pub fn trace(
    model: &PolicyModel,
    host_addresses: &[IpAddr],
    packet: &TracePacket,
) -> Result<Trace, CompileError> {
    names::check_prefix(&model.settings.interface_prefix)?;
    let mut tracer = Tracer {
        model,
        host_addresses,
        installed: admit_endpoints(model)
            .into_iter()
            .filter(|(_, _, admitted)| admitted.is_ok())
            .map(|(id, ep, _)| (ep.interface.as_str(), (id, ep)))
            .collect(),
        path: Vec::new(),
        notes: Vec::new(),
        assumptions: Vec::new(),
    };
    let (decision, filtered) = if packet.src.is_ipv4() != packet.dst.is_ipv4() {
        let reason = "source and destination are of different IP versions: no such packet";
        (Decision::drop(None, reason.to_owned()), false)
    } else {
        tracer.run(packet.clone())
    };
    let mut reason = decision.reason;
    for note in tracer.notes {
        reason.push_str("; ");
        reason.push_str(&note);
    }
    if !tracer.assumptions.is_empty() {
        reason.push_str("; assumed: ");
        reason.push_str(&tracer.assumptions.join("; "));
    }
    Ok(Trace {
        verdict: decision.verdict,
        rule: decision.rule,
        reason,
        path: tracer.path,
        filtered,
    })
}

/// A verdict with its rule and reason.
struct Decision {
    verdict: Verdict,
    rule: Option<RuleRef>,
    reason: String,
}

impl Decision {
    fn allow(rule: Option<RuleRef>, reason: String) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            rule,
            reason,
        }
    }

    fn drop(rule: Option<RuleRef>, reason: String) -> Decision {
        Decision {
            verdict: Verdict::Drop,
            rule,
            reason,
        }
    }
}

/// What one policy chain does with the packet.
enum PolicyOutcome {
    Verdict(Decision),
    Pass(RuleRef),
    NoMatch,
}

/// A condition of a rule on the packet: `None` when the packet does not give the field.
type Cond = (Option<bool>, &'static str);

struct Tracer<'m> {
    model: &'m PolicyModel,
    host_addresses: &'m [IpAddr],
    /// Endpoints with chains, by interface.
    installed: BTreeMap<&'m str, (&'m str, &'m Endpoint)>,
    path: Vec<String>,
    notes: Vec<String>,
    assumptions: Vec<String>,
}

impl<'m> Tracer<'m> {
    /// The decision, and whether the table filters the packet at all.
    fn run(&mut self, mut p: TracePacket) -> (Decision, bool) {
        let prefix = self.model.settings.interface_prefix.as_str();
        let from_vm = match &p.in_interface {
            Some(interface) => Some(interface.clone()),
            None => self.owner(p.src).map(|ep| ep.interface.clone()),
        }
        .filter(|interface| interface.starts_with(prefix));
        if from_vm.is_none() && self.is_host(p.src) {
            let reason = "from this host: Skog does not filter the host's own traffic";
            return (Decision::allow(None, reason.to_owned()), false);
        }
        let dnat = self.dnat(&p, from_vm.is_some());
        let original_dst = p.dst;
        if let Some((dst, port, _)) = &dnat {
            p.dst = *dst;
            p.dst_port = *port;
        }
        let to_host = self.is_host(p.dst);
        let to_vm = if to_host {
            None
        } else {
            self.owner(p.dst)
                .map(|ep| ep.interface.clone())
                .filter(|interface| interface.starts_with(prefix))
        };
        if from_vm.is_none() && to_vm.is_none() {
            let reason = if to_host {
                format!("{original_dst} is this host and the packet is not from a VM: not filtered")
            } else {
                format!(
                    "{} -> {original_dst}: not a local endpoint; Skog does not filter this traffic",
                    p.src
                )
            };
            return (Decision::allow(None, reason), false);
        }
        self.path.push("raw-prerouting".to_owned());
        if let Some(interface) = &from_vm
            && let Some(dropped) = self.anti_spoofing(interface, &p)
        {
            return (dropped, true);
        }
        self.path.push("nat-prerouting".to_owned());
        if let Some((_, _, note)) = dnat {
            self.notes.push(note);
        }
        if to_host {
            // Only VM traffic reaches here (see above).
            return (self.vm_to_host(&p), true);
        }
        self.path.push("forward".to_owned());
        let mut egress = None;
        if let Some(interface) = &from_vm {
            let d = self.dispatch(interface, Direction::Egress, &p);
            if d.verdict == Verdict::Drop {
                return (d, true);
            }
            egress = Some(d);
        }
        let decision = match (egress, &to_vm) {
            (egress, Some(interface)) => {
                let mut ingress = self.dispatch(interface, Direction::Ingress, &p);
                if let Some(egress) = egress
                    && ingress.verdict == Verdict::Allow
                {
                    ingress.reason = format!("{}; then {}", egress.reason, ingress.reason);
                }
                ingress
            }
            (Some(mut egress), None) => {
                let leaves = format!("; {} is not a local endpoint: no ingress here", p.dst);
                egress.reason.push_str(&leaves);
                egress
            }
            // Not from and not to a VM interface was answered above.
            (None, None) => Decision::allow(None, "not filtered".to_owned()),
        };
        (decision, true)
    }

    /// The endpoint whose ipNetworks hold `addr` (the most specific; ties: the first id).
    fn owner(&self, addr: IpAddr) -> Option<&'m Endpoint> {
        let mut best: Option<(u8, &'m Endpoint)> = None;
        for ep in self.model.endpoints.values() {
            for net in &ep.ip_networks {
                if net.trunc().contains(&addr) && best.is_none_or(|(len, _)| net.prefix_len() > len)
                {
                    best = Some((net.prefix_len(), ep));
                }
            }
        }
        best.map(|(_, ep)| ep)
    }

    fn is_host(&self, addr: IpAddr) -> bool {
        self.host_addresses.contains(&addr)
            || addr.is_loopback()
            || addr.is_multicast()
            || match addr {
                IpAddr::V4(a) => a.is_broadcast(),
                IpAddr::V6(a) => is_link_local(a),
            }
    }

    /// `nat-prerouting`: the metadata DNAT (from VMs), then floating IPs in endpoint order.
    fn dnat(&mut self, p: &TracePacket, from_vm: bool) -> Option<(IpAddr, Option<u16>, String)> {
        if from_vm
            && p.dst == IpAddr::V4(METADATA_V4)
            && let Some(SocketAddr::V4(target)) = self.model.settings.metadata
        {
            let conds = [
                (Some(p.protocol == TCP), "protocol"),
                (p.dst_port.map(|port| port == 80), "destination port"),
            ];
            if self.all(&conds, "the metadata DNAT (tcp port 80)") {
                return Some((
                    IpAddr::V4(*target.ip()),
                    Some(target.port()),
                    format!("metadata DNAT {METADATA_V4}:80 -> {target}"),
                ));
            }
        }
        for (id, ep, admitted) in admit_endpoints(self.model) {
            if admitted.is_err() {
                continue;
            }
            for nat in &ep.ip_nats {
                if nat.external == p.dst && nat.internal.is_ipv4() == nat.external.is_ipv4() {
                    let note = format!(
                        "floating IP {} of endpoint {id}: DNAT to {}",
                        nat.external, nat.internal
                    );
                    return Some((nat.internal, p.dst_port, note));
                }
            }
        }
        None
    }

    /// `spoof-dispatch` and `spoof-<tap>`: `Some` when the packet is dropped.
    fn anti_spoofing(&mut self, interface: &str, p: &TracePacket) -> Option<Decision> {
        self.path.push("spoof-dispatch".to_owned());
        // The exceptions every VM shares (compile.rs: `spoof_exceptions`).
        let exception = match (p.src, p.dst) {
            (IpAddr::V6(src), _) if is_link_local(src) => true,
            (IpAddr::V4(src), _) if src.is_unspecified() => self.all(
                &[
                    (Some(p.protocol == UDP), "protocol"),
                    (p.src_port.map(|port| port == 68), "source port"),
                    (p.dst_port.map(|port| port == 67), "destination port"),
                ],
                "the DHCPv4 anti-spoofing exception (udp 68 -> 67)",
            ),
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                src.is_unspecified() && dst.segments()[0] == 0xff02
            }
            _ => false,
        };
        if exception {
            return None;
        }
        let Some(&(id, ep)) = self.installed.get(interface) else {
            return Some(Decision::drop(
                Some(RuleRef::Builtin {
                    chain: "spoof-dispatch".to_owned(),
                    what: "drop (interface without endpoint chains)",
                }),
                format!(
                    "interface {interface} has no endpoint chains (no endpoint, or one the compiler rejected): its traffic is dropped"
                ),
            ));
        };
        let chain = spoof_chain(interface);
        self.path.push(chain.clone());
        if ep.ip_networks.iter().any(|n| n.trunc().contains(&p.src)) {
            return None;
        }
        let nets: Vec<String> = ep.ip_networks.iter().map(ToString::to_string).collect();
        Some(Decision::drop(
            Some(RuleRef::Builtin {
                chain,
                what: "drop (source not among the endpoint's ipNetworks)",
            }),
            format!(
                "anti-spoofing: source {} is not one of endpoint {id}'s addresses [{}]",
                p.src,
                nets.join(", ")
            ),
        ))
    }

    /// `vm-to-host` (compile.rs builds it in `add_base_chains`).
    fn vm_to_host(&mut self, p: &TracePacket) -> Decision {
        const CHAIN: &str = "vm-to-host";
        self.path.push("input".to_owned());
        self.path.push(CHAIN.to_owned());
        let v4 = Some(p.src.is_ipv4());
        let v6 = Some(p.src.is_ipv6());
        let proto = |n: u8| (Some(p.protocol == n), "protocol");
        let sport = |n: u16| (p.src_port.map(|port| port == n), "source port");
        let dport = |n: u16| (p.dst_port.map(|port| port == n), "destination port");
        // Neighbour discovery and MLD: mld-listener-query/report/done, nd-router-solicit,
        // nd-neighbor-solicit/advert.
        let nd_type = p
            .icmp_type
            .map(|t| [130, 131, 132, 133, 135, 136].contains(&t));
        let mut services: Vec<(&'static str, Vec<Cond>)> = vec![
            (
                "neighbour discovery and MLD",
                vec![(v6, "IP version"), proto(ICMPV6), (nd_type, "ICMPv6 type")],
            ),
            (
                "DHCPv4",
                vec![(v4, "IP version"), proto(UDP), sport(68), dport(67)],
            ),
            (
                "DHCPv6",
                vec![(v6, "IP version"), proto(UDP), sport(546), dport(547)],
            ),
            ("DNS over UDP", vec![proto(UDP), dport(53)]),
            ("DNS over TCP", vec![proto(TCP), dport(53)]),
        ];
        if let Some(SocketAddr::V4(target)) = self.model.settings.metadata {
            services.push((
                "metadata",
                vec![
                    (v4, "IP version"),
                    (Some(p.dst == IpAddr::V4(*target.ip())), "destination"),
                    proto(TCP),
                    dport(target.port()),
                ],
            ));
        }
        for (what, conds) in services {
            if self.all(&conds, &format!("the VM-to-host {what} rule")) {
                return Decision::allow(
                    Some(RuleRef::Builtin {
                        chain: CHAIN.to_owned(),
                        what,
                    }),
                    format!("VM to host: {what} is accepted from every VM"),
                );
            }
        }
        let reason = "VM to host, not DHCP, DNS, metadata or neighbour discovery";
        match self.model.settings.vm_to_host_default {
            HostVerdict::Drop => {
                Decision::drop(None, format!("{reason}: dropped (vm_to_host_default)"))
            }
            HostVerdict::Accept => {
                Decision::allow(None, format!("{reason}: accepted (vm_to_host_default)"))
            }
        }
    }

    /// `from-vm-dispatch` / `to-vm-dispatch`, then the endpoint's chain.
    fn dispatch(&mut self, interface: &str, dir: Direction, p: &TracePacket) -> Decision {
        let dispatch = match dir {
            Direction::Egress => "from-vm-dispatch",
            Direction::Ingress => "to-vm-dispatch",
        };
        self.path.push(dispatch.to_owned());
        match self.installed.get(interface) {
            Some(&(id, ep)) => self.endpoint(id, ep, dir, p),
            None => Decision::drop(
                Some(RuleRef::Builtin {
                    chain: dispatch.to_owned(),
                    what: "drop (interface without endpoint chains)",
                }),
                format!(
                    "interface {interface} has no endpoint chains (no endpoint, or one the compiler rejected): its traffic is dropped"
                ),
            ),
        }
    }

    /// An endpoint's chain for one direction: tiers of policies, then default deny.
    fn endpoint(
        &mut self,
        id: &str,
        ep: &'m Endpoint,
        dir: Direction,
        p: &TracePacket,
    ) -> Decision {
        self.path.push(endpoint_chain(&ep.interface, dir));
        let whose = format!("endpoint {id} {dir}");
        let mut any_tier = false;
        for tier in &ep.tiers {
            let applying: Vec<(&'m str, &'m [Rule])> = tier
                .iter()
                .filter_map(|id| {
                    let policy = self.model.policies.get(id)?;
                    let rules = match dir {
                        Direction::Ingress => policy.ingress.as_deref(),
                        Direction::Egress => policy.egress.as_deref(),
                    }?;
                    Some((id.as_str(), rules))
                })
                .collect();
            if applying.is_empty() {
                continue;
            }
            any_tier = true;
            let mut passed = false;
            for &(policy, rules) in &applying {
                self.path.push(policy_chain(policy, dir));
                match self.policy(policy, dir, rules, p) {
                    PolicyOutcome::Verdict(mut d) => {
                        d.reason = format!("{whose}: {}", d.reason);
                        return d;
                    }
                    PolicyOutcome::Pass(rule) => {
                        self.notes
                            .push(format!("{rule} passed it on to the next tier"));
                        passed = true;
                        break;
                    }
                    PolicyOutcome::NoMatch => {}
                }
            }
            if !passed {
                let ids: Vec<&str> = applying.iter().map(|(id, _)| *id).collect();
                return Decision::drop(
                    None,
                    format!(
                        "{whose}: no rule of the tier [{}] matched: dropped at the end of the tier",
                        ids.join(", ")
                    ),
                );
            }
        }
        let reason = if any_tier {
            format!("{whose}: every tier passed it on: default deny")
        } else {
            format!("{whose}: no policy applies in this direction: default deny")
        };
        Decision::drop(None, reason)
    }

    /// One policy's chain.
    fn policy(
        &mut self,
        policy: &str,
        direction: Direction,
        rules: &[Rule],
        p: &TracePacket,
    ) -> PolicyOutcome {
        for (index, rule) in rules.iter().enumerate() {
            let at = RuleRef::Policy {
                policy: policy.to_owned(),
                direction,
                index,
            };
            match rule::check(rule) {
                Err(problem) => match rule.action {
                    Action::Deny | Action::Pass => {
                        let reason = format!(
                            "{at} is invalid ({problem}): the compiler put an unconditional drop in its place (fail closed)"
                        );
                        return PolicyOutcome::Verdict(Decision::drop(Some(at), reason));
                    }
                    Action::Allow | Action::Log => {
                        self.notes
                            .push(format!("{at} is invalid ({problem}) and left out"));
                    }
                },
                Ok(checked) => {
                    if !self.rule_matches(&checked, &at, p) {
                        continue;
                    }
                    match rule.action {
                        Action::Allow => {
                            let reason = format!("allowed by {at}");
                            return PolicyOutcome::Verdict(Decision::allow(Some(at), reason));
                        }
                        Action::Deny => {
                            let reason = format!("denied by {at}");
                            return PolicyOutcome::Verdict(Decision::drop(Some(at), reason));
                        }
                        Action::Pass => return PolicyOutcome::Pass(at),
                        Action::Log => self.notes.push(format!("logged by {at}")),
                    }
                }
            }
        }
        PolicyOutcome::NoMatch
    }

    /// Whether a valid rule matches, as its nft rules (one per IP version) would.
    fn rule_matches(&mut self, c: &Checked<'_>, at: &RuleRef, p: &TracePacket) -> bool {
        let rule = c.rule;
        let version = p.version();
        let mut conds: Vec<Cond> = vec![(
            Some(rule.ip_version.is_none_or(|v| v == version)),
            "IP version",
        )];
        if let Some(proto) = c.proto {
            conds.push((Some(p.protocol == proto.0), "protocol"));
            if let Some(v) = proto.version() {
                conds.push((Some(v == version), "IP version"));
            }
        }
        if let Some(proto) = c.not_proto {
            conds.push((Some(p.protocol != proto.0), "protocol"));
        }
        if let Some(icmp) = rule.icmp {
            let field = |value: Option<u8>, want: Option<u16>| {
                want.map(|want| value.map(|v| u16::from(v) == want))
            };
            if let Some(c) = field(p.icmp_type, icmp.r#type) {
                conds.push((c, "ICMP type"));
            }
            if let Some(c) = field(p.icmp_code, icmp.code) {
                conds.push((c, "ICMP code"));
            }
        }
        for (entity, addr) in [(&rule.source, p.src), (&rule.destination, p.dst)] {
            let within = |nets: &[IpNet]| nets.iter().any(|n| n.trunc().contains(&addr));
            if !entity.nets.is_empty() {
                conds.push((Some(within(&entity.nets)), "address"));
            }
            if !entity.not_nets.is_empty() {
                conds.push((Some(!within(&entity.not_nets)), "address"));
            }
            if let Some(selector) = &entity.selector {
                conds.push((Some(self.member(selector, addr)), "address"));
            }
            if let Some(selector) = &entity.not_selector {
                conds.push((Some(!self.member(selector, addr)), "address"));
            }
        }
        let in_ranges = |port: Option<u16>, ranges: &[PortRange]| {
            port.map(|port| ranges.iter().any(|r| r.contains(port)))
        };
        for (ranges, port, negated, field) in [
            (&c.src_ports, p.src_port, false, "source port"),
            (&c.src_not_ports, p.src_port, true, "source port"),
            (&c.dst_ports, p.dst_port, false, "destination port"),
            (&c.dst_not_ports, p.dst_port, true, "destination port"),
        ] {
            if !ranges.is_empty() {
                conds.push((in_ranges(port, ranges).map(|m| m != negated), field));
            }
        }
        self.all(&conds, &at.to_string())
    }

    /// Whether `addr` is in a selector's members (a selector missing has none).
    fn member(&self, selector: &str, addr: IpAddr) -> bool {
        self.model
            .selectors
            .get(selector)
            .is_some_and(|members| members.iter().any(|n| n.trunc().contains(&addr)))
    }

    /// All conditions hold. One that fails decides; otherwise a field the packet does not
    /// give makes it "assumed not to match", recorded for the reason.
    fn all(&mut self, conds: &[Cond], what: &str) -> bool {
        if conds.iter().any(|(c, _)| *c == Some(false)) {
            return false;
        }
        let mut missing: Vec<&str> = conds
            .iter()
            .filter(|(c, _)| c.is_none())
            .map(|(_, field)| *field)
            .collect();
        if missing.is_empty() {
            return true;
        }
        missing.dedup();
        self.assumptions.push(format!(
            "{what} tests the {}, not given: assumed not to match",
            missing.join(" and ")
        ));
        false
    }
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}
