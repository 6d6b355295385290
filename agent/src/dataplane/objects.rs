//! The route programmer's keeper of nexthop objects: which object serves each set of next hops
//! its learned routes have, creating the objects a new set needs (a route lookup finds a
//! gateway's interface), growing a group back in place when the kernel shrank it, and deleting
//! the objects no route points at any more. The rules are [`super::nexthop`]'s; this is the
//! part that talks to the kernel, through [`Netlink`].

use std::net::IpAddr;
use std::sync::Arc;

use super::kernel::Hop;
use super::netlink::{Netlink, NetlinkError};
use super::nexthop::{self, NextHop, NextHops, Write};
use super::{HashMap, HashSet};

/// Which object routes with a given (desired) set of next hops point at.
type NextHopIds = HashMap<Box<[Hop]>, u32>;

/// Attempts at a free id for a new object (each skips an id found taken by someone else).
const ID_ATTEMPTS: usize = 8;

/// Why a set of next hops has no object (its routes then name their gateways), or a gateway no
/// member.
#[derive(Debug, thiserror::Error)]
pub enum NoObject {
    /// A link-local gateway means nothing without its interface.
    #[error("link-local gateway {0} has no interface")]
    LinkLocalWithoutInterface(IpAddr),
    /// No connected route leads to the gateway.
    #[error("gateway {0} is not directly reachable")]
    NotDirect(IpAddr),
    /// The route lookup for a gateway failed.
    #[error("looking up gateway {gateway}: {source}")]
    Lookup {
        /// The gateway.
        gateway: IpAddr,
        /// Why.
        source: NetlinkError,
    },
    /// The kernel refused an object.
    #[error("writing nexthop object {id}: {source}")]
    Write {
        /// The object's id.
        id: u32,
        /// Why.
        source: NetlinkError,
    },
    /// Every id tried was someone else's.
    #[error("no free nexthop id")]
    NoFreeId,
}

impl NoObject {
    /// Whether the gateway is unreachable as things are (not a failure of ours or of the
    /// kernel's to answer): such a gateway is left out of a group rather than failing it.
    fn unreachable(&self) -> bool {
        matches!(
            self,
            NoObject::NotDirect(_) | NoObject::LinkLocalWithoutInterface(_)
        )
    }

    /// Whether the kernel may hold something the view does not (an answer never came).
    fn leaves_kernel_unknown(&self) -> bool {
        match self {
            NoObject::Lookup { source, .. } | NoObject::Write { source, .. } => source.unanswered(),
            _ => false,
        }
    }
}

/// The objects' bookkeeping beyond what the kernel holds (the objects themselves are in the
/// programmer's view of the kernel).
#[derive(Debug)]
pub struct NextHopKeeper {
    /// The protocol our objects carry.
    protocol: u8,
    /// The object each set of next hops points at. Kept across resyncs while the object
    /// exists, so that a group keeps its id while its members come and go.
    ids: NextHopIds,
    /// Sets no object can serve (logged), until the next resync.
    failed: HashSet<Box<[Hop]>>,
    /// Ids found to belong to someone else, until the next resync.
    taken: HashSet<u32>,
    /// Objects written (created, replaced, deleted) since start.
    writes: u64,
    /// Whether a write or lookup went unanswered: only a resync tells what the kernel holds.
    resync_wanted: bool,
}

impl NextHopKeeper {
    /// A keeper of objects carrying `protocol`.
    pub fn new(protocol: u8) -> NextHopKeeper {
        NextHopKeeper {
            protocol,
            ids: HashMap::default(),
            failed: HashSet::default(),
            taken: HashSet::default(),
            writes: 0,
            resync_wanted: false,
        }
    }

    /// Objects written since start.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Whether a write or lookup went unanswered since the last call (then a resync is due).
    pub fn take_resync_wanted(&mut self) -> bool {
        std::mem::take(&mut self.resync_wanted)
    }

    /// After a resync read `objects` afresh: forgets the ids whose object is gone, and the sets
    /// and ids that failed (a link that came back may make them work).
    pub fn resynced(&mut self, objects: Option<&NextHops>) {
        self.ids
            .retain(|_, id| objects.is_some_and(|o| o.contains_key(id)));
        self.failed.clear();
        self.taken.clear();
    }

    /// The object routes with `hops` point at, if known (no kernel access).
    pub fn id(&self, hops: &[Hop]) -> Option<u32> {
        self.ids.get(hops).copied()
    }

