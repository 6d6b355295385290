//! The applier against a real kernel, inside a hypervisor namespace of a test bed: every
//! golden scenario loads, changes are incremental, a failed transaction changes nothing,
//! drift is repaired, and tables Skog does not own are never touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scenarios;

use std::time::Duration;

use scenarios::{bed, ns};
use skog_policy::applier::ReplaceReason;
use skog_policy::names::selector_set;
use skog_policy::ruleset::Ruleset;
use skog_policy::{Applier, ApplyError, ApplyOutcome, Nft, NftError, compile};
use skog_testbed::Netns;

fn nft_in(ns: &Netns) -> Nft {
    Nft::new().in_netns(ns.name())
}

fn list(ns: &Netns, what: &[&str]) -> String {
    let mut args = vec!["nft", "list"];
    args.extend_from_slice(what);
    ns.run(&args).unwrap()
}

/// A table of someone else's, which must survive everything Skog does.
fn add_foreign_table(ns: &Netns) -> String {
    ns.run(&["nft", "add table inet neutron; add chain inet neutron keep { type filter hook forward priority 10; }; add rule inet neutron keep ip saddr 192.0.2.9 counter"])
        .unwrap();
    list(ns, &["table", "inet", "neutron"])
}

#[tokio::test]
async fn every_scenario_loads_and_reads_back_without_drift() {
    let tb = bed("pol_load");
    let ns = ns(&tb);
    let mut applier = Applier::new(nft_in(ns));
    for (name, model) in scenarios::all() {
        let ruleset = compile(&model).unwrap().ruleset;
        let outcome = applier.apply(&ruleset).await;
        assert!(outcome.is_ok(), "{name}: {outcome:?}");
        // The read-back shape (chains, rule counts, set sizes) matches what was applied.
        assert_eq!(
            applier.refresh().await.unwrap(),
            ApplyOutcome::Unchanged,
            "{name}"
        );
    }
}

#[tokio::test]
async fn changes_are_incremental_and_reach_the_kernel() {
    let tb = bed("pol_incr");
    let ns = ns(&tb);
    let foreign = add_foreign_table(ns);
    let mut applier = Applier::new(nft_in(ns));
    let mut model = scenarios::openstack_basic();
    let first = applier
        .apply(&compile(&model).unwrap().ruleset)
        .await
        .unwrap();
    assert_eq!(
        first,
        ApplyOutcome::Replaced {
            why: ReplaceReason::StartUp
        }
    );
    assert_eq!(
        applier
            .apply(&compile(&model).unwrap().ruleset)
            .await
            .unwrap(),
        ApplyOutcome::Unchanged
    );

    // A member joins "default".
    let sel = scenarios::sg_selector("default");
    model
        .selectors
        .get_mut(&sel)
        .unwrap()
        .insert(scenarios::net("198.51.100.77/32"));
    let out = applier
        .apply(&compile(&model).unwrap().ruleset)
        .await
        .unwrap();
    assert!(matches!(out, ApplyOutcome::Incremental { .. }), "{out:?}");
    let set = list(ns, &["set", "inet", "skog", &selector_set(&sel, false)]);
    assert!(set.contains("198.51.100.77"), "{set}");

    // A rule changes.
    model
        .policies
        .get_mut(&scenarios::sg_policy_id("web"))
        .unwrap()
        .ingress
        .as_mut()
        .unwrap()[1]
        .destination
        .ports = vec!["8443".into()];
    let out = applier
        .apply(&compile(&model).unwrap().ruleset)
        .await
        .unwrap();
    assert!(matches!(out, ApplyOutcome::Incremental { .. }), "{out:?}");
    assert!(list(ns, &["table", "inet", "skog"]).contains("dport 8443"));

    // An endpoint goes away.
    model.endpoints.remove("vm1-port");
    let out = applier
        .apply(&compile(&model).unwrap().ruleset)
        .await
        .unwrap();
    assert!(matches!(out, ApplyOutcome::Incremental { .. }), "{out:?}");
    let table = list(ns, &["table", "inet", "skog"]);
    assert!(!table.contains("tap00000000-01"), "{table}");
    assert_eq!(applier.refresh().await.unwrap(), ApplyOutcome::Unchanged);
    assert_eq!(list(ns, &["table", "inet", "neutron"]), foreign);
}

