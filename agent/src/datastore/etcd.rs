//! The etcd v3 source: lists `/calico/resources/v3/projectcalico.org/` at a revision, then
//! watches from the next revision with previous values. A broken connection resumes the watch
//! where it stopped; if etcd compacted that revision away meanwhile, it re-lists and the
//! [`KvCache`] synthesizes deletions for what vanished. Reconnects back off exponentially;
//! several endpoints and TLS with client certificates are supported. While etcd is unreachable
//! nothing is sent but `Connected(false)`, so the dataplane stays as it is.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{KvCache, SyncEvent};
use crate::model::{KvChange, RESOURCE_PREFIX};

/// Client certificate, key and CA bundle (PEM files), as Felix's `EtcdCertFile`, `EtcdKeyFile`
/// and `EtcdCaFile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA that signed the server certificate.
    pub ca_file: PathBuf,
    /// Client certificate.
    pub cert_file: PathBuf,
    /// Client private key.
    pub key_file: PathBuf,
}

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379` or `https://...`); requests are balanced across them.
    pub endpoints: Vec<String>,
    /// TLS material, required for `https://` endpoints that check client certificates.
    pub tls: Option<EtcdTls>,
    /// Key prefix to list and watch.
    pub prefix: String,
    /// HTTP/2 keep-alive interval and timeout: how fast a dead connection is noticed.
    pub keepalive: Duration,
    /// Bound on connecting and on each list request.
    pub request_timeout: Duration,
    /// First reconnect delay; doubled after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Keys per list request (a single response must stay under gRPC's 4 MiB limit).
    pub list_page_size: i64,
}

impl EtcdConfig {
    /// Defaults for the given endpoints: the Calico resource prefix, 10 s keep-alive, 10 s
    /// requests, reconnect backoff from 0.5 s to 30 s, lists in pages of 500 keys.
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            tls: None,
            prefix: RESOURCE_PREFIX.to_owned(),
            keepalive: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            list_page_size: 500,
        }
    }
}

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A TLS file could not be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The client library failed (connection, request).
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    /// A request took longer than `request_timeout`.
    #[error("etcd request timed out after {0:?}")]
    Timeout(Duration),
    /// The watch stream ended.
    #[error("etcd watch stream ended")]
    WatchEnded,
    /// etcd cancelled the watch.
    #[error("etcd cancelled the watch: {0}")]
    WatchCanceled(String),
    /// The revision to resume from was compacted: a full re-list is needed.
    #[error("revision {resume} is compacted (compaction at {compacted})")]
    Compacted {
        /// Where the watch wanted to resume.
        resume: i64,
        /// etcd's compaction revision.
        compacted: i64,
    },
    /// The model side went away.
    #[error("the receiver of datastore events is gone")]
    Closed,
}

/// Connection options from the configuration (reads the TLS files).
pub fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_keep_alive(config.keepalive, config.keepalive)
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(config.request_timeout);
    if let Some(tls) = &config.tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| EtcdError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        let tls_options = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca_file)?))
            .identity(Identity::from_pem(
                read(&tls.cert_file)?,
                read(&tls.key_file)?,
            ));
        options = options.with_tls(tls_options);
    }
    Ok(options)
}

/// Connects a client (used by the source and by the status reporter).
pub async fn connect(config: &EtcdConfig, options: &ConnectOptions) -> Result<Client, EtcdError> {
    bounded(
        config.request_timeout,
        Client::connect(&config.endpoints, Some(options.clone())),
    )
    .await
}

async fn bounded<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    tokio::time::timeout(limit, request)
        .await
        .map_err(|_| EtcdError::Timeout(limit))?
        .map_err(EtcdError::from)
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // An all-0xff (or empty) prefix: to the end of the keyspace.
    vec![0]
}

/// Syncs etcd into `tx` until the receiver goes away. Only a configuration error (unreadable
/// TLS files) ends it early; everything else is retried.
pub async fn run(config: EtcdConfig, tx: mpsc::Sender<SyncEvent>) -> Result<(), EtcdError> {
    let options = connect_options(&config)?;
    let mut sync = Sync {
        config: &config,
        tx: &tx,
        cache: KvCache::default(),
        resume: None,
        connected: false,
    };
    let mut backoff = config.backoff_initial;
    loop {
        match sync.session(&options, &mut backoff).await {
            Err(EtcdError::Closed) => return Ok(()),
            Err(EtcdError::Compacted { resume, compacted }) => {
                info!(resume, compacted, "watch revision compacted; re-listing");
                sync.resume = None;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "etcd connection lost");
                sync.set_connected(false).await?;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.backoff_max);
            }
            Ok(never) => match never {},
        }
    }
}

