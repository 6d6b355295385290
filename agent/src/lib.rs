//! skogd and skogctl: the per-node agent.

pub mod config;