#[tokio::test]
async fn a_failed_transaction_keeps_the_previous_rules_and_reports_nft_stderr() {
    let tb = bed("pol_fail");
    let ns = ns(&tb);
    let mut applier = Applier::new(nft_in(ns));
    let good = compile(&scenarios::openstack_basic()).unwrap().ruleset;
    applier.apply(&good).await.unwrap();
    let before = list(ns, &["table", "inet", "skog"]);

    // A ruleset nft refuses (cannot come from the compiler; simulates an nft incompatibility):
    // the incremental update fails, the full replacement fails, nothing changes.
    let mut bad: Ruleset = good.clone();
    let chain = bad.chains.values_mut().find(|c| c.hook.is_none()).unwrap();
    chain.rules.insert(0, "tcp dport 22 accept".into());
    chain.rules.push("ip saddr @no-such-set drop".into());
    let err = applier.apply(&bad).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ApplyError::ApplyAndReplace { .. }), "{msg}");
    assert!(
        msg.contains("no-such-set"),
        "nft's stderr is in the error: {msg}"
    );
    assert_eq!(list(ns, &["table", "inet", "skog"]), before);
    assert_eq!(applier.applied(), Some(&good));
    assert_eq!(applier.refresh().await.unwrap(), ApplyOutcome::Unchanged);
}

#[tokio::test]
async fn drift_is_repaired_on_refresh() {
    let tb = bed("pol_drift");
    let ns = ns(&tb);
    let foreign = add_foreign_table(ns);
    let mut applier = Applier::new(nft_in(ns));
    let ruleset = compile(&scenarios::openstack_basic()).unwrap().ruleset;
    applier.apply(&ruleset).await.unwrap();
    let good = list(ns, &["table", "inet", "skog"]);

    for (what, damage) in [
        ("flushed table", "flush table inet skog"),
        (
            "deleted chain",
            "delete element inet skog to-vm { \"tap00000000-01\" }; flush chain inet skog to-tap00000000-01; delete chain inet skog to-tap00000000-01",
        ),
        ("deleted table", "delete table inet skog"),
        (
            "set element removed",
            &format!(
                "delete element inet skog {} {{ 198.51.100.30 }}",
                selector_set(&scenarios::sg_selector("default"), false)
            ),
        ),
    ] {
        ns.run(&["nft", damage]).unwrap();
        let out = applier.refresh().await.unwrap();
        assert!(
            matches!(
                out,
                ApplyOutcome::Replaced {
                    why: ReplaceReason::Drift(_)
                }
            ),
            "{what}: {out:?}"
        );
        assert_eq!(list(ns, &["table", "inet", "skog"]), good, "{what}");
    }
    assert_eq!(list(ns, &["table", "inet", "neutron"]), foreign);
}

#[tokio::test]
async fn a_restart_adopts_the_table_and_shutdown_leaves_it() {
    let tb = bed("pol_adopt");
    let ns = ns(&tb);
    let ruleset = compile(&scenarios::openstack_basic()).unwrap().ruleset;
    {
        let mut first = Applier::new(nft_in(ns));
        first.apply(&ruleset).await.unwrap();
    }
    // Dropping the applier (shutdown) left the rules in place.
    let left = list(ns, &["table", "inet", "skog"]);
    assert!(left.contains("chain to-tap00000000-00"));
    let mut second = Applier::new(nft_in(ns));
    second.apply(&ruleset).await.unwrap();
    assert_eq!(list(ns, &["table", "inet", "skog"]), left);
    assert_eq!(second.refresh().await.unwrap(), ApplyOutcome::Unchanged);
}

