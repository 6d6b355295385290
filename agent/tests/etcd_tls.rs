//! The etcd datastore over TLS with client certificates, as production etcd runs: a loopback
//! etcd in its own namespace that requires client certificates (generated here with openssl).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{init_logging, recv_until, runtime};
use skog_agent::datastore::SyncEvent;
use skog_agent::datastore::etcd::{self, EtcdConfig, EtcdTls};
use skog_agent::model::fixtures::Port;
use skog_testbed::{Netns, Process, run_checked, run_with_timeout, wait_until};
use tokio::sync::mpsc;

const URL: &str = "https://127.0.0.1:2379";

fn openssl(dir: &Path, args: &[&str]) {
    run_checked(
        Command::new("openssl").current_dir(dir).args(args),
        Duration::from_secs(30),
    )
    .unwrap();
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=skog-test-ca",
        "-days",
        "1",
    ]);
    openssl(dir, &ca);
    for (name, extensions) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj"]);
        let subject = format!("/CN=skog-{name}");
        req.push(&subject);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
    }
}

fn etcdctl_tls(ns: &Netns, dir: &Path, args: &[&str]) -> std::process::Output {
    let file = |f: &str| dir.join(f).display().to_string();
    let mut cmd = ns.command("etcdctl");
    cmd.args(["--endpoints", URL, "--cacert", &file("ca.crt")]);
    cmd.args(["--cert", &file("client.crt"), "--key", &file("client.key")]);
    cmd.args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(20)).unwrap()
}

#[test]
fn syncs_over_tls_with_client_certificates() {
    init_logging();
    skog_testbed::require_root().unwrap();
    let dir = PathBuf::from(format!("/tmp/skog-testbed/ds-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let ns = Netns::create(format!("skog-{}-ds-tls", std::process::id())).unwrap();
    let file = |f: &str| dir.join(f).display().to_string();
    let data = file("data");
    let peer = "http://127.0.0.1:2380";
    let etcd_process = Process::spawn(
        &ns,
        "etcd",
        "etcd",
        &[
            "--name",
            "tls",
            "--data-dir",
            &data,
            "--listen-client-urls",
            URL,
            "--advertise-client-urls",
            URL,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            &format!("tls={peer}"),
            "--cert-file",
            &file("server.crt"),
            "--key-file",
            &file("server.key"),
            "--trusted-ca-file",
            &file("ca.crt"),
            "--client-cert-auth",
        ],
        &dir.join("etcd.log"),
    )
    .unwrap();
    wait_until("etcd to answer over TLS", Duration::from_secs(30), || {
        let out = etcdctl_tls(&ns, &dir, &["endpoint", "health"]);
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .unwrap();

    // etcd really insists on a client certificate.
    let mut anonymous = ns.command("etcdctl");
    anonymous.args([
        "--endpoints",
        URL,
        "--cacert",
        &file("ca.crt"),
        "--dial-timeout",
        "2s",
    ]);
    anonymous.args(["--command-timeout", "3s", "put", "/x", "y"]);
    let out = run_with_timeout(&mut anonymous, Duration::from_secs(20)).unwrap();
    assert!(
        !out.status.success(),
        "etcd accepted a client without a certificate"
    );

    let port = Port::numbered("compute-01", 1);
    let out = etcdctl_tls(&ns, &dir, &["put", &port.key(), &port.value().to_string()]);
    assert!(out.status.success());

    let mut config = EtcdConfig::new(vec![URL.into()]);
    config.tls = Some(EtcdTls {
        ca_file: dir.join("ca.crt"),
        cert_file: dir.join("client.crt"),
        key_file: dir.join("client.key"),
    });
    let key = port.key();
    let synced = ns
        .enter(move || {
            runtime().block_on(async move {
                let (tx, mut rx) = mpsc::channel(16);
                tokio::spawn(async move { etcd::run(config, tx).await.unwrap() });
                recv_until(&mut rx, "the endpoint over TLS", |e| match e {
                    SyncEvent::Changes(c) => {
                        c.iter().find(|c| c.key == key).map(|c| c.value.clone())
                    }
                    _ => None,
                })
                .await
            })
        })
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&synced.unwrap()).unwrap();
    assert_eq!(value["spec"]["interfaceName"], port.tap());
    drop(etcd_process);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_tls_files_are_a_clear_error() {
    let mut config = EtcdConfig::new(vec![URL.into()]);
    config.tls = Some(EtcdTls {
        ca_file: "/nonexistent/ca.crt".into(),
        cert_file: "/nonexistent/c.crt".into(),
        key_file: "/nonexistent/c.key".into(),
    });
    let err = etcd::connect_options(&config).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
}
