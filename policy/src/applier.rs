//! Keeps Skog's table in the kernel in step with the desired [`Ruleset`].
//!
//! The applier remembers the ruleset it last applied successfully. Every change is one
//! transaction: the first apply (start-up) replaces the table atomically, so whatever an
//! earlier run left stays in force until the new rules are in (no window without rules); later
//! applies send only what changed ([`diff::ops`]). With an nfnetlink writer attached
//! ([`Applier::with_netlink`]) the transaction is one nfnetlink batch; `nft -f` is the fallback
//! when a rule cannot be encoded or the kernel refuses the batch (nft then reports in detail).
//! A failed transaction changes nothing in the kernel; the applier then tries one full
//! replacement (the failure may come from drift) and reports the error if that fails too,
//! keeping its record of what is in force.
//!
//! [`Applier::refresh`] compares the kernel's table with the record and replaces the table
//! when they differ. With the writer it reads the table over nfnetlink ([`live`]): chains,
//! set and map elements by content, and each chain's rules as a digest compared with the one
//! read back right after Skog wrote the chain. Without it, it compares `nft -j list` counts
//! (chains, rules per chain, elements per set and map). Nothing is removed on
//! shutdown, and no other table is ever read or written.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::diff::{self, Op};
use crate::live;
use crate::names::{FAMILY, TABLE};
use crate::netlink::{NetlinkError, NfWriter};
use crate::nft::{Nft, NftError};
use crate::ruleset::{Patch, Ruleset};

/// A failed apply or refresh. The rules in force are those of the last successful apply.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("applying the ruleset failed; previous rules stay in force: {0}")]
    Apply(#[source] NftError),
    #[error(
        "incremental update failed ({incremental}); full replacement failed too; previous rules stay in force: {replace}"
    )]
    ApplyAndReplace {
        incremental: NftError,
        #[source]
        replace: NftError,
    },
    #[error("no ruleset applied yet: the first apply must be a whole ruleset")]
    NothingApplied,
    #[error("reading table {FAMILY} {TABLE} back: {0}")]
    ReadBack(String),
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Nothing had changed; nft was not called.
    Unchanged,
    /// The changes were sent as one incremental transaction of this many bytes.
    Incremental { script_bytes: usize },
    /// Only set elements changed; sent over nfnetlink as one batch of this many messages.
    Elements { messages: usize },
    /// Chains, rules, sets or maps changed; sent over nfnetlink as one batch of this many
    /// messages.
    Netlink { messages: usize },
    /// The whole table was replaced in one transaction.
    Replaced { why: ReplaceReason },
}

/// Why the table was replaced rather than updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaceReason {
    /// First apply of this process (adopts what a previous run left, without a gap).
    StartUp,
    /// A base chain's hook or a set's type changed.
    StructureChanged,
    /// The incremental update failed; this is the error it failed with.
    IncrementalFailed(String),
    /// The kernel's table differed from what was applied.
    Drift(String),
}

/// Owns table `inet skog` in one network namespace.
#[derive(Debug)]
pub struct Applier {
    nft: Nft,
    netlink: Option<NfWriter>,
    applied: Option<Ruleset>,
    /// Digests of the rules of each chain as the kernel held them right after this applier
    /// wrote them (needs the nfnetlink writer); `None` until known.
    digests: Option<BTreeMap<String, u64>>,
}

impl Applier {
    pub fn new(nft: Nft) -> Applier {
        Applier {
            nft,
            netlink: None,
            applied: None,
            digests: None,
        }
    }

    /// Sends changes over nfnetlink (the writer must be opened in the namespace `nft` runs
    /// in) instead of through `nft`, whenever every rule of the change can be encoded; `nft`
    /// stays the fallback. Also enables the drift check by rule content.
    pub fn with_netlink(mut self, writer: NfWriter) -> Applier {
        self.netlink = Some(writer);
        self
    }

    /// The ruleset in force (as far as this applier knows).
    pub fn applied(&self) -> Option<&Ruleset> {
        self.applied.as_ref()
    }

    /// Makes the kernel's table equal `desired`, in one transaction.
    pub async fn apply(&mut self, desired: &Ruleset) -> Result<ApplyOutcome, ApplyError> {
        match &self.applied {
            None => self.replace(desired, ReplaceReason::StartUp).await,
            Some(old) => {
                let patch = old.patch_to(desired);
                self.apply_patch(&patch).await
            }
        }
    }

