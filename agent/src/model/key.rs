//! Names of things in the Calico v3 data model: resource keys
//! (`/calico/resources/v3/projectcalico.org/<plural>[/<namespace>]/<name>`), the identity that
//! libcalico-go derives from a WorkloadEndpoint's name (`<host>-<orchestrator>-<workload>-<endpoint>`
//! with every `-` inside a part doubled), and the OpenStack namespace of a region.

use std::fmt;

/// Prefix of every v3 resource key; the etcd datastore lists and watches below it.
pub const RESOURCE_PREFIX: &str = "/calico/resources/v3/projectcalico.org/";

/// The resource kinds the agent reads; every other kind is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `workloadendpoints` (namespaced): one per Neutron port.
    WorkloadEndpoint,
    /// `networkpolicies` (namespaced): one per security group (`ossg.default.<sg-id>`).
    NetworkPolicy,
    /// `profiles` (global): only in pre-2.0 networking-calico, tolerated.
    Profile,
    /// `clusterinformations` (global): `default` carries `datastoreReady`.
    ClusterInformation,
    /// `felixconfigurations` (global): `default` and `node.<host>` carry `interfacePrefix`.
    FelixConfiguration,
    /// `bgppeers` (global): peers for all nodes, one node, or the nodes a selector picks.
    BgpPeer,
    /// `bgpconfigurations` (global): `default` and `node.<host>` carry the AS and listen port.
    BgpConfiguration,
    /// `nodes` (global): this node's AS, BGP addresses and labels.
    Node,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::WorkloadEndpoint,
        Kind::NetworkPolicy,
        Kind::Profile,
        Kind::ClusterInformation,
        Kind::FelixConfiguration,
        Kind::BgpPeer,
        Kind::BgpConfiguration,
        Kind::Node,
    ];

    /// The plural used in keys.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::WorkloadEndpoint => "workloadendpoints",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Profile => "profiles",
            Kind::ClusterInformation => "clusterinformations",
            Kind::FelixConfiguration => "felixconfigurations",
            Kind::BgpPeer => "bgppeers",
            Kind::BgpConfiguration => "bgpconfigurations",
            Kind::Node => "nodes",
        }
    }

    /// The `kind` field of the JSON object.
    pub fn name(self) -> &'static str {
        match self {
            Kind::WorkloadEndpoint => "WorkloadEndpoint",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Profile => "Profile",
            Kind::ClusterInformation => "ClusterInformation",
            Kind::FelixConfiguration => "FelixConfiguration",
            Kind::BgpPeer => "BGPPeer",
            Kind::BgpConfiguration => "BGPConfiguration",
            Kind::Node => "Node",
        }
    }

    /// Whether resources of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        matches!(self, Kind::WorkloadEndpoint | Kind::NetworkPolicy)
    }

    /// The kind with this `kind` field, if the agent reads it.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == plural)
    }
}

/// A parsed resource key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// The resource name.
    pub name: String,
}

/// Why a key is not one the agent reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A kind the agent does not read (IP pools, tiers, ...): not an error, just ignored.
    #[error("kind {0:?} is not read by the agent")]
    IgnoredKind(String),
    /// A key under the resource prefix that does not have the right shape.
    #[error("malformed resource key: {0}")]
    Malformed(String),
}

impl ResourceKey {
    /// Parses an etcd key.
    pub fn parse(key: &str) -> Result<ResourceKey, KeyError> {
        let rest = key.strip_prefix(RESOURCE_PREFIX).ok_or_else(|| {
            KeyError::Malformed(format!("{key:?} is not under {RESOURCE_PREFIX}"))
        })?;
        let parts: Vec<&str> = rest.split('/').collect();
        let plural = parts.first().copied().unwrap_or("");
        let kind = Kind::from_plural(plural).ok_or_else(|| KeyError::IgnoredKind(plural.into()))?;
        let malformed =
            || KeyError::Malformed(format!("{key:?} does not name one {plural} resource"));
        let (namespace, name) = match (kind.is_namespaced(), parts.as_slice()) {
            (true, [_, ns, name]) => (Some((*ns).to_owned()), *name),
            (false, [_, name]) => (None, *name),
            _ => return Err(malformed()),
        };
        if name.is_empty() || namespace.as_deref() == Some("") {
            return Err(malformed());
        }
        Ok(ResourceKey {
            kind,
            namespace,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RESOURCE_PREFIX}{}/", self.kind.plural())?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        write!(f, "{}", self.name)
    }
}

/// The identity of a workload endpoint, as Felix derives it from the key (never from the spec).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId {
    /// The OpenStack namespace (`openstack` or `openstack-region-<R>`).
    pub namespace: String,
    /// The compute host the port is bound to.
    pub host: String,
    /// The orchestrator (`openstack`).
    pub orchestrator: String,
    /// The workload: the Nova instance (device) id.
    pub workload: String,
    /// The endpoint: the Neutron port id.
    pub endpoint: String,
}

