//! The incremental scripts: a change sends only what changed (pure; no kernel needed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scenarios;

use skog_policy::names::{Direction, policy_chain, selector_set};
use skog_policy::{compile, diff};

fn script(old: &skog_policy::PolicyModel, new: &skog_policy::PolicyModel) -> String {
    let (a, b) = (compile(old).unwrap(), compile(new).unwrap());
    diff::script(&a.ruleset, &a.ruleset.patch_to(&b.ruleset)).expect("incremental")
}

#[test]
fn no_change_sends_nothing() {
    let m = scenarios::openstack_basic();
    assert_eq!(script(&m, &m), "");
}

#[test]
fn a_membership_change_is_one_element_add_and_delete() {
    let old = scenarios::openstack_basic();
    let mut new = old.clone();
    let members = new
        .selectors
        .get_mut(&scenarios::sg_selector("default"))
        .unwrap();
    members.insert(scenarios::net("198.51.100.99/32"));
    members.remove(&scenarios::net("198.51.100.30/32"));
    let set = selector_set(&scenarios::sg_selector("default"), false);
    assert_eq!(
        script(&old, &new),
        format!(
            "delete element inet skog {set} {{ 198.51.100.30/32 }}\n\
             add element inet skog {set} {{ 198.51.100.99/32 }}\n"
        )
    );
}

#[test]
fn a_rule_change_rewrites_only_that_policy_chain() {
    let old = scenarios::openstack_basic();
    let mut new = old.clone();
    let web = new
        .policies
        .get_mut(&scenarios::sg_policy_id("web"))
        .unwrap();
    web.ingress.as_mut().unwrap()[1].destination.ports = vec!["8080".into()];
    let s = script(&old, &new);
    let chain = policy_chain(&scenarios::sg_policy_id("web"), Direction::Ingress);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], format!("flush chain inet skog {chain}"), "{s}");
    assert_eq!(lines.len(), 1 + 7, "{s}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.starts_with(&format!("add rule inet skog {chain} ")))
    );
    assert!(s.contains("th dport 8080 "));
}

#[test]
fn a_removed_endpoint_leaves_the_maps_before_its_chains_go() {
    let old = scenarios::openstack_basic();
    let mut new = old.clone();
    new.endpoints.remove("vm1-port");
    let s = script(&old, &new);
    let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in\n{s}"));
    let unmap = pos("delete element inet skog to-vm { \"tap00000000-01\" }");
    let flush = pos("flush chain inet skog to-tap00000000-01");
    let delete = pos("delete chain inet skog to-tap00000000-01");
    assert!(unmap < flush && flush < delete, "{s}");
    // The shared policy chains stay: vm0 still uses them.
    assert!(!s.contains("pol-"), "{s}");
}

#[test]
fn a_new_endpoint_gets_chains_before_its_map_entries() {
    let mut old = scenarios::openstack_basic();
    old.endpoints.remove("vm1-port");
    let new = scenarios::openstack_basic();
    let s = script(&old, &new);
    let add_chain = s.find("add chain inet skog to-tap00000000-01").unwrap();
    let fill = s.find("add rule inet skog to-tap00000000-01").unwrap();
    let map = s
        .find("add element inet skog to-vm { \"tap00000000-01\" : goto to-tap00000000-01 }")
        .unwrap();
    assert!(add_chain < fill && fill < map, "{s}");
}

/// A targeted patch over the old ruleset gives what a full compile of the new model gives.
fn assert_patch_equals_full_compile(
    old: &skog_policy::PolicyModel,
    new: &skog_policy::PolicyModel,
    patch: &skog_policy::ruleset::Patch,
) {
    let mut patched = compile(old).unwrap().ruleset;
    patched.apply_patch(patch);
    assert_eq!(patched, compile(new).unwrap().ruleset);
}

#[test]
fn a_selector_patch_equals_a_full_compile() {
    let old = scenarios::openstack_basic();
    let mut new = old.clone();
    let sel = scenarios::sg_selector("default");
    new.selectors
        .get_mut(&sel)
        .unwrap()
        .insert(scenarios::net("2001:db8:100::99/128"));
    let current = compile(&old).unwrap().ruleset;
    let patch = skog_policy::compile::selector_patch(&new, &sel, &current);
    assert_eq!(patch.sets.len(), 1, "only the IPv6 set changed");
    assert_patch_equals_full_compile(&old, &new, &patch);
    // A selector this node does not use changes nothing.
    let unused = skog_policy::compile::selector_patch(&new, "has(other)", &current);
    assert!(unused.is_empty());
}

#[test]
fn a_policy_patch_equals_a_full_compile() {
    let old = scenarios::openstack_basic();
    let current = compile(&old).unwrap().ruleset;
    let web = scenarios::sg_policy_id("web");

    // A port changes.
    let mut new = old.clone();
    scenarios::set_web_ports(&mut new, &["8080"]);
    let (patch, problems) = skog_policy::compile::policy_patch(&new, &web, &current).unwrap();
    assert!(problems.is_empty());
    assert_eq!(patch.chains.len(), 1);
    assert_patch_equals_full_compile(&old, &new, &patch);

    // A rule starts using a selector no rule used: its sets come with the patch.
    let mut new = old.clone();
    let mut rule = scenarios::allow(Some("UDP"), &["53"]);
    rule.source.selector = Some(scenarios::sg_selector("dns"));
    new.policies
        .get_mut(&web)
        .unwrap()
        .ingress
        .as_mut()
        .unwrap()
        .push(rule);
    new.selectors.insert(
        scenarios::sg_selector("dns"),
        [scenarios::net("192.0.2.53/32")].into(),
    );
    let (patch, _) = skog_policy::compile::policy_patch(&new, &web, &current).unwrap();
    assert_eq!(patch.sets.len(), 2);
    assert_patch_equals_full_compile(&old, &new, &patch);

    // An invalid rule is reported by the patch too.
    let mut new = old.clone();
    new.policies
        .get_mut(&web)
        .unwrap()
        .ingress
        .as_mut()
        .unwrap()[0]
        .destination
        .ports = vec!["90:80".into()];
    let (_, problems) = skog_policy::compile::policy_patch(&new, &web, &current).unwrap();
    assert_eq!(problems.len(), 1);

    // The policy stops applying to ingress: endpoint chains change, so no patch.
    let mut new = old.clone();
    new.policies.get_mut(&web).unwrap().ingress = None;
    assert!(skog_policy::compile::policy_patch(&new, &web, &current).is_none());
}
