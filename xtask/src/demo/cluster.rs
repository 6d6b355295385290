//! The demo's small data centre: one BIRD ToR, two hypervisors with two VMs each, a skogd per
//! hypervisor (its skog.toml, API socket and systemd notify socket under the testbed's
//! directory), and the ways the demo looks at it: skogctl, the ToR's kernel, probes between VMs.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use skog_testbed::{
    HvId, Netns, ProbeOutcome, Protocol, Testbed, TorDaemon, TorId, VmId, VmSpec, wait_until,
};

use super::resources::Port;

/// How long any one thing may take to happen.
pub const CONVERGE: Duration = Duration::from_secs(30);
pub const TOR_ASN: u32 = 65000;
/// VMs per hypervisor.
const VMS_PER_HV: usize = 2;

/// The skogd and skogctl binaries the demo runs.
#[derive(Debug)]
pub struct Binaries {
    pub skogd: PathBuf,
    pub skogctl: PathBuf,
}

/// One demo VM: its testbed id and its security groups.
#[derive(Debug)]
pub struct DemoVm {
    pub id: VmId,
    pub groups: &'static [&'static str],
}

#[derive(Debug)]
pub struct Cluster {
    pub tb: Testbed,
    pub tor: TorId,
    pub hvs: Vec<HvId>,
    pub vms: Vec<DemoVm>,
    bins: Binaries,
    /// Per hypervisor: the datagram socket standing in for systemd's notify socket.
    notify: Vec<(PathBuf, UnixDatagram)>,
}

