//! Routing daemons in the test bed — BIRD 2, FRR and GoBGP on ToRs, and BIRD on a hypervisor
//! as Calico's reference path — with their generated configuration, start-up, and the routes
//! they hold (daemon view) or installed (kernel view).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;

use crate::exec::{SHORT, require_program, run_checked};
use crate::netns::Netns;
use crate::process::Process;
use crate::wait::wait_until;
use crate::{Error, Result};

/// Which BGP implementation a ToR runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorDaemon {
    /// BIRD 2 (`bird`, `birdc`).
    Bird,
    /// FRR (`zebra` + `bgpd`, `vtysh`).
    Frr,
    /// GoBGP (`gobgpd`, `gobgp`). A control plane only: GoBGP 3.10's zebra client cannot talk
    /// to FRR 8.4's zebra, so its routes never reach the ToR's kernel.
    Gobgp,
}

impl TorDaemon {
    /// Lower-case name, as used in messages and test names.
    pub fn name(self) -> &'static str {
        match self {
            TorDaemon::Bird => "bird",
            TorDaemon::Frr => "frr",
            TorDaemon::Gobgp => "gobgp",
        }
    }

    /// Whether the ToR installs what it learns in its kernel (and so forwards traffic).
    pub fn installs_routes(self) -> bool {
        self != TorDaemon::Gobgp
    }
}

/// One BGP neighbour of a router in the test bed.
#[derive(Debug, Clone)]
pub(crate) struct Neighbor {
    /// Short name used for the BIRD protocol (`hv1_v4`).
    pub name: String,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub remote_asn: u32,
}

/// What a generated router configuration needs.
#[derive(Debug, Clone)]
pub(crate) struct RouterConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub neighbors: Vec<Neighbor>,
    pub options: TorOptions,
}

/// Optional session features of a ToR's generated configuration (all off by default); set
/// them with [`crate::Testbed::set_tor_options`] before starting the ToR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TorOptions {
    /// TCP MD5 password (RFC 2385) on every session.
    pub md5_password: Option<String>,
    /// Also carry IPv4 unicast on the IPv6 sessions, with IPv6 next hops (RFC 8950). BIRD
    /// and FRR only.
    pub extended_next_hop: bool,
    /// More prefixes for the ToR to originate (blackhole statics, not in its own kernel), in
    /// BIRD static protocols `extra4` / `extra6` that start disabled: `tor.cli("enable extra6")`
    /// releases them at a chosen moment (for "learned routes" benchmarks). BIRD only.
    pub extra_routes: Vec<ipnet::IpNet>,
    /// eBGP multihop on every session: the TTL the ToR sends with and, with `ttl_security`,
    /// the hop count it accepts (BIRD `multihop N`, FRR `ebgp-multihop N`). BIRD and FRR only.
    pub multihop: Option<u8>,
    /// GTSM (RFC 5082) on every session: BIRD `ttl security yes`, FRR `ttl-security hops N`
    /// (N = `multihop`, or 1). BIRD and FRR only.
    pub ttl_security: bool,
    /// Sessions beyond the generated one per uplink address, e.g. to a speaker in a VM
    /// namespace some hops away (the ToR needs a route back to it: add one to its namespace).
    pub extra_neighbors: Vec<TorNeighbor>,
}

/// An extra BGP neighbour of a ToR (see [`TorOptions::extra_neighbors`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorNeighbor {
    /// The neighbour's address.
    pub address: IpAddr,
    /// Its AS.
    pub asn: u32,
    /// The ToR's source address for the session.
    pub local: IpAddr,
}

const FRR_DIR: &str = "/usr/lib/frr";
const GOBGP_API: &str = "127.0.0.1:50051";

