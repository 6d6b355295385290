//! Security-group scenarios shared by the golden-file tests and the namespace tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;
use skog_policy::model::{
    Action, Endpoint, HostVerdict, Icmp, IpNat, Policy, PolicyModel, Protocol, Rule, Settings,
};
use skog_testbed::{Netns, Testbed};

/// A test bed with one hypervisor, whose namespace the namespace tests apply rules in.
pub fn bed(label: &str) -> Testbed {
    let mut tb = Testbed::new(label).unwrap();
    tb.add_hypervisor("hv1", 65101).unwrap();
    tb
}

/// The namespace of [`bed`]'s hypervisor.
pub fn ns(tb: &Testbed) -> &Netns {
    tb.hv(skog_testbed::HvId(0)).unwrap().ns()
}

/// Changes the destination ports of `web`'s second ingress rule (a rule change).
pub fn set_web_ports(model: &mut PolicyModel, ports: &[&str]) {
    model
        .policies
        .get_mut(&sg_policy_id("web"))
        .unwrap()
        .ingress
        .as_mut()
        .unwrap()[1]
        .destination
        .ports = ports.iter().map(|p| (*p).to_owned()).collect();
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The selector networking-calico writes for security group `sg`.
pub fn sg_selector(sg: &str) -> String {
    format!("has(sg.projectcalico.org/openstack-{sg})")
}

pub fn sg_policy_id(sg: &str) -> String {
    format!("ossg.default.{sg}")
}

pub fn endpoint(tap: &str, n: u8, sgs: &[&str]) -> Endpoint {
    Endpoint {
        interface: tap.to_owned(),
        mac: Some(format!("02:00:00:00:00:{n:02x}")),
        ip_networks: vec![
            net(&format!("198.51.100.{}/32", 10 + n)),
            net(&format!("2001:db8:100::{:x}/128", 10 + n)),
        ],
        ip_nats: vec![],
        tiers: vec![sgs.iter().map(|s| sg_policy_id(s)).collect()],
    }
}

pub fn allow(proto: Option<&str>, ports: &[&str]) -> Rule {
    let mut r = Rule::new(Action::Allow);
    r.protocol = proto.map(|p| Protocol::Name(p.to_owned()));
    r.destination.ports = ports.iter().map(|p| p.to_string()).collect();
    r
}

pub fn from_group(mut r: Rule, sg: &str) -> Rule {
    r.source.selector = Some(sg_selector(sg));
    r
}

/// OpenStack's "default" security group: all egress; ingress from members of the group.
pub fn default_sg(sg: &str) -> Policy {
    Policy {
        ingress: Some(vec![from_group(allow(None, &[]), sg)]),
        egress: Some(vec![allow(None, &[])]),
    }
}

/// A web security group: SSH from 192.0.2.0/24, HTTP(S) from anywhere, ping v4 and v6, a port
/// range over UDP, and everything but two ports to TCP from the "app" group.
pub fn web_sg() -> Policy {
    let mut ssh = allow(Some("TCP"), &["22"]);
    ssh.source.nets = vec![net("192.0.2.0/24")];
    let mut ping4 = allow(Some("ICMP"), &[]);
    ping4.icmp = Some(Icmp {
        r#type: Some(8),
        code: None,
    });
    let mut ping6 = allow(Some("ICMPv6"), &[]);
    ping6.icmp = Some(Icmp {
        r#type: Some(128),
        code: Some(0),
    });
    let mut app = from_group(allow(Some("tcp"), &[]), "app");
    app.destination.not_ports = vec!["25".into(), "5000:5999".into()];
    Policy {
        ingress: Some(vec![
            ssh,
            allow(Some("TCP"), &["80", "443"]),
            ping4,
            ping6,
            allow(Some("UDP"), &["7000:7100"]),
            app,
        ]),
        egress: Some(vec![allow(None, &[])]),
    }
}

/// Two VMs in "default", one also in "web"; membership of "default" and "app" given.
pub fn openstack_basic() -> PolicyModel {
    let mut m = PolicyModel::default();
    m.policies
        .insert(sg_policy_id("default"), default_sg("default"));
    m.policies.insert(sg_policy_id("web"), web_sg());
    m.endpoints.insert(
        "vm0-port".into(),
        endpoint("tap00000000-00", 0, &["default", "web"]),
    );
    m.endpoints.insert(
        "vm1-port".into(),
        endpoint("tap00000000-01", 1, &["default"]),
    );
    m.selectors.insert(
        sg_selector("default"),
        [
            "198.51.100.10/32",
            "198.51.100.11/32",
            "2001:db8:100::a/128",
            "2001:db8:100::b/128",
            "198.51.100.30/32",
        ]
        .iter()
        .map(|s| net(s))
        .collect(),
    );
    m.selectors.insert(
        sg_selector("app"),
        ["203.0.113.5/32", "203.0.113.0/28"]
            .iter()
            .map(|s| net(s))
            .collect(),
    );
    m
}

/// Hand-written policies in two tiers: Log, Deny, Pass, v4/v6-specific nets and notNets.
pub fn tiers_and_actions() -> PolicyModel {
    let mut m = PolicyModel::default();
    let mut log = Rule::new(Action::Log);
    log.protocol = Some(Protocol::Number(17));
    let mut deny = Rule::new(Action::Deny);
    deny.source.nets = vec![net("192.0.2.66/32"), net("2001:db8:66::/48")];
    let mut pass = Rule::new(Action::Pass);
    pass.ip_version = Some(6);
    pass.source.not_nets = vec![net("2001:db8:1::/64")];
    let mut allow_web = allow(Some("tcp"), &["80"]);
    allow_web.not_protocol = None;
    let mut not_udp = Rule::new(Action::Allow);
    not_udp.not_protocol = Some(Protocol::Name("UDP".into()));
    not_udp.destination.not_nets = vec![net("198.51.100.0/24")];
    m.policies.insert(
        "platform.guard".into(),
        Policy {
            ingress: Some(vec![log, deny, pass]),
            egress: None,
        },
    );
    m.policies.insert(
        "default.app".into(),
        Policy {
            ingress: Some(vec![allow_web]),
            egress: Some(vec![not_udp]),
        },
    );
    let mut ep = endpoint("tapaaaaaaaa-aa", 2, &[]);
    ep.tiers = vec![vec!["platform.guard".into()], vec!["default.app".into()]];
    m.endpoints.insert("ep".into(), ep);
    m
}

/// Floating IPs and a metadata target; a second endpoint with no addresses at all.
pub fn floating_ips_and_metadata() -> PolicyModel {
    let mut m = PolicyModel {
        settings: Settings {
            interface_prefix: "tap".into(),
            metadata: Some(SocketAddr::from(([192, 0, 2, 250], 8775))),
            vm_to_host_default: HostVerdict::Drop,
            snat_floating_ips_leaving_host: true,
        },
        ..PolicyModel::default()
    };
    m.policies
        .insert(sg_policy_id("default"), default_sg("default"));
    let mut ep = endpoint("tapbbbbbbbb-bb", 3, &["default"]);
    ep.ip_nats = vec![
        IpNat {
            internal: "198.51.100.13".parse().unwrap(),
            external: "203.0.113.13".parse().unwrap(),
        },
        IpNat {
            internal: "2001:db8:100::d".parse().unwrap(),
            external: "2001:db8:200::d".parse().unwrap(),
        },
    ];
    ep.ip_networks.push(net("198.51.100.128/28")); // an allowed address pair
    m.endpoints.insert("fip".into(), ep);
    let mut bare = endpoint("tapcccccccc-cc", 4, &[]);
    bare.ip_networks.clear();
    m.endpoints.insert("bare".into(), bare);
    m
}

/// No metadata service, VM-to-host accepted, hairpin-only SNAT.
pub fn no_metadata() -> PolicyModel {
    let mut m = floating_ips_and_metadata();
    m.settings.metadata = None;
    m.settings.vm_to_host_default = HostVerdict::Accept;
    m.settings.snat_floating_ips_leaving_host = false;
    m
}

/// Everything that must be rejected: bad rules (each alone), bad interface names, unknown
/// policies, mixed-family floating IPs, and names that try to inject nft syntax.
pub fn invalid_input() -> PolicyModel {
    let mut m = PolicyModel::default();
    let bad_range = allow(Some("TCP"), &["90:80"]);
    let unknown_proto = allow(Some("tcpp"), &[]);
    let mut bad_deny = Rule::new(Action::Deny);
    bad_deny.protocol = Some(Protocol::Name("gre\"; flush ruleset".into()));
    let ports_on_icmp = allow(Some("ICMP"), &["22"]);
    let good = allow(Some("TCP"), &["22"]);
    m.policies.insert(
        "ossg.default.evil\"}; flush ruleset; #".into(),
        Policy {
            ingress: Some(vec![
                bad_range,
                unknown_proto,
                bad_deny,
                ports_on_icmp,
                good,
            ]),
            egress: Some(vec![]),
        },
    );
    let mut ep = endpoint("tapdddddddd-dd", 5, &[]);
    ep.tiers = vec![vec![
        "ossg.default.evil\"}; flush ruleset; #".into(),
        "ossg.default.missing".into(),
    ]];
    ep.ip_nats = vec![IpNat {
        internal: "198.51.100.15".parse().unwrap(),
        external: "2001:db8:200::f".parse().unwrap(),
    }];
    m.endpoints.insert("ok".into(), ep);
    m.endpoints
        .insert("evil".into(), endpoint("tap\"; flush ruleset", 6, &[]));
    m.endpoints
        .insert("not-a-tap".into(), endpoint("eth0", 7, &[]));
    m.endpoints
        .insert("twin".into(), endpoint("tapdddddddd-dd", 8, &[]));
    m
}

pub fn all() -> BTreeMap<&'static str, PolicyModel> {
    BTreeMap::from([
        ("openstack_basic", openstack_basic()),
        ("tiers_and_actions", tiers_and_actions()),
        ("floating_ips_and_metadata", floating_ips_and_metadata()),
        ("no_metadata", no_metadata()),
        ("invalid_input", invalid_input()),
    ])
}
