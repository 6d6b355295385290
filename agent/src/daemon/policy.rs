//! The policy task: owns the compiler's input ([`PolicyModel`]) and the nftables [`Applier`],
//! and keeps Skog's table in step with the datastore.
//!
//! Changes arrive as [`PolicyChange`]s; whatever is queued is taken together, so a burst is one
//! transaction. Nothing is applied before the datastore's first complete snapshot (the first
//! apply replaces the table atomically and so adopts what a previous run left). After that the
//! cheapest correct path is taken: selector membership alone becomes set element changes;
//! changed rules of policies already in force rewrite only their chains; anything else is a
//! full compile, of which the applier sends the difference. A periodic refresh repairs drift.
//! A failed apply leaves the previous rules in force and is retried on the next change or
//! refresh.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use skog_policy::compile::{policy_patch, selector_patch};
use skog_policy::model::{self as pm, PolicyModel};
use skog_policy::names::{Direction, FAMILY, TABLE, endpoint_chain, spoof_chain};
use skog_policy::ruleset::Ruleset;
use skog_policy::{Applier, ApplyOutcome, Nft, compile};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::api::types::PolicyShow;
use crate::metrics::Metrics;

/// A change to the compiler's input.
#[derive(Debug)]
pub enum PolicyChange {
    /// An endpoint of this node is new or changed (`Some`), or gone (`None`).
    Endpoint(String, Option<pm::Endpoint>),
    /// A policy (or profile) is new or changed, or no longer used.
    Policy(String, Option<pm::Policy>),
    /// A selector's membership changed.
    Selector {
        /// The selector's key.
        key: String,
        /// Networks that joined.
        added: Vec<IpNet>,
        /// Networks that left.
        removed: Vec<IpNet>,
    },
    /// No rule uses the selector any more.
    SelectorRemoved(String),
    /// The workload interface prefix changed.
    InterfacePrefix(String),
    /// The datastore delivered its first complete snapshot: rules may be applied.
    InSync,
}

/// A request to the policy task.
#[derive(Debug)]
pub enum PolicyRequest {
    /// Input changed.
    Change(PolicyChange),
    /// Answered once every change sent before is applied (or failed).
    Flush(oneshot::Sender<PolicyState>),
    /// The rules in force for one tap, as nft lists them, once every change sent before is
    /// applied.
    Show {
        /// The tap.
        interface: String,
        /// Where to answer.
        reply: oneshot::Sender<Result<PolicyShow, String>>,
    },
    /// The compiler's input, for `skogctl policy trace`.
    Model(oneshot::Sender<Arc<PolicyModel>>),
}

/// What the policy task reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// Whether a ruleset has been applied since start.
    pub applied: bool,
    /// Problems of the last compile (rules rejected, endpoints left out).
    pub problems: Vec<String>,
    /// The last apply error, if the last apply failed.
    pub last_error: Option<String>,
}

/// The node-wide settings the policy task starts with.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Workload interface prefix.
    pub interface_prefix: String,
    /// Metadata DNAT target.
    pub metadata: Option<SocketAddr>,
    /// How often to check the kernel's table for drift.
    pub refresh_interval: Duration,
}

/// Handle to the policy task.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    tx: mpsc::UnboundedSender<PolicyRequest>,
}

impl PolicyHandle {
    /// Sends a change (never blocks; the task takes changes in bursts).
    pub fn change(&self, change: PolicyChange) {
        if self.tx.send(PolicyRequest::Change(change)).is_err() {
            warn!("the policy task has stopped; change dropped");
        }
    }

    /// Waits until every change sent before is applied; returns the state then.
    pub async fn flush(&self) -> Option<PolicyState> {
        self.ask(PolicyRequest::Flush).await
    }

    /// The rules in force for `interface`.
    pub async fn show(&self, interface: String) -> Result<PolicyShow, String> {
        self.ask(|reply| PolicyRequest::Show { interface, reply })
            .await
            .unwrap_or_else(|| Err("the policy task has stopped".into()))
    }

    /// The compiler's input as it stands.
    pub async fn model(&self) -> Option<Arc<PolicyModel>> {
        self.ask(PolicyRequest::Model).await
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> PolicyRequest) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).ok()?;
        rx.await.ok()
    }
}

/// Starts the policy task on the current runtime.
pub fn start(
    nft: Nft,
    applier: Applier,
    settings: PolicySettings,
    metrics: Arc<Metrics>,
) -> (PolicyHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut model = PolicyModel::default();
    model.settings.interface_prefix = settings.interface_prefix;
    model.settings.metadata = settings.metadata;
    let task = Task {
        nft,
        applier,
        model: Arc::new(model),
        metrics,
        state: PolicyState::default(),
        in_sync: false,
        dirty: Dirty::default(),
        refresh_interval: settings.refresh_interval,
    };
    (PolicyHandle { tx }, tokio::spawn(task.run(rx)))
}

