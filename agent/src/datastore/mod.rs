//! Datastores that feed the [model](crate::model): the etcd v3 reader networking-calico writes
//! to ([`etcd`]), a directory of YAML/JSON documents ([`file`]), and Felix-compatible status
//! write-back to etcd ([`status`]).
//!
//! Each source is a thin driver around [`KvCache`], the pure "resource store + diff" core: a
//! full listing is diffed against what was delivered before (so vanished keys become
//! synthesized deletions), and single changes are deduplicated. Drivers send [`SyncEvent`]s;
//! [`run_model`] applies them to the model and forwards its events.

pub mod etcd;
pub mod file;
pub mod status;

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{mpsc, watch};

use crate::model::{KvChange, Model, ModelEvent, ModelStatus};

/// What a datastore driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// Changes to apply, in order.
    Changes(Vec<KvChange>),
    /// Everything the datastore holds has been delivered (after every full listing).
    InSync,
    /// The datastore became reachable (`true`) or was lost (`false`). Losing it changes nothing
    /// in the dataplane.
    Connected(bool),
    /// The complete current set of inputs the driver could not even turn into keys
    /// (origin, reason): an unparseable YAML file, say.
    SourceErrors(BTreeMap<String, String>),
}

/// The last value delivered for every key: turns listings into diffs and drops repeats.
#[derive(Debug, Default)]
pub struct KvCache {
    values: HashMap<String, Vec<u8>>,
}

impl KvCache {
    /// Replaces the whole content with a fresh listing; returns the changes that turn the old
    /// content into the new one (updates for new or changed keys, deletions for vanished ones).
    pub fn replace_all(
        &mut self,
        listing: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Vec<KvChange> {
        let mut fresh: HashMap<String, Vec<u8>> = listing.into_iter().collect();
        let mut changes: Vec<KvChange> = self
            .values
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .map(|k| KvChange {
                key: k.clone(),
                value: None,
            })
            .collect();
        for (key, value) in &fresh {
            if self.values.get(key) != Some(value) {
                changes.push(KvChange {
                    key: key.clone(),
                    value: Some(value.clone()),
                });
            }
        }
        std::mem::swap(&mut self.values, &mut fresh);
        changes
    }

    /// Applies one change; returns it unless it changes nothing.
    pub fn apply(&mut self, key: String, value: Option<Vec<u8>>) -> Option<KvChange> {
        let changed = match &value {
            Some(v) => self.values.insert(key.clone(), v.clone()).as_ref() != Some(v),
            None => self.values.remove(&key).is_some(),
        };
        changed.then_some(KvChange { key, value })
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Runs the model: applies driver events, flushes after each batch, forwards model events and
/// publishes the model's status. Returns when the driver side closes, or the consumer of
/// `events` goes away.
pub async fn run_model(
    mut model: Model,
    mut input: mpsc::Receiver<SyncEvent>,
    events: mpsc::Sender<ModelEvent>,
    status: watch::Sender<ModelStatus>,
) {
    while let Some(first) = input.recv().await {
        let mut next = Some(first);
        // Drain what is already queued so one flush covers a burst.
        while let Some(event) = next {
            match event {
                SyncEvent::Changes(changes) => changes.iter().for_each(|c| model.apply(c)),
                SyncEvent::InSync => model.set_in_sync(),
                SyncEvent::Connected(up) => model.set_connected(up),
                SyncEvent::SourceErrors(errors) => model.set_source_errors(errors),
            }
            next = input.try_recv().ok();
        }
        for event in model.flush() {
            if events.send(event).await.is_err() {
                return;
            }
        }
        status.send_replace(model.status());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, Vec<u8>) {
        (k.to_owned(), v.as_bytes().to_vec())
    }

    #[test]
    fn relisting_synthesizes_deletes_and_skips_unchanged() {
        let mut cache = KvCache::default();
        let first = cache.replace_all([kv("a", "1"), kv("b", "1")]);
        assert_eq!(first.len(), 2);
        let mut second = cache.replace_all([kv("b", "1"), kv("c", "1"), kv("a", "2")]);
        second.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(
            second,
            [
                KvChange {
                    key: "a".into(),
                    value: Some(b"2".to_vec())
                },
                KvChange {
                    key: "c".into(),
                    value: Some(b"1".to_vec())
                },
            ]
        );
        let third = cache.replace_all([kv("c", "1")]);
        let mut keys: Vec<_> = third
            .iter()
            .map(|c| (c.key.as_str(), c.value.is_none()))
            .collect();
        keys.sort();
        assert_eq!(keys, [("a", true), ("b", true)]);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn single_changes_are_deduplicated() {
        let mut cache = KvCache::default();
        assert!(cache.apply("a".into(), Some(b"1".to_vec())).is_some());
        assert!(cache.apply("a".into(), Some(b"1".to_vec())).is_none());
        assert!(cache.apply("a".into(), None).is_some());
        assert!(cache.apply("a".into(), None).is_none());
        assert!(cache.is_empty());
    }
}
