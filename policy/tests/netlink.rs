//! The nfnetlink writer against a real kernel, inside a hypervisor namespace of a test bed:
//! what it writes lists exactly as (and is held in the kernel byte for byte as) what `nft -f`
//! writes for the same text, changes go over it
//! in one transaction, a refused batch changes nothing, and a rule replaced in place by
//! someone else is noticed and repaired.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scenarios;

use scenarios::{bed, ns};
use skog_policy::applier::ReplaceReason;
use skog_policy::diff;
use skog_policy::netlink::NfWriter;
use skog_policy::ruleset::{Chain, ChainKind, Ruleset};
use skog_policy::{Applier, ApplyOutcome, Nft, compile};
use skog_testbed::Netns;

fn list(ns: &Netns) -> String {
    ns.run(&["nft", "list", "table", "inet", "skog"]).unwrap()
}

fn writer(ns: &Netns) -> NfWriter {
    ns.enter(NfWriter::open).unwrap().unwrap()
}

/// Rules the scenarios do not produce but the compiler can: source port sets, negated
/// ranges and address sets, non-byte-aligned prefixes, protocol numbers, touching ranges.
fn edge_rules() -> Chain {
    let rules = [
        "meta nfproto ipv4 ip saddr { 198.51.100.13/32, 198.51.100.128/28 } return",
        "meta nfproto ipv6 ip6 daddr != { 2001:db8:100::d/128, 2001:db8:1::/64 } return",
        "meta l4proto udp th sport { 53, 67 } accept",
        "meta l4proto udp th sport { 53, 1000-2000 } accept",
        "meta l4proto tcp th dport != 7000-7100 accept",
        "meta l4proto tcp th dport 7000-7100 accept",
        "meta l4proto != udp ip saddr 198.51.100.128/28 accept",
        "meta l4proto 47 accept",
        "meta nfproto ipv4 ip saddr { 198.51.100.13/32, 198.51.100.14/32 } return",
        "meta nfproto ipv4 meta l4proto icmp icmp type 3 icmp code 1 accept",
        "meta l4proto tcp th dport { 80-90, 91 } drop",
        "meta nfproto ipv6 ip6 saddr != 2001:db8:1::/64 meta mark set meta mark | 0x00020000 return",
    ];
    Chain {
        kind: ChainKind::Policy,
        hook: None,
        note: None,
        rules: rules.iter().map(|r| r.to_string()).collect(),
    }
}

fn cases() -> Vec<(String, Ruleset)> {
    let mut out: Vec<(String, Ruleset)> = scenarios::all()
        .into_iter()
        .map(|(name, model)| (name.to_owned(), compile(&model).unwrap().ruleset))
        .collect();
    let mut edge = out[0].1.clone();
    edge.chains.insert("edge".to_owned(), edge_rules());
    out.push(("edge rules".to_owned(), edge));
    out
}

