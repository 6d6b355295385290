//! The route programmer task: it owns the desired state, the view of the kernel and the netlink
//! sockets, and takes messages through a [`ProgrammerHandle`]. Every wake-up (a command, kernel
//! events, the resync timer) first drains whatever else is ready, then reconciles once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use netlink_packet_route::RouteNetlinkMessage;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::desired::{self, Desired, Owner};
use super::kernel::{Hop, HopSets, KernelView, Route, RouteKey, RouteTarget};
use super::messages;
use super::netlink::{self, Event, Events, Netlink, NetlinkError};
use super::objects::NextHopKeeper;
use super::reconcile::{self, Complete, Op, Ownership};
use super::types::{
    DataplaneConfig, DesiredEndpoint, EndpointStatus, LearnedRoute, LearnedRoutes, ProgrammedRoute,
    RouteEvent, Snapshot,
};
use super::{HashMap, HashSet};

/// Commands queued before the task applies back-pressure.
const COMMAND_QUEUE: usize = 4096;

/// The most learned routes one incremental reconcile takes: a table of 100,000 is written in
/// rounds, between which kernel events and queries are taken, and memory stays bounded.
const LEARNED_ROUND: usize = 8192;

/// A failure to start or reach the programmer.
#[derive(Debug, thiserror::Error)]
pub enum ProgrammerError {
    /// Opening the sockets or the first read of the kernel failed.
    #[error("cannot start the route programmer: {0}")]
    Start(#[from] NetlinkError),
    /// The task has stopped.
    #[error("the route programmer has stopped")]
    Stopped,
}

enum Command {
    SetEndpoints(Vec<DesiredEndpoint>),
    RemoveEndpoints(Vec<String>),
    SetLearned(Vec<LearnedRoute>),
    RemoveLearned(Vec<IpNet>),
    DesiredComplete,
    LearnedComplete,
    Resync(oneshot::Sender<()>),
    Snapshot(oneshot::Sender<Snapshot>),
    Routes(oneshot::Sender<Vec<ProgrammedRoute>>),
    Shutdown(oneshot::Sender<()>),
}

/// How the daemon (and skog-bgp's route events) talk to the programmer.
#[derive(Debug, Clone)]
pub struct ProgrammerHandle {
    tx: mpsc::Sender<Command>,
}

impl ProgrammerHandle {
    async fn send(&self, cmd: Command) -> Result<(), ProgrammerError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| ProgrammerError::Stopped)
    }

    async fn ask<T>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ProgrammerError> {
        let (tx, rx) = oneshot::channel();
        self.send(cmd(tx)).await?;
        rx.await.map_err(|_| ProgrammerError::Stopped)
    }

    /// Adds or replaces a local endpoint.
    pub async fn set_endpoint(&self, endpoint: DesiredEndpoint) -> Result<(), ProgrammerError> {
        self.send(Command::SetEndpoints(vec![endpoint])).await
    }

    /// Adds or replaces many local endpoints in one message (the datastore's initial load).
    pub async fn set_endpoints(
        &self,
        endpoints: Vec<DesiredEndpoint>,
    ) -> Result<(), ProgrammerError> {
        self.send(Command::SetEndpoints(endpoints)).await
    }

    /// Removes a local endpoint (its routes and entries go).
    pub async fn remove_endpoint(&self, id: &str) -> Result<(), ProgrammerError> {
        self.send(Command::RemoveEndpoints(vec![id.into()])).await
    }

    /// Removes many local endpoints in one message.
    pub async fn remove_endpoints(&self, ids: Vec<String>) -> Result<(), ProgrammerError> {
        self.send(Command::RemoveEndpoints(ids)).await
    }

    /// Adds or replaces a route learned over BGP (its next hops replace the previous ones).
    pub async fn set_learned_route(&self, route: LearnedRoute) -> Result<(), ProgrammerError> {
        self.send(Command::SetLearned(vec![route])).await
    }

    /// Removes a route learned over BGP.
    pub async fn remove_learned_route(&self, prefix: IpNet) -> Result<(), ProgrammerError> {
        self.send(Command::RemoveLearned(vec![prefix])).await
    }

    /// Adds or replaces many learned routes in one message (a burst from BGP).
    pub async fn set_learned_routes(
        &self,
        routes: Vec<LearnedRoute>,
    ) -> Result<(), ProgrammerError> {
        self.send(Command::SetLearned(routes)).await
    }

    /// Removes many learned routes in one message.
    pub async fn remove_learned_routes(&self, prefixes: Vec<IpNet>) -> Result<(), ProgrammerError> {
        self.send(Command::RemoveLearned(prefixes)).await
    }

    /// Says the desired endpoints are complete (the datastore's initial load is done): from
    /// now on, endpoint routes and neighbour entries of ours that are not desired are deleted.
    /// Until then nothing is deleted, so a restart keeps the dataplane as it was.
    pub async fn desired_complete(&self) -> Result<(), ProgrammerError> {
        self.send(Command::DesiredComplete).await
    }

    /// Says the learned routes are complete (BGP has converged after start, or there is no
    /// BGP): from now on, learned routes of ours that are not desired are deleted. Until then
    /// the routes a previous run installed keep forwarding (graceful restart).
    pub async fn learned_complete(&self) -> Result<(), ProgrammerError> {
        self.send(Command::LearnedComplete).await
    }

    /// Re-reads the kernel and repairs any drift; returns when done.
    pub async fn resync(&self) -> Result<(), ProgrammerError> {
        self.ask(Command::Resync).await
    }

    /// The state after every command sent before has been applied.
    pub async fn snapshot(&self) -> Result<Snapshot, ProgrammerError> {
        self.ask(Command::Snapshot).await
    }

    /// Our routes as the kernel has them, after every command sent before has been applied.
    pub async fn routes(&self) -> Result<Vec<ProgrammedRoute>, ProgrammerError> {
        self.ask(Command::Routes).await
    }

    /// Stops the task, leaving the kernel as it is.
    pub async fn shutdown(&self) -> Result<(), ProgrammerError> {
        self.ask(Command::Shutdown).await
    }
}

