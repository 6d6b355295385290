//! The API's response types (version 1). Field names are part of the contract: `skogctl -o json`
//! prints them as they are.

use serde::{Deserialize, Serialize};

/// `GET /v1/status`: the daemon at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// skogd's version.
    pub version: String,
    /// This node's name.
    pub node_name: String,
    /// Seconds since skogd started.
    pub uptime_s: u64,
    /// The datastore connection.
    pub datastore: DatastoreStatus,
    /// Local endpoints by state.
    pub endpoints: EndpointCounts,
    /// Routes Skog has in the kernel (endpoint and learned).
    pub routes_programmed: u64,
    /// Peers by state.
    pub peers: PeerCounts,
    /// Resources the datastore rejected, with the reason.
    pub rejected: Vec<Rejected>,
}

/// The datastore's side of [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatastoreStatus {
    /// `etcd` or `file`.
    pub kind: String,
    /// `syncing`, `in-sync` or `disconnected`.
    pub state: String,
    /// ClusterInformation's `datastoreReady` (false pauses dataplane changes).
    pub ready: bool,
    /// The last error talking to it.
    pub last_error: Option<String>,
}

/// Local endpoints by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCounts {
    /// Tap present and up; routes and rules programmed.
    pub up: u64,
    /// Tap missing or down.
    pub down: u64,
    /// Could not be programmed.
    pub error: u64,
}

/// BGP peers by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounts {
    /// Configured peers.
    pub total: u64,
    /// Peers in Established.
    pub established: u64,
}

/// A resource the datastore rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Its key (etcd key or file:document).
    pub key: String,
    /// Why.
    pub reason: String,
}

/// `GET /v1/peers`: one BGP peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Configured name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its AS number.
    pub asn: u32,
    /// FSM state (`Idle`, `Connect`, `Active`, `OpenSent`, `OpenConfirm`, `Established`).
    pub state: String,
    /// Seconds in the current state.
    pub uptime_s: u64,
    /// Prefixes received.
    pub received: u64,
    /// Prefixes accepted by the import filter.
    pub accepted: u64,
    /// Prefixes advertised.
    pub advertised: u64,
    /// The last error (a NOTIFICATION sent or received, a socket error).
    pub last_error: Option<String>,
}

/// Which routes `GET /v1/routes` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteFilter {
    /// Routes advertised to this peer.
    #[serde(default)]
    pub advertised: Option<String>,
    /// Routes received from this peer.
    #[serde(default)]
    pub received: Option<String>,
    /// Skog's routes as the kernel has them.
    #[serde(default)]
    pub kernel: bool,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// The prefix.
    pub prefix: String,
    /// Next hops (`via 192.0.2.0 dev up-tor1`, `dev tap…`).
    pub next_hops: Vec<String>,
    /// Where it comes from: `endpoint`, `bgp <peer>`, `kernel`.
    pub origin: String,
    /// Seconds since it was installed or learned.
    pub age_s: Option<u64>,
}

/// `GET /v1/endpoints`: one local endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The tap.
    pub interface: String,
    /// The Neutron port id.
    pub port_id: String,
    /// The workload (VM) id.
    pub workload: String,
    /// The VM's MAC.
    pub mac: String,
    /// Its addresses (ipNetworks).
    pub addresses: Vec<String>,
    /// Its floating IPs (`external -> internal`).
    pub floating_ips: Vec<String>,
    /// `up`, `down`, `missing` (no tap) or `error`.
    pub state: String,
    /// Security groups applied to it.
    pub security_groups: Vec<String>,
    /// What we reported to the datastore (`up`, `down`, `error`).
    pub reported_status: String,
    /// Why it is in error, if it is.
    pub last_error: Option<String>,
}

/// `GET /v1/policy/{interface}`: the rules in force for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyShow {
    /// The tap.
    pub interface: String,
    /// The endpoint's chains as `nft list` shows them, with packet counters.
    pub ruleset: String,
}

/// `GET /v1/policy-trace?src=..&dst=..&proto=..[&port=..]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceQuery {
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// Protocol name or number.
    pub proto: String,
    /// Destination port, for TCP/UDP/SCTP.
    #[serde(default)]
    pub port: Option<u16>,
}

/// Which rule decides a packet, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceResult {
    /// `allow` or `drop`.
    pub verdict: String,
    /// The deciding rule (`policy ossg.default.web ingress rule 2`), or none for a default.
    pub rule: Option<String>,
    /// Human-readable reason.
    pub reason: String,
    /// The chains the packet goes through, in order.
    pub path: Vec<String>,
}