/// BIRD 2 on a ToR: every neighbour gets everything (a default route included, next hop self),
/// iBGP neighbours are route-reflector clients, and BGP routes go to the kernel with ECMP. The
/// kernel protocols get an 8 MiB netlink receive buffer and a 10 s scan: withdrawing 10,000
/// routes at once otherwise overflows BIRD's netlink socket ("Kernel dropped some netlink
/// messages") and leaves routes in the kernel until a scan a minute later.
pub(crate) fn bird_tor_config(cfg: &RouterConfig) -> String {
    let mut s = format!(
        "router id {};\nlog stderr all;\nprotocol device {{ scan time 10; }}\n\
         protocol kernel kernel4 {{ merge paths on; scan time 10; netlink rx buffer 8388608; ipv4 {{ import none; export where source = RTS_BGP; }}; }}\n\
         protocol kernel kernel6 {{ merge paths on; scan time 10; netlink rx buffer 8388608; ipv6 {{ import none; export where source = RTS_BGP; }}; }}\n\
         protocol static default4 {{ ipv4; route 0.0.0.0/0 blackhole; }}\n\
         protocol static default6 {{ ipv6; route ::/0 blackhole; }}\n",
        cfg.router_id
    );
    for (name, family, v6) in [("extra4", "ipv4", false), ("extra6", "ipv6", true)] {
        let routes = cfg
            .options
            .extra_routes
            .iter()
            .filter(|p| p.addr().is_ipv6() == v6);
        let _ = writeln!(s, "protocol static {name} {{ {family}; disabled;");
        for p in routes {
            let _ = writeln!(s, "  route {p} blackhole;");
        }
        let _ = writeln!(s, "}}");
    }
    for n in &cfg.neighbors {
        let ibgp = n.remote_asn == cfg.asn;
        let family = if n.remote.is_ipv4() { "ipv4" } else { "ipv6" };
        let extra = if ibgp && cfg.options.multihop.is_none() {
            " gateway direct;"
        } else {
            ""
        };
        let mut more = String::new();
        if let Some(pw) = &cfg.options.md5_password {
            let _ = write!(more, "\n  password \"{pw}\";");
        }
        if let Some(hops) = cfg.options.multihop {
            let _ = write!(more, "\n  multihop {hops};");
        }
        if cfg.options.ttl_security {
            let _ = write!(more, "\n  ttl security yes;");
        }
        if cfg.options.extended_next_hop && n.remote.is_ipv6() {
            let _ = write!(
                more,
                "\n  ipv4 {{ import all; export all; next hop self; extended next hop on;{extra} }};"
            );
        }
        let _ = writeln!(
            s,
            "protocol bgp {name} {{\n  local {local} as {asn};\n  neighbor {remote} as {ras};\n  \
             graceful restart on;\n  connect retry time 1;{rr}{more}\n  \
             {family} {{ import all; export all; next hop self;{extra} }};\n}}",
            name = n.name,
            local = n.local,
            asn = cfg.asn,
            remote = n.remote,
            ras = n.remote_asn,
            // iBGP is multihop in BIRD unless told otherwise, and multihop cannot use
            // `gateway direct`; the neighbours are on the link.
            rr = if ibgp && cfg.options.multihop.is_none() {
                "\n  rr client;\n  direct;"
            } else if ibgp {
                "\n  rr client;"
            } else {
                ""
            },
        );
    }
    s
}

/// BIRD on a hypervisor as Calico runs it: the kernel protocol learns the host routes someone
/// else (Felix, or a test with `ip route`) put in the kernel, BGP exports them to the ToRs, and
/// BGP routes from the ToRs go back to the kernel. `scan time 2` is Calico's: the periodic scan
/// catches what the kernel's notifications missed (BIRD's socket overflows in large bursts).
pub(crate) fn bird_hypervisor_config(cfg: &RouterConfig) -> String {
    let mut s = format!(
        "router id {};\nlog stderr all;\nprotocol device {{ scan time 2; }}\n\
         protocol kernel kernel4 {{ learn; persist; merge paths on; scan time 2;\n  \
         ipv4 {{ import where net.len = 32; export where source = RTS_BGP; }}; }}\n\
         protocol kernel kernel6 {{ learn; persist; merge paths on; scan time 2;\n  \
         ipv6 {{ import where net.len = 128; export where source = RTS_BGP; }}; }}\n",
        cfg.router_id
    );
    for n in &cfg.neighbors {
        let (family, host_len) = if n.remote.is_ipv4() {
            ("ipv4", 32)
        } else {
            ("ipv6", 128)
        };
        let ibgp = n.remote_asn == cfg.asn;
        let extra = if ibgp { " gateway direct;" } else { "" };
        let _ = writeln!(
            s,
            "protocol bgp {name} {{\n  local {local} as {asn};\n  neighbor {remote} as {ras};{direct}\n  \
             graceful restart on;\n  connect retry time 1;\n  \
             {family} {{ import all; export where source = RTS_INHERIT && net.len = {host_len}; next hop self;{extra} }};\n}}",
            name = n.name,
            local = n.local,
            asn = cfg.asn,
            remote = n.remote,
            ras = n.remote_asn,
            direct = if ibgp { "\n  direct;" } else { "" },
        );
    }
    s
}

