//! skogd end to end in the test bed: a BIRD ToR, two hypervisors each running skogd, VMs on
//! them, and networking-calico-shaped resources from a directory or from etcd. Endpoints
//! appearing become routes at the ToR, rules and status; removing them removes all of it;
//! SIGHUP changes peers without touching the others; a restart loses no packet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;
use skog_agent::model::fixtures::{self, Port};
use skog_testbed::{
    EchoServer, HvId, ProbeOutcome, Protocol, Testbed, TorDaemon, TorId, TorOptions, VmId, VmSpec,
    wait_until,
};

const SKOGD: &str = env!("CARGO_BIN_EXE_skogd");
const SKOGCTL: &str = env!("CARGO_BIN_EXE_skogctl");
const CONVERGE: Duration = Duration::from_secs(30);
const TOR_ASN: u32 = 65000;

/// A test bed with one BIRD ToR and `hvs` hypervisors with one VM each.
struct Bed {
    tb: Testbed,
    tor: TorId,
    hvs: Vec<HvId>,
    vms: Vec<VmId>,
}

impl Bed {
    fn new(label: &str, hvs: usize) -> Bed {
        Bed::with_tor_options(label, hvs, TorOptions::default())
    }

    fn with_tor_options(label: &str, hvs: usize, options: TorOptions) -> Bed {
        let mut tb = Testbed::new(label).unwrap();
        let tor = tb.add_tor("tor1", TorDaemon::Bird, TOR_ASN).unwrap();
        tb.set_tor_options(tor, options).unwrap();
        let mut bed = Bed {
            tor,
            hvs: Vec::new(),
            vms: Vec::new(),
            tb,
        };
        for i in 0..hvs {
            let hv = bed
                .tb
                .add_hypervisor(&format!("hv{}", i + 1), 65001 + i as u32)
                .unwrap();
            bed.tb.link(hv, tor).unwrap();
            let vm = bed
                .tb
                .add_vm(hv, VmSpec::numbered(&format!("vm{}", i + 1), i + 1))
                .unwrap();
            bed.hvs.push(hv);
            bed.vms.push(vm);
        }
        bed.tb.start_tor(tor).unwrap();
        bed
    }

    fn node(&self, i: usize) -> String {
        self.tb.hv(self.hvs[i]).unwrap().name.clone()
    }

