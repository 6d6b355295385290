//! Network namespaces the testbed owns: creation, commands and closures inside them, teardown,
//! and the clean-up of namespaces a killed test run left behind.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::exec::{SHORT, require_program, run_checked};
use crate::{Error, Result};

/// Every namespace the testbed creates starts with this, followed by `<pid>-<seq>-`.
pub(crate) const PREFIX: &str = "skog-";

static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);

/// A prefix unique to this process and call: `skog-<pid>-<seq>-`.
pub(crate) fn unique_prefix() -> String {
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{seq}-", std::process::id())
}

/// Fails unless we are root and `ip` is installed.
pub fn require_root() -> Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(Error::NotRoot { uid });
    }
    require_program("ip", "iproute2")
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop together with every process
/// still running inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: impl Into<String>) -> Result<Netns> {
        let name = name.into();
        run_checked(Command::new("ip").args(["netns", "add", &name]), SHORT)?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` lists it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace (bounded); returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| Error::Topology("empty command".into()))?;
        run_checked(self.command(program).args(rest), SHORT)
    }

    /// Runs `ip <args>` against the namespace (`ip -n <name> ...`); returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_checked(
            Command::new("ip").args(["-n", &self.name]).args(args),
            SHORT,
        )
    }

    /// Sets a sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Reads a sysctl inside the namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        Ok(self.run(&["sysctl", "-n", key])?.trim().to_owned())
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    /// Sockets opened by `f` live in the namespace.
    pub fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
        self.spawn_inside(f)?
            .join()
            .ok()
            .flatten()
            .ok_or_else(|| Error::ClosurePanicked(self.name.clone()))
    }

    /// A multi-thread tokio runtime whose worker threads live in this namespace (they are
    /// spawned by a thread that entered it), so every socket its tasks open is the namespace's.
    /// Spawn work on it (`rt.spawn`) rather than `block_on`, which runs on the calling thread.
    pub fn tokio_runtime(&self, worker_threads: usize) -> Result<tokio::runtime::Runtime> {
        self.enter(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(worker_threads)
                .enable_all()
                .build()
        })?
        .map_err(|e| Error::io("build a tokio runtime", e))
    }

    /// Starts `f` on a thread that has entered this namespace. The handle yields `None` only if
    /// `f` could not run, which this function already reports as an error.
    pub(crate) fn spawn_inside<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<thread::JoinHandle<Option<R>>> {
        let path = Path::new("/run/netns").join(&self.name);
        let file =
            File::open(&path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let handle = thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                let entered = setns(&file, CloneFlags::CLONE_NEWNET);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                ok.then(f)
            })
            .map_err(|e| Error::io("spawn a namespace thread", e))?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(source)) => Err(Error::Setns {
                name: self.name.clone(),
                source,
            }),
            Err(_) => Err(Error::ClosurePanicked(self.name.clone())),
        }
    }

    /// The pids of every process inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_namespace(&self.name);
    }
}

fn pids_in(name: &str) -> Vec<i32> {
    run_checked(Command::new("ip").args(["netns", "pids", name]), SHORT)
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills whatever still runs in the namespace, then deletes it. Best effort: used from `Drop`.
fn delete_namespace(name: &str) {
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        for _ in 0..40 {
            if pids_in(name).is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
    if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", name]), SHORT) {
        eprintln!("skog-testbed: cannot delete network namespace {name}: {e}");
    }
}

/// The owning pid encoded in a testbed namespace name (`skog-<pid>-<seq>-<node>`).
fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn process_alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes testbed namespaces (and the processes in them) left behind by test runs that died.
/// With `all`, removes every testbed namespace, including those of live runs. Returns the names
/// removed. Namespaces not created by the testbed are never touched.
pub fn clean_leftovers(all: bool) -> Result<Vec<String>> {
    let listing = run_checked(Command::new("ip").args(["netns", "list"]), SHORT)?;
    let mut removed = Vec::new();
    for name in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = owner_pid(name) else { continue };
        if all || !process_alive(pid) {
            delete_namespace(name);
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_is_read_from_testbed_names_only() {
        assert_eq!(owner_pid("skog-4242-3-hv1"), Some(4242));
        assert_eq!(owner_pid("skog-x-3-hv1"), None);
        assert_eq!(owner_pid("other-4242-3"), None);
    }

    #[test]
    fn prefixes_are_unique_within_a_process() {
        assert_ne!(unique_prefix(), unique_prefix());
    }
}