/// Starting the programmer.
#[derive(Debug)]
pub struct Programmer;

impl Programmer {
    /// Opens the netlink sockets in the calling thread's network namespace, adopts what the
    /// kernel holds, and spawns the task on the current tokio runtime. Local endpoint routes to
    /// announce or withdraw are sent to `route_events`.
    pub async fn start(
        cfg: DataplaneConfig,
        route_events: mpsc::UnboundedSender<RouteEvent>,
    ) -> Result<(ProgrammerHandle, JoinHandle<()>), ProgrammerError> {
        // Subscribe before the first dump, so no change between the two is missed.
        let mut events = Events::open()?;
        let nl = Netlink::open(cfg.batch_size, cfg.batch_timeout)?;
        events.skip_echoes_of(nl.ports());
        let own = Ownership {
            route_protocols: [cfg.endpoint_protocol, cfg.learned_protocol],
            neigh_protocol: cfg.endpoint_protocol,
        };
        let mut hop_sets = HopSets::default();
        let view = nl
            .read_kernel(&own.route_protocols, cfg.learned_protocol, &mut hop_sets)
            .await?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let nexthops = NextHopKeeper::new(cfg.learned_protocol);
        let task = Task {
            cfg,
            own,
            nl,
            events,
            events_open: true,
            rx,
            route_events,
            endpoints: BTreeMap::new(),
            learned: LearnedRoutes::default(),
            view,
            desired: Desired::default(),
            complete: Complete::default(),
            sysctls_done: HashSet::default(),
            apply_errors: BTreeMap::new(),
            announced: BTreeSet::new(),
            stats: Stats::default(),
            dirty: false,
            dirty_learned: BTreeSet::new(),
            dirty_routes: HashSet::default(),
            hop_sets,
            nexthops,
            withdrawn: HashSet::default(),
            next_round: None,
            resync_due: false,
            replies: Vec::new(),
        };
        let join = tokio::spawn(task.run());
        Ok((ProgrammerHandle { tx }, join))
    }
}

#[derive(Debug, Default)]
struct Stats {
    kernel_writes: u64,
    resyncs: u64,
    last_apply: Option<Duration>,
    last_resync: Option<Duration>,
}

/// One round of the incremental path: the routes looked at, and the writes they need.
struct Round {
    keys: Vec<RouteKey>,
    ops: Vec<Op>,
}

enum Reply {
    Resync(oneshot::Sender<()>),
    Snapshot(oneshot::Sender<Snapshot>),
    Routes(oneshot::Sender<Vec<ProgrammedRoute>>),
    Shutdown(oneshot::Sender<()>),
}

