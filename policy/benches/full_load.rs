//! Full load of 1,000 endpoints x 20 rules with remote-group sets: Skog (compile + one atomic
//! replacement over nfnetlink + reading the rules back for the drift check) beside `nft -f` of
//! the same table text, both into an empty namespace table.

// A benchmark fails loudly: unwrap is the right tool here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use skog_policy::{ApplyOutcome, compile};

fn main() {
    let (tb, ns) = common::bed("bench_full");
    let n = if common::quick() { 3 } else { 15 };
    let model = common::cloud(1000);
    let nft = common::nft(&ns);
    let rt = common::runtime();
    let text = compile(&model).unwrap().ruleset.full_script();
    let clear = "add table inet skog\ndelete table inet skog\n";
    let mut skog = Vec::new();
    let mut reference = Vec::new();
    // Interleaved so both see the same machine load.
    for _ in 0..n {
        rt.block_on(nft.run_script(clear)).unwrap();
        let mut applier = Some(common::applier(&tb, &nft));
        skog.extend(common::time_n(1, |_| {
            let ruleset = compile(&model).unwrap().ruleset;
            let mut applier = applier.take().unwrap();
            let out = rt.block_on(applier.apply(&ruleset)).unwrap();
            assert!(matches!(out, ApplyOutcome::Replaced { .. }), "{out:?}");
        }));
        rt.block_on(nft.run_script(clear)).unwrap();
        reference.extend(common::time_n(1, |_| {
            rt.block_on(nft.run_script(&text)).unwrap();
        }));
    }
    skog.sort();
    reference.sort();
    common::report(
        "policy_full_load_1000x20",
        &skog,
        "nft -f (same table text)",
        &reference,
        "<= 1.0x nft -f",
    );
}
