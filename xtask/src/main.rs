//! Developer tasks for Skog, run as `cargo xtask <task>`:
//! `setup` installs the Debian packages the agent and the tests need, `test` is what CI runs,
//! `testbed-clean` removes namespaces left by killed test runs, `demo` shows Skog working, and
//! `bench` runs every benchmark beside its reference.

mod bench;
mod demo;
mod setup;
mod svg;
mod test;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Skog developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install (idempotently, with apt-get, as root) what the agent and the tests need.
    Setup,
    /// Setup, then fmt check, clippy -D warnings and every test, including the root-only
    /// namespace tests. This is what CI runs.
    Test,
    /// Remove testbed namespaces (and their processes) left behind by test runs that died.
    TestbedClean {
        /// Also remove those of runs that are still alive.
        #[arg(long)]
        all: bool,
    },
    /// Setup, build skogd, then run it on two hypervisors in namespaces with a BIRD ToR and
    /// show BGP, routes, security groups, a live change and a hitless restart.
    Demo {
        /// Keep the topology up until Enter (or Ctrl-C), and print commands to explore it.
        #[arg(long)]
        keep: bool,
        /// Use the file datastore (a resource directory) instead of etcd.
        #[arg(long)]
        file: bool,
    },
    /// Run every benchmark beside its reference; print a markdown table and write JSON.
    Bench {
        /// Few repetitions, for a quick look.
        #[arg(long)]
        quick: bool,
        /// Run only the benchmarks with this name (e.g. `announce`), or `<crate>/<name>`.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::run(),
        Task::Test => test::run(),
        Task::TestbedClean { all } => {
            skog_testbed::require_root()?;
            let removed = skog_testbed::clean_leftovers(all)?;
            if removed.is_empty() {
                println!("no testbed namespaces to remove");
            }
            for name in removed {
                println!("removed network namespace {name}");
            }
            Ok(())
        }
        Task::Demo { keep, file } => demo::run(keep, file),
        Task::Bench { quick, only } => bench::run(quick, only.as_deref()),
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo that runs us (so `cargo +toolchain xtask` stays on that toolchain).
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    // `cargo run` gave us xtask's package variables; build scripts that watch them (ring's)
    // would otherwise rebuild here and again on the next plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Prints a step header, runs `cmd`, and fails if it fails.
fn step(title: &str, cmd: &mut Command) -> Result<()> {
    println!("\n==> {title}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {title}"))?;
    if !status.success() {
        bail!("{title} failed ({status})");
    }
    Ok(())
}
