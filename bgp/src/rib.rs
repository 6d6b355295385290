//! The routing information bases, as plain data (the speaker task owns them):
//! - [`AdjRibIn`]: per peer, every prefix it announced with its path, whether the import
//!   filter accepted it, and whether it is stale (graceful restart, helper role);
//! - [`LocRib`]: per prefix, the best paths over all peers and the ECMP next-hop set that was
//!   handed to the dataplane as [`RouteEvent`]s (emitted on change only);
//! - [`AdjRibOut`]: per peer, what the peer holds from us and which prefixes changed since the
//!   last flush, so bursts coalesce and nothing is sent twice.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::codec::{Family, PathAttrs, Update};

/// A change of the learned routes for the dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteEvent {
    /// Install (or replace) `prefix` with these next hops (ECMP when more than one).
    Install {
        /// The destination.
        prefix: IpNet,
        /// The next hops, sorted, without duplicates; shared by the prefixes that have the
        /// same set.
        next_hops: Arc<[IpAddr]>,
    },
    /// Remove `prefix`.
    Remove {
        /// The destination.
        prefix: IpNet,
    },
    /// The initial routing information is complete (RFC 4724 §4.1; see [`crate::converge`]):
    /// every peer configured at start has sent its End-of-RIB (or is not expected to), or the
    /// selection-deferral timer ran out. Sent exactly once per speaker, after the routes it
    /// covers. Learned routes a previous run left in the kernel and not installed by now may
    /// be deleted; until then they keep forwarding.
    Converged,
}

/// Identifies a peer inside one speaker.
pub type PeerId = u32;

/// A path received from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The next hop to install.
    pub next_hop: IpAddr,
    /// Its attributes (shared by every prefix of an UPDATE).
    pub attrs: Arc<PathAttrs>,
    /// Whether the import filter accepted it (rejected paths count as received only).
    pub accepted: bool,
    /// Kept from before the peer's restart, waiting for a refresh (RFC 4724).
    pub stale: bool,
}

/// How paths of one peer rank (everything best-path selection needs besides attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerKind {
    /// The peer is in another AS.
    pub ebgp: bool,
}

/// What an import filter decides per prefix (RFC 8212: nothing unless configured).
pub trait ImportFilter {
    /// Whether `prefix` with `attrs` may enter the Loc-RIB.
    fn accepts(&self, prefix: &IpNet, attrs: &PathAttrs) -> bool;
}

/// One peer's Adj-RIB-In.
#[derive(Debug, Default)]
pub struct AdjRibIn {
    paths: HashMap<IpNet, Path>,
}

impl AdjRibIn {
    /// Prefixes received (and not withdrawn).
    pub fn received(&self) -> usize {
        self.paths.len()
    }

    /// Prefixes the import filter accepted.
    pub fn accepted(&self) -> usize {
        self.paths.values().filter(|p| p.accepted).count()
    }

    /// The path for `prefix`.
    pub fn get(&self, prefix: &IpNet) -> Option<&Path> {
        self.paths.get(prefix)
    }

    /// Applies an UPDATE; returns the prefixes whose path changed.
    pub fn apply(&mut self, update: &Update, filter: &dyn ImportFilter) -> Vec<IpNet> {
        let mut changed = Vec::new();
        for prefix in &update.withdrawn {
            if self.paths.remove(prefix).is_some() {
                changed.push(*prefix);
            }
        }
        for reach in &update.reach {
            for prefix in &reach.prefixes {
                let path = Path {
                    next_hop: reach.next_hop,
                    attrs: Arc::clone(&update.attrs),
                    accepted: filter.accepts(prefix, &update.attrs),
                    stale: false,
                };
                if self.paths.insert(*prefix, path.clone()).as_ref() != Some(&path) {
                    changed.push(*prefix);
                }
            }
        }
        changed
    }

