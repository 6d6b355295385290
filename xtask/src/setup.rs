//! `cargo xtask setup`: installs, idempotently, the Debian packages that skogd and the tests
//! need, without letting their services start in this machine's own namespace.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::step;

/// Debian packages and why each is needed.
pub const PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "ip: namespaces, links, routes (testbed, reference benchmarks)",
    ),
    ("procps", "sysctl inside namespaces"),
    ("iputils-ping", "ping between VMs"),
    ("nftables", "nft: the security-group dataplane"),
    ("bird2", "BIRD 2: ToR routers and Calico's reference path"),
    ("frr", "FRR: ToR routers"),
    ("gobgpd", "GoBGP: ToR routers"),
    ("etcd-server", "etcd: the datastore"),
    ("etcd-client", "etcdctl: test fixtures and checks"),
    ("openssl", "certificates for the etcd TLS tests"),
];

/// Services these packages enable that must not run in the machine's own namespace: a routing
/// daemon there would change this machine's routes.
const SERVICES: &[&str] = &["bird", "frr", "gobgpd", "etcd"];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .map(|o| o.status.success() && o.stdout == b"installed")
        .unwrap_or(false)
}

pub fn run() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        println!("setup: all {} packages already installed", PACKAGES.len());
        return Ok(());
    }
    for (package, why) in PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("setup: will install {package} ({why})");
    }
    if skog_testbed::require_root().is_err() {
        bail!(
            "installing {} needs root: run `sudo cargo xtask setup`",
            missing.join(" ")
        );
    }
    // Debian starts a package's service on install unless policy-rc.d says no.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        println!(
            "setup: writing {} so that no service starts during install",
            policy.display()
        );
        write_executable(policy, "#!/bin/sh\nexit 101\n")?;
    }
    let result = install(&missing);
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    result?;
    if Path::new("/run/systemd/system").exists() {
        let mut cmd = Command::new("systemctl");
        cmd.args(["disable", "--now"]).args(SERVICES);
        step(
            "systemctl disable --now (routing daemons stay out of the host namespace)",
            &mut cmd,
        )?;
    }
    println!("setup: done");
    Ok(())
}

fn install(packages: &[&str]) -> Result<()> {
    step(
        "apt-get update",
        Command::new("apt-get").args(["-q", "update"]),
    )?;
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "install", "-y", "--no-install-recommends"])
        .args(packages);
    step(&format!("apt-get install {}", packages.join(" ")), &mut cmd)
}

fn write_executable(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}
