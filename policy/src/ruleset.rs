//! The desired content of Skog's table, as data, and its full text form.
//!
//! A [`Ruleset`] is what the compiler produces and what the applier diffs: chains as lists of
//! rule texts, named selector sets with their elements, and interface verdict maps. Keeping it
//! as data (not one big text) is what lets the applier send only what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use ipnet::IpNet;

use crate::names::{FAMILY, TABLE};

/// What a chain is for; decides the order chains are declared in, so that every chain, set or
/// map is declared before anything that refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChainKind {
    /// A policy's rules for one direction (refers to sets).
    Policy,
    /// An endpoint's policy, anti-spoofing or VM-to-host chain (refers to policy chains).
    Endpoint,
    /// A chain dispatching by interface through a verdict map (refers to maps).
    Dispatch,
    /// A chain attached to a netfilter hook (refers to maps).
    Base,
}

/// One chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub kind: ChainKind,
    /// For base chains, the declaration, e.g. `type filter hook forward priority filter;
    /// policy accept;`.
    pub hook: Option<String>,
    /// A note for readers of the full text (plain characters only; not sent incrementally).
    pub note: Option<String>,
    pub rules: Vec<String>,
}

/// A named set of addresses or networks of one IP version (always `flags interval`, so
/// networks from allowed address pairs fit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSet {
    pub v6: bool,
    pub note: Option<String>,
    /// No element contains another (nft refuses overlapping intervals).
    pub elements: BTreeSet<IpNet>,
}

impl AddressSet {
    /// Builds the elements from `members` of the set's version, dropping members that another
    /// member already covers.
    pub fn from_members<'a>(
        v6: bool,
        note: Option<String>,
        members: impl IntoIterator<Item = &'a IpNet>,
    ) -> AddressSet {
        let mut sorted: Vec<IpNet> = members
            .into_iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .map(IpNet::trunc)
            .collect();
        // Sorted by (network address, prefix length): a covering net precedes what it covers.
        sorted.sort();
        let mut elements = BTreeSet::new();
        let mut last: Option<IpNet> = None;
        for net in sorted {
            if last.is_some_and(|l| l.contains(&net)) {
                continue;
            }
            elements.insert(net);
            last = Some(net);
        }
        AddressSet { v6, note, elements }
    }

    fn type_name(&self) -> &'static str {
        if self.v6 { "ipv6_addr" } else { "ipv4_addr" }
    }
}

/// An `ifname : verdict` map (dispatch by interface).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerdictMap {
    /// Interface name (checked) to verdict text (`jump from-tap...`, `drop`).
    pub elements: BTreeMap<String, String>,
}

/// The whole content of table `inet skog`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, AddressSet>,
    pub maps: BTreeMap<String, VerdictMap>,
}

/// `{ a, b }` of set elements.
pub fn elements_text(elements: impl IntoIterator<Item = impl ToString>) -> String {
    let items: Vec<String> = elements.into_iter().map(|e| e.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// `{ "tapX" : jump from-tapX, ... }` of map elements.
pub fn map_elements_text<'a>(
    elements: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> String {
    elements_text(elements.into_iter().map(|(k, v)| format!("\"{k}\" : {v}")))
}

impl Ruleset {
    /// The declaration (without elements) of set `name`.
    pub fn set_declaration(set: &AddressSet) -> String {
        format!("{{ type {}; flags interval; }}", set.type_name())
    }

    /// The declaration (without elements) of a verdict map.
    pub const MAP_DECLARATION: &'static str = "{ type ifname : verdict; }";

    /// Chain names in declaration order: by kind, then name.
    pub fn chains_in_order(&self) -> Vec<(&String, &Chain)> {
        let mut chains: Vec<_> = self.chains.iter().collect();
        chains.sort_by_key(|(name, c)| (c.kind, *name));
        chains
    }

    /// The table as one nft script that replaces whatever the table holds, atomically: the
    /// table is created if missing, deleted and declared anew in the same transaction.
    pub fn full_script(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "add table {FAMILY} {TABLE}");
        let _ = writeln!(s, "delete table {FAMILY} {TABLE}");
        s.push_str(&self.table_text());
        s
    }

    /// The table block alone (also the golden-file form).
    pub fn table_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "table {FAMILY} {TABLE} {{");
        for (name, set) in &self.sets {
            if let Some(note) = &set.note {
                let _ = writeln!(s, "\t# {note}");
            }
            let _ = writeln!(s, "\tset {name} {{");
            let _ = writeln!(s, "\t\ttype {}; flags interval;", set.type_name());
            if !set.elements.is_empty() {
                let _ = writeln!(s, "\t\telements = {}", elements_text(&set.elements));
            }
            let _ = writeln!(s, "\t}}");
        }
        let (before_maps, after_maps): (Vec<_>, Vec<_>) = self
            .chains_in_order()
            .into_iter()
            .partition(|(_, c)| c.kind < ChainKind::Dispatch);
        for (name, chain) in before_maps {
            write_chain(&mut s, name, chain);
        }
        for (name, map) in &self.maps {
            let _ = writeln!(s, "\tmap {name} {{");
            let _ = writeln!(s, "\t\ttype ifname : verdict;");
            if !map.elements.is_empty() {
                let _ = writeln!(s, "\t\telements = {}", map_elements_text(&map.elements));
            }
            let _ = writeln!(s, "\t}}");
        }
        for (name, chain) in after_maps {
            write_chain(&mut s, name, chain);
        }
        s.push_str("}\n");
        s
    }
}

