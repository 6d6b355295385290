//! The compiler: a pure function from a [`PolicyModel`] to the [`Ruleset`] of Skog's table.
//!
//! Layout of table `inet skog` (see docs/policy.md for the packet path):
//! - base chains `raw-prerouting` (anti-spoofing), `forward` (policy), `input` (VM to host),
//!   `nat-prerouting` (metadata and floating-IP DNAT), `nat-postrouting` (floating-IP SNAT);
//! - verdict maps `spoof`, `from-vm`, `to-vm` dispatching by interface, each used by a chain
//!   `<map>-dispatch` that drops traffic of unknown VM interfaces;
//! - per endpoint `spoof-<if>`, `from-<if>` (egress), `to-<if>` (ingress);
//! - per policy and direction `pol-<hash>-in|out`, shared by every endpoint it applies to;
//!   an Allow or Pass rule ends in `goto policy-allow|policy-pass`, the two chains that set the
//!   mark bit the endpoint chain tests and return to it;
//! - per selector and IP version a set `sel4|6-<hash>`.
//!
//! Bad input never stops the rest: a bad rule, endpoint or floating IP is left out (fail
//! closed) and reported as a [`Problem`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::model::{Action, Endpoint, HostVerdict, PolicyModel, Rule, Settings};
use crate::names::{
    self, ALLOW_CHAIN, Direction, NameError, PASS_CHAIN, comment_safe, endpoint_chain,
    policy_chain, selector_set, spoof_chain,
};
use crate::rule::{self, MARK_ACCEPT, MARK_PASS, RuleProblem};
use crate::ruleset::{AddressSet, Chain, ChainKind, Patch, Ruleset, VerdictMap};

/// Settings that make a safe ruleset impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("settings: {0}")]
    Prefix(#[from] NameError),
}

/// Something left out of the ruleset, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The rule allows nothing: an invalid Allow or Log rule is dropped, an invalid Deny or Pass
    /// rule becomes an unconditional drop at its position.
    #[error("policy {policy:?} {direction} rule {index}: {problem}; rule rejected (fails closed)")]
    Rule {
        policy: String,
        direction: Direction,
        index: usize,
        problem: RuleProblem,
    },
    /// The endpoint gets no chains; traffic on a VM interface without chains is dropped.
    #[error("endpoint {endpoint:?}: {problem}; endpoint left out (its traffic is dropped)")]
    Endpoint {
        endpoint: String,
        problem: NameError,
    },
    #[error(
        "endpoint {endpoint:?}: interface {interface} is already used by {other:?}; endpoint left out"
    )]
    DuplicateInterface {
        endpoint: String,
        interface: String,
        other: String,
    },
    #[error("endpoint {endpoint:?}: policy {policy:?} is unknown; skipped")]
    UnknownPolicy { endpoint: String, policy: String },
    #[error(
        "endpoint {endpoint:?}: floating IP {external} -> {internal} mixes IP versions; skipped"
    )]
    FloatingIpFamily {
        endpoint: String,
        internal: IpAddr,
        external: IpAddr,
    },
    #[error("metadata target {0} is not IPv4; metadata DNAT disabled")]
    MetadataNotV4(SocketAddr),
}

/// The compiler's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub ruleset: Ruleset,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Compiled {
    /// The golden-file form: problems as comments, then the table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "# problem: {}", comment_safe(&p.to_string()))?;
        }
        f.write_str(&self.ruleset.table_text())
    }
}

