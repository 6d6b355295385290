//! The [`Testbed`]: hypervisors, VMs, ToRs, uplinks and the management network with etcd, and
//! their teardown.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::addressing::{self, MAX_HYPERVISORS, MAX_TORS, MAX_UPLINKS};
use crate::exec::require_program;
use crate::netns::{Netns, clean_leftovers, require_root, unique_prefix};
use crate::process::Process;
use crate::routes::KernelRoute;
use crate::tor::{self, Neighbor, RouterConfig, TorDaemon, TorOptions};
use crate::wait::wait_until;
use crate::{Error, Result};

/// Index of a hypervisor in its [`Testbed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HvId(pub usize);
/// Index of a ToR in its [`Testbed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TorId(pub usize);
/// Index of a VM in its [`Testbed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmId(pub usize);

/// A point-to-point link between a hypervisor and a ToR.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// The ToR at the other end.
    pub tor: TorId,
    /// Interface name on the hypervisor.
    pub hv_if: String,
    /// Interface name on the ToR.
    pub tor_if: String,
    /// Hypervisor IPv4 address (/31).
    pub hv_v4: Ipv4Addr,
    /// ToR IPv4 address (/31).
    pub tor_v4: Ipv4Addr,
    /// Hypervisor IPv6 address (/64).
    pub hv_v6: Ipv6Addr,
    /// ToR IPv6 address (/64).
    pub tor_v6: Ipv6Addr,
}

/// A compute node: a namespace with uplinks to ToRs and a tap per VM.
#[derive(Debug)]
pub struct Hypervisor {
    /// Short name (`hv1`).
    pub name: String,
    /// Its AS number, for the ToRs' neighbour configuration.
    pub asn: u32,
    /// Its uplinks, in the order they were added.
    pub uplinks: Vec<Uplink>,
    /// Its address on the management network, once it has one.
    pub mgmt_addr: Option<Ipv4Addr>,
    processes: Vec<Process>,
    ns: Netns,
}

impl Hypervisor {
    /// Its namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
}

/// What a VM looks like from the outside.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Short name (`vm1`).
    pub name: String,
    /// The Neutron port id; the tap is `tap` + its first 11 characters.
    pub port_id: String,
    /// The VM's MAC.
    pub mac: String,
    /// IPv4 address, inside the /24 VM subnet.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address, inside the /64 VM subnet.
    pub ipv6: Option<Ipv6Addr>,
}

impl VmSpec {
    /// The `n`-th VM of the default plan: dual stack, OpenStack-style MAC and port id.
    pub fn numbered(name: &str, n: usize) -> VmSpec {
        VmSpec {
            name: name.into(),
            port_id: addressing::port_id(n),
            mac: addressing::vm_mac(n),
            ipv4: Some(addressing::vm_v4(n)),
            ipv6: Some(addressing::vm_v6(n)),
        }
    }
}

/// A VM: a namespace whose `eth0` is the far end of its tap.
#[derive(Debug)]
pub struct Vm {
    /// How it was described.
    pub spec: VmSpec,
    /// The hypervisor it runs on.
    pub hv: HvId,
    /// The tap's name on the hypervisor.
    pub tap: String,
    ns: Netns,
}

impl Vm {
    /// Its namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
}

/// A top-of-rack router.
#[derive(Debug)]
pub struct Tor {
    /// Short name (`tor1`).
    pub name: String,
    /// Which BGP daemon it runs.
    pub daemon: TorDaemon,
    /// Its AS number.
    pub asn: u32,
    /// Its router id.
    pub router_id: Ipv4Addr,
    /// Optional session features of its generated configuration.
    pub options: TorOptions,
    dir: PathBuf,
    processes: Vec<Process>,
    ns: Netns,
}

impl Tor {
    /// Its namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Where its configuration, sockets and logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether its daemon has been started.
    pub fn is_started(&self) -> bool {
        !self.processes.is_empty()
    }

    /// The prefixes its BGP daemon holds for one family (daemon view).
    pub fn daemon_prefixes(&self, v6: bool) -> Result<Vec<IpNet>> {
        tor::daemon_prefixes(self.daemon, &self.ns, &self.dir, v6)
    }

    /// The routes in its kernel for one family (kernel view).
    pub fn kernel_routes(&self, v6: bool) -> Result<Vec<KernelRoute>> {
        self.ns.kernel_routes(v6)
    }