/// A change to a [`Ruleset`]: entries to set (`Some`) or remove (`None`). Only what it names
/// is touched, which is what makes one membership or one policy change cheap end to end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch {
    pub chains: BTreeMap<String, Option<Chain>>,
    pub sets: BTreeMap<String, Option<AddressSet>>,
    pub maps: BTreeMap<String, Option<VerdictMap>>,
}

impl Patch {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty() && self.maps.is_empty()
    }
}

/// The entries of `new` that differ from `old`, and `None` for those only `old` has.
fn changed<V: Clone + PartialEq>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
) -> BTreeMap<String, Option<V>> {
    let mut out: BTreeMap<String, Option<V>> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    out.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| (k.clone(), None)),
    );
    out
}

fn patch_map<V>(map: &mut BTreeMap<String, V>, changes: &BTreeMap<String, Option<V>>)
where
    V: Clone,
{
    for (k, v) in changes {
        match v {
            Some(v) => {
                map.insert(k.clone(), v.clone());
            }
            None => {
                map.remove(k);
            }
        }
    }
}

impl Ruleset {
    /// The patch that turns `self` into `new`.
    pub fn patch_to(&self, new: &Ruleset) -> Patch {
        Patch {
            chains: changed(&self.chains, &new.chains),
            sets: changed(&self.sets, &new.sets),
            maps: changed(&self.maps, &new.maps),
        }
    }

    /// Applies `patch` to this description (not to the kernel).
    pub fn apply_patch(&mut self, patch: &Patch) {
        patch_map(&mut self.chains, &patch.chains);
        patch_map(&mut self.sets, &patch.sets);
        patch_map(&mut self.maps, &patch.maps);
    }
}

fn write_chain(s: &mut String, name: &str, chain: &Chain) {
    if let Some(note) = &chain.note {
        let _ = writeln!(s, "\t# {note}");
    }
    let _ = writeln!(s, "\tchain {name} {{");
    if let Some(hook) = &chain.hook {
        let _ = writeln!(s, "\t\t{hook}");
    }
    for rule in &chain.rules {
        let _ = writeln!(s, "\t\t{rule}");
    }
    let _ = writeln!(s, "\t}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_turns_one_ruleset_into_the_other() {
        let chain = |rules: &[&str]| Chain {
            kind: ChainKind::Policy,
            hook: None,
            note: None,
            rules: rules.iter().map(|r| r.to_string()).collect(),
        };
        let mut old = Ruleset::default();
        old.chains.insert("a".into(), chain(&["drop"]));
        old.chains.insert("b".into(), chain(&["accept"]));
        let mut new = Ruleset::default();
        new.chains.insert("a".into(), chain(&["drop"]));
        new.chains.insert("c".into(), chain(&["return"]));
        let patch = old.patch_to(&new);
        assert_eq!(
            patch.chains.len(),
            2,
            "unchanged chain a is not in the patch"
        );
        assert_eq!(patch.chains["b"], None);
        old.apply_patch(&patch);
        assert_eq!(old, new);
        assert!(new.patch_to(&new).is_empty());
    }

    #[test]
    fn covered_members_are_dropped() {
        let nets: Vec<IpNet> = [
            "198.51.100.0/24",
            "198.51.100.7/32",
            "192.0.2.1/32",
            "2001:db8::1/128",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let set = AddressSet::from_members(false, None, &nets);
        let got: Vec<String> = set.elements.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["192.0.2.1/32", "198.51.100.0/24"]);
    }
}