struct Task {
    cfg: DataplaneConfig,
    own: Ownership,
    nl: Netlink,
    events: Events,
    events_open: bool,
    rx: mpsc::Receiver<Command>,
    route_events: mpsc::UnboundedSender<RouteEvent>,
    endpoints: BTreeMap<String, DesiredEndpoint>,
    learned: LearnedRoutes,
    view: KernelView,
    desired: Desired,
    complete: Complete,
    /// Interfaces (by index) whose sysctls are written; cleared by a resync to re-assert them.
    sysctls_done: HashSet<u32>,
    /// The last reconcile's failures, by owner.
    apply_errors: BTreeMap<Owner, String>,
    announced: BTreeSet<IpNet>,
    stats: Stats,
    /// Something only a full recompute handles (endpoints, links, neighbours, completeness).
    dirty: bool,
    /// Learned routes changed since the last reconcile (handled one by one, in address order).
    dirty_learned: BTreeSet<IpNet>,
    /// Routes the kernel reported changed since the last reconcile.
    dirty_routes: HashSet<RouteKey>,
    /// The shared next-hop sets of the desired state and the view.
    hop_sets: HopSets,
    /// Which nexthop object serves each set of next hops of learned routes.
    nexthops: NextHopKeeper,
    /// Learned routes this run installed and BGP then withdrew before it converged: they go
    /// at once, unlike the ones a previous run left.
    withdrawn: HashSet<RouteKey>,
    /// The next round of the incremental path, planned while the last one was written.
    next_round: Option<Round>,
    resync_due: bool,
    replies: Vec<Reply>,
}

