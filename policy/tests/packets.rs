//! Real packets between VM namespaces on a test bed, with Skog's table applied in each
//! hypervisor's namespace. Hypervisors are plumbed by hand (`plumb_vm_by_hand`) and announce
//! with BIRD to a BIRD ToR: only filtering is under test here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use skog_policy::model::{
    Action, Endpoint, Icmp, IpNat, Policy, PolicyModel, Protocol as Proto, Rule,
};
use skog_policy::netlink::NfWriter;
use skog_policy::trace::{TracePacket, Verdict};
use skog_policy::{Applier, ApplyOutcome, Nft, compile, trace};
use skog_testbed::{
    EchoServer, HvId, ProbeOutcome, Protocol, Testbed, TorDaemon, TorId, VmId, VmSpec, wait_until,
};

const CONVERGE: Duration = Duration::from_secs(60);
/// Deadline of a probe expected to be dropped: short, since each one waits it out in full.
const PROBE: Duration = Duration::from_millis(1500);
/// Deadline of a probe expected through: it returns with the echo, so a generous deadline costs
/// nothing, and a first packet may wait for neighbour resolution on a loaded machine.
const PROBE_THROUGH: Duration = Duration::from_secs(5);

fn rule(proto: Option<&str>, ports: &[&str]) -> Rule {
    let mut r = Rule::new(Action::Allow);
    r.protocol = proto.map(|p| Proto::Name(p.into()));
    r.destination.ports = ports.iter().map(|p| p.to_string()).collect();
    r
}

fn selector(sg: &str) -> String {
    format!("has(sg.projectcalico.org/openstack-{sg})")
}

/// The security groups of the cloud.
fn security_groups() -> BTreeMap<String, Policy> {
    let mut from_default = rule(None, &[]);
    from_default.source.selector = Some(selector("default"));
    let mut ping4 = rule(Some("ICMP"), &[]);
    ping4.icmp = Some(Icmp {
        r#type: Some(8),
        code: None,
    });
    let mut ping6 = rule(Some("ICMPv6"), &[]);
    ping6.icmp = Some(Icmp {
        r#type: Some(128),
        code: None,
    });
    let all_out = Some(vec![rule(None, &[])]);
    BTreeMap::from([
        (
            "default".to_owned(),
            Policy {
                ingress: Some(vec![from_default]),
                egress: all_out.clone(),
            },
        ),
        (
            "web".to_owned(),
            Policy {
                ingress: Some(vec![
                    rule(Some("TCP"), &["80", "443"]),
                    rule(Some("UDP"), &["7000:7100"]),
                    ping4,
                    ping6,
                    // Invalid (bad range, unknown protocol): each rejected alone, fail closed.
                    rule(Some("TCP"), &["90:80"]),
                    rule(Some("tcpp"), &[]),
                    rule(Some("TCP"), &["8081"]),
                ]),
                egress: all_out.clone(),
            },
        ),
        (
            // Clients: may send anything, accept nothing unsolicited.
            "client".to_owned(),
            Policy {
                ingress: Some(vec![]),
                egress: all_out,
            },
        ),
    ])
}

struct Port {
    vm: VmId,
    sgs: Vec<&'static str>,
    extra_nets: Vec<IpNet>,
    fips: Vec<IpNat>,
}

/// The cloud as the datastore would describe it: every port, its groups, the membership.
struct Cloud {
    sgs: BTreeMap<String, Policy>,
    ports: Vec<Port>,
}

impl Cloud {
    fn nets(&self, tb: &Testbed, p: &Port) -> Vec<IpNet> {
        let mut nets: Vec<IpNet> = [false, true]
            .iter()
            .map(|&v6| IpNet::from(tb.vm_addr(p.vm, v6).unwrap()))
            .collect();
        nets.extend(&p.extra_nets);
        nets
    }