    /// Runs a command of its daemon's CLI (`birdc`, `vtysh -c`, `gobgp`) and returns the output.
    pub fn cli(&self, command: &str) -> Result<String> {
        match self.daemon {
            TorDaemon::Bird => {
                let args: Vec<&str> = command.split_whitespace().collect();
                tor::birdc(&self.ns, &self.dir, &args)
            }
            TorDaemon::Frr => tor::vtysh(&self.ns, &self.dir, command),
            TorDaemon::Gobgp => {
                let args: Vec<&str> = command.split_whitespace().collect();
                tor::gobgp(&self.ns, &args)
            }
        }
    }
}

/// A set of namespaces and daemons forming one test topology; all of it is removed on drop.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    dir: PathBuf,
    keep: bool,
    uplink_count: usize,
    // Fields drop in order: VMs, then hypervisors (stopping their processes), ToRs, management.
    vms: Vec<Vm>,
    hypervisors: Vec<Hypervisor>,
    tors: Vec<Tor>,
    etcd: Option<Process>,
    mgmt: Option<Netns>,
}

impl Testbed {
    /// Starts an empty test bed. `label` names its log directory (`$SKOG_TESTBED_DIR`, default
    /// `/tmp/skog-testbed`, then `<label>-<pid>-<seq>`), kept when the test fails.
    /// Fails (never skips) when not root or when `ip` is missing.
    pub fn new(label: &str) -> Result<Testbed> {
        require_root()?;
        // A test run that was killed cannot clean up after itself; the next one does.
        let _ = clean_leftovers(false);
        let prefix = unique_prefix();
        let base = std::env::var_os("SKOG_TESTBED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/skog-testbed"));
        let safe: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = base.join(format!(
            "{safe}-{}",
            prefix.trim_start_matches("skog-").trim_end_matches('-')
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        Ok(Testbed {
            prefix,
            dir,
            keep: false,
            uplink_count: 0,
            vms: Vec::new(),
            hypervisors: Vec::new(),
            tors: Vec::new(),
            etcd: None,
            mgmt: None,
        })
    }

    /// Keep the log directory even when everything passes (the demo's `--keep`).
    pub fn keep_logs(&mut self) {
        self.keep = true;
    }

    /// The directory holding generated configs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ns_name(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    /// Adds a hypervisor namespace with forwarding on. It joins the management network if that
    /// already exists.
    pub fn add_hypervisor(&mut self, name: &str, asn: u32) -> Result<HvId> {
        if self.hypervisors.len() >= MAX_HYPERVISORS {
            return Err(Error::Topology(format!(
                "at most {MAX_HYPERVISORS} hypervisors"
            )));
        }
        let ns = Netns::create(self.ns_name(name))?;
        enable_forwarding(&ns)?;
        self.hypervisors.push(Hypervisor {
            name: name.into(),
            asn,
            uplinks: Vec::new(),
            mgmt_addr: None,
            processes: Vec::new(),
            ns,
        });
        let id = HvId(self.hypervisors.len() - 1);
        if self.mgmt.is_some() {
            self.join_management(id)?;
        }
        Ok(id)
    }

    /// Adds a ToR namespace; its daemon starts with [`Testbed::start_tor`] once its links exist.
    pub fn add_tor(&mut self, name: &str, daemon: TorDaemon, asn: u32) -> Result<TorId> {
        if self.tors.len() >= MAX_TORS {
            return Err(Error::Topology(format!("at most {MAX_TORS} ToRs")));
        }
        match daemon {
            TorDaemon::Bird => require_program("bird", "bird2")?,
            TorDaemon::Frr => require_program("vtysh", "frr")?,
            TorDaemon::Gobgp => require_program("gobgpd", "gobgpd")?,
        }
        let ns = Netns::create(self.ns_name(name))?;
        enable_forwarding(&ns)?;
        let router_id = addressing::tor_router_id(self.tors.len());
        self.tors.push(Tor {
            name: name.into(),
            daemon,
            asn,
            router_id,
            options: TorOptions::default(),
            dir: self.dir.join(name),
            processes: Vec::new(),
            ns,
        });
        Ok(TorId(self.tors.len() - 1))
    }

    /// Links a hypervisor to a ToR with a veth pair (`up-<tor>` on the hypervisor, `dn-<hv>` on
    /// the ToR), a /31 and a /64 on it.
    pub fn link(&mut self, hv: HvId, tor: TorId) -> Result<Uplink> {
        if self.uplink_count >= MAX_UPLINKS {
            return Err(Error::Topology(format!("at most {MAX_UPLINKS} uplinks")));
        }
        let (tor_v4, hv_v4, tor_v6, hv_v6) = addressing::uplink(self.uplink_count);
        let hv_name = self.hv(hv)?.name.clone();
        let t = self.tor(tor)?;
        let uplink = Uplink {
            tor,
            hv_if: short_ifname("up-", &t.name),
            tor_if: short_ifname("dn-", &hv_name),
            hv_v4,
            tor_v4,
            hv_v6,
            tor_v6,
        };
        let h = self.hv(hv)?;
        h.ns.ip(&[
            "link",
            "add",
            &uplink.hv_if,
            "type",
            "veth",
            "peer",
            "name",
            &uplink.tor_if,
            "netns",
            t.ns.name(),
        ])?;
        for (ns, ifname, v4, v6) in [
            (&h.ns, &uplink.hv_if, hv_v4, hv_v6),
            (&t.ns, &uplink.tor_if, tor_v4, tor_v6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/31"), "dev", ifname])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ])?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        self.uplink_count += 1;
        self.hypervisors[hv.0].uplinks.push(uplink.clone());
        Ok(uplink)
    }

    /// Adds a VM on `hv`: a namespace whose `eth0` (with the VM's MAC and addresses) is the peer
    /// of a tap on the hypervisor. Like a Neutron VM, it routes everything to its subnet's
    /// gateway; for IPv6 the subnet is off-link (`noprefixroute`), as Calico's RAs make it.
    /// The hypervisor side is left unconfigured: that is the agent's job.
    pub fn add_vm(&mut self, hv: HvId, spec: VmSpec) -> Result<VmId> {
        let tap = addressing::tap_name(&spec.port_id);
        let ns = Netns::create(self.ns_name(&spec.name))?;
        let h = self.hv(hv)?;
        h.ns.ip(&[
            "link",
            "add",
            &tap,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        h.ns.ip(&["link", "set", &tap, "up"])?;
        ns.ip(&["link", "set", "eth0", "address", &spec.mac])?;
        ns.sysctl("net.ipv6.conf.eth0.accept_ra", "0")?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        if let Some(v4) = spec.ipv4 {
            let gw = addressing::VM_GATEWAY_V4.to_string();
            ns.ip(&[
                "addr",
                "add",
                &format!("{v4}/{}", addressing::VM_PREFIX_V4),
                "dev",
                "eth0",
            ])?;
            ns.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"])?;
        }
        if let Some(v6) = spec.ipv6 {
            let gw = addressing::VM_GATEWAY_V6.to_string();
            let addr = format!("{v6}/{}", addressing::VM_PREFIX_V6);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &addr,
                "dev",
                "eth0",
                "nodad",
                "noprefixroute",
            ])?;
            ns.ip(&[
                "-6", "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
            ])?;
        }
        self.vms.push(Vm { spec, hv, tap, ns });
        Ok(VmId(self.vms.len() - 1))
    }

    /// The BGP neighbours of a ToR: one IPv4 and one IPv6 session per uplink.
    fn tor_router_config(&self, tor: TorId) -> Result<RouterConfig> {
        let t = self.tor(tor)?;
        let mut neighbors = Vec::new();
        for h in &self.hypervisors {
            for u in h.uplinks.iter().filter(|u| u.tor == tor) {
                neighbors.push(Neighbor {
                    name: format!("{}_v4", u.tor_if).replace('-', "_"),
                    local: u.tor_v4.into(),
                    remote: u.hv_v4.into(),
                    remote_asn: h.asn,
                });
                neighbors.push(Neighbor {
                    name: format!("{}_v6", u.tor_if).replace('-', "_"),
                    local: u.tor_v6.into(),
                    remote: u.hv_v6.into(),
                    remote_asn: h.asn,
                });
            }
        }
        for (i, n) in t.options.extra_neighbors.iter().enumerate() {
            neighbors.push(Neighbor {
                name: format!("extra_{i}"),
                local: n.local,
                remote: n.address,
                remote_asn: n.asn,
            });
        }
        Ok(RouterConfig {
            asn: t.asn,
            router_id: t.router_id,
            neighbors,
            options: t.options.clone(),
        })
    }

    /// Generates the ToR's configuration (a session per uplink and family, a default route
    /// announced to every hypervisor, learned routes into its kernel) and starts its daemon.
    pub fn start_tor(&mut self, tor: TorId) -> Result<()> {
        let cfg = self.tor_router_config(tor)?;
        let t = self.tor(tor)?;
        let processes = tor::start_tor(t.daemon, &t.name, &t.ns, &t.dir, &cfg)?;
        self.tors[tor.0].processes = processes;
        Ok(())
    }

    /// Sets optional session features (MD5, extended next hop) for the ToR's generated
    /// configuration; takes effect at the next [`Testbed::start_tor`].
    pub fn set_tor_options(&mut self, tor: TorId, options: TorOptions) -> Result<()> {
        self.tors
            .get_mut(tor.0)
            .ok_or_else(|| unknown("ToR", tor.0))?
            .options = options;
        Ok(())
    }

    /// Kills the ToR's daemon with SIGKILL: no NOTIFICATION, the kernel just closes its
    /// connections (a crash, for graceful-restart tests). [`Testbed::start_tor`] restarts it.
    pub fn kill_tor(&mut self, tor: TorId) -> Result<()> {
        let t = self
            .tors
            .get_mut(tor.0)
            .ok_or_else(|| unknown("ToR", tor.0))?;
        while let Some(mut p) = t.processes.pop() {
            let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
            p.stop(Duration::from_secs(5));
        }
        Ok(())
    }

    /// Stops the ToR's daemon (to test restarts); [`Testbed::start_tor`] starts it again.
    pub fn stop_tor(&mut self, tor: TorId) -> Result<()> {
        let t = self
            .tors
            .get_mut(tor.0)
            .ok_or_else(|| unknown("ToR", tor.0))?;
        // Stop in reverse start order: bgpd before zebra.
        while let Some(mut p) = t.processes.pop() {
            p.stop(Duration::from_secs(5));
        }
        Ok(())
    }

    /// Runs BIRD on a hypervisor the way Calico does (the reference path for benchmarks and the
    /// testbed's own tests): it learns host routes from the kernel and announces them to every
    /// ToR the hypervisor is linked to, and installs what the ToRs announce.
    pub fn start_reference_bird(&mut self, hv: HvId) -> Result<()> {
        let h = self.hv(hv)?;
        let mut neighbors = Vec::new();
        for u in &h.uplinks {
            let t = self.tor(u.tor)?;
            neighbors.push(Neighbor {
                name: format!("{}_v4", t.name),
                local: u.hv_v4.into(),
                remote: u.tor_v4.into(),
                remote_asn: t.asn,
            });
            neighbors.push(Neighbor {
                name: format!("{}_v6", t.name),
                local: u.hv_v6.into(),
                remote: u.tor_v6.into(),
                remote_asn: t.asn,
            });
        }
        let router_id = h
            .uplinks
            .first()
            .map(|u| u.hv_v4)
            .ok_or_else(|| Error::Topology(format!("{} has no uplink", h.name)))?;
        let cfg = RouterConfig {
            asn: h.asn,
            router_id,
            neighbors,
            options: TorOptions::default(),
        };
        let dir = self.dir.join(format!("{}-bird", h.name));
        let process = tor::start_bird(&h.ns, &dir, &tor::bird_hypervisor_config(&cfg))?;
        self.hypervisors[hv.0].processes.push(process);
        Ok(())
    }

    /// Plumbs a VM's tap by hand the way Felix does (host routes, static ARP, proxy ARP/NDP,
    /// forwarding), for tests of the testbed itself and for reference benchmarks.
    pub fn plumb_vm_by_hand(&self, vm: VmId) -> Result<()> {
        let v = self.vm(vm)?;
        let h = self.hv(v.hv)?;
        let tap = v.tap.as_str();
        for (key, value) in [
            (format!("net.ipv4.conf.{tap}.proxy_arp"), "1"),
            (format!("net.ipv4.neigh.{tap}.proxy_delay"), "0"),
            (format!("net.ipv4.conf.{tap}.forwarding"), "1"),
            (format!("net.ipv6.conf.{tap}.accept_ra"), "0"),
            (format!("net.ipv6.conf.{tap}.proxy_ndp"), "1"),
            // Felix leaves this at the kernel's random delay of up to 0.8 s, which made a
            // VM's first IPv6 packet miss a probe's deadline now and then.
            (format!("net.ipv6.neigh.{tap}.proxy_delay"), "0"),
            (format!("net.ipv6.conf.{tap}.forwarding"), "1"),
        ] {
            h.ns.sysctl(&key, value)?;
        }
        if let Some(v4) = v.spec.ipv4 {
            h.ns.ip(&[
                "route",
                "replace",
                &format!("{v4}/32"),
                "dev",
                tap,
                "scope",
                "link",
            ])?;
            h.ns.ip(&[
                "neigh",
                "replace",
                &v4.to_string(),
                "lladdr",
                &v.spec.mac,
                "dev",
                tap,
                "nud",
                "permanent",
            ])?;
        }
        if let Some(v6) = v.spec.ipv6 {
            h.ns.ip(&["-6", "route", "replace", &format!("{v6}/128"), "dev", tap])?;
            let gw = addressing::VM_GATEWAY_V6.to_string();
            h.ns.ip(&["-6", "neigh", "replace", "proxy", &gw, "dev", tap])?;
        }
        Ok(())
    }

    /// Creates the management network (a bridge in its own namespace, 203.0.113.128/25),
    /// connects every hypervisor to it (`mgmt0`), starts etcd on it and waits until etcd answers.
    /// Returns the client URL.
    pub fn start_etcd(&mut self) -> Result<String> {
        require_program("etcd", "etcd-server")?;
        require_program("etcdctl", "etcd-client")?;
        let mgmt = Netns::create(self.ns_name("mgmt"))?;
        mgmt.ip(&["link", "add", "br0", "type", "bridge"])?;
        let addr = format!("{}/{}", addressing::ETCD_ADDR, addressing::MGMT_PREFIX);
        mgmt.ip(&["addr", "add", &addr, "dev", "br0"])?;
        mgmt.ip(&["link", "set", "br0", "up"])?;
        self.mgmt = Some(mgmt);
        for i in 0..self.hypervisors.len() {
            self.join_management(HvId(i))?;
        }
        let url = self.etcd_url();
        let data = self.dir.join("etcd-data");
        let data = data.to_string_lossy();
        let peer = "http://127.0.0.1:2380";
        let mgmt = self
            .mgmt
            .as_ref()
            .ok_or_else(|| Error::Topology("no management network".into()))?;
        let process = Process::spawn(
            mgmt,
            "etcd",
            "etcd",
            &[
                "--name",
                "skog-mgmt",
                "--data-dir",
                &data,
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                &format!("skog-mgmt={peer}"),
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ],
            &self.dir.join("etcd.log"),
        )?;
        self.etcd = Some(process);
        wait_until(
            "etcd to answer on the management network",
            Duration::from_secs(30),
            || {
                let mgmt = self.mgmt.as_ref().ok_or_else(String::new)?;
                mgmt.run(&["etcdctl", "--endpoints", &url, "endpoint", "health"])
                    .map_err(|e| e.to_string())
            },
        )?;
        Ok(url)
    }

    /// The etcd client URL on the management network.
    pub fn etcd_url(&self) -> String {
        format!("http://{}:2379", addressing::ETCD_ADDR)
    }

    /// The etcd process, once started (to stop it, or read its log).
    pub fn etcd_process(&mut self) -> Option<&mut Process> {
        self.etcd.as_mut()
    }

    /// Runs `etcdctl <args>` against the test bed's etcd from inside a hypervisor.
    pub fn etcdctl(&self, hv: HvId, args: &[&str]) -> Result<String> {
        let url = self.etcd_url();
        let mut full = vec!["etcdctl", "--endpoints", &url];
        full.extend_from_slice(args);
        self.hv(hv)?.ns.run(&full)
    }

    fn join_management(&mut self, hv: HvId) -> Result<()> {
        let mgmt = self
            .mgmt
            .as_ref()
            .ok_or_else(|| Error::Topology("no management network".into()))?;
        let h = self
            .hypervisors
            .get(hv.0)
            .ok_or_else(|| unknown("hypervisor", hv.0))?;
        let port = format!("m{}", hv.0);
        h.ns.ip(&[
            "link",
            "add",
            "mgmt0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            mgmt.name(),
        ])?;
        mgmt.ip(&["link", "set", &port, "master", "br0", "up"])?;
        let addr = addressing::mgmt_addr(hv.0);
        h.ns.ip(&[
            "addr",
            "add",
            &format!("{addr}/{}", addressing::MGMT_PREFIX),
            "dev",
            "mgmt0",
        ])?;
        h.ns.ip(&["link", "set", "mgmt0", "up"])?;
        self.hypervisors[hv.0].mgmt_addr = Some(addr);
        Ok(())
    }

    /// Starts a process inside a hypervisor (skogd under test, say); its output goes to
    /// `<dir>/<hv>-<name>.log`. It is stopped when the test bed is dropped, or with
    /// [`Testbed::take_process`].
    pub fn spawn_on_hypervisor(
        &mut self,
        hv: HvId,
        name: &str,
        program: &str,
        args: &[&str],
    ) -> Result<()> {
        let h = self.hv(hv)?;
        let log = self.dir.join(format!("{}-{name}.log", h.name));
        let process = Process::spawn(&h.ns, name, program, args, &log)?;
        self.hypervisors[hv.0].processes.push(process);
        Ok(())
    }

    /// Hands over a process started with [`Testbed::spawn_on_hypervisor`] (to stop or restart it).
    pub fn take_process(&mut self, hv: HvId, name: &str) -> Option<Process> {
        let h = self.hypervisors.get_mut(hv.0)?;
        let index = h.processes.iter().position(|p| p.name() == name)?;
        Some(h.processes.remove(index))
    }

    /// A hypervisor.
    pub fn hv(&self, id: HvId) -> Result<&Hypervisor> {
        self.hypervisors
            .get(id.0)
            .ok_or_else(|| unknown("hypervisor", id.0))
    }

    /// A ToR.
    pub fn tor(&self, id: TorId) -> Result<&Tor> {
        self.tors.get(id.0).ok_or_else(|| unknown("ToR", id.0))
    }

    /// A VM.
    pub fn vm(&self, id: VmId) -> Result<&Vm> {
        self.vms.get(id.0).ok_or_else(|| unknown("VM", id.0))
    }

    /// Every namespace of the test bed, for leak checks.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.vms.iter().map(|v| v.ns.name().to_owned()).collect();
        names.extend(self.hypervisors.iter().map(|h| h.ns.name().to_owned()));
        names.extend(self.tors.iter().map(|t| t.ns.name().to_owned()));
        names.extend(self.mgmt.iter().map(|m| m.name().to_owned()));
        names
    }

    /// The address of a VM for one family, for probes.
    pub fn vm_addr(&self, vm: VmId, v6: bool) -> Result<IpAddr> {
        let v = self.vm(vm)?;
        let addr = if v6 {
            v.spec.ipv6.map(IpAddr::V6)
        } else {
            v.spec.ipv4.map(IpAddr::V4)
        };
        addr.ok_or_else(|| {
            Error::Topology(format!(
                "{} has no {} address",
                v.spec.name,
                if v6 { "IPv6" } else { "IPv4" }
            ))
        })
    }

    /// A socket address of a VM, for probes.
    pub fn vm_socket(&self, vm: VmId, v6: bool, port: u16) -> Result<SocketAddr> {
        Ok(SocketAddr::new(self.vm_addr(vm, v6)?, port))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Daemons first (they hold sockets in the namespaces), then the namespaces.
        for h in &mut self.hypervisors {
            h.processes.clear();
        }
        for t in &mut self.tors {
            while t.processes.pop().is_some() {}
        }
        self.etcd = None;
        self.vms.clear();
        self.hypervisors.clear();
        self.tors.clear();
        self.mgmt = None;
        if std::thread::panicking() || self.keep {
            eprintln!(
                "skog-testbed: logs and configs kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn unknown(what: &str, index: usize) -> Error {
    Error::Topology(format!("no {what} with index {index}"))
}

/// Turns a new hypervisor or ToR namespace into a router. Duplicate address detection is off
/// for its interfaces: the links are point-to-point test links, and FRR will not start an IPv6
/// session until the link-local address has left DAD.
fn enable_forwarding(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    ns.sysctl("net.ipv6.conf.default.forwarding", "1")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
}

/// `prefix` + `name`, cut to the 15 bytes Linux allows in an interface name.
fn short_ifname(prefix: &str, name: &str) -> String {
    let mut s = format!("{prefix}{name}");
    s.truncate(15);
    s
}
