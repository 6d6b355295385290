//! skogctl against the real API server on a Unix socket, answered by a stand-in for the daemon's
//! state owner: golden tables (`SKOG_BLESS=1` rewrites them), JSON keys, exit codes, and the
//! socket's permissions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use skog_agent::api::types::*;
use skog_agent::api::{ApiRequest, server};
use tokio::sync::{mpsc, oneshot};

fn peers() -> Vec<PeerStatus> {
    vec![
        PeerStatus {
            name: "tor1".into(),
            address: "192.0.2.0".into(),
            asn: 65001,
            state: "Established".into(),
            uptime_s: 3 * 3600 + 4 * 60,
            received: 1,
            accepted: 1,
            advertised: 4,
            last_error: None,
        },
        PeerStatus {
            name: "tor2".into(),
            address: "2001:db8:ffff:1::1".into(),
            asn: 4_200_000_001,
            state: "Active".into(),
            uptime_s: 42,
            received: 0,
            accepted: 0,
            advertised: 0,
            last_error: Some(
                "NOTIFICATION received: Cease/Administrative Shutdown \"maintenance\"".into(),
            ),
        },
    ]
}

fn endpoints() -> Vec<EndpointStatus> {
    vec![
        EndpointStatus {
            interface: "tap3a000000-5c".into(),
            port_id: "3a000000-5c0a-4d1e-9b7f-000000000000".into(),
            workload: "8d5f2a10-0000-4000-8000-000000000001".into(),
            mac: "fa:16:3e:00:00:00".into(),
            addresses: vec!["198.51.100.10/32".into(), "2001:db8:100::10/128".into()],
            floating_ips: vec!["203.0.113.5 -> 198.51.100.10".into()],
            state: "up".into(),
            security_groups: vec!["web".into(), "default".into()],
            reported_status: "up".into(),
            last_error: None,
        },
        EndpointStatus {
            interface: "tap3a000101-5c".into(),
            port_id: "3a000101-5c0a-4d1e-9b7f-000000000001".into(),
            workload: "8d5f2a10-0000-4000-8000-000000000002".into(),
            mac: "fa:16:3e:00:00:01".into(),
            addresses: vec!["198.51.100.11/32".into()],
            floating_ips: vec![],
            state: "missing".into(),
            security_groups: vec![],
            reported_status: "down".into(),
            last_error: None,
        },
    ]
}

fn answer(request: ApiRequest) {
    match request {
        ApiRequest::Status { reply } => {
            let _ = reply.send(Status {
                version: "0.1.0".into(),
                node_name: "compute-01".into(),
                uptime_s: 90_061,
                datastore: DatastoreStatus {
                    kind: "etcd".into(),
                    state: "in-sync".into(),
                    ready: true,
                    last_error: None,
                },
                endpoints: EndpointCounts {
                    up: 1,
                    down: 1,
                    error: 0,
                },
                routes_programmed: 4,
                peers: PeerCounts {
                    total: 2,
                    established: 1,
                },
                rejected: vec![Rejected {
                    key: "/calico/resources/v3/projectcalico.org/workloadendpoints/openstack/bad"
                        .into(),
                    reason: "ipNetworks[0]: \"198.51.100.300/32\" is not a CIDR".into(),
                }],
            });
        }
        ApiRequest::Peers { reply } => {
            let _ = reply.send(peers());
        }
        ApiRequest::Routes { filter, reply } => {
            let _ = reply.send(match filter.received.as_deref() {
                Some("tor1") => Ok(vec![RouteEntry {
                    prefix: "0.0.0.0/0".into(),
                    next_hops: vec!["via 192.0.2.0 dev up-tor1".into()],
                    origin: "bgp tor1".into(),
                    age_s: Some(3600),
                }]),
                Some(other) => Err(format!("no peer named {other:?}")),
                None => Ok(vec![RouteEntry {
                    prefix: "198.51.100.10/32".into(),
                    next_hops: vec!["dev tap3a000000-5c".into()],
                    origin: "endpoint".into(),
                    age_s: Some(61),
                }]),
            });
        }
        ApiRequest::Endpoints { reply } => {
            let _ = reply.send(endpoints());
        }
        ApiRequest::PolicyShow { interface, reply } => {
            let _ = reply.send(Err(format!("no endpoint on interface {interface:?}")));
        }
        ApiRequest::PolicyTrace { query, reply } => {
            let _ = reply.send(Ok(TraceResult {
                verdict: if query.port == Some(22) {
                    "drop"
                } else {
                    "allow"
                }
                .into(),
                rule: (query.port != Some(22))
                    .then(|| "policy ossg.default.web ingress rule 0".into()),
                reason: format!(
                    "{} {} from {} to {}",
                    query.proto,
                    query.port.unwrap_or(0),
                    query.src,
                    query.dst
                ),
                path: vec!["to-tap3a000000-5c".into(), "policy-web-in".into()],
            }));
        }
    }
}

