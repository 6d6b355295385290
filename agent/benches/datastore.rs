//! Datastore benchmarks against a real etcd in a test bed:
//! - initial sync of 10,000 endpoints on 100 nodes and 1,000 security-group policies from etcd
//!   into the model (until `InSync`), beside `etcdctl get --prefix` of the same keys;
//! - latency from an etcd put to the model's change event, beside the same put seen by a raw
//!   etcd watch in the same run.
//!
//! `cargo bench -p skog-agent --bench datastore [-- --quick]`; prints `BENCH {...}` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use etcd_client::{Client, WatchOptions};
use serde_json::json;
use skog_agent::datastore::etcd::{self, EtcdConfig};
use skog_agent::datastore::run_model;
use skog_agent::model::fixtures::{Port, allow_all_egress, allow_tcp_from_group, sg_policy};
use skog_agent::model::{Model, ModelConfig, ModelEvent, ModelStatus, RESOURCE_PREFIX};
use skog_testbed::Testbed;
use tokio::sync::{mpsc, watch};

const NODES: usize = 100;
const PORTS_PER_NODE: usize = 100;
const GROUPS: usize = 1000;
const HOST: &str = "compute-0";

fn host(node: usize) -> String {
    format!("compute-{node}")
}

fn group(i: usize) -> String {
    format!("sg{i:04}")
}

/// Port `n`: in two security groups, so every group has about 20 members.
fn port(n: usize) -> Port {
    let (g1, g2) = (group(n % GROUPS), group((n * 7 + 3) % GROUPS));
    Port::numbered(&host(n / PORTS_PER_NODE), n).in_groups(&[&g1, &g2])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn stats(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn load(client: &mut Client) {
    for i in 0..GROUPS {
        let (key, value) = sg_policy(
            "openstack",
            &group(i),
            vec![allow_tcp_from_group(22, &group((i + 1) % GROUPS))],
            allow_all_egress(),
        );
        client.put(key, value.to_string(), None).await.unwrap();
    }
    for n in 0..NODES * PORTS_PER_NODE {
        let p = port(n);
        client
            .put(p.key(), p.value().to_string(), None)
            .await
            .unwrap();
    }
}

struct Pipeline {
    events: mpsc::Receiver<ModelEvent>,
    _status: watch::Receiver<ModelStatus>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

fn start_pipeline(url: &str) -> Pipeline {
    let (sync_tx, sync_rx) = mpsc::channel(1024);
    let (event_tx, events) = mpsc::channel(100_000);
    let (status_tx, status) = watch::channel(ModelStatus::default());
    let config = EtcdConfig::new(vec![url.to_owned()]);
    let model = Model::new(ModelConfig {
        hostname: HOST.into(),
        region: None,
    });
    let tasks = vec![
        tokio::spawn(async move {
            let _ = etcd::run(config, sync_tx).await;
        }),
        tokio::spawn(run_model(model, sync_rx, event_tx, status_tx)),
    ];
    Pipeline {
        events,
        _status: status,
        tasks,
    }
}

async fn wait_for(events: &mut mpsc::Receiver<ModelEvent>, pred: impl Fn(&ModelEvent) -> bool) {
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(e) = events.recv().await {
            if pred(&e) {
                return;
            }
        }
        panic!("model stopped");
    })
    .await
    .expect("model event within 120 s");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (sync_reps, puts) = if quick { (2, 100) } else { (5, 1000) };
    let mut tb = Testbed::new("bench-datastore").unwrap();
    let hv = tb.add_hypervisor(HOST, 65001).unwrap();
    let url = tb.start_etcd().unwrap();
    let ns_name = tb.hv(hv).unwrap().ns().name().to_owned();

    let list_reference = {
        let url = url.clone();
        let ns_name = ns_name.clone();
        move || {
            let start = Instant::now();
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["netns", "exec", &ns_name, "etcdctl", "--endpoints", &url]);
            cmd.args(["get", "--prefix", RESOURCE_PREFIX, "-w", "json"]);
            let out = skog_testbed::run_with_timeout(&mut cmd, Duration::from_secs(60)).unwrap();
            assert!(out.status.success());
            start.elapsed().as_secs_f64() * 1000.0
        }
    };

    let results = tb
        .hv(hv)
        .unwrap()
        .ns()
        .enter(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut client = Client::connect([url.as_str()], None).await.unwrap();
                load(&mut client).await;

                let mut sync_ms = Vec::new();
                let mut reference_ms = Vec::new();
                for _ in 0..sync_reps {
                    let start = Instant::now();
                    let mut pipeline = start_pipeline(&url);
                    wait_for(&mut pipeline.events, |e| *e == ModelEvent::InSync).await;
                    sync_ms.push(start.elapsed().as_secs_f64() * 1000.0);
                    reference_ms.push(tokio::task::block_in_place(&list_reference));
                }

                // Put -> model event, and the same put seen by a raw watch.
                let mut pipeline = start_pipeline(&url);
                wait_for(&mut pipeline.events, |e| *e == ModelEvent::InSync).await;
                let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
                let mut watch_client = client.clone();
                let mut stream = watch_client
                    .watch(RESOURCE_PREFIX, Some(WatchOptions::new().with_prefix()))
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    while let Ok(Some(response)) = stream.message().await {
                        if !response.events().is_empty() {
                            let _ = raw_tx.send(Instant::now());
                        }
                    }
                });
                let local = port(0);
                let (mut model_ms, mut raw_ms) = (Vec::new(), Vec::new());
                for i in 0..puts {
                    let mut value = local.value();
                    value["metadata"]["labels"]["bench"] = json!(i.to_string());
                    let start = Instant::now();
                    client
                        .put(local.key(), value.to_string(), None)
                        .await
                        .unwrap();
                    wait_for(&mut pipeline.events, |e| {
                        matches!(e, ModelEvent::EndpointUpdated(l)
                            if l.endpoint.labels.get("bench") == Some(&i.to_string()))
                    })
                    .await;
                    model_ms.push(start.elapsed().as_secs_f64() * 1000.0);
                    let seen = raw_rx.recv().await.unwrap();
                    raw_ms.push(seen.duration_since(start).as_secs_f64() * 1000.0);
                }
                (sync_ms, reference_ms, model_ms, raw_ms)
            })
        })
        .unwrap();
    let (sync_ms, reference_ms, model_ms, raw_ms) = results;
    let (sync_median, sync_p99) = stats(sync_ms);
    let (reference_median, _) = stats(reference_ms);
    println!(
        "BENCH {}",
        json!({"name": "datastore_initial_sync_10k_endpoints_100_nodes_1k_policies", "unit": "ms",
               "skog_median": sync_median, "skog_p99": sync_p99,
               "reference": "etcdctl get --prefix -w json of the same keys (list only)",
               "reference_median": reference_median, "target": "< 3000 ms"})
    );
    let (model_median, model_p99) = stats(model_ms);
    let (raw_median, _) = stats(raw_ms);
    println!(
        "BENCH {}",
        json!({"name": "datastore_put_to_model_event", "unit": "ms",
               "skog_median": model_median, "skog_p99": model_p99,
               "reference": "same put seen by a raw etcd watch",
               "reference_median": raw_median, "target": "p99 < 50 ms"})
    );
}
