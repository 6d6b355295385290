//! The local API: HTTP/JSON on a Unix socket (never a network socket), versioned under `/v1`.
//! [`types`] is the contract skogctl reads; [`server`] turns requests into [`ApiRequest`]
//! messages for the task that owns the state; [`client`] is skogctl's side.

pub mod client;
pub mod server;
pub mod types;

use tokio::sync::oneshot;

use types::{
    EndpointStatus, PeerStatus, PolicyShow, RouteEntry, RouteFilter, Status, TraceQuery,
    TraceResult,
};

/// A question for the daemon, answered on its `reply` channel by the task that owns the state.
#[derive(Debug)]
pub enum ApiRequest {
    /// `GET /v1/status`.
    Status { reply: oneshot::Sender<Status> },
    /// `GET /v1/peers`.
    Peers {
        reply: oneshot::Sender<Vec<PeerStatus>>,
    },
    /// `GET /v1/routes?...`.
    Routes {
        filter: RouteFilter,
        reply: oneshot::Sender<Result<Vec<RouteEntry>, String>>,
    },
    /// `GET /v1/endpoints`.
    Endpoints {
        reply: oneshot::Sender<Vec<EndpointStatus>>,
    },
    /// `GET /v1/policy/{interface}`.
    PolicyShow {
        interface: String,
        reply: oneshot::Sender<Result<PolicyShow, String>>,
    },
    /// `GET /v1/policy-trace?...`.
    PolicyTrace {
        query: TraceQuery,
        reply: oneshot::Sender<Result<TraceResult, String>>,
    },
}