impl Task {
    async fn run(mut self) {
        let mut next_resync = tokio::time::Instant::now() + jittered(self.cfg.resync_interval);
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => return,
                },
                event = self.events.next(), if self.events_open => match event {
                    Some(event) => self.on_event(event),
                    None => {
                        tracing::error!("netlink event socket closed; relying on periodic resyncs");
                        self.events_open = false;
                    }
                },
                () = tokio::time::sleep_until(next_resync) => {
                    self.resync_due = true;
                    next_resync = tokio::time::Instant::now() + jittered(self.cfg.resync_interval);
                }
                // Learned routes left over from the last round: go on at once.
                () = std::future::ready(()), if self.routes_pending() => {}
            }
            self.drain_ready();
            if self.resync_due {
                self.resync().await;
            } else if self.dirty {
                self.reconcile().await;
            } else if self.routes_pending() || !self.dirty_routes.is_empty() {
                self.reconcile_routes().await;
            }
            if self.send_replies() {
                return;
            }
        }
    }

    /// Whether learned routes wait to be planned or written.
    fn routes_pending(&self) -> bool {
        !self.dirty_learned.is_empty() || self.next_round.is_some()
    }

    /// Takes every command and event that is already waiting, so one reconcile covers them all.
    fn drain_ready(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            self.on_command(cmd);
        }
        while self.events_open {
            match self.events.try_next() {
                Some(Some(event)) => self.on_event(event),
                Some(None) => self.events_open = false,
                None => break,
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::SetEndpoints(eps) => {
                for ep in eps {
                    self.endpoints.insert(ep.id.clone(), ep);
                    self.dirty = true;
                }
            }
            Command::RemoveEndpoints(ids) => {
                for id in ids {
                    self.dirty |= self.endpoints.remove(&id).is_some();
                }
            }
            Command::SetLearned(routes) => {
                for route in routes {
                    self.dirty_learned.insert(route.prefix);
                    self.learned.insert(route.prefix, route.next_hops);
                }
            }
            Command::RemoveLearned(prefixes) => {
                for prefix in prefixes {
                    if self.learned.remove(&prefix).is_some() {
                        self.dirty_learned.insert(prefix);
                    }
                }
            }
            Command::DesiredComplete => {
                self.complete.endpoints = true;
                self.dirty = true;
            }
            Command::LearnedComplete => {
                self.complete.learned = true;
                self.withdrawn.clear();
                self.dirty = true;
            }
            Command::Resync(reply) => {
                self.resync_due = true;
                self.replies.push(Reply::Resync(reply));
            }
            Command::Snapshot(reply) => self.replies.push(Reply::Snapshot(reply)),
            Command::Routes(reply) => self.replies.push(Reply::Routes(reply)),
            Command::Shutdown(reply) => self.replies.push(Reply::Shutdown(reply)),
        }
    }

    fn on_event(&mut self, event: Event) {
        let inner = match event {
            Event::Overrun => {
                tracing::warn!("kernel notifications lost (socket overrun); full resync");
                self.resync_due = true;
                return;
            }
            Event::NextHopChanged { id, object } => {
                // Someone replaced an object of ours: the routes pointing at it follow it.
                let ours = self.view.nexthops.as_ref().and_then(|o| o.get(&id));
                if ours.is_some_and(|current| object.as_ref() != Some(current)) {
                    tracing::warn!("nexthop object {id} was changed; full resync");
                    self.resync_due = true;
                }
                return;
            }
            Event::NextHopDeleted(id) => {
                // Someone deleted an object of ours, and the kernel the routes pointing at it.
                if self
                    .view
                    .nexthops
                    .as_ref()
                    .is_some_and(|o| o.contains_key(&id))
                {
                    tracing::warn!("nexthop object {id} was deleted; full resync");
                    self.resync_due = true;
                }
                return;
            }
            Event::Changed(inner) => inner,
        };
        let protocols = self.own.route_protocols;
        match inner {
            RouteNetlinkMessage::NewLink(link) => {
                let Some(link) = messages::link_from_kernel(&link) else {
                    return;
                };
                let was_running = self
                    .view
                    .links
                    .get(&link.ifindex)
                    .is_some_and(|l| l.running);
                if link.running && !was_running {
                    // The kernel drops a device's routes and entries (silently for IPv4) when
                    // it goes down: rewrite them all once it is back.
                    self.view
                        .routes
                        .retain(|_, r| !r.ifindexes().any(|i| i == link.ifindex));
                    self.view.neighs.retain(|k, _| k.ifindex != link.ifindex);
                    self.resync_due |= self.carries_learned_routes(&link.name);
                } else if was_running && !link.running {
                    // Going down, it takes its nexthop objects with it, silently.
                    self.resync_due |= self.carries_learned_routes(&link.name);
                }
                if self.view.links.get(&link.ifindex) != Some(&link) {
                    self.view.links.insert(link.ifindex, link);
                    self.dirty = true;
                }
            }
            RouteNetlinkMessage::DelLink(link) => {
                let ifindex = link.header.index;
                if let Some(gone) = self.view.links.get(&ifindex) {
                    self.resync_due |= self.carries_learned_routes(&gone.name);
                }
                self.view.forget_link(ifindex);
                self.sysctls_done.remove(&ifindex);
                self.dirty = true;
            }
            RouteNetlinkMessage::NewRoute(route) => {
                if let Some((key, route)) =
                    messages::route_from_kernel(&route, &protocols, self.view.nexthops.as_ref())
                    && self.view.routes.get(&key) != Some(&route)
                {
                    let route = self.hop_sets.route(route);
                    self.view.routes.insert(key, route);
                    self.dirty_routes.insert(key);
                }
            }
            RouteNetlinkMessage::DelRoute(route) => {
                if let Some((key, route)) =
                    messages::route_from_kernel(&route, &protocols, self.view.nexthops.as_ref())
                    && self
                        .view
                        .routes
                        .get(&key)
                        .is_some_and(|r| r.protocol == route.protocol)
                {
                    self.view.routes.remove(&key);
                    self.dirty_routes.insert(key);
                }
            }
            RouteNetlinkMessage::NewNeighbour(neigh) => {
                if let Some((key, neigh)) = messages::neigh_from_kernel(&neigh)
                    && self.view.neighs.insert(key, neigh) != Some(neigh)
                    && self.neigh_matters(&key, &neigh)
                {
                    self.dirty = true;
                }
            }
            RouteNetlinkMessage::DelNeighbour(neigh) => {
                if let Some((key, neigh)) = messages::neigh_from_kernel(&neigh)
                    && self.view.neighs.remove(&key).is_some()
                    && self.neigh_matters(&key, &neigh)
                {
                    self.dirty = true;
                }
            }
            _ => {}
        }
    }

    /// Whether learned routes may go through the link `name` without the view knowing: the
    /// view holds our writes, and a learned gateway's interface is the kernel's choice, so
    /// when an uplink (any link not an endpoint's tap) goes down, comes back or goes, only a
    /// re-read tells which of our routes and nexthop objects the kernel dropped with it. That
    /// holds for routes a previous run left (graceful restart) as much as for ours.
    fn carries_learned_routes(&self, name: &str) -> bool {
        let learned = self.cfg.learned_protocol;
        let any_learned = !self.learned.is_empty()
            || self.view.nexthops.as_ref().is_some_and(|o| !o.is_empty())
            || self.view.routes.values().any(|r| r.protocol == learned);
        any_learned && !self.endpoints.values().any(|e| e.interface == name)
    }

    fn neigh_matters(&self, key: &super::kernel::NeighKey, neigh: &super::kernel::Neigh) -> bool {
        neigh.protocol == self.own.neigh_protocol || self.desired.neighs.contains_key(key)
    }

    async fn resync(&mut self) {
        self.resync_due = false;
        let started = Instant::now();
        match self
            .nl
            .read_kernel(
                &self.own.route_protocols,
                self.cfg.learned_protocol,
                &mut self.hop_sets,
            )
            .await
        {
            Ok(view) => {
                self.view = view;
                self.sysctls_done.clear();
                self.nexthops.resynced(self.view.nexthops.as_ref());
            }
            Err(e) => tracing::error!("resync: reading the kernel failed: {e}"),
        }
        self.reconcile().await;
        self.hop_sets.prune();
        self.stats.resyncs += 1;
        self.stats.last_resync = Some(started.elapsed());
    }

    async fn reconcile(&mut self) {
        self.dirty = false;
        // A full plan covers the keys of a planned round too.
        self.next_round = None;
        self.dirty_learned.clear();
        self.dirty_routes.clear();
        let links = self.view.links_by_name();
        self.desired = desired::compute(
            &self.endpoints,
            &self.learned,
            &links,
            &self.cfg,
            &mut self.hop_sets,
        );
        drop(links);
        self.prepare_nexthops().await;
        let mut errors = BTreeMap::new();
        for tap in &self.desired.taps {
            if self.sysctls_done.contains(&tap.ifindex) {
                continue;
            }
            match netlink::write_sysctls(tap, self.cfg.route_localnet) {
                Ok(()) => {
                    self.sysctls_done.insert(tap.ifindex);
                }
                Err(e) => {
                    errors.insert(Owner::Endpoint(tap.endpoint.clone()), e.to_string());
                }
            }
        }
        let ops = reconcile::plan(&self.desired, &self.view, self.own, self.complete);
        for (op, error) in self.write(&ops).await {
            match reconcile::owner_of(&op, &self.desired) {
                Some(owner) => {
                    errors.insert(owner.clone(), error);
                }
                None => tracing::warn!("{error}"),
            }
        }
        for (owner, error) in &errors {
            tracing::warn!("{owner:?}: {error}");
        }
        self.apply_errors = errors;
        self.collect_nexthops().await;
        self.announce();
    }

    /// Sends `ops`, records in the view what succeeded, and returns what failed, with why.
    async fn write(&mut self, ops: &[Op]) -> Vec<(Op, String)> {
        if ops.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let outcomes = self.nl.apply(ops).await;
        self.settle(ops, outcomes, started)
    }

    /// Gives every set of next hops of the desired state a nexthop object (creating or
    /// regrouping objects as needed), and each desired gateway route the id of its set's.
    async fn prepare_nexthops(&mut self) {
        let routes = self
            .desired
            .routes
            .iter()
            .map(|(key, (route, _))| (key, route));
        let sets = self.sets_with_hints(routes);
        self.prepare_sets(&sets).await;
        let mut ids = self.nexthops.ids_by_set();
        for (route, _) in self.desired.routes.values_mut() {
            if let RouteTarget::Gateways(hops) = &route.target {
                route.nexthop = ids.of(hops);
            }
        }
    }

    /// Gives the gateway routes `ops` write that have no nexthop object yet (their sets were
    /// new when the round was planned) the object of their set, creating it; in the desired
    /// state too. A write the kernel's route already satisfies with that object goes: after a
    /// restart, a set takes back the object its routes point at, and the routes stay as they
    /// are.
    async fn prepare_round_nexthops(&mut self, ops: &mut Vec<Op>) {
        let unknown = ops.iter().filter_map(|op| match op {
            Op::ReplaceRoute(key, route) if route.nexthop.is_none() => Some((key, route)),
            _ => None,
        });
        let sets = self.sets_with_hints(unknown);
        if sets.is_empty() {
            return;
        }
        self.prepare_sets(&sets).await;
        let mut ids = self.nexthops.ids_by_set();
        ops.retain_mut(|op| {
            let Op::ReplaceRoute(key, route) = op else {
                return true;
            };
            if route.nexthop.is_some() {
                return true;
            }
            let RouteTarget::Gateways(hops) = &route.target else {
                return true;
            };
            let Some(id) = ids.of(hops) else {
                return true;
            };
            route.nexthop = Some(id);
            if let Some((desired, _)) = self.desired.routes.get_mut(key) {
                desired.nexthop = Some(id);
            }
            !self
                .view
                .routes
                .get(key)
                .is_some_and(|have| route.satisfied_by(have))
        });
    }

    /// The distinct next-hop sets of these gateway routes (shared: a handful, however many
    /// routes), found by their allocations. A set without an object yet comes with a hint:
    /// the object one of its routes points at in the kernel (after a restart, its own).
    fn sets_with_hints<'a>(
        &self,
        routes: impl Iterator<Item = (&'a RouteKey, &'a Route)>,
    ) -> Vec<SetToPrepare> {
        let mut sets: Vec<SetToPrepare> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::default();
        for (key, route) in routes {
            let RouteTarget::Gateways(hops) = &route.target else {
                continue;
            };
            let at = match sets.last() {
                Some(last) if Arc::ptr_eq(&last.hops, hops) => sets.len() - 1,
                _ => *index
                    .entry(Arc::as_ptr(hops).cast::<Hop>() as usize)
                    .or_insert_with(|| {
                        sets.push(SetToPrepare {
                            hops: Arc::clone(hops),
                            hint: None,
                            wants_hint: self.nexthops.id(hops).is_none(),
                        });
                        sets.len() - 1
                    }),
            };
            let set = &mut sets[at];
            if set.wants_hint && set.hint.is_none() {
                set.hint = self.view.routes.get(key).and_then(|r| r.nexthop);
            }
        }
        sets
    }

    /// Has the keeper give each of `sets` an object (creating or regrouping objects); an
    /// unanswered request makes a resync due.
    async fn prepare_sets(&mut self, sets: &[SetToPrepare]) {
        let Some(objects) = &mut self.view.nexthops else {
            return;
        };
        let sets: Vec<(&[Hop], Option<u32>)> =
            sets.iter().map(|set| (&set.hops[..], set.hint)).collect();
        self.nexthops.prepare(&sets, objects, &self.nl).await;
        self.resync_due |= self.nexthops.take_resync_wanted();
    }

    /// Deletes our nexthop objects that no route of ours, desired or in the kernel, points at.
    async fn collect_nexthops(&mut self) {
        let Some(objects) = &mut self.view.nexthops else {
            return;
        };
        let mut used = HashSet::default();
        let mut last = None;
        let routes = self
            .desired
            .routes
            .values()
            .map(|(route, _)| route)
            .chain(self.view.routes.values());
        for id in routes.filter_map(|route| route.nexthop) {
            if last != Some(id) {
                used.insert(id);
                last = Some(id);
            }
        }
        self.nexthops.collect(&used, objects, &self.nl).await;
        self.resync_due |= self.nexthops.take_resync_wanted();
    }

    /// Records in the view what of `ops` (written since `started`) succeeded, and returns
    /// what failed, with why.
    fn settle(
        &mut self,
        ops: &[Op],
        outcomes: Vec<Result<(), NetlinkError>>,
        started: Instant,
    ) -> Vec<(Op, String)> {
        if ops.is_empty() {
            return Vec::new();
        }
        self.stats.last_apply = Some(started.elapsed());
        self.stats.kernel_writes += ops.len() as u64;
        let mut failed = Vec::new();
        for (op, outcome) in ops.iter().zip(outcomes) {
            match outcome {
                Ok(()) => reconcile::record(&mut self.view, op),
                Err(e) => {
                    if e.unanswered() {
                        self.resync_due = true;
                    }
                    failed.push((op.clone(), format!("{}: {e}", describe(op))));
                }
            }
        }
        failed
    }

    /// The incremental path: only learned routes changed, or the kernel reported changes of
    /// single routes. Each concerned route is brought in line on its own, at most
    /// [`LEARNED_ROUND`] learned routes at a time; nothing is recomputed for the others. While
    /// a round is written (on the netlink tasks), the next one is planned.
    async fn reconcile_routes(&mut self) {
        let Round { keys, mut ops } = match self.next_round.take() {
            Some(round) => round,
            None => self.plan_round(&[]),
        };
        self.prepare_round_nexthops(&mut ops).await;
        let started = Instant::now();
        let nl = self.nl.clone();
        let write = tokio::spawn(async move {
            let outcomes = nl.apply(&ops).await;
            (ops, outcomes)
        });
        if !self.dirty_learned.is_empty() {
            self.next_round = Some(self.plan_round(&keys));
        }
        let failed = match write.await {
            Ok((ops, outcomes)) => self.settle(&ops, outcomes, started),
            Err(e) => {
                tracing::error!("the netlink write task failed: {e}; full resync");
                self.resync_due = true;
                Vec::new()
            }
        };
        // The errors of the routes looked at are the ones of this round.
        for key in &keys {
            if let Some((_, owner @ Owner::Learned(_))) = self.desired.routes.get(key) {
                self.apply_errors.remove(owner);
            }
        }
        for (op, error) in failed {
            match reconcile::owner_of(&op, &self.desired) {
                Some(owner) => {
                    tracing::warn!("{owner:?}: {error}");
                    self.apply_errors.insert(owner.clone(), error);
                }
                None => tracing::warn!("{error}"),
            }
        }
        // Endpoint routes among them may have come or gone (a tap's route deleted by hand).
        let endpoint_route = |k: &RouteKey| {
            matches!(self.desired.routes.get(k), Some((_, Owner::Endpoint(_))))
                || self.announced.contains(&k.dst)
        };
        if keys.iter().any(endpoint_route) {
            self.announce();
        }
    }

    /// Takes the routes the kernel reported changed and up to [`LEARNED_ROUND`] changed
    /// learned routes, brings their desired state up to date, and plans their writes. Routes
    /// among `in_flight` (sorted: the keys of the round being written) stay for a later round:
    /// planned against a view that does not hold that write yet, they could be planned wrong
    /// (a route changed and changed back would look unchanged).
    fn plan_round(&mut self, in_flight: &[RouteKey]) -> Round {
        let is_in_flight = |key: &RouteKey| in_flight.binary_search(key).is_ok();
        let links = self.view.links_by_name();
        let mut keys: HashSet<RouteKey> = std::mem::take(&mut self.dirty_routes);
        keys.retain(|key| {
            let later = is_in_flight(key);
            if later {
                self.dirty_routes.insert(*key);
            }
            !later
        });
        let mut later = Vec::new();
        // In address order: the kernel inserts neighbouring prefixes into its tree much faster
        // than scattered ones (the path down the tree stays in cache).
        let round = std::iter::from_fn(|| self.dirty_learned.pop_first()).take(LEARNED_ROUND);
        let mut ids = self.nexthops.ids_by_set();
        for prefix in round.collect::<Vec<_>>() {
            if is_in_flight(&desired::learned_key(prefix, &self.cfg)) {
                later.push(prefix);
                continue;
            }
            let route = self.learned.get(&prefix).map(|hops| &hops[..]);
            let key = desired::update_learned(
                &mut self.desired,
                prefix,
                route,
                &links,
                &self.cfg,
                &mut self.hop_sets,
            );
            // The object of its set, if the set is known (else given before the write).
            if let Some((route, _)) = self.desired.routes.get_mut(&key)
                && let RouteTarget::Gateways(hops) = &route.target
            {
                route.nexthop = ids.of(hops);
            }
            if !self.complete.learned {
                if route.is_some() {
                    self.withdrawn.remove(&key);
                } else {
                    self.withdrawn.insert(key);
                }
            }
            keys.insert(key);
        }
        drop(links);
        self.dirty_learned.extend(later);
        let mut keys: Vec<RouteKey> = keys.into_iter().collect();
        keys.sort_unstable();
        let ops = reconcile::plan_routes(
            &self.desired,
            &self.view,
            self.own,
            self.complete,
            &keys,
            &self.withdrawn,
        );
        Round { keys, ops }
    }

    fn announce(&mut self) {
        let now = reconcile::announceable(&self.desired, &self.view);
        let withdrawn = self
            .announced
            .difference(&now)
            .map(|p| RouteEvent::Withdraw(*p));
        let announced = now
            .difference(&self.announced)
            .map(|p| RouteEvent::Announce(*p));
        for event in withdrawn.chain(announced) {
            // The daemon may not listen (tests, a node without BGP): that is fine.
            let _ = self.route_events.send(event);
        }
        self.announced = now;
    }

    /// Answers the queries taken since the last reconcile; true when asked to shut down.
    fn send_replies(&mut self) -> bool {
        let mut stop = false;
        for reply in std::mem::take(&mut self.replies) {
            match reply {
                Reply::Resync(tx) => {
                    let _ = tx.send(());
                }
                Reply::Snapshot(tx) => {
                    let _ = tx.send(self.snapshot());
                }
                Reply::Routes(tx) => {
                    let _ = tx.send(self.routes());
                }
                Reply::Shutdown(tx) => {
                    let _ = tx.send(());
                    stop = true;
                }
            }
        }
        stop
    }

    fn routes(&self) -> Vec<ProgrammedRoute> {
        let name = |ifindex: u32| {
            self.view
                .links
                .get(&ifindex)
                .map_or_else(|| format!("if{ifindex}"), |l| l.name.clone())
        };
        let mut routes: Vec<ProgrammedRoute> = self
            .view
            .routes
            .iter()
            .map(|(key, route)| ProgrammedRoute {
                prefix: key.dst,
                next_hops: match &route.target {
                    RouteTarget::Device(ifindex) => vec![format!("dev {}", name(*ifindex))],
                    RouteTarget::Gateways(hops) => hops
                        .iter()
                        .map(|h| match h.ifindex {
                            Some(i) => format!("via {} dev {}", h.gateway, name(i)),
                            None => format!("via {}", h.gateway),
                        })
                        .collect(),
                },
                learned: route.protocol == self.cfg.learned_protocol,
            })
            .collect();
        routes.sort_by_key(|r| (r.learned, r.prefix));
        routes
    }

    fn snapshot(&self) -> Snapshot {
        let endpoints = self
            .endpoints
            .values()
            .filter_map(|ep| {
                let check = self.desired.endpoints.get(&ep.id)?;
                let mut errors = check.problems.clone();
                errors.extend(
                    self.apply_errors
                        .get(&Owner::Endpoint(ep.id.clone()))
                        .cloned(),
                );
                Some(EndpointStatus {
                    id: ep.id.clone(),
                    interface: ep.interface.clone(),
                    tap: check.tap,
                    errors,
                })
            })
            .collect();
        let learned_problems = self
            .desired
            .learned_problems
            .iter()
            .map(|(prefix, problem)| format!("{prefix}: {problem}"))
            .chain(
                self.apply_errors
                    .iter()
                    .filter_map(|(owner, error)| match owner {
                        Owner::Learned(prefix) => Some(format!("{prefix}: {error}")),
                        Owner::Endpoint(_) => None,
                    }),
            )
            .collect();
        Snapshot {
            endpoints,
            routes_programmed: self.view.routes.len(),
            learned_routes: self.learned.len(),
            learned_problems,
            kernel_writes: self.stats.kernel_writes,
            nexthop_writes: self.nexthops.writes(),
            nexthop_objects: self
                .view
                .nexthops
                .as_ref()
                .map_or(0, |objects| objects.len()),
            resyncs: self.stats.resyncs,
            last_apply: self.stats.last_apply,
            last_resync: self.stats.last_resync,
        }
    }
}