#[test]
fn netlink_written_tables_list_as_nft_written_ones() {
    let tb = bed("pol_nl_list");
    let ns = ns(&tb);
    let mut w = writer(ns);
    let file = std::env::temp_dir().join(format!("skog-pol-nl-list-{}.nft", std::process::id()));
    for (name, ruleset) in cases() {
        std::fs::write(&file, ruleset.full_script()).unwrap();
        ns.run(&["nft", "-f", file.to_str().unwrap()]).unwrap();
        let by_nft = list(ns);
        let nft_digests = w.chain_digests(ruleset.chains.keys()).unwrap();
        ns.run(&["nft", "delete table inet skog"]).unwrap();
        let mut batch = w.batch();
        for op in diff::replace_ops(&ruleset) {
            batch.push(&op).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        w.send(batch).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(list(ns), by_nft, "{name}");
        let our_digests = w.chain_digests(ruleset.chains.keys()).unwrap();
        for (chain, d) in &nft_digests {
            if our_digests.get(chain) != Some(d) {
                eprintln!(
                    "{name}: chain {chain} differs: {:?}",
                    ruleset.chains[chain].rules
                );
            }
        }
        ns.run(&["nft", "delete table inet skog"]).unwrap();
    }
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn changes_go_over_netlink_and_a_refused_batch_changes_nothing() {
    let tb = bed("pol_nl_apply");
    let ns = ns(&tb);
    // A table of someone else's, which must survive everything Skog does.
    ns.run(&["nft", "add table inet neutron; add chain inet neutron keep { type filter hook forward priority 10; }; add rule inet neutron keep ip saddr 192.0.2.9 counter"])
        .unwrap();
    let foreign = ns
        .run(&["nft", "list", "table", "inet", "neutron"])
        .unwrap();
    let mut applier = Applier::new(Nft::new().in_netns(ns.name())).with_netlink(writer(ns));
    let mut model = scenarios::openstack_basic();
    applier
        .apply(&compile(&model).unwrap().ruleset)
        .await
        .unwrap();
    // A rule changes: the policy chain is flushed and refilled in one batch.
    let web = scenarios::sg_policy_id("web");
    scenarios::set_web_ports(&mut model, &["8443", "9000:9100"]);
    let (patch, _) =
        skog_policy::compile::policy_patch(&model, &web, applier.applied().unwrap()).unwrap();
    let out = applier.apply_patch(&patch).await.unwrap();
    assert!(matches!(out, ApplyOutcome::Netlink { .. }), "{out:?}");
    assert!(
        list(ns).contains("tcp dport { 8443, 9000-9100 }"),
        "{}",
        list(ns)
    );
    // An endpoint goes away (chains, map elements deleted) and comes back.
    let gone = model.endpoints.remove("vm1-port").unwrap();
    let out = applier
        .apply(&compile(&model).unwrap().ruleset)
        .await
        .unwrap();
    assert!(matches!(out, ApplyOutcome::Netlink { .. }), "{out:?}");
    assert!(!list(ns).contains("tap00000000-01"));
    model.endpoints.insert("vm1-port".into(), gone);
    let want = compile(&model).unwrap().ruleset;
    applier.apply(&want).await.unwrap();
    assert_eq!(applier.refresh().await.unwrap(), ApplyOutcome::Unchanged);
    let before = list(ns);

    // A batch the kernel refuses (a jump to a chain that does not exist) changes nothing;
    // the applier falls back to nft, which refuses too and reports why.
    let mut bad = want.clone();
    let chain = bad
        .chains
        .values_mut()
        .find(|c| c.kind == ChainKind::Policy)
        .unwrap();
    chain.rules.insert(0, "tcp dport 22 accept".into());
    chain.rules.push("jump no-such-chain".into());
    let err = applier.apply(&bad).await.unwrap_err();
    assert!(err.to_string().contains("no-such-chain"), "{err}");
    assert_eq!(list(ns), before);
    assert_eq!(applier.applied(), Some(&want));
    // Straight over nfnetlink, the refusal names the message.
    let mut w = writer(ns);
    let mut batch = w.batch();
    let patch = want.patch_to(&bad);
    for op in diff::ops(&want, &patch).unwrap() {
        batch.push(&op).unwrap();
    }
    let err = w.send(batch).unwrap_err().to_string();
    assert!(err.contains("jump no-such-chain"), "{err}");
    assert_eq!(list(ns), before);
    assert_eq!(
        ns.run(&["nft", "list", "table", "inet", "neutron"])
            .unwrap(),
        foreign
    );
}

#[tokio::test]
async fn changes_in_place_are_drift_and_repaired() {
    let tb = bed("pol_nl_drift");
    let ns = ns(&tb);
    let mut applier = Applier::new(Nft::new().in_netns(ns.name())).with_netlink(writer(ns));
    let ruleset = compile(&scenarios::openstack_basic()).unwrap().ruleset;
    applier.apply(&ruleset).await.unwrap();
    let good = list(ns);
    let web_in = skog_policy::names::policy_chain(
        &scenarios::sg_policy_id("web"),
        skog_policy::names::Direction::Ingress,
    );
    let second_rule = |chain: &str| {
        let listed = ns
            .run(&["nft", "-a", "list", "chain", "inet", "skog", chain])
            .unwrap();
        listed
            .lines()
            .filter_map(|l| l.split("# handle ").nth(1))
            .nth(1)
            .unwrap()
            .trim()
            .to_owned()
    };
    let default4 = skog_policy::names::selector_set(&scenarios::sg_selector("default"), false);
    let damages: Vec<(&str, String)> = vec![
        (
            // Same number of rules, one of them now allows everything.
            "a policy rule replaced",
            format!(
                "replace rule inet skog {web_in} handle {} meta mark set meta mark | 0x00010000 return",
                second_rule(&web_in)
            ),
        ),
        (
            "a base chain rule replaced",
            format!(
                "replace rule inet skog forward handle {} iifname \"tap*\" accept",
                second_rule("forward")
            ),
        ),
        (
            "a set element swapped",
            format!(
                "delete element inet skog {default4} {{ 198.51.100.30 }}; add element inet skog {default4} {{ 198.51.100.31 }}"
            ),
        ),
        (
            "a map element pointed elsewhere",
            "delete element inet skog to-vm { \"tap00000000-01\" }; add element inet skog to-vm { \"tap00000000-01\" : goto to-tap00000000-00 }".to_owned(),
        ),
        ("flushed table", "flush table inet skog".to_owned()),
        ("deleted table", "delete table inet skog".to_owned()),
    ];
    for (what, damage) in damages {
        ns.run(&["nft", &damage]).unwrap();
        let damaged = ns.run(&["nft", "list", "table", "inet", "skog"]).ok();
        assert_ne!(damaged.as_ref(), Some(&good), "{what}");
        let out = applier.refresh().await.unwrap();
        assert!(
            matches!(
                &out,
                ApplyOutcome::Replaced {
                    why: ReplaceReason::Drift(_)
                }
            ),
            "{what}: {out:?}"
        );
        assert_eq!(list(ns), good, "{what}");
        assert_eq!(
            applier.refresh().await.unwrap(),
            ApplyOutcome::Unchanged,
            "{what}"
        );
    }
}
