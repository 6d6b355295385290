//! The file datastore end to end: YAML/JSON files in a directory, watched with inotify, feed the
//! same model as etcd; edits, bad files and deletions arrive as model events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{init_logging, recv_until, runtime};
use skog_agent::datastore::{file, run_model};
use skog_agent::model::fixtures::{Port, allow_all_egress, allow_tcp_from_group, sg_policy};
use skog_agent::model::{Model, ModelConfig, ModelEvent, ModelStatus};
use tokio::sync::{mpsc, watch};

const HOST: &str = "compute-01";

fn yaml(values: &[serde_json::Value]) -> String {
    values
        .iter()
        .map(|v| serde_yaml_ng::to_string(v).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Writes atomically (as editors and config management do): a temporary file, then a rename.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skog-file-datastore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn directory_changes_become_model_events() {
    init_logging();
    let dir = scratch_dir();
    let local = Port::numbered(HOST, 1).in_groups(&["web"]);
    let remote = Port::numbered("compute-02", 2).in_groups(&["web"]);
    let (_, policy) = sg_policy(
        "openstack",
        "web",
        vec![allow_tcp_from_group(80, "web")],
        allow_all_egress(),
    );
    write(&dir, "policies.yaml", &yaml(&[policy]));
    write(&dir, "ports.yaml", &yaml(&[local.value(), remote.value()]));

    runtime().block_on(async {
        let (sync_tx, sync_rx) = mpsc::channel(64);
        let (event_tx, mut events) = mpsc::channel(256);
        let (status_tx, status) = watch::channel(ModelStatus::default());
        let watched = dir.clone();
        tokio::spawn(async move {
            file::run(watched, Duration::from_millis(50), sync_tx)
                .await
                .unwrap()
        });
        let model = Model::new(ModelConfig {
            hostname: HOST.into(),
            region: None,
        });
        tokio::spawn(run_model(model, sync_rx, event_tx, status_tx));

        let mut members = 0;
        recv_until(&mut events, "the first snapshot", |e| {
            if let ModelEvent::SelectorMembership { added, .. } = e {
                members += added.len();
            }
            (*e == ModelEvent::InSync).then_some(())
        })
        .await;
        assert_eq!(members, 4, "both ports' v4 and v6 addresses");

        // Edit: the remote port leaves the group.
        write(
            &dir,
            "ports.yaml",
            &yaml(&[local.value(), remote.clone().in_groups(&[]).value()]),
        );
        let removed = recv_until(&mut events, "the membership change", |e| match e {
            ModelEvent::SelectorMembership { removed, .. } if !removed.is_empty() => {
                Some(removed.len())
            }
            _ => None,
        })
        .await;
        assert_eq!(removed, 2);

        // A broken file is reported and changes nothing; a JSON file adds a port.
        write(
            &dir,
            "ports.yaml",
            "kind: WorkloadEndpoint\nmetadata: {name: [\n",
        );
        let extra = Port::numbered(HOST, 3);
        write(&dir, "extra.json", &extra.value().to_string());
        recv_until(&mut events, "the JSON port", |e| match e {
            ModelEvent::EndpointUpdated(l) if l.endpoint.id == extra.id() => Some(()),
            _ => None,
        })
        .await;
        let mut status_rx = status.clone();
        let status_now = tokio::time::timeout(
            common::BOUND,
            status_rx.wait_for(|s| !s.rejected.is_empty()),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert!(
            status_now.rejected[0].key.ends_with("ports.yaml"),
            "{status_now:?}"
        );
        assert_eq!(
            status_now.local_endpoints, 2,
            "the broken file keeps its ports"
        );

        // Deleting the files removes their resources.
        std::fs::remove_file(dir.join("policies.yaml")).unwrap();
        let policies = recv_until(&mut events, "the endpoint without policy", |e| match e {
            ModelEvent::EndpointUpdated(l) if l.endpoint.id == local.id() => Some(l.policies.len()),
            _ => None,
        })
        .await;
        assert_eq!(policies, 0);
        recv_until(&mut events, "the policy removal", |e| match e {
            ModelEvent::PolicyRemoved(p) => Some(p.name.clone()),
            _ => None,
        })
        .await;
        std::fs::remove_file(dir.join("ports.yaml")).unwrap();
        recv_until(&mut events, "the removal", |e| {
            (*e == ModelEvent::EndpointRemoved(local.id())).then_some(())
        })
        .await;
        let mut status_rx = status.clone();
        tokio::time::timeout(common::BOUND, status_rx.wait_for(|s| s.rejected.is_empty()))
            .await
            .unwrap()
            .unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