    /// [`Self::id`] for many routes in a row, by their shared sets.
    pub fn ids_by_set(&self) -> SetIds<'_> {
        SetIds {
            keeper: self,
            last: None,
            seen: HashMap::default(),
        }
    }

    /// Makes sure each of `sets` has an object that serves it as well as the kernel allows
    /// (creating or regrouping objects). Each set comes with a hint: the object one of its
    /// routes points at in the kernel, which it takes back if no other set has it (after a
    /// restart); sets with a hint go first. A set that cannot have an object is logged and
    /// left to name its gateways.
    pub async fn prepare(
        &mut self,
        sets: &[(&[Hop], Option<u32>)],
        objects: &mut NextHops,
        nl: &Netlink,
    ) {
        let hinted = sets.iter().filter(|(_, hint)| hint.is_some());
        let unhinted = sets.iter().filter(|(_, hint)| hint.is_none());
        for (hops, hint) in hinted.chain(unhinted) {
            if hops.is_empty() || self.failed.contains(*hops) {
                continue;
            }
            if let Err(problem) = self.ensure(hops, *hint, objects, nl).await {
                let gateways: Vec<String> = hops.iter().map(|h| h.gateway.to_string()).collect();
                let fallback = match self.id(hops) {
                    Some(id) => format!("nexthop object {id} stays as it is"),
                    None => "their routes name them".to_owned(),
                };
                tracing::warn!("next hops {}: {problem}; {fallback}", gateways.join(", "));
                self.resync_wanted |= problem.leaves_kernel_unknown();
                self.failed.insert((*hops).into());
            }
        }
    }

    /// Whether group `id` is another set's (a group is one set's alone: it is regrown and
    /// shrunk for that set; gateway objects are shared freely, and never replaced).
    fn claimed_by_another(&self, id: u32, hops: &[Hop], objects: &NextHops) -> bool {
        matches!(objects.get(&id), Some(NextHop::Group(_)))
            && self
                .ids
                .iter()
                .any(|(set, other)| *other == id && **set != *hops)
    }

    /// Whether `hops` may take object `id` as its own: no other set has it, and it serves
    /// some of them (a gateway object one, a group some, as the kernel may have shrunk it).
    fn adoptable(&self, id: u32, hops: &[Hop], objects: &NextHops) -> bool {
        let kind_fits = match objects.get(&id) {
            Some(NextHop::Group(_)) => hops.len() > 1,
            Some(NextHop::Gateway { .. }) => hops.len() == 1,
            None => false,
        };
        kind_fits
            && nexthop::serves_some(objects, id, hops)
            && !self.claimed_by_another(id, hops, objects)
    }

    /// The id of the object for `hops`:
    /// - the one it has;
    /// - else `hint`, the object its routes point at in the kernel, if it may take it
    ///   ([`Self::adoptable`]: after a restart, its own);
    /// - else an object of ours that serves it and no other set;
    /// - else a new one: a gateway object for one hop; for several, a new group of the
    ///   gateways reachable now (or an existing group of exactly those no other set has).
    ///
    /// A group it has or takes is grown back in place if the kernel shrank it.
    async fn ensure(
        &mut self,
        hops: &[Hop],
        hint: Option<u32>,
        objects: &mut NextHops,
        nl: &Netlink,
    ) -> Result<u32, NoObject> {
        if let Some(id) = self.id(hops) {
            if self.keeps(id, hops, objects, nl).await? {
                return Ok(id);
            }
            self.ids.remove(hops);
        }
        let adopted = hint
            .filter(|id| self.adoptable(*id, hops, objects))
            .or_else(|| {
                nexthop::find(objects, hops, |id| {
                    !self.claimed_by_another(id, hops, objects)
                })
            });
        if let Some(id) = adopted {
            self.ids.insert(hops.into(), id);
            if self.keeps(id, hops, objects, nl).await? {
                return Ok(id);
            }
            self.ids.remove(hops);
        }
        let members = self.gateways(hops, objects, nl).await?;
        let id = match (&members[..], hops) {
            ([single], [_]) => *single,
            _ => {
                let group = NextHop::Group(members);
                let unclaimed = nexthop::object_id(objects, &group, |id| {
                    !self.claimed_by_another(id, hops, objects)
                });
                match unclaimed {
                    Some(id) => id,
                    None => self.create(group, objects, nl).await?,
                }
            }
        };
        self.ids.insert(hops.into(), id);
        Ok(id)
    }

    /// Whether object `id` (the set's) still serves `hops`, a group after being grown back
    /// in place if the kernel shrank it; `false` when it is gone or no longer fits.
    async fn keeps(
        &mut self,
        id: u32,
        hops: &[Hop],
        objects: &mut NextHops,
        nl: &Netlink,
    ) -> Result<bool, NoObject> {
        if nexthop::serves(objects, id, hops) {
            return Ok(true);
        }
        match (objects.get(&id), hops) {
            (Some(NextHop::Group(members)), [_, _, ..]) => {
                let members = members.clone();
                self.regroup(id, &members, hops, objects, nl).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Gives group `id` (now `members`) a member for every gateway of `hops` that is
    /// reachable, replacing it in place: the routes that point at it stay as they are (the
    /// kernel notifies each of them again, though). If a lookup or write fails for any reason
    /// but an unreachable gateway, the group stays as it is.
    async fn regroup(
        &mut self,
        id: u32,
        members: &[u32],
        hops: &[Hop],
        objects: &mut NextHops,
        nl: &Netlink,
    ) -> Result<(), NoObject> {
        let wanted = match self.gateways(hops, objects, nl).await {
            Ok(wanted) => wanted,
            // None reachable: the group keeps what the kernel left it.
            Err(problem) if problem.unreachable() => return Ok(()),
            Err(problem) => return Err(problem),
        };
        if wanted == members {
            return Ok(());
        }
        let group = NextHop::Group(wanted);
        self.writes += 1;
        nl.write_nexthop(id, self.protocol, &group, Write::Replace)
            .await
            .map_err(|source| NoObject::Write { id, source })?;
        objects.insert(id, group);
        Ok(())
    }

    /// The gateway objects of `hops` (sorted ids), created where missing. An unreachable
    /// gateway is left out of a set of several (the group serves the others), but fails a set
    /// of one, and a set none of whose gateways is reachable; any other problem fails the set.
    async fn gateways(
        &mut self,
        hops: &[Hop],
        objects: &mut NextHops,
        nl: &Netlink,
    ) -> Result<Vec<u32>, NoObject> {
        let mut members = Vec::new();
        let mut unreachable = None;
        for hop in hops {
            let member = match resolve(hop, nl).await {
                Ok(ifindex) => {
                    let object = NextHop::Gateway {
                        gateway: hop.gateway,
                        ifindex,
                    };
                    match nexthop::object_id(objects, &object, |_| true) {
                        Some(id) => Ok(id),
                        None => self.create(object, objects, nl).await,
                    }
                }
                Err(problem) => Err(problem),
            };
            match member {
                Ok(id) => members.push(id),
                Err(problem) if problem.unreachable() => {
                    tracing::debug!("next hop {} left out: {problem}", hop.gateway);
                    unreachable.get_or_insert(problem);
                }
                Err(problem) => return Err(problem),
            }
        }
        match unreachable {
            Some(problem) if members.is_empty() || hops.len() == 1 => Err(problem),
            _ => {
                members.sort_unstable();
                members.dedup();
                Ok(members)
            }
        }
    }

    /// Creates `object` with a free id of our range.
    async fn create(
        &mut self,
        object: NextHop,
        objects: &mut NextHops,
        nl: &Netlink,
    ) -> Result<u32, NoObject> {
        for _ in 0..ID_ATTEMPTS {
            let id =
                nexthop::free_id(objects, &self.taken, self.protocol).ok_or(NoObject::NoFreeId)?;
            self.writes += 1;
            match nl
                .write_nexthop(id, self.protocol, &object, Write::Create)
                .await
            {
                Ok(()) => {
                    objects.insert(id, object);
                    return Ok(id);
                }
                Err(NetlinkError::NextHopIdTaken(id)) => {
                    self.taken.insert(id);
                }
                Err(source) => return Err(NoObject::Write { id, source }),
            }
        }
        Err(NoObject::NoFreeId)
    }

    /// Deletes our objects that none of `used` (the ids routes of ours point at, desired or
    /// in the kernel) needs, and forgets the sets that pointed at them.
    pub async fn collect(&mut self, used: &HashSet<u32>, objects: &mut NextHops, nl: &Netlink) {
        for id in nexthop::unused(objects, used) {
            self.writes += 1;
            match nl.delete_nexthop(id).await {
                Ok(()) => {
                    objects.remove(&id);
                }
                Err(e) => {
                    tracing::warn!("deleting unused nexthop object {id}: {e}");
                    self.resync_wanted |= e.unanswered();
                }
            }
        }
        self.ids.retain(|_, id| objects.contains_key(id));
    }
}

/// The objects of sets of next hops, looked up by the sets' shared allocations: the routes of
/// one set share one (`HopSets`), and a burst of 100,000 routes has a handful of sets, so a
/// route's object is found without hashing its hops.
#[derive(Debug)]
pub struct SetIds<'a> {
    keeper: &'a NextHopKeeper,
    /// The set looked up last, and its object.
    last: Option<(Arc<[Hop]>, Option<u32>)>,
    /// Every set looked up, by address (holding it, so the address stays its own).
    seen: HashMap<usize, (Arc<[Hop]>, Option<u32>)>,
}

impl SetIds<'_> {
    /// The object routes with `hops` point at, if known.
    pub fn of(&mut self, hops: &Arc<[Hop]>) -> Option<u32> {
        if let Some((set, id)) = &self.last
            && Arc::ptr_eq(set, hops)
        {
            return *id;
        }
        let address = Arc::as_ptr(hops).cast::<Hop>() as usize;
        let id = match self.seen.get(&address) {
            Some((_, id)) => *id,
            None => {
                let id = self.keeper.id(hops);
                self.seen.insert(address, (Arc::clone(hops), id));
                id
            }
        };
        self.last = Some((Arc::clone(hops), id));
        id
    }
}

/// The interface a hop's gateway is directly reachable through: its own, or the kernel's
/// route lookup's (never for a link-local gateway, which names no interface by itself).
async fn resolve(hop: &Hop, nl: &Netlink) -> Result<u32, NoObject> {
    if let Some(ifindex) = hop.ifindex {
        return Ok(ifindex);
    }
    let link_local = match hop.gateway {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    if link_local {
        return Err(NoObject::LinkLocalWithoutInterface(hop.gateway));
    }
    nl.gateway_interface(hop.gateway)
        .await
        .map_err(|source| NoObject::Lookup {
            gateway: hop.gateway,
            source,
        })?
        .ok_or(NoObject::NotDirect(hop.gateway))
}