/// FRR's bgpd on a ToR, equivalent to [`bird_tor_config`].
pub(crate) fn frr_bgpd_config(hostname: &str, cfg: &RouterConfig) -> String {
    let mut s = format!(
        "frr defaults datacenter\nhostname {hostname}\nrouter bgp {}\n bgp router-id {}\n \
         no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n bgp graceful-restart\n",
        cfg.asn, cfg.router_id
    );
    let enhe = cfg.options.extended_next_hop;
    for n in &cfg.neighbors {
        let _ = writeln!(s, " neighbor {} remote-as {}", n.remote, n.remote_asn);
        let _ = writeln!(s, " neighbor {} timers connect 1", n.remote);
        if let Some(pw) = &cfg.options.md5_password {
            let _ = writeln!(s, " neighbor {} password {pw}", n.remote);
        }
        // FRR takes one of the two: GTSM bounds the hops itself.
        match (cfg.options.ttl_security, cfg.options.multihop) {
            (true, hops) => {
                let _ = writeln!(
                    s,
                    " neighbor {} ttl-security hops {}",
                    n.remote,
                    hops.unwrap_or(1)
                );
            }
            (false, Some(hops)) => {
                let _ = writeln!(s, " neighbor {} ebgp-multihop {hops}", n.remote);
            }
            (false, None) => {}
        }
        if enhe && n.remote.is_ipv6() {
            let _ = writeln!(s, " neighbor {} capability extended-nexthop", n.remote);
        }
    }
    for (family, v6) in [("ipv4", false), ("ipv6", true)] {
        let _ = writeln!(s, " address-family {family} unicast");
        // With extended next hop, IPv4 also runs on the IPv6 sessions.
        for n in cfg
            .neighbors
            .iter()
            .filter(|n| n.remote.is_ipv6() == v6 || (enhe && !v6 && n.remote.is_ipv6()))
        {
            let _ = writeln!(s, "  neighbor {} activate", n.remote);
            let _ = writeln!(s, "  neighbor {} default-originate", n.remote);
            if n.remote_asn == cfg.asn {
                let _ = writeln!(s, "  neighbor {} route-reflector-client", n.remote);
                let _ = writeln!(s, "  neighbor {} next-hop-self force", n.remote);
            }
        }
        let _ = writeln!(s, " exit-address-family");
    }
    s
}

/// GoBGP on a ToR, equivalent to [`bird_tor_config`] but without a kernel FIB.
pub(crate) fn gobgp_config(cfg: &RouterConfig) -> String {
    let mut s = format!(
        "[global.config]\n  as = {}\n  router-id = \"{}\"\n\n",
        cfg.asn, cfg.router_id
    );
    for n in &cfg.neighbors {
        let family = if n.remote.is_ipv4() {
            "ipv4-unicast"
        } else {
            "ipv6-unicast"
        };
        let auth = cfg
            .options
            .md5_password
            .as_ref()
            .map(|pw| format!("\n    auth-password = \"{pw}\""))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}{auth}\n  \
             [neighbors.timers.config]\n    connect-retry = 1\n  \
             [neighbors.graceful-restart.config]\n    enabled = true\n  \
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\"",
            n.remote, n.remote_asn
        );
        if n.remote_asn == cfg.asn {
            let _ = writeln!(
                s,
                "  [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"{}\"",
                cfg.router_id
            );
        }
    }
    s
}

