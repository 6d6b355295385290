//! The operations that apply a [`Patch`] to the table whose content is `old`, touching only
//! what the patch names: new sets and chains are added, set and map elements are added and
//! deleted one by one, a changed chain is flushed and refilled (in the same transaction, so it
//! is never seen empty), and what is gone is deleted last, once nothing refers to it.
//!
//! The operations are rendered either as one `nft -f` script ([`script`]) or as one nfnetlink
//! batch (`netlink::Batch`); both are one transaction. `None` means the change cannot be made
//! incrementally (a base chain's hook or a set's type changed): replace the table.

use std::collections::BTreeMap;
use std::fmt::Write;

use ipnet::IpNet;

use crate::names::{FAMILY, TABLE};
use crate::ruleset::{
    AddressSet, Chain, Patch, Ruleset, VerdictMap, elements_text, map_elements_text,
};

/// One step of a transaction on table `inet skog`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// `add table; delete table; add table` (the start of a full replacement).
    ReplaceTable,
    /// A chain, with its hook declaration for base chains.
    AddChain {
        name: &'a str,
        hook: Option<&'a str>,
    },
    AddSet {
        name: &'a str,
        set: &'a AddressSet,
    },
    AddElements {
        set: &'a str,
        elements: Vec<&'a IpNet>,
    },
    DeleteElements {
        set: &'a str,
        elements: Vec<&'a IpNet>,
    },
    FlushChain {
        name: &'a str,
    },
    AddRule {
        chain: &'a str,
        rule: &'a str,
    },
    AddMap {
        name: &'a str,
    },
    AddMapElements {
        map: &'a str,
        elements: Vec<(&'a String, &'a String)>,
    },
    DeleteMapElements {
        map: &'a str,
        keys: Vec<&'a String>,
    },
    DeleteMap {
        name: &'a str,
    },
    DeleteChain {
        name: &'a str,
    },
    DeleteSet {
        name: &'a str,
    },
}

