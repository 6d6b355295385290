//! The speaker: one tokio task that owns the RIBs and the export set, a session task per
//! peer ([`crate::session`]) and the listener. The agent talks to it through a
//! [`SpeakerHandle`] (announce or withdraw endpoint routes, add or remove peers, ask for
//! snapshots, refresh, shut down) and receives learned routes as [`RouteEvent`]s.
//!
//! Every request and session report is handled in turn; before waiting again the task drains
//! whatever else is queued and only then flushes the Adj-RIBs-Out, so a burst of endpoint
//! changes leaves as a few packed UPDATEs. Graceful restart: as helper, a peer that had the
//! capability and lost its connection keeps its routes as stale until its End-of-RIB or its
//! restart time; as restarting speaker, [`SpeakerHandle::shutdown`] with `graceful` closes
//! the connections without a NOTIFICATION, so the peers keep our routes while we restart.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use socket2::SockRef;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::codec::{self, Capabilities, Family, GracefulRestart, PathAttrs};
use crate::config::{ImportPolicy, PeerConfig, SpeakerConfig};
use crate::converge::{Convergence, SessionUp};
use crate::fsm::{FsmConfig, Negotiated, State};
use crate::pack::{self, Encoding, ExportAttrs, NextHopSelf};
use crate::rib::{AdjRibIn, AdjRibOut, ImportFilter, LocRib, PeerId, PeerKind, RouteEvent};
use crate::session::{self, Command, Report, ReportKind, Session};
use crate::sockopt;

/// Starting or configuring the speaker failed.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A peer's MD5 key could not be read or set.
    #[error("peer {peer}: TCP MD5 key: {source}")]
    Md5 {
        /// The peer.
        peer: String,
        /// Why.
        source: io::Error,
    },
    /// Two peers with one name or address.
    #[error("peer {0} is configured twice")]
    DuplicatePeer(String),
    /// No such peer.
    #[error("no peer named {0}")]
    UnknownPeer(String),
    /// The speaker task has ended.
    #[error("the BGP speaker has stopped")]
    Stopped,
}

/// A peer as the CLI and metrics see it.
#[derive(Debug, Clone)]
pub struct PeerSnapshot {
    /// Configured name.
    pub name: String,
    /// Address.
    pub address: IpAddr,
    /// AS.
    pub asn: u32,
    /// Session state.
    pub state: State,
    /// Since when the session is established.
    pub established_since: Option<SystemTime>,
    /// The last error (NOTIFICATION sent or received, connection failure).
    pub last_error: Option<String>,
    /// What the established session negotiated.
    pub negotiated: Option<Negotiated>,
    /// Prefixes received and not withdrawn.
    pub received: usize,
    /// Of those, accepted by the import filter.
    pub accepted: usize,
    /// Prefixes the peer holds from us.
    pub advertised: usize,
    /// Whether its routes are stale (it is restarting gracefully).
    pub stale: bool,
    /// ROUTE-REFRESH requests answered.
    pub refreshes_answered: u64,
}

/// A learned route in the Loc-RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedRoute {
    /// The prefix.
    pub prefix: IpNet,
    /// Its ECMP next hops.
    pub next_hops: Vec<IpAddr>,
}

/// One peer's side of the routes: what it sent us, or what it holds from us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RibSide {
    /// Its Adj-RIB-In: what it announced to us.
    Received,
    /// Its Adj-RIB-Out: what we announced to it.
    Advertised,
}

/// A route in one peer's Adj-RIB-In or Adj-RIB-Out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    /// The prefix.
    pub prefix: IpNet,
    /// The next hop it came with (received), or `None` for ours (next-hop self).
    pub next_hop: Option<IpAddr>,
    /// Whether the import filter accepted it (always true for advertised routes).
    pub accepted: bool,
    /// Kept from before the peer's graceful restart.
    pub stale: bool,
}

/// How to end the speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shutdown {
    /// NOTIFICATION Cease / Administrative Shutdown with this RFC 8203 text: the peers
    /// withdraw our routes.
    Withdraw(String),
    /// Graceful restart: close the connections without a NOTIFICATION, so peers that help
    /// (RFC 4724) keep forwarding to our routes until we are back and send End-of-RIB.
    Graceful,
}