/// Starts `daemon` in `ns` with `cfg`, writing configs, sockets and logs under `dir`, and waits
/// until its CLI answers. Returns the processes (FRR's zebra first).
pub(crate) fn start_tor(
    daemon: TorDaemon,
    name: &str,
    ns: &Netns,
    dir: &Path,
    cfg: &RouterConfig,
) -> Result<Vec<Process>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    match daemon {
        TorDaemon::Bird => Ok(vec![start_bird(ns, dir, &bird_tor_config(cfg))?]),
        TorDaemon::Frr => {
            let mut procs = vec![start_frr_daemon(ns, dir, "zebra", "hostname zebra\n")?];
            procs.push(start_frr_daemon(
                ns,
                dir,
                "bgpd",
                &frr_bgpd_config(name, cfg),
            )?);
            Ok(procs)
        }
        TorDaemon::Gobgp => {
            require_program("gobgpd", "gobgpd")?;
            let conf = dir.join("gobgpd.toml");
            write(&conf, &gobgp_config(cfg))?;
            let conf = conf.to_string_lossy().into_owned();
            let gobgpd = Process::spawn(
                ns,
                "gobgpd",
                "gobgpd",
                &[
                    "-f",
                    &conf,
                    "-p",
                    "--api-hosts",
                    GOBGP_API,
                    "--pprof-disable",
                ],
                &dir.join("gobgpd.log"),
            )?;
            wait_until("gobgpd to answer", Duration::from_secs(15), || {
                gobgp(ns, &["global"]).map_err(|e| e.to_string())
            })?;
            // GoBGP has no "default-originate": originate the default routes into its RIB.
            gobgp(ns, &["global", "rib", "add", "-a", "ipv4", "0.0.0.0/0"])?;
            gobgp(ns, &["global", "rib", "add", "-a", "ipv6", "::/0"])?;
            Ok(vec![gobgpd])
        }
    }
}

/// Starts BIRD in `ns` with `config` (control socket `dir/bird.ctl`) and waits for it.
pub(crate) fn start_bird(ns: &Netns, dir: &Path, config: &str) -> Result<Process> {
    require_program("bird", "bird2")?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let conf = dir.join("bird.conf");
    write(&conf, config)?;
    let sock = dir.join("bird.ctl");
    let (conf, sock_s) = (
        conf.to_string_lossy().into_owned(),
        sock.to_string_lossy().into_owned(),
    );
    let process = Process::spawn(
        ns,
        "bird",
        "bird",
        &["-f", "-c", &conf, "-s", &sock_s],
        &dir.join("bird.log"),
    )?;
    wait_until(
        "BIRD to answer on its control socket",
        Duration::from_secs(15),
        || birdc(ns, dir, &["show", "status"]).map_err(|e| e.to_string()),
    )?;
    Ok(process)
}

