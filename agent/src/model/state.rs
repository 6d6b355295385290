//! The model's state: every valid resource by identity, what was last emitted (this node's
//! endpoint views, the policies and profiles they use, the IP membership of every rule
//! selector, this node's BGP settings), and what changed since the last flush.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use tracing::{debug, warn};

use super::bgp::{self, BgpConfiguration, BgpPeer, DatastoreBgp, Node};
use super::key::{EndpointId, KeyError, Kind, ResourceKey, openstack_namespace};
use super::resource::{self, Policy, PolicyId, Profile, Resource, WorkloadEndpoint};
use super::selector::Selector;

/// What the model needs to know about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// This node's name, as networking-calico writes it (`binding:host_id`).
    pub hostname: String,
    /// The OpenStack region, if networking-calico is configured with one.
    pub region: Option<String>,
}

/// A raw change from a datastore: `value: None` is a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvChange {
    /// The etcd key (or the key a file document maps to).
    pub key: String,
    /// The JSON value, or `None` when the key went away.
    pub value: Option<Vec<u8>>,
}

/// A selector as Felix scopes it: rule selectors of a namespaced policy only match endpoints in
/// the policy's namespace; those of a profile match endpoints anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SelectorId {
    /// Namespace the selector is restricted to.
    pub namespace: Option<String>,
    /// The selector.
    pub selector: Selector,
}

impl SelectorId {
    fn matches(&self, endpoint: &WorkloadEndpoint) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == endpoint.id.namespace)
            && self.selector.matches(&endpoint.labels)
    }
}

impl std::fmt::Display for SelectorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}: {}", self.selector),
            None => write!(f, "{}", self.selector),
        }
    }
}

/// One of this node's endpoints with the policies (in evaluation order) and profiles that
/// apply to it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalEndpoint {
    /// The endpoint.
    pub endpoint: Arc<WorkloadEndpoint>,
    /// Policies whose selector matches it, ordered by `order` (absent last), then name.
    pub policies: Vec<PolicyId>,
    /// Profiles it names (`spec.profiles`), in order.
    pub profiles: Vec<String>,
}

/// A fine-grained change for the dataplane, policy compiler and BGP.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// This node's endpoint is new or changed (addresses, labels, or applicable policies).
    EndpointUpdated(LocalEndpoint),
    /// This node's endpoint went away.
    EndpointRemoved(EndpointId),
    /// A policy used by at least one local endpoint is new or changed.
    PolicyUpdated(Arc<Policy>),
    /// A policy is no longer used by any local endpoint (or was deleted).
    PolicyRemoved(PolicyId),
    /// A profile used by a local endpoint is new or changed.
    ProfileUpdated(Arc<Profile>),
    /// A profile is no longer used (or was deleted).
    ProfileRemoved(String),
    /// The IPs a rule selector matches changed (on first use, everything is `added`).
    SelectorMembership {
        /// The selector.
        id: SelectorId,
        /// Networks that now match.
        added: Vec<IpNet>,
        /// Networks that no longer match.
        removed: Vec<IpNet>,
    },
    /// No active rule uses the selector any more; drop its set.
    SelectorRemoved(SelectorId),
    /// Interface name prefixes of workload interfaces (FelixConfiguration `interfacePrefix`).
    InterfacePrefixes(Vec<String>),
    /// BGP settings for this node from the datastore (Calico BGPConfiguration, this node's
    /// Node, BGPPeers selecting it): once before the first `InSync` (even if empty), then
    /// whenever they change.
    Bgp(DatastoreBgp),
    /// `ClusterInformation.datastoreReady`: while false, no other event is emitted.
    DatastoreReady(bool),
    /// The first complete snapshot has been delivered.
    InSync,
}

/// A resource that was rejected (kept for `skogctl status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedResource {
    /// The key (or file and document) of the resource.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// A summary for `skogctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelStatus {
    /// Whether the datastore delivered a full snapshot.
    pub in_sync: bool,
    /// Whether the datastore is connected right now.
    pub connected: bool,
    /// `ClusterInformation.datastoreReady` (absent counts as ready).
    pub datastore_ready: bool,
    /// Workload endpoints known (all nodes).
    pub endpoints: usize,
    /// This node's endpoints.
    pub local_endpoints: usize,
    /// Policies known.
    pub policies: usize,
    /// Resources currently rejected.
    pub rejected: Vec<RejectedResource>,
    /// Rejections since start.
    pub rejected_total: u64,
}

/// Interface prefix for OpenStack when no FelixConfiguration says otherwise.
const DEFAULT_INTERFACE_PREFIX: &str = "tap";

/// The model. See the module documentation.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    namespace: String,
    endpoints: HashMap<EndpointId, Arc<WorkloadEndpoint>>,
    policies: HashMap<PolicyId, Arc<Policy>>,
    profiles: HashMap<String, Arc<Profile>>,
    datastore_ready: Option<bool>,
    prefix_default: Option<Vec<String>>,
    prefix_node: Option<Vec<String>>,
    /// BGPPeers by resource name (every node's: selection is done at flush).
    bgp_peers: BTreeMap<String, BgpPeer>,
    /// BGPConfiguration `node.<host>`, then `default`.
    bgp_configs: [Option<BgpConfiguration>; 2],
    /// This node's Node resource.
    node: Option<Node>,
    rejected: BTreeMap<String, String>,
    source_errors: BTreeMap<String, String>,
    rejected_total: u64,
    in_sync: bool,
    connected: bool,

    /// Endpoints changed since the last flush, with their value as of that flush.
    dirty_endpoints: HashMap<EndpointId, Option<Arc<WorkloadEndpoint>>>,
    /// A policy or profile changed since the last flush.
    rules_dirty: bool,

    emitted_endpoints: BTreeMap<EndpointId, LocalEndpoint>,
    emitted_policies: BTreeMap<PolicyId, Arc<Policy>>,
    emitted_profiles: BTreeMap<String, Arc<Profile>>,
    /// Per active selector: matching networks with the number of endpoints contributing each.
    memberships: HashMap<SelectorId, BTreeMap<IpNet, u32>>,
    emitted_ready: Option<bool>,
    emitted_prefixes: Option<Vec<String>>,
    emitted_bgp: Option<DatastoreBgp>,
    emitted_in_sync: bool,
}

