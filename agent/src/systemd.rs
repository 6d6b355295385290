//! systemd integration: `sd_notify` messages (`READY=1`, `STATUS=`, `WATCHDOG=1`,
//! `STOPPING=1`) on `$NOTIFY_SOCKET`, and the watchdog interval from `$WATCHDOG_USEC`.
//! Without systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// Sends notifications to the service manager.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
}

impl Notifier {
    /// The notifier systemd asked for, if any (`$NOTIFY_SOCKET`).
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from),
        }
    }

    /// A notifier for an explicit socket path (`@name` for the abstract namespace).
    pub fn to_socket(socket: impl Into<PathBuf>) -> Notifier {
        Notifier {
            socket: Some(socket.into()),
        }
    }

    /// Whether anyone listens.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// `READY=1` with a status line: the datastore is in sync and the dataplane reconciled.
    pub fn ready(&self, status: &str) -> std::io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// A `STATUS=` line for `systemctl status`.
    pub fn status(&self, status: &str) -> std::io::Result<()> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: the main loop is alive.
    pub fn watchdog(&self) -> std::io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// `STOPPING=1` when shutting down.
    pub fn stopping(&self) -> std::io::Result<()> {
        self.send("STOPPING=1")
    }

    fn send(&self, message: &str) -> std::io::Result<()> {
        let Some(path) = &self.socket else {
            return Ok(());
        };
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_os_str().as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(path)?,
        };
        socket.send_to_addr(message.as_bytes(), &addr).map(drop)
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when systemd set it for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("skog-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to_socket(&path);
        n.ready("in sync: 3 endpoints\n2 peers").unwrap();
        n.watchdog().unwrap();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=in sync: 3 endpoints 2 peers");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_systemd_nothing_is_sent() {
        let n = Notifier::default();
        assert!(!n.is_enabled());
        n.ready("x").unwrap();
    }
}