impl EndpointId {
    /// Derives the identity from a WorkloadEndpoint name in `namespace`.
    pub fn from_name(namespace: &str, name: &str) -> Result<EndpointId, String> {
        let parts = split_dash_escaped(name);
        let [host, orchestrator, workload, endpoint] =
            <[String; 4]>::try_from(parts).map_err(|parts| {
                format!(
                    "name {name:?} has {} dash-separated parts, expected 4 \
                     (<host>-<orchestrator>-<workload>-<endpoint>, with '-' doubled inside parts)",
                    parts.len()
                )
            })?;
        if [&host, &orchestrator, &workload, &endpoint]
            .iter()
            .any(|p| p.is_empty())
        {
            return Err(format!("name {name:?} has an empty part"));
        }
        Ok(EndpointId {
            namespace: namespace.to_owned(),
            host,
            orchestrator,
            workload,
            endpoint,
        })
    }

    /// The WorkloadEndpoint name for this identity (the inverse of [`EndpointId::from_name`]).
    pub fn to_name(&self) -> String {
        [
            &self.host,
            &self.orchestrator,
            &self.workload,
            &self.endpoint,
        ]
        .map(|p| p.replace('-', "--"))
        .join("-")
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.namespace, self.host, self.workload, self.endpoint
        )
    }
}

/// Splits on single dashes; a doubled dash is an escaped `-` inside a part.
fn split_dash_escaped(name: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                chars.next();
                if let Some(last) = parts.last_mut() {
                    last.push('-');
                }
            }
            '-' => parts.push(String::new()),
            c => {
                if let Some(last) = parts.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    parts
}

/// The namespace networking-calico writes into for a region (`None`: no region configured).
pub fn openstack_namespace(region: Option<&str>) -> String {
    match region {
        Some(r) => format!("openstack-region-{r}"),
        None => "openstack".to_owned(),
    }
}

/// The region string of status keys: `no-region` or `region-<R>`.
pub fn region_string(region: Option<&str>) -> String {
    match region {
        Some(r) => format!("region-{r}"),
        None => "no-region".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEP_NAME: &str = "compute--01-openstack-8e3941b4--a6e9--499f--a1ac--2a4662025cba-ce705c24--c1ef--408a--bda3--7bbd946164ab";

    #[test]
    fn endpoint_identity_comes_from_the_name() {
        let id = EndpointId::from_name("openstack", WEP_NAME).unwrap();
        assert_eq!(id.host, "compute-01");
        assert_eq!(id.orchestrator, "openstack");
        assert_eq!(id.workload, "8e3941b4-a6e9-499f-a1ac-2a4662025cba");
        assert_eq!(id.endpoint, "ce705c24-c1ef-408a-bda3-7bbd946164ab");
        assert_eq!(id.to_name(), WEP_NAME);
    }

    #[test]
    fn bad_endpoint_names_are_rejected() {
        for name in [
            "host-openstack-vm",
            "a-b-c-d-e",
            "-openstack-vm-port",
            "a-b-c-",
        ] {
            assert!(EndpointId::from_name("openstack", name).is_err(), "{name}");
        }
    }

    #[test]
    fn resource_keys_parse_and_print() {
        let key = format!("{RESOURCE_PREFIX}workloadendpoints/openstack/{WEP_NAME}");
        let parsed = ResourceKey::parse(&key).unwrap();
        assert_eq!(parsed.kind, Kind::WorkloadEndpoint);
        assert_eq!(parsed.namespace.as_deref(), Some("openstack"));
        assert_eq!(parsed.to_string(), key);

        let key = format!("{RESOURCE_PREFIX}clusterinformations/default");
        let parsed = ResourceKey::parse(&key).unwrap();
        assert_eq!(parsed.kind, Kind::ClusterInformation);
        assert_eq!(parsed.namespace, None);
        assert_eq!(parsed.to_string(), key);
    }

    #[test]
    fn unknown_kinds_are_ignored_and_bad_shapes_are_errors() {
        let ippool = format!("{RESOURCE_PREFIX}ippools/default-ipv4");
        assert!(matches!(
            ResourceKey::parse(&ippool),
            Err(KeyError::IgnoredKind(_))
        ));
        for bad in [
            format!("{RESOURCE_PREFIX}workloadendpoints/openstack"),
            format!("{RESOURCE_PREFIX}clusterinformations/a/b"),
            format!("{RESOURCE_PREFIX}networkpolicies//x"),
            "/calico/v1/host/x".to_owned(),
        ] {
            assert!(
                matches!(ResourceKey::parse(&bad), Err(KeyError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn region_names() {
        assert_eq!(openstack_namespace(None), "openstack");
        assert_eq!(openstack_namespace(Some("r1")), "openstack-region-r1");
        assert_eq!(region_string(None), "no-region");
        assert_eq!(region_string(Some("r1")), "region-r1");
    }
}