    /// What hypervisor `hv` must enforce.
    fn model(&self, tb: &Testbed, hv: HvId) -> PolicyModel {
        let mut m = PolicyModel {
            policies: self
                .sgs
                .iter()
                .map(|(k, v)| (format!("ossg.default.{k}"), v.clone()))
                .collect(),
            ..PolicyModel::default()
        };
        for p in &self.ports {
            for sg in &p.sgs {
                m.selectors
                    .entry(selector(sg))
                    .or_default()
                    .extend(self.nets(tb, p));
            }
            let vm = tb.vm(p.vm).unwrap();
            if vm.hv != hv {
                continue;
            }
            m.endpoints.insert(
                vm.spec.port_id.clone(),
                Endpoint {
                    interface: vm.tap.clone(),
                    mac: Some(vm.spec.mac.clone()),
                    ip_networks: self.nets(tb, p),
                    ip_nats: p.fips.clone(),
                    tiers: vec![p.sgs.iter().map(|s| format!("ossg.default.{s}")).collect()],
                },
            );
        }
        m
    }
}

/// One applier per hypervisor.
struct Dataplane {
    appliers: Vec<(HvId, Applier)>,
}

impl Dataplane {
    /// Appliers running nft in each hypervisor's namespace, with an nfnetlink socket opened
    /// there (every change goes over it; nft is the fallback).
    fn new(tb: &Testbed, hvs: &[HvId]) -> Dataplane {
        let appliers = hvs
            .iter()
            .map(|&hv| {
                let ns = tb.hv(hv).unwrap().ns();
                let writer = ns.enter(NfWriter::open).unwrap().unwrap();
                let applier = Applier::new(Nft::new().in_netns(ns.name())).with_netlink(writer);
                (hv, applier)
            })
            .collect();
        Dataplane { appliers }
    }

    /// Compiles and applies the cloud on every hypervisor; returns the compiler's problems
    /// and what each apply did.
    async fn apply(&mut self, tb: &Testbed, cloud: &Cloud) -> (Vec<String>, Vec<ApplyOutcome>) {
        let mut problems = BTreeSet::new();
        let mut outcomes = Vec::new();
        for (hv, applier) in &mut self.appliers {
            let compiled = compile(&cloud.model(tb, *hv)).unwrap();
            problems.extend(compiled.problems.iter().map(ToString::to_string));
            outcomes.push(applier.apply(&compiled.ruleset).await.unwrap());
        }
        (problems.into_iter().collect(), outcomes)
    }
}

/// A TCP or UDP probe from one VM to another, with `deadline` ([`PROBE`] or [`PROBE_THROUGH`]).
fn probe(
    tb: &Testbed,
    from: VmId,
    to: VmId,
    protocol: Protocol,
    port: u16,
    v6: bool,
    deadline: Duration,
) -> ProbeOutcome {
    let addr = tb.vm_socket(to, v6, port).unwrap();
    tb.vm(from)
        .unwrap()
        .ns()
        .probe(protocol, addr, deadline)
        .unwrap()
}

fn ping(tb: &Testbed, from: VmId, to: VmId, v6: bool) -> bool {
    let addr = tb.vm_addr(to, v6).unwrap();
    tb.vm(from).unwrap().ns().ping(addr, 2).unwrap()
}

/// Echo servers on TCP and UDP, dual stack, in a VM.
fn serve(tb: &Testbed, vm: VmId, tcp: &[u16], udp: &[u16]) -> Vec<EchoServer> {
    let ns = tb.vm(vm).unwrap().ns();
    let any = IpAddr::from([0u16; 8]);
    let mut servers: Vec<EchoServer> = tcp
        .iter()
        .map(|&p| EchoServer::start(ns, Protocol::Tcp, any, p).unwrap())
        .collect();
    servers.extend(
        udp.iter()
            .map(|&p| EchoServer::start(ns, Protocol::Udp, any, p).unwrap()),
    );
    servers
}