impl Cluster {
    /// Builds the topology and starts the ToR; `groups[n]` are VM n+1's security groups.
    pub fn build(bins: Binaries, keep: bool, groups: [&'static [&'static str]; 4]) -> Result<Self> {
        let mut tb = Testbed::new("demo")?;
        if keep {
            tb.keep_logs();
        }
        let tor = tb.add_tor("tor1", TorDaemon::Bird, TOR_ASN)?;
        let mut hvs = Vec::new();
        let mut vms = Vec::new();
        for h in 0..groups.len() / VMS_PER_HV {
            let hv = tb.add_hypervisor(&format!("hv{}", h + 1), TOR_ASN + 1 + h as u32)?;
            tb.link(hv, tor)?;
            hvs.push(hv);
        }
        for (n, groups) in groups.into_iter().enumerate() {
            let id = tb.add_vm(
                hvs[n / VMS_PER_HV],
                VmSpec::numbered(&format!("vm{}", n + 1), n),
            )?;
            vms.push(DemoVm { id, groups });
        }
        tb.start_tor(tor)?;
        Ok(Cluster {
            tb,
            tor,
            hvs,
            vms,
            bins,
            notify: Vec::new(),
        })
    }

    pub fn vm_name(&self, vm: usize) -> String {
        format!("vm{}", vm + 1)
    }

    pub fn vm_ns(&self, vm: usize) -> Result<&Netns> {
        Ok(self.tb.vm(self.vms[vm].id)?.ns())
    }

    pub fn vm_addr(&self, vm: usize, v6: bool) -> Result<IpAddr> {
        Ok(self.tb.vm_addr(self.vms[vm].id, v6)?)
    }

    /// The hypervisor (index) a VM runs on.
    pub fn vm_hv(&self, vm: usize) -> usize {
        vm / VMS_PER_HV
    }

    pub fn hv_name(&self, hv: usize) -> Result<String> {
        Ok(self.tb.hv(self.hvs[hv])?.name.clone())
    }

    pub fn tor_ns(&self) -> Result<&Netns> {
        Ok(self.tb.tor(self.tor)?.ns())
    }

    /// The WorkloadEndpoint networking-calico would write for a VM's port.
    pub fn port(&self, vm: usize) -> Result<(Port<'_>, String)> {
        let v = self.tb.vm(self.vms[vm].id)?;
        let host = &self.tb.hv(v.hv)?.name;
        let mut ip_networks = Vec::new();
        if let Some(a) = v.spec.ipv4 {
            ip_networks.push(format!("{a}/32"));
        }
        if let Some(a) = v.spec.ipv6 {
            ip_networks.push(format!("{a}/128"));
        }
        let port = Port {
            host,
            device: format!("d0000000-0000-4000-8000-{:012x}", vm + 1),
            port_id: &v.spec.port_id,
            tap: &v.tap,
            mac: &v.spec.mac,
            ip_networks,
            security_groups: self.vms[vm].groups,
        };
        Ok((port, v.tap.clone()))
    }

    pub fn socket(&self, hv: usize) -> Result<PathBuf> {
        Ok(self.tb.dir().join(format!("{}.sock", self.hv_name(hv)?)))
    }

    pub fn config_path(&self, hv: usize) -> Result<PathBuf> {
        Ok(self.tb.dir().join(format!("{}.toml", self.hv_name(hv)?)))
    }

    /// Writes hypervisor `hv`'s skog.toml: `datastore`, and an IPv4 and an IPv6 session to the ToR.
    pub fn write_config(&self, hv: usize, datastore: &str) -> Result<PathBuf> {
        let h = self.tb.hv(self.hvs[hv])?;
        let up = h
            .uplinks
            .first()
            .with_context(|| format!("{} has no uplink", h.name))?;
        let mut text = format!(
            "node_name = \"{node}\"\n{datastore}\n[bgp]\nasn = {asn}\nrouter_id = \"{rid}\"\n\
             listen_port = 0\n\n[api]\nsocket = \"{socket}\"\n\n[metrics]\nlisten = \"none\"\n",
            node = h.name,
            asn = h.asn,
            rid = up.hv_v4,
            socket = self.socket(hv)?.display(),
        );
        for (family, address, source) in [
            ("ipv4", IpAddr::from(up.tor_v4), IpAddr::from(up.hv_v4)),
            ("ipv6", IpAddr::from(up.tor_v6), IpAddr::from(up.hv_v6)),
        ] {
            text.push_str(&format!(
                "\n[[bgp.peers]]\nname = \"tor1-{v}\"\naddress = \"{address}\"\nasn = {TOR_ASN}\n\
                 source_address = \"{source}\"\nfamilies = [\"{family}\"]\n",
                v = &family[2..],
            ));
        }
        let path = self.config_path(hv)?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Starts skogd on hypervisor `hv` with its systemd notify socket set.
    pub fn start_skogd(&mut self, hv: usize) -> Result<()> {
        while self.notify.len() <= hv {
            let path = self
                .tb
                .dir()
                .join(format!("{}.notify", self.hv_name(self.notify.len())?));
            let socket = UnixDatagram::bind(&path)
                .with_context(|| format!("bind notify socket {}", path.display()))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            self.notify.push((path, socket));
        }
        // Drain notifications of an earlier run of this skogd.
        let mut buf = [0u8; 4096];
        while self.notify[hv].1.recv(&mut buf).is_ok() {}
        let args = [
            format!("NOTIFY_SOCKET={}", self.notify[hv].0.display()),
            self.bins.skogd.display().to_string(),
            "--config".to_owned(),
            self.config_path(hv)?.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.tb
            .spawn_on_hypervisor(self.hvs[hv], "skogd", "env", &args)?;
        Ok(())
    }

    /// Stops skogd on hypervisor `hv` with SIGTERM (what `systemctl stop` does).
    pub fn stop_skogd(&mut self, hv: usize) -> Result<()> {
        let mut process = self
            .tb
            .take_process(self.hvs[hv], "skogd")
            .context("skogd is not running")?;
        match process.stop(Duration::from_secs(10)) {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("skogd exited with {status}; log: {}", process.log()),
            None => bail!("skogd did not stop within 10 s and was killed"),
        }
    }

    /// Waits for skogd on `hv` to send READY=1; returns the STATUS= it sent with it, if any.
    pub fn wait_ready(&self, hv: usize) -> Result<String> {
        let (_, socket) = self.notify.get(hv).context("skogd was never started")?;
        let mut buf = [0u8; 4096];
        let messages = RefCell::new(String::new());
        let what = format!("READY=1 from skogd on {}", self.hv_name(hv)?);
        wait_until(&what, CONVERGE, || {
            if let Ok(n) = socket.recv(&mut buf) {
                let mut m = messages.borrow_mut();
                m.push_str(&String::from_utf8_lossy(&buf[..n]));
                m.push('\n');
            }
            let m = messages.borrow();
            if m.lines().any(|l| l == "READY=1") {
                Ok(())
            } else if m.is_empty() {
                Err("no notification yet".into())
            } else {
                Err(format!("got only: {}", m.replace('\n', " ")))
            }
        })?;
        let status = messages
            .borrow()
            .lines()
            .filter_map(|l| l.strip_prefix("STATUS="))
            .next_back()
            .unwrap_or_default()
            .to_owned();
        Ok(status)
    }

    /// `skogctl --socket <hv's socket> ARGS`: its standard output.
    pub fn skogctl(&self, hv: usize, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bins.skogctl)
            .arg("--socket")
            .arg(self.socket(hv)?)
            .args(args)
            .output()
            .with_context(|| format!("run {}", self.bins.skogctl.display()))?;
        if !out.status.success() {
            bail!(
                "skogctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The names of the established BGP sessions of skogd on `hv` (from `skogctl -o json peers`).
    pub fn established(&self, hv: usize) -> Result<Vec<String>> {
        let peers: Value = serde_json::from_str(&self.skogctl(hv, &["-o", "json", "peers"])?)?;
        Ok(peers
            .as_array()
            .context("skogctl peers: not a JSON array")?
            .iter()
            .filter(|p| p["state"] == "Established")
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// Waits until every session of every skogd is established.
    pub fn wait_sessions(&self) -> Result<()> {
        for hv in 0..self.hvs.len() {
            let what = format!("both BGP sessions of {} established", self.hv_name(hv)?);
            wait_until(&what, CONVERGE, || {
                let up = self.established(hv).map_err(|e| format!("{e:#}"))?;
                if up.len() == 2 {
                    Ok(())
                } else {
                    Err(format!("established: {up:?}"))
                }
            })?;
        }
        Ok(())
    }

    /// Waits until the ToR's kernel has every VM's /32 and /128.
    pub fn wait_tor_routes(&self) -> Result<()> {
        let tor = self.tb.tor(self.tor)?;
        let mut wanted = Vec::new();
        for vm in 0..self.vms.len() {
            wanted.push(format!("{}/32", self.vm_addr(vm, false)?));
            wanted.push(format!("{}/128", self.vm_addr(vm, true)?));
        }
        wait_until(
            "every VM's host routes in the ToR's kernel",
            CONVERGE,
            || {
                let mut routes = tor.kernel_routes(false).map_err(|e| e.to_string())?;
                routes.extend(tor.kernel_routes(true).map_err(|e| e.to_string())?);
                let missing: Vec<String> = wanted
                    .iter()
                    .filter(|p| !routes.iter().any(|r| r.dst.to_string() == **p))
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing {}", missing.join(", ")))
                }
            },
        )?;
        Ok(())
    }

    /// A TCP connection from VM `from` to VM `to` on `port` (an echo server must listen there).
    pub fn probe(&self, from: usize, to: usize, port: u16) -> Result<ProbeOutcome> {
        let addr = SocketAddr::new(self.vm_addr(to, false)?, port);
        Ok(self
            .vm_ns(from)?
            .probe(Protocol::Tcp, addr, Duration::from_secs(1))?)
    }

    /// Connects from VM `from` to VM `to` on `port` again and again until it is allowed, and
    /// returns how long that took. Each attempt gives up after 20 ms (an allowed connection
    /// between namespaces takes well under 1 ms), so the time is precise to about that.
    pub fn time_until_allowed(&self, from: usize, to: usize, port: u16) -> Result<Duration> {
        let addr = SocketAddr::new(self.vm_addr(to, false)?, port);
        let ns = self.vm_ns(from)?;
        let started = Instant::now();
        loop {
            let outcome = ns.probe(Protocol::Tcp, addr, Duration::from_millis(20))?;
            if outcome == ProbeOutcome::Allowed {
                return Ok(started.elapsed());
            }
            if started.elapsed() > CONVERGE {
                bail!(
                    "tcp/{port} {} -> {}: expected allowed within {} s, still {outcome:?}",
                    self.vm_name(from),
                    self.vm_name(to),
                    CONVERGE.as_secs()
                );
            }
        }
    }

    pub fn skogctl_path(&self) -> &Path {
        &self.bins.skogctl
    }

    /// The testbed's directory (configs, sockets, logs).
    pub fn dir(&self) -> &Path {
        self.tb.dir()
    }
}
