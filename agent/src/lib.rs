//! skogd and skogctl: the per-node agent (built under the datastore, dataplane and daemon issues).

pub mod dataplane;