enum Request {
    Announce(Vec<IpNet>),
    Withdraw(Vec<IpNet>),
    AddPeer(Box<PeerConfig>, oneshot::Sender<Result<(), SpeakerError>>),
    RemovePeer(String, oneshot::Sender<Result<(), SpeakerError>>),
    Refresh(String, oneshot::Sender<Result<(), SpeakerError>>),
    Peers(oneshot::Sender<Vec<PeerSnapshot>>),
    Routes(oneshot::Sender<Vec<LearnedRoute>>),
    PeerRoutes(
        String,
        RibSide,
        oneshot::Sender<Result<Vec<PeerRoute>, SpeakerError>>,
    ),
    Inbound(tokio::net::TcpStream, SocketAddr),
    Shutdown(Shutdown, oneshot::Sender<()>),
}

/// Talks to the speaker task; cheap to clone.
#[derive(Debug, Clone)]
pub struct SpeakerHandle {
    requests: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

impl SpeakerHandle {
    fn send(&self, r: Request) -> Result<(), SpeakerError> {
        self.requests.send(r).map_err(|_| SpeakerError::Stopped)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Announces local endpoint routes (next-hop self) to every peer.
    pub fn announce(&self, prefixes: Vec<IpNet>) -> Result<(), SpeakerError> {
        self.send(Request::Announce(prefixes))
    }

    /// Withdraws local endpoint routes.
    pub fn withdraw(&self, prefixes: Vec<IpNet>) -> Result<(), SpeakerError> {
        self.send(Request::Withdraw(prefixes))
    }

    /// Adds a peer (configuration reload).
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), SpeakerError> {
        self.ask(|tx| Request::AddPeer(Box::new(peer), tx)).await?
    }

    /// Removes a peer (Cease, its routes leave the Loc-RIB).
    pub async fn remove_peer(&self, name: &str) -> Result<(), SpeakerError> {
        self.ask(|tx| Request::RemovePeer(name.to_owned(), tx))
            .await?
    }

    /// Asks a peer to re-send its routes (ROUTE-REFRESH, RFC 2918).
    pub async fn refresh(&self, name: &str) -> Result<(), SpeakerError> {
        self.ask(|tx| Request::Refresh(name.to_owned(), tx)).await?
    }

    /// The peers' state.
    pub async fn peers(&self) -> Result<Vec<PeerSnapshot>, SpeakerError> {
        self.ask(Request::Peers).await
    }

    /// The learned routes (Loc-RIB).
    pub async fn routes(&self) -> Result<Vec<LearnedRoute>, SpeakerError> {
        self.ask(Request::Routes).await
    }

    /// The routes `name` sent us, or holds from us.
    pub async fn peer_routes(
        &self,
        name: &str,
        side: RibSide,
    ) -> Result<Vec<PeerRoute>, SpeakerError> {
        self.ask(|tx| Request::PeerRoutes(name.to_owned(), side, tx))
            .await?
    }