/// The API server on a fresh socket, answered by [`answer`], on its own thread and runtime.
struct FakeDaemon {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeDaemon {
    fn start(name: &str) -> FakeDaemon {
        let dir = std::env::temp_dir().join(format!("skogctl-test-{}-{name}", std::process::id()));
        let socket = dir.join("run/skog.sock");
        let listener_path = socket.clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = server::bind(&listener_path).unwrap();
                let (tx, mut rx) = mpsc::channel(8);
                tokio::spawn(async move {
                    while let Some(request) = rx.recv().await {
                        answer(request);
                    }
                });
                ready_tx.send(()).unwrap();
                server::serve(listener, tx, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        ready_rx.recv().unwrap();
        FakeDaemon {
            socket,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
        let _ = std::fs::remove_dir_all(self.socket.parent().unwrap().parent().unwrap());
    }
}

fn skogctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skogctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/skogctl")
        .join(format!("{name}.txt"));
    if std::env::var_os("SKOG_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with SKOG_BLESS=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs (SKOG_BLESS=1 regenerates it)",
        path.display()
    );
}

#[test]
fn tables_match_the_golden_files() {
    let daemon = FakeDaemon::start("tables");
    for (name, args) in [
        ("status", &["status"][..]),
        ("peers", &["peers"]),
        ("routes", &["routes"]),
        ("routes-received", &["routes", "--received", "tor1"]),
        ("endpoints", &["endpoints"]),
        ("endpoint", &["endpoint", "198.51.100.11"]),
        (
            "trace-allow",
            &[
                "policy",
                "trace",
                "198.51.100.20",
                "198.51.100.10",
                "tcp/80",
            ],
        ),
        (
            "trace-drop",
            &[
                "policy",
                "trace",
                "198.51.100.20",
                "198.51.100.10",
                "tcp/22",
            ],
        ),
    ] {
        let (code, stdout, stderr) = skogctl(&daemon.socket, args);
        assert_eq!(code, 0, "skogctl {args:?}: {stderr}");
        assert_golden(name, &stdout);
    }
}

#[test]
fn peers_json_has_the_documented_keys() {
    let daemon = FakeDaemon::start("json");
    let (code, stdout, _) = skogctl(&daemon.socket, &["-o", "json", "peers"]);
    assert_eq!(code, 0);
    let peers: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let first = peers[0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "accepted",
            "address",
            "advertised",
            "asn",
            "last_error",
            "name",
            "received",
            "state",
            "uptime_s"
        ]
    );
    assert_eq!(peers[1]["asn"], 4_200_000_001u64);
}

#[test]
fn errors_from_the_daemon_exit_1_with_its_message() {
    let daemon = FakeDaemon::start("errors");
    let (code, _, stderr) = skogctl(&daemon.socket, &["routes", "--received", "tor9"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no peer named \"tor9\""), "{stderr}");
    let (code, _, stderr) = skogctl(&daemon.socket, &["policy", "show", "tap-nope"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no endpoint on interface"), "{stderr}");
    let (code, _, stderr) = skogctl(&daemon.socket, &["endpoint", "tap9"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no endpoint with"), "{stderr}");
}

#[test]
fn without_a_daemon_skogctl_says_so_in_one_line_and_exits_2() {
    let (code, stdout, stderr) = skogctl(Path::new("/nonexistent/skog.sock"), &["peers"]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach skogd at /nonexistent/skog.sock"),
        "{stderr}"
    );
}

#[test]
fn the_socket_is_group_accessible_only() {
    let daemon = FakeDaemon::start("mode");
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
}

#[test]
fn a_regular_file_in_the_socket_path_is_not_replaced() {
    let dir = std::env::temp_dir().join(format!("skogctl-test-{}-file", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("skog.sock");
    std::fs::write(&path, "precious").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(async { server::bind(&path).map(drop) })
        .unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    std::fs::remove_dir_all(&dir).unwrap();
}