/// A set of next hops for the keeper, with the object its routes point at in the kernel.
struct SetToPrepare {
    hops: Arc<[Hop]>,
    hint: Option<u32>,
    /// The keeper has no object for it yet.
    wants_hint: bool,
}

fn describe(op: &Op) -> String {
    match op {
        Op::ReplaceRoute(
            k,
            Route {
                nexthop: Some(id), ..
            },
        ) => format!(
            "route {} metric {} via nexthop object {id}",
            k.dst, k.metric
        ),
        Op::ReplaceRoute(k, _) => format!("route {} metric {}", k.dst, k.metric),
        Op::DeleteRoute(k, _) => format!("deleting route {} metric {}", k.dst, k.metric),
        Op::ReplaceNeigh(k, _) if k.proxy => {
            format!("proxy entry {} on ifindex {}", k.ip, k.ifindex)
        }
        Op::ReplaceNeigh(k, _) => format!("neighbour {} on ifindex {}", k.ip, k.ifindex),
        Op::DeleteNeigh(k) => format!("deleting neighbour {} on ifindex {}", k.ip, k.ifindex),
    }
}

/// `interval` give or take a tenth, so that hypervisors do not resync in step.
fn jittered(interval: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tenth = interval / 10;
    // A position in [0, 2 * tenth], from the clock's sub-second part.
    let offset = tenth.mul_f64(2.0 * f64::from(nanos % 1000) / 1000.0);
    (interval - tenth) + offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resyncs_are_jittered_within_a_tenth() {
        let interval = Duration::from_secs(90);
        for _ in 0..100 {
            let j = jittered(interval);
            assert!(
                j >= Duration::from_secs(81) && j <= Duration::from_secs(99),
                "{j:?}"
            );
        }
    }
}