struct Sync<'a> {
    config: &'a EtcdConfig,
    tx: &'a mpsc::Sender<SyncEvent>,
    cache: KvCache,
    /// Revision the next watch starts at; `None` means a full listing is needed first.
    resume: Option<i64>,
    connected: bool,
}

impl Sync<'_> {
    async fn send(&self, event: SyncEvent) -> Result<(), EtcdError> {
        self.tx.send(event).await.map_err(|_| EtcdError::Closed)
    }

    async fn set_connected(&mut self, up: bool) -> Result<(), EtcdError> {
        if self.connected != up {
            self.connected = up;
            self.send(SyncEvent::Connected(up)).await?;
        }
        Ok(())
    }

    /// One connection: list if needed, then watch until something breaks.
    async fn session(
        &mut self,
        options: &ConnectOptions,
        backoff: &mut Duration,
    ) -> Result<Infallible, EtcdError> {
        let mut client = connect(self.config, options).await?;
        let start = match self.resume {
            Some(revision) => revision,
            None => self.list(&mut client).await?,
        };
        let watch_options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_prev_key()
            .with_progress_notify();
        let mut stream = bounded(
            self.config.request_timeout,
            client.watch(self.config.prefix.as_str(), Some(watch_options)),
        )
        .await?;
        debug!(start, "watching");
        loop {
            let Some(response) = stream.message().await? else {
                return Err(EtcdError::WatchEnded);
            };
            if response.compact_revision() > 0 {
                return Err(EtcdError::Compacted {
                    resume: self.resume.unwrap_or(start),
                    compacted: response.compact_revision(),
                });
            }
            if response.canceled() {
                return Err(EtcdError::WatchCanceled(
                    response.cancel_reason().to_owned(),
                ));
            }
            if response.created() {
                self.set_connected(true).await?;
                *backoff = self.config.backoff_initial;
                continue;
            }
            if response.events().is_empty() {
                // Progress notification: everything up to the header revision was delivered.
                if let Some(header) = response.header() {
                    self.resume = Some(header.revision() + 1);
                }
                continue;
            }
            let mut changes = Vec::with_capacity(response.events().len());
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                self.resume = Some(kv.mod_revision() + 1);
                let Ok(key) = kv.key_str() else {
                    warn!(key = ?kv.key(), "ignoring a key that is not UTF-8");
                    continue;
                };
                let value = match event.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                };
                changes.extend(self.cache.apply(key.to_owned(), value));
            }
            if !changes.is_empty() {
                self.send(SyncEvent::Changes(changes)).await?;
            }
        }
    }

    /// Lists the prefix (in pages of `list_page_size`, all at the revision of the first page),
    /// delivers the diff against what was delivered before, and returns the revision to watch
    /// from.
    async fn list(&mut self, client: &mut Client) -> Result<i64, EtcdError> {
        let prefix = self.config.prefix.as_bytes().to_vec();
        let end = prefix_end(&prefix);
        let mut from = prefix;
        let mut revision = 0;
        let mut listing = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.config.list_page_size);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = bounded(
                self.config.request_timeout,
                client.get(from.clone(), Some(options)),
            )
            .await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            for kv in page.kvs() {
                match kv.key_str() {
                    Ok(key) => listing.push((key.to_owned(), kv.value().to_vec())),
                    Err(_) => warn!(key = ?kv.key(), "ignoring a key that is not UTF-8"),
                }
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        let changes: Vec<KvChange> = self.cache.replace_all(listing);
        info!(
            revision,
            keys = self.cache.len(),
            changes = changes.len(),
            "listed the datastore"
        );
        self.set_connected(true).await?;
        self.send(SyncEvent::Changes(changes)).await?;
        self.send(SyncEvent::InSync).await?;
        self.resume = Some(revision + 1);
        Ok(revision + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn range_end_of_a_prefix() {
        assert_eq!(prefix_end(b"/calico/"), b"/calico0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }
}
