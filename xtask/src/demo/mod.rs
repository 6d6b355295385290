//! `cargo xtask demo`: skogd end to end in a small data centre built in network namespaces. One
//! BIRD ToR, two hypervisors each running skogd, two VMs on each, and security groups written the
//! way networking-calico writes them (to etcd, or with `--file` to a resource directory). It shows,
//! step by step with the real command output: the BGP sessions, the VM routes at the ToR, a ping
//! across hypervisors, allowed and blocked connections, a live security-group change and how long
//! it took, and a restart of one skogd under a ping flood. Everything is removed at the end
//! (`--keep` keeps it until Enter or Ctrl-C, printing the commands to explore it).

mod cluster;
mod resources;
mod signals;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use skog_testbed::{EchoServer, ProbeOutcome, Protocol, wait_until};

use crate::{cargo, setup, step, workspace_root};
use cluster::{Binaries, CONVERGE, Cluster};
use resources::{Datastore, allow_ping, allow_tcp, security_group};

/// Security groups of vm1..vm4 (vm1, vm2 on hv1; vm3, vm4 on hv2).
const GROUPS: [&[&str]; 4] = [&["web"], &["admin"], &["web"], &["web"]];
const VM1: usize = 0;
const VM2: usize = 1;
const VM3: usize = 2;
const HV1: usize = 0;
/// Ports the target VM listens on.
const HTTP: u16 = 80;
const SSH: u16 = 22;
const ALT_HTTP: u16 = 8080;
const STEPS: usize = 9;

/// Runs the demo with the etcd datastore, or the file datastore when `file`.
pub fn run(keep: bool, file: bool) -> Result<()> {
    setup::run()?;
    skog_testbed::require_root().context("the demo creates network namespaces")?;
    let bins = build()?;
    let started = Instant::now();
    let mut demo = Demo::start(bins, keep, file)?;
    if let Err(e) = demo.show() {
        // The testbed still goes; its skogd, BIRD and etcd logs stay for a look.
        demo.cluster.tb.keep_logs();
        return Err(e);
    }
    demo.explore()?;
    let summary = demo.summary(started.elapsed());
    drop(demo);
    println!("{summary}");
    println!("Removed: namespaces, skogd, BIRD, etcd (`ip netns list` shows none of them).");
    Ok(())
}

