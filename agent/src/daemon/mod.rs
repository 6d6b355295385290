//! skogd's wiring: starts every task, connects them with channels, and runs until SIGTERM.
//!
//! ```text
//!  etcd / files ──SyncEvent──▶ model task ──ModelEvent──▶ core ──▶ route programmer ──▶ rtnetlink
//!                                                          │  ◀──Announce/Withdraw──┘
//!                                                          ├──▶ policy task ──▶ nftables
//!                                                          ├──▶ BGP speaker ──▶ peers
//!                                                          │  ◀──learned routes──┘
//!  skogctl ──HTTP/unix──▶ API server ──ApiRequest─────────▶│
//!  SIGHUP/SIGTERM ──────────────────────────────────────────▶│──▶ status reporter ──▶ etcd
//! ```
//!
//! - [`core`]: the task where the pieces meet (see its documentation);
//! - [`policy`]: the task that owns the compiler's input and the nftables applier;
//! - [`convert`]: model → programmer and compiler input;
//! - [`learned`]: learned routes from the speaker to the programmer, in bursts;
//! - [`peers`]: configuration → BGP speaker, and what a reload changes.
//!
//! Start-up order: the route programmer first (it adopts the kernel), then the datastore. Once
//! the datastore is in sync the core lets the programmer delete what is no longer desired,
//! applies the rules, starts BGP with every announceable route (so its first UPDATEs and
//! End-of-RIB are complete) and only then says `READY=1`.

pub mod convert;
pub mod core;
pub mod learned;
pub mod peers;
pub mod policy;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use skog_policy::netlink::NfWriter;
use skog_policy::{Applier, Nft};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::{Config, DatastoreConfig, Metadata};
use crate::datastore::etcd::{EtcdConfig, EtcdTls};
use crate::datastore::status::{StatusConfig, StatusReporter};
use crate::datastore::{self, SyncEvent};
use crate::metrics::{Health, Metrics};
use crate::model::{Model, ModelConfig, ModelStatus};
use crate::systemd::Notifier;
use crate::{api, dataplane};

pub use self::core::Exit;

/// Why skogd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The API socket.
    #[error(transparent)]
    Api(#[from] api::server::ServeError),
    /// The metrics listener.
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        /// The configured address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The route programmer (netlink sockets).
    #[error("route dataplane: {0}")]
    Dataplane(#[from] dataplane::ProgrammerError),
    /// The etcd TLS files.
    #[error("datastore: {0}")]
    Datastore(String),
}

/// This node's name: the configured one, else the kernel's host name.
pub fn node_name(config: &Config) -> String {
    config.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into())
    })
}

