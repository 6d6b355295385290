//! `trace` over the golden scenarios: verdicts, deciding rules, reasons and paths. Every path
//! must name chains the compiler really builds for the same model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scenarios;

use std::net::IpAddr;

use skog_policy::model::PolicyModel;
use skog_policy::names::{Direction, policy_chain};
use skog_policy::trace::{RuleRef, TracePacket, TraceQueryError, Verdict};
use skog_policy::{Trace, compile, trace};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP/UDP packet with a destination port, or an ICMP packet with a type.
fn packet(src: &str, dst: &str, proto: &str, port: Option<u16>) -> TracePacket {
    TracePacket::parse(src, dst, proto, port).unwrap()
}

/// Traces on `model` with `host` as the node's addresses, and checks the path against the
/// compiled table: every chain named exists in it.
fn run(model: &PolicyModel, host: &[&str], p: &TracePacket) -> Trace {
    let host: Vec<IpAddr> = host.iter().map(|h| ip(h)).collect();
    let t = trace(model, &host, p).unwrap();
    let ruleset = compile(model).unwrap().ruleset;
    for chain in &t.path {
        assert!(
            ruleset.chains.contains_key(chain),
            "{chain} in {:?} is not a chain of the table",
            t.path
        );
    }
    t
}

fn policy_rule(policy: &str, direction: Direction, index: usize) -> Option<RuleRef> {
    Some(RuleRef::Policy {
        policy: policy.to_owned(),
        direction,
        index,
    })
}

fn pol_in(sg: &str) -> String {
    policy_chain(&scenarios::sg_policy_id(sg), Direction::Ingress)
}

fn pol_out(sg: &str) -> String {
    policy_chain(&scenarios::sg_policy_id(sg), Direction::Egress)
}

const VM0: &str = "198.51.100.10";
const VM0_V6: &str = "2001:db8:100::a";
const VM1: &str = "198.51.100.11";
const VM1_V6: &str = "2001:db8:100::b";
const TAP0: &str = "tap00000000-00";
const TAP1: &str = "tap00000000-01";

#[test]
fn security_group_rules_decide_ingress_from_outside() {
    let m = scenarios::openstack_basic();
    let web = scenarios::sg_policy_id("web");
    let ssh = run(&m, &[], &packet("192.0.2.5", VM0, "tcp", Some(22)));
    assert_eq!(ssh.verdict, Verdict::Allow);
    assert_eq!(ssh.rule, policy_rule(&web, Direction::Ingress, 0));
    assert_eq!(
        ssh.rule.as_ref().unwrap().to_string(),
        "policy ossg.default.web ingress rule 0"
    );
    assert_eq!(
        ssh.path,
        [
            "raw-prerouting".to_owned(),
            "nat-prerouting".to_owned(),
            "forward".to_owned(),
            "to-vm-dispatch".to_owned(),
            format!("to-{TAP0}"),
            pol_in("default"),
            pol_in("web"),
        ]
    );
    assert!(ssh.filtered);
    assert!(
        ssh.reason
            .contains("allowed by policy ossg.default.web ingress rule 0")
    );

    // SSH only from 192.0.2.0/24: nothing else in the tier matches.
    let ssh_far = run(&m, &[], &packet("203.0.113.99", VM0, "tcp", Some(22)));
    assert_eq!(ssh_far.verdict, Verdict::Drop);
    assert_eq!(ssh_far.rule, None);
    assert!(
        ssh_far.reason.contains("end of the tier"),
        "{}",
        ssh_far.reason
    );

    // Port list, range, remote group with notPorts.
    for (src, proto, port, want) in [
        ("203.0.113.99", "TCP", 443, Some(1)),
        ("203.0.113.99", "udp", 7050, Some(4)),
        ("203.0.113.99", "udp", 7100, Some(4)),
        ("203.0.113.99", "udp", 7101, None),
        ("203.0.113.5", "tcp", 24, Some(5)),
        ("203.0.113.5", "tcp", 25, None),
        ("203.0.113.5", "tcp", 5500, None),
        ("203.0.113.15", "6", 6000, Some(5)),
        ("203.0.113.16", "tcp", 6000, None),
    ] {
        let t = run(&m, &[], &packet(src, VM0, proto, Some(port)));
        let rule = want.and_then(|i| policy_rule(&web, Direction::Ingress, i));
        assert_eq!(t.rule, rule, "{src} {proto}/{port}: {}", t.reason);
        let verdict = if want.is_some() {
            Verdict::Allow
        } else {
            Verdict::Drop
        };
        assert_eq!(t.verdict, verdict, "{src} {proto}/{port}");
    }
}

