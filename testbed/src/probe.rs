//! Reachability probes between namespaces: ping, and TCP/UDP probes against an echo server that
//! report whether a connection was allowed, refused or silently dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::exec::run_with_timeout;
use crate::netns::Netns;
use crate::{Error, Result};

/// Transport protocol of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP: a connection, a line out, the echo back.
    Tcp,
    /// UDP: one datagram out, the echo back.
    Udp,
}

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The echo came back: the path and the rules allow it.
    Allowed,
    /// A TCP RST or ICMP unreachable came back (a reject rule, or nobody listening).
    Refused,
    /// Nothing came back in time (a drop rule, or no route).
    TimedOut,
}

impl ProbeOutcome {
    /// Whether the probe got through.
    pub fn is_allowed(self) -> bool {
        self == ProbeOutcome::Allowed
    }
}

const PAYLOAD: &[u8] = b"skog-probe\n";

/// A TCP or UDP echo server running on a thread inside a namespace; stops on drop.
#[derive(Debug)]
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Option<()>>>,
    addr: SocketAddr,
}

impl EchoServer {
    /// Listens on `addr:port` inside `ns` (use address 0.0.0.0 or :: for any).
    pub fn start(ns: &Netns, protocol: Protocol, addr: IpAddr, port: u16) -> Result<EchoServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let bind = SocketAddr::new(addr, port);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = ns.spawn_inside(move || match protocol {
            Protocol::Tcp => serve_tcp(bind, &flag, ready_tx),
            Protocol::Udp => serve_udp(bind, &flag, ready_tx),
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(EchoServer {
                stop,
                thread: Some(thread),
                addr: bind,
            }),
            Ok(Err(e)) => Err(Error::io(
                format!("echo server bind {bind} in {}", ns.name()),
                e,
            )),
            Err(_) => Err(Error::Topology(format!(
                "echo server in {} did not start",
                ns.name()
            ))),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Ready = std::sync::mpsc::Sender<std::io::Result<()>>;

fn serve_tcp(bind: SocketAddr, stop: &AtomicBool, ready: Ready) {
    let listener = match TcpListener::bind(bind).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 64];
                if let Ok(n) = conn.read(&mut buf) {
                    let _ = conn.write_all(&buf[..n]);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_udp(bind: SocketAddr, stop: &AtomicBool, ready: Ready) {
    let socket = match UdpSocket::bind(bind).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .map(|()| s)
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

fn probe_tcp(to: SocketAddr, timeout: Duration) -> ProbeOutcome {
    let mut conn = match TcpStream::connect_timeout(&to, timeout) {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::TimedOut => return ProbeOutcome::TimedOut,
        Err(_) => return ProbeOutcome::Refused,
    };
    let _ = conn.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 64];
    match conn.write_all(PAYLOAD).and_then(|()| conn.read(&mut buf)) {
        Ok(n) if &buf[..n] == PAYLOAD => ProbeOutcome::Allowed,
        Ok(_) => ProbeOutcome::Refused,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            ProbeOutcome::TimedOut
        }
        Err(_) => ProbeOutcome::Refused,
    }
}

fn probe_udp(to: SocketAddr, from: Option<IpAddr>, timeout: Duration) -> ProbeOutcome {
    let local = from.unwrap_or(if to.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    });
    let Ok(socket) = UdpSocket::bind(SocketAddr::new(local, 0)) else {
        return ProbeOutcome::Refused;
    };
    let _ = socket.set_read_timeout(Some(timeout));
    if socket
        .connect(to)
        .and_then(|()| socket.send(PAYLOAD))
        .is_err()
    {
        return ProbeOutcome::Refused;
    }
    let mut buf = [0u8; 64];
    match socket.recv(&mut buf) {
        Ok(n) if &buf[..n] == PAYLOAD => ProbeOutcome::Allowed,
        Ok(_) => ProbeOutcome::Refused,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
        Err(_) => ProbeOutcome::TimedOut,
    }
}

impl Netns {
    /// Connects from this namespace to `to` over `protocol` and reports what happened. Pair it
    /// with an [`EchoServer`] at `to`. `timeout` bounds the whole probe.
    pub fn probe(
        &self,
        protocol: Protocol,
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<ProbeOutcome> {
        match protocol {
            Protocol::Tcp => self.enter(move || probe_tcp(to, timeout)),
            Protocol::Udp => self.enter(move || probe_udp(to, None, timeout)),
        }
    }

    /// Sends `count` pings to `addr` (0.2 s apart, 1 s wait each); true if any reply came back.
    pub fn ping(&self, addr: IpAddr, count: u32) -> Result<bool> {
        let count = count.max(1).to_string();
        let target = addr.to_string();
        let mut cmd = self.command("ping");
        cmd.args(["-n", "-q", "-c", &count, "-i", "0.2", "-W", "1", &target]);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
        Ok(out.status.success())
    }
}
