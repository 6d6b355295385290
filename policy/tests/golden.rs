//! Golden files for the compiler: each scenario's compiled table (problems as comments) must
//! equal `tests/golden/<scenario>.nft`. Regenerate with `SKOG_BLESS=1 cargo test -p skog-policy
//! --test golden` and review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scenarios;

use std::path::PathBuf;

use skog_policy::compile;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.nft"))
}

#[test]
fn compiled_tables_match_golden_files() {
    let bless = std::env::var_os("SKOG_BLESS").is_some();
    let mut mismatched = Vec::new();
    for (name, model) in scenarios::all() {
        let got = compile(&model).unwrap().to_string();
        let path = golden_path(name);
        if bless {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with SKOG_BLESS=1)", path.display()));
        if got != want {
            eprintln!("--- {name}: got\n{got}");
            mismatched.push(name);
        }
    }
    assert!(mismatched.is_empty(), "golden mismatch: {mismatched:?}");
}

#[test]
fn invalid_rules_are_rejected_alone_and_named() {
    let out = compile(&scenarios::invalid_input()).unwrap();
    let msgs: Vec<String> = out.problems.iter().map(ToString::to_string).collect();
    let rule_problems: Vec<&String> = msgs.iter().filter(|m| m.contains(" rule ")).collect();
    assert_eq!(rule_problems.len(), 4, "{msgs:#?}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("ingress rule 0") && m.contains("evil") && m.contains("\"90:80\"")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("ingress rule 1") && m.contains("unknown protocol \"tcpp\"")),
        "{msgs:#?}"
    );
    // The valid rule after them is still there; the invalid Deny became a plain drop.
    let text = out.ruleset.table_text();
    assert!(
        text.contains("meta l4proto tcp th dport 22 goto policy-allow"),
        "{text}"
    );
    // Injection attempts never reach the ruleset text outside comments.
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(!line.contains("flush ruleset"), "{line}");
    }
    // Bad or duplicate interfaces get no chains; the good endpoint does.
    assert!(text.contains("chain to-tapdddddddd-dd"));
    assert_eq!(text.matches("chain to-tap").count(), 1, "{text}");
}

#[test]
fn a_policy_chain_is_shared_by_all_its_endpoints() {
    let out = compile(&scenarios::openstack_basic()).unwrap();
    let default_in = skog_policy::names::policy_chain(
        &scenarios::sg_policy_id("default"),
        skog_policy::names::Direction::Ingress,
    );
    let jumps = out
        .ruleset
        .chains
        .values()
        .flat_map(|c| &c.rules)
        .filter(|r| r.ends_with(&format!("jump {default_in}")))
        .count();
    assert_eq!(jumps, 2);
    assert_eq!(
        out.ruleset
            .chains
            .keys()
            .filter(|k| k.starts_with("pol-"))
            .count(),
        4
    );
}
