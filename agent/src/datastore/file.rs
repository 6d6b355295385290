//! The file datastore, the embedded default for a single node, the demo and tests without
//! etcd: a directory of `*.yaml`, `*.yml` and `*.json` files holding the same v3 resources as
//! etcd (multi-document YAML and `kind: List` as `calicoctl apply -f` takes them). Each document
//! is mapped to the etcd key it would have, so the model sees the same events from both
//! sources. The directory is watched with inotify; a burst of changes is debounced into one
//! rescan. A file that does not parse keeps its previous resources and is reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{KvCache, SyncEvent};
use crate::model::{Kind, ResourceKey};

/// Errors that stop the file datastore.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The directory cannot be watched.
    #[error("cannot watch {dir}: {source}")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One key and JSON value per valid document.
type Documents = Vec<(String, Vec<u8>)>;

/// Reads a directory of resources into key/value changes.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    /// The documents of every file as last parsed successfully.
    files: BTreeMap<PathBuf, Documents>,
    cache: KvCache,
}

impl FileSource {
    /// A source reading `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> FileSource {
        FileSource {
            dir: dir.into(),
            files: BTreeMap::new(),
            cache: KvCache::default(),
        }
    }

    /// Rereads the directory; returns the changes since the last scan and the current errors
    /// (origin, reason).
    pub fn scan(&mut self) -> (Vec<crate::model::KvChange>, BTreeMap<String, String>) {
        let mut errors = BTreeMap::new();
        let mut present = BTreeMap::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| is_resource_file(p))
                    .collect();
                paths.sort();
                for path in paths {
                    let origin = path.display().to_string();
                    let parsed = std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read: {e}"))
                        .and_then(|text| parse_documents(&text));
                    match parsed {
                        Ok((documents, document_errors)) => {
                            for (index, reason) in document_errors {
                                errors.insert(format!("{origin} document {index}"), reason);
                            }
                            present.insert(path, documents);
                        }
                        Err(reason) => {
                            // Keep what the file held when it last parsed (mid-edit, say).
                            errors.insert(origin, reason);
                            let previous = self.files.get(&path).cloned().unwrap_or_default();
                            present.insert(path, previous);
                        }
                    }
                }
            }
            Err(e) => {
                // A vanished directory keeps everything: it is not a deletion of all resources.
                errors.insert(self.dir.display().to_string(), format!("cannot read: {e}"));
                present = self.files.clone();
            }
        }
        let mut listing: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (path, documents) in &present {
            for (key, value) in documents {
                if listing.contains_key(key) {
                    errors.insert(
                        format!("{} {key}", path.display()),
                        "resource defined again; the first definition wins".into(),
                    );
                } else {
                    listing.insert(key.clone(), value.clone());
                }
            }
        }
        self.files = present;
        (self.cache.replace_all(listing), errors)
    }
}

fn is_resource_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let known = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
    path.is_file() && !hidden && known
}

/// Parses every document of a file. A YAML syntax error fails the whole file; a document that
/// is valid YAML but not a resource is reported by its index (from 1) and skipped.
fn parse_documents(text: &str) -> Result<(Documents, Vec<(usize, String)>), String> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value =
            Value::deserialize(document).map_err(|e| format!("not valid YAML/JSON: {e}"))?;
        if value.is_null() {
            continue;
        }
        match document_resources(value) {
            Ok(mut kvs) => documents.append(&mut kvs),
            Err(reason) => errors.push((index + 1, reason)),
        }
    }
    Ok((documents, errors))
}

/// The key and value of a resource document, or of every item of a `List`.
fn document_resources(value: Value) -> Result<Documents, String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("no kind")?
        .to_owned();
    if kind == "List" || kind.ends_with("List") {
        let items = match value.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => return Err(format!("{kind} without items")),
        };
        let mut all = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            all.extend(document_resources(item).map_err(|e| format!("items[{i}]: {e}"))?);
        }
        return Ok(all);
    }
    let Some(kind) = Kind::from_name(&kind) else {
        debug!(kind, "ignoring a kind the agent does not read");
        return Ok(Vec::new());
    };
    let metadata = value.get("metadata");
    let field = |name: &str| metadata.and_then(|m| m.get(name)).and_then(Value::as_str);
    let name = field("name")
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or("metadata.name missing or not a valid name")?;
    let namespace = if kind.is_namespaced() {
        Some(
            field("namespace")
                .filter(|n| !n.is_empty() && !n.contains('/'))
                .ok_or("metadata.namespace missing or not a valid namespace")?
                .to_owned(),
        )
    } else {
        None
    };
    let key = ResourceKey {
        kind,
        namespace,
        name: name.to_owned(),
    };
    let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    Ok(vec![(key.to_string(), bytes)])
}