impl Model {
    /// An empty model.
    pub fn new(config: ModelConfig) -> Model {
        Model {
            namespace: openstack_namespace(config.region.as_deref()),
            config,
            endpoints: HashMap::new(),
            policies: HashMap::new(),
            profiles: HashMap::new(),
            datastore_ready: None,
            prefix_default: None,
            prefix_node: None,
            bgp_peers: BTreeMap::new(),
            bgp_configs: [None, None],
            node: None,
            rejected: BTreeMap::new(),
            source_errors: BTreeMap::new(),
            rejected_total: 0,
            in_sync: false,
            connected: false,
            dirty_endpoints: HashMap::new(),
            rules_dirty: false,
            emitted_endpoints: BTreeMap::new(),
            emitted_policies: BTreeMap::new(),
            emitted_profiles: BTreeMap::new(),
            memberships: HashMap::new(),
            emitted_ready: None,
            emitted_prefixes: None,
            emitted_bgp: None,
            emitted_in_sync: false,
        }
    }

    /// Applies one raw change. Nothing is emitted until [`Model::flush`].
    pub fn apply(&mut self, change: &KvChange) {
        let key = match ResourceKey::parse(&change.key) {
            Ok(key) => key,
            Err(KeyError::IgnoredKind(_)) => return,
            Err(KeyError::Malformed(reason)) => {
                match change.value {
                    Some(_) => self.reject(&change.key, reason),
                    None => {
                        self.rejected.remove(&change.key);
                    }
                }
                return;
            }
        };
        if key.kind.is_namespaced() && key.namespace.as_deref() != Some(self.namespace.as_str()) {
            debug!(key = %change.key, "ignoring a resource outside namespace {}", self.namespace);
            return;
        }
        if !self.concerns_this_node(&key) {
            debug!(key = %change.key, "ignoring another node's resource");
            return;
        }
        match &change.value {
            None => {
                self.rejected.remove(&change.key);
                self.remove(&key);
            }
            Some(bytes) => match resource::decode(&key, bytes) {
                Ok(resource) => {
                    self.rejected.remove(&change.key);
                    self.insert(&key, resource);
                }
                Err(reason) => self.reject(&change.key, reason),
            },
        }
    }

    /// The datastore delivered its first complete snapshot: the next flush emits everything.
    pub fn set_in_sync(&mut self) {
        self.in_sync = true;
    }

