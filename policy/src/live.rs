//! Reading Skog's table back over nfnetlink, to find drift: the chains, the named sets and
//! maps with their elements (compared by content with the applied [`Ruleset`]), and a digest of
//! each chain's rules as the kernel holds them (compared with the digest read right after
//! Skog wrote the chain, since the kernel's form of a rule is not its text).
//!
//! Everything read here comes from the kernel and is decoded without trusting a length; a
//! malformed answer is an error, never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hasher};

use ipnet::IpNet;

use crate::expr::Verdict;
use crate::names::TABLE;
use crate::netlink::{NetlinkError, NfWriter};
use crate::ruleset::Ruleset;
use crate::wire::{self, attr_str};

const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

/// `ENOENT`: the answer to a dump of a table that does not exist.
const ENOENT: i32 = 2;

/// The content of a named set or map as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elements {
    /// Address ranges: first address, and the address after the last (`None`: to the top).
    Ranges(BTreeSet<(Vec<u8>, Option<Vec<u8>>)>),
    /// Interface name to verdict.
    Verdicts(BTreeMap<String, Verdict>),
}

/// Chains and named sets/maps of Skog's table in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveTable {
    pub chains: BTreeSet<String>,
    pub sets: BTreeMap<String, Elements>,
}

fn string(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

fn be32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?))
}

/// The payload of attribute `ty`, if present.
fn get<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, p)| *p)
}

/// `NFTA_DATA_VALUE` inside a nested data attribute.
fn data_value(nested: &[u8]) -> Option<Vec<u8>> {
    get(&wire::attrs(nested)?, 1).map(<[u8]>::to_vec)
}

/// The ranges of an interval set from its elements (key, is interval end); an end without a
/// start (nft writes one at zero) is ignored.
fn ranges(mut elements: Vec<(Vec<u8>, bool)>) -> BTreeSet<(Vec<u8>, Option<Vec<u8>>)> {
    // Ends first at equal keys: a range may end where the next starts.
    elements.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out = BTreeSet::new();
    let mut open: Option<Vec<u8>> = None;
    for (key, end) in elements {
        match (end, open.take()) {
            (true, Some(start)) => {
                out.insert((start, Some(key)));
            }
            (true, None) => {}
            (false, prev) => {
                if let Some(prev) = prev {
                    out.insert((prev, None));
                }
                open = Some(key);
            }
        }
    }
    if let Some(start) = open {
        out.insert((start, None));
    }
    out
}

/// Decodes the element lists of a `GETSETELEM` dump.
fn decode_elements(answers: &[Vec<u8>], map: bool) -> Option<Elements> {
    let mut keys = Vec::new();
    let mut verdicts = BTreeMap::new();
    for answer in answers {
        let attrs = wire::attrs(answer)?;
        let Some(list) = get(&attrs, 3) else { continue };
        for (_, element) in wire::attrs(list)? {
            let e = wire::attrs(element)?;
            let key = data_value(get(&e, 1)?)?;
            if map {
                let v = wire::attrs(get(&e, 2)?)?;
                let v = wire::attrs(get(&v, 2)?)?;
                let code = be32(get(&v, 1)?)? as i32;
                let chain = get(&v, 2).map(string);
                verdicts.insert(string(&key), Verdict::from_code(code, chain)?);
            } else {
                let flags = get(&e, 3).and_then(be32).unwrap_or(0);
                keys.push((key, flags & NFT_SET_ELEM_INTERVAL_END != 0));
            }
        }
    }
    Some(if map {
        Elements::Verdicts(verdicts)
    } else {
        Elements::Ranges(ranges(keys))
    })
}

/// What `net` is in an interval set.
fn range_of(net: &IpNet) -> (Vec<u8>, Option<Vec<u8>>) {
    let net = net.trunc();
    let bytes = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    let after = match net {
        IpNet::V4(n) => u32::from(n.broadcast())
            .checked_add(1)
            .map(|a| std::net::IpAddr::V4(a.into())),
        IpNet::V6(n) => u128::from(n.broadcast())
            .checked_add(1)
            .map(|a| std::net::IpAddr::V6(a.into())),
    };
    (bytes(net.network()), after.map(bytes))
}

/// The first difference between the applied ruleset and the kernel's table, if any.
pub fn difference(applied: &Ruleset, live: &LiveTable) -> Option<String> {
    let want_chains: BTreeSet<&String> = applied.chains.keys().collect();
    if let Some(c) = want_chains.iter().find(|c| !live.chains.contains(**c)) {
        return Some(format!("chain {c} is missing"));
    }
    if let Some(c) = live.chains.iter().find(|c| !want_chains.contains(c)) {
        return Some(format!("unexpected chain {c}"));
    }
    let mut want: BTreeMap<&String, Elements> = BTreeMap::new();
    for (name, set) in &applied.sets {
        want.insert(
            name,
            Elements::Ranges(set.elements.iter().map(range_of).collect()),
        );
    }
    for (name, map) in &applied.maps {
        let verdicts = map
            .elements
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Verdict::parse(v)?)))
            .collect();
        want.insert(name, Elements::Verdicts(verdicts));
    }
    for (name, elements) in &want {
        match live.sets.get(*name) {
            None => return Some(format!("set {name} is missing")),
            Some(have) if have != elements => {
                return Some(format!("elements of set {name} differ from those applied"));
            }
            Some(_) => {}
        }
    }
    live.sets
        .keys()
        .find(|s| !want.contains_key(s))
        .map(|s| format!("unexpected set {s}"))
}

