//! The `--keep` prompt: waits for Enter or for Ctrl-C (or SIGTERM). Left to its default action,
//! Ctrl-C would kill the demo before it cleans up; here the signal is blocked and taken by a
//! thread with sigwait instead, so it just ends the wait and the testbed is removed as usual.

use std::io::BufRead;
use std::sync::mpsc;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};

/// Waits for a line (or the end) of standard input, SIGINT or SIGTERM; returns the signal, if
/// that is what came. Signals stay blocked afterwards (the process is about to clean up and exit).
///
/// The mask is per thread: a thread started earlier that is still running would take the signal
/// with its default action. The demo has none left when it calls this (its echo servers are
/// stopped first); daemons in the testbed are separate processes and unaffected.
pub fn wait_for_enter_or_interrupt() -> Result<Option<Signal>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("block SIGINT and SIGTERM")?;
    let (tx, rx) = mpsc::channel();
    let on_signal = tx.clone();
    // Both threads inherit the blocked mask.
    std::thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            let _ = on_signal.send(Some(signal));
        }
    });
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = tx.send(None);
    });
    Ok(rx.recv().ok().flatten())
}
