//! Pure translations from the datastore model to what the dataplane pieces take: a
//! [`DesiredEndpoint`] for the route programmer, and the policy compiler's input types.
//!
//! Selector keys: a rule selector's members depend on the namespace its policy lives in, so
//! the compiler's selector key is the model's [`SelectorId`] as text (`openstack: has(...)`),
//! in rules and in the membership map alike.

use skog_policy::model as pm;

use crate::dataplane::{DesiredEndpoint, MacAddr};
use crate::model::resource::{self, Action, EntityRule, IpVersion, Policy, PortRange, Profile};
use crate::model::{LocalEndpoint, SelectorId, WorkloadEndpoint};

/// The endpoint's id everywhere in the daemon (the programmer, the compiler, the CLI).
pub fn endpoint_key(ep: &WorkloadEndpoint) -> String {
    ep.id.to_string()
}

/// The policy id the compiler and the CLI use for a policy (`openstack/ossg.default.<sg>`).
pub fn policy_key(id: &resource::PolicyId) -> String {
    id.to_string()
}

/// The policy id of a profile (a tier after the policies, as Felix orders them).
pub fn profile_key(name: &str) -> String {
    format!("profile/{name}")
}

/// What the route programmer needs, or why the endpoint cannot be programmed.
pub fn desired_endpoint(ep: &WorkloadEndpoint) -> Result<DesiredEndpoint, String> {
    let mac = ep
        .mac
        .ok_or_else(|| format!("endpoint {}: no MAC address", ep.id))?;
    Ok(DesiredEndpoint {
        id: endpoint_key(ep),
        interface: ep.interface_name.clone(),
        mac: MacAddr(mac.0),
        addresses: ep.ip_networks.clone(),
        floating_ips: ep.ip_nats.iter().map(|n| n.external).collect(),
        ipv6_gateway: ep.ipv6_gateway,
    })
}

/// The compiler's view of a local endpoint: policies as the first tier, profiles as the
/// second.
pub fn policy_endpoint(local: &LocalEndpoint) -> pm::Endpoint {
    let ep = &local.endpoint;
    let mut tiers = Vec::new();
    if !local.policies.is_empty() {
        tiers.push(local.policies.iter().map(policy_key).collect());
    }
    if !local.profiles.is_empty() {
        tiers.push(local.profiles.iter().map(|p| profile_key(p)).collect());
    }
    pm::Endpoint {
        interface: ep.interface_name.clone(),
        mac: ep.mac.map(|m| m.to_string()),
        ip_networks: ep.ip_networks.clone(),
        ip_nats: ep
            .ip_nats
            .iter()
            .map(|n| pm::IpNat {
                internal: n.internal,
                external: n.external,
            })
            .collect(),
        tiers,
    }
}

/// A policy for the compiler; it applies in the directions its `types` name.
pub fn policy(p: &Policy) -> pm::Policy {
    let scope = Some(p.id.namespace.as_str());
    pm::Policy {
        ingress: p.applies_ingress.then(|| rules(&p.ingress, scope)),
        egress: p.applies_egress.then(|| rules(&p.egress, scope)),
    }
}

/// A profile for the compiler: it applies in both directions, its selectors unscoped.
pub fn profile(p: &Profile) -> pm::Policy {
    pm::Policy {
        ingress: Some(rules(&p.ingress, None)),
        egress: Some(rules(&p.egress, None)),
    }
}

/// The compiler's key for a selector.
pub fn selector_key(id: &SelectorId) -> String {
    id.to_string()
}

fn rules(rules: &[resource::Rule], scope: Option<&str>) -> Vec<pm::Rule> {
    rules.iter().map(|r| rule(r, scope)).collect()
}

fn rule(r: &resource::Rule, scope: Option<&str>) -> pm::Rule {
    let action = match r.action {
        Action::Allow => pm::Action::Allow,
        Action::Deny => pm::Action::Deny,
        Action::Log => pm::Action::Log,
        Action::Pass => pm::Action::Pass,
    };
    if r.not_icmp.is_some() {
        // The compiler has no notICMP match (networking-calico never writes one). Fail closed
        // as the compiler does for rules it rejects: a Deny or Pass becomes an unconditional
        // drop, an Allow or Log is left out.
        tracing::warn!(
            "a rule with notICMP is not supported; it fails closed ({:?})",
            r.action
        );
        return match r.action {
            Action::Deny | Action::Pass => pm::Rule::new(pm::Action::Deny),
            Action::Allow | Action::Log => pm::Rule {
                protocol: Some(pm::Protocol::Name("unsupported-notICMP".into())),
                ..pm::Rule::new(action)
            },
        };
    }
    pm::Rule {
        action,
        ip_version: r.ip_version.map(|v| match v {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }),
        protocol: r.protocol.map(pm::Protocol::Number),
        not_protocol: r.not_protocol.map(pm::Protocol::Number),
        icmp: r.icmp.map(|i| pm::Icmp {
            r#type: i.icmp_type.map(u16::from),
            code: i.code.map(u16::from),
        }),
        source: entity(&r.source, scope),
        destination: entity(&r.destination, scope),
    }
}