/// The operations for `patch` over `old`; empty when the patch changes nothing.
pub fn ops<'a>(old: &'a Ruleset, patch: &'a Patch) -> Option<Vec<Op<'a>>> {
    let mut out = Vec::new();
    // 1. New sets, and set elements.
    for (name, set) in &patch.sets {
        let Some(set) = set else { continue };
        match old.sets.get(name) {
            None => {
                out.push(Op::AddSet { name, set });
                if !set.elements.is_empty() {
                    out.push(Op::AddElements {
                        set: name,
                        elements: set.elements.iter().collect(),
                    });
                }
            }
            Some(prev) if prev.v6 != set.v6 => return None,
            Some(prev) => {
                let gone: Vec<_> = prev.elements.difference(&set.elements).collect();
                let added: Vec<_> = set.elements.difference(&prev.elements).collect();
                if !gone.is_empty() {
                    out.push(Op::DeleteElements {
                        set: name,
                        elements: gone,
                    });
                }
                if !added.is_empty() {
                    out.push(Op::AddElements {
                        set: name,
                        elements: added,
                    });
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
            None => out.push(Op::AddChain { name, hook: None }),
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
            out.push(Op::FlushChain { name });
        }
        for rule in &chain.rules {
            out.push(Op::AddRule { chain: name, rule });
        }
    }
    // 4. Verdict map elements (they point at chains that now exist).
    static EMPTY: VerdictMap = VerdictMap {
        elements: BTreeMap::new(),
    };
    for (name, map) in &patch.maps {
        let Some(map) = map else { continue };
        let prev = old.maps.get(name).unwrap_or(&EMPTY);
        if !old.maps.contains_key(name) {
            out.push(Op::AddMap { name });
        }
        let keys: Vec<&String> = prev
            .elements
            .iter()
            .filter(|(k, v)| map.elements.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        if !keys.is_empty() {
            out.push(Op::DeleteMapElements { map: name, keys });
        }
        let elements: Vec<(&String, &String)> = map
            .elements
            .iter()
            .filter(|(k, v)| prev.elements.get(*k) != Some(v))
            .collect();
        if !elements.is_empty() {
            out.push(Op::AddMapElements {
                map: name,
                elements,
            });
        }
    }
    // 5. What is gone, once nothing refers to it: maps, then chains (emptied first, since the
    //    kernel refuses to delete a chain that still has rules), then sets.
    for name in removed(&patch.maps, &old.maps) {
        out.push(Op::DeleteMap { name });
    }
    let gone_chains = removed(&patch.chains, &old.chains);
    for name in &gone_chains {
        out.push(Op::FlushChain { name });
    }
    for name in gone_chains {
        out.push(Op::DeleteChain { name });
    }
    for name in removed(&patch.sets, &old.sets) {
        out.push(Op::DeleteSet { name });
    }
    Some(out)
}

/// The operations that replace the whole table with `r` (the nfnetlink form of
/// [`Ruleset::full_script`]): every chain declared first, then sets, maps, and rules.
pub fn replace_ops(r: &Ruleset) -> Vec<Op<'_>> {
    let mut out = vec![Op::ReplaceTable];
    let chains = r.chains_in_order();
    for (name, chain) in &chains {
        out.push(Op::AddChain {
            name,
            hook: chain.hook.as_deref(),
        });
    }
    for (name, set) in &r.sets {
        out.push(Op::AddSet { name, set });
        if !set.elements.is_empty() {
            out.push(Op::AddElements {
                set: name,
                elements: set.elements.iter().collect(),
            });
        }
    }
    for (name, map) in &r.maps {
        out.push(Op::AddMap { name });
        if !map.elements.is_empty() {
            out.push(Op::AddMapElements {
                map: name,
                elements: map.elements.iter().collect(),
            });
        }
    }
    for (name, chain) in chains {
        for rule in &chain.rules {
            out.push(Op::AddRule { chain: name, rule });
        }
    }
    out
}

/// The incremental nft script for `patch` over `old`; empty when the patch changes nothing.
pub fn script(old: &Ruleset, patch: &Patch) -> Option<String> {
    ops(old, patch).map(|ops| render(&ops))
}

/// `ops` as one nft script.
pub fn render(ops: &[Op<'_>]) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = String::new();
    for op in ops {
        let _ = match op {
            Op::ReplaceTable => writeln!(s, "add table {t}\ndelete table {t}\nadd table {t}"),
            Op::AddChain { name, hook: None } => writeln!(s, "add chain {t} {name}"),
            Op::AddChain {
                name,
                hook: Some(hook),
            } => writeln!(s, "add chain {t} {name} {{ {hook} }}"),
            Op::AddSet { name, set } => {
                writeln!(s, "add set {t} {name} {}", Ruleset::set_declaration(set))
            }
            Op::AddElements { set, elements } => {
                writeln!(s, "add element {t} {set} {}", elements_text(elements))
            }
            Op::DeleteElements { set, elements } => {
                writeln!(s, "delete element {t} {set} {}", elements_text(elements))
            }
            Op::FlushChain { name } => writeln!(s, "flush chain {t} {name}"),
            Op::AddRule { chain, rule } => writeln!(s, "add rule {t} {chain} {rule}"),
            Op::AddMap { name } => {
                writeln!(s, "add map {t} {name} {}", Ruleset::MAP_DECLARATION)
            }
            Op::AddMapElements { map, elements } => {
                writeln!(
                    s,
                    "add element {t} {map} {}",
                    map_elements_text(elements.iter().copied())
                )
            }
            Op::DeleteMapElements { map, keys } => {
                let keys = keys.iter().map(|k| format!("\"{k}\""));
                writeln!(s, "delete element {t} {map} {}", elements_text(keys))
            }
            Op::DeleteMap { name } => writeln!(s, "delete map {t} {name}"),
            Op::DeleteChain { name } => writeln!(s, "delete chain {t} {name}"),
            Op::DeleteSet { name } => writeln!(s, "delete set {t} {name}"),
        };
    }
    s
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
