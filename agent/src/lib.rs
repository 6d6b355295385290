//! skogd and skogctl: the per-node agent.

pub mod allocator;
pub mod api;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod datastore;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod systemd;