    /// Marks every path (of `family`, or all) stale; the peer went down gracefully.
    pub fn mark_stale(&mut self, family: Option<Family>) {
        for (prefix, path) in &mut self.paths {
            if family.is_none_or(|f| f == Family::of(prefix)) {
                path.stale = true;
            }
        }
    }

    /// Removes the stale paths (of `family`, or all); returns their prefixes.
    pub fn purge_stale(&mut self, family: Option<Family>) -> Vec<IpNet> {
        let gone: Vec<IpNet> = self
            .paths
            .iter()
            .filter(|(prefix, path)| path.stale && family.is_none_or(|f| f == Family::of(prefix)))
            .map(|(prefix, _)| *prefix)
            .collect();
        for prefix in &gone {
            self.paths.remove(prefix);
        }
        gone
    }

    /// Removes everything; returns the prefixes.
    pub fn clear(&mut self) -> Vec<IpNet> {
        self.paths.drain().map(|(prefix, _)| prefix).collect()
    }

    /// Every accepted route, for state snapshots.
    pub fn accepted_routes(&self) -> impl Iterator<Item = (&IpNet, &Path)> {
        self.paths.iter().filter(|(_, p)| p.accepted)
    }

    /// Every route received, accepted or not.
    pub fn routes(&self) -> impl Iterator<Item = (&IpNet, &Path)> {
        self.paths.iter()
    }
}

/// The ranking key of a path: lower is better. Paths with equal keys share the prefix (ECMP).
/// LOCAL_PREF (high wins), AS_PATH length, ORIGIN, MED, then eBGP over iBGP (RFC 4271 §9.1.2.2;
/// MED is compared across neighbour ASes, as `always-compare-med` does, so that ECMP across
/// two ToRs in different ASes works like `multipath-relax`).
fn rank(path: &Path, kind: PeerKind) -> (std::cmp::Reverse<u32>, usize, u8, u32, bool) {
    let a = &path.attrs;
    (
        std::cmp::Reverse(a.local_pref.unwrap_or(100)),
        a.as_path_len,
        a.origin,
        a.med.unwrap_or(0),
        !kind.ebgp,
    )
}

/// The Loc-RIB: the installed next-hop set per learned prefix. Prefixes with the same set
/// share one allocation (a table learned from two ToRs holds a couple of sets, not 100,000).
#[derive(Debug, Default)]
pub struct LocRib {
    installed: HashMap<IpNet, Arc<[IpAddr]>>,
}

impl LocRib {
    /// Recomputes `prefixes` from the peers' Adj-RIBs-In and returns the dataplane changes.
    pub fn recompute(
        &mut self,
        prefixes: impl IntoIterator<Item = IpNet>,
        peers: &[(&AdjRibIn, PeerKind)],
    ) -> Vec<RouteEvent> {
        let mut events = Vec::new();
        // The set of the previous prefix: consecutive prefixes (one UPDATE) usually share it.
        let mut last: Option<Arc<[IpAddr]>> = None;
        for prefix in prefixes {
            let candidates = peers.iter().filter_map(|(rib, kind)| {
                rib.get(&prefix)
                    .filter(|p| p.accepted)
                    .map(|p| (rank(p, *kind), p.next_hop))
            });
            let mut best: Option<(_, BTreeSet<IpAddr>)> = None;
            for (key, next_hop) in candidates {
                match &mut best {
                    Some((k, hops)) if *k == key => {
                        hops.insert(next_hop);
                    }
                    Some((k, _)) if *k < key => {}
                    _ => best = Some((key, BTreeSet::from([next_hop]))),
                }
            }
            match best {
                Some((_, hops)) => {
                    let next_hops = match last.take() {
                        Some(set) if set.iter().eq(hops.iter()) => set,
                        _ => hops.into_iter().collect(),
                    };
                    last = Some(Arc::clone(&next_hops));
                    if self.installed.get(&prefix) != Some(&next_hops) {
                        self.installed.insert(prefix, Arc::clone(&next_hops));
                        events.push(RouteEvent::Install { prefix, next_hops });
                    }
                }
                None => {
                    if self.installed.remove(&prefix).is_some() {
                        events.push(RouteEvent::Remove { prefix });
                    }
                }
            }
        }
        events
    }