/// hv1 and hv2 behind one BIRD ToR, Calico's BIRD on both, VMs plumbed by hand.
fn two_hypervisors(label: &str, vms_per_hv: usize) -> (Testbed, Vec<VmId>) {
    let mut tb = Testbed::new(label).unwrap();
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001).unwrap();
    let mut vms = Vec::new();
    for h in 0..2 {
        let hv = tb
            .add_hypervisor(&format!("hv{}", h + 1), 65101 + h as u32)
            .unwrap();
        tb.link(hv, tor).unwrap();
        for i in 0..vms_per_hv {
            let n = h * vms_per_hv + i;
            let vm = tb
                .add_vm(hv, VmSpec::numbered(&format!("vm{n}"), n))
                .unwrap();
            tb.plumb_vm_by_hand(vm).unwrap();
            vms.push(vm);
        }
    }
    tb.start_tor(tor).unwrap();
    for h in 0..2 {
        tb.start_reference_bird(HvId(h)).unwrap();
    }
    let t = tb.tor(tor).unwrap();
    let want: Vec<IpNet> = vms
        .iter()
        .flat_map(|&vm| [false, true].map(|v6| IpNet::from(tb.vm_addr(vm, v6).unwrap())))
        .collect();
    wait_until("the ToR to install every VM route", CONVERGE, || {
        let mut have: Vec<IpNet> = Vec::new();
        for v6 in [false, true] {
            have.extend(
                t.kernel_routes(v6)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|r| r.dst),
            );
        }
        let missing: Vec<_> = want.iter().filter(|p| !have.contains(p)).collect();
        missing
            .is_empty()
            .then_some(())
            .ok_or(format!("missing {missing:?}"))
    })
    .unwrap();
    for h in 0..2 {
        let ns = tb.hv(HvId(h)).unwrap().ns();
        for v6 in [false, true] {
            wait_until("the hypervisor's default route", CONVERGE, || {
                let routes = ns.kernel_routes(v6).map_err(|e| e.to_string())?;
                routes
                    .iter()
                    .any(|r| r.dst.prefix_len() == 0)
                    .then_some(())
                    .ok_or(format!("{routes:?}"))
            })
            .unwrap();
        }
    }
    (tb, vms)
}

