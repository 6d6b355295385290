//! The core task: the one place the pieces meet. It takes the model's events and hands them
//! to the route programmer and the policy task, passes the programmer's announce/withdraw
//! events to the BGP speaker and the speaker's learned routes to the programmer, answers the
//! local API, reports endpoint status to the datastore and keeps the metrics current.
//!
//! It owns the daemon-level state: the local endpoints as the datastore describes them, what
//! is announced, the configured peers, and the start-up milestones (in sync, reconciled,
//! BGP started, ready). Its API answers are in [`api`], its periodic observation (metrics,
//! status) in [`observe`].

mod api;
mod observe;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use skog_bgp::{PeerConfig, SpeakerHandle};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::convert;
use super::learned::Burst;
use super::peers;
use super::policy::{PolicyChange, PolicyHandle};
use crate::api::ApiRequest;
use crate::api::types::{
    DatastoreStatus, EndpointCounts, EndpointStatus, PeerCounts, PeerStatus, Rejected, RouteEntry,
    RouteFilter, Status, TraceQuery, TraceResult,
};
use crate::dataplane::{self, ProgrammerHandle, TapState};
use crate::datastore::status::{EndpointStatus as ReportedStatus, StatusUpdate};
use crate::metrics::{Health, KindLabel, Metrics, PeerLabel, StateLabel};
use crate::model::{DatastoreBgp, EndpointId, LocalEndpoint, ModelEvent, ModelStatus};
use crate::systemd::Notifier;

/// A local endpoint as the core keeps it.
#[derive(Debug, Clone)]
struct Endpoint {
    local: LocalEndpoint,
    /// Why the programmer could not take it, if it could not.
    problem: Option<String>,
}

/// Everything the core needs at start.
#[derive(Debug)]
pub struct CoreParts {
    /// This node.
    pub node_name: String,
    /// `etcd` or `file`.
    pub datastore_kind: &'static str,
    /// The route programmer.
    pub programmer: ProgrammerHandle,
    /// The policy task.
    pub policy: PolicyHandle,
    /// Endpoint status write-back (etcd only).
    pub status_updates: Option<mpsc::Sender<StatusUpdate>>,
    /// The model's summary.
    pub model_status: watch::Receiver<ModelStatus>,
    /// Metrics to keep current.
    pub metrics: Arc<Metrics>,
    /// Liveness and readiness.
    pub health: Arc<Health>,
    /// systemd.
    pub notifier: Notifier,
    /// `[bgp]` of the configuration file (the datastore may add peers, or give the identity).
    pub file_bgp: Option<crate::config::BgpConfig>,
    /// Whether the previous run left routes in the kernel.
    pub restarting: bool,
}

/// Why the core stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM or SIGINT.
    Stop,
    /// A piece the daemon cannot run without has ended.
    Failed,
}

/// Inputs of the core loop other than channels it owns.
#[derive(Debug)]
pub struct CoreInputs {
    /// Model events.
    pub model: mpsc::Receiver<ModelEvent>,
    /// Announce/withdraw from the route programmer.
    pub dataplane: mpsc::UnboundedReceiver<dataplane::RouteEvent>,
    /// Local API requests.
    pub api: mpsc::Receiver<ApiRequest>,
    /// Reload requests (SIGHUP), with the new configuration already validated.
    pub reload: mpsc::Receiver<crate::config::Config>,
    /// Stop requests (SIGTERM, SIGINT).
    pub stop: mpsc::Receiver<()>,
}

/// The core's state.
#[derive(Debug)]
pub struct Core {
    parts: CoreParts,
    started: Instant,
    endpoints: BTreeMap<String, Endpoint>,
    announced: BTreeSet<IpNet>,
    /// When each announced or learned route appeared or last changed (the CLI's age).
    route_since: HashMap<IpNet, Instant>,
    reported: HashMap<String, ReportedStatus>,
    speaker: Option<SpeakerHandle>,
    bgp_events: Option<mpsc::UnboundedReceiver<skog_bgp::RouteEvent>>,
    /// The peers the speaker runs.
    peers: BTreeMap<String, PeerConfig>,
    /// BGP settings from the datastore for this node.
    datastore_bgp: DatastoreBgp,
    /// Who the running speaker is.
    identity: Option<peers::Identity>,
    /// Whether the speaker advertises graceful restart.
    graceful_restart: bool,
    in_sync: bool,
    ready: bool,
    status_dirty: bool,
    /// The last `STATUS=` line sent to systemd.
    status_sent: String,
    /// The programmer's counters as last exported.
    exported: observe::ExportedCounts,
}

