//! The nft script that applies a [`Patch`] to the table whose content is `old`, touching only
//! what the patch names: new sets and chains are added, set and map elements are added and
//! deleted one by one, a changed chain is flushed and refilled (in the same transaction, so it
//! is never seen empty), and what is gone is deleted last, once nothing refers to it.
//!
//! The script is one `nft -f` input, hence one transaction. `None` means the change cannot be
//! made incrementally (a base chain's hook or a set's type changed): replace the table.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::names::{FAMILY, TABLE};
use crate::ruleset::{Chain, Patch, Ruleset, VerdictMap, elements_text, map_elements_text};

/// The incremental script for `patch` over `old`; empty when the patch changes nothing.
pub fn script(old: &Ruleset, patch: &Patch) -> Option<String> {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = String::new();
    // 1. New sets, and set elements.
    for (name, set) in &patch.sets {
        let Some(set) = set else { continue };
        match old.sets.get(name) {
            None => {
                let _ = writeln!(s, "add set {t} {name} {}", Ruleset::set_declaration(set));
                if !set.elements.is_empty() {
                    let _ = writeln!(s, "add element {t} {name} {}", elements_text(&set.elements));
                }
            }
            Some(prev) if prev.v6 != set.v6 => return None,
            Some(prev) => {
                let gone: Vec<_> = prev.elements.difference(&set.elements).collect();
                let added: Vec<_> = set.elements.difference(&prev.elements).collect();
                if !gone.is_empty() {
                    let _ = writeln!(s, "delete element {t} {name} {}", elements_text(gone));
                }
                if !added.is_empty() {
                    let _ = writeln!(s, "add element {t} {name} {}", elements_text(added));
                }
            }
        }
    }
    // 2. New chains, declared empty first: rules may jump to chains declared later.
    let mut new_chains: Vec<(&String, &Chain)> = patch
        .chains
        .iter()
        .filter_map(|(name, c)| c.as_ref().map(|c| (name, c)))
        .collect();
    new_chains.sort_by_key(|(name, c)| (c.kind, *name));
    for &(name, chain) in &new_chains {
        match old.chains.get(name) {
            None if chain.hook.is_some() => return None,
            None => {
                let _ = writeln!(s, "add chain {t} {name}");
            }
            Some(prev) if prev.hook != chain.hook => return None,
            Some(_) => {}
        }
    }
    // 3. New and changed chains get their rules.
    for &(name, chain) in &new_chains {
        let prev = old.chains.get(name);
        if prev.is_some_and(|p| p.rules == chain.rules) {
            continue;
        }
        if prev.is_some() {
            let _ = writeln!(s, "flush chain {t} {name}");
        }
        for rule in &chain.rules {
            let _ = writeln!(s, "add rule {t} {name} {rule}");
        }
    }
    // 4. Verdict map elements (they point at chains that now exist).
    let empty = VerdictMap::default();
    for (name, map) in &patch.maps {
        let Some(map) = map else { continue };
        let prev = old.maps.get(name).unwrap_or(&empty);
        if !old.maps.contains_key(name) {
            let _ = writeln!(s, "add map {t} {name} {}", Ruleset::MAP_DECLARATION);
        }
        let gone: Vec<&String> = prev
            .elements
            .iter()
            .filter(|(k, v)| map.elements.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        if !gone.is_empty() {
            let keys = gone.iter().map(|k| format!("\"{k}\""));
            let _ = writeln!(s, "delete element {t} {name} {}", elements_text(keys));
        }
        let added: Vec<(&String, &String)> = map
            .elements
            .iter()
            .filter(|(k, v)| prev.elements.get(*k) != Some(v))
            .collect();
        if !added.is_empty() {
            let _ = writeln!(s, "add element {t} {name} {}", map_elements_text(added));
        }
    }
    // 5. What is gone, once nothing refers to it: maps, then chains (emptied first, since the
    //    kernel refuses to delete a chain that still has rules), then sets.
    for name in removed(&patch.maps, &old.maps) {
        let _ = writeln!(s, "delete map {t} {name}");
    }
    let gone_chains = removed(&patch.chains, &old.chains);
    for name in &gone_chains {
        let _ = writeln!(s, "flush chain {t} {name}");
    }
    for name in &gone_chains {
        let _ = writeln!(s, "delete chain {t} {name}");
    }
    for name in removed(&patch.sets, &old.sets) {
        let _ = writeln!(s, "delete set {t} {name}");
    }
    Some(s)
}

/// The names a patch removes that exist in `old`.
fn removed<'p, V, W>(
    patch: &'p BTreeMap<String, Option<V>>,
    old: &BTreeMap<String, W>,
) -> Vec<&'p String> {
    patch
        .iter()
        .filter(|(k, v)| v.is_none() && old.contains_key(*k))
        .map(|(k, _)| k)
        .collect()
}