    /// Applies a change to the ruleset in force, in one transaction, sending only what the
    /// patch names. Before the first [`Applier::apply`] there is nothing to patch.
    pub async fn apply_patch(&mut self, patch: &Patch) -> Result<ApplyOutcome, ApplyError> {
        let Some(old) = &self.applied else {
            return Err(ApplyError::NothingApplied);
        };
        let Some(ops) = diff::ops(old, patch) else {
            let mut desired = old.clone();
            desired.apply_patch(patch);
            return self
                .replace(&desired, ReplaceReason::StructureChanged)
                .await;
        };
        if ops.is_empty() {
            return Ok(ApplyOutcome::Unchanged);
        }
        if let Some(writer) = &mut self.netlink {
            let only_elements = ops
                .iter()
                .all(|op| matches!(op, Op::AddElements { .. } | Op::DeleteElements { .. }));
            match send_ops(writer, &ops) {
                Ok(messages) => {
                    self.record_patch(patch);
                    return Ok(if only_elements {
                        ApplyOutcome::Elements { messages }
                    } else {
                        ApplyOutcome::Netlink { messages }
                    });
                }
                // Fall back to nft, which reports in detail.
                Err(e) => {
                    tracing::warn!(error = %e, "update over nfnetlink not applied; using nft")
                }
            }
        }
        let script = diff::render(&ops);
        match self.nft.run_script(&script).await {
            Ok(()) => {
                self.record_patch(patch);
                Ok(ApplyOutcome::Incremental {
                    script_bytes: script.len(),
                })
            }
            Err(incremental) => {
                tracing::warn!(error = %incremental, "incremental nft update failed; replacing the table");
                let mut desired = old.clone();
                desired.apply_patch(patch);
                let why = ReplaceReason::IncrementalFailed(incremental.to_string());
                self.replace(&desired, why).await.map_err(|e| match e {
                    ApplyError::Apply(replace) => ApplyError::ApplyAndReplace {
                        incremental,
                        replace,
                    },
                    other => other,
                })
            }
        }
    }

    /// Notes a patch as applied: the record, and the digests of the chains it rewrote.
    fn record_patch(&mut self, patch: &Patch) {
        if let Some(applied) = &mut self.applied {
            applied.apply_patch(patch);
        }
        let (Some(writer), Some(digests)) = (&mut self.netlink, &mut self.digests) else {
            return;
        };
        for name in patch.chains.keys() {
            digests.remove(name);
        }
        let written = patch
            .chains
            .iter()
            .filter_map(|(name, chain)| chain.as_ref().map(|_| name));
        match writer.chain_digests(written) {
            Ok(live) => digests.extend(live),
            Err(e) => {
                tracing::warn!(error = %e, "reading rules back failed");
                self.digests = None;
            }
        }
    }

    async fn replace(
        &mut self,
        desired: &Ruleset,
        why: ReplaceReason,
    ) -> Result<ApplyOutcome, ApplyError> {
        let mut sent = false;
        if let Some(writer) = &mut self.netlink {
            match send_ops(writer, &diff::replace_ops(desired)) {
                Ok(_) => sent = true,
                Err(e) => {
                    tracing::warn!(error = %e, "table replacement over nfnetlink not applied; using nft")
                }
            }
        }
        if !sent {
            self.nft
                .run_script(&desired.full_script())
                .await
                .map_err(ApplyError::Apply)?;
        }
        if self.applied.as_ref() != Some(desired) {
            self.applied = Some(desired.clone());
        }
        self.digests = match &mut self.netlink {
            Some(writer) => writer
                .chain_digests(desired.chains.keys())
                .inspect_err(|e| tracing::warn!(error = %e, "reading rules back failed"))
                .ok(),
            None => None,
        };
        Ok(ApplyOutcome::Replaced { why })
    }

    /// Checks the kernel's table against what was applied and replaces it if they differ
    /// (a flushed table, a deleted chain or set, missing elements; with the nfnetlink writer
    /// also a rule or an element changed in place). Returns what it did.
    pub async fn refresh(&mut self) -> Result<ApplyOutcome, ApplyError> {
        let Some(applied) = self.applied.clone() else {
            return Ok(ApplyOutcome::Unchanged);
        };
        let drift = match &mut self.netlink {
            Some(writer) => {
                let read = |e: NetlinkError| ApplyError::ReadBack(e.to_string());
                let table = writer.read_table().map_err(read)?;
                match live::difference(&applied, &table) {
                    Some(what) => Some(what),
                    None => {
                        let digests = writer.chain_digests(applied.chains.keys()).map_err(read)?;
                        match &self.digests {
                            Some(recorded) => applied
                                .chains
                                .keys()
                                .find(|name| recorded.get(*name) != digests.get(*name))
                                .map(|name| {
                                    format!("rules of chain {name} differ from those applied")
                                }),
                            // Unknown (reading back failed after the last change): from now on.
                            None => {
                                self.digests = Some(digests);
                                None
                            }
                        }
                    }
                }
            }
            None => {
                let live = match self
                    .nft
                    .output(&["-j", "list", "table", FAMILY, TABLE])
                    .await
                {
                    Ok(json) => Shape::from_json(&json)?,
                    // A missing table is drift too; any other failure is reported by the replace.
                    Err(NftError::Failed { .. }) => Shape::default(),
                    Err(e) => return Err(ApplyError::ReadBack(e.to_string())),
                };
                Shape::of(&applied).difference(&live)
            }
        };
        match drift {
            None => Ok(ApplyOutcome::Unchanged),
            Some(what) => {
                tracing::warn!(%what, "nftables drift; replacing table {FAMILY} {TABLE}");
                self.replace(&applied, ReplaceReason::Drift(what)).await
            }
        }
    }
}