#[test]
fn icmp_types_and_codes_per_ip_version() {
    let m = scenarios::openstack_basic();
    let web = scenarios::sg_policy_id("web");
    let echo = run(&m, &[], &packet("203.0.113.99", VM0, "icmp", Some(8)));
    assert_eq!(echo.rule, policy_rule(&web, Direction::Ingress, 2));
    let reply = run(&m, &[], &packet("203.0.113.99", VM0, "icmp", Some(0)));
    assert_eq!(reply.verdict, Verdict::Drop);
    // The v6 rule wants code 0 too.
    let mut echo6 = packet("2001:db8:5::1", VM0_V6, "ICMPv6", Some(128));
    let unknown_code = run(&m, &[], &echo6);
    assert_eq!(unknown_code.verdict, Verdict::Drop);
    assert!(
        unknown_code.reason.contains(
            "policy ossg.default.web ingress rule 3 tests the ICMP code, not given: assumed not to match"
        ),
        "{}",
        unknown_code.reason
    );
    echo6.icmp_code = Some(0);
    let t = run(&m, &[], &echo6);
    assert_eq!(t.rule, policy_rule(&web, Direction::Ingress, 3));
    assert!(!t.reason.contains("assumed"), "{}", t.reason);
}

#[test]
fn vm_to_vm_passes_egress_then_ingress_over_v6() {
    let m = scenarios::openstack_basic();
    let default = scenarios::sg_policy_id("default");
    let t = run(&m, &[], &packet(VM1_V6, VM0_V6, "tcp", Some(8080)));
    assert_eq!(t.verdict, Verdict::Allow);
    assert_eq!(t.rule, policy_rule(&default, Direction::Ingress, 0));
    assert!(
        t.reason
            .contains("egress: allowed by policy ossg.default.default egress rule 0")
            && t.reason
                .contains("ingress: allowed by policy ossg.default.default ingress rule 0"),
        "{}",
        t.reason
    );
    assert_eq!(
        t.path,
        [
            "raw-prerouting".to_owned(),
            "spoof-dispatch".to_owned(),
            format!("spoof-{TAP1}"),
            "nat-prerouting".to_owned(),
            "forward".to_owned(),
            "from-vm-dispatch".to_owned(),
            format!("from-{TAP1}"),
            pol_out("default"),
            "to-vm-dispatch".to_owned(),
            format!("to-{TAP0}"),
            pol_in("default"),
        ]
    );
    // Leaving the node: egress only.
    let out = run(&m, &[], &packet(VM1, "203.0.113.200", "udp", Some(9)));
    assert_eq!(out.verdict, Verdict::Allow);
    assert_eq!(out.rule, policy_rule(&default, Direction::Egress, 0));
    assert_eq!(out.path.last(), Some(&pol_out("default")));
    assert!(out.reason.contains("not a local endpoint"));
}

#[test]
fn traffic_of_no_local_endpoint_is_not_filtered() {
    let m = scenarios::openstack_basic();
    let t = run(
        &m,
        &[],
        &packet("192.0.2.1", "203.0.113.1", "tcp", Some(80)),
    );
    assert_eq!(t.verdict, Verdict::Allow);
    assert!(!t.filtered);
    assert!(t.path.is_empty());
    assert!(
        t.reason
            .contains("not a local endpoint; Skog does not filter this traffic"),
        "{}",
        t.reason
    );
    // From the host itself (output is not filtered).
    let from_host = run(
        &m,
        &["192.0.2.200"],
        &packet("192.0.2.200", VM0, "tcp", Some(22)),
    );
    assert!(!from_host.filtered && from_host.verdict == Verdict::Allow);
}