    /// The installed routes.
    pub fn routes(&self) -> impl Iterator<Item = (&IpNet, &Arc<[IpAddr]>)> {
        self.installed.iter()
    }

    /// Number of installed prefixes.
    pub fn len(&self) -> usize {
        self.installed.len()
    }

    /// Whether nothing is installed.
    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
    }
}

/// What one peer holds from us, and what changed since the last flush.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    advertised: HashSet<IpNet>,
    dirty: HashSet<IpNet>,
}

/// The UPDATE content one flush produces.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flush {
    /// Prefixes to announce.
    pub announce: Vec<IpNet>,
    /// Prefixes to withdraw.
    pub withdraw: Vec<IpNet>,
}

impl AdjRibOut {
    /// Notes that `prefix` changed in our export set.
    pub fn touch(&mut self, prefix: IpNet) {
        self.dirty.insert(prefix);
    }

    /// Forgets what the peer holds (new session, or a route refresh) and marks every prefix of
    /// `export` whose family passes `families` to be sent.
    pub fn resend_all<'a>(&mut self, export: impl IntoIterator<Item = &'a IpNet>) {
        self.advertised.clear();
        self.dirty.extend(export);
    }

    /// Whether something waits to be sent.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Number of prefixes the peer holds from us.
    pub fn advertised(&self) -> usize {
        self.advertised.len()
    }

    /// The prefixes the peer holds from us.
    pub fn advertised_prefixes(&self) -> impl Iterator<Item = &IpNet> {
        self.advertised.iter()
    }

    /// Compares the changed prefixes with `export` (restricted to `families`) and returns
    /// what to announce and withdraw, recording the peer's new view. Sorted, for stable
    /// output.
    pub fn flush(&mut self, export: &HashSet<IpNet>, families: &[Family]) -> Flush {
        let mut out = Flush::default();
        for prefix in self.dirty.drain() {
            let wanted = export.contains(&prefix) && families.contains(&Family::of(&prefix));
            if wanted && self.advertised.insert(prefix) {
                out.announce.push(prefix);
            } else if !wanted && self.advertised.remove(&prefix) {
                out.withdraw.push(prefix);
            }
        }
        out.announce.sort_unstable();
        out.withdraw.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Reach;

    struct AcceptAll;
    impl ImportFilter for AcceptAll {
        fn accepts(&self, _: &IpNet, _: &PathAttrs) -> bool {
            true
        }
    }
    struct DefaultOnly;
    impl ImportFilter for DefaultOnly {
        fn accepts(&self, p: &IpNet, _: &PathAttrs) -> bool {
            p.prefix_len() == 0
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn announce(prefixes: &[&str], next_hop: &str, attrs: PathAttrs) -> Update {
        Update {
            reach: vec![Reach {
                next_hop: ip(next_hop),
                next_hop_local: None,
                prefixes: prefixes.iter().map(|p| net(p)).collect(),
            }],
            attrs: Arc::new(attrs),
            ..Update::default()
        }
    }

    fn path_len(n: usize) -> PathAttrs {
        PathAttrs {
            as_path: (0..n as u32).collect(),
            as_path_len: n,
            ..PathAttrs::default()
        }
    }

    const EBGP: PeerKind = PeerKind { ebgp: true };

    #[test]
    fn adj_rib_in_applies_announcements_and_withdrawals() {
        let mut rib = AdjRibIn::default();
        let u = announce(&["0.0.0.0/0", "198.51.100.0/24"], "192.0.2.0", path_len(1));
        assert_eq!(rib.apply(&u, &DefaultOnly).len(), 2);
        assert_eq!((rib.received(), rib.accepted()), (2, 1));
        // The same announcement again changes nothing.
        assert!(rib.apply(&u, &DefaultOnly).is_empty());
        let w = Update {
            withdrawn: vec![net("198.51.100.0/24"), net("203.0.113.0/24")],
            ..Update::default()
        };
        assert_eq!(rib.apply(&w, &DefaultOnly), vec![net("198.51.100.0/24")]);
        assert_eq!(rib.received(), 1);
    }

    #[test]
    fn loc_rib_picks_the_shortest_path_and_emits_changes_only() {
        let (mut a, mut b) = (AdjRibIn::default(), AdjRibIn::default());
        a.apply(
            &announce(&["0.0.0.0/0"], "192.0.2.0", path_len(2)),
            &AcceptAll,
        );
        b.apply(
            &announce(&["0.0.0.0/0"], "192.0.2.2", path_len(1)),
            &AcceptAll,
        );
        let mut loc = LocRib::default();
        let events = loc.recompute([net("0.0.0.0/0")], &[(&a, EBGP), (&b, EBGP)]);
        assert_eq!(
            events,
            vec![RouteEvent::Install {
                prefix: net("0.0.0.0/0"),
                next_hops: vec![ip("192.0.2.2")].into()
            }]
        );
        assert!(
            loc.recompute([net("0.0.0.0/0")], &[(&a, EBGP), (&b, EBGP)])
                .is_empty()
        );
    }

    #[test]
    fn equal_paths_from_two_tors_give_ecmp() {
        let (mut a, mut b) = (AdjRibIn::default(), AdjRibIn::default());
        a.apply(
            &announce(&["::/0"], "2001:db8:ffff:1::1", path_len(1)),
            &AcceptAll,
        );
        b.apply(
            &announce(&["::/0"], "2001:db8:ffff::1", path_len(1)),
            &AcceptAll,
        );
        let mut loc = LocRib::default();
        let events = loc.recompute([net("::/0")], &[(&a, EBGP), (&b, EBGP)]);
        assert_eq!(
            events,
            vec![RouteEvent::Install {
                prefix: net("::/0"),
                next_hops: vec![ip("2001:db8:ffff::1"), ip("2001:db8:ffff:1::1")].into()
            }]
        );
        // One ToR withdraws: the set shrinks; the other too: the route goes.
        let w = Update {
            withdrawn: vec![net("::/0")],
            ..Update::default()
        };
        b.apply(&w, &AcceptAll);
        let events = loc.recompute([net("::/0")], &[(&a, EBGP), (&b, EBGP)]);
        assert_eq!(
            events,
            vec![RouteEvent::Install {
                prefix: net("::/0"),
                next_hops: vec![ip("2001:db8:ffff:1::1")].into()
            }]
        );
        a.apply(&w, &AcceptAll);
        assert_eq!(
            loc.recompute([net("::/0")], &[(&a, EBGP), (&b, EBGP)]),
            vec![RouteEvent::Remove {
                prefix: net("::/0")
            }]
        );
    }

    #[test]
    fn decision_prefers_local_pref_then_origin_then_med_then_ebgp() {
        let pick = |x: PathAttrs, y: PathAttrs, ky: PeerKind| {
            let mut loc = LocRib::default();
            let (mut a, mut b) = (AdjRibIn::default(), AdjRibIn::default());
            a.apply(&announce(&["0.0.0.0/0"], "192.0.2.0", x), &AcceptAll);
            b.apply(&announce(&["0.0.0.0/0"], "192.0.2.2", y), &AcceptAll);
            match loc
                .recompute([net("0.0.0.0/0")], &[(&a, EBGP), (&b, ky)])
                .pop()
            {
                Some(RouteEvent::Install { next_hops, .. }) => next_hops.to_vec(),
                other => panic!("{other:?}"),
            }
        };
        let base = path_len(1);
        let higher_pref = PathAttrs {
            local_pref: Some(200),
            as_path_len: 5,
            ..base.clone()
        };
        assert_eq!(pick(base.clone(), higher_pref, EBGP), vec![ip("192.0.2.2")]);
        let incomplete = PathAttrs {
            origin: 2,
            ..base.clone()
        };
        assert_eq!(pick(incomplete, base.clone(), EBGP), vec![ip("192.0.2.2")]);
        let med = PathAttrs {
            med: Some(10),
            ..base.clone()
        };
        assert_eq!(pick(base.clone(), med, EBGP), vec![ip("192.0.2.0")]);
        let ibgp = PeerKind { ebgp: false };
        assert_eq!(pick(base.clone(), base, ibgp), vec![ip("192.0.2.0")]);
    }

    #[test]
    fn rejected_paths_never_reach_the_loc_rib() {
        let mut a = AdjRibIn::default();
        a.apply(
            &announce(&["198.51.100.0/24"], "192.0.2.0", path_len(1)),
            &DefaultOnly,
        );
        let mut loc = LocRib::default();
        assert!(
            loc.recompute([net("198.51.100.0/24")], &[(&a, EBGP)])
                .is_empty()
        );
        assert_eq!(a.received(), 1);
    }

    #[test]
    fn stale_paths_stay_installed_until_purged() {
        let mut a = AdjRibIn::default();
        a.apply(
            &announce(&["0.0.0.0/0", "::/0"], "192.0.2.0", path_len(1)),
            &AcceptAll,
        );
        let mut loc = LocRib::default();
        loc.recompute([net("0.0.0.0/0"), net("::/0")], &[(&a, EBGP)]);
        a.mark_stale(None);
        assert!(loc.recompute([net("0.0.0.0/0")], &[(&a, EBGP)]).is_empty());
        // The peer re-announces the default route: fresh again, so only ::/0 is purged.
        a.apply(
            &announce(&["0.0.0.0/0"], "192.0.2.0", path_len(1)),
            &AcceptAll,
        );
        assert_eq!(a.purge_stale(Some(Family::Ipv4)), Vec::<IpNet>::new());
        let gone = a.purge_stale(None);
        assert_eq!(gone, vec![net("::/0")]);
        assert_eq!(
            loc.recompute(gone, &[(&a, EBGP)]),
            vec![RouteEvent::Remove {
                prefix: net("::/0")
            }]
        );
    }

    #[test]
    fn adj_rib_out_coalesces_and_never_sends_duplicates() {
        let mut out = AdjRibOut::default();
        let mut export = HashSet::new();
        let fams = [Family::Ipv4, Family::Ipv6];
        // Added, removed and added again before a flush: one announcement.
        for _ in 0..2 {
            export.insert(net("198.51.100.10/32"));
            out.touch(net("198.51.100.10/32"));
            export.remove(&net("198.51.100.10/32"));
            out.touch(net("198.51.100.10/32"));
        }
        export.insert(net("198.51.100.10/32"));
        out.touch(net("198.51.100.10/32"));
        let f = out.flush(&export, &fams);
        assert_eq!(f.announce, vec![net("198.51.100.10/32")]);
        // Touching an unchanged prefix sends nothing.
        out.touch(net("198.51.100.10/32"));
        assert_eq!(out.flush(&export, &fams), Flush::default());
        // Added and removed between flushes: nothing at all.
        export.insert(net("198.51.100.11/32"));
        out.touch(net("198.51.100.11/32"));
        export.remove(&net("198.51.100.11/32"));
        assert_eq!(out.flush(&export, &fams), Flush::default());
        export.remove(&net("198.51.100.10/32"));
        out.touch(net("198.51.100.10/32"));
        assert_eq!(
            out.flush(&export, &fams).withdraw,
            vec![net("198.51.100.10/32")]
        );
        assert_eq!(out.advertised(), 0);
    }

    #[test]
    fn adj_rib_out_sends_only_negotiated_families() {
        let mut out = AdjRibOut::default();
        let export: HashSet<IpNet> = [net("198.51.100.10/32"), net("2001:db8:100::10/128")].into();
        out.resend_all(&export);
        let f = out.flush(&export, &[Family::Ipv6]);
        assert_eq!(f.announce, vec![net("2001:db8:100::10/128")]);
    }
}
