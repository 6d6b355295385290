//! Resources shaped exactly like networking-calico's output (calico-datamodel.md §1.2–1.4), for
//! tests, the demo and benchmarks: a Neutron port becomes a WorkloadEndpoint, a security group
//! a NetworkPolicy `ossg.default.<sg-id>` selecting the label `sg.projectcalico.org/openstack-<sg-id>`.

use serde_json::{Value, json};

use super::key::{EndpointId, Kind, ResourceKey};

/// The label networking-calico puts on a port's endpoint for each of its security groups.
pub fn sg_label(sg: &str) -> String {
    format!("sg.projectcalico.org/openstack-{sg}")
}

/// The selector of a security group's policy (and of remote-group rules).
pub fn sg_selector(sg: &str) -> String {
    format!("has({})", sg_label(sg))
}

/// A UUID-shaped id, distinct for every (`tag`, `n`).
pub fn uuid(tag: u32, n: usize) -> String {
    format!("{tag:08x}-0000-4000-8000-{n:012x}")
}

/// A Neutron port bound to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Namespace (`openstack`).
    pub namespace: String,
    /// `binding:host_id`.
    pub host: String,
    /// Nova instance id.
    pub device: String,
    /// Port id.
    pub port: String,
    /// MAC address.
    pub mac: String,
    /// Fixed IPs and allowed address pairs, as CIDRs.
    pub ip_networks: Vec<String>,
    /// Security group ids.
    pub security_groups: Vec<String>,
}

impl Port {
    /// Port number `n` on `host`, with an IPv4 address from 198.51.100.0/24 (wrapping every
    /// 250 ports) and a unique IPv6 address from 2001:db8:100::/48.
    pub fn numbered(host: &str, n: usize) -> Port {
        Port {
            namespace: "openstack".into(),
            host: host.into(),
            device: uuid(0xd0, n),
            port: uuid(0x90, n),
            mac: format!("fa:16:3e:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
            ip_networks: vec![
                format!("198.51.100.{}/32", 2 + n % 250),
                format!("2001:db8:100::{:x}:{:x}/128", n >> 16, n & 0xffff),
            ],
            security_groups: Vec::new(),
        }
    }

    /// The same port in these security groups.
    pub fn in_groups(mut self, groups: &[&str]) -> Port {
        self.security_groups = groups.iter().map(|g| (*g).to_owned()).collect();
        self
    }

    /// Its identity.
    pub fn id(&self) -> EndpointId {
        EndpointId {
            namespace: self.namespace.clone(),
            host: self.host.clone(),
            orchestrator: "openstack".into(),
            workload: self.device.clone(),
            endpoint: self.port.clone(),
        }
    }

    /// Its tap interface (Nova's rule: `tap` + the first 11 characters of the port id).
    pub fn tap(&self) -> String {
        format!("tap{}", self.port.get(..11).unwrap_or(&self.port))
    }

    /// Its etcd key.
    pub fn key(&self) -> String {
        ResourceKey {
            kind: Kind::WorkloadEndpoint,
            namespace: Some(self.namespace.clone()),
            name: self.id().to_name(),
        }
        .to_string()
    }

    /// Its etcd value, as networking-calico writes it.
    pub fn value(&self) -> Value {
        let mut labels = serde_json::Map::new();
        for sg in &self.security_groups {
            labels.insert(sg_label(sg), json!("sg-name"));
        }
        labels.insert("projectcalico.org/namespace".into(), json!(self.namespace));
        labels.insert("projectcalico.org/orchestrator".into(), json!("openstack"));
        labels.insert(
            "projectcalico.org/openstack-project-id".into(),
            json!("294b394e8f454cc8b26bbe342bc210d3"),
        );
        json!({
            "kind": "WorkloadEndpoint",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {
                "name": self.id().to_name(),
                "namespace": self.namespace,
                "creationTimestamp": "2026-08-22T13:33:20Z",
                "uid": uuid(0x01, 0),
                "labels": labels,
                "annotations": {"openstack.projectcalico.org/network-id": uuid(0xee, 1)}
            },
            "spec": {
                "orchestrator": "openstack",
                "workload": self.device,
                "node": self.host,
                "endpoint": self.port,
                "interfaceName": self.tap(),
                "mac": self.mac,
                "ipNetworks": self.ip_networks,
                "ipv4Gateway": "198.51.100.1",
                "ipv6Gateway": "2001:db8:100::1"
            }
        })
    }
}

/// A security group's policy key and value; rules are networking-calico rule objects.
pub fn sg_policy(
    namespace: &str,
    sg: &str,
    ingress: Vec<Value>,
    egress: Vec<Value>,
) -> (String, Value) {
    let name = format!("ossg.default.{sg}");
    let key = ResourceKey {
        kind: Kind::NetworkPolicy,
        namespace: Some(namespace.into()),
        name: name.clone(),
    };
    let value = json!({
        "kind": "NetworkPolicy",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name, "namespace": namespace,
                     "creationTimestamp": "2026-08-22T13:33:20Z", "uid": uuid(0x02, 0)},
        "spec": {"selector": sg_selector(sg), "ingress": ingress, "egress": egress}
    });
    (key.to_string(), value)
}

/// An ingress rule allowing TCP `port` from members of security group `remote`.
pub fn allow_tcp_from_group(port: u16, remote: &str) -> Value {
    json!({"action": "Allow", "ipVersion": 4, "protocol": 6,
           "source": {"selector": sg_selector(remote)}, "destination": {"ports": [port]}})
}

/// The default egress rules networking-calico writes for a security group.
pub fn allow_all_egress() -> Vec<Value> {
    vec![
        json!({"action": "Allow", "ipVersion": 4}),
        json!({"action": "Allow", "ipVersion": 6}),
    ]
}

/// `ClusterInformation` `default` with `datastoreReady`.
pub fn cluster_information(ready: bool) -> (String, Value) {
    let key = ResourceKey {
        kind: Kind::ClusterInformation,
        namespace: None,
        name: "default".into(),
    };
    let value = json!({
        "kind": "ClusterInformation", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "default"},
        "spec": {"clusterGUID": "4f9c", "clusterType": "openstack", "datastoreReady": ready}
    });
    (key.to_string(), value)
}

/// A global resource of `kind` named `name` with `spec` (and `labels`, if any), as calicoctl
/// writes it.
fn global_resource(kind: Kind, name: &str, labels: Value, spec: Value) -> (String, Value) {
    let key = ResourceKey {
        kind,
        namespace: None,
        name: name.into(),
    };
    let value = json!({
        "kind": kind.name(), "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name, "labels": labels},
        "spec": spec
    });
    (key.to_string(), value)
}

/// A `BGPPeer` named `name` with `spec` (`node`, `peerIP`, `asNumber`, ...).
pub fn bgp_peer(name: &str, spec: Value) -> (String, Value) {
    global_resource(Kind::BgpPeer, name, Value::Null, spec)
}

/// A `BGPConfiguration` (`default` or `node.<host>`) with `spec`.
pub fn bgp_configuration(name: &str, spec: Value) -> (String, Value) {
    global_resource(Kind::BgpConfiguration, name, Value::Null, spec)
}

/// A `Node` named `host` with `labels` and `spec.bgp` = `bgp`.
pub fn node(host: &str, labels: Value, bgp: Value) -> (String, Value) {
    global_resource(Kind::Node, host, labels, json!({"bgp": bgp}))
}