#[tokio::test]
async fn security_groups_filter_real_packets_across_two_hypervisors() {
    let (tb, vms) = two_hypervisors("pol_sg", 2);
    // hv1: web (web + default), db (default). hv2: app (default), client (client).
    let (web, db, app, client) = (vms[0], vms[1], vms[2], vms[3]);
    // Before any rules everything flows (the bed itself works).
    let _db_servers = serve(&tb, db, &[8080], &[]);
    assert_eq!(
        probe(&tb, client, db, Protocol::Tcp, 8080, false, PROBE_THROUGH),
        ProbeOutcome::Allowed
    );

    let mut cloud = Cloud {
        sgs: security_groups(),
        ports: vec![
            Port {
                vm: web,
                sgs: vec!["web", "default"],
                extra_nets: vec![],
                fips: vec![],
            },
            Port {
                vm: db,
                sgs: vec!["default"],
                extra_nets: vec![],
                fips: vec![],
            },
            Port {
                vm: app,
                sgs: vec!["default"],
                extra_nets: vec![],
                fips: vec![],
            },
            Port {
                vm: client,
                sgs: vec!["client"],
                extra_nets: vec![],
                fips: vec![],
            },
        ],
    };
    let mut dp = Dataplane::new(&tb, &[HvId(0), HvId(1)]);
    let (problems, _) = dp.apply(&tb, &cloud).await;
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].contains("ossg.default.web")
            && problems[0].contains("ingress rule 4")
            && problems[0].contains("90:80"),
        "{problems:#?}"
    );
    assert!(
        problems[1].contains("ingress rule 5") && problems[1].contains("tcpp"),
        "{problems:#?}"
    );

    let _web_servers = serve(&tb, web, &[80, 85, 8080, 8081], &[7050, 7200]);
    let _client_servers = serve(&tb, client, &[8080], &[]);
    for v6 in [false, true] {
        // Remote group: app (default, other hypervisor) reaches web and db on any port.
        assert_eq!(
            probe(&tb, app, web, Protocol::Tcp, 8080, v6, PROBE_THROUGH),
            ProbeOutcome::Allowed,
            "v6={v6}"
        );
        assert_eq!(
            probe(&tb, app, db, Protocol::Tcp, 8080, v6, PROBE_THROUGH),
            ProbeOutcome::Allowed,
            "v6={v6}"
        );
        // client is not in default: only web's public rules apply.
        assert_eq!(
            probe(&tb, client, web, Protocol::Tcp, 80, v6, PROBE_THROUGH),
            ProbeOutcome::Allowed,
            "v6={v6}"
        );
        assert_eq!(
            probe(&tb, client, web, Protocol::Tcp, 8080, v6, PROBE),
            ProbeOutcome::TimedOut,
            "v6={v6}"
        );
        assert_eq!(
            probe(&tb, client, web, Protocol::Udp, 7050, v6, PROBE_THROUGH),
            ProbeOutcome::Allowed,
            "range, v6={v6}"
        );
        assert_eq!(
            probe(&tb, client, web, Protocol::Udp, 7200, v6, PROBE),
            ProbeOutcome::TimedOut,
            "v6={v6}"
        );
        assert!(ping(&tb, client, web, v6), "icmp echo allowed, v6={v6}");
        assert!(!ping(&tb, client, db, v6), "icmp blocked, v6={v6}");
        assert_eq!(
            probe(&tb, client, db, Protocol::Tcp, 8080, v6, PROBE),
            ProbeOutcome::TimedOut,
            "v6={v6}"
        );
        // The rules after the invalid ones still work; the invalid ones allow nothing.
        assert_eq!(
            probe(&tb, client, web, Protocol::Tcp, 8081, v6, PROBE_THROUGH),
            ProbeOutcome::Allowed,
            "v6={v6}"
        );
        assert_eq!(
            probe(&tb, client, web, Protocol::Tcp, 85, v6, PROBE),
            ProbeOutcome::TimedOut,
            "v6={v6}"
        );
        // Replies: client accepts nothing unsolicited, yet the echoes above came back.
        assert_eq!(
            probe(&tb, web, client, Protocol::Tcp, 8080, v6, PROBE),
            ProbeOutcome::TimedOut,
            "v6={v6}"
        );
    }

    // client joins "default" (a change on hv2); db on hv1 follows through its set.
    cloud.ports[3].sgs.push("default");
    let (_, outcomes) = dp.apply(&tb, &cloud).await;
    // hv1 only sees new members of the "default" sets: an nfnetlink element update.
    assert!(
        matches!(outcomes[0], ApplyOutcome::Elements { .. }),
        "{outcomes:?}"
    );
    for v6 in [false, true] {
        assert_eq!(
            probe(&tb, client, db, Protocol::Tcp, 8080, v6, PROBE_THROUGH),
            ProbeOutcome::Allowed,
            "v6={v6}"
        );
    }
    cloud.ports[3].sgs.pop();
    dp.apply(&tb, &cloud).await;
    for v6 in [false, true] {
        assert_eq!(
            probe(&tb, client, db, Protocol::Tcp, 8080, v6, PROBE),
            ProbeOutcome::TimedOut,
            "v6={v6}"
        );
    }

    // A rule of "web" changes (TCP 80, 443 -> 8080): hv1 rewrites the group's policy chain
    // in one nfnetlink batch, and packets follow at once.
    cloud.sgs.get_mut("web").unwrap().ingress.as_mut().unwrap()[0] =
        rule(Some("TCP"), &["8080", "443"]);
    let (_, outcomes) = dp.apply(&tb, &cloud).await;
    assert!(
        matches!(outcomes[0], ApplyOutcome::Netlink { .. }),
        "{outcomes:?}"
    );
    for v6 in [false, true] {
        assert_eq!(
            probe(&tb, client, web, Protocol::Tcp, 8080, v6, PROBE_THROUGH),
            ProbeOutcome::Allowed,
            "v6={v6}"
        );
        assert_eq!(
            probe(&tb, client, web, Protocol::Tcp, 80, v6, PROBE),
            ProbeOutcome::TimedOut,
            "v6={v6}"
        );
    }
    for (_, applier) in &mut dp.appliers {
        assert_eq!(applier.refresh().await.unwrap(), ApplyOutcome::Unchanged);
    }
}

