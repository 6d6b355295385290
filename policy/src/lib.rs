//! Security groups to nftables.
//!
//! - [`model`]: the input (endpoints, policies, selector membership, settings).
//! - [`compile`]: the pure compiler from model to [`Ruleset`].
//! - [`ruleset`]: the desired table content as data, and its full text.
//! - [`diff`]: the operations (and nft script) that turn one ruleset into another.
//! - [`nft`]: running `nft -f -` with a timeout, captured stderr, optionally in a namespace.
//! - [`lower`]: rule text lowered to nf_tables expressions (what nft would send for it).
//! - [`expr`]: those expressions and their netlink encoding.
//! - [`netlink`]: every change as one nfnetlink batch (the fast path), and reading rules back.
//! - [`live`]: reading the table back over nfnetlink (drift by content).
//! - [`applier`]: keeps the kernel in step (adopt, incremental apply, drift repair).
//! - [`trace`]: which rule allows or drops one packet, and why (`skogctl policy trace`).

pub mod applier;
pub mod compile;
pub mod diff;
pub mod expr;
pub mod live;
pub mod lower;
pub mod model;
pub mod names;
pub mod netlink;
pub mod nft;
pub mod rule;
pub mod ruleset;
pub mod trace;
mod wire;

pub use applier::{Applier, ApplyError, ApplyOutcome};
pub use compile::{CompileError, Compiled, Problem, compile};
pub use model::PolicyModel;
pub use nft::{Nft, NftError};
pub use ruleset::Ruleset;
pub use trace::{Trace, TracePacket, trace};