const CLEAR_MARKS: &str = "meta mark set meta mark & 0xfffcffff";
const CLEAR_PASS: &str = "meta mark set meta mark & 0xfffdffff";
/// The metadata service address VMs use (DNATed to [`Settings::metadata`]).
pub(crate) const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Compiles `model` into the table's content.
pub fn compile(model: &PolicyModel) -> Result<Compiled, CompileError> {
    let settings = &model.settings;
    names::check_prefix(&settings.interface_prefix)?;
    let mut c = Compiler {
        model,
        out: Ruleset::default(),
        problems: Vec::new(),
        policies_done: BTreeSet::new(),
        selectors_used: BTreeSet::new(),
    };
    let mut spoof = VerdictMap::default();
    let mut from_vm = VerdictMap::default();
    let mut to_vm = VerdictMap::default();
    let mut dnat = Vec::new();
    let mut snat = Vec::new();
    for (id, ep, admitted) in admit_endpoints(model) {
        if let Err(problem) = admitted {
            c.problems.push(problem);
            continue;
        }
        let iface = ep.interface.clone();
        spoof.elements.insert(iface.clone(), c.spoof_chain(ep));
        for (dir, map) in [
            (Direction::Egress, &mut from_vm),
            (Direction::Ingress, &mut to_vm),
        ] {
            let chain = endpoint_chain(&iface, dir);
            let rules = c.endpoint_rules(id, ep, dir);
            c.out.chains.insert(
                chain.clone(),
                Chain {
                    kind: ChainKind::Endpoint,
                    hook: None,
                    note: Some(format!("endpoint {} {dir}", comment_safe(id))),
                    rules,
                },
            );
            map.elements.insert(iface.clone(), format!("goto {chain}"));
        }
        c.floating_ips(id, ep, &mut dnat, &mut snat);
    }
    c.add_sets();
    c.add_verdict_chains();
    c.add_base_chains(spoof, from_vm, to_vm, dnat, snat);
    Ok(Compiled {
        ruleset: c.out,
        problems: c.problems,
    })
}

/// Every endpoint in id order (the compiler's order), with the reason it gets no chains, if
/// any: a bad interface name, or an interface an earlier endpoint already has.
pub(crate) fn admit_endpoints(model: &PolicyModel) -> Vec<(&str, &Endpoint, Result<(), Problem>)> {
    let prefix = &model.settings.interface_prefix;
    let mut by_interface: BTreeMap<&str, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for (id, ep) in &model.endpoints {
        let admitted = match names::check_interface(&ep.interface, prefix) {
            Err(problem) => Err(Problem::Endpoint {
                endpoint: id.clone(),
                problem,
            }),
            Ok(()) => match by_interface.get(ep.interface.as_str()) {
                Some(other) => Err(Problem::DuplicateInterface {
                    endpoint: id.clone(),
                    interface: ep.interface.clone(),
                    other: (*other).to_owned(),
                }),
                None => {
                    by_interface.insert(&ep.interface, id);
                    Ok(())
                }
            },
        };
        out.push((id.as_str(), ep, admitted));
    }
    out
}

/// One policy's chain for one direction, and the selectors (with IP version) it uses.
/// Invalid rules are reported into `problems`.
fn compile_policy(
    policy_id: &str,
    dir: Direction,
    rules: &[Rule],
    problems: &mut Vec<Problem>,
) -> (Chain, BTreeSet<(String, bool)>) {
    let name = policy_chain(policy_id, dir);
    let mut lines = Vec::new();
    let mut sets = BTreeSet::new();
    for (index, rule) in rules.iter().enumerate() {
        let log_prefix = format!("skog {name} {index}: ");
        match rule::render(rule, &log_prefix) {
            Ok(r) => {
                lines.extend(r.lines);
                sets.extend(r.sets);
            }
            Err(problem) => {
                if matches!(rule.action, Action::Deny | Action::Pass) {
                    lines.push("drop".to_owned());
                }
                problems.push(Problem::Rule {
                    policy: policy_id.to_owned(),
                    direction: dir,
                    index,
                    problem,
                });
            }
        }
    }
    let chain = Chain {
        kind: ChainKind::Policy,
        hook: None,
        note: Some(format!("policy {} {dir}", comment_safe(policy_id))),
        rules: lines,
    };
    (chain, sets)
}

/// The set of a selector's members of one IP version.
fn selector_members(model: &PolicyModel, selector: &str, v6: bool) -> AddressSet {
    let members = model.selectors.get(selector).into_iter().flatten();
    let note = Some(format!("selector {}", comment_safe(selector)));
    AddressSet::from_members(v6, note, members)
}