    /// Records whether the datastore is reachable (status only: losing it changes nothing).
    pub fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
    }

    /// Replaces the set of errors the datastore itself found (unparseable files, say).
    pub fn set_source_errors(&mut self, errors: BTreeMap<String, String>) {
        for (origin, reason) in &errors {
            if self.source_errors.get(origin) != Some(reason) {
                warn!(origin, reason, "rejected datastore input");
                self.rejected_total += 1;
            }
        }
        self.source_errors = errors;
    }

    fn reject(&mut self, key: &str, reason: String) {
        warn!(
            key,
            reason, "rejected resource; keeping its last valid version, if any"
        );
        self.rejected_total += 1;
        self.rejected.insert(key.to_owned(), reason);
    }

    fn insert(&mut self, key: &ResourceKey, resource: Resource) {
        match resource {
            Resource::WorkloadEndpoint(endpoint) => {
                let id = endpoint.id.clone();
                let old = self.endpoints.insert(id.clone(), Arc::new(endpoint));
                self.dirty_endpoints.entry(id).or_insert(old);
            }
            Resource::NetworkPolicy(policy) => {
                self.policies.insert(policy.id.clone(), Arc::new(policy));
                self.rules_dirty = true;
            }
            Resource::Profile(profile) => {
                self.profiles
                    .insert(profile.name.clone(), Arc::new(profile));
                self.rules_dirty = true;
            }
            Resource::ClusterInformation(info) => {
                if key.name == "default" {
                    self.datastore_ready = info.datastore_ready;
                }
            }
            Resource::FelixConfiguration(config) => {
                if let Some(slot) = self.felix_config_slot_for(&key.name) {
                    *slot = config.interface_prefix;
                }
            }
            Resource::BgpPeer(peer) => {
                self.bgp_peers.insert(key.name.clone(), peer);
            }
            Resource::BgpConfiguration(config) => {
                if let Some(slot) = self.bgp_config_slot_for(&key.name) {
                    *slot = Some(config);
                }
            }
            Resource::Node(node) => self.node = Some(node),
        }
    }

    fn remove(&mut self, key: &ResourceKey) {
        let namespace = key.namespace.clone().unwrap_or_default();
        match key.kind {
            Kind::WorkloadEndpoint => {
                if let Ok(id) = EndpointId::from_name(&namespace, &key.name)
                    && let Some(old) = self.endpoints.remove(&id)
                {
                    self.dirty_endpoints.entry(id).or_insert(Some(old));
                }
            }
            Kind::NetworkPolicy => {
                let id = PolicyId {
                    namespace,
                    name: key.name.clone(),
                };
                self.rules_dirty |= self.policies.remove(&id).is_some();
            }
            Kind::Profile => self.rules_dirty |= self.profiles.remove(&key.name).is_some(),
            Kind::ClusterInformation => {
                if key.name == "default" {
                    self.datastore_ready = None;
                }
            }
            Kind::FelixConfiguration => {
                if let Some(slot) = self.felix_config_slot_for(&key.name) {
                    *slot = None;
                }
            }
            Kind::BgpPeer => {
                self.bgp_peers.remove(&key.name);
            }
            Kind::BgpConfiguration => {
                if let Some(slot) = self.bgp_config_slot_for(&key.name) {
                    *slot = None;
                }
            }
            Kind::Node => self.node = None,
        }
    }

    /// Node resources and BGPConfigurations of other nodes are not read (so their problems
    /// are not this node's); everything else is.
    fn concerns_this_node(&self, key: &ResourceKey) -> bool {
        match key.kind {
            Kind::Node => key.name == self.config.hostname,
            Kind::BgpConfiguration => self.bgp_config_index(&key.name).is_some(),
            _ => true,
        }
    }

    /// Index into `bgp_configs`: 0 for `node.<host>`, 1 for `default`.
    fn bgp_config_index(&self, name: &str) -> Option<usize> {
        if name.strip_prefix("node.") == Some(self.config.hostname.as_str()) {
            Some(0)
        } else {
            (name == "default").then_some(1)
        }
    }

    fn bgp_config_slot_for(&mut self, name: &str) -> Option<&mut Option<BgpConfiguration>> {
        let index = self.bgp_config_index(name)?;
        self.bgp_configs.get_mut(index)
    }

    fn felix_config_slot_for(&mut self, name: &str) -> Option<&mut Option<Vec<String>>> {
        if name == "default" {
            Some(&mut self.prefix_default)
        } else if name.strip_prefix("node.") == Some(self.config.hostname.as_str()) {
            Some(&mut self.prefix_node)
        } else {
            None
        }
    }

    /// The events since the last flush, in an order consumers can apply directly: selector
    /// memberships, then policies and profiles, then endpoints; removals in reverse.
    pub fn flush(&mut self) -> Vec<ModelEvent> {
        let mut events = Vec::new();
        if !self.in_sync {
            return events;
        }
        let ready = self.datastore_ready != Some(false);
        if self.emitted_ready != Some(ready) {
            self.emitted_ready = Some(ready);
            events.push(ModelEvent::DatastoreReady(ready));
        }
        if !ready {
            return events;
        }
        let prefixes = self
            .prefix_node
            .clone()
            .or_else(|| self.prefix_default.clone())
            .unwrap_or_else(|| vec![DEFAULT_INTERFACE_PREFIX.to_owned()]);
        if self.emitted_prefixes.as_ref() != Some(&prefixes) {
            self.emitted_prefixes = Some(prefixes.clone());
            events.push(ModelEvent::InterfacePrefixes(prefixes));
        }
        let [node_config, default_config] = &self.bgp_configs;
        let bgp = bgp::for_node(
            &self.config.hostname,
            self.node.as_ref(),
            [node_config.as_ref(), default_config.as_ref()],
            &self.bgp_peers,
        );
        if self.emitted_bgp.as_ref() != Some(&bgp) {
            self.emitted_bgp = Some(bgp.clone());
            events.push(ModelEvent::Bgp(bgp));
        }

        let (endpoint_updates, endpoint_removals) = self.diff_local_endpoints();
        let (policy_updates, policy_removals) = self.diff_policies();
        let (profile_updates, profile_removals) = self.diff_profiles();
        let (membership, selector_removals) = self.diff_memberships();

        events.extend(membership);
        events.extend(policy_updates.into_iter().map(ModelEvent::PolicyUpdated));
        events.extend(profile_updates.into_iter().map(ModelEvent::ProfileUpdated));
        events.extend(
            endpoint_updates
                .into_iter()
                .map(ModelEvent::EndpointUpdated),
        );
        events.extend(
            endpoint_removals
                .into_iter()
                .map(ModelEvent::EndpointRemoved),
        );
        events.extend(policy_removals.into_iter().map(ModelEvent::PolicyRemoved));
        events.extend(profile_removals.into_iter().map(ModelEvent::ProfileRemoved));
        events.extend(
            selector_removals
                .into_iter()
                .map(ModelEvent::SelectorRemoved),
        );

        self.dirty_endpoints.clear();
        self.rules_dirty = false;
        if !self.emitted_in_sync {
            self.emitted_in_sync = true;
            events.push(ModelEvent::InSync);
        }
        events
    }

    fn is_local(&self, endpoint: &WorkloadEndpoint) -> bool {
        endpoint.id.host == self.config.hostname
    }

    fn local_view(&self, endpoint: &Arc<WorkloadEndpoint>) -> LocalEndpoint {
        let mut policies: Vec<&Policy> = self
            .policies
            .values()
            .filter(|p| {
                p.id.namespace == endpoint.id.namespace && p.selector.matches(&endpoint.labels)
            })
            .map(Arc::as_ref)
            .collect();
        policies.sort_by(|a, b| {
            let order = |p: &Policy| p.order.unwrap_or(f64::INFINITY);
            order(a)
                .total_cmp(&order(b))
                .then_with(|| a.id.name.cmp(&b.id.name))
        });
        LocalEndpoint {
            endpoint: Arc::clone(endpoint),
            policies: policies.into_iter().map(|p| p.id.clone()).collect(),
            profiles: endpoint.profiles.clone(),
        }
    }

    /// Recomputes the views of local endpoints that may have changed; updates the emitted set.
    fn diff_local_endpoints(&mut self) -> (Vec<LocalEndpoint>, Vec<EndpointId>) {
        let candidates: BTreeSet<EndpointId> = if self.rules_dirty {
            self.endpoints
                .values()
                .filter(|e| self.is_local(e))
                .map(|e| e.id.clone())
                .chain(self.emitted_endpoints.keys().cloned())
                .collect()
        } else {
            self.dirty_endpoints.keys().cloned().collect()
        };
        let (mut updates, mut removals) = (Vec::new(), Vec::new());
        for id in candidates {
            let view = self
                .endpoints
                .get(&id)
                .filter(|e| self.is_local(e))
                .map(|e| self.local_view(e));
            match view {
                Some(view) => {
                    if self.emitted_endpoints.get(&id) != Some(&view) {
                        self.emitted_endpoints.insert(id, view.clone());
                        updates.push(view);
                    }
                }
                None => {
                    if self.emitted_endpoints.remove(&id).is_some() {
                        removals.push(id);
                    }
                }
            }
        }
        (updates, removals)
    }

    fn diff_policies(&mut self) -> (Vec<Arc<Policy>>, Vec<PolicyId>) {
        let active: BTreeSet<&PolicyId> = self
            .emitted_endpoints
            .values()
            .flat_map(|v| &v.policies)
            .collect();
        let wanted: BTreeMap<PolicyId, Arc<Policy>> = active
            .into_iter()
            .filter_map(|id| self.policies.get(id).map(|p| (id.clone(), Arc::clone(p))))
            .collect();
        diff_maps(&mut self.emitted_policies, wanted)
    }

    fn diff_profiles(&mut self) -> (Vec<Arc<Profile>>, Vec<String>) {
        let active: BTreeSet<&String> = self
            .emitted_endpoints
            .values()
            .flat_map(|v| &v.profiles)
            .collect();
        let wanted: BTreeMap<String, Arc<Profile>> = active
            .into_iter()
            .filter_map(|name| {
                self.profiles
                    .get(name)
                    .map(|p| (name.clone(), Arc::clone(p)))
            })
            .collect();
        diff_maps(&mut self.emitted_profiles, wanted)
    }

    /// The selectors used by the rules of every emitted policy and profile.
    fn active_selectors(&self) -> BTreeSet<SelectorId> {
        let scoped = |namespace: Option<&String>, rules: &[resource::Rule]| {
            rules
                .iter()
                .flat_map(|r| r.selectors())
                .map(|s| SelectorId {
                    namespace: namespace.cloned(),
                    selector: s.clone(),
                })
                .collect::<Vec<_>>()
        };
        let from_policies = self.emitted_policies.values().flat_map(|p| {
            let ns = Some(&p.id.namespace);
            let mut all = scoped(ns, &p.ingress);
            all.extend(scoped(ns, &p.egress));
            all
        });
        let from_profiles = self.emitted_profiles.values().flat_map(|p| {
            let mut all = scoped(None, &p.ingress);
            all.extend(scoped(None, &p.egress));
            all
        });
        from_policies.chain(from_profiles).collect()
    }

    fn diff_memberships(&mut self) -> (Vec<ModelEvent>, Vec<SelectorId>) {
        let active = self.active_selectors();
        let removed: Vec<SelectorId> = self
            .memberships
            .keys()
            .filter(|s| !active.contains(*s))
            .cloned()
            .collect();
        for id in &removed {
            self.memberships.remove(id);
        }
        let mut events = Vec::new();
        for id in active {
            let change = match self.memberships.get_mut(&id) {
                Some(counts) => apply_dirty(&id, counts, &self.dirty_endpoints, &self.endpoints),
                None => {
                    let mut counts = BTreeMap::new();
                    for endpoint in self.endpoints.values().filter(|e| id.matches(e)) {
                        add_nets(&mut counts, endpoint);
                    }
                    let added = counts.keys().copied().collect();
                    self.memberships.insert(id.clone(), counts);
                    Some((added, Vec::new()))
                }
            };
            if let Some((added, removed)) = change {
                events.push(ModelEvent::SelectorMembership { id, added, removed });
            }
        }
        (events, removed)
    }

    /// A summary for `skogctl status`.
    pub fn status(&self) -> ModelStatus {
        let rejected = self
            .source_errors
            .iter()
            .chain(&self.rejected)
            .map(|(key, reason)| RejectedResource {
                key: key.clone(),
                reason: reason.clone(),
            })
            .collect();
        ModelStatus {
            in_sync: self.in_sync,
            connected: self.connected,
            datastore_ready: self.datastore_ready != Some(false),
            endpoints: self.endpoints.len(),
            local_endpoints: self.endpoints.values().filter(|e| self.is_local(e)).count(),
            policies: self.policies.len(),
            rejected,
            rejected_total: self.rejected_total,
        }
    }

    /// This node's endpoints as last emitted.
    pub fn local_endpoints(&self) -> impl Iterator<Item = &LocalEndpoint> {
        self.emitted_endpoints.values()
    }
}

