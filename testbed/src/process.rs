//! Long-running processes (routing daemons, etcd, skogd under test) started inside a namespace,
//! with their output captured to a log file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::exec::describe;
use crate::netns::Netns;
use crate::{Error, Result};

/// A child process running inside a namespace. Stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program args` inside `ns`, with stdout and stderr appended to `log`.
    pub fn spawn(
        ns: &Netns,
        name: impl Into<String>,
        program: &str,
        args: &[&str],
        log: &Path,
    ) -> Result<Process> {
        let mut cmd = ns.command(program);
        cmd.args(args);
        Process::spawn_command(name, cmd, log)
    }

    /// Starts a prepared command (already set to run inside a namespace) with its output in `log`.
    pub fn spawn_command(name: impl Into<String>, mut cmd: Command, log: &Path) -> Result<Process> {
        let open = || {
            File::options()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| Error::io(format!("open log {}", log.display()), e))
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: describe(&cmd),
                source,
            })?;
        Ok(Process {
            name: name.into(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The name given at spawn, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (`ip netns exec` execs the program, so this is the program itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log's contents so far (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (e.g. SIGHUP to reload).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id())
            .map_err(|_| Error::Topology(format!("pid of {} out of range", self.name)))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| Error::io(format!("signal {}", self.name), e.into()))
    }

    /// Sends SIGTERM and waits up to `grace` for it to exit, then kills it.
    /// Returns its exit status (None when it had to be killed).
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}