    /// The networking-calico WorkloadEndpoint of VM `i`, in security groups `groups`.
    fn endpoint(&self, i: usize, groups: &[&str]) -> Port {
        let vm = self.tb.vm(self.vms[i]).unwrap();
        Port {
            namespace: "openstack".into(),
            host: self.node(i),
            device: fixtures::uuid(0xd0, i + 1),
            port: vm.spec.port_id.clone(),
            mac: vm.spec.mac.clone(),
            ip_networks: vec![
                format!("{}/32", vm.spec.ipv4.unwrap()),
                format!("{}/128", vm.spec.ipv6.unwrap()),
            ],
            security_groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn vm_v4(&self, i: usize) -> IpAddr {
        self.tb.vm(self.vms[i]).unwrap().spec.ipv4.unwrap().into()
    }

    fn dir(&self) -> PathBuf {
        self.tb.dir().to_path_buf()
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir().join(format!("{}.sock", self.node(i)))
    }

    /// `skog.toml` for hypervisor `i` with `datastore` as its `[datastore]` table and one
    /// IPv4 and one IPv6 session to the ToR (`peers` leaves some out).
    fn config(&self, i: usize, datastore: &str, peers: &[&str]) -> PathBuf {
        let hv = self.tb.hv(self.hvs[i]).unwrap();
        let up = &hv.uplinks[0];
        let mut text = format!(
            "node_name = \"{node}\"\nlog_level = \"info,skog_agent=debug\"\n{datastore}\n\
             [bgp]\nasn = {asn}\nrouter_id = \"{rid}\"\nlisten_port = 0\n\
             [api]\nsocket = \"{socket}\"\n[metrics]\nlisten = \"127.0.0.1:9094\"\n",
            node = hv.name,
            asn = hv.asn,
            rid = up.hv_v4,
            socket = self.socket(i).display(),
        );
        for (name, address, family) in [
            ("tor1-v4", IpAddr::from(up.tor_v4), "ipv4"),
            ("tor1-v6", IpAddr::from(up.tor_v6), "ipv6"),
        ] {
            if peers.contains(&name) {
                text.push_str(&format!(
                    "[[bgp.peers]]\nname = \"{name}\"\naddress = \"{address}\"\nasn = {TOR_ASN}\n\
                     source_address = \"{src}\"\nfamilies = [\"{family}\"]\nhold_time_s = 9\n",
                    src = if family == "ipv4" {
                        IpAddr::from(up.hv_v4)
                    } else {
                        IpAddr::from(up.hv_v6)
                    },
                ));
            }
        }
        let path = self.dir().join(format!("{}.toml", hv.name));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts skogd on hypervisor `i` (as process `name`), with systemd's notify socket set.
    fn start_skogd(&mut self, i: usize, name: &str, config: &Path, notify: &Path) {
        let args = [
            format!("NOTIFY_SOCKET={}", notify.display()),
            SKOGD.to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.tb
            .spawn_on_hypervisor(self.hvs[i], name, "env", &args)
            .unwrap();
    }

    fn tor_has(&self, prefix: &str) -> Result<(), String> {
        let prefix = prefix.parse().unwrap();
        let routes = self.tb.tor(self.tor).unwrap().kernel_routes(false).unwrap();
        if routes.iter().any(|r| r.dst == prefix) {
            Ok(())
        } else {
            Err(format!("{prefix} not at the ToR: {routes:?}"))
        }
    }

    fn tor_lacks(&self, prefix: &str) -> Result<(), String> {
        match self.tor_has(prefix) {
            Ok(()) => Err(format!("{prefix} still at the ToR")),
            Err(_) => Ok(()),
        }
    }

    fn probe(&self, from: usize, to: usize, port: u16) -> ProbeOutcome {
        let addr = std::net::SocketAddr::new(self.vm_v4(to), port);
        self.tb
            .vm(self.vms[from])
            .unwrap()
            .ns()
            .probe(Protocol::Tcp, addr, Duration::from_secs(1))
            .unwrap()
    }
}

/// `skogctl --socket S -o json ARGS`, parsed.
fn skogctl_json(socket: &Path, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(SKOGCTL)
        .arg("--socket")
        .arg(socket)
        .args(["-o", "json"])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Waits until exactly the peers `names` are Established.
fn wait_established(socket: &Path, names: &[&str]) {
    wait_until(&format!("{names:?} established"), CONVERGE, || {
        let up = established(socket)?;
        if up == names {
            Ok(())
        } else {
            Err(format!("{up:?}"))
        }
    })
    .unwrap();
}

fn established(socket: &Path) -> Result<Vec<String>, String> {
    let peers = skogctl_json(socket, &["peers"])?;
    let up: Vec<String> = peers
        .as_array()
        .ok_or("not an array")?
        .iter()
        .filter(|p| p["state"] == "Established")
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    Ok(up)
}

/// A datagram socket standing in for systemd's notify socket.
fn notify_socket(dir: &Path, name: &str) -> (PathBuf, UnixDatagram) {
    let path = dir.join(format!("{name}.notify"));
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (path, socket)
}

/// Waits for a `READY=1` datagram.
fn wait_ready(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let messages = std::cell::RefCell::new(String::new());
    wait_until("READY=1 from skogd", CONVERGE, || {
        if let Ok(n) = socket.recv(&mut buf) {
            messages
                .borrow_mut()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
            messages.borrow_mut().push('\n');
        }
        if messages.borrow().contains("READY=1") {
            Ok(())
        } else {
            Err(messages.borrow().clone())
        }
    })
    .unwrap();
    messages.into_inner()
}

/// Writes a resource as a JSON file of the file datastore.
fn write_resource(dir: &Path, name: &str, value: &Value) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, value.to_string()).unwrap();
    std::fs::rename(tmp, dir.join(format!("{name}.json"))).unwrap();
}

/// `web` allows tcp/80 from anywhere and ICMP; `admin` members may ssh to `web`.
fn web_policy() -> (String, Value) {
    fixtures::sg_policy(
        "openstack",
        "web",
        vec![
            serde_json::json!({"action": "Allow", "ipVersion": 4, "protocol": "TCP",
                               "destination": {"ports": [80]}}),
            serde_json::json!({"action": "Allow", "ipVersion": 4, "protocol": "ICMP"}),
            fixtures::allow_tcp_from_group(22, "admin"),
        ],
        fixtures::allow_all_egress(),
    )
}

fn http_get(ns: &skog_testbed::Netns, path: &'static str) -> String {
    ns.enter(move || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9094").unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
    .unwrap()
}

#[test]
fn file_datastore_endpoints_become_routes_rules_and_announcements_and_go_away() {
    let mut bed = Bed::new("skogd_file", 2);
    let resources = bed.dir().join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    let (_, policy) = web_policy();
    write_resource(&resources, "sg-web", &policy);
    for i in 0..2 {
        let ep = bed.endpoint(i, &["web"]);
        write_resource(&resources, &format!("port{i}"), &ep.value());
    }
    let datastore = format!(
        "[datastore]\ntype = \"file\"\npath = \"{}\"",
        resources.display()
    );
    let mut notifies = Vec::new();
    for i in 0..2 {
        let config = bed.config(i, &datastore, &["tor1-v4", "tor1-v6"]);
        let (path, socket) = notify_socket(&bed.dir(), &bed.node(i));
        bed.start_skogd(i, "skogd", &config, &path);
        notifies.push(socket);
    }
    for socket in &notifies {
        let messages = wait_ready(socket);
        assert!(messages.contains("STATUS="), "{messages}");
    }
    // The API socket is a socket, mode 0660.
    let meta = std::fs::metadata(bed.socket(0)).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // Both sessions up on both hypervisors; the VM routes reach the ToR.
    for i in 0..2 {
        wait_established(&bed.socket(i), &["tor1-v4", "tor1-v6"]);
    }
    for i in 0..2 {
        let prefix = format!("{}/32", bed.vm_v4(i));
        wait_until("VM route at the ToR", CONVERGE, || bed.tor_has(&prefix)).unwrap();
    }

    // Real packets: ping across hypervisors, tcp/80 allowed, tcp/22 only from admin (nobody).
    let vm0 = bed.tb.vm(bed.vms[0]).unwrap().ns();
    wait_until("ping vm1 -> vm2", CONVERGE, || {
        vm0.ping(bed.vm_v4(1), 1)
            .map_err(|e| e.to_string())
            .and_then(|ok| if ok { Ok(()) } else { Err("no reply".into()) })
    })
    .unwrap();
    let vm1_ns = bed.tb.vm(bed.vms[1]).unwrap().ns();
    let _web = EchoServer::start(vm1_ns, Protocol::Tcp, bed.vm_v4(1), 80).unwrap();
    let _ssh = EchoServer::start(vm1_ns, Protocol::Tcp, bed.vm_v4(1), 22).unwrap();
    assert_eq!(bed.probe(0, 1, 80), ProbeOutcome::Allowed);
    assert_eq!(bed.probe(0, 1, 22), ProbeOutcome::TimedOut);

    // The CLI sees the endpoint, and the policy in force for its tap.
    let endpoints = skogctl_json(&bed.socket(1), &["endpoints"]).unwrap();
    let ep = &endpoints.as_array().unwrap()[0];
    assert_eq!(ep["state"], "up", "{ep}");
    assert_eq!(ep["security_groups"][0], "ossg.default.web");
    let tap = ep["interface"].as_str().unwrap().to_owned();
    let shown = skogctl_json(&bed.socket(1), &["policy", "show", &tap]).unwrap();
    let ruleset = shown["ruleset"].as_str().unwrap();
    assert!(ruleset.contains("dport 80"), "{ruleset}");
    // The endpoint's chain counted what web accepted (the tcp/80 probe) and what it dropped
    // (the tcp/22 one).
    let counted = |what: &str| {
        ruleset
            .lines()
            .filter(|l| l.contains(what) && l.contains("counter packets"))
            .any(|l| !l.contains("counter packets 0 "))
    };
    assert!(counted("return"), "{ruleset}");
    assert!(counted("drop"), "{ruleset}");
    // Routes: what we advertise to a peer, what it sent us, and the kernel's view.
    let prefixes = |args: &[&str]| -> Vec<(String, String)> {
        skogctl_json(&bed.socket(1), args)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let prefix = r["prefix"].as_str().unwrap().to_owned();
                (prefix, r["origin"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let vm1 = format!("{}/32", bed.vm_v4(1));
    let advertised = prefixes(&["routes", "--advertised", "tor1-v4"]);
    assert!(
        advertised.contains(&(vm1.clone(), "endpoint".into())),
        "{advertised:?}"
    );
    let received = prefixes(&["routes", "--received", "tor1-v4"]);
    assert!(
        received.contains(&("0.0.0.0/0".into(), "bgp".into())),
        "{received:?}"
    );
    let kernel = prefixes(&["routes", "--kernel"]);
    assert!(
        kernel.contains(&(vm1.clone(), "endpoint".into())),
        "{kernel:?}"
    );
    assert!(
        kernel.contains(&("0.0.0.0/0".into(), "bgp".into())),
        "{kernel:?}"
    );
    // Which rule decides: tcp/80 by web's first rule, tcp/22 by the default drop.
    let (src, dst) = (bed.vm_v4(0).to_string(), bed.vm_v4(1).to_string());
    let allowed = skogctl_json(&bed.socket(1), &["policy", "trace", &src, &dst, "tcp/80"]).unwrap();
    assert_eq!(allowed["verdict"], "allow", "{allowed}");
    assert!(
        allowed["rule"].as_str().unwrap().contains("ingress rule 0"),
        "{allowed}"
    );
    let dropped = skogctl_json(&bed.socket(1), &["policy", "trace", &src, &dst, "tcp/22"]).unwrap();
    assert_eq!(dropped["verdict"], "drop", "{dropped}");
    let status = skogctl_json(&bed.socket(1), &["status"]).unwrap();
    assert_eq!(status["datastore"]["state"], "in-sync", "{status}");
    assert_eq!(status["peers"]["established"], 2, "{status}");

    // Metrics and health on the metrics listener.
    let hv1 = bed.tb.hv(bed.hvs[1]).unwrap().ns();
    let metrics = http_get(hv1, "/metrics");
    assert!(
        metrics.contains("skog_endpoints{state=\"up\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skog_bgp_session_state{peer=\"tor1-v4\"} 6"),
        "{metrics}"
    );
    assert!(http_get(hv1, "/readyz").starts_with("HTTP/1.0 200"));
    // The learned default routes point at nexthop objects (the core exports every 250 ms).
    wait_until("the dataplane's counters in the metrics", CONVERGE, || {
        let metrics = http_get(hv1, "/metrics");
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let seen = [
            value("skog_nexthop_objects"),
            value("skog_nexthop_writes_total"),
            value("skog_kernel_writes_total"),
        ];
        seen.iter()
            .all(|&v| v >= 1.0)
            .then_some(())
            .ok_or(format!("{seen:?}"))
    })
    .unwrap();

    // A live security-group change: ssh from anywhere.
    let (name, mut policy) = web_policy();
    policy["spec"]["ingress"].as_array_mut().unwrap().push(
        serde_json::json!({"action": "Allow", "ipVersion": 4, "protocol": "TCP",
                                 "destination": {"ports": [22]}}),
    );
    write_resource(&resources, "sg-web", &policy);
    wait_until(&format!("{name}: ssh allowed"), CONVERGE, || {
        match bed.probe(0, 1, 22) {
            ProbeOutcome::Allowed => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();

    // The endpoint goes: its route leaves the ToR and its chains go.
    std::fs::remove_file(resources.join("port1.json")).unwrap();
    let prefix = format!("{}/32", bed.vm_v4(1));
    wait_until("VM route withdrawn", CONVERGE, || bed.tor_lacks(&prefix)).unwrap();
    wait_until("endpoint gone from the CLI", CONVERGE, || {
        let eps = skogctl_json(&bed.socket(1), &["endpoints"])?;
        if eps.as_array().is_some_and(Vec::is_empty) {
            Ok(())
        } else {
            Err(eps.to_string())
        }
    })
    .unwrap();
    assert!(skogctl_json(&bed.socket(1), &["policy", "show", &tap]).is_err());
}

#[test]
fn etcd_restart_loses_no_packet_and_sighup_changes_only_the_changed_peer() {
    let mut bed = Bed::new("skogd_etcd", 2);
    let url = bed.tb.start_etcd().unwrap();
    let put = |bed: &Bed, key: &str, value: &Value| {
        bed.tb
            .etcdctl(bed.hvs[0], &["put", key, &value.to_string()])
            .unwrap();
    };
    let (key, policy) = web_policy();
    put(&bed, &key, &policy);
    for i in 0..2 {
        let ep = bed.endpoint(i, &["web"]);
        put(&bed, &ep.key(), &ep.value());
    }
    // hv2's IPv6 session comes from a Calico BGPPeer for its node, not from its file.
    let tor_v6 = bed.tb.hv(bed.hvs[1]).unwrap().uplinks[0].tor_v6;
    put(
        &bed,
        "/calico/resources/v3/projectcalico.org/bgppeers/tor1-v6",
        &serde_json::json!({
            "kind": "BGPPeer", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "tor1-v6"},
            "spec": {"node": bed.node(1), "peerIP": tor_v6.to_string(), "asNumber": TOR_ASN}
        }),
    );
    let datastore = format!("[datastore]\ntype = \"etcd\"\nendpoints = [\"{url}\"]");
    let mut configs = Vec::new();
    let mut notifies = Vec::new();
    for i in 0..2 {
        let file_peers: &[&str] = if i == 0 {
            &["tor1-v4", "tor1-v6"]
        } else {
            &["tor1-v4"]
        };
        let config = bed.config(i, &datastore, file_peers);
        let (path, socket) = notify_socket(&bed.dir(), &bed.node(i));
        bed.start_skogd(i, "skogd", &config, &path);
        configs.push(config);
        notifies.push((path, socket));
    }
    for (_, socket) in &notifies {
        wait_ready(socket);
    }
    for i in 0..2 {
        let prefix = format!("{}/32", bed.vm_v4(i));
        wait_until("VM route at the ToR", CONVERGE, || bed.tor_has(&prefix)).unwrap();
    }
    wait_established(&bed.socket(1), &["bgppeer/tor1-v6", "tor1-v4"]);
    // Status write-back as Felix does it: the port is up.
    let port = bed.endpoint(0, &[]).port;
    wait_until("endpoint status up in etcd", CONVERGE, || {
        let out = bed
            .tb
            .etcdctl(bed.hvs[0], &["get", "--prefix", "/calico/felix/v2/"])
            .map_err(|e| e.to_string())?;
        let line = out
            .lines()
            .position(|l| l.ends_with(&format!("endpoint/{port}")));
        match line.and_then(|n| out.lines().nth(n + 1)) {
            Some(v) if v.contains("\"up\"") => Ok(()),
            _ => Err(out),
        }
    })
    .unwrap();

    // SIGHUP with tor1-v6 removed: tor1-v4 stays up throughout.
    let socket0 = bed.socket(0);
    wait_established(&socket0, &["tor1-v4", "tor1-v6"]);
    let uptime_before = skogctl_json(&socket0, &["peers"]).unwrap()[0]["uptime_s"]
        .as_u64()
        .unwrap();
    bed.config(0, &datastore, &["tor1-v4"]);
    let skogd0 = bed.tb.take_process(bed.hvs[0], "skogd").unwrap();
    skogd0.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_until("tor1-v6 removed", CONVERGE, || {
        let peers = skogctl_json(&socket0, &["peers"])?;
        let names: Vec<_> = peers
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].clone())
            .collect();
        if names == ["tor1-v4"] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .unwrap();
    let peers = skogctl_json(&socket0, &["peers"]).unwrap();
    assert_eq!(peers[0]["state"], "Established", "{peers}");
    assert!(
        peers[0]["uptime_s"].as_u64().unwrap() >= uptime_before,
        "{peers}"
    );

    // Hitless restart of skogd on hv1 under a ping flood from vm1 to vm2.
    let mut skogd0 = skogd0;
    let vm0 = bed.tb.vm(bed.vms[0]).unwrap().ns();
    let mut ping = vm0.command("ping");
    // A count and no deadline: at a deadline ping stops at once, and an echo still on its way
    // back would count as lost; with a count it sends 1,200 (5 ms apart, spanning the restart)
    // and waits a bounded time for the last replies.
    ping.args(["-i", "0.005", "-c", "1200", "-q"])
        .arg(bed.vm_v4(1).to_string())
        .stdout(std::process::Stdio::piped());
    let ping = ping.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let status = skogd0.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "skogd exited with {status}");
    std::thread::sleep(Duration::from_millis(500));
    let (path, socket) = &notifies[0];
    bed.start_skogd(0, "skogd", &configs[0], path);
    wait_ready(socket);
    let out = ping.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let counts: Vec<u64> = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("{summary}"))
        .split(',')
        .take(2)
        .map(|part| {
            part.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap()
        })
        .collect();
    assert!(counts[0] > 500, "{summary}");
    assert_eq!(
        counts[0], counts[1],
        "packets lost across the restart: {summary}"
    );
    // The restarted skogd serves the API again and has its session back.
    wait_established(&socket0, &["tor1-v4"]);
}

/// RFC 8950 end to end: one IPv6 session carries IPv4 too. The ToR's IPv4 default route goes
/// into the hypervisor's kernel `via inet6`, the VM's /32 into the ToR's, and IPv4 packets
/// flow both ways over them.
#[test]
fn ipv4_over_an_ipv6_session_installs_routes_via_inet6_that_carry_packets() {
    let options = TorOptions {
        extended_next_hop: true,
        ..TorOptions::default()
    };
    let mut bed = Bed::with_tor_options("skogd_enhe", 1, options);
    let resources = bed.dir().join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    let (_, policy) = web_policy();
    write_resource(&resources, "sg-web", &policy);
    write_resource(&resources, "port0", &bed.endpoint(0, &["web"]).value());
    let datastore = format!(
        "[datastore]\ntype = \"file\"\npath = \"{}\"",
        resources.display()
    );
    let config = bed.config(0, &datastore, &["tor1-v6"]);
    let text = std::fs::read_to_string(&config).unwrap();
    let both = text.replace("families = [\"ipv6\"]", "families = [\"ipv4\", \"ipv6\"]");
    assert_ne!(text, both);
    std::fs::write(&config, both).unwrap();
    let (path, notify) = notify_socket(&bed.dir(), &bed.node(0));
    bed.start_skogd(0, "skogd", &config, &path);
    wait_ready(&notify);
    wait_established(&bed.socket(0), &["tor1-v6"]);

    let hv = bed.tb.hv(bed.hvs[0]).unwrap();
    let up = hv.uplinks[0].clone();
    let default: IpNet = "0.0.0.0/0".parse().unwrap();
    wait_until("the IPv4 default route via inet6", CONVERGE, || {
        let routes = hv.ns().kernel_routes(false).map_err(|e| e.to_string())?;
        match routes.iter().find(|r| r.dst == default) {
            Some(r) if r.protocol == "84" && r.gateways == [IpAddr::from(up.tor_v6)] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    let vm = format!("{}/32", bed.vm_v4(0));
    wait_until("the VM route at the ToR", CONVERGE, || bed.tor_has(&vm)).unwrap();

    // An address only the default route leads to: the ToR's router id, on its loopback.
    let tor = bed.tb.tor(bed.tor).unwrap();
    let far = tor.router_id;
    tor.ns()
        .ip(&["addr", "add", &format!("{far}/32"), "dev", "lo"])
        .unwrap();
    let vm_ns = bed.tb.vm(bed.vms[0]).unwrap().ns();
    wait_until("ping from the VM to the ToR's loopback", CONVERGE, || {
        vm_ns
            .ping(IpAddr::from(far), 1)
            .map_err(|e| e.to_string())
            .and_then(|ok| if ok { Ok(()) } else { Err("no reply".into()) })
    })
    .unwrap();
}

#[test]
fn an_invalid_configuration_stops_skogd_with_the_file_and_line() {
    let dir = std::env::temp_dir().join(format!("skogd-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("skog.toml");
    std::fs::write(
        &path,
        "node_name = \"a\"\n[bgp]\nasn = 65001\nrouter_idd = \"192.0.2.1\"\n",
    )
    .unwrap();
    let out = Command::new(SKOGD)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skog.toml") && stderr.contains("line 4"),
        "{stderr}"
    );
}