/// Sends `ops` as one nfnetlink batch; fails without sending if a rule cannot be encoded.
fn send_ops(writer: &mut NfWriter, ops: &[Op<'_>]) -> Result<usize, String> {
    let mut batch = writer.batch();
    for op in ops {
        batch.push(op).map_err(|e| e.to_string())?;
    }
    writer.send(batch).map_err(|e| e.to_string())
}

/// What the drift check compares: chains with their rule counts, sets and maps with their
/// element counts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shape {
    chains: BTreeMap<String, usize>,
    sets: BTreeMap<String, usize>,
}

impl Shape {
    fn of(r: &Ruleset) -> Shape {
        Shape {
            chains: r
                .chains
                .iter()
                .map(|(n, c)| (n.clone(), c.rules.len()))
                .collect(),
            sets: r
                .sets
                .iter()
                .map(|(n, s)| (n.clone(), s.elements.len()))
                .chain(r.maps.iter().map(|(n, m)| (n.clone(), m.elements.len())))
                .collect(),
        }
    }

    fn from_json(json: &str) -> Result<Shape, ApplyError> {
        let v: Value =
            serde_json::from_str(json).map_err(|e| ApplyError::ReadBack(e.to_string()))?;
        let items = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| ApplyError::ReadBack("no \"nftables\" array".to_owned()))?;
        let mut shape = Shape::default();
        let name = |o: &Value, key: &str| o.get(key).and_then(Value::as_str).map(str::to_owned);
        for item in items {
            if let Some(chain) = item.get("chain").and_then(|c| name(c, "name")) {
                shape.chains.entry(chain).or_insert(0);
            } else if let Some(chain) = item.get("rule").and_then(|r| name(r, "chain")) {
                *shape.chains.entry(chain).or_insert(0) += 1;
            } else if let Some(set) = item.get("set").or_else(|| item.get("map"))
                && let Some(n) = name(set, "name")
            {
                let count = set
                    .get("elem")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                shape.sets.insert(n, count);
            }
        }
        Ok(shape)
    }

    /// A description of the first difference, if any.
    fn difference(&self, live: &Shape) -> Option<String> {
        for (what, want, have) in [
            ("chain", &self.chains, &live.chains),
            ("set", &self.sets, &live.sets),
        ] {
            for (name, n) in want {
                match have.get(name) {
                    None => return Some(format!("{what} {name} is missing")),
                    Some(m) if m != n => {
                        return Some(format!("{what} {name} has {m} entries, want {n}"));
                    }
                    Some(_) => {}
                }
            }
            if let Some(extra) = have.keys().find(|k| !want.contains_key(*k)) {
                return Some(format!("unexpected {what} {extra}"));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_read_from_nft_json() {
        let json = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"table":{"family":"inet","name":"skog","handle":1}},
            {"chain":{"family":"inet","table":"skog","name":"forward","handle":2}},
            {"chain":{"family":"inet","table":"skog","name":"empty","handle":3}},
            {"rule":{"family":"inet","table":"skog","chain":"forward","handle":4,"expr":[]}},
            {"rule":{"family":"inet","table":"skog","chain":"forward","handle":5,"expr":[]}},
            {"set":{"family":"inet","name":"sel4-x","table":"skog","elem":["192.0.2.1"]}},
            {"map":{"family":"inet","name":"to-vm","table":"skog"}}]}"#;
        let shape = Shape::from_json(json).unwrap();
        assert_eq!(shape.chains["forward"], 2);
        assert_eq!(shape.chains["empty"], 0);
        assert_eq!(shape.sets["sel4-x"], 1);
        assert_eq!(shape.sets["to-vm"], 0);
        assert!(Shape::from_json("[]").is_err());
        assert!(Shape::from_json("not json").is_err());
    }
}