/// Makes `emitted` equal to `wanted`; returns what was added or changed, and what went away.
fn diff_maps<K: Ord + Clone, V: PartialEq>(
    emitted: &mut BTreeMap<K, Arc<V>>,
    wanted: BTreeMap<K, Arc<V>>,
) -> (Vec<Arc<V>>, Vec<K>) {
    let removals: Vec<K> = emitted
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    for k in &removals {
        emitted.remove(k);
    }
    let mut updates = Vec::new();
    for (k, v) in wanted {
        let same = emitted
            .get(&k)
            .is_some_and(|old| Arc::ptr_eq(old, &v) || **old == *v);
        if !same {
            updates.push(Arc::clone(&v));
            emitted.insert(k, v);
        }
    }
    (updates, removals)
}

fn add_nets(counts: &mut BTreeMap<IpNet, u32>, endpoint: &WorkloadEndpoint) {
    for net in &endpoint.ip_networks {
        *counts.entry(*net).or_insert(0) += 1;
    }
}

fn remove_nets(counts: &mut BTreeMap<IpNet, u32>, endpoint: &WorkloadEndpoint) {
    for net in &endpoint.ip_networks {
        if let Some(n) = counts.get_mut(net) {
            *n -= 1;
            if *n == 0 {
                counts.remove(net);
            }
        }
    }
}

