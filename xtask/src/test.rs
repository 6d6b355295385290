//! `cargo xtask test`, what CI runs: setup, format check, clippy, then every test of the
//! workspace — the namespace tests included, which need root and fail rather than skip without
//! it — and finally a check that no test leaked a namespace.

use anyhow::{Result, bail};

use crate::{cargo, setup, step};

pub fn run() -> Result<()> {
    setup::run()?;
    if let Err(e) = skog_testbed::require_root() {
        bail!(
            "the namespace tests cannot run: {e}. They are part of the test suite and are never \
             skipped; run `sudo cargo xtask test`"
        );
    }
    step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    step(
        "cargo clippy -D warnings",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // Not --all-targets: that would run the benchmarks (harness = false) as tests.
    step(
        "cargo test --workspace",
        cargo().args(["test", "--workspace"]),
    )?;
    // The test processes have exited, so anything they left is a leak.
    let leaked = skog_testbed::clean_leftovers(false)?;
    if !leaked.is_empty() {
        bail!(
            "tests leaked {} network namespace(s) (now removed): {}",
            leaked.len(),
            leaked.join(" ")
        );
    }
    println!("\nxtask test: all checks passed");
    Ok(())
}