/// The patch for a change of `selector`'s membership in `model`, over the ruleset in force:
/// element changes of its sets, if this node uses it. Equal to what a full [`compile`] of
/// `model` would change.
pub fn selector_patch(model: &PolicyModel, selector: &str, current: &Ruleset) -> Patch {
    let mut patch = Patch::default();
    for v6 in [false, true] {
        let name = selector_set(selector, v6);
        if let Some(old) = current.sets.get(&name) {
            let new = selector_members(model, selector, v6);
            if *old != new {
                patch.sets.insert(name, Some(new));
            }
        }
    }
    patch
}

/// The patch for a change of policy `policy_id`'s rules in `model`, over the ruleset in
/// force: its chains rewritten, sets it newly uses added. `None` when the change reaches
/// further (the policy stopped or started applying in a direction on this node, or is gone):
/// compile the whole model then. Sets no longer used stay until the next full compile.
pub fn policy_patch(
    model: &PolicyModel,
    policy_id: &str,
    current: &Ruleset,
) -> Option<(Patch, Vec<Problem>)> {
    let policy = model.policies.get(policy_id)?;
    let mut patch = Patch::default();
    let mut problems = Vec::new();
    for dir in [Direction::Ingress, Direction::Egress] {
        let name = policy_chain(policy_id, dir);
        let rules = match dir {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        match (current.chains.get(&name), rules) {
            (Some(old), Some(rules)) => {
                let (chain, sets) = compile_policy(policy_id, dir, rules, &mut problems);
                for (selector, v6) in sets {
                    let set = selector_set(&selector, v6);
                    if !current.sets.contains_key(&set) {
                        let members = selector_members(model, &selector, v6);
                        patch.sets.insert(set, Some(members));
                    }
                }
                if *old != chain {
                    patch.chains.insert(name, Some(chain));
                }
            }
            (None, None) => {}
            (Some(_), None) => return None,
            (None, Some(_)) => {
                let used_here = model
                    .endpoints
                    .values()
                    .any(|ep| ep.tiers.iter().flatten().any(|p| p == policy_id));
                if used_here {
                    return None;
                }
            }
        }
    }
    Some((patch, problems))
}

struct Compiler<'m> {
    model: &'m PolicyModel,
    out: Ruleset,
    problems: Vec<Problem>,
    policies_done: BTreeSet<(String, Direction)>,
    selectors_used: BTreeSet<(String, bool)>,
}