/// Applies the dirty endpoints to one selector's counts; returns (added, removed) if any.
fn apply_dirty(
    id: &SelectorId,
    counts: &mut BTreeMap<IpNet, u32>,
    dirty: &HashMap<EndpointId, Option<Arc<WorkloadEndpoint>>>,
    endpoints: &HashMap<EndpointId, Arc<WorkloadEndpoint>>,
) -> Option<(Vec<IpNet>, Vec<IpNet>)> {
    let mut before: BTreeMap<IpNet, bool> = BTreeMap::new();
    for (endpoint_id, old) in dirty {
        let old = old.as_deref().filter(|e| id.matches(e));
        let new = endpoints
            .get(endpoint_id)
            .map(Arc::as_ref)
            .filter(|e| id.matches(e));
        for e in old.iter().chain(new.iter()) {
            for net in &e.ip_networks {
                before
                    .entry(*net)
                    .or_insert_with(|| counts.contains_key(net));
            }
        }
        if let Some(old) = old {
            remove_nets(counts, old);
        }
        if let Some(new) = new {
            add_nets(counts, new);
        }
    }
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for (net, was) in before {
        match (was, counts.contains_key(&net)) {
            (false, true) => added.push(net),
            (true, false) => removed.push(net),
            _ => {}
        }
    }
    (!added.is_empty() || !removed.is_empty()).then_some((added, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bgp::DatastorePeer;
    use crate::model::fixtures::{
        Port, allow_all_egress, allow_tcp_from_group, bgp_configuration, bgp_peer,
        cluster_information, node, sg_policy,
    };
    use serde_json::{Value, json};
    use std::net::IpAddr;

    const HOST: &str = "compute-01";

    fn model() -> Model {
        let mut m = Model::new(ModelConfig {
            hostname: HOST.into(),
            region: None,
        });
        m.set_in_sync();
        m
    }

    fn put(m: &mut Model, key: &str, value: &Value) {
        m.apply(&KvChange {
            key: key.into(),
            value: Some(serde_json::to_vec(value).unwrap()),
        });
    }

    fn put_port(m: &mut Model, port: &Port) {
        put(m, &port.key(), &port.value());
    }

    fn delete(m: &mut Model, key: &str) {
        m.apply(&KvChange {
            key: key.into(),
            value: None,
        });
    }

    /// SG "web" allows TCP 80 from members of SG "web".
    fn put_web_policy(m: &mut Model) -> String {
        let (key, value) = sg_policy(
            "openstack",
            "web",
            vec![allow_tcp_from_group(80, "web")],
            allow_all_egress(),
        );
        put(m, &key, &value);
        key
    }

    fn web_members() -> SelectorId {
        SelectorId {
            namespace: Some("openstack".into()),
            selector: Selector::parse("has(sg.projectcalico.org/openstack-web)").unwrap(),
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn membership(events: &[ModelEvent]) -> Vec<(Vec<IpNet>, Vec<IpNet>)> {
        events
            .iter()
            .filter_map(|e| match e {
                ModelEvent::SelectorMembership { id, added, removed } if *id == web_members() => {
                    Some((added.clone(), removed.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nothing_is_emitted_before_the_first_snapshot_is_complete() {
        let mut m = Model::new(ModelConfig {
            hostname: HOST.into(),
            region: None,
        });
        put_port(&mut m, &Port::numbered(HOST, 1));
        assert!(m.flush().is_empty());
        m.set_in_sync();
        let events = m.flush();
        assert!(matches!(events.last(), Some(ModelEvent::InSync)));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ModelEvent::EndpointUpdated(_)))
        );
        assert!(m.flush().is_empty(), "a second flush has nothing new");
    }

    #[test]
    fn only_this_nodes_endpoints_are_emitted_but_all_feed_membership() {
        let mut m = model();
        put_web_policy(&mut m);
        let local = Port::numbered(HOST, 1).in_groups(&["web"]);
        let remote = Port::numbered("compute-02", 2).in_groups(&["web"]);
        let outsider = Port::numbered("compute-02", 3).in_groups(&["db"]);
        for p in [&local, &remote, &outsider] {
            put_port(&mut m, p);
        }
        let events = m.flush();
        let endpoints: Vec<&LocalEndpoint> = events
            .iter()
            .filter_map(|e| match e {
                ModelEvent::EndpointUpdated(l) => Some(l),
                _ => None,
            })
            .collect();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].endpoint.id, local.id());
        assert_eq!(endpoints[0].policies[0].name, "ossg.default.web");
        assert!(
            events.iter().any(
                |e| matches!(e, ModelEvent::PolicyUpdated(p) if p.id.name == "ossg.default.web")
            )
        );
        let members = membership(&events);
        assert_eq!(members.len(), 1);
        let mut want = vec![
            net("198.51.100.3/32"),
            net("198.51.100.4/32"),
            net("2001:db8:100::0:1/128"),
            net("2001:db8:100::0:2/128"),
        ];
        want.sort();
        assert_eq!(members[0], (want, vec![]));
        // Membership comes before the policy using it, which comes before the endpoint.
        let position = |f: fn(&ModelEvent) -> bool| events.iter().position(f).unwrap();
        assert!(
            position(|e| matches!(e, ModelEvent::SelectorMembership { .. }))
                < position(|e| matches!(e, ModelEvent::PolicyUpdated(_)))
        );
        assert!(
            position(|e| matches!(e, ModelEvent::PolicyUpdated(_)))
                < position(|e| matches!(e, ModelEvent::EndpointUpdated(_)))
        );
    }

    #[test]
    fn label_changes_move_ips_in_and_out_of_groups() {
        let mut m = model();
        put_web_policy(&mut m);
        put_port(&mut m, &Port::numbered(HOST, 1).in_groups(&["web"]));
        let remote = Port::numbered("compute-02", 2);
        put_port(&mut m, &remote);
        m.flush();

        put_port(&mut m, &remote.clone().in_groups(&["web"]));
        let events = m.flush();
        assert_eq!(
            membership(&events),
            [(
                vec![net("198.51.100.4/32"), net("2001:db8:100::0:2/128")],
                vec![]
            )]
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ModelEvent::EndpointUpdated(_))),
            "remote endpoints are not emitted"
        );

        put_port(&mut m, &remote);
        assert_eq!(
            membership(&m.flush()),
            [(
                vec![],
                vec![net("198.51.100.4/32"), net("2001:db8:100::0:2/128")]
            )]
        );

        // An address change of a member is a remove plus an add.
        let mut moved = remote.clone().in_groups(&["web"]);
        put_port(&mut m, &moved);
        m.flush();
        moved.ip_networks = vec!["198.51.100.99/32".into()];
        put_port(&mut m, &moved);
        assert_eq!(
            membership(&m.flush()),
            [(
                vec![net("198.51.100.99/32")],
                vec![net("198.51.100.4/32"), net("2001:db8:100::0:2/128")]
            )]
        );
    }

    #[test]
    fn shared_networks_are_counted() {
        let mut m = model();
        put_web_policy(&mut m);
        let mut a = Port::numbered(HOST, 1).in_groups(&["web"]);
        let mut b = Port::numbered("compute-02", 2).in_groups(&["web"]);
        a.ip_networks = vec!["203.0.113.0/28".into()];
        b.ip_networks = vec!["203.0.113.0/28".into()];
        put_port(&mut m, &a);
        put_port(&mut m, &b);
        m.flush();
        delete(&mut m, &b.key());
        assert!(membership(&m.flush()).is_empty(), "still contributed by a");
        delete(&mut m, &a.key());
        let events = m.flush();
        assert!(events.contains(&ModelEvent::EndpointRemoved(a.id())));
        assert!(events.contains(&ModelEvent::PolicyRemoved(PolicyId {
            namespace: "openstack".into(),
            name: "ossg.default.web".into()
        })));
        assert!(events.contains(&ModelEvent::SelectorRemoved(web_members())));
    }

    #[test]
    fn policy_changes_update_endpoints_and_selectors() {
        let mut m = model();
        let port = Port::numbered(HOST, 1).in_groups(&["web"]);
        put_port(&mut m, &port);
        let first = m.flush();
        let view = |events: &[ModelEvent]| {
            events.iter().find_map(|e| match e {
                ModelEvent::EndpointUpdated(l) => Some(l.policies.clone()),
                _ => None,
            })
        };
        assert_eq!(view(&first), Some(vec![]));

        let key = put_web_policy(&mut m);
        let events = m.flush();
        assert_eq!(view(&events).map(|p| p.len()), Some(1));
        assert_eq!(membership(&events).len(), 1);

        // A rule change to another remote group swaps the selector.
        let (_, changed) = sg_policy(
            "openstack",
            "web",
            vec![allow_tcp_from_group(80, "db")],
            vec![],
        );
        put(&mut m, &key, &changed);
        let events = m.flush();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ModelEvent::PolicyUpdated(_)))
        );
        assert!(events.contains(&ModelEvent::SelectorRemoved(web_members())));
        assert!(
            view(&events).is_none(),
            "the endpoint's policy list did not change"
        );

        delete(&mut m, &key);
        let events = m.flush();
        assert_eq!(view(&events), Some(vec![]));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ModelEvent::PolicyRemoved(_)))
        );
    }

    #[test]
    fn policies_are_ordered_and_namespace_scoped() {
        let mut m = model();
        let port = Port::numbered(HOST, 1).in_groups(&["a", "b", "c"]);
        put_port(&mut m, &port);
        for (sg, order) in [("a", None), ("b", Some(5.0)), ("c", Some(1.0))] {
            let (key, mut value) = sg_policy("openstack", sg, vec![], vec![]);
            if let Some(order) = order {
                value["spec"]["order"] = json!(order);
            }
            put(&mut m, &key, &value);
        }
        // Same selector, other namespace: ignored (not our region).
        let (key, value) = sg_policy("openstack-region-r2", "a", vec![], vec![]);
        put(&mut m, &key, &value);
        let events = m.flush();
        let names: Vec<String> = events
            .iter()
            .find_map(|e| match e {
                ModelEvent::EndpointUpdated(l) => {
                    Some(l.policies.iter().map(|p| p.name.clone()).collect())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            names,
            ["ossg.default.c", "ossg.default.b", "ossg.default.a"]
        );
        assert_eq!(m.status().policies, 3);
    }

    #[test]
    fn a_region_reads_its_own_namespace() {
        let mut m = Model::new(ModelConfig {
            hostname: HOST.into(),
            region: Some("r2".into()),
        });
        m.set_in_sync();
        let mut port = Port::numbered(HOST, 1);
        put_port(&mut m, &port);
        port.namespace = "openstack-region-r2".into();
        put_port(&mut m, &port);
        let events = m.flush();
        let ids: Vec<EndpointId> = events
            .iter()
            .filter_map(|e| match e {
                ModelEvent::EndpointUpdated(l) => Some(l.endpoint.id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, [port.id()]);
    }

    #[test]
    fn bad_resources_are_rejected_alone_and_the_last_good_version_stays() {
        let mut m = model();
        let good = Port::numbered(HOST, 1);
        let other = Port::numbered(HOST, 2);
        put_port(&mut m, &good);
        m.flush();

        let mut bad = good.value();
        bad["spec"]["mac"] = json!("not-a-mac");
        put(&mut m, &good.key(), &bad);
        m.apply(&KvChange {
            key: "/calico/resources/v3/projectcalico.org/networkpolicies/openstack/x".into(),
            value: Some(b"{oops".to_vec()),
        });
        put_port(&mut m, &other);
        let events = m.flush();
        assert_eq!(events.len(), 1, "only the other endpoint: {events:?}");
        let status = m.status();
        assert_eq!(status.rejected_total, 2);
        assert_eq!(status.rejected.len(), 2);
        assert!(
            status
                .rejected
                .iter()
                .any(|r| r.key == good.key() && r.reason.contains("invalid MAC"))
        );
        assert!(
            status
                .rejected
                .iter()
                .any(|r| r.reason.contains("not valid JSON"))
        );
        assert_eq!(
            m.local_endpoints().count(),
            2,
            "the last good version is kept"
        );

        put_port(&mut m, &good);
        assert!(m.flush().is_empty(), "same as the last good version");
        assert_eq!(m.status().rejected.len(), 1);
        assert_eq!(m.status().rejected_total, 2);
    }

    #[test]
    fn datastore_not_ready_pauses_changes() {
        let mut m = model();
        let port = Port::numbered(HOST, 1);
        put_port(&mut m, &port);
        m.flush();
        let (key, value) = cluster_information(false);
        put(&mut m, &key, &value);
        delete(&mut m, &port.key());
        put_port(&mut m, &Port::numbered(HOST, 2));
        assert_eq!(m.flush(), [ModelEvent::DatastoreReady(false)]);
        assert!(m.flush().is_empty());
        let (key, value) = cluster_information(true);
        put(&mut m, &key, &value);
        let events = m.flush();
        assert_eq!(events[0], ModelEvent::DatastoreReady(true));
        assert!(events.contains(&ModelEvent::EndpointRemoved(port.id())));
        assert!(events.iter().any(|e| matches!(e, ModelEvent::EndpointUpdated(l) if l.endpoint.id == Port::numbered(HOST, 2).id())));
    }

    #[test]
    fn interface_prefix_from_felix_configuration() {
        let mut m = model();
        let events = m.flush();
        assert!(events.contains(&ModelEvent::InterfacePrefixes(vec!["tap".into()])));
        let key = "/calico/resources/v3/projectcalico.org/felixconfigurations/default";
        put(
            &mut m,
            key,
            &json!({"kind": "FelixConfiguration", "spec": {"interfacePrefix": "tap,vnet"}}),
        );
        assert_eq!(
            m.flush(),
            [ModelEvent::InterfacePrefixes(vec![
                "tap".into(),
                "vnet".into()
            ])]
        );
        let node =
            format!("/calico/resources/v3/projectcalico.org/felixconfigurations/node.{HOST}");
        put(
            &mut m,
            &node,
            &json!({"kind": "FelixConfiguration", "spec": {"interfacePrefix": "qvo"}}),
        );
        assert_eq!(
            m.flush(),
            [ModelEvent::InterfacePrefixes(vec!["qvo".into()])]
        );
        let other = "/calico/resources/v3/projectcalico.org/felixconfigurations/node.compute-99";
        put(
            &mut m,
            other,
            &json!({"kind": "FelixConfiguration", "spec": {"interfacePrefix": "x"}}),
        );
        assert!(m.flush().is_empty());
    }

    #[test]
    fn profiles_are_tolerated() {
        let mut m = model();
        let port = Port::numbered(HOST, 1);
        let mut value = port.value();
        value["spec"]["profiles"] = json!(["openstack-sg-x"]);
        put(&mut m, &port.key(), &value);
        put(
            &mut m,
            "/calico/resources/v3/projectcalico.org/profiles/openstack-sg-x",
            &json!({"kind": "Profile", "spec": {"ingress": [{"action": "Allow", "source": {"selector": "has(x)"}}]}}),
        );
        let events = m.flush();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ModelEvent::ProfileUpdated(p) if p.name == "openstack-sg-x"))
        );
        assert!(events.iter().any(
            |e| matches!(e, ModelEvent::SelectorMembership { id, .. } if id.namespace.is_none())
        ));
    }

    #[test]
    fn mutated_values_never_panic_and_are_rejected_or_accepted_alone() {
        let mut m = model();
        let port = Port::numbered(HOST, 1).in_groups(&["web"]);
        let (policy_key, policy) = sg_policy(
            "openstack",
            "web",
            vec![allow_tcp_from_group(80, "web")],
            allow_all_egress(),
        );
        let seeds = [
            (port.key(), serde_json::to_vec(&port.value()).unwrap()),
            (policy_key, serde_json::to_vec(&policy).unwrap()),
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..5_000 {
            let (key, original) = &seeds[round % seeds.len()];
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => {
                        let alphabet = b"{}[]\":,0-/";
                        bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            m.apply(&KvChange {
                key: key.clone(),
                value: Some(bytes),
            });
            m.flush();
        }
        // Restoring the valid values brings everything back.
        for (key, value) in &seeds {
            m.apply(&KvChange {
                key: key.clone(),
                value: Some(value.clone()),
            });
        }
        m.flush();
        assert!(m.status().rejected.is_empty());
        let local: Vec<&LocalEndpoint> = m.local_endpoints().collect();
        assert_eq!(local.len(), 1);
        assert_eq!(local[0].policies.len(), 1);
    }

    fn bgp_events(events: &[ModelEvent]) -> Vec<DatastoreBgp> {
        events
            .iter()
            .filter_map(|e| match e {
                ModelEvent::Bgp(bgp) => Some(bgp.clone()),
                _ => None,
            })
            .collect()
    }

    fn put_pair(m: &mut Model, (key, value): (String, Value)) -> String {
        put(m, &key, &value);
        key
    }

    #[test]
    fn bgp_settings_are_emitted_at_start_and_when_they_change_for_this_node() {
        let mut m = model();
        let events = m.flush();
        assert_eq!(bgp_events(&events), [DatastoreBgp::default()]);
        let position = |f: fn(&ModelEvent) -> bool| events.iter().position(f);
        assert!(
            position(|e| matches!(e, ModelEvent::Bgp(_))) < position(|e| *e == ModelEvent::InSync)
        );

        let mine = put_pair(
            &mut m,
            bgp_peer(
                "tor-a",
                json!({"node": HOST, "peerIP": "192.0.2.1", "asNumber": 65001}),
            ),
        );
        let peers = &bgp_events(&m.flush())[0].peers;
        assert_eq!(
            peers,
            &[DatastorePeer {
                name: "bgppeer/tor-a".into(),
                address: "192.0.2.1".parse().unwrap(),
                port: None,
                asn: 65001,
                source_address: None,
                ttl_security_hops: None,
                max_restart_time_s: None,
                keep_original_next_hop: false,
            }]
        );
        // Another node's peer, Node and BGPConfiguration: nothing for this node.
        put_pair(
            &mut m,
            bgp_peer(
                "tor-b",
                json!({"node": "compute-02", "peerIP": "192.0.2.3", "asNumber": 65001}),
            ),
        );
        put_pair(
            &mut m,
            node("compute-02", json!({"rack": "r1"}), json!({"asNumber": 1})),
        );
        put_pair(
            &mut m,
            bgp_configuration("node.compute-02", json!({"asNumber": 2})),
        );
        put_pair(
            &mut m,
            bgp_peer(
                "rack-r1",
                json!({"nodeSelector": "rack == 'r1'", "peerIP": "2001:db8::1", "asNumber": 65002}),
            ),
        );
        assert!(bgp_events(&m.flush()).is_empty());

        // This node's Node: labels select rack-r1; addresses become sources; its AS wins.
        let node_key = put_pair(
            &mut m,
            node(
                HOST,
                json!({"rack": "r1"}),
                json!({"asNumber": 65101,
                "ipv4Address": "192.0.2.2/24", "ipv6Address": "2001:db8::2/64"}),
            ),
        );
        put_pair(
            &mut m,
            bgp_configuration("default", json!({"asNumber": 64512, "listenPort": 1790})),
        );
        let bgp = bgp_events(&m.flush()).pop().unwrap();
        assert_eq!(bgp.asn, Some(65101));
        assert_eq!(bgp.router_id, Some("192.0.2.2".parse().unwrap()));
        assert_eq!(bgp.listen_port, Some(1790));
        let summary: Vec<(&str, Option<IpAddr>)> = bgp
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.source_address))
            .collect();
        assert_eq!(
            summary,
            [
                ("bgppeer/rack-r1", Some("2001:db8::2".parse().unwrap())),
                ("bgppeer/tor-a", Some("192.0.2.2".parse().unwrap())),
            ]
        );
        // The node-specific configuration's AS counts once the Node has none.
        put_pair(
            &mut m,
            bgp_configuration(&format!("node.{HOST}"), json!({"asNumber": 64513})),
        );
        assert!(
            bgp_events(&m.flush()).is_empty(),
            "the Node's AS still wins"
        );
        delete(&mut m, &node_key);
        let bgp = bgp_events(&m.flush()).pop().unwrap();
        assert_eq!((bgp.asn, bgp.router_id), (Some(64513), None));
        assert_eq!(
            bgp.peers.len(),
            1,
            "no labels: rack-r1 no longer selects this node"
        );
        delete(&mut m, &mine);
        assert_eq!(bgp_events(&m.flush()).pop().unwrap().peers, []);
        assert!(m.status().rejected.is_empty());
    }

    #[test]
    fn a_bad_bgp_peer_is_rejected_by_name_and_its_last_version_stays() {
        let mut m = model();
        let (key, good) = bgp_peer("tor-a", json!({"peerIP": "192.0.2.1", "asNumber": 65001}));
        put(&mut m, &key, &good);
        let before = bgp_events(&m.flush()).pop().unwrap();
        let (_, bad) = bgp_peer(
            "tor-a",
            json!({"peerIP": "192.0.2.1", "asNumber": 65001,
                   "password": {"secretKeyRef": {"name": "bgp", "key": "tor-a"}}}),
        );
        put(&mut m, &key, &bad);
        let (other, node_to_node) =
            bgp_peer("mesh", json!({"peerSelector": "all()", "asNumber": 64512}));
        put(&mut m, &other, &node_to_node);
        assert!(
            bgp_events(&m.flush()).is_empty(),
            "the last valid version stays"
        );
        let status = m.status();
        assert_eq!(status.rejected.len(), 2, "{status:?}");
        assert!(
            status
                .rejected
                .iter()
                .any(|r| r.key == key && r.reason.contains("spec.password"))
        );
        assert!(
            status
                .rejected
                .iter()
                .any(|r| r.key == other && r.reason.contains("peerSelector"))
        );
        delete(&mut m, &key);
        assert_ne!(bgp_events(&m.flush()).pop().unwrap(), before);
    }
}