/// Starts one FRR daemon in the foreground. FRR drops privileges to `frr`, so `dir` is handed
/// to that user.
fn start_frr_daemon(ns: &Netns, dir: &Path, daemon: &str, config: &str) -> Result<Process> {
    let program = format!("{FRR_DIR}/{daemon}");
    require_program(&program, "frr")?;
    run_checked(
        Command::new("chown").args(["frr:frr", &dir.to_string_lossy()]),
        SHORT,
    )?;
    let conf = dir.join(format!("{daemon}.conf"));
    write(&conf, config)?;
    let d = dir.to_string_lossy().into_owned();
    let args = [
        "-f".to_owned(),
        conf.to_string_lossy().into_owned(),
        "-i".to_owned(),
        format!("{d}/{daemon}.pid"),
        "-z".to_owned(),
        format!("{d}/zserv.api"),
        "--vty_socket".to_owned(),
        d.clone(),
        "-u".to_owned(),
        "frr".to_owned(),
        "-g".to_owned(),
        "frr".to_owned(),
        "--log".to_owned(),
        "stdout".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = Process::spawn(
        ns,
        daemon,
        &program,
        &args,
        &dir.join(format!("{daemon}.log")),
    )?;
    let vty = dir.join(format!("{daemon}.vty"));
    wait_until(
        &format!("{daemon} to open {}", vty.display()),
        Duration::from_secs(15),
        || {
            if vty.exists() {
                Ok(())
            } else {
                Err(String::new())
            }
        },
    )?;
    Ok(process)
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// Runs `birdc` against the BIRD whose control socket is in `dir`.
pub(crate) fn birdc(ns: &Netns, dir: &Path, args: &[&str]) -> Result<String> {
    let sock = dir.join("bird.ctl");
    run_checked(ns.command("birdc").arg("-s").arg(&sock).args(args), SHORT)
}

/// Runs `vtysh -c <command>` against the FRR daemons whose sockets are in `dir`.
pub(crate) fn vtysh(ns: &Netns, dir: &Path, command: &str) -> Result<String> {
    run_checked(
        ns.command("vtysh")
            .arg("--vty_socket")
            .arg(dir)
            .args(["-c", command]),
        SHORT,
    )
}

/// Runs `gobgp <args>` against the ToR's gobgpd.
pub(crate) fn gobgp(ns: &Netns, args: &[&str]) -> Result<String> {
    let (host, port) = GOBGP_API.split_once(':').unwrap_or((GOBGP_API, "50051"));
    run_checked(
        ns.command("gobgp")
            .args(["-u", host, "-p", port])
            .args(args),
        SHORT,
    )
}

/// The prefixes in the daemon's RIB for one address family.
pub(crate) fn daemon_prefixes(
    daemon: TorDaemon,
    ns: &Netns,
    dir: &Path,
    v6: bool,
) -> Result<Vec<IpNet>> {
    match daemon {
        TorDaemon::Bird => {
            let table = if v6 { "master6" } else { "master4" };
            Ok(parse_bird_routes(&birdc(
                ns,
                dir,
                &["show", "route", "table", table],
            )?))
        }
        TorDaemon::Frr => {
            let family = if v6 { "ipv6" } else { "ipv4" };
            let out = vtysh(ns, dir, &format!("show bgp {family} unicast json"))?;
            json_keys("vtysh", &out, Some("routes"))
        }
        TorDaemon::Gobgp => {
            let family = if v6 { "ipv6" } else { "ipv4" };
            json_keys(
                "gobgp",
                &gobgp(ns, &["global", "rib", "-a", family, "-j"])?,
                None,
            )
        }
    }
}

/// Prefixes from `birdc show route`: every line that starts with a prefix.
fn parse_bird_routes(out: &str) -> Vec<IpNet> {
    out.lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The keys of a JSON object (optionally of its member `inner`), parsed as prefixes.
fn json_keys(tool: &str, out: &str, inner: Option<&str>) -> Result<Vec<IpNet>> {
    let parse_err = |reason: String| Error::Parse {
        tool: tool.into(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| parse_err(e.to_string()))?;
    let object = match inner {
        Some(key) => value.get(key).cloned().unwrap_or(serde_json::Value::Null),
        None => value,
    };
    match object {
        serde_json::Value::Object(map) => map
            .keys()
            .map(|k| {
                k.parse()
                    .map_err(|_| parse_err(format!("{k:?} is not a prefix")))
            })
            .collect(),
        // Empty tables print `{}` or nothing at all.
        serde_json::Value::Null => Ok(Vec::new()),
        other => Err(parse_err(format!("expected an object, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RouterConfig {
        RouterConfig {
            asn: 65001,
            router_id: Ipv4Addr::new(192, 0, 2, 200),
            neighbors: vec![
                Neighbor {
                    name: "hv1_v4".into(),
                    local: "192.0.2.0".parse().unwrap(),
                    remote: "192.0.2.1".parse().unwrap(),
                    remote_asn: 65101,
                },
                Neighbor {
                    name: "hv2_v6".into(),
                    local: "2001:db8:ffff:1::1".parse().unwrap(),
                    remote: "2001:db8:ffff:1::2".parse().unwrap(),
                    remote_asn: 65001,
                },
            ],
            options: TorOptions::default(),
        }
    }

    #[test]
    fn bird_tor_config_peers_every_neighbor() {
        let c = bird_tor_config(&cfg());
        assert!(c.contains("protocol bgp hv1_v4 {"));
        assert!(c.contains("neighbor 192.0.2.1 as 65101;"));
        assert!(c.contains("ipv6 { import all; export all; next hop self; gateway direct; }"));
        assert!(c.contains("rr client;"), "iBGP neighbours are RR clients");
    }

    #[test]
    fn frr_config_activates_each_family_on_its_own_sessions() {
        let c = frr_bgpd_config("tor1", &cfg());
        let v4 = c.split("address-family ipv4 unicast").nth(1).unwrap();
        let v4 = v4.split("exit-address-family").next().unwrap();
        assert!(v4.contains("neighbor 192.0.2.1 activate"));
        assert!(!v4.contains("2001:db8:ffff:1::2"));
        assert!(c.contains("neighbor 2001:db8:ffff:1::2 route-reflector-client"));
    }

    #[test]
    fn options_add_passwords_and_extended_next_hop() {
        let mut c = cfg();
        c.options = TorOptions {
            md5_password: Some("s3cret".into()),
            extended_next_hop: true,
            extra_routes: vec!["2001:db8:200::1/128".parse().unwrap()],
            ..TorOptions::default()
        };
        let bird = bird_tor_config(&c);
        assert!(bird.contains("password \"s3cret\";"));
        assert!(bird.contains("extended next hop on;"));
        assert!(bird.contains(
            "protocol static extra6 { ipv6; disabled;\n  route 2001:db8:200::1/128 blackhole;"
        ));
        let frr = frr_bgpd_config("tor1", &c);
        assert!(frr.contains("neighbor 192.0.2.1 password s3cret"));
        assert!(frr.contains("neighbor 2001:db8:ffff:1::2 capability extended-nexthop"));
        let v4 = frr.split("address-family ipv4 unicast").nth(1).unwrap();
        let v4 = v4.split("exit-address-family").next().unwrap();
        assert!(v4.contains("neighbor 2001:db8:ffff:1::2 activate"));
        assert!(gobgp_config(&c).contains("auth-password = \"s3cret\""));
    }

    #[test]
    fn options_add_multihop_and_ttl_security() {
        let mut c = cfg();
        c.options.multihop = Some(2);
        let bird = bird_tor_config(&c);
        assert!(bird.contains("multihop 2;"));
        assert!(
            !bird.contains("gateway direct"),
            "multihop iBGP resolves recursively"
        );
        let frr = frr_bgpd_config("tor1", &c);
        assert!(frr.contains("neighbor 192.0.2.1 ebgp-multihop 2"));
        c.options.multihop = None;
        c.options.ttl_security = true;
        assert!(bird_tor_config(&c).contains("ttl security yes;"));
        let frr = frr_bgpd_config("tor1", &c);
        assert!(frr.contains("neighbor 192.0.2.1 ttl-security hops 1"));
        assert!(!frr.contains("ebgp-multihop"));
    }

    #[test]
    fn bird_route_listing_is_parsed() {
        let out = "BIRD 2.0.12 ready.\nTable master4:\n0.0.0.0/0            blackhole [default4 00:00:01] * (200)\n\
                   198.51.100.10/32     unicast [hv1_v4 00:00:02] * (100) [AS65101i]\n\tvia 192.0.2.1 on dn0\n";
        assert_eq!(
            parse_bird_routes(out),
            vec![
                "0.0.0.0/0".parse::<IpNet>().unwrap(),
                "198.51.100.10/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn json_keys_reads_frr_and_gobgp_shapes() {
        let frr = r#"{"vrfId":0,"routes":{"198.51.100.10/32":[{}]}}"#;
        assert_eq!(json_keys("vtysh", frr, Some("routes")).unwrap().len(), 1);
        let gobgp = r#"{"0.0.0.0/0":[{"best":true}]}"#;
        assert_eq!(json_keys("gobgp", gobgp, None).unwrap().len(), 1);
        assert!(json_keys("gobgp", "{}", None).unwrap().is_empty());
        assert!(json_keys("gobgp", r#"{"x":1}"#, None).is_err());
    }
}