#[test]
fn spoofed_sources_and_address_pairs() {
    let m = scenarios::openstack_basic();
    let mut spoofed = packet("198.51.100.99", VM0, "tcp", Some(22));
    spoofed.in_interface = Some(TAP1.to_owned());
    let t = run(&m, &[], &spoofed);
    assert_eq!(t.verdict, Verdict::Drop);
    assert_eq!(
        t.rule.as_ref().unwrap().to_string(),
        format!("chain spoof-{TAP1}: drop (source not among the endpoint's ipNetworks)")
    );
    assert_eq!(t.path.last().unwrap(), &format!("spoof-{TAP1}"));
    assert!(t.reason.contains("anti-spoofing"), "{}", t.reason);

    let m = scenarios::floating_ips_and_metadata();
    let mut pair = packet("198.51.100.130", "203.0.113.1", "tcp", Some(22));
    assert_eq!(
        run(&m, &[], &pair).verdict,
        Verdict::Allow,
        "found by address"
    );
    pair.in_interface = Some("tapbbbbbbbb-bb".into());
    assert_eq!(run(&m, &[], &pair).verdict, Verdict::Allow);
    // An endpoint without addresses may send only the shared exceptions.
    pair.in_interface = Some("tapcccccccc-cc".into());
    assert_eq!(run(&m, &[], &pair).verdict, Verdict::Drop);
    let mut dhcp = packet("0.0.0.0", "255.255.255.255", "udp", Some(67));
    dhcp.in_interface = Some("tapcccccccc-cc".into());
    let no_sport = run(&m, &[], &dhcp);
    assert_eq!(no_sport.verdict, Verdict::Drop);
    assert!(
        no_sport
            .reason
            .contains("DHCPv4 anti-spoofing exception (udp 68 -> 67) tests the source port"),
        "{}",
        no_sport.reason
    );
    dhcp.src_port = Some(68);
    let t = run(&m, &[], &dhcp);
    assert_eq!(t.verdict, Verdict::Allow);
    assert_eq!(t.rule.unwrap().to_string(), "chain vm-to-host: DHCPv4");
    let mut solicit = packet("fe80::1", "ff02::2", "icmpv6", Some(133));
    solicit.in_interface = Some("tapcccccccc-cc".into());
    let t = run(&m, &[], &solicit);
    assert_eq!(t.verdict, Verdict::Allow, "{}", t.reason);
    assert_eq!(t.path.last().unwrap(), "vm-to-host");
    // An interface the table does not know.
    let mut stranger = packet(VM0, "203.0.113.1", "tcp", Some(80));
    stranger.in_interface = Some("tapffffffff-ff".into());
    let t = run(&m, &[], &stranger);
    assert_eq!(t.verdict, Verdict::Drop);
    assert_eq!(t.path.last().unwrap(), "spoof-dispatch");
}

