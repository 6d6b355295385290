//! One rule changed in a security group used by 100 endpoints (in a table of 1,000): Skog
//! (compile, diff, one transaction rewriting the group's chain) beside `nft -f` of the same
//! flush-and-refill text.

// A benchmark is a test harness: a failed step aborts the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use skog_policy::{Applier, Nft, compile, diff};

fn main() {
    let (_tb, ns) = common::bed("bench_rule");
    let n = if common::quick() { 5 } else { 50 };
    let mut model = common::cloud(1000);
    // Endpoints 1..=100 also share group "shared".
    let shared = "ossg.default.shared".to_owned();
    let mut policy = model.policies[&common::sg_id(1)].clone();
    for (i, ep) in model.endpoints.values_mut().enumerate() {
        if i < 100 {
            ep.tiers[0].push(shared.clone());
        }
    }
    model.policies.insert(shared.clone(), policy.clone());
    let nft = Nft::new()
        .in_netns(&ns)
        .with_timeout(std::time::Duration::from_secs(60));
    let rt = common::runtime();
    let mut applier = Applier::new(nft.clone());
    rt.block_on(applier.apply(&compile(&model).unwrap().ruleset))
        .unwrap();
    let mut scripts = Vec::new();
    let skog = common::time_n(n, |k| {
        let before = applier.applied().cloned().unwrap();
        policy.ingress.as_mut().unwrap()[0].destination.ports = vec![(30000 + k).to_string()];
        model.policies.insert(shared.clone(), policy.clone());
        let ruleset = compile(&model).unwrap().ruleset;
        rt.block_on(applier.apply(&ruleset)).unwrap();
        scripts.push(diff::script(&before, &before.patch_to(&ruleset)).unwrap());
    });
    let reference = common::time_n(n, |k| {
        rt.block_on(nft.run_script(&scripts[k])).unwrap();
    });
    common::report(
        "policy_rule_change_100_endpoints",
        &skog,
        "nft -f (same flush + add rule text)",
        &reference,
        "median <= 10 ms",
    );
}
