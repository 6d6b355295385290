//! Network-namespace test beds for Skog.
//!
//! A [`Testbed`] builds a small data centre inside network namespaces on one machine:
//! hypervisors (a namespace each), VMs (a namespace each, joined to their hypervisor by a veth
//! whose hypervisor end is named like a Nova tap), top-of-rack routers running BIRD 2, FRR or
//! GoBGP, point-to-point uplinks between hypervisors and ToRs, and a management network on which
//! a real etcd runs. The integration tests, `cargo xtask demo` and `cargo xtask bench` use it.
//!
//! Everything it creates is named `skog-<pid>-<seq>-<node>`, so tests run in parallel, and is
//! torn down when the [`Testbed`] is dropped, also on panic. Namespaces whose owning process
//! died (a killed test run) are removed by the next [`Testbed::new`] and by
//! `cargo xtask testbed-clean` ([`clean_leftovers`]).
//!
//! Only documentation address ranges are used (see [`addressing`]), and nothing is ever
//! changed in the namespace the caller runs in.

pub mod addressing;
mod error;
mod exec;
mod netns;
mod probe;
mod process;
mod routes;
mod rtnl;
mod topology;
mod tor;
mod wait;

pub use error::{Error, Result};
pub use exec::{run_checked, run_with_timeout};
pub use netns::{Netns, clean_leftovers, require_root};
pub use probe::{EchoServer, ProbeOutcome, Protocol};
pub use process::Process;
pub use routes::{KernelNextHop, KernelRoute};
pub use rtnl::{RouteWatch, RouteWriter};
pub use topology::{HvId, Hypervisor, Testbed, Tor, TorId, Uplink, Vm, VmId, VmSpec};
pub use tor::{TorDaemon, TorNeighbor, TorOptions};
pub use wait::wait_until;