#[test]
fn host_services_metadata_and_the_default_to_host() {
    let m = scenarios::openstack_basic();
    let host = ["192.0.2.200"];
    let dns = run(&m, &host, &packet(VM1, "192.0.2.200", "udp", Some(53)));
    assert_eq!(dns.verdict, Verdict::Allow);
    assert_eq!(
        dns.rule.unwrap().to_string(),
        "chain vm-to-host: DNS over UDP"
    );
    let ssh = run(&m, &host, &packet(VM1, "192.0.2.200", "tcp", Some(22)));
    assert_eq!(ssh.verdict, Verdict::Drop);
    assert_eq!(ssh.rule, None);
    assert_eq!(
        &ssh.path[ssh.path.len() - 2..],
        ["input".to_owned(), "vm-to-host".to_owned()]
    );
    // Egress rules do not apply to the host.
    assert!(!ssh.path.contains(&pol_out("default")));
    let metadata = run(&m, &[], &packet(VM1, "169.254.169.254", "tcp", Some(80)));
    assert_eq!(metadata.verdict, Verdict::Allow);
    assert_eq!(
        metadata.rule.unwrap().to_string(),
        "chain vm-to-host: metadata"
    );
    assert!(
        metadata
            .reason
            .contains("metadata DNAT 169.254.169.254:80 -> 127.0.0.1:8775")
    );

    // A metadata target elsewhere is reached through the VM's egress.
    let m = scenarios::floating_ips_and_metadata();
    let fip_vm = "198.51.100.13";
    let remote = run(&m, &[], &packet(fip_vm, "169.254.169.254", "tcp", Some(80)));
    assert_eq!(
        remote.rule,
        policy_rule(&scenarios::sg_policy_id("default"), Direction::Egress, 0)
    );
    let local = run(
        &m,
        &["192.0.2.250"],
        &packet(fip_vm, "169.254.169.254", "tcp", Some(80)),
    );
    assert_eq!(
        local.rule.unwrap().to_string(),
        "chain vm-to-host: metadata"
    );
    // No metadata service, VM-to-host accepted by default.
    let m = scenarios::no_metadata();
    let t = run(
        &m,
        &["192.0.2.200"],
        &packet(fip_vm, "192.0.2.200", "tcp", Some(22)),
    );
    assert_eq!((t.verdict, t.rule), (Verdict::Allow, None));
    let t = run(&m, &[], &packet(fip_vm, "169.254.169.254", "tcp", Some(80)));
    assert!(!t.path.contains(&"vm-to-host".to_owned()), "{:?}", t.path);
}

#[test]
fn floating_ips_are_evaluated_against_the_internal_address() {
    let mut m = scenarios::floating_ips_and_metadata();
    let default = scenarios::sg_policy_id("default");
    let to_fip = packet("203.0.113.77", "203.0.113.13", "tcp", Some(80));
    let t = run(&m, &[], &to_fip);
    assert_eq!(t.verdict, Verdict::Drop);
    assert!(
        t.reason
            .contains("floating IP 203.0.113.13 of endpoint fip: DNAT to 198.51.100.13"),
        "{}",
        t.reason
    );
    assert!(t.path.contains(&"to-tapbbbbbbbb-bb".to_owned()));
    // The remote group gains the client: allowed.
    m.selectors.insert(
        scenarios::sg_selector("default"),
        [scenarios::net("203.0.113.77/32")].into(),
    );
    let t = run(&m, &[], &to_fip);
    assert_eq!(t.rule, policy_rule(&default, Direction::Ingress, 0));
    let t6 = run(
        &m,
        &[],
        &packet("2001:db8:5::1", "2001:db8:200::d", "tcp", Some(80)),
    );
    assert_eq!(t6.verdict, Verdict::Drop);
    assert!(
        t6.reason.contains("DNAT to 2001:db8:100::d"),
        "{}",
        t6.reason
    );
}

#[test]
fn tiers_with_log_deny_and_pass() {
    let m = scenarios::tiers_and_actions();
    let ep4 = "198.51.100.12";
    let ep6 = "2001:db8:100::c";
    let denied = run(&m, &[], &packet("192.0.2.66", ep4, "tcp", Some(80)));
    assert_eq!(
        (denied.verdict, denied.rule),
        (
            Verdict::Drop,
            policy_rule("platform.guard", Direction::Ingress, 1)
        )
    );
    // IPv4 is never passed on by the guard: end of its tier.
    let v4 = run(&m, &[], &packet("192.0.2.7", ep4, "tcp", Some(80)));
    assert_eq!((v4.verdict, v4.rule.clone()), (Verdict::Drop, None));
    assert!(v4.reason.contains("[platform.guard]"), "{}", v4.reason);
    let passed = run(&m, &[], &packet("2001:db8:5::1", ep6, "tcp", Some(80)));
    assert_eq!(
        (passed.verdict, passed.rule),
        (
            Verdict::Allow,
            policy_rule("default.app", Direction::Ingress, 0)
        )
    );
    assert!(
        passed
            .reason
            .contains("policy platform.guard ingress rule 2 passed it on to the next tier"),
        "{}",
        passed.reason
    );
    let not_passed = run(&m, &[], &packet("2001:db8:1::5", ep6, "tcp", Some(80)));
    assert_eq!(not_passed.verdict, Verdict::Drop);
    let logged = run(&m, &[], &packet("2001:db8:5::1", ep6, "udp", Some(80)));
    assert_eq!((logged.verdict, logged.rule.clone()), (Verdict::Drop, None));
    assert!(
        logged
            .reason
            .contains("logged by policy platform.guard ingress rule 0"),
        "{}",
        logged.reason
    );
    // Egress: the guard has none, the second tier applies (notProtocol, notNets).
    let out = run(&m, &[], &packet(ep4, "203.0.113.1", "tcp", Some(443)));
    assert_eq!(out.rule, policy_rule("default.app", Direction::Egress, 0));
    assert!(
        !out.path
            .contains(&policy_chain("platform.guard", Direction::Egress))
    );
    for blocked in [
        packet(ep4, "203.0.113.1", "udp", Some(53)),
        packet(ep4, "198.51.100.77", "tcp", Some(443)),
    ] {
        assert_eq!(run(&m, &[], &blocked).verdict, Verdict::Drop, "{blocked:?}");
    }
}

