//! Shared helpers of the datastore integration tests: a test bed with etcd, etcdctl from a
//! chosen namespace, and bounded waits on channels.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use skog_testbed::{HvId, Testbed};
use tokio::sync::mpsc;

/// Upper bound of every wait in these tests (a hang fails instead of blocking the run).
pub const BOUND: Duration = Duration::from_secs(60);

/// A test bed with etcd on the management network, a compute node (where the code under test
/// runs) and a controller (where etcdctl runs, as networking-calico would).
pub struct EtcdBed {
    pub tb: Testbed,
    pub compute: HvId,
    pub controller_ns: String,
    pub url: String,
}

impl EtcdBed {
    /// Runs `work` to completion on a runtime inside the compute node's namespace.
    pub fn on_compute<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tb
            .hv(self.compute)
            .unwrap()
            .ns()
            .enter(move || runtime().block_on(work))
            .unwrap();
    }
}

pub fn etcd_bed(label: &str) -> EtcdBed {
    init_logging();
    let mut tb = Testbed::new(label).unwrap();
    let compute = tb.add_hypervisor("compute-01", 65001).unwrap();
    let controller = tb.add_hypervisor("controller", 65002).unwrap();
    let url = tb.start_etcd().unwrap();
    let controller_ns = tb.hv(controller).unwrap().ns().name().to_owned();
    EtcdBed {
        tb,
        compute,
        controller_ns,
        url,
    }
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "skog_agent=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Runs `etcdctl --endpoints <url> <args>` inside namespace `ns` (bounded); returns stdout.
pub fn etcdctl(ns: &str, url: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "etcdctl", "--endpoints", url]);
    cmd.args(args);
    skog_testbed::run_checked(&mut cmd, Duration::from_secs(20)).unwrap()
}

pub fn put_json(ns: &str, url: &str, key: &str, value: &Value) {
    etcdctl(ns, url, &["put", key, &value.to_string()]);
}

/// The current etcd revision.
pub fn revision(ns: &str, url: &str) -> i64 {
    let out = etcdctl(ns, url, &["get", "/", "-w", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

/// A current-thread runtime (built inside a namespace thread).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Receives until `pred` picks an item; everything seen is returned for diagnostics.
pub async fn recv_until<T: std::fmt::Debug, R>(
    rx: &mut mpsc::Receiver<T>,
    what: &str,
    mut pred: impl FnMut(&T) -> Option<R>,
) -> R {
    let mut seen = Vec::new();
    let result = tokio::time::timeout(BOUND, async {
        while let Some(item) = rx.recv().await {
            if let Some(r) = pred(&item) {
                return Some(r);
            }
            seen.push(item);
        }
        None
    })
    .await;
    match result {
        Ok(Some(r)) => r,
        Ok(None) => panic!("channel closed waiting for {what}; saw {seen:#?}"),
        Err(_) => panic!("timed out waiting for {what}; saw {seen:#?}"),
    }
}