#[tokio::test]
async fn nft_calls_capture_stderr_and_are_bounded_in_time() {
    let tb = bed("pol_nft");
    let ns = ns(&tb);
    let err = nft_in(ns)
        .run_script("add table inet skog\nbogus words\n")
        .await;
    match err {
        Err(NftError::Failed { stderr, .. }) => {
            assert!(stderr.contains("syntax error"), "{stderr}")
        }
        other => panic!("{other:?}"),
    }
    // `nft monitor` never ends on its own: the call gives up at the timeout and kills it.
    let bounded = nft_in(ns).with_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let hung = bounded.output(&["monitor"]).await;
    assert!(matches!(hung, Err(NftError::Timeout(_))), "{hung:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn membership_changes_go_over_nfnetlink_and_mix_with_nft() {
    let tb = bed("pol_nl");
    let ns = ns(&tb);
    let writer = ns
        .enter(skog_policy::netlink::NfWriter::open)
        .unwrap()
        .unwrap();
    let mut applier = Applier::new(nft_in(ns)).with_netlink(writer);
    let mut model = scenarios::openstack_basic();
    applier
        .apply(&compile(&model).unwrap().ruleset)
        .await
        .unwrap();
    let sel = scenarios::sg_selector("default");
    let set4 = selector_set(&sel, false);
    let set6 = selector_set(&sel, true);
    let members = model.selectors.get_mut(&sel).unwrap();
    members.insert(scenarios::net("198.51.100.77/32"));
    members.insert(scenarios::net("192.0.2.64/26"));
    members.insert(scenarios::net("2001:db8:77::/64"));
    members.remove(&scenarios::net("198.51.100.30/32"));
    let patch = skog_policy::compile::selector_patch(&model, &sel, applier.applied().unwrap());
    let out = applier.apply_patch(&patch).await.unwrap();
    assert_eq!(out, ApplyOutcome::Elements { messages: 3 });
    let listed4 = list(ns, &["set", "inet", "skog", &set4]);
    assert!(listed4.contains("198.51.100.77"), "{listed4}");
    assert!(listed4.contains("192.0.2.64/26"), "{listed4}");
    assert!(!listed4.contains("198.51.100.30"), "{listed4}");
    assert!(list(ns, &["set", "inet", "skog", &set6]).contains("2001:db8:77::/64"));
    // The kernel's table reads back as the applier's record.
    assert_eq!(applier.refresh().await.unwrap(), ApplyOutcome::Unchanged);
    // nft works on the same set afterwards (elements encoded as nft encodes them).
    ns.run(&[
        "nft",
        &format!("delete element inet skog {set4} {{ 198.51.100.77 }}"),
    ])
    .unwrap();
    ns.run(&[
        "nft",
        &format!("add element inet skog {set4} {{ 198.51.100.77 }}"),
    ])
    .unwrap();
    // A change the kernel refuses (the set was deleted behind our back) falls back to nft,
    // which repairs by replacing the table.
    ns.run(&["nft", "flush table inet skog"]).unwrap();
    ns.run(&["nft", &format!("delete set inet skog {set6}")])
        .unwrap();
    model
        .selectors
        .get_mut(&sel)
        .unwrap()
        .insert(scenarios::net("2001:db8:78::1/128"));
    let patch = skog_policy::compile::selector_patch(&model, &sel, applier.applied().unwrap());
    let out = applier.apply_patch(&patch).await.unwrap();
    assert!(
        matches!(
            out,
            ApplyOutcome::Replaced {
                why: ReplaceReason::IncrementalFailed(_)
            }
        ),
        "{out:?}"
    );
    assert!(list(ns, &["set", "inet", "skog", &set6]).contains("2001:db8:78::1"));
    assert_eq!(applier.refresh().await.unwrap(), ApplyOutcome::Unchanged);
}