impl Core {
    /// A core over `parts`.
    pub fn new(parts: CoreParts) -> Core {
        Core {
            parts,
            started: Instant::now(),
            endpoints: BTreeMap::new(),
            announced: BTreeSet::new(),
            route_since: HashMap::new(),
            reported: HashMap::new(),
            speaker: None,
            bgp_events: None,
            peers: BTreeMap::new(),
            datastore_bgp: DatastoreBgp::default(),
            identity: None,
            graceful_restart: false,
            in_sync: false,
            ready: false,
            status_dirty: false,
            status_sent: String::new(),
            exported: observe::ExportedCounts::default(),
        }
    }

    /// Runs until told to stop; then ends BGP gracefully and leaves routes and rules in place.
    pub async fn run(mut self, mut inputs: CoreInputs) -> Exit {
        let watchdog = crate::systemd::watchdog_interval()
            .map(|i| i / 2)
            .unwrap_or(Duration::from_secs(1));
        let mut tick = tokio::time::interval(watchdog.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut observe = tokio::time::interval(Duration::from_millis(250));
        observe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let _ = self.parts.notifier.status("waiting for the datastore");
        let exit = loop {
            tokio::select! {
                event = inputs.model.recv() => match event {
                    Some(event) => {
                        self.on_model_event(event).await;
                        while let Ok(more) = inputs.model.try_recv() {
                            self.on_model_event(more).await;
                        }
                    }
                    None => {
                        error!("the datastore model has stopped");
                        break Exit::Failed;
                    }
                },
                Some(event) = inputs.dataplane.recv() => self.on_dataplane_event(event),
                Some(event) = recv_some(&mut self.bgp_events) => self.on_bgp_event(event).await,
                Some(request) = inputs.api.recv() => self.on_api(request).await,
                Some(config) = inputs.reload.recv() => self.reload(config).await,
                _ = inputs.stop.recv() => break Exit::Stop,
                _ = tick.tick() => {
                    self.parts.health.tick();
                    let _ = self.parts.notifier.watchdog();
                }
                _ = observe.tick() => self.observe().await,
            }
        };
        self.shut_down().await;
        exit
    }

    async fn on_model_event(&mut self, event: ModelEvent) {
        let policy = &self.parts.policy;
        match event {
            ModelEvent::EndpointUpdated(local) => {
                let key = convert::endpoint_key(&local.endpoint);
                let problem = match convert::desired_endpoint(&local.endpoint) {
                    Ok(desired) => {
                        self.program(self.parts.programmer.set_endpoint(desired).await);
                        None
                    }
                    Err(problem) => {
                        warn!("{problem}");
                        self.program(self.parts.programmer.remove_endpoint(&key).await);
                        Some(problem)
                    }
                };
                policy.change(PolicyChange::Endpoint(
                    key.clone(),
                    Some(convert::policy_endpoint(&local)),
                ));
                self.endpoints.insert(key, Endpoint { local, problem });
                self.status_dirty = true;
            }
            ModelEvent::EndpointRemoved(id) => {
                let key = id.to_string();
                self.program(self.parts.programmer.remove_endpoint(&key).await);
                policy.change(PolicyChange::Endpoint(key.clone(), None));
                self.endpoints.remove(&key);
                self.report(&id, None).await;
            }
            ModelEvent::PolicyUpdated(p) => policy.change(PolicyChange::Policy(
                convert::policy_key(&p.id),
                Some(convert::policy(&p)),
            )),
            ModelEvent::PolicyRemoved(id) => {
                policy.change(PolicyChange::Policy(convert::policy_key(&id), None));
            }
            ModelEvent::ProfileUpdated(p) => policy.change(PolicyChange::Policy(
                convert::profile_key(&p.name),
                Some(convert::profile(&p)),
            )),
            ModelEvent::ProfileRemoved(name) => {
                policy.change(PolicyChange::Policy(convert::profile_key(&name), None));
            }
            ModelEvent::SelectorMembership { id, added, removed } => {
                policy.change(PolicyChange::Selector {
                    key: convert::selector_key(&id),
                    added,
                    removed,
                });
            }
            ModelEvent::SelectorRemoved(id) => {
                policy.change(PolicyChange::SelectorRemoved(convert::selector_key(&id)));
            }
            ModelEvent::InterfacePrefixes(prefixes) => {
                if let Some(first) = prefixes.first() {
                    if prefixes.len() > 1 {
                        warn!(
                            ?prefixes,
                            "several interface prefixes configured; only {first:?} is filtered"
                        );
                    }
                    policy.change(PolicyChange::InterfacePrefix(first.clone()));
                }
            }
            ModelEvent::DatastoreReady(ready) => {
                if !ready {
                    warn!(
                        "the datastore says it is not ready (ClusterInformation datastoreReady = false); dataplane changes are paused"
                    );
                }
            }
            ModelEvent::Bgp(bgp) => {
                self.datastore_bgp = bgp;
                if self.ready {
                    self.apply_peer_changes().await;
                }
            }
            ModelEvent::InSync => {
                if !self.in_sync {
                    self.in_sync = true;
                    self.on_first_sync().await;
                }
            }
        }
    }

    fn program(&self, result: Result<(), dataplane::ProgrammerError>) {
        if let Err(e) = result {
            error!(error = %e, "the route programmer is gone");
        }
    }

    /// The datastore's first complete snapshot: let the programmer delete what is no longer
    /// desired, apply the rules, start BGP with everything announceable, then say ready.
    async fn on_first_sync(&mut self) {
        info!(
            endpoints = self.endpoints.len(),
            "datastore in sync; reconciling"
        );
        let _ = self.parts.notifier.status("reconciling the dataplane");
        self.parts.policy.change(PolicyChange::InSync);
        self.program(self.parts.programmer.desired_complete().await);
        // The snapshot is answered after everything above is applied.
        if let Err(e) = self.parts.programmer.snapshot().await {
            error!(error = %e, "the route programmer is gone");
        }
        let policy = self.parts.policy.flush().await.unwrap_or_default();
        // Announce events of the reconcile are queued in the dataplane channel; the speaker
        // starts with what is announceable now and gets later changes as events.
        self.start_bgp().await;
        self.ready = true;
        self.parts.health.set_ready(true);
        let status = self.status_line(&policy);
        info!("ready: {status}");
        if let Err(e) = self.parts.notifier.ready(&status) {
            warn!(error = %e, "cannot notify systemd");
        }
    }

    /// Starts the speaker if the file or the datastore says who we are; without BGP, learned
    /// routes a previous run left may go at once.
    async fn start_bgp(&mut self) {
        let file = self.parts.file_bgp.as_ref();
        let Some(identity) = peers::identity(file, &self.datastore_bgp) else {
            self.program(self.parts.programmer.learned_complete().await);
            return;
        };
        let export: Vec<IpNet> = self.announced.iter().copied().collect();
        let desired = peers::desired(file, &self.datastore_bgp);
        let cfg = peers::speaker_config(identity, file, &desired, self.parts.restarting, export);
        // Learned routes a previous run left stay until the speaker reports Converged (every
        // peer's End-of-RIB, or its selection deferral timer).
        self.graceful_restart = cfg.graceful_restart.is_some();
        match skog_bgp::Speaker::start(cfg).await {
            Ok((handle, events)) => {
                info!(
                    asn = identity.asn,
                    peers = desired.len(),
                    "BGP speaker started"
                );
                self.speaker = Some(handle);
                self.bgp_events = Some(events);
                self.identity = Some(identity);
                self.peers = desired;
            }
            Err(e) => {
                error!(error = %e, "cannot start the BGP speaker; routes are not announced");
                self.parts.metrics.count_error("bgp");
                self.program(self.parts.programmer.learned_complete().await);
            }
        }
    }

    /// Brings the running speaker's peers in line with the file and the datastore (or starts
    /// the speaker if BGP has become configured).
    async fn apply_peer_changes(&mut self) {
        let file = self.parts.file_bgp.as_ref();
        let Some(speaker) = self.speaker.clone() else {
            self.start_bgp().await;
            return;
        };
        if peers::identity(file, &self.datastore_bgp) != self.identity {
            warn!("the BGP AS, router id or listen port changed; restart skogd to apply it");
        }
        let desired = peers::desired(file, &self.datastore_bgp);
        let changes = peers::diff(&self.peers, &desired);
        if changes.is_empty() {
            return;
        }
        for name in &changes.remove {
            match speaker.remove_peer(name).await {
                Ok(()) => info!(peer = %name, "peer removed"),
                Err(e) => warn!(peer = %name, error = %e, "cannot remove peer"),
            }
            self.peers.remove(name);
        }
        for peer in changes.add {
            let name = peer.name.clone();
            match speaker.add_peer(peer.clone()).await {
                Ok(()) => {
                    info!(peer = %name, "peer added");
                    self.peers.insert(name, peer);
                }
                Err(e) => {
                    error!(peer = %name, error = %e, "cannot add peer");
                    self.parts.metrics.count_error("bgp");
                }
            }
        }
    }

    fn on_dataplane_event(&mut self, event: dataplane::RouteEvent) {
        let (prefix, announce) = match event {
            dataplane::RouteEvent::Announce(p) => (p, true),
            dataplane::RouteEvent::Withdraw(p) => (p, false),
        };
        let changed = if announce {
            self.route_since.insert(prefix, Instant::now());
            self.announced.insert(prefix)
        } else {
            self.route_since.remove(&prefix);
            self.announced.remove(&prefix)
        };
        self.status_dirty = true;
        if let (true, Some(speaker)) = (changed, &self.speaker) {
            let result = if announce {
                speaker.announce(vec![prefix])
            } else {
                speaker.withdraw(vec![prefix])
            };
            if let Err(e) = result {
                error!(error = %e, "the BGP speaker is gone");
            }
        }
    }

    /// A burst of learned-route changes (this event and whatever is queued behind it) to the
    /// programmer in one go.
    async fn on_bgp_event(&mut self, event: skog_bgp::RouteEvent) {
        let Some(events) = self.bgp_events.as_mut() else {
            return;
        };
        let burst = Burst::take(event, events);
        let now = Instant::now();
        for (prefix, next_hops) in &burst.changes {
            if next_hops.is_some() {
                self.route_since.insert(*prefix, now);
            } else {
                self.route_since.remove(prefix);
            }
        }
        if burst.converged {
            // Every peer re-sent its routes (End-of-RIB) or the deferral timer ran out: learned
            // routes a previous run left and nobody re-announced may go now.
            info!("BGP converged; stale learned routes may go");
        }
        self.program(burst.send(&self.parts.programmer).await);
    }

    /// SIGHUP: the new file's peers (other keys take effect at the next start).
    async fn reload(&mut self, config: crate::config::Config) {
        self.parts.file_bgp = config.bgp;
        info!("configuration reloaded");
        if self.ready {
            self.apply_peer_changes().await;
        }
    }

    async fn shut_down(&mut self) {
        let _ = self.parts.notifier.stopping();
        info!("stopping; routes and rules stay in place");
        if let Some(speaker) = &self.speaker {
            // With graceful restart the peers keep our routes until we are back; without it
            // they are told why we leave.
            let how = if self.graceful_restart {
                skog_bgp::Shutdown::Graceful
            } else {
                skog_bgp::Shutdown::Withdraw("skogd stopping".into())
            };
            if let Err(e) = speaker.shutdown(how).await {
                warn!(error = %e, "BGP shutdown");
            }
        }
        if let Err(e) = self.parts.programmer.shutdown().await {
            warn!(error = %e, "route programmer shutdown");
        }
    }

    fn status_line(&self, policy: &super::policy::PolicyState) -> String {
        let mut line = format!(
            "{} endpoints, {} routes announced",
            self.endpoints.len(),
            self.announced.len()
        );
        if !policy.problems.is_empty() {
            line.push_str(&format!(", {} policy problems", policy.problems.len()));
        }
        if let Some(e) = &policy.last_error {
            line.push_str(&format!(", rules not applied: {e}"));
        }
        line
    }
}

fn state_name(tap: TapState, error: bool) -> &'static str {
    match (tap, error) {
        (_, true) => "error",
        (TapState::Up, false) => "up",
        (TapState::Down, false) => "down",
        (TapState::Missing, false) => "missing",
    }
}

/// Receives from an optional channel; pending forever when there is none (or it closed).
async fn recv_some<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(r) => match r.recv().await {
            Some(v) => Some(v),
            None => {
                *rx = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}