#[tokio::test]
async fn a_floating_ip_reaches_its_vm_from_the_fabric() {
    let (tb, vms) = two_hypervisors("pol_fip", 1);
    let (vm, other) = (vms[0], vms[1]);
    let fip: IpAddr = "203.0.113.13".parse().unwrap();
    let internal = tb.vm_addr(vm, false).unwrap();
    let mut cloud = Cloud {
        sgs: security_groups(),
        ports: vec![
            Port {
                vm,
                sgs: vec!["web"],
                extra_nets: vec![],
                fips: vec![IpNat {
                    internal,
                    external: fip,
                }],
            },
            Port {
                vm: other,
                sgs: vec!["client"],
                extra_nets: vec![],
                fips: vec![],
            },
        ],
    };
    let mut dp = Dataplane::new(&tb, &[HvId(0), HvId(1)]);
    dp.apply(&tb, &cloud).await;
    // What the route dataplane does for a floating IP: a host route to the tap, which BIRD
    // announces.
    let hv1 = tb.hv(HvId(0)).unwrap().ns();
    let tap = tb.vm(vm).unwrap().tap.clone();
    hv1.ip(&[
        "route",
        "replace",
        &format!("{fip}/32"),
        "dev",
        &tap,
        "scope",
        "link",
    ])
    .unwrap();
    let tor = tb.tor(TorId(0)).unwrap();
    wait_until("the ToR to learn the floating IP", CONVERGE, || {
        let routes = tor.kernel_routes(false).map_err(|e| e.to_string())?;
        routes
            .iter()
            .any(|r| r.dst == IpNet::from(fip))
            .then_some(())
            .ok_or(format!("{routes:?}"))
    })
    .unwrap();
    let _servers = serve(&tb, vm, &[80, 8080], &[]);
    let to = SocketAddr::new(fip, 80);
    assert!(
        tor.ns()
            .probe(Protocol::Tcp, to, PROBE_THROUGH)
            .unwrap()
            .is_allowed(),
        "fabric -> floating IP"
    );
    // Policy still applies to the translated traffic.
    let closed = tor
        .ns()
        .probe(Protocol::Tcp, SocketAddr::new(fip, 8080), PROBE)
        .unwrap();
    assert_eq!(closed, ProbeOutcome::TimedOut);
    // From a VM on the other hypervisor too.
    assert!(
        tb.vm(other)
            .unwrap()
            .ns()
            .probe(Protocol::Tcp, to, PROBE_THROUGH)
            .unwrap()
            .is_allowed()
    );

    // Without the floating IP, the address leads nowhere.
    cloud.ports[0].fips.clear();
    dp.apply(&tb, &cloud).await;
    assert_ne!(
        tor.ns().probe(Protocol::Tcp, to, PROBE).unwrap(),
        ProbeOutcome::Allowed
    );
}