/// Watches `dir` and sends its resources to `tx` until the receiver goes away.
pub async fn run(
    dir: PathBuf,
    debounce: Duration,
    tx: mpsc::Sender<SyncEvent>,
) -> Result<(), FileError> {
    let watch_error = |source| FileError::Watch {
        dir: dir.clone(),
        source,
    };
    let inotify = Inotify::init().map_err(watch_error)?;
    inotify
        .watches()
        .add(
            &dir,
            WatchMask::CREATE
                | WatchMask::CLOSE_WRITE
                | WatchMask::MODIFY
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::ATTRIB,
        )
        .map_err(watch_error)?;
    let mut events = inotify
        .into_event_stream([0u8; 4096])
        .map_err(watch_error)?;
    let mut source = FileSource::new(&dir);
    let send = |event| async { tx.send(event).await.is_ok() };
    let (changes, errors) = source.scan();
    info!(dir = %dir.display(), changes = changes.len(), errors = errors.len(), "read the file datastore");
    if !(send(SyncEvent::Connected(true)).await
        && send(SyncEvent::SourceErrors(errors)).await
        && send(SyncEvent::Changes(changes)).await
        && send(SyncEvent::InSync).await)
    {
        return Ok(());
    }
    while events.next().await.is_some() {
        // Debounce: wait until the directory is quiet for `debounce`.
        while let Ok(Some(_)) = tokio::time::timeout(debounce, events.next()).await {}
        let (changes, errors) = source.scan();
        debug!(
            changes = changes.len(),
            errors = errors.len(),
            "rescanned the file datastore"
        );
        if !send(SyncEvent::SourceErrors(errors)).await {
            return Ok(());
        }
        if !changes.is_empty() && !send(SyncEvent::Changes(changes)).await {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: ossg.default.sg1, namespace: openstack}
spec:
  selector: has(sg.projectcalico.org/openstack-sg1)
  ingress: [{action: Allow, ipVersion: 4, protocol: TCP, destination: {ports: [22, "80:90"]}}]
---
---
kind: List
items:
- kind: ClusterInformation
  metadata: {name: default}
  spec: {datastoreReady: true}
- kind: IPPool
  metadata: {name: ignored}
---
kind: WorkloadEndpoint
metadata: {name: no-namespace}
---
{"kind": "Profile", "metadata": {"name": "p1"}, "spec": {}}
"#;
        let (docs, errors) = parse_documents(text).unwrap();
        let keys: Vec<&str> = docs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/calico/resources/v3/projectcalico.org/networkpolicies/openstack/ossg.default.sg1",
                "/calico/resources/v3/projectcalico.org/clusterinformations/default",
                "/calico/resources/v3/projectcalico.org/profiles/p1",
            ]
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 4);
        assert!(errors[0].1.contains("metadata.namespace"));
        let policy: Value = serde_json::from_slice(&docs[0].1).unwrap();
        assert_eq!(
            policy["spec"]["ingress"][0]["destination"]["ports"][1],
            "80:90"
        );
    }

    #[test]
    fn syntax_errors_fail_the_file() {
        assert!(parse_documents("kind: [unclosed").is_err());
    }

    #[test]
    fn a_broken_file_keeps_its_previous_resources() {
        let dir = std::env::temp_dir().join(format!("skog-file-ds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.yaml");
        std::fs::write(&file, "kind: Profile\nmetadata: {name: p1}\n").unwrap();
        std::fs::write(dir.join(".a.yaml.swp"), "garbage: [").unwrap();
        let mut source = FileSource::new(&dir);
        let (changes, errors) = source.scan();
        assert_eq!(changes.len(), 1);
        assert!(errors.is_empty());

        std::fs::write(&file, "kind: Profile\nmetadata: {name: p1\n").unwrap();
        let (changes, errors) = source.scan();
        assert!(changes.is_empty(), "nothing deleted: {changes:?}");
        assert_eq!(errors.len(), 1);

        std::fs::remove_file(&file).unwrap();
        let (changes, errors) = source.scan();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].value, None);
        assert!(errors.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
