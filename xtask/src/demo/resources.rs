//! The demo's data set, shaped exactly as networking-calico writes it: a Neutron port is a
//! WorkloadEndpoint, a security group a NetworkPolicy `ossg.default.<sg>` that selects the label
//! `sg.projectcalico.org/openstack-<sg>` (see docs/datamodel.md). The shapes are those of
//! `skog_agent::model::fixtures`, written out here so that xtask does not build the agent just to
//! run `setup`; the demo checks them end to end, so a drift shows as a failing demo.
//! Also where they are written: etcd, or a directory of the file datastore.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use skog_testbed::{HvId, Testbed};

const NAMESPACE: &str = "openstack";
const KEY_PREFIX: &str = "/calico/resources/v3/projectcalico.org";

/// One Calico v3 resource: its etcd key, its file name in a resource directory, its value.
#[derive(Debug, Clone)]
pub struct Resource {
    pub key: String,
    pub file: String,
    pub value: Value,
}

/// A Neutron port bound to `host`, as its WorkloadEndpoint.
#[derive(Debug, Clone)]
pub struct Port<'a> {
    pub host: &'a str,
    /// The Nova instance id.
    pub device: String,
    pub port_id: &'a str,
    pub tap: &'a str,
    pub mac: &'a str,
    /// CIDRs: the VM's /32 and /128.
    pub ip_networks: Vec<String>,
    pub security_groups: &'a [&'a str],
}

impl Port<'_> {
    pub fn resource(&self) -> Resource {
        // libcalico-go's name: the four parts joined by '-', every '-' inside a part doubled.
        let name = [self.host, "openstack", &self.device, self.port_id]
            .map(|part| part.replace('-', "--"))
            .join("-");
        let mut labels = serde_json::Map::new();
        for sg in self.security_groups {
            labels.insert(sg_label(sg), json!(sg));
        }
        labels.insert("projectcalico.org/namespace".into(), json!(NAMESPACE));
        labels.insert("projectcalico.org/orchestrator".into(), json!("openstack"));
        let value = json!({
            "kind": "WorkloadEndpoint",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "orchestrator": "openstack",
                "workload": self.device,
                "node": self.host,
                "endpoint": self.port_id,
                "interfaceName": self.tap,
                "mac": self.mac,
                "ipNetworks": self.ip_networks,
                "ipv4Gateway": "198.51.100.1",
                "ipv6Gateway": "2001:db8:100::1"
            }
        });
        Resource {
            key: format!("{KEY_PREFIX}/workloadendpoints/{NAMESPACE}/{name}"),
            file: format!("port-{}.json", self.tap),
            value,
        }
    }
}

/// The label networking-calico puts on a port's endpoint for each of its security groups.
fn sg_label(sg: &str) -> String {
    format!("sg.projectcalico.org/openstack-{sg}")
}

/// A security group's policy: `ingress` rules, and the allow-all egress networking-calico writes
/// for a group without egress rules.
pub fn security_group(sg: &str, ingress: Vec<Value>) -> Resource {
    let name = format!("ossg.default.{sg}");
    let value = json!({
        "kind": "NetworkPolicy",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": format!("has({})", sg_label(sg)),
            "ingress": ingress,
            "egress": [{"action": "Allow", "ipVersion": 4}, {"action": "Allow", "ipVersion": 6}]
        }
    });
    Resource {
        key: format!("{KEY_PREFIX}/networkpolicies/{NAMESPACE}/{name}"),
        file: format!("sg-{sg}.json"),
        value,
    }
}

/// Ingress rule: TCP to `port`, from anywhere or from the members of group `from`.
pub fn allow_tcp(port: u16, from: Option<&str>) -> Value {
    let mut rule = json!({"action": "Allow", "ipVersion": 4, "protocol": "TCP",
                          "destination": {"ports": [port]}});
    if let Some(sg) = from {
        rule["source"] = json!({"selector": format!("has({})", sg_label(sg))});
    }
    rule
}

/// Ingress rules: ICMP and ICMPv6 from anywhere (so that ping works).
pub fn allow_ping() -> [Value; 2] {
    [
        json!({"action": "Allow", "ipVersion": 4, "protocol": "ICMP"}),
        json!({"action": "Allow", "ipVersion": 6, "protocol": "ICMPv6"}),
    ]
}

/// Where networking-calico's resources live for the demo.
#[derive(Debug)]
pub enum Datastore {
    /// etcd on the management network, written with `etcdctl put` from a hypervisor.
    Etcd { url: String, writer: HvId },
    /// A directory of JSON files, read by every skogd (the file datastore).
    Files { dir: PathBuf },
}

impl Datastore {
    /// The `[datastore]` table of skog.toml.
    pub fn config(&self) -> String {
        match self {
            Datastore::Etcd { url, .. } => {
                format!("[datastore]\ntype = \"etcd\"\nendpoints = [\"{url}\"]\n")
            }
            Datastore::Files { dir } => {
                format!(
                    "[datastore]\ntype = \"file\"\npath = \"{}\"\n",
                    dir.display()
                )
            }
        }
    }

    /// Writes (creates or replaces) a resource.
    pub fn put(&self, tb: &Testbed, resource: &Resource) -> Result<()> {
        match self {
            Datastore::Etcd { writer, .. } => {
                tb.etcdctl(
                    *writer,
                    &["put", &resource.key, &resource.value.to_string()],
                )
                .with_context(|| format!("etcdctl put {}", resource.key))?;
            }
            Datastore::Files { dir } => write_atomically(dir, &resource.file, &resource.value)?,
        }
        Ok(())
    }

    /// Where a resource is, for the output: its key or its file.
    pub fn location(&self, resource: &Resource) -> String {
        match self {
            Datastore::Etcd { .. } => resource.key.clone(),
            Datastore::Files { dir } => dir.join(&resource.file).display().to_string(),
        }
    }
}

/// Writes a file under a hidden name, then renames it, so a reader never sees half of it.
fn write_atomically(dir: &Path, file: &str, value: &Value) -> Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    let path = dir.join(file);
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))
}
