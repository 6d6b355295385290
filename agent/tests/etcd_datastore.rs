//! The etcd datastore against a real etcd (Debian's etcd-server in a test bed): networking-calico
//! shaped resources flow into the model; a compaction while disconnected forces the re-list
//! path; status keys are written with the right lease and removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{etcd_bed, etcdctl, put_json, recv_until, revision};
use serde_json::{Value, json};
use skog_agent::datastore::etcd::{self, EtcdConfig};
use skog_agent::datastore::status::{EndpointStatus, StatusConfig, StatusReporter, StatusUpdate};
use skog_agent::datastore::{SyncEvent, run_model};
use skog_agent::model::fixtures::{
    Port, allow_all_egress, allow_tcp_from_group, bgp_configuration, bgp_peer, cluster_information,
    node, sg_policy,
};
use skog_agent::model::{
    DatastoreBgp, DatastorePeer, Model, ModelConfig, ModelEvent, ModelStatus, Selector, SelectorId,
};
use tokio::sync::{mpsc, watch};

const HOST: &str = "compute-01";

fn test_config(url: &str) -> EtcdConfig {
    let mut config = EtcdConfig::new(vec![url.to_owned()]);
    config.keepalive = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(3);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    // Small pages, so listings take several requests at one revision.
    config.list_page_size = 2;
    config
}

fn web_members() -> SelectorId {
    SelectorId {
        namespace: Some("openstack".into()),
        selector: Selector::parse("has(sg.projectcalico.org/openstack-web)").unwrap(),
    }
}

struct Running {
    events: mpsc::Receiver<ModelEvent>,
    status: watch::Receiver<ModelStatus>,
}

/// Starts the etcd source and the model on the current runtime.
fn start_model(config: EtcdConfig) -> Running {
    let (sync_tx, sync_rx) = mpsc::channel(64);
    let (event_tx, events) = mpsc::channel(1024);
    let (status_tx, status) = watch::channel(ModelStatus::default());
    tokio::spawn(async move { etcd::run(config, sync_tx).await.unwrap() });
    let model = Model::new(ModelConfig {
        hostname: HOST.into(),
        region: None,
    });
    tokio::spawn(run_model(model, sync_rx, event_tx, status_tx));
    Running { events, status }
}

