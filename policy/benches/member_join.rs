//! One IP joining (or leaving) a security group referenced by 1,000 endpoints: Skog (the
//! selector's patch, one nfnetlink batch) beside `nft -f` of the one `add element` line.

// A benchmark fails loudly: unwrap is the right tool here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use skog_policy::compile;
use skog_policy::compile::selector_patch;
use skog_policy::names::selector_set;

fn main() {
    let (tb, ns) = common::bed("bench_join");
    let n = if common::quick() { 5 } else { 50 };
    let mut model = common::cloud(1000);
    let nft = common::nft(&ns);
    let rt = common::runtime();
    let mut applier = common::applier(&tb, &nft);
    rt.block_on(applier.apply(&compile(&model).unwrap().ruleset))
        .unwrap();
    let selector = common::sg_selector(common::DEFAULT_SG);
    let set = selector_set(&selector, false);
    let skog = common::time_n(n, |k| {
        let ip = format!("203.0.113.{}/32", k % 100).parse().unwrap();
        let members = model.selectors.get_mut(&selector).unwrap();
        if !members.insert(ip) {
            members.remove(&ip);
        }
        let patch = selector_patch(&model, &selector, applier.applied().unwrap());
        rt.block_on(applier.apply_patch(&patch)).unwrap();
    });
    let reference = common::time_n(n, |k| {
        let ip = format!("192.0.2.{}", 100 + k % 100);
        let script = format!("add element inet skog {set} {{ {ip} }}\n");
        rt.block_on(nft.run_script(&script)).unwrap();
    });
    common::report(
        "policy_member_join_1000_endpoints",
        &skog,
        "nft -f (one add element)",
        &reference,
        "median <= 5 ms",
    );
}
