//! One rule changed in a security group used by 100 endpoints (in a table of 1,000): Skog
//! (the policy's patch, one nfnetlink transaction rewriting the group's chain, reading it back
//! for the drift check) beside `nft -f` of the same flush-and-refill text.

// A benchmark fails loudly: unwrap is the right tool here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use skog_policy::compile::policy_patch;
use skog_policy::{ApplyOutcome, compile, diff};

fn main() {
    let (tb, ns) = common::bed("bench_rule");
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
    let nft = common::nft(&ns);
    let rt = common::runtime();
    let mut applier = common::applier(&tb, &nft);
    rt.block_on(applier.apply(&compile(&model).unwrap().ruleset))
        .unwrap();
    let mut scripts = Vec::new();
    let mut skog = Vec::new();
    for k in 0..n {
        policy.ingress.as_mut().unwrap()[0].destination.ports = vec![(30000 + k).to_string()];
        model.policies.insert(shared.clone(), policy.clone());
        // The same change as text, for the reference run (made before, untimed).
        let applied = applier.applied().unwrap();
        let (reference, _) = policy_patch(&model, &shared, applied).unwrap();
        scripts.push(diff::script(applied, &reference).unwrap());
        let started = std::time::Instant::now();
        let (patch, _) = policy_patch(&model, &shared, applier.applied().unwrap()).unwrap();
        let out = rt.block_on(applier.apply_patch(&patch)).unwrap();
        skog.push(started.elapsed());
        assert!(matches!(out, ApplyOutcome::Netlink { .. }), "{out:?}");
    }
    skog.sort();
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
