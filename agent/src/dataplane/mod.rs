//! The route dataplane: programs, for every local endpoint whose tap is up, host routes,
//! permanent ARP entries, a proxy NDP entry for its IPv6 gateway and the tap's sysctls, and
//! installs the routes learned over BGP (ECMP), all through rtnetlink.
//!
//! It reconciles rather than commands: one task ([`programmer`]) owns the desired state (from
//! the daemon), a view of the kernel (dumps, multicast events) and the netlink sockets; a pure
//! core ([`desired`], [`reconcile`]) turns them into kernel operations, which a thin driver
//! ([`netlink`], [`messages`]) sends in batches. Start-up adopts what is in the kernel, shutdown
//! leaves everything in place, and only objects carrying our protocol numbers are ever deleted.
//! See docs/dataplane.md.

pub mod desired;
pub mod kernel;
pub mod messages;
pub mod netlink;
pub mod nexthop;
pub mod objects;
pub mod programmer;
pub mod reconcile;
pub mod types;

/// The programmer's maps and sets: keyed by prefixes and routes by the hundred thousand, so
/// hashed with foldhash (seeded per process, like hashbrown's default) rather than SipHash.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`HashMap`].
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

pub use programmer::{Programmer, ProgrammerError, ProgrammerHandle};
pub use types::{
    DataplaneConfig, DesiredEndpoint, EndpointStatus, LearnedNextHop, LearnedRoute, MacAddr,
    ProgrammedRoute, RouteEvent, Snapshot, TapState,
};