impl Compiler<'_> {
    fn settings(&self) -> &Settings {
        &self.model.settings
    }

    fn wildcard(&self) -> String {
        format!("\"{}*\"", self.settings().interface_prefix)
    }

    /// The anti-spoofing verdict for an endpoint: a chain letting through its own sources
    /// (the exceptions every VM shares are in `spoof-dispatch`).
    fn spoof_chain(&mut self, ep: &Endpoint) -> String {
        let mut rules = Vec::new();
        for (v6, family) in [(false, "ip"), (true, "ip6")] {
            let nets: Vec<String> = ep
                .ip_networks
                .iter()
                .filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6)
                .map(|n| n.trunc().to_string())
                .collect();
            if !nets.is_empty() {
                rules.push(format!("{family} saddr {} return", rule::one_or_set(&nets)));
            }
        }
        rules.push("drop".to_owned());
        let name = spoof_chain(&ep.interface);
        self.out.chains.insert(
            name.clone(),
            Chain {
                kind: ChainKind::Endpoint,
                hook: None,
                note: None,
                rules,
            },
        );
        format!("goto {name}")
    }

    /// An endpoint's chain for one direction: conntrack, then tiers of policies, then drop.
    /// What each policy accepts and what ends in a drop is counted here, per endpoint
    /// (`skogctl policy show`); policy chains carry no counters, so rewriting one (a rule
    /// change) never has the kernel allocate and free counters.
    fn endpoint_rules(&mut self, id: &str, ep: &Endpoint, dir: Direction) -> Vec<String> {
        let mut rules = vec![
            "ct state established,related accept".to_owned(),
            "ct state invalid drop".to_owned(),
            CLEAR_MARKS.to_owned(),
        ];
        let mut first_tier = true;
        for tier in &ep.tiers {
            let mut applying = Vec::new();
            for policy_id in tier {
                match self.model.policies.get(policy_id) {
                    None => {
                        if dir == Direction::Ingress {
                            // Reported once per endpoint, not per direction.
                            self.problems.push(Problem::UnknownPolicy {
                                endpoint: id.to_owned(),
                                policy: policy_id.clone(),
                            });
                        }
                    }
                    Some(p) => {
                        let rules = match dir {
                            Direction::Ingress => &p.ingress,
                            Direction::Egress => &p.egress,
                        };
                        if let Some(rules) = rules {
                            applying.push(self.policy_chain(policy_id, dir, rules));
                        }
                    }
                }
            }
            if applying.is_empty() {
                continue;
            }
            if !first_tier {
                rules.push(CLEAR_PASS.to_owned());
            }
            for (i, chain) in applying.iter().enumerate() {
                if i == 0 {
                    rules.push(format!("jump {chain}"));
                } else {
                    rules.push(format!("meta mark & {MARK_PASS:#010x} == 0 jump {chain}"));
                }
                rules.push(format!(
                    "meta mark & {MARK_ACCEPT:#010x} == {MARK_ACCEPT:#010x} counter return"
                ));
            }
            rules.push(format!("meta mark & {MARK_PASS:#010x} == 0 counter drop"));
            first_tier = false;
        }
        rules.push("counter drop".to_owned());
        rules
    }

    /// Compiles a policy's rules for one direction once; returns its chain name.
    fn policy_chain(&mut self, policy_id: &str, dir: Direction, rules: &[Rule]) -> String {
        let name = policy_chain(policy_id, dir);
        if self.policies_done.insert((policy_id.to_owned(), dir)) {
            let (chain, sets) = compile_policy(policy_id, dir, rules, &mut self.problems);
            self.selectors_used.extend(sets);
            self.out.chains.insert(name.clone(), chain);
        }
        name
    }

    fn floating_ips(
        &mut self,
        id: &str,
        ep: &Endpoint,
        dnat: &mut Vec<String>,
        snat: &mut Vec<String>,
    ) {
        for nat in &ep.ip_nats {
            let family = match (nat.internal, nat.external) {
                (IpAddr::V4(_), IpAddr::V4(_)) => "ip",
                (IpAddr::V6(_), IpAddr::V6(_)) => "ip6",
                _ => {
                    self.problems.push(Problem::FloatingIpFamily {
                        endpoint: id.to_owned(),
                        internal: nat.internal,
                        external: nat.external,
                    });
                    continue;
                }
            };
            let (int, ext) = (nat.internal, nat.external);
            dnat.push(format!("{family} daddr {ext} dnat {family} to {int}"));
            snat.push(format!(
                "{family} saddr {int} {family} daddr {int} snat {family} to {ext}"
            ));
            if self.settings().snat_floating_ips_leaving_host {
                snat.push(format!(
                    "{family} saddr {int} oifname != {} snat {family} to {ext}",
                    self.wildcard()
                ));
            }
        }
    }

    fn add_sets(&mut self) {
        for (selector, v6) in std::mem::take(&mut self.selectors_used) {
            self.out.sets.insert(
                selector_set(&selector, v6),
                selector_members(self.model, &selector, v6),
            );
        }
    }

    /// The chains policy rules go to on Allow and Pass: each sets its mark bit and returns to
    /// the endpoint chain (the policy chain was left by `goto`). Always present, so a targeted
    /// policy patch may use either.
    fn add_verdict_chains(&mut self) {
        for (name, bit, what) in [
            (ALLOW_CHAIN, MARK_ACCEPT, "Allow"),
            (PASS_CHAIN, MARK_PASS, "Pass"),
        ] {
            self.out.chains.insert(
                name.to_owned(),
                Chain {
                    kind: ChainKind::Policy,
                    hook: None,
                    note: Some(format!("a policy rule's {what}")),
                    rules: vec![format!("meta mark set meta mark | {bit:#010x} return")],
                },
            );
        }
    }

    fn add_base_chains(
        &mut self,
        spoof: VerdictMap,
        from_vm: VerdictMap,
        to_vm: VerdictMap,
        dnat: Vec<String>,
        snat: Vec<String>,
    ) {
        let vms = self.wildcard();
        let metadata = match self.settings().metadata {
            Some(SocketAddr::V4(target)) => Some(target),
            Some(other) => {
                self.problems.push(Problem::MetadataNotV4(other));
                None
            }
            None => None,
        };
        let vm_to_host_default = self.settings().vm_to_host_default;
        let chains = &mut self.out.chains;
        let mut base = |name: &str, hook: &str, rules: Vec<String>| {
            chains.insert(
                name.to_owned(),
                Chain {
                    kind: ChainKind::Base,
                    hook: Some(format!("{hook} policy accept;")),
                    note: None,
                    rules,
                },
            );
        };
        base(
            "raw-prerouting",
            "type filter hook prerouting priority raw;",
            vec![format!("iifname {vms} jump spoof-dispatch")],
        );
        base(
            "forward",
            "type filter hook forward priority filter;",
            vec![
                format!("iifname {vms} jump from-vm-dispatch"),
                format!("oifname {vms} jump to-vm-dispatch"),
            ],
        );
        base(
            "input",
            "type filter hook input priority filter;",
            vec![format!("iifname {vms} goto vm-to-host")],
        );
        let mut nat_pre = Vec::new();
        if let Some(target) = metadata {
            nat_pre.push(format!(
                "iifname {vms} ip daddr {METADATA_V4} tcp dport 80 dnat ip to {target}"
            ));
        }
        nat_pre.extend(dnat);
        base(
            "nat-prerouting",
            "type nat hook prerouting priority dstnat;",
            nat_pre,
        );
        base(
            "nat-postrouting",
            "type nat hook postrouting priority srcnat;",
            snat,
        );
        let mut to_host = vec![
            "ct state established,related accept".to_owned(),
            "ct state invalid drop".to_owned(),
            // Neighbour discovery and MLD (Felix's list).
            "icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept".to_owned(),
            "meta nfproto ipv4 udp sport 68 udp dport 67 accept".to_owned(),
            "meta nfproto ipv6 udp sport 546 udp dport 547 accept".to_owned(),
            "udp dport 53 accept".to_owned(),
            "tcp dport 53 accept".to_owned(),
        ];
        if let Some(target) = metadata {
            to_host.push(format!(
                "ip daddr {} tcp dport {} accept",
                target.ip(),
                target.port()
            ));
        }
        to_host.push(
            match vm_to_host_default {
                HostVerdict::Drop => "drop",
                HostVerdict::Accept => "accept",
            }
            .to_owned(),
        );
        chains.insert(
            "vm-to-host".to_owned(),
            Chain {
                kind: ChainKind::Endpoint,
                hook: None,
                note: Some("from any VM to this host".to_owned()),
                rules: to_host,
            },
        );
        // Endpoint chains are entered by `goto` from these, so their `return` (allowed) goes
        // back to the base chain, past the drop of unknown VM interfaces.
        // Sources every VM may use: IPv6 link-local, DHCPv4 discovery, and DAD/MLD from ::.
        let spoof_exceptions = [
            "ip6 saddr fe80::/10 return",
            "ip saddr 0.0.0.0 udp sport 68 udp dport 67 return",
            "ip6 saddr :: ip6 daddr ff02::/16 return",
        ];
        for (map_name, map, ifname, exceptions) in [
            ("spoof", spoof, "iifname", &spoof_exceptions[..]),
            ("from-vm", from_vm, "iifname", &[]),
            ("to-vm", to_vm, "oifname", &[]),
        ] {
            let mut rules: Vec<String> = exceptions.iter().map(|r| r.to_string()).collect();
            rules.push(format!("{ifname} vmap @{map_name}"));
            rules.push("drop".to_owned());
            chains.insert(
                format!("{map_name}-dispatch"),
                Chain {
                    kind: ChainKind::Dispatch,
                    hook: None,
                    note: None,
                    rules,
                },
            );
            self.out.maps.insert(map_name.to_owned(), map);
        }
    }
}