#[tokio::test]
async fn vm_edges_spoofing_host_services_and_metadata() {
    let mut tb = Testbed::new("pol_edge").unwrap();
    let hv = tb.add_hypervisor("hv1", 65101).unwrap();
    let (a, b) = (
        tb.add_vm(hv, VmSpec::numbered("vma", 0)).unwrap(),
        tb.add_vm(hv, VmSpec::numbered("vmb", 1)).unwrap(),
    );
    for vm in [a, b] {
        tb.plumb_vm_by_hand(vm).unwrap();
    }
    let hv_ns = tb.hv(hv).unwrap().ns();
    // A default route out of another interface (the uplink of a real hypervisor): proxy ARP
    // answers for the VMs' gateway only when the host can route to it.
    hv_ns
        .ip(&[
            "link", "add", "fabric0", "type", "veth", "peer", "name", "fabric1",
        ])
        .unwrap();
    hv_ns.ip(&["link", "set", "fabric0", "up"]).unwrap();
    hv_ns
        .ip(&["route", "add", "default", "dev", "fabric0"])
        .unwrap();
    // A host address the VMs can aim at, and services on it.
    hv_ns
        .ip(&["addr", "add", "192.0.2.200/32", "dev", "lo"])
        .unwrap();
    let host = IpAddr::from([192, 0, 2, 200]);
    let _ssh = EchoServer::start(hv_ns, Protocol::Tcp, IpAddr::from([0u8; 4]), 2222).unwrap();
    let _dns = EchoServer::start(hv_ns, Protocol::Udp, IpAddr::from([0u8; 4]), 53).unwrap();
    let _metadata =
        EchoServer::start(hv_ns, Protocol::Tcp, IpAddr::from([127, 0, 0, 1]), 8775).unwrap();
    let spoofed = "198.51.100.99";
    let a_ns = tb.vm(a).unwrap().ns();
    a_ns.ip(&["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"])
        .unwrap();
    // Replies to the spoofed source route back to vma: only the filter can stop it.
    let tap_a = tb.vm(a).unwrap().tap.clone();
    hv_ns
        .ip(&[
            "route",
            "add",
            &format!("{spoofed}/32"),
            "dev",
            &tap_a,
            "scope",
            "link",
        ])
        .unwrap();
    // DNAT to 127.0.0.1 from a tap needs route_localnet (the route dataplane sets it, as Felix).
    hv_ns
        .sysctl(&format!("net.ipv4.conf.{tap_a}.route_localnet"), "1")
        .unwrap();
    let b_addr = tb.vm_addr(b, false).unwrap().to_string();
    let spoof_ping = || {
        a_ns.run(&[
            "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-I", spoofed, &b_addr,
        ])
        .is_ok()
    };
    let metadata = SocketAddr::from(([169, 254, 169, 254], 80));
    // The taps' link-local addresses finish DAD before IPv6 neighbour discovery answers.
    wait_until("IPv6 between the VMs", Duration::from_secs(10), || {
        ping(&tb, a, b, true).then_some(()).ok_or_else(String::new)
    })
    .unwrap();
    assert!(spoof_ping(), "without rules the spoofed ping gets through");
    assert!(
        a_ns.probe(Protocol::Tcp, SocketAddr::new(host, 2222), PROBE_THROUGH)
            .unwrap()
            .is_allowed()
    );

    let mut open = rule(None, &[]);
    open.source.nets = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    let mut cloud = Cloud {
        sgs: BTreeMap::from([(
            "open".to_owned(),
            Policy {
                ingress: Some(vec![open]),
                egress: Some(vec![rule(None, &[])]),
            },
        )]),
        ports: vec![
            Port {
                vm: a,
                sgs: vec!["open"],
                extra_nets: vec![],
                fips: vec![],
            },
            Port {
                vm: b,
                sgs: vec!["open"],
                extra_nets: vec![],
                fips: vec![],
            },
        ],
    };
    let mut dp = Dataplane::new(&tb, &[hv]);
    dp.apply(&tb, &cloud).await;
    assert!(ping(&tb, a, b, false), "own IPv4 address passes");
    assert!(ping(&tb, a, b, true), "own IPv6 address passes");
    assert!(!spoof_ping(), "a spoofed source is dropped");
    assert_eq!(
        a_ns.probe(Protocol::Tcp, SocketAddr::new(host, 2222), PROBE)
            .unwrap(),
        ProbeOutcome::TimedOut,
        "host port closed to VMs"
    );
    assert!(
        a_ns.probe(Protocol::Udp, SocketAddr::new(host, 53), PROBE_THROUGH)
            .unwrap()
            .is_allowed(),
        "DNS to the host"
    );
    assert!(
        a_ns.probe(Protocol::Tcp, metadata, PROBE_THROUGH)
            .unwrap()
            .is_allowed(),
        "metadata DNAT"
    );

    // An allowed address pair makes the extra source legitimate.
    cloud.ports[0]
        .extra_nets
        .push(format!("{spoofed}/32").parse().unwrap());
    dp.apply(&tb, &cloud).await;
    assert!(spoof_ping(), "allowed address pair");
}

/// A packet sent for real, and the same packet as `trace` sees it.
struct Probe {
    label: String,
    from: VmId,
    send: Send,
    packet: TracePacket,
}