    /// Ends every session as `how` says and stops the speaker. Learned routes are not
    /// removed (the dataplane keeps them; the agent reconciles on its next start).
    pub async fn shutdown(&self, how: Shutdown) -> Result<(), SpeakerError> {
        self.ask(|tx| Request::Shutdown(how, tx)).await
    }
}

/// Starts speakers.
#[derive(Debug)]
pub struct Speaker;

impl Speaker {
    /// Starts the speaker task (and the listener) on the current tokio runtime. Learned
    /// routes arrive on the returned receiver.
    pub async fn start(
        config: SpeakerConfig,
    ) -> Result<(SpeakerHandle, mpsc::UnboundedReceiver<RouteEvent>), SpeakerError> {
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let listener = match config.listen {
            Some(addr) => {
                let l = listen(addr)?;
                let local = l
                    .local_addr()
                    .map_err(|source| SpeakerError::Listen { addr, source })?;
                Some((Arc::new(l), local))
            }
            None => None,
        };
        let mut task = SpeakerTask {
            asn: config.asn,
            router_id: config.router_id,
            graceful_restart: config.graceful_restart,
            peers: HashMap::new(),
            next_id: 0,
            export: config.export.into_iter().collect(),
            loc: LocRib::default(),
            events,
            reports_tx,
            listener: listener.as_ref().map(|(l, local)| (Arc::clone(l), *local)),
            convergence: Convergence::new([]),
            deferral_deadline: Instant::now() + config.selection_deferral,
        };
        for peer in config.peers {
            task.add_peer(peer)?;
        }
        task.convergence = Convergence::new(task.peers.keys().copied());
        task.report_convergence();
        if let Some((l, _)) = listener {
            let requests = requests.clone();
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((stream, from)) => {
                            if requests.send(Request::Inbound(stream, from)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        tokio::spawn(task.run(requests_rx, reports_rx));
        Ok((SpeakerHandle { requests }, events_rx))
    }
}

fn listen(addr: SocketAddr) -> Result<TcpListener, SpeakerError> {
    let err = |source| SpeakerError::Listen { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(128).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// The established part of a peer.
#[derive(Debug)]
struct Established {
    epoch: u64,
    negotiated: Negotiated,
    next_hop: NextHopSelf,
    max_len: usize,
    since: SystemTime,
    end_of_rib_sent: bool,
}

#[derive(Debug)]
struct PeerEntry {
    cfg: PeerConfig,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    state: State,
    last_error: Option<String>,
    session: Option<Established>,
    adj_in: AdjRibIn,
    adj_out: AdjRibOut,
    kind: PeerKind,
    /// Graceful restart (helper): when the peer's stale routes go.
    stale_until: Option<Instant>,
    refreshes_answered: u64,
}

/// The import filter plus AS-path loop detection.
struct Import<'a> {
    asn: u32,
    policy: &'a ImportPolicy,
}

impl ImportFilter for Import<'_> {
    fn accepts(&self, prefix: &IpNet, attrs: &PathAttrs) -> bool {
        !attrs.as_path.contains(&self.asn) && self.policy.accepts(prefix, attrs)
    }
}

struct SpeakerTask {
    asn: u32,
    router_id: std::net::Ipv4Addr,
    graceful_restart: Option<crate::config::GracefulRestartConfig>,
    peers: HashMap<PeerId, PeerEntry>,
    next_id: PeerId,
    export: HashSet<IpNet>,
    loc: LocRib,
    events: mpsc::UnboundedSender<RouteEvent>,
    reports_tx: mpsc::UnboundedSender<Report>,
    listener: Option<(Arc<TcpListener>, SocketAddr)>,
    /// Whether the initial routing information is complete (RFC 4724 §4.1).
    convergence: Convergence,
    /// When the selection-deferral timer ends the wait for End-of-RIBs.
    deferral_deadline: Instant,
}

enum Input {
    Request(Request),
    Report(Report),
    StaleTimer,
    DeferralTimer,
    Closed,
}

impl SpeakerTask {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut reports: mpsc::UnboundedReceiver<Report>,
    ) {
        loop {
            let stale = self.peers.values().filter_map(|p| p.stale_until).min();
            let deferring = self.convergence.is_waiting();
            let input = tokio::select! {
                r = requests.recv() => r.map_or(Input::Closed, Input::Request),
                Some(r) = reports.recv() => Input::Report(r),
                _ = tokio::time::sleep_until(stale.unwrap_or_else(Instant::now)), if stale.is_some() => Input::StaleTimer,
                _ = tokio::time::sleep_until(self.deferral_deadline), if deferring => Input::DeferralTimer,
            };
            let mut next = Some(input);
            // Drain what is already queued before flushing: bursts coalesce.
            let mut budget = 100_000;
            while let Some(input) = next.take() {
                match input {
                    Input::Closed => {
                        return self
                            .stop(Shutdown::Withdraw("speaker dropped".into()))
                            .await;
                    }
                    Input::Request(Request::Shutdown(how, done)) => {
                        self.flush();
                        self.stop(how).await;
                        let _ = done.send(());
                        return;
                    }
                    Input::Request(r) => self.request(r),
                    Input::Report(r) => self.report(r),
                    Input::StaleTimer => self.purge_expired_stale(),
                    Input::DeferralTimer => {
                        info!(
                            "selection deferral timer expired: initial routing information taken as complete"
                        );
                        self.convergence.deferral_expired();
                    }
                }
                self.report_convergence();
                budget -= 1;
                if budget > 0 {
                    next = match reports.try_recv() {
                        Ok(r) => Some(Input::Report(r)),
                        Err(_) => requests.try_recv().ok().map(Input::Request),
                    };
                }
            }
            self.flush();
        }
    }

    fn add_peer(&mut self, cfg: PeerConfig) -> Result<(), SpeakerError> {
        if self
            .peers
            .values()
            .any(|p| p.cfg.name == cfg.name || p.cfg.address == cfg.address)
        {
            return Err(SpeakerError::DuplicatePeer(cfg.name));
        }
        let md5 = |source| SpeakerError::Md5 {
            peer: cfg.name.clone(),
            source,
        };
        let key = session::read_md5_key(&cfg).map_err(md5)?;
        if let (Some(key), Some((listener, local))) = (&key, &self.listener) {
            let addr = match (local.is_ipv6(), cfg.address) {
                (true, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
                (_, addr) => addr,
            };
            sockopt::set_md5_key(&SockRef::from(listener.as_ref()), addr, key).map_err(md5)?;
        }
        let mut families = cfg.offered_families();
        families.sort();
        let capabilities = Capabilities {
            families: families.clone(),
            route_refresh: true,
            enhanced_route_refresh: true,
            asn4: Some(self.asn),
            graceful_restart: self.graceful_restart.map(|gr| GracefulRestart {
                restarting: gr.restarting,
                notification: true,
                restart_time: gr.restart_time,
                families: families.iter().map(|f| (*f, gr.restarting)).collect(),
            }),
            extended_message: true,
            extended_next_hop_v4: cfg.extended_next_hop && cfg.address.is_ipv6(),
        };
        let fsm_cfg = FsmConfig {
            local_asn: self.asn,
            router_id: self.router_id,
            peer_asn: cfg.asn,
            hold_time: cfg.hold_time,
            connect_retry: cfg.connect_retry,
            passive: cfg.passive,
            idle_hold: Duration::from_secs(1),
            max_idle_hold: Duration::from_secs(60),
            capabilities,
        };
        let id = self.next_id;
        self.next_id += 1;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (session, connected) =
            Session::new(id, cfg.clone(), fsm_cfg, key, self.reports_tx.clone());
        let task = tokio::spawn(session.run(commands_rx, connected));
        info!(peer = %cfg.name, address = %cfg.address, asn = cfg.asn, "peer added");
        self.peers.insert(
            id,
            PeerEntry {
                kind: PeerKind {
                    ebgp: cfg.asn != self.asn,
                },
                cfg,
                commands,
                task,
                state: State::Idle,
                last_error: None,
                session: None,
                adj_in: AdjRibIn::default(),
                adj_out: AdjRibOut::default(),
                stale_until: None,
                refreshes_answered: 0,
            },
        );
        Ok(())
    }

    fn peer_named(&self, name: &str) -> Result<PeerId, SpeakerError> {
        self.peers
            .iter()
            .find(|(_, p)| p.cfg.name == name)
            .map(|(id, _)| *id)
            .ok_or_else(|| SpeakerError::UnknownPeer(name.to_owned()))
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Announce(prefixes) => {
                for p in prefixes {
                    if self.export.insert(p) {
                        self.touch(p);
                    }
                }
            }
            Request::Withdraw(prefixes) => {
                for p in prefixes {
                    if self.export.remove(&p) {
                        self.touch(p);
                    }
                }
            }
            Request::AddPeer(cfg, done) => {
                let _ = done.send(self.add_peer(*cfg));
            }
            Request::RemovePeer(name, done) => {
                let result = self.peer_named(&name).map(|id| {
                    if let Some(mut p) = self.peers.remove(&id) {
                        let _ = p.commands.send(Command::Stop("peer de-configured".into()));
                        let gone = p.adj_in.clear();
                        self.recompute(gone);
                    }
                    self.convergence.peer_removed(id);
                });
                let _ = done.send(result);
            }
            Request::Refresh(name, done) => {
                let result = self.peer_named(&name).map(|id| {
                    if let Some(p) = self.peers.get(&id)
                        && let Some(s) = &p.session
                    {
                        let frames = s
                            .negotiated
                            .families
                            .iter()
                            .map(|f| codec::route_refresh(*f, 0))
                            .collect();
                        let _ = p.commands.send(Command::Send {
                            epoch: s.epoch,
                            frames,
                        });
                    }
                });
                let _ = done.send(result);
            }
            Request::Peers(reply) => {
                let mut out: Vec<PeerSnapshot> = self.peers.values().map(snapshot).collect();
                out.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(out);
            }
            Request::Routes(reply) => {
                let mut out: Vec<LearnedRoute> = self
                    .loc
                    .routes()
                    .map(|(p, hops)| LearnedRoute {
                        prefix: *p,
                        next_hops: hops.to_vec(),
                    })
                    .collect();
                out.sort_by_key(|r| r.prefix);
                let _ = reply.send(out);
            }
            Request::PeerRoutes(name, side, reply) => {
                let routes = self.peer_named(&name).map(|id| {
                    self.peers
                        .get(&id)
                        .map(|p| peer_routes(p, side))
                        .unwrap_or_default()
                });
                let _ = reply.send(routes);
            }
            Request::Inbound(stream, from) => {
                let from = from.ip().to_canonical();
                match self.peers.values().find(|p| p.cfg.address == from) {
                    Some(p) => {
                        let _ = p.commands.send(Command::Inbound(stream));
                    }
                    None => info!("refused a connection from {from}: not a peer"),
                }
            }
            Request::Shutdown(..) => {}
        }
    }

    fn touch(&mut self, prefix: IpNet) {
        for p in self.peers.values_mut() {
            if p.session.is_some() {
                p.adj_out.touch(prefix);
            }
        }
    }

    fn report(&mut self, r: Report) {
        let asn = self.asn;
        let helper = self.graceful_restart.is_some();
        let convergence = &mut self.convergence;
        let Some(peer) = self.peers.get_mut(&r.peer) else {
            return;
        };
        match r.kind {
            ReportKind::State { state, last_error } => {
                peer.state = state;
                if last_error.is_some() {
                    peer.last_error = last_error;
                }
            }
            ReportKind::Up {
                epoch,
                negotiated,
                next_hop,
                max_len,
            } => {
                // A restarting peer without graceful restart this time: its stale routes go.
                let purge =
                    peer.stale_until.is_some() && negotiated.peer_graceful_restart.is_none();
                convergence.session_up(
                    r.peer,
                    match &negotiated.peer_graceful_restart {
                        Some(gr) if helper && !gr.restarting => {
                            SessionUp::AwaitEndOfRib(negotiated.families.clone())
                        }
                        _ => SessionUp::NotAwaited,
                    },
                );
                peer.session = Some(Established {
                    epoch,
                    negotiated: *negotiated,
                    next_hop,
                    max_len,
                    since: SystemTime::now(),
                    end_of_rib_sent: false,
                });
                peer.adj_out.resend_all(&self.export);
                if purge {
                    peer.stale_until = None;
                    let gone = peer.adj_in.purge_stale(None);
                    self.recompute(gone);
                }
            }
            ReportKind::Down(reason) => {
                let gr = peer.session.take().and_then(|s| {
                    let keep = helper && reason.keeps_routes(s.negotiated.graceful_notification);
                    s.negotiated.peer_graceful_restart.filter(|_| keep)
                });
                match gr {
                    Some(gr) if gr.restart_time > 0 => {
                        info!(peer = %peer.cfg.name, "peer restarting gracefully: keeping its routes for {} s", gr.restart_time);
                        peer.adj_in.mark_stale(None);
                        peer.stale_until =
                            Some(Instant::now() + Duration::from_secs(u64::from(gr.restart_time)));
                    }
                    _ => {
                        peer.stale_until = None;
                        let gone = peer.adj_in.clear();
                        self.recompute(gone);
                    }
                }
            }
            ReportKind::Update(update) => {
                if let Some(family) = update.end_of_rib {
                    convergence.end_of_rib(r.peer, family);
                    let gone = peer.adj_in.purge_stale(Some(family));
                    if peer.stale_until.is_some() {
                        info!(peer = %peer.cfg.name, "End-of-RIB for {family}: {} stale routes purged", gone.len());
                    }
                    self.recompute(gone);
                    self.clear_stale_timer(r.peer);
                    return;
                }
                let filter = Import {
                    asn,
                    policy: &peer.cfg.import,
                };
                let changed = peer.adj_in.apply(&update, &filter);
                self.recompute(changed);
            }
            ReportKind::RouteRefresh { family, subtype } => match subtype {
                0 => self.resend(r.peer, family),
                // RFC 7313: the peer re-sends everything; what it does not re-send goes.
                1 => peer.adj_in.mark_stale(Some(family)),
                2 => {
                    let gone = peer.adj_in.purge_stale(Some(family));
                    self.recompute(gone);
                }
                _ => {}
            },
        }
    }

    /// Emits [`RouteEvent::Converged`] once convergence is reached (after the route events
    /// that led to it).
    fn report_convergence(&mut self) {
        if self.convergence.take_converged() {
            info!("initial routing information complete");
            let _ = self.events.send(RouteEvent::Converged);
        }
    }

    fn clear_stale_timer(&mut self, id: PeerId) {
        if let Some(p) = self.peers.get_mut(&id)
            && p.adj_in.accepted_routes().all(|(_, path)| !path.stale)
            && p.stale_until.is_some()
        {
            p.stale_until = None;
        }
    }

    fn purge_expired_stale(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for p in self.peers.values_mut() {
            if p.stale_until.is_some_and(|t| t <= now) {
                p.stale_until = None;
                let purged = p.adj_in.purge_stale(None);
                info!(peer = %p.cfg.name, "restart time over: {} stale routes purged", purged.len());
                gone.extend(purged);
            }
        }
        self.recompute(gone);
    }

    fn recompute(&mut self, prefixes: Vec<IpNet>) {
        if prefixes.is_empty() {
            return;
        }
        let ribs: Vec<(&AdjRibIn, PeerKind)> =
            self.peers.values().map(|p| (&p.adj_in, p.kind)).collect();
        for event in self.loc.recompute(prefixes, &ribs) {
            let _ = self.events.send(event);
        }
    }

    /// Answers a ROUTE-REFRESH: every exported prefix of `family` again, between
    /// Beginning- and End-of-Route-Refresh markers when enhanced refresh was negotiated.
    fn resend(&mut self, id: PeerId, family: Family) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        flush_peer(p, &self.export, self.asn);
        let Some(s) = &p.session else {
            return;
        };
        if !sendable_families(s).contains(&family) {
            return;
        }
        let mut prefixes: Vec<IpNet> = self
            .export
            .iter()
            .filter(|x| Family::of(x) == family)
            .copied()
            .collect();
        prefixes.sort_unstable();
        let enhanced = s.negotiated.enhanced_route_refresh;
        let mut frames = Vec::new();
        if enhanced {
            frames.push(codec::route_refresh(family, 1));
        }
        match pack::announcements(
            family,
            &export_attrs(&p.cfg, s, self.asn),
            &prefixes,
            s.max_len,
        ) {
            Ok(f) => frames.extend(f),
            Err(e) => warn!(peer = %p.cfg.name, "cannot encode a refresh: {e}"),
        }
        if enhanced {
            frames.push(codec::route_refresh(family, 2));
        }
        let _ = p.commands.send(Command::Send {
            epoch: s.epoch,
            frames,
        });
        p.refreshes_answered += 1;
    }

    fn flush(&mut self) {
        for p in self.peers.values_mut() {
            flush_peer(p, &self.export, self.asn);
        }
    }

    async fn stop(&mut self, how: Shutdown) {
        let mut tasks = Vec::new();
        for (_, p) in self.peers.drain() {
            let command = match &how {
                Shutdown::Withdraw(text) => Command::Stop(text.clone()),
                Shutdown::Graceful => Command::Close,
            };
            let _ = p.commands.send(command);
            tasks.push(p.task);
        }
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// The families we can announce on a session: negotiated, and with a next hop of ours that
/// fits (IPv4 over IPv6 needs RFC 8950; IPv6 over IPv4 is not offered).
fn sendable_families(s: &Established) -> Vec<Family> {
    s.negotiated
        .families
        .iter()
        .copied()
        .filter(|f| match (f, s.next_hop) {
            (Family::Ipv4, NextHopSelf::V4(_)) | (Family::Ipv6, NextHopSelf::V6 { .. }) => true,
            (Family::Ipv4, NextHopSelf::V6 { .. }) => s.negotiated.extended_next_hop_v4,
            (Family::Ipv6, NextHopSelf::V4(_)) => false,
        })
        .collect()
}

fn peer_routes(p: &PeerEntry, side: RibSide) -> Vec<PeerRoute> {
    let mut out: Vec<PeerRoute> = match side {
        RibSide::Received => p
            .adj_in
            .routes()
            .map(|(prefix, path)| PeerRoute {
                prefix: *prefix,
                next_hop: Some(path.next_hop),
                accepted: path.accepted,
                stale: path.stale,
            })
            .collect(),
        RibSide::Advertised => p
            .adj_out
            .advertised_prefixes()
            .map(|prefix| PeerRoute {
                prefix: *prefix,
                next_hop: None,
                accepted: true,
                stale: false,
            })
            .collect(),
    };
    out.sort_by_key(|r| r.prefix);
    out
}

fn export_attrs(cfg: &PeerConfig, s: &Established, asn: u32) -> ExportAttrs {
    let ebgp = cfg.asn != asn;
    ExportAttrs {
        as_path: if ebgp { vec![asn] } else { Vec::new() },
        asn4: s.negotiated.asn4,
        local_pref: (!ebgp).then_some(100),
        communities: cfg.communities.clone(),
        large_communities: cfg.large_communities.clone(),
        next_hop: s.next_hop,
    }
}

/// Sends what changed for one peer, then (once per session) End-of-RIB.
fn flush_peer(p: &mut PeerEntry, export: &HashSet<IpNet>, asn: u32) {
    let Some(s) = &mut p.session else {
        return;
    };
    let families = sendable_families(s);
    let mut frames = Vec::new();
    if p.adj_out.is_dirty() {
        let f = p.adj_out.flush(export, &families);
        let attrs = export_attrs(&p.cfg, s, asn);
        for family in [Family::Ipv4, Family::Ipv6] {
            let encoding = Encoding::for_family(family, s.next_hop);
            let withdraw: Vec<IpNet> = f
                .withdraw
                .iter()
                .filter(|x| Family::of(x) == family)
                .copied()
                .collect();
            let announce: Vec<IpNet> = f
                .announce
                .iter()
                .filter(|x| Family::of(x) == family)
                .copied()
                .collect();
            let packed =
                pack::withdrawals(family, encoding, &withdraw, s.max_len).and_then(|mut w| {
                    w.extend(pack::announcements(family, &attrs, &announce, s.max_len)?);
                    Ok(w)
                });
            match packed {
                Ok(packed) => frames.extend(packed),
                Err(e) => warn!(peer = %p.cfg.name, "cannot encode UPDATEs for {family}: {e}"),
            }
        }
    }
    if !s.end_of_rib_sent {
        s.end_of_rib_sent = true;
        for family in &families {
            match pack::end_of_rib(*family, Encoding::for_family(*family, s.next_hop)) {
                Ok(eor) => frames.push(eor),
                Err(e) => warn!(peer = %p.cfg.name, "cannot encode End-of-RIB: {e}"),
            }
        }
    }
    if !frames.is_empty() {
        let _ = p.commands.send(Command::Send {
            epoch: s.epoch,
            frames,
        });
    }
}

fn snapshot(p: &PeerEntry) -> PeerSnapshot {
    PeerSnapshot {
        name: p.cfg.name.clone(),
        address: p.cfg.address,
        asn: p.cfg.asn,
        state: p.state,
        established_since: p.session.as_ref().map(|s| s.since),
        last_error: p.last_error.clone(),
        negotiated: p.session.as_ref().map(|s| s.negotiated.clone()),
        received: p.adj_in.received(),
        accepted: p.adj_in.accepted(),
        advertised: p.adj_out.advertised(),
        stale: p.stale_until.is_some(),
        refreshes_answered: p.refreshes_answered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(peers: Vec<PeerConfig>) -> SpeakerConfig {
        SpeakerConfig {
            asn: 65010,
            router_id: std::net::Ipv4Addr::new(192, 0, 2, 1),
            listen: None,
            peers,
            graceful_restart: None,
            export: Vec::new(),
            selection_deferral: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn converged_comes_at_once_without_peers() {
        let (handle, mut events) = Speaker::start(config(Vec::new())).await.unwrap();
        assert_eq!(events.recv().await, Some(RouteEvent::Converged));
        handle.shutdown(Shutdown::Graceful).await.unwrap();
        assert_eq!(events.recv().await, None, "nothing after it");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deferral_timer_ends_the_wait_for_a_peer_that_never_comes() {
        let mut peer = PeerConfig::new("tor1", "192.0.2.0".parse().unwrap(), 65001);
        peer.passive = true;
        let (handle, mut events) = Speaker::start(config(vec![peer])).await.unwrap();
        let early = tokio::time::timeout(Duration::from_secs(59), events.recv()).await;
        assert!(
            early.is_err(),
            "nothing before the deferral timer: {early:?}"
        );
        assert_eq!(events.recv().await, Some(RouteEvent::Converged));
        // Exactly once.
        let later = tokio::time::timeout(Duration::from_secs(600), events.recv()).await;
        assert!(later.is_err(), "{later:?}");
        handle.shutdown(Shutdown::Graceful).await.unwrap();
    }
}
