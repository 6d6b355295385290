//! Running the `nft` binary: a script on stdin (`nft -f -`, one transaction), stderr captured,
//! every call bounded by a timeout, optionally inside a named network namespace (through
//! `ip netns exec`, for tests and benchmarks).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A failed `nft` call.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("nft did not finish within {0:?} (killed)")]
    Timeout(Duration),
    #[error("nft failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("nft output is not UTF-8")]
    NotUtf8,
}

/// How to run nft.
#[derive(Debug, Clone)]
pub struct Nft {
    program: String,
    netns: Option<String>,
    timeout: Duration,
}

impl Default for Nft {
    fn default() -> Nft {
        Nft {
            program: "nft".to_owned(),
            netns: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl Nft {
    /// Runs nft in the current namespace with a 10 s timeout.
    pub fn new() -> Nft {
        Nft::default()
    }

    /// Runs nft inside network namespace `name` (via `ip netns exec`).
    pub fn in_netns(mut self, name: impl Into<String>) -> Nft {
        self.netns = Some(name.into());
        self
    }

    /// Bounds every call by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Nft {
        self.timeout = timeout;
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &self.program]);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `script` as one transaction (`nft -f -`).
    pub async fn run_script(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], script).await.map(drop)
    }

    /// Runs nft with `args` (no stdin) and returns its stdout, e.g. `-j list table inet skog`.
    pub async fn output(&self, args: &[&str]) -> Result<String, NftError> {
        self.run(args, "").await
    }

    async fn run(&self, args: &[&str], stdin: &str) -> Result<String, NftError> {
        let mut child = self
            .command(args)
            .spawn()
            .map_err(|source| NftError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        let input = stdin.as_bytes().to_vec();
        let mut pipe = child.stdin.take();
        let work = async move {
            if let Some(p) = pipe.as_mut() {
                // A write error means nft exited early; its status and stderr tell why.
                let _ = p.write_all(&input).await;
            }
            drop(pipe);
            child.wait_with_output().await
        };
        let out = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| NftError::Timeout(self.timeout))?
            .map_err(|source| NftError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(NftError::Failed {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        String::from_utf8(out.stdout).map_err(|_| NftError::NotUtf8)
    }
}
