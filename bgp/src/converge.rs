//! When the speaker's initial routing information is complete (RFC 4724 §4.1, the end of
//! "route selection deferral"), as a pure tracker the speaker task feeds: it owns the set of
//! peers still owed an End-of-RIB and says once, and only once, when that set has drained or
//! the selection-deferral timer ran out. The speaker then emits
//! [`crate::RouteEvent::Converged`], after which the agent may delete the learned routes a
//! previous run left in the kernel that nobody re-announced.
//!
//! The rule:
//! - waited for: every peer configured when the speaker starts (active or passive); peers
//!   added later are not;
//! - a peer is done when it has sent End-of-RIB for every family its session negotiated, or
//!   when its session came up without graceful restart on both sides (then nothing says it
//!   will ever send one) or with the peer's Restart State bit set (it is restarting too and
//!   waits for our End-of-RIB first; RFC 4724 excludes it), or when it is de-configured;
//! - a session that goes down before its End-of-RIB keeps the peer waited for (it will come
//!   back and send its table again); the deferral timer bounds the wait;
//! - with no peers at all, convergence is immediate.

use std::collections::{BTreeSet, HashMap};

use crate::codec::Family;
use crate::rib::PeerId;

/// What the tracker still waits for, per peer: `None` until its session is up, then the
/// families whose End-of-RIB is missing.
#[derive(Debug)]
pub struct Convergence {
    waiting: HashMap<PeerId, Option<BTreeSet<Family>>>,
    state: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    /// Converged, not yet reported.
    Reached,
    Reported,
}

/// How a peer's freshly established session bears on convergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionUp {
    /// Graceful restart on both sides and the peer not restarting: wait for its End-of-RIB
    /// on each of these families.
    AwaitEndOfRib(Vec<Family>),
    /// Nothing to wait for (no graceful restart, or the peer is restarting as well).
    NotAwaited,
}

impl Convergence {
    /// Waits for `peers` (the speaker's configured peers at start).
    pub fn new(peers: impl IntoIterator<Item = PeerId>) -> Convergence {
        let mut c = Convergence {
            waiting: peers.into_iter().map(|p| (p, None)).collect(),
            state: Phase::Waiting,
        };
        c.check();
        c
    }

    /// A peer's session is established.
    pub fn session_up(&mut self, peer: PeerId, up: SessionUp) {
        if let Some(w) = self.waiting.get_mut(&peer) {
            match up {
                SessionUp::AwaitEndOfRib(families) => *w = Some(families.into_iter().collect()),
                SessionUp::NotAwaited => {
                    self.waiting.remove(&peer);
                }
            }
        }
        self.check();
    }

    /// A peer sent End-of-RIB for `family`.
    pub fn end_of_rib(&mut self, peer: PeerId, family: Family) {
        if let Some(Some(families)) = self.waiting.get_mut(&peer) {
            families.remove(&family);
            if families.is_empty() {
                self.waiting.remove(&peer);
            }
        }
        self.check();
    }

    /// A peer was de-configured.
    pub fn peer_removed(&mut self, peer: PeerId) {
        self.waiting.remove(&peer);
        self.check();
    }

    /// The selection-deferral timer expired: stop waiting.
    pub fn deferral_expired(&mut self) {
        self.waiting.clear();
        self.check();
    }

    /// Whether the tracker is still waiting (the deferral timer matters only then).
    pub fn is_waiting(&self) -> bool {
        self.state == Phase::Waiting
    }

    /// True exactly once: on the first call after convergence was reached.
    pub fn take_converged(&mut self) -> bool {
        if self.state == Phase::Reached {
            self.state = Phase::Reported;
            true
        } else {
            false
        }
    }

    fn check(&mut self) {
        if self.state == Phase::Waiting && self.waiting.is_empty() {
            self.state = Phase::Reached;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> SessionUp {
        SessionUp::AwaitEndOfRib(vec![Family::Ipv4, Family::Ipv6])
    }

    #[test]
    fn no_peers_converges_at_once_and_reports_once() {
        let mut c = Convergence::new([]);
        assert!(!c.is_waiting());
        assert!(c.take_converged());
        assert!(!c.take_converged());
    }

    #[test]
    fn waits_for_every_family_of_every_configured_peer() {
        let mut c = Convergence::new([1, 2]);
        c.session_up(1, both());
        c.end_of_rib(1, Family::Ipv4);
        c.end_of_rib(1, Family::Ipv6);
        // Peer 2 has not even come up yet.
        assert!(c.is_waiting());
        assert!(!c.take_converged());
        c.session_up(2, SessionUp::AwaitEndOfRib(vec![Family::Ipv4]));
        assert!(!c.take_converged());
        c.end_of_rib(2, Family::Ipv4);
        assert!(c.take_converged());
        assert!(!c.take_converged());
    }

    #[test]
    fn end_of_rib_before_the_session_is_known_or_for_another_family_does_not_count() {
        let mut c = Convergence::new([1]);
        c.end_of_rib(1, Family::Ipv4);
        c.session_up(1, both());
        c.end_of_rib(1, Family::Ipv4);
        c.end_of_rib(7, Family::Ipv6); // not a peer we wait for
        assert!(!c.take_converged());
        c.end_of_rib(1, Family::Ipv6);
        assert!(c.take_converged());
    }

    #[test]
    fn peers_without_graceful_restart_or_restarting_themselves_are_not_waited_for() {
        let mut c = Convergence::new([1, 2]);
        c.session_up(1, SessionUp::NotAwaited);
        assert!(!c.take_converged());
        c.session_up(2, SessionUp::NotAwaited);
        assert!(c.take_converged());
    }

    #[test]
    fn a_session_flap_before_end_of_rib_keeps_waiting_until_it_comes() {
        let mut c = Convergence::new([1]);
        c.session_up(1, both());
        c.end_of_rib(1, Family::Ipv4);
        // Down and up again: the whole table is due again.
        c.session_up(1, both());
        c.end_of_rib(1, Family::Ipv6);
        assert!(!c.take_converged());
        c.end_of_rib(1, Family::Ipv4);
        assert!(c.take_converged());
    }

    #[test]
    fn deferral_timer_and_removal_end_the_wait() {
        let mut c = Convergence::new([1, 2]);
        c.session_up(1, both());
        c.peer_removed(2);
        assert!(!c.take_converged());
        c.deferral_expired();
        assert!(!c.is_waiting());
        assert!(c.take_converged());
        // Nothing afterwards reports again.
        c.end_of_rib(1, Family::Ipv4);
        c.deferral_expired();
        assert!(!c.take_converged());
    }

    #[test]
    fn removing_the_last_awaited_peer_converges() {
        let mut c = Convergence::new([1]);
        c.session_up(1, both());
        c.peer_removed(1);
        assert!(c.take_converged());
    }
}