enum Send {
    Connect(Protocol, SocketAddr),
    Ping(IpAddr),
    /// A ping from an address the VM does not own.
    PingFrom(&'static str, IpAddr),
}

impl Probe {
    /// Whether the packet gets through (a refused connection got through the filter). A
    /// connection expected through gets the longer deadline.
    fn send(&self, tb: &Testbed, expected_through: bool) -> bool {
        let ns = tb.vm(self.from).unwrap().ns();
        let deadline = if expected_through {
            PROBE_THROUGH
        } else {
            PROBE
        };
        match &self.send {
            Send::Connect(proto, to) => {
                ns.probe(*proto, *to, deadline).unwrap() != ProbeOutcome::TimedOut
            }
            Send::Ping(to) => ns.ping(*to, 2).unwrap(),
            Send::PingFrom(src, to) => ns
                .run(&[
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    "2",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "-I",
                    src,
                    &to.to_string(),
                ])
                .is_ok(),
        }
    }

    /// `trace` on every hypervisor's model (those the packet does not touch say "not
    /// filtered"): allowed when none drops it.
    fn trace(&self, tb: &Testbed, cloud: &Cloud) -> (bool, String) {
        let mut allowed = true;
        let mut why = Vec::new();
        for hv in [HvId(0), HvId(1)] {
            let host: Vec<IpAddr> = tb
                .hv(hv)
                .unwrap()
                .uplinks
                .iter()
                .flat_map(|u| [IpAddr::V4(u.hv_v4), IpAddr::V6(u.hv_v6)])
                .collect();
            // The arrival interface is the sender's tap on its own hypervisor only.
            let mut packet = self.packet.clone();
            if tb.vm(self.from).unwrap().hv != hv {
                packet.in_interface = None;
            }
            let t = trace(&cloud.model(tb, hv), &host, &packet).unwrap();
            allowed &= t.verdict == Verdict::Allow;
            why.push(format!(
                "hv{}: {} ({}) via {:?}",
                hv.0 + 1,
                t.verdict,
                t.reason,
                t.path
            ));
        }
        (allowed, why.join("\n"))
    }
}

#[tokio::test]
async fn trace_agrees_with_real_packets() {
    let (tb, vms) = two_hypervisors("pol_trace", 2);
    let (web, db, app, client) = (vms[0], vms[1], vms[2], vms[3]);
    let port = |vm, sgs| Port {
        vm,
        sgs,
        extra_nets: vec![],
        fips: vec![],
    };
    let cloud = Cloud {
        sgs: security_groups(),
        ports: vec![
            port(web, vec!["web", "default"]),
            port(db, vec!["default"]),
            port(app, vec!["default"]),
            port(client, vec!["client"]),
        ],
    };
    let mut dp = Dataplane::new(&tb, &[HvId(0), HvId(1)]);
    dp.apply(&tb, &cloud).await;
    let _servers = [
        serve(&tb, web, &[80, 85, 8080, 8081], &[7050, 7200]),
        serve(&tb, db, &[8080], &[]),
        serve(&tb, client, &[8080], &[]),
    ];
    // Services on hv1 itself, and a source web does not own (replies routed back to it).
    let hv1 = tb.hv(HvId(0)).unwrap();
    let any = IpAddr::from([0u16; 8]);
    let _host_servers = [
        EchoServer::start(hv1.ns(), Protocol::Tcp, any, 2222).unwrap(),
        EchoServer::start(hv1.ns(), Protocol::Udp, any, 53).unwrap(),
    ];
    let spoofed = "198.51.100.99";
    tb.vm(web)
        .unwrap()
        .ns()
        .ip(&["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"])
        .unwrap();
    let web_tap = tb.vm(web).unwrap().tap.clone();
    hv1.ns()
        .ip(&[
            "route",
            "add",
            &format!("{spoofed}/32"),
            "dev",
            &web_tap,
            "scope",
            "link",
        ])
        .unwrap();

    let mut probes = Vec::new();
    for v6 in [false, true] {
        let connect = |from, to, proto: Protocol, port| {
            let to_addr = tb.vm_addr(to, v6).unwrap();
            let name = match proto {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let src = tb.vm_addr(from, v6).unwrap().to_string();
            Probe {
                label: format!("{src} -> {to_addr} {name}/{port}"),
                from,
                send: Send::Connect(proto, SocketAddr::new(to_addr, port)),
                packet: TracePacket::parse(&src, &to_addr.to_string(), name, Some(port)).unwrap(),
            }
        };
        for (from, to, proto, port) in [
            (app, web, Protocol::Tcp, 8080),
            (app, db, Protocol::Tcp, 8080),
            (client, web, Protocol::Tcp, 80),
            (client, web, Protocol::Tcp, 8080),
            (client, web, Protocol::Udp, 7050),
            (client, web, Protocol::Udp, 7200),
            (client, web, Protocol::Tcp, 8081),
            (client, web, Protocol::Tcp, 85),
            (client, db, Protocol::Tcp, 8080),
            (web, client, Protocol::Tcp, 8080),
            (web, db, Protocol::Tcp, 8080),
        ] {
            probes.push(connect(from, to, proto, port));
        }
        let (icmp, echo) = if v6 { ("icmpv6", 128) } else { ("icmp", 8) };
        for (from, to) in [(client, web), (client, db), (db, web)] {
            let (src, dst) = (tb.vm_addr(from, v6).unwrap(), tb.vm_addr(to, v6).unwrap());
            let mut packet =
                TracePacket::parse(&src.to_string(), &dst.to_string(), icmp, Some(echo)).unwrap();
            packet.icmp_code = Some(0);
            probes.push(Probe {
                label: format!("ping {src} -> {dst}"),
                from,
                send: Send::Ping(dst),
                packet,
            });
        }
        let uplink = &hv1.uplinks[0];
        let host = if v6 {
            IpAddr::V6(uplink.hv_v6)
        } else {
            IpAddr::V4(uplink.hv_v4)
        };
        let src = tb.vm_addr(web, v6).unwrap().to_string();
        for (proto, name, port) in [(Protocol::Udp, "udp", 53), (Protocol::Tcp, "tcp", 2222)] {
            probes.push(Probe {
                label: format!("{src} -> host {host} {name}/{port}"),
                from: web,
                send: Send::Connect(proto, SocketAddr::new(host, port)),
                packet: TracePacket::parse(&src, &host.to_string(), name, Some(port)).unwrap(),
            });
        }
    }
    let db_addr = tb.vm_addr(db, false).unwrap();
    let mut spoofed_ping =
        TracePacket::parse(spoofed, &db_addr.to_string(), "icmp", Some(8)).unwrap();
    spoofed_ping.in_interface = Some(web_tap.clone());
    let mut own_ping = spoofed_ping.clone();
    own_ping.src = tb.vm_addr(web, false).unwrap();
    probes.push(Probe {
        label: format!("ping {spoofed} (spoofed) -> {db_addr}"),
        from: web,
        send: Send::PingFrom(spoofed, db_addr),
        packet: spoofed_ping,
    });

    let mut outcomes = BTreeMap::new();
    let mut disagreements = Vec::new();
    for probe in &probes {
        let (traced, why) = probe.trace(&tb, &cloud);
        let real = probe.send(&tb, traced);
        *outcomes.entry(real).or_insert(0) += 1;
        if real != traced {
            disagreements.push(format!(
                "{}: real packet {}, trace {}\n{why}",
                probe.label,
                if real { "passed" } else { "dropped" },
                if traced { "allows" } else { "drops" },
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n\n"));
    // Both outcomes are well represented (the comparison is not vacuous).
    assert!(
        outcomes.get(&true) >= Some(&10) && outcomes.get(&false) >= Some(&10),
        "{outcomes:?}"
    );
    // The spoofed ping's own-address twin is allowed by trace: only the source decides.
    let (own, why) = Probe {
        label: String::new(),
        from: web,
        send: Send::Ping(db_addr),
        packet: own_ping,
    }
    .trace(&tb, &cloud);
    assert!(own, "{why}");
}
