//! skog-bgp: a BGP-4 speaker library for a hypervisor.
//!
//! It keeps a handful of sessions to top-of-rack routers, announces the hypervisor's endpoint
//! routes (next-hop self) and learns fabric routes, which it hands to the agent as
//! [`RouteEvent`]s; it never touches netlink itself. See `docs/bgp.md`.
//!
//! Layers, each in its own module:
//! - [`codec`]: frames and messages (netgauze-bgp-pkt underneath), RFC 7606 treatment;
//! - [`aspath`]: AS path segments and the RFC 6793 AS4_PATH transition;
//! - [`pack`]: outgoing UPDATEs packed to the negotiated size;
//! - [`fsm`]: the RFC 4271 session state machine, pure (events in, actions out);
//! - [`rib`]: Adj-RIB-In, Loc-RIB best path with ECMP, Adj-RIB-Out;
//! - [`converge`]: when the initial routing information is complete (RFC 4724 §4.1);
//! - `session`: the tokio driver of one peer (sockets, timers, connection collisions);
//! - [`speaker`]: the task owning the RIBs, and its [`SpeakerHandle`].

pub mod aspath;
pub mod codec;
pub mod config;
pub mod converge;
pub mod fsm;
pub mod pack;
pub mod rib;
mod session;
mod sockopt;
pub mod speaker;

pub use config::{PeerConfig, SpeakerConfig};
pub use rib::RouteEvent;
pub use speaker::{
    LearnedRoute, PeerRoute, PeerSnapshot, RibSide, Shutdown, Speaker, SpeakerError, SpeakerHandle,
};