impl NfWriter {
    /// The chains and named sets/maps (with elements) of Skog's table; empty if the table is
    /// missing.
    pub fn read_table(&mut self) -> Result<LiveTable, NetlinkError> {
        let mut live = LiveTable::default();
        let (Some(chains), Some(set_answers)) = (
            self.table_dump(NFT_MSG_GETCHAIN)?,
            self.table_dump(NFT_MSG_GETSET)?,
        ) else {
            return Ok(live);
        };
        for answer in chains {
            let attrs = wire::attrs(&answer).ok_or(NetlinkError::Malformed)?;
            // The kernel lists the chains of every inet table here: keep Skog's.
            if get(&attrs, 1).map(string).as_deref() != Some(TABLE) {
                continue;
            }
            if let Some(name) = get(&attrs, 3) {
                live.chains.insert(string(name));
            }
        }
        let mut sets = Vec::new();
        for answer in set_answers {
            let attrs = wire::attrs(&answer).ok_or(NetlinkError::Malformed)?;
            let flags = get(&attrs, 3).and_then(be32).unwrap_or(0);
            if get(&attrs, 1).map(string).as_deref() != Some(TABLE) {
                continue;
            }
            if let Some(name) = get(&attrs, 2)
                && flags & NFT_SET_ANONYMOUS == 0
            {
                // A map has a data type.
                sets.push((string(name), get(&attrs, 6).is_some()));
            }
        }
        for (name, map) in sets {
            let answers = self.dump(NFT_MSG_GETSETELEM, |m| attr_str(m, 2, &name))?;
            let elements = decode_elements(&answers, map).ok_or(NetlinkError::Malformed)?;
            live.sets.insert(name, elements);
        }
        Ok(live)
    }

    /// A dump of the table's chains or sets; `None` if the table does not exist.
    fn table_dump(&mut self, msg: u16) -> Result<Option<Vec<Vec<u8>>>, NetlinkError> {
        match self.dump(msg, |_| {}) {
            Err(NetlinkError::Refused { error, .. }) if error.raw_os_error() == Some(ENOENT) => {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// A digest of the rules of each of `chains` as the kernel holds them (their expressions
    /// and user data, in order). Chains without rules are absent.
    ///
    /// One dump per chain: the kernel restarts a table-wide rule dump from its first rule
    /// for every 32 KiB chunk, which costs more at 25,000 rules than 5,000 small dumps.
    pub fn chain_digests<'c>(
        &mut self,
        chains: impl IntoIterator<Item = &'c String>,
    ) -> Result<BTreeMap<String, u64>, NetlinkError> {
        let mut out = BTreeMap::new();
        for chain in chains {
            let answers = self.dump(NFT_MSG_GETRULE, |m| attr_str(m, 2, chain))?;
            if answers.is_empty() {
                continue;
            }
            let mut h = DefaultHasher::new();
            for answer in &answers {
                let attrs = wire::attrs(answer).ok_or(NetlinkError::Malformed)?;
                for (ty, payload) in &attrs {
                    // Expressions and user data; not the handle or position.
                    match ty {
                        4 => hash_expressions(&mut h, payload)?,
                        7 => {
                            h.write_u16(*ty);
                            h.write(payload);
                        }
                        _ => {}
                    }
                }
                h.write_u8(0xff);
            }
            out.insert(chain.clone(), h.finish());
        }
        Ok(out)
    }
}

/// Hashes a rule's expressions, each counter by its name only: its values change with every
/// packet and are no drift.
fn hash_expressions(h: &mut DefaultHasher, list: &[u8]) -> Result<(), NetlinkError> {
    h.write_u16(4);
    for (_, element) in wire::attrs(list).ok_or(NetlinkError::Malformed)? {
        let expr = wire::attrs(element).ok_or(NetlinkError::Malformed)?;
        let counter = get(&expr, 1).is_some_and(|name| string(name) == "counter");
        for (ty, payload) in &expr {
            if counter && *ty == 2 {
                continue;
            }
            h.write_u16(*ty);
            h.write(payload);
        }
        h.write_u8(0xfe);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_elements_become_ranges() {
        let k = |b: u8| vec![192, 0, 2, b];
        // A leading end at zero (nft), adjacent ranges, a range to the top.
        let got = ranges(vec![
            (vec![0, 0, 0, 0], true),
            (k(11), true),
            (k(10), false),
            (k(11), false),
            (k(12), true),
            (vec![255, 0, 0, 0], false),
        ]);
        let want: BTreeSet<_> = [
            (k(10), Some(k(11))),
            (k(11), Some(k(12))),
            (vec![255, 0, 0, 0], None),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
        let net: IpNet = "192.0.2.10/32".parse().unwrap();
        assert_eq!(range_of(&net), (k(10), Some(k(11))));
    }

    #[test]
    fn malformed_dumps_are_errors_not_panics() {
        let mut element = Vec::new();
        wire::nested(&mut element, 3, |list| {
            wire::nested(list, 1, |e| {
                wire::nested(e, 1, |k| wire::attr(k, 1, &[192, 0, 2, 1]));
                wire::nested(e, 2, |d| Verdict::Drop.encode(d));
            })
        });
        assert!(decode_elements(std::slice::from_ref(&element), false).is_some());
        assert!(decode_elements(std::slice::from_ref(&element), true).is_some());
        for cut in 0..element.len() {
            let _ = decode_elements(&[element[..cut].to_vec()], true);
            let _ = decode_elements(&[element[..cut].to_vec()], false);
        }
        let mut bad = element.clone();
        bad[0] = 0xff;
        assert!(decode_elements(&[bad], false).is_none());
        // Every byte of a real answer set to every value.
        for at in 0..element.len() {
            for value in 0..=255u8 {
                let mut mutated = element.clone();
                mutated[at] = value;
                let _ = decode_elements(std::slice::from_ref(&mutated), true);
                let _ = decode_elements(std::slice::from_ref(&mutated), false);
            }
        }
    }
}