fn entity(e: &EntityRule, scope: Option<&str>) -> pm::EntityRule {
    let key = |s: &crate::model::Selector| {
        selector_key(&SelectorId {
            namespace: scope.map(str::to_owned),
            selector: s.clone(),
        })
    };
    pm::EntityRule {
        nets: e.nets.clone(),
        not_nets: e.not_nets.clone(),
        ports: e.ports.iter().map(port).collect(),
        not_ports: e.not_ports.iter().map(port).collect(),
        selector: e.selector.as_ref().map(key),
        not_selector: e.not_selector.as_ref().map(key),
    }
}

fn port(p: &PortRange) -> String {
    if p.first == p.last {
        p.first.to_string()
    } else {
        format!("{}:{}", p.first, p.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures;
    use crate::model::{KvChange, Model, ModelConfig, ModelEvent};

    /// The events of the model after loading two ports of `web` on this host, one port of
    /// `admin` elsewhere, and `web` allowing tcp/22 from `admin`.
    fn events() -> Vec<ModelEvent> {
        let host = "compute-01";
        let mut model = Model::new(ModelConfig {
            hostname: host.into(),
            region: None,
        });
        let port = |host: &str, n: usize, group: &str| {
            let mut p = fixtures::Port::numbered(host, n).in_groups(&[group]);
            // Taps are named after the first 11 characters of the port id.
            p.port = format!("{n:08x}-0000-4000-8000-000000000000");
            p
        };
        let ports = [
            port(host, 1, "web"),
            port(host, 2, "web"),
            port("compute-02", 3, "admin"),
        ];
        let mut kvs: Vec<(String, serde_json::Value)> =
            ports.iter().map(|p| (p.key(), p.value())).collect();
        kvs.push(fixtures::sg_policy(
            "openstack",
            "web",
            vec![fixtures::allow_tcp_from_group(22, "admin")],
            fixtures::allow_all_egress(),
        ));
        for (key, value) in kvs {
            model.apply(&KvChange {
                key,
                value: Some(value.to_string().into_bytes()),
            });
        }
        model.set_in_sync();
        model.flush()
    }

    #[test]
    fn a_security_group_becomes_a_compiled_chain_with_its_remote_group_set() {
        let mut input = pm::PolicyModel::default();
        for event in events() {
            match event {
                ModelEvent::EndpointUpdated(local) => {
                    let ep = desired_endpoint(&local.endpoint).unwrap();
                    assert_eq!(ep.interface, local.endpoint.interface_name);
                    input
                        .endpoints
                        .insert(endpoint_key(&local.endpoint), policy_endpoint(&local));
                }
                ModelEvent::PolicyUpdated(p) => {
                    input.policies.insert(policy_key(&p.id), policy(&p));
                }
                ModelEvent::SelectorMembership { id, added, .. } => {
                    input
                        .selectors
                        .insert(selector_key(&id), added.into_iter().collect());
                }
                _ => {}
            }
        }
        assert!(!input.endpoints.is_empty());
        let compiled = skog_policy::compile(&input).unwrap();
        assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
        let text = compiled.ruleset.full_script();
        // The remote group's set holds the IPv4 members the model computed (the rule is
        // IPv4-only).
        for (selector, members) in &input.selectors {
            for m in members.iter().filter(|m| m.addr().is_ipv4()) {
                assert!(
                    text.contains(&m.addr().to_string()),
                    "{selector}: {m} missing"
                );
            }
        }
        assert!(text.contains("meta l4proto tcp ip saddr @sel4-"), "{text}");
        assert!(text.contains("th dport 22"), "{text}");
    }

    #[test]
    fn ports_and_ranges_are_written_as_calico_does() {
        assert_eq!(
            port(&PortRange {
                first: 80,
                last: 80
            }),
            "80"
        );
        assert_eq!(
            port(&PortRange {
                first: 8000,
                last: 8080
            }),
            "8000:8080"
        );
    }
}