/// Builds skogd and skogctl; returns where they are.
fn build() -> Result<Binaries> {
    let mut build = cargo();
    build.args(["build", "-p", "skog-agent", "--bins"]);
    step(
        "cargo build -p skog-agent --bins (skogd, skogctl)",
        &mut build,
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bins = Binaries {
        skogd: target.join("debug/skogd"),
        skogctl: target.join("debug/skogctl"),
    };
    for bin in [&bins.skogd, &bins.skogctl] {
        if !bin.is_file() {
            bail!("{} is missing after the build", bin.display());
        }
    }
    Ok(bins)
}

/// What the demo measured, for the summary.
#[derive(Debug, Default)]
struct Timings {
    /// skogd started → both sent READY=1.
    ready: Duration,
    /// skogd started → every VM route at the ToR.
    routes: Duration,
    /// Security group written → the new rule observed by a connection.
    sg_change: Duration,
    /// skogd restarted: stop → READY=1 again.
    restart_ready: Duration,
    /// skogd restarted: stop → both sessions established again.
    restart_sessions: Duration,
    /// Ping flood across the restart: (sent, received).
    flood: (u64, u64),
}

struct Demo {
    /// Echo servers in vm3 (first: they stop before the testbed's namespaces go).
    servers: Vec<EchoServer>,
    cluster: Cluster,
    datastore: Datastore,
    keep: bool,
    step: usize,
    timings: Timings,
}

impl Demo {
    fn start(bins: Binaries, keep: bool, file: bool) -> Result<Demo> {
        println!("\nSkog demo: skogd on two hypervisors, BGP to a BIRD top-of-rack router,");
        println!(
            "security groups from {}.",
            if file {
                "a resource directory (--file)"
            } else {
                "etcd"
            }
        );
        let mut cluster = Cluster::build(bins, keep, GROUPS)?;
        let datastore = if file {
            let dir = cluster.dir().join("resources");
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            Datastore::Files { dir }
        } else {
            let url = cluster.tb.start_etcd()?;
            Datastore::Etcd {
                url,
                writer: cluster.hvs[HV1],
            }
        };
        let mut demo = Demo {
            cluster,
            datastore,
            keep,
            step: 0,
            timings: Timings::default(),
            servers: Vec::new(),
        };
        demo.topology()?;
        Ok(demo)
    }

    fn show(&mut self) -> Result<()> {
        self.load_resources()?;
        self.start_skogd()?;
        self.sessions()?;
        self.tor_routes()?;
        self.ping()?;
        self.connections()?;
        self.live_change()?;
        self.hitless_restart()
    }

    /// Prints the next step's header and its explanation.
    fn next(&mut self, title: &str, explanation: &str) {
        self.step += 1;
        println!("\n[{}/{STEPS}] {title}", self.step);
        for line in explanation.lines() {
            println!("      {line}");
        }
    }

    fn topology(&mut self) -> Result<()> {
        self.next(
            "Topology",
            "Network namespaces: a ToR running BIRD (AS 65000), hv1 and hv2 (AS 65001, 65002)\n\
             each with an uplink to it, two VMs per hypervisor. The taps are bare: skogd plumbs them.",
        );
        let c = &self.cluster;
        println!(
            "      {:<4} {:<4} {:<15} {:<15} {:<18} groups",
            "vm", "on", "tap", "IPv4", "IPv6"
        );
        for vm in 0..c.vms.len() {
            let (_, tap) = c.port(vm)?;
            println!(
                "      {:<4} {:<4} {:<15} {:<15} {:<18} {}",
                c.vm_name(vm),
                c.hv_name(c.vm_hv(vm))?,
                tap,
                c.vm_addr(vm, false)?.to_string(),
                c.vm_addr(vm, true)?.to_string(),
                c.vms[vm].groups.join(", ")
            );
        }
        Ok(())
    }

    /// `web` as it starts: http from anywhere, ping, ssh from `admin` only.
    fn web_group(&self) -> resources::Resource {
        let mut rules = vec![allow_tcp(HTTP, None), allow_tcp(SSH, Some("admin"))];
        rules.extend(allow_ping());
        security_group("web", rules)
    }

    fn load_resources(&mut self) -> Result<()> {
        let (what, explanation) = match &self.datastore {
            Datastore::Etcd { url, .. } => (
                "networking-calico's resources into etcd".to_owned(),
                format!(
                    "etcd runs on the management network at {url}; every skogd lists and watches it."
                ),
            ),
            Datastore::Files { dir } => (
                "networking-calico's resources into a directory".to_owned(),
                format!(
                    "{} is the file datastore both skogd read and watch.",
                    dir.display()
                ),
            ),
        };
        self.next(
            &format!("Load {what}"),
            &format!(
                "{explanation}\n\
                 Security group web: tcp/80 from anywhere, ssh (tcp/22) only from group admin, ping.\n\
                 Security group admin: ping. Both allow all egress.\n\
                 One WorkloadEndpoint per VM: vm1, vm3, vm4 are web servers, vm2 the admins' jump host."
            ),
        );
        let mut rs = vec![
            self.web_group(),
            security_group("admin", allow_ping().to_vec()),
        ];
        for vm in 0..self.cluster.vms.len() {
            rs.push(self.cluster.port(vm)?.0.resource());
        }
        for r in &rs {
            self.datastore.put(&self.cluster.tb, r)?;
            println!("      wrote {}", self.datastore.location(r));
        }
        Ok(())
    }

    fn start_skogd(&mut self) -> Result<()> {
        self.next(
            "Start skogd on hv1 and hv2",
            "Each reads its skog.toml, syncs the datastore, programs routes and nftables for its\n\
             taps, and tells systemd READY=1 (a stand-in notify socket here).",
        );
        let config = self.datastore.config();
        for hv in 0..self.cluster.hvs.len() {
            let path = self.cluster.write_config(hv, &config)?;
            println!(
                "      {}: skogd --config {}",
                self.cluster.hv_name(hv)?,
                path.display()
            );
        }
        let started = Instant::now();
        for hv in 0..self.cluster.hvs.len() {
            self.cluster.start_skogd(hv)?;
        }
        for hv in 0..self.cluster.hvs.len() {
            let status = self.cluster.wait_ready(hv)?;
            println!(
                "      {}: READY=1 after {} ms  STATUS={status}",
                self.cluster.hv_name(hv)?,
                started.elapsed().as_millis()
            );
        }
        self.timings.ready = started.elapsed();
        self.cluster.wait_tor_routes()?;
        self.timings.routes = started.elapsed();
        Ok(())
    }

    fn sessions(&mut self) -> Result<()> {
        self.next(
            "BGP sessions",
            "Each skogd has an IPv4 and an IPv6 session to the ToR (skogctl peers).",
        );
        self.cluster.wait_sessions()?;
        for hv in 0..self.cluster.hvs.len() {
            let socket = self.cluster.socket(hv)?;
            println!("    $ skogctl --socket {} peers", socket.display());
            print_indented(&self.cluster.skogctl(hv, &["peers"])?);
        }
        Ok(())
    }

    fn tor_routes(&mut self) -> Result<()> {
        self.next(
            "Routes at the ToR",
            &format!(
                "skogd announced each VM's /32 and /128; BIRD installed them in the ToR's kernel.\n\
                 All were there {} ms after skogd started.",
                self.timings.routes.as_millis()
            ),
        );
        let ns = self.cluster.tor_ns()?;
        for args in [
            ["-4", "route", "show", "root", "198.51.100.0/24"],
            ["-6", "route", "show", "root", "2001:db8:100::/64"],
        ] {
            println!("    $ ip netns exec {} ip {}", ns.name(), args.join(" "));
            print_indented(&ns.ip(&args)?);
        }
        Ok(())
    }

    fn ping(&mut self) -> Result<()> {
        self.next(
            "Ping across hypervisors",
            "vm1 (hv1) to vm3 (hv2): through hv1, the ToR and hv2, over IPv4 and IPv6.",
        );
        let ns = self.cluster.vm_ns(VM1)?;
        for v6 in [false, true] {
            let to = self.cluster.vm_addr(VM3, v6)?;
            wait_until(
                &format!("a ping reply from vm3 at {to}"),
                CONVERGE,
                || match ns.ping(to, 1) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("no reply".into()),
                    Err(e) => Err(e.to_string()),
                },
            )?;
            let to = to.to_string();
            println!("    $ ip netns exec {} ping -c 3 -i 0.2 {to}", ns.name());
            let out = ns.run(&["ping", "-c", "3", "-i", "0.2", &to])?;
            print_indented(&last_lines(&out, 2));
        }
        Ok(())
    }

    fn connections(&mut self) -> Result<()> {
        self.next(
            "Security groups at work",
            "vm3 (web) listens on tcp/80, tcp/22 and tcp/8080. Each line: a TCP connection,\n\
             what the rules say, what happened.",
        );
        let any = IpAddr::from([0u8; 4]);
        for port in [HTTP, SSH, ALT_HTTP] {
            let ns = self.cluster.vm_ns(VM3)?;
            self.servers
                .push(EchoServer::start(ns, Protocol::Tcp, any, port)?);
        }
        self.connection(
            VM1,
            VM3,
            HTTP,
            ProbeOutcome::Allowed,
            "web: tcp/80 from anywhere",
        )?;
        self.connection(VM1, VM3, SSH, ProbeOutcome::TimedOut, "vm1 is not in admin")?;
        self.connection(VM2, VM3, SSH, ProbeOutcome::Allowed, "vm2 is in admin")?;
        self.connection(
            VM1,
            VM3,
            ALT_HTTP,
            ProbeOutcome::TimedOut,
            "no rule for tcp/8080",
        )?;
        let hv = self.cluster.vm_hv(VM3);
        println!(
            "    $ skogctl --socket {} endpoints",
            self.cluster.socket(hv)?.display()
        );
        print_indented(&self.cluster.skogctl(hv, &["endpoints"])?);
        Ok(())
    }

    /// Probes once (after waiting for `expected` if it is a pass), prints, and fails if it differs.
    fn connection(
        &self,
        from: usize,
        to: usize,
        port: u16,
        expected: ProbeOutcome,
        why: &str,
    ) -> Result<()> {
        let outcome = self.cluster.probe(from, to, port)?;
        println!(
            "      {} -> {} tcp/{port:<5} {:<8} ({why})",
            self.cluster.vm_name(from),
            self.cluster.vm_name(to),
            verdict(outcome)
        );
        if outcome != expected {
            bail!(
                "tcp/{port} from {} to {}: expected {}, saw {}",
                self.cluster.vm_name(from),
                self.cluster.vm_name(to),
                verdict(expected),
                verdict(outcome)
            );
        }
        Ok(())
    }

    fn live_change(&mut self) -> Result<()> {
        self.next(
            "A live security-group change",
            "web is rewritten in the datastore: tcp/8080 from anywhere added, ssh from admin\n\
             removed. skogd sees the change and patches the rules in place, timed below.",
        );
        let mut rules = vec![allow_tcp(HTTP, None), allow_tcp(ALT_HTTP, None)];
        rules.extend(allow_ping());
        let web = security_group("web", rules);
        self.datastore.put(&self.cluster.tb, &web)?;
        self.timings.sg_change = self.cluster.time_until_allowed(VM1, VM3, ALT_HTTP)?;
        println!("      wrote {}", self.datastore.location(&web));
        println!(
            "      vm1 -> vm3 tcp/8080 allowed {} ms after the write",
            self.timings.sg_change.as_millis()
        );
        self.connection(
            VM1,
            VM3,
            ALT_HTTP,
            ProbeOutcome::Allowed,
            "tcp/8080 now open",
        )?;
        self.connection(
            VM2,
            VM3,
            SSH,
            ProbeOutcome::TimedOut,
            "the admin rule is gone",
        )?;
        self.connection(VM1, VM3, HTTP, ProbeOutcome::Allowed, "unchanged")?;
        let hv = self.cluster.vm_hv(VM3);
        let (_, tap) = self.cluster.port(VM3)?;
        let shown: Value = serde_json::from_str(
            &self
                .cluster
                .skogctl(hv, &["-o", "json", "policy", "show", &tap])?,
        )?;
        let ruleset = shown["ruleset"].as_str().unwrap_or_default();
        println!(
            "    $ skogctl --socket {} policy show {tap} | grep dport",
            self.cluster.socket(hv)?.display()
        );
        for line in ruleset.lines().filter(|l| l.contains("dport")) {
            println!("      {}", line.trim());
        }
        Ok(())
    }

    fn hitless_restart(&mut self) -> Result<()> {
        self.next(
            "Hitless restart of skogd on hv1",
            "vm1 floods vm3 with pings (every 5 ms, 6 s) while skogd on hv1 is stopped (SIGTERM)\n\
             and started again. Routes and rules stay in the kernel, the ToR keeps hv1's routes\n\
             (graceful restart), the new skogd adopts what it finds: no packet is lost.",
        );
        let ns = self.cluster.vm_ns(VM1)?;
        let to = self.cluster.vm_addr(VM3, false)?.to_string();
        println!(
            "    $ ip netns exec {} ping -q -i 0.005 -w 6 {to}",
            ns.name()
        );
        let flood = ns
            .command("ping")
            .args(["-q", "-i", "0.005", "-w", "6", &to])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start ping")?;
        std::thread::sleep(Duration::from_secs(1));
        let stopped = Instant::now();
        self.cluster.stop_skogd(HV1)?;
        println!(
            "      skogd on hv1 stopped in {} ms",
            stopped.elapsed().as_millis()
        );
        self.cluster.start_skogd(HV1)?;
        self.cluster.wait_ready(HV1)?;
        self.timings.restart_ready = stopped.elapsed();
        println!(
            "      started again: READY=1 {} ms after the stop",
            self.timings.restart_ready.as_millis()
        );
        self.cluster.wait_sessions()?;
        self.timings.restart_sessions = stopped.elapsed();
        println!(
            "      both BGP sessions established {} ms after the stop",
            self.timings.restart_sessions.as_millis()
        );
        let out = flood.wait_with_output().context("wait for ping")?;
        let text = String::from_utf8_lossy(&out.stdout);
        print_indented(&last_lines(&text, 2));
        self.timings.flood = ping_counts(&text)
            .with_context(|| format!("no packet counts in ping's output: {text}"))?;
        let (sent, received) = self.timings.flood;
        if sent < 100 || received != sent {
            bail!("expected every ping answered across the restart, saw {received} of {sent}");
        }
        Ok(())
    }

    /// With `--keep`: prints how to look around, waits for Enter or Ctrl-C.
    fn explore(&mut self) -> Result<()> {
        if !self.keep {
            return Ok(());
        }
        self.servers.clear();
        let c = &self.cluster;
        let tor = c.tb.tor(c.tor)?;
        let hv = |i: usize| -> Result<String> { Ok(c.tb.hv(c.hvs[i])?.ns().name().to_owned()) };
        let skogctl = c.skogctl_path();
        let (_, tap) = c.port(VM3)?;
        println!("\nThe testbed stays up. Explore it from another shell:");
        println!(
            "  ip netns list | grep {}",
            hv(HV1)?.trim_end_matches("hv1")
        );
        println!("  ip netns exec {} ip route", hv(HV1)?);
        println!("  ip netns exec {} nft list ruleset", hv(1)?);
        for sub in [
            "peers",
            "routes",
            "endpoints",
            &format!("policy show {tap}"),
        ] {
            println!(
                "  {} --socket {} {sub}",
                skogctl.display(),
                c.socket(1)?.display()
            );
        }
        println!(
            "  ip netns exec {} birdc -s {} show route",
            tor.ns().name(),
            tor.dir().join("bird.ctl").display()
        );
        println!(
            "  ip netns exec {} ping -c 3 {}",
            c.vm_ns(VM1)?.name(),
            c.vm_addr(VM3, false)?
        );
        if let Datastore::Etcd { url, .. } = &self.datastore {
            println!(
                "  ip netns exec {} etcdctl --endpoints {url} get --prefix /calico --keys-only",
                hv(HV1)?
            );
        }
        println!("Configs and logs: {}", c.dir().display());
        println!("Press Enter (or Ctrl-C) to remove everything (the logs stay).");
        if let Some(signal) = signals::wait_for_enter_or_interrupt()? {
            println!("{signal} received");
        }
        Ok(())
    }

    fn summary(&self, total: Duration) -> String {
        let t = &self.timings;
        let (sent, received) = t.flood;
        let store = match self.datastore {
            Datastore::Etcd { .. } => "etcd",
            Datastore::Files { .. } => "a resource directory",
        };
        format!(
            "\nSummary ({:.1} s, datastore: {store})\n\
             - 2 skogd up and READY in {} ms; every VM route at the ToR after {} ms\n\
             - 4 BGP sessions (IPv4 and IPv6 per hypervisor) established with BIRD\n\
             - ping vm1 -> vm3 across hypervisors over IPv4 and IPv6\n\
             - security groups: tcp/80 allowed, ssh only from admin, tcp/8080 closed\n\
             - live change (8080 opened, admin ssh removed) in effect after {} ms\n\
             - skogd restarted under a ping flood: READY after {} ms, sessions after {} ms,\n\
             \x20 {received} of {sent} pings answered",
            total.as_secs_f64(),
            t.ready.as_millis(),
            t.routes.as_millis(),
            t.sg_change.as_millis(),
            t.restart_ready.as_millis(),
            t.restart_sessions.as_millis(),
        )
    }
}

fn verdict(outcome: ProbeOutcome) -> &'static str {
    match outcome {
        ProbeOutcome::Allowed => "allowed",
        ProbeOutcome::Refused => "refused",
        ProbeOutcome::TimedOut => "blocked",
    }
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("      {line}");
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// (transmitted, received) from ping's summary line.
fn ping_counts(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(',')
        .map(|part| part.split_whitespace().next()?.parse::<u64>().ok());
    Some((numbers.next()??, numbers.next()??))
}
