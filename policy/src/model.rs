//! The input of the compiler: what this node must enforce, in Calico v3 terms.
//!
//! The daemon converts the datastore (Calico `WorkloadEndpoint`s, `NetworkPolicy`s and the IP
//! membership of every selector) into a [`PolicyModel`]; field names and meanings mirror the
//! Calico v3 rule fields so the conversion stays trivial. Nothing here is validated: the
//! compiler validates every rule and every name and reports what it rejects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Everything the compiler needs for one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyModel {
    /// Node-wide settings.
    pub settings: Settings,
    /// This node's endpoints, keyed by an opaque endpoint id (used only in error messages).
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Policies, keyed by policy id (for OpenStack `ossg.default.<sg-id>`).
    pub policies: BTreeMap<String, Policy>,
    /// The current IP membership of every selector used in a rule, keyed by the selector
    /// expression exactly as it appears in [`EntityRule::selector`]. A selector missing here
    /// has no members.
    pub selectors: BTreeMap<String, BTreeSet<IpNet>>,
}

/// Node-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Prefix of VM interface names (`tap` for Nova). Only interfaces with this prefix are
    /// ever filtered; everything else passes untouched.
    pub interface_prefix: String,
    /// Where 169.254.169.254:80 is DNATed to; `None` disables the metadata service.
    pub metadata: Option<SocketAddr>,
    /// What happens to VM traffic to the host that is not DHCP, DNS, metadata or neighbour
    /// discovery.
    pub vm_to_host_default: HostVerdict,
    /// Also SNAT a VM's internal address to its floating IP on traffic leaving the host (not
    /// only on hairpin traffic to itself).
    pub snat_floating_ips_leaving_host: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            interface_prefix: "tap".to_owned(),
            metadata: Some(SocketAddr::from(([127, 0, 0, 1], 8775))),
            vm_to_host_default: HostVerdict::Drop,
            snat_floating_ips_leaving_host: true,
        }
    }
}

/// The verdict for VM-to-host traffic that no built-in service rule accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostVerdict {
    Drop,
    Accept,
}

/// One workload endpoint (a VM port) on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The host-side interface (the Nova tap).
    pub interface: String,
    /// The VM's MAC (informational; filtering is at layer 3).
    pub mac: Option<String>,
    /// The addresses the VM may send from (its fixed IPs and allowed address pairs).
    pub ip_networks: Vec<IpNet>,
    /// Floating IPs.
    pub ip_nats: Vec<IpNat>,
    /// The policies applying to this endpoint: tiers in order, each an ordered list of policy
    /// ids. A policy applies in the directions for which it has rules ([`Policy::ingress`],
    /// [`Policy::egress`]).
    pub tiers: Vec<Vec<String>>,
}

/// A floating IP: traffic to `external` goes to `internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IpNat {
    pub internal: IpAddr,
    pub external: IpAddr,
}

/// A policy: ordered rules per direction. `None` means the policy does not apply in that
/// direction; `Some(vec![])` applies and allows nothing (Calico's `types`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Rules for traffic to the endpoint.
    pub ingress: Option<Vec<Rule>>,
    /// Rules for traffic from the endpoint.
    pub egress: Option<Vec<Rule>>,
}

/// A Calico v3 rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub action: Action,
    /// 4 or 6; `None` matches both.
    pub ip_version: Option<u8>,
    pub protocol: Option<Protocol>,
    pub not_protocol: Option<Protocol>,
    pub icmp: Option<Icmp>,
    pub source: EntityRule,
    pub destination: EntityRule,
}

impl Rule {
    /// A rule with `action` and nothing else (matches every packet).
    pub fn new(action: Action) -> Rule {
        Rule {
            action,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
        }
    }
}

/// A rule's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    /// Skip the rest of this tier.
    Pass,
    /// Log and go on with the next rule.
    Log,
}

/// A protocol as Calico writes it: a number or a name (`TCP`, `udp`, `ICMPv6`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Number(u8),
    Name(String),
}

/// ICMP (or ICMPv6) type and optional code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    pub r#type: Option<u16>,
    pub code: Option<u16>,
}

/// The source or destination half of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRule {
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    /// Ports as Calico writes them: `"80"`, `"8000:8080"` (numbers as strings).
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    /// A selector (for OpenStack, a remote security group); its members come from
    /// [`PolicyModel::selectors`].
    pub selector: Option<String>,
    pub not_selector: Option<String>,
}
