//! The testbed's error type.

use std::time::Duration;

/// What went wrong while building, driving or tearing down a test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The test bed needs root (namespaces, veths, sysctls inside them).
    #[error("the testbed needs root to create network namespaces (running as uid {uid})")]
    NotRoot {
        /// The effective uid we run as.
        uid: u32,
    },
    /// A program the test bed needs is not installed.
    #[error("`{program}` is not installed; run `cargo xtask setup` (as root) to install {package}")]
    MissingProgram {
        /// The program looked up on PATH.
        program: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// A command could not be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    CommandTimedOut {
        /// The command line.
        command: String,
        /// The bound it exceeded.
        timeout: Duration,
    },
    /// A condition waited for never became true.
    #[error("timed out after {timeout:?} waiting for {what}{}", last.as_ref().map(|l| format!(" (last seen: {l})")).unwrap_or_default())]
    WaitTimedOut {
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
        /// The last observation, when the caller gave one.
        last: Option<String>,
    },
    /// Output of a tool could not be understood.
    #[error("cannot parse output of {tool}: {reason}")]
    Parse {
        /// The tool whose output it was.
        tool: String,
        /// Why.
        reason: String,
    },
    /// The topology asked for is not possible (unknown node, too many links, ...).
    #[error("invalid topology: {0}")]
    Topology(String),
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Setns {
        /// The namespace.
        name: String,
        /// The underlying error.
        source: nix::Error,
    },
    /// A closure run inside a namespace panicked.
    #[error("a closure run inside network namespace {0} panicked")]
    ClosurePanicked(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias for the testbed.
pub type Result<T, E = Error> = std::result::Result<T, E>;