#[test]
fn endpoints_policies_and_labels_sync_from_etcd() {
    let bed = etcd_bed("ds-etcd-sync");
    let (ns, url) = (bed.controller_ns.clone(), bed.url.clone());
    let local = Port::numbered(HOST, 1).in_groups(&["web"]);
    let remote = Port::numbered("compute-02", 2).in_groups(&["web"]);
    let (policy_key, policy) = sg_policy(
        "openstack",
        "web",
        vec![allow_tcp_from_group(80, "web")],
        allow_all_egress(),
    );
    let (info_key, info) = cluster_information(true);
    put_json(&ns, &url, &policy_key, &policy);
    put_json(&ns, &url, &info_key, &info);
    put_json(&ns, &url, &local.key(), &local.value());
    put_json(&ns, &url, &remote.key(), &remote.value());
    let broken_key = Port::numbered(HOST, 9).key();
    etcdctl(
        &ns,
        &url,
        &["put", &broken_key, "{\"kind\": \"WorkloadEndpoint\", "],
    );

    bed.on_compute(async move {
        // Two endpoints, one of them unreachable: requests go to the live one.
        let mut config = test_config(&url);
        config
            .endpoints
            .insert(0, "http://203.0.113.250:2379".into());
        let mut run = start_model(config);

        let mut saw_membership = false;
        let first = recv_until(&mut run.events, "the local endpoint", |e| {
            if let ModelEvent::SelectorMembership { id, added, .. } = e {
                saw_membership = *id == web_members() && added.len() == 4;
            }
            match e {
                ModelEvent::EndpointUpdated(l) => Some(l.clone()),
                _ => None,
            }
        })
        .await;
        assert!(saw_membership, "both nodes' addresses are members of web");
        assert_eq!(first.endpoint.id, local.id());
        assert_eq!(first.endpoint.interface_name, local.tap());
        assert_eq!(first.policies[0].name, "ossg.default.web");
        recv_until(&mut run.events, "in sync", |e| {
            (*e == ModelEvent::InSync).then_some(())
        })
        .await;
        let status = run.status.borrow().clone();
        assert_eq!(status.rejected.len(), 1, "{status:?}");
        assert_eq!(status.rejected[0].key, broken_key);
        assert!(status.rejected[0].reason.contains("not valid JSON"));

        // Label change on a remote port: its IPs leave the group.
        let remote_out = remote.clone().in_groups(&[]);
        put_json(&ns, &url, &remote_out.key(), &remote_out.value());
        let removed = recv_until(&mut run.events, "membership removal", |e| match e {
            ModelEvent::SelectorMembership { removed, .. } if !removed.is_empty() => {
                Some(removed.clone())
            }
            _ => None,
        })
        .await;
        assert_eq!(removed.len(), 2);

        // A new local port, then a policy change, then deletions.
        let added = Port::numbered(HOST, 3).in_groups(&["web"]);
        put_json(&ns, &url, &added.key(), &added.value());
        recv_until(&mut run.events, "the new endpoint", |e| match e {
            ModelEvent::EndpointUpdated(l) if l.endpoint.id == added.id() => Some(()),
            _ => None,
        })
        .await;
        let (_, ssh_only) = sg_policy(
            "openstack",
            "web",
            vec![json!({"action": "Allow", "ipVersion": 4, "protocol": "TCP",
                        "source": {"nets": ["0.0.0.0/0"]}, "destination": {"ports": [22]}})],
            vec![],
        );
        put_json(&ns, &url, &policy_key, &ssh_only);
        let updated = recv_until(&mut run.events, "the policy update", |e| match e {
            ModelEvent::PolicyUpdated(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        assert_eq!(updated.ingress[0].destination.ports[0].first, 22);
        recv_until(&mut run.events, "the unused selector to go", |e| {
            (*e == ModelEvent::SelectorRemoved(web_members())).then_some(())
        })
        .await;

        // A bad update is rejected alone: the endpoint stays.
        let mut bad = added.value();
        bad["spec"]["ipNetworks"] = json!(["198.51.100.300/32"]);
        put_json(&ns, &url, &added.key(), &bad);
        etcdctl(&ns, &url, &["del", &local.key()]);
        recv_until(&mut run.events, "the deleted endpoint", |e| {
            (*e == ModelEvent::EndpointRemoved(local.id())).then_some(())
        })
        .await;
        let status = run.status.borrow().clone();
        assert!(
            status
                .rejected
                .iter()
                .any(|r| r.key == added.key() && r.reason.contains("invalid CIDR")),
            "{status:?}"
        );
        assert_eq!(
            status.local_endpoints, 1,
            "the rejected update kept the endpoint"
        );
        assert_eq!(status.rejected_total, 2);
    });
}

fn is_deletion_of(event: &SyncEvent, key: &str) -> bool {
    matches!(event, SyncEvent::Changes(changes) if changes.iter().any(|c| c.key == key && c.value.is_none()))
}

#[test]
fn compaction_while_disconnected_forces_a_relist_with_synthesized_deletes() {
    let bed = etcd_bed("ds-etcd-compact");
    let (ns, url) = (bed.controller_ns.clone(), bed.url.clone());
    let gone = Port::numbered(HOST, 1);
    let kept = Port::numbered(HOST, 2);
    put_json(&ns, &url, &gone.key(), &gone.value());
    put_json(&ns, &url, &kept.key(), &kept.value());

    bed.on_compute(async move {
        let (tx, mut rx) = mpsc::channel(64);
        let config = test_config(&url);
        tokio::spawn(async move { etcd::run(config, tx).await.unwrap() });
        recv_until(&mut rx, "the first listing", |e| {
            (*e == SyncEvent::InSync).then_some(())
        })
        .await;

        // Cut this node off the management network until the client notices.
        let ip = |state: &str| {
            skog_testbed::run_checked(
                std::process::Command::new("ip").args(["link", "set", "mgmt0", state]),
                Duration::from_secs(5),
            )
            .unwrap()
        };
        ip("down");
        recv_until(&mut rx, "the disconnection", |e| {
            (*e == SyncEvent::Connected(false)).then_some(())
        })
        .await;

        // Meanwhile networking-calico deletes one port, adds one, and etcd compacts.
        etcdctl(&ns, &url, &["del", &gone.key()]);
        let new = Port::numbered(HOST, 3);
        put_json(&ns, &url, &new.key(), &new.value());
        let rev = revision(&ns, &url);
        etcdctl(&ns, &url, &["compact", &rev.to_string()]);

        ip("up");
        let mut seen = Vec::new();
        recv_until(&mut rx, "the re-list", |e| {
            seen.push(e.clone());
            (*e == SyncEvent::InSync).then_some(())
        })
        .await;
        assert!(seen.contains(&SyncEvent::Connected(true)));
        assert!(
            seen.iter().any(|e| is_deletion_of(e, &gone.key())),
            "the vanished port is deleted: {seen:#?}"
        );
        assert!(seen.iter().any(|e| matches!(e, SyncEvent::Changes(c)
            if c.iter().any(|c| c.key == new.key() && c.value.is_some()))));
        assert!(
            !seen.iter().any(|e| is_deletion_of(e, &kept.key())),
            "the unchanged port is not touched"
        );

        // The watch resumes after the re-list.
        etcdctl(&ns, &url, &["del", &kept.key()]);
        recv_until(&mut rx, "a watched deletion", |e| {
            is_deletion_of(e, &kept.key()).then_some(())
        })
        .await;
    });
}

fn get_json(ns: &str, url: &str, key: &str) -> Value {
    serde_json::from_str(&etcdctl(ns, url, &["get", key, "-w", "json"])).unwrap()
}

#[test]
fn status_keys_are_written_on_a_lease_and_removed() {
    let bed = etcd_bed("ds-etcd-status");
    let (ns, url) = (bed.controller_ns.clone(), bed.url.clone());
    let config = StatusConfig::new(HOST, None);
    let stale = Port::numbered(HOST, 7).id();
    etcdctl(
        &ns,
        &url,
        &["put", &config.endpoint_key(&stale), "{\"status\":\"up\"}"],
    );
    let ctl = bed.controller_ns.clone();

    bed.on_compute(async move {
        let etcd_config = test_config(&url);
        let options = etcd::connect_options(&etcd_config).unwrap();
        let client = etcd::connect(&etcd_config, &options).await.unwrap();
        let mut reporter = StatusReporter::new(client, config.clone());

        reporter.heartbeat().await.unwrap();
        let read = get_json(&ctl, &url, &config.status_key());
        let kv = &read["kvs"][0];
        let lease = kv["lease"].as_i64().unwrap();
        assert_ne!(lease, 0, "the heartbeat is on a lease");
        let ttl = etcdctl(&ctl, &url, &["lease", "timetolive", &format!("{lease:x}")]);
        assert!(ttl.contains("granted with TTL(90s)"), "{ttl}");
        let value = |kv: &Value| -> Value {
            serde_json::from_slice(&base64_decode(kv["value"].as_str().unwrap())).unwrap()
        };
        assert_eq!(value(kv)["first_update"], true);
        let last = get_json(&ctl, &url, &config.last_reported_key());
        assert_eq!(last["kvs"][0]["lease"].as_i64().unwrap_or(0), 0);

        reporter.heartbeat().await.unwrap();
        let read = get_json(&ctl, &url, &config.status_key());
        let kv = &read["kvs"][0];
        assert_eq!(value(kv)["first_update"], false);
        let second = kv["lease"].as_i64().unwrap();
        assert_ne!(second, lease, "each heartbeat takes a fresh lease");
        let old = etcdctl(&ctl, &url, &["lease", "timetolive", &format!("{lease:x}")]);
        assert!(
            old.contains("already expired"),
            "the old lease is revoked: {old}"
        );

        let port = Port::numbered(HOST, 1).id();
        let key = config.endpoint_key(&port);
        let status_of = |ctl: &str| {
            let read = get_json(ctl, &url, &key);
            read["kvs"]
                .as_array()
                .and_then(|kvs| kvs.first())
                .map(value)
        };
        reporter.set(StatusUpdate {
            id: port.clone(),
            status: Some(EndpointStatus::Up),
        });
        reporter.sync().await.unwrap();
        assert_eq!(status_of(&ctl), Some(json!({"status": "up"})));
        let stale_left = get_json(&ctl, &url, &config.endpoint_key(&stale));
        assert_eq!(
            stale_left["count"].as_i64().unwrap_or(0),
            0,
            "stale key deleted"
        );

        reporter.set(StatusUpdate {
            id: port.clone(),
            status: Some(EndpointStatus::Down),
        });
        reporter.sync().await.unwrap();
        assert_eq!(status_of(&ctl), Some(json!({"status": "down"})));

        reporter.set(StatusUpdate {
            id: port,
            status: None,
        });
        reporter.sync().await.unwrap();
        assert_eq!(status_of(&ctl), None);
    });
}

/// etcdctl's JSON output has base64 values; a tiny decoder keeps the test free of a new crate.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn bgp_peers_for_this_node_come_from_etcd() {
    let bed = etcd_bed("ds-etcd-bgp");
    let (ns, url) = (bed.controller_ns.clone(), bed.url.clone());
    let resources = [
        bgp_peer(
            "tor-mine",
            json!({"node": HOST, "peerIP": "192.0.2.1", "asNumber": 65001}),
        ),
        bgp_peer(
            "tor-other",
            json!({"node": "compute-02", "peerIP": "192.0.2.3", "asNumber": 65001}),
        ),
        bgp_peer(
            "global",
            json!({"peerIP": "[2001:db8::9]:1790", "asNumber": "1.10", "maxRestartTime": "2m",
                   "ttlSecurity": 1, "keepOriginalNextHop": true}),
        ),
        bgp_peer(
            "rack-r1",
            json!({"nodeSelector": "rack == 'r1'", "peerIP": "192.0.2.5", "asNumber": 65005,
                   "sourceAddress": "None"}),
        ),
        node(
            HOST,
            json!({"rack": "r1"}),
            json!({"asNumber": 65101, "ipv4Address": "192.0.2.2/24",
                   "ipv6Address": "2001:db8::2/64"}),
        ),
        node(
            "compute-02",
            json!({"rack": "r2"}),
            json!({"asNumber": 65102}),
        ),
        bgp_configuration(
            "default",
            json!({"asNumber": 64512, "listenPort": 1790, "nodeToNodeMeshEnabled": false}),
        ),
    ];
    for (key, value) in &resources {
        put_json(&ns, &url, key, value);
    }
    let (secret_key, secret) = bgp_peer(
        "with-secret",
        json!({"peerIP": "192.0.2.7", "asNumber": 65007,
               "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "tor"}}}),
    );
    put_json(&ns, &url, &secret_key, &secret);
    let node_key = resources[4].0.clone();

    bed.on_compute(async move {
        let mut run = start_model(test_config(&url));
        let bgp = recv_until(&mut run.events, "the BGP settings", |e| match e {
            ModelEvent::Bgp(bgp) => Some(bgp.clone()),
            _ => None,
        })
        .await;
        let peer = |name: &str, address: &str, asn| DatastorePeer {
            name: format!("bgppeer/{name}"),
            address: address.parse().unwrap(),
            port: None,
            asn,
            source_address: None,
            ttl_security_hops: None,
            max_restart_time_s: None,
            keep_original_next_hop: false,
        };
        let global = DatastorePeer {
            port: Some(1790),
            source_address: Some("2001:db8::2".parse().unwrap()),
            ttl_security_hops: Some(1),
            max_restart_time_s: Some(120),
            keep_original_next_hop: true,
            ..peer("global", "2001:db8::9", 65546)
        };
        let mine = DatastorePeer {
            source_address: Some("192.0.2.2".parse().unwrap()),
            ..peer("tor-mine", "192.0.2.1", 65001)
        };
        let rack = peer("rack-r1", "192.0.2.5", 65005);
        assert_eq!(
            bgp,
            DatastoreBgp {
                asn: Some(65101),
                router_id: Some("192.0.2.2".parse().unwrap()),
                listen_port: Some(1790),
                peers: vec![global.clone(), rack, mine.clone()],
            }
        );
        recv_until(&mut run.events, "in sync", |e| {
            (*e == ModelEvent::InSync).then_some(())
        })
        .await;
        let status = run.status.borrow().clone();
        assert_eq!(status.rejected.len(), 1, "{status:?}");
        assert_eq!(status.rejected[0].key, secret_key);
        assert!(
            status.rejected[0].reason.contains("spec.password"),
            "{status:?}"
        );

        // The node moves to another rack: the selector no longer picks it.
        let (_, moved) = node(
            HOST,
            json!({"rack": "r2"}),
            json!({"asNumber": 65101, "ipv4Address": "192.0.2.2/24",
                   "ipv6Address": "2001:db8::2/64"}),
        );
        put_json(&ns, &url, &node_key, &moved);
        let bgp = recv_until(&mut run.events, "the BGP change", |e| match e {
            ModelEvent::Bgp(bgp) => Some(bgp.clone()),
            _ => None,
        })
        .await;
        assert_eq!(bgp.peers, [global, mine]);
    });
}
