//! One IP joining (or leaving) a security group referenced by 1,000 endpoints: Skog (the
//! selector's patch, one nfnetlink batch) beside `nft -f` of the one `add element` line.

// A benchmark fails loudly: unwrap is the right tool here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use skog_policy::compile::selector_patch;
use skog_policy::names::selector_set;
use skog_policy::netlink::NfWriter;
use skog_policy::{Applier, Nft, compile};

fn main() {
    let (tb, ns) = common::bed("bench_join");
    let n = if common::quick() { 5 } else { 50 };
    let mut model = common::cloud(1000);
    let nft = Nft::new()
        .in_netns(&ns)
        .with_timeout(std::time::Duration::from_secs(60));
    let rt = common::runtime();
    let writer = tb
        .hv(skog_testbed::HvId(0))
        .unwrap()
        .ns()
        .enter(NfWriter::open)
        .unwrap()
        .unwrap();
    let mut applier = Applier::new(nft.clone()).with_netlink(writer);
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
