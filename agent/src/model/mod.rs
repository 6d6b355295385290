//! The one in-memory model of the Calico v3 data model that both datastores (etcd and files)
//! feed: it owns every decoded resource, decides which endpoints are this node's, which
//! policies apply to each, and which IPs every rule selector matches, and turns changes into
//! fine-grained [`ModelEvent`]s for the route dataplane, the policy compiler and BGP (including
//! this node's BGP peers from Calico's BGPPeer, BGPConfiguration and Node resources).
//!
//! It is a pure state machine: [`Model::apply`] takes raw key/value changes, [`Model::flush`]
//! returns the events since the last flush. Bad resources are rejected alone and remembered for
//! `skogctl status`; the last valid version of a rejected key stays in force.

pub mod bgp;
pub mod fixtures;
pub mod key;
pub mod resource;
pub mod selector;
mod state;

pub use bgp::{DatastoreBgp, DatastorePeer};
pub use key::{EndpointId, Kind, RESOURCE_PREFIX, ResourceKey};
pub use resource::{
    Action, EntityRule, IcmpMatch, IpNat, IpVersion, MacAddr, Policy, PolicyId, PortRange, Profile,
    Rule, WorkloadEndpoint,
};
pub use selector::{Selector, SelectorError};
pub use state::{
    KvChange, LocalEndpoint, Model, ModelConfig, ModelEvent, ModelStatus, RejectedResource,
    SelectorId,
};