/// A request answered after the changes taken with it are applied.
enum Question {
    Flush(oneshot::Sender<PolicyState>),
    Show {
        interface: String,
        reply: oneshot::Sender<Result<PolicyShow, String>>,
    },
}

/// What changed since the last apply.
#[derive(Debug, Default)]
struct Dirty {
    /// Something only a full compile handles.
    full: bool,
    /// Policies whose rules changed.
    policies: BTreeSet<String>,
    /// Selectors whose membership changed.
    selectors: BTreeSet<String>,
}

impl Dirty {
    fn any(&self) -> bool {
        self.full || !self.policies.is_empty() || !self.selectors.is_empty()
    }
}

struct Task {
    /// For listing chains (`skogctl policy show`); the applier has its own.
    nft: Nft,
    applier: Applier,
    model: Arc<PolicyModel>,
    metrics: Arc<Metrics>,
    state: PolicyState,
    in_sync: bool,
    dirty: Dirty,
    refresh_interval: Duration,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<PolicyRequest>) {
        let mut refresh = tokio::time::interval(self.refresh_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        loop {
            let mut waiting = Vec::new();
            tokio::select! {
                request = rx.recv() => match request {
                    Some(r) => self.take(r, &mut waiting),
                    None => return,
                },
                _ = refresh.tick() => self.refresh().await,
            }
            while let Ok(r) = rx.try_recv() {
                self.take(r, &mut waiting);
            }
            if self.in_sync && self.dirty.any() {
                self.apply().await;
            }
            for question in waiting {
                self.answer(question);
            }
        }
    }

    /// Takes a request; a question waits for the apply of the changes taken with it.
    fn take(&mut self, request: PolicyRequest, waiting: &mut Vec<Question>) {
        match request {
            PolicyRequest::Change(change) => self.change(change),
            PolicyRequest::Model(reply) => {
                let _ = reply.send(Arc::clone(&self.model));
            }
            PolicyRequest::Flush(reply) => waiting.push(Question::Flush(reply)),
            PolicyRequest::Show { interface, reply } => {
                waiting.push(Question::Show { interface, reply });
            }
        }
    }

    fn answer(&self, question: Question) {
        match question {
            Question::Flush(reply) => {
                let _ = reply.send(self.state.clone());
            }
            Question::Show { interface, reply } => {
                let shown = self.show(&interface);
                let nft = self.nft.clone();
                // Listing runs nft; do it off the task so changes are not held up.
                tokio::spawn(async move {
                    let _ = reply.send(match shown {
                        Ok(chains) => list_chains(nft, interface, chains).await,
                        Err(e) => Err(e),
                    });
                });
            }
        }
    }

    fn change(&mut self, change: PolicyChange) {
        let model = Arc::make_mut(&mut self.model);
        match change {
            PolicyChange::Endpoint(id, ep) => {
                match ep {
                    Some(ep) => model.endpoints.insert(id, ep),
                    None => model.endpoints.remove(&id),
                };
                self.dirty.full = true;
            }
            PolicyChange::Policy(id, policy) => match policy {
                Some(p) => {
                    let existed = model.policies.insert(id.clone(), p).is_some();
                    if existed {
                        self.dirty.policies.insert(id);
                    } else {
                        self.dirty.full = true;
                    }
                }
                None => {
                    model.policies.remove(&id);
                    self.dirty.full = true;
                }
            },
            PolicyChange::Selector {
                key,
                added,
                removed,
            } => {
                let members = model.selectors.entry(key.clone()).or_default();
                for net in removed {
                    members.remove(&net);
                }
                members.extend(added);
                self.dirty.selectors.insert(key);
            }
            PolicyChange::SelectorRemoved(key) => {
                model.selectors.remove(&key);
                self.dirty.full = true;
            }
            PolicyChange::InterfacePrefix(prefix) => {
                model.settings.interface_prefix = prefix;
                self.dirty.full = true;
            }
            PolicyChange::InSync => {
                self.in_sync = true;
                self.dirty.full = true;
            }
        }
    }

    /// Applies what changed, by the cheapest correct path.
    async fn apply(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let started = Instant::now();
        let result = match self.applier.applied().cloned() {
            Some(current) if !dirty.full => self.apply_patches(&dirty, &current).await,
            _ => self.apply_full().await,
        };
        let elapsed = started.elapsed();
        match result {
            Ok(outcome) => {
                if outcome != ApplyOutcome::Unchanged {
                    self.metrics
                        .policy_apply_seconds
                        .observe(elapsed.as_secs_f64());
                    debug!(?outcome, ?elapsed, "rules applied");
                }
                self.state.applied = true;
                self.state.last_error = None;
            }
            Err(e) => {
                error!(error = %e, "applying security-group rules failed; previous rules stay in force");
                self.metrics.count_error("nft");
                self.state.last_error = Some(e.to_string());
                // Retry everything on the next change or refresh.
                self.dirty.full = true;
            }
        }
    }

    async fn apply_full(&mut self) -> Result<ApplyOutcome, String> {
        let compiled = compile(&self.model).map_err(|e| e.to_string())?;
        let problems: Vec<String> = compiled.problems.iter().map(|p| p.to_string()).collect();
        if problems != self.state.problems {
            for p in &problems {
                warn!("security groups: {p}");
            }
            self.state.problems = problems;
        }
        self.applier
            .apply(&compiled.ruleset)
            .await
            .map_err(|e| e.to_string())
    }

    /// Policy rule changes and selector membership changes as patches; falls back to a full
    /// compile when a patch cannot express the change.
    async fn apply_patches(
        &mut self,
        dirty: &Dirty,
        current: &Ruleset,
    ) -> Result<ApplyOutcome, String> {
        let mut patch = skog_policy::ruleset::Patch::default();
        let mut problems = Vec::new();
        for id in &dirty.policies {
            match policy_patch(&self.model, id, current) {
                Some((p, found)) => {
                    patch.chains.extend(p.chains);
                    patch.sets.extend(p.sets);
                    patch.maps.extend(p.maps);
                    problems.extend(found);
                }
                None => return self.apply_full().await,
            }
        }
        for key in &dirty.selectors {
            let p = selector_patch(&self.model, key, current);
            patch.sets.extend(p.sets);
        }
        for p in &problems {
            warn!("security groups: {p}");
        }
        self.applier
            .apply_patch(&patch)
            .await
            .map_err(|e| e.to_string())
    }

    async fn refresh(&mut self) {
        if !self.in_sync {
            return;
        }
        if self.dirty.any() {
            self.apply().await;
            return;
        }
        match self.applier.refresh().await {
            Ok(ApplyOutcome::Unchanged) => {}
            Ok(outcome) => info!(?outcome, "nftables drift repaired"),
            Err(e) => {
                error!(error = %e, "checking nftables for drift failed");
                self.metrics.count_error("nft");
            }
        }
    }

    /// The chains that hold `interface`'s rules: its anti-spoofing and endpoint chains, and the
    /// policy chains those jump to, in order.
    fn show(&self, interface: &str) -> Result<Vec<String>, String> {
        let applied = self
            .applier
            .applied()
            .ok_or("no rules applied yet (waiting for the datastore)")?;
        let own = [
            spoof_chain(interface),
            endpoint_chain(interface, Direction::Egress),
            endpoint_chain(interface, Direction::Ingress),
        ];
        if !applied.chains.contains_key(&own[1]) {
            return Err(format!("no rules for interface {interface:?}"));
        }
        let mut chains: Vec<String> = Vec::new();
        for name in own {
            let Some(chain) = applied.chains.get(&name) else {
                continue;
            };
            chains.push(name);
            for rule in &chain.rules {
                if let Some(target) = jump_target(rule)
                    && !chains.iter().any(|c| c == target)
                {
                    chains.push(target.to_owned());
                }
            }
        }
        Ok(chains)
    }
}

/// The chain a `jump` or `goto` rule leads to.
fn jump_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "jump" || w == "goto" {
            return words.next();
        }
    }
    None
}

async fn list_chains(
    nft: Nft,
    interface: String,
    chains: Vec<String>,
) -> Result<PolicyShow, String> {
    let mut ruleset = String::new();
    for chain in chains {
        let text = nft
            .output(&["-a", "list", "chain", FAMILY, TABLE, &chain])
            .await
            .map_err(|e| format!("listing chain {chain}: {e}"))?;
        ruleset.push_str(&text);
    }
    Ok(PolicyShow { interface, ruleset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_targets_are_found_in_rules() {
        assert_eq!(jump_target("jump pol-00ab-in"), Some("pol-00ab-in"));
        assert_eq!(
            jump_target("meta mark & 0x2 == 0 jump pol-1-out"),
            Some("pol-1-out")
        );
        assert_eq!(jump_target("ct state invalid drop"), None);
    }
}
