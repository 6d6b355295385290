//! The core task: the one place the pieces meet. It takes the model's events and hands them
//! to the route programmer and the policy task, passes the programmer's announce/withdraw
//! events to the BGP speaker and the speaker's learned routes to the programmer, answers the
//! local API, reports endpoint status to the datastore and keeps the metrics current.
//!
//! It owns the daemon-level state: the local endpoints as the datastore describes them, what
//! is announced, the configured peers, and the start-up milestones (in sync, reconciled,
//! BGP started, ready).

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
    last_route_writes: u64,
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
            last_route_writes: 0,
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

    /// Reads the programmer and the speaker: metrics, endpoint status for the datastore.
    async fn observe(&mut self) {
        let Ok(snapshot) = self.parts.programmer.snapshot().await else {
            return;
        };
        let m = &self.parts.metrics;
        let mut counts: BTreeMap<&str, i64> =
            [("up", 0), ("down", 0), ("missing", 0), ("error", 0)].into();
        for ep in &snapshot.endpoints {
            *counts
                .entry(state_name(ep.tap, !ep.errors.is_empty()))
                .or_default() += 1;
        }
        let unprogrammable = self
            .endpoints
            .values()
            .filter(|e| e.problem.is_some())
            .count();
        *counts.entry("error").or_default() += i64::try_from(unprogrammable).unwrap_or(0);
        for (state, n) in counts {
            m.endpoints
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n);
        }
        let learned = i64::try_from(snapshot.learned_routes).unwrap_or(i64::MAX);
        let total = i64::try_from(snapshot.routes_programmed).unwrap_or(i64::MAX);
        m.routes_programmed
            .get_or_create(&KindLabel {
                kind: "learned".into(),
            })
            .set(learned);
        m.routes_programmed
            .get_or_create(&KindLabel {
                kind: "endpoint".into(),
            })
            .set(total.saturating_sub(learned).max(0));
        if snapshot.kernel_writes != self.last_route_writes {
            self.last_route_writes = snapshot.kernel_writes;
            if let Some(d) = snapshot.last_apply {
                m.route_apply_seconds.observe(d.as_secs_f64());
            }
        }
        let status = self.parts.model_status.borrow().clone();
        m.datastore_in_sync.set(i64::from(status.in_sync));
        m.datastore_rejected
            .set(i64::try_from(status.rejected.len()).unwrap_or(i64::MAX));
        let mut peers_up = (0, 0);
        if let Some(speaker) = &self.speaker
            && let Ok(peers) = speaker.peers().await
        {
            for p in peers {
                peers_up.1 += 1;
                if p.state == skog_bgp::fsm::State::Established {
                    peers_up.0 += 1;
                }
                let label = PeerLabel {
                    peer: p.name.clone(),
                };
                m.bgp_session_state
                    .get_or_create(&label)
                    .set(fsm_number(p.state));
                m.bgp_prefixes_received
                    .get_or_create(&label)
                    .set(i64::try_from(p.received).unwrap_or(i64::MAX));
                m.bgp_prefixes_advertised
                    .get_or_create(&label)
                    .set(i64::try_from(p.advertised).unwrap_or(i64::MAX));
            }
        }
        if self.ready {
            let up = snapshot
                .endpoints
                .iter()
                .filter(|e| e.tap == TapState::Up && e.errors.is_empty())
                .count();
            let mut line = format!(
                "{up}/{} endpoints up, {} routes announced, {}/{} peers established",
                self.endpoints.len(),
                self.announced.len(),
                peers_up.0,
                peers_up.1
            );
            if !status.rejected.is_empty() {
                line.push_str(&format!(", {} resources rejected", status.rejected.len()));
            }
            if line != self.status_sent {
                let _ = self.parts.notifier.status(&line);
                self.status_sent = line;
            }
        }
        if self.status_dirty && self.in_sync {
            self.status_dirty = false;
            let by_key: HashMap<&str, &dataplane::EndpointStatus> = snapshot
                .endpoints
                .iter()
                .map(|e| (e.id.as_str(), e))
                .collect();
            let updates: Vec<(EndpointId, ReportedStatus)> = self
                .endpoints
                .iter()
                .map(|(key, ep)| {
                    let status = match (by_key.get(key.as_str()), &ep.problem) {
                        (_, Some(_)) => ReportedStatus::Error,
                        (Some(s), None) if !s.errors.is_empty() => ReportedStatus::Error,
                        (Some(s), None) if s.tap == TapState::Up => ReportedStatus::Up,
                        _ => ReportedStatus::Down,
                    };
                    (ep.local.endpoint.id.clone(), status)
                })
                .collect();
            for (id, status) in updates {
                self.report(&id, Some(status)).await;
            }
        }
    }

    /// Sends an endpoint's status to the datastore if it changed.
    async fn report(&mut self, id: &EndpointId, status: Option<ReportedStatus>) {
        let key = id.to_string();
        let changed = match status {
            Some(s) => self.reported.insert(key, s) != Some(s),
            None => self.reported.remove(&key).is_some(),
        };
        if let (true, Some(tx)) = (changed, &self.parts.status_updates) {
            let _ = tx
                .send(StatusUpdate {
                    id: id.clone(),
                    status,
                })
                .await;
        }
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

    async fn on_api(&mut self, request: ApiRequest) {
        match request {
            ApiRequest::Status { reply } => {
                let _ = reply.send(self.status().await);
            }
            ApiRequest::Peers { reply } => {
                let _ = reply.send(self.peer_statuses().await);
            }
            ApiRequest::Routes { filter, reply } => {
                let _ = reply.send(self.routes(&filter).await);
            }
            ApiRequest::Endpoints { reply } => {
                let _ = reply.send(self.endpoint_statuses().await);
            }
            ApiRequest::PolicyShow { interface, reply } => {
                let policy = self.parts.policy.clone();
                tokio::spawn(async move {
                    let _ = reply.send(policy.show(interface).await);
                });
            }
            ApiRequest::PolicyTrace { query, reply } => {
                let policy = self.parts.policy.clone();
                tokio::spawn(async move {
                    let _ = reply.send(trace(&policy, &query).await);
                });
            }
        }
    }

    async fn status(&self) -> Status {
        let model = self.parts.model_status.borrow().clone();
        let endpoints = self.endpoint_statuses().await;
        let mut counts = EndpointCounts::default();
        for e in &endpoints {
            match e.state.as_str() {
                "up" => counts.up += 1,
                "error" => counts.error += 1,
                _ => counts.down += 1,
            }
        }
        let peers = self.peer_statuses().await;
        let routes_programmed = match self.parts.programmer.snapshot().await {
            Ok(s) => s.routes_programmed as u64,
            Err(_) => 0,
        };
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            node_name: self.parts.node_name.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            datastore: DatastoreStatus {
                kind: self.parts.datastore_kind.into(),
                state: if !model.connected {
                    "disconnected"
                } else if model.in_sync {
                    "in-sync"
                } else {
                    "syncing"
                }
                .into(),
                ready: model.datastore_ready,
                last_error: None,
            },
            endpoints: counts,
            routes_programmed,
            peers: PeerCounts {
                total: peers.len() as u64,
                established: peers.iter().filter(|p| p.state == "Established").count() as u64,
            },
            rejected: model
                .rejected
                .iter()
                .map(|r| Rejected {
                    key: r.key.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
        }
    }

    async fn peer_statuses(&self) -> Vec<PeerStatus> {
        let Some(speaker) = &self.speaker else {
            // Not started yet: the configured peers, idle.
            return self
                .peers_configured()
                .into_iter()
                .map(|p| PeerStatus {
                    name: p.name.clone(),
                    address: p.address.to_string(),
                    asn: p.asn,
                    state: "Idle".into(),
                    uptime_s: 0,
                    received: 0,
                    accepted: 0,
                    advertised: 0,
                    last_error: Some("waiting for the datastore".into()),
                })
                .collect();
        };
        let Ok(peers) = speaker.peers().await else {
            return Vec::new();
        };
        let mut out: Vec<PeerStatus> = peers
            .into_iter()
            .map(|p| PeerStatus {
                name: p.name,
                address: p.address.to_string(),
                asn: p.asn,
                state: format!("{:?}", p.state),
                uptime_s: p
                    .established_since
                    .and_then(|t| t.elapsed().ok())
                    .map_or(0, |d| d.as_secs()),
                received: p.received as u64,
                accepted: p.accepted as u64,
                advertised: p.advertised as u64,
                last_error: p.last_error,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn peers_configured(&self) -> Vec<PeerConfig> {
        peers::desired(self.parts.file_bgp.as_ref(), &self.datastore_bgp)
            .into_values()
            .collect()
    }

    async fn routes(&self, filter: &RouteFilter) -> Result<Vec<RouteEntry>, String> {
        let per_peer = match (&filter.advertised, &filter.received) {
            (Some(peer), _) => Some((peer, skog_bgp::RibSide::Advertised)),
            (None, Some(peer)) => Some((peer, skog_bgp::RibSide::Received)),
            (None, None) => None,
        };
        if let Some((peer, side)) = per_peer {
            let speaker = self.speaker.as_ref().ok_or("BGP is not running")?;
            let routes = speaker
                .peer_routes(peer, side)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(routes
                .into_iter()
                .map(|r| RouteEntry {
                    prefix: r.prefix.to_string(),
                    next_hops: vec![match r.next_hop {
                        Some(hop) => format!("via {hop}"),
                        None => "self".into(),
                    }],
                    origin: match (side, r.accepted, r.stale) {
                        (skog_bgp::RibSide::Advertised, ..) => "endpoint",
                        (_, false, _) => "bgp (filtered)",
                        (_, true, true) => "bgp (stale)",
                        (_, true, false) => "bgp",
                    }
                    .into(),
                    age_s: self.age(&r.prefix),
                })
                .collect());
        }
        let kernel = self
            .parts
            .programmer
            .routes()
            .await
            .map_err(|e| e.to_string())?;
        if filter.kernel {
            return Ok(kernel
                .into_iter()
                .map(|r| RouteEntry {
                    prefix: r.prefix.to_string(),
                    next_hops: r.next_hops,
                    origin: if r.learned { "bgp" } else { "endpoint" }.into(),
                    age_s: self.age(&r.prefix),
                })
                .collect());
        }
        // Endpoint routes we announce, then what BGP learned (the Loc-RIB).
        let mut out: Vec<RouteEntry> = kernel
            .into_iter()
            .filter(|r| !r.learned && self.announced.contains(&r.prefix))
            .map(|r| RouteEntry {
                prefix: r.prefix.to_string(),
                next_hops: r.next_hops,
                origin: "endpoint".into(),
                age_s: self.age(&r.prefix),
            })
            .collect();
        if let Some(speaker) = &self.speaker {
            let learned = speaker.routes().await.map_err(|e| e.to_string())?;
            out.extend(learned.into_iter().map(|r| RouteEntry {
                prefix: r.prefix.to_string(),
                next_hops: r.next_hops.iter().map(|h| format!("via {h}")).collect(),
                origin: "bgp".into(),
                age_s: self.age(&r.prefix),
            }));
        }
        Ok(out)
    }

    fn age(&self, prefix: &IpNet) -> Option<u64> {
        self.route_since.get(prefix).map(|t| t.elapsed().as_secs())
    }

    async fn endpoint_statuses(&self) -> Vec<EndpointStatus> {
        let snapshot = self.parts.programmer.snapshot().await.unwrap_or_default();
        let by_key: HashMap<&str, &dataplane::EndpointStatus> = snapshot
            .endpoints
            .iter()
            .map(|e| (e.id.as_str(), e))
            .collect();
        self.endpoints
            .iter()
            .map(|(key, ep)| {
                let e = &ep.local.endpoint;
                let programmed = by_key.get(key.as_str());
                let errors: Vec<String> = ep
                    .problem
                    .iter()
                    .cloned()
                    .chain(programmed.iter().flat_map(|p| p.errors.iter().cloned()))
                    .collect();
                let state = match programmed {
                    Some(p) => state_name(p.tap, !errors.is_empty()),
                    None => "error",
                };
                EndpointStatus {
                    interface: e.interface_name.clone(),
                    port_id: e.id.endpoint.clone(),
                    workload: e.id.workload.clone(),
                    mac: e.mac.map(|m| m.to_string()).unwrap_or_default(),
                    addresses: e.ip_networks.iter().map(ToString::to_string).collect(),
                    floating_ips: e
                        .ip_nats
                        .iter()
                        .map(|n| format!("{} -> {}", n.external, n.internal))
                        .collect(),
                    state: state.into(),
                    security_groups: ep.local.policies.iter().map(|p| p.name.clone()).collect(),
                    reported_status: self
                        .reported
                        .get(key)
                        .map_or("none", |s| match s {
                            ReportedStatus::Up => "up",
                            ReportedStatus::Down => "down",
                            ReportedStatus::Error => "error",
                        })
                        .into(),
                    last_error: (!errors.is_empty()).then(|| errors.join("; ")),
                }
            })
            .collect()
    }
}

/// `skogctl policy trace`: the compiler's input as it stands, this host's addresses (traffic
/// to them is VM-to-host), and the pure evaluator.
async fn trace(
    policy: &super::policy::PolicyHandle,
    query: &TraceQuery,
) -> Result<TraceResult, String> {
    let packet =
        skog_policy::trace::TracePacket::parse(&query.src, &query.dst, &query.proto, query.port)
            .map_err(|e| e.to_string())?;
    let model = policy.model().await.ok_or("the policy task has stopped")?;
    let host = host_addresses()
        .await
        .map_err(|e| format!("reading this host's addresses: {e}"))?;
    let t = skog_policy::trace::trace(&model, &host, &packet).map_err(|e| e.to_string())?;
    Ok(TraceResult {
        verdict: t.verdict.to_string(),
        rule: t.rule.map(|r| r.to_string()),
        reason: t.reason,
        path: t.path,
    })
}

/// Every address of this host (of the namespace skogd runs in).
async fn host_addresses() -> std::io::Result<Vec<std::net::IpAddr>> {
    use futures::TryStreamExt;
    use netlink_packet_route::address::AddressAttribute;
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let mut dump = handle.address().get().execute();
    let mut out = Vec::new();
    let result = loop {
        match dump.try_next().await {
            Ok(Some(msg)) => out.extend(msg.attributes.iter().filter_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })),
            Ok(None) => break Ok(out),
            Err(e) => break Err(std::io::Error::other(e.to_string())),
        }
    };
    task.abort();
    result
}

fn state_name(tap: TapState, error: bool) -> &'static str {
    match (tap, error) {
        (_, true) => "error",
        (TapState::Up, false) => "up",
        (TapState::Down, false) => "down",
        (TapState::Missing, false) => "missing",
    }
}

/// RFC 4271's numbering of the states (1 Idle … 6 Established).
fn fsm_number(state: skog_bgp::fsm::State) -> i64 {
    use skog_bgp::fsm::State;
    match state {
        State::Idle => 1,
        State::Connect => 2,
        State::Active => 3,
        State::OpenSent => 4,
        State::OpenConfirm => 5,
        State::Established => 6,
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