/// Runs skogd with `config` (read from `config_path`, which SIGHUP re-reads) until SIGTERM or
/// SIGINT. Must run on a tokio runtime in the network namespace it manages.
pub async fn run(config: Config, config_path: PathBuf) -> Result<Exit, StartError> {
    let node = node_name(&config);
    info!(node = %node, version = env!("CARGO_PKG_VERSION"), "skogd starting");
    let notifier = Notifier::from_env();

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let health = Arc::new(Health::new(Duration::from_secs(30)));
    serve_metrics(&config, registry, Arc::clone(&health)).await?;
    let (api_tx, api_rx) = mpsc::channel(64);
    let listener = api::server::bind(&config.api.socket)?;
    tokio::spawn(async move {
        if let Err(e) = api::server::serve(listener, api_tx, std::future::pending()).await {
            error!(error = %e, "the API server stopped");
        }
    });

    let (route_tx, route_rx) = mpsc::unbounded_channel();
    let dp = &config.dataplane;
    let dataplane_config = dataplane::DataplaneConfig {
        endpoint_protocol: dp.route_protocol,
        learned_protocol: dp.learned_route_protocol,
        resync_interval: Duration::from_secs(dp.resync_interval_s),
        ..dataplane::DataplaneConfig::default()
    };
    let (programmer, _) = dataplane::Programmer::start(dataplane_config, route_tx).await?;
    let adopted = programmer.snapshot().await?.routes_programmed;
    if adopted > 0 {
        info!(routes = adopted, "adopted the routes a previous run left");
    }

    let nft = Nft::new().with_timeout(Duration::from_secs(10));
    let mut applier = Applier::new(nft.clone());
    match NfWriter::open() {
        Ok(writer) => applier = applier.with_netlink(writer),
        Err(e) => {
            warn!(error = %e, "nfnetlink unavailable; every rule change goes through nft (slower)")
        }
    }
    let (policy, _) = policy::start(
        nft,
        applier,
        policy::PolicySettings {
            interface_prefix: dp.interface_prefix.clone(),
            metadata: match config.metadata() {
                Metadata::None => None,
                Metadata::To(addr) => Some(addr),
            },
            refresh_interval: Duration::from_secs(dp.resync_interval_s),
        },
        Arc::clone(&metrics),
    );

    let (model_tx, model_rx) = mpsc::channel(1024);
    let (status_tx, status_rx) = watch::channel(ModelStatus::default());
    let status_updates = start_datastore(&config, &node, model_tx, status_tx)?;

    let (reload_tx, reload_rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = mpsc::channel(1);
    spawn_signals(config_path, reload_tx, stop_tx);

    let core = core::Core::new(core::CoreParts {
        node_name: node,
        datastore_kind: match config.datastore {
            DatastoreConfig::Etcd { .. } => "etcd",
            DatastoreConfig::File { .. } => "file",
        },
        programmer,
        policy,
        status_updates,
        model_status: status_rx,
        metrics,
        health,
        notifier,
        file_bgp: config.bgp,
        restarting: adopted > 0,
    });
    Ok(core
        .run(core::CoreInputs {
            model: model_rx,
            dataplane: route_rx,
            api: api_rx,
            reload: reload_rx,
            stop: stop_rx,
        })
        .await)
}

async fn serve_metrics(
    config: &Config,
    registry: Registry,
    health: Arc<Health>,
) -> Result<(), StartError> {
    let addr = config.metrics.listen.as_str();
    if addr == "none" {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Metrics {
            addr: addr.into(),
            source,
        })?;
    let router = crate::metrics::router(Arc::new(registry), health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

/// Starts the datastore driver and the model task; for etcd also the status reporter, whose
/// input is returned.
fn start_datastore(
    config: &Config,
    node: &str,
    model_tx: mpsc::Sender<crate::model::ModelEvent>,
    status_tx: watch::Sender<ModelStatus>,
) -> Result<Option<mpsc::Sender<datastore::status::StatusUpdate>>, StartError> {
    let (sync_tx, sync_rx) = mpsc::channel::<SyncEvent>(256);
    let model = Model::new(ModelConfig {
        hostname: node.to_owned(),
        region: config.region.clone(),
    });
    tokio::spawn(datastore::run_model(model, sync_rx, model_tx, status_tx));
    match &config.datastore {
        DatastoreConfig::File { path } => {
            let dir = path.clone();
            tokio::spawn(async move {
                if let Err(e) = datastore::file::run(dir, Duration::from_millis(50), sync_tx).await
                {
                    error!(error = %e, "the file datastore stopped");
                }
            });
            Ok(None)
        }
        DatastoreConfig::Etcd {
            endpoints,
            ca_file,
            cert_file,
            key_file,
        } => {
            let mut etcd = EtcdConfig::new(endpoints.clone());
            etcd.tls = match (ca_file, cert_file, key_file) {
                (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
                    ca_file: ca.clone(),
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                }),
                _ => None,
            };
            // Fail now on unreadable TLS files rather than retrying forever.
            datastore::etcd::connect_options(&etcd)
                .map_err(|e| StartError::Datastore(e.to_string()))?;
            let source = etcd.clone();
            tokio::spawn(async move {
                if let Err(e) = datastore::etcd::run(source, sync_tx).await {
                    error!(error = %e, "the etcd datastore stopped");
                }
            });
            let (updates_tx, updates_rx) = mpsc::channel(1024);
            let status = StatusConfig::new(node, config.region.clone());
            tokio::spawn(run_status_reporter(etcd, status, updates_rx));
            Ok(Some(updates_tx))
        }
    }
}

/// Connects (retrying) and then runs the Felix-compatible status reporter.
async fn run_status_reporter(
    etcd: EtcdConfig,
    status: StatusConfig,
    updates: mpsc::Receiver<datastore::status::StatusUpdate>,
) {
    let mut delay = etcd.backoff_initial;
    let client = loop {
        let connected = match datastore::etcd::connect_options(&etcd) {
            Ok(options) => datastore::etcd::connect(&etcd, &options).await,
            Err(e) => Err(e),
        };
        match connected {
            Ok(client) => break client,
            Err(e) => {
                warn!(error = %e, "status reporter: cannot reach etcd; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(etcd.backoff_max);
            }
        }
    };
    datastore::status::run(StatusReporter::new(client, status), updates).await;
}

/// SIGHUP re-reads the configuration (a bad one is logged and ignored); SIGTERM and SIGINT
/// stop the daemon.
fn spawn_signals(config_path: PathBuf, reload: mpsc::Sender<Config>, stop: mpsc::Sender<()>) {
    tokio::spawn(async move {
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => match reload_config(&config_path) {
                    Some(config) => {
                        let _ = reload.send(config).await;
                    }
                    None => continue,
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let _ = stop.send(()).await;
    });
}

fn reload_config(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => {
            info!(path = %path.display(), "SIGHUP: configuration re-read");
            Some(config)
        }
        Err(e) => {
            error!("SIGHUP: configuration not reloaded, the running one stays: {e}");
            None
        }
    }
}