#[test]
fn invalid_rules_and_endpoints_fail_closed_as_compiled() {
    let m = scenarios::invalid_input();
    let evil = "ossg.default.evil\"}; flush ruleset; #";
    let t = run(
        &m,
        &[],
        &packet("192.0.2.1", "198.51.100.15", "tcp", Some(22)),
    );
    assert_eq!(
        (t.verdict, t.rule),
        (Verdict::Drop, policy_rule(evil, Direction::Ingress, 2))
    );
    assert!(
        t.reason.contains("unconditional drop") && t.reason.contains("rule 0 is invalid"),
        "{}",
        t.reason
    );
    // An interface name the compiler refused but that looks like a VM's: dropped.
    let t = run(
        &m,
        &[],
        &packet("192.0.2.1", "198.51.100.16", "tcp", Some(22)),
    );
    assert_eq!(t.verdict, Verdict::Drop);
    assert_eq!(t.path.last().unwrap(), "to-vm-dispatch");
    // Not a VM interface at all: not filtered.
    let t = run(
        &m,
        &[],
        &packet("192.0.2.1", "198.51.100.17", "tcp", Some(22)),
    );
    assert!(!t.filtered);
    // A second endpoint on the same tap meets the first one's chains.
    let t = run(
        &m,
        &[],
        &packet("192.0.2.1", "198.51.100.18", "tcp", Some(22)),
    );
    assert!(t.path.contains(&"to-tapdddddddd-dd".to_owned()));
    assert!(t.reason.contains("endpoint ok ingress"), "{}", t.reason);

    let mut bad = m.clone();
    bad.settings.interface_prefix = "ta\"p".into();
    assert!(
        trace(
            &bad,
            &[],
            &packet("192.0.2.1", "198.51.100.15", "tcp", None)
        )
        .is_err()
    );
}

#[test]
fn queries_parse_like_the_cli_writes_them() {
    let p = packet("198.51.100.10", "198.51.100.11", "TCP", Some(22));
    assert_eq!((p.protocol, p.dst_port, p.src_port), (6, Some(22), None));
    let p = packet("2001:db8::1", "2001:db8::2", "icmpv6", Some(128));
    assert_eq!((p.protocol, p.icmp_type), (58, Some(128)));
    assert_eq!(packet("192.0.2.1", "192.0.2.2", "47", None).protocol, 47);
    for (src, dst, proto, port, want) in [
        (
            "192.0.2.1",
            "2001:db8::1",
            "tcp",
            None,
            "different IP versions",
        ),
        ("192.0.2.x", "192.0.2.1", "tcp", None, "not an IP address"),
        ("192.0.2.1", "192.0.2.2", "tcpp", None, "unknown protocol"),
        ("192.0.2.1", "192.0.2.2", "47", Some(1), "a port needs"),
        ("192.0.2.1", "192.0.2.2", "icmpv6", None, "IPv4"),
        ("192.0.2.1", "192.0.2.2", "icmp", Some(256), "out of range"),
    ] {
        let err: TraceQueryError = TracePacket::parse(src, dst, proto, port).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
}
