//! The tokio driver of one peer: it owns the peer's TCP connections (outbound attempts with
//! source address, TTL/GTSM and MD5 set before connecting; inbound ones handed over by the
//! speaker's listener), the timers, and connection-collision resolution, and runs the pure
//! [`Fsm`] on what happens. Frames are read by a reader task per connection (bounded channel,
//! so a slow speaker pushes back on the peer through TCP) and decoded here; decoded UPDATEs
//! and session changes go to the speaker as [`Report`]s, and the speaker sends packed UPDATEs
//! back with [`Command::Send`], tagged with the session epoch so nothing queued for an old
//! session leaks into a new one.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::codec::{
    self, DecodeContext, Family, HEADER_LEN, MAX_EXTENDED_MESSAGE_LEN, MAX_MESSAGE_LEN, Message,
    Notification, err,
};
use crate::config::PeerConfig;
use crate::fsm::{
    Action, CollisionWinner, DownReason, Event, Fsm, FsmConfig, Negotiated, Outgoing, State, Timer,
    collision_winner,
};
use crate::pack::NextHopSelf;
use crate::rib::PeerId;
use crate::sockopt;

/// What the speaker tells a session.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send these frames if session `epoch` is still the established one.
    Send {
        /// The session they were packed for.
        epoch: u64,
        /// Complete messages.
        frames: Vec<Vec<u8>>,
    },
    /// A connection the listener accepted from this peer.
    Inbound(TcpStream),
    /// Administrative stop: NOTIFICATION Cease with this RFC 8203 text, then end the task.
    Stop(String),
    /// Graceful-restart shutdown: close the connection without a NOTIFICATION (peers that
    /// help keep our routes) and end the task.
    Close,
}

/// What a session tells the speaker.
#[derive(Debug)]
pub(crate) struct Report {
    pub peer: PeerId,
    pub kind: ReportKind,
}

#[derive(Debug)]
pub(crate) enum ReportKind {
    /// Established; UPDATEs for it carry `epoch`.
    Up {
        epoch: u64,
        negotiated: Box<Negotiated>,
        next_hop: NextHopSelf,
        max_len: usize,
    },
    Down(DownReason),
    Update(codec::Update),
    RouteRefresh {
        family: Family,
        subtype: u8,
    },
    State {
        state: State,
        last_error: Option<String>,
    },
}

/// What the reader task hands over.
#[derive(Debug)]
enum Read {
    Frame(Vec<u8>),
    Bad(Notification),
    Closed(String),
}

/// One TCP connection: the write half here, the read half in a reader task.
#[derive(Debug)]
struct Conn {
    writer: OwnedWriteHalf,
    frames: mpsc::Receiver<Read>,
    reader: JoinHandle<()>,
    outbound: bool,
    local: SocketAddr,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    fn new(stream: TcpStream, outbound: bool, max_len: Arc<AtomicUsize>) -> io::Result<Conn> {
        let local = stream.local_addr()?;
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        stream.set_nodelay(true)?;
        let (mut rd, writer) = stream.into_split();
        let (tx, frames) = mpsc::channel(64);
        let reader = tokio::spawn(async move {
            let end = loop {
                let mut header = [0u8; HEADER_LEN];
                if let Err(e) = rd.read_exact(&mut header).await {
                    break Read::Closed(e.to_string());
                }
                let len = match codec::frame_length(&header, max_len.load(Ordering::Relaxed)) {
                    Ok(len) => len,
                    Err(n) => break Read::Bad(n),
                };
                let mut frame = vec![0u8; len];
                frame[..HEADER_LEN].copy_from_slice(&header);
                if let Err(e) = rd.read_exact(&mut frame[HEADER_LEN..]).await {
                    break Read::Closed(e.to_string());
                }
                if tx.send(Read::Frame(frame)).await.is_err() {
                    return;
                }
            };
            let _ = tx.send(end).await;
        });
        Ok(Conn {
            writer,
            frames,
            reader,
            outbound,
            local,
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await
    }
}

async fn next_read(conn: &mut Option<Conn>) -> Read {
    match conn {
        Some(c) => c
            .frames
            .recv()
            .await
            .unwrap_or_else(|| Read::Closed("reader ended".into())),
        None => std::future::pending().await,
    }
}

/// Creates the socket for an outbound connection with the per-peer options.
fn outbound_socket(cfg: &PeerConfig, md5_key: Option<&[u8]>, ebgp: bool) -> io::Result<TcpSocket> {
    let domain = if cfg.address.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    if let Some(local) = cfg.local_address {
        socket.bind(&SocketAddr::new(local, 0).into())?;
    }
    if let Some(key) = md5_key {
        sockopt::set_md5_key(&socket, cfg.address, key)?;
    }
    apply_ttl(&SockRef::from(&socket), cfg, ebgp)?;
    Ok(TcpSocket::from_std_stream(socket.into()))
}

/// TTL of our packets (1 for single-hop eBGP, the multihop value, or 255 with GTSM) and, with
/// GTSM, the lowest TTL accepted from the peer.
pub(crate) fn apply_ttl(socket: &SockRef<'_>, cfg: &PeerConfig, ebgp: bool) -> io::Result<()> {
    let v6 = cfg.address.is_ipv6();
    let ttl = if cfg.ttl_security {
        255
    } else {
        match (cfg.multihop_ttl, ebgp) {
            (Some(ttl), _) => ttl,
            (None, true) => 1,
            (None, false) => 64,
        }
    };
    if v6 {
        socket.set_unicast_hops_v6(u32::from(ttl))?;
    } else {
        socket.set_ttl_v4(u32::from(ttl))?;
    }
    if cfg.ttl_security {
        let hops = cfg.multihop_ttl.unwrap_or(1);
        sockopt::set_min_ttl(socket, v6, 255u8.saturating_sub(hops.saturating_sub(1)))?;
    }
    Ok(())
}

/// The link-local address of the interface holding `global` (from `if_inet6` of the calling
/// thread's network namespace), for the second IPv6 next hop.
fn link_local_beside(global: Ipv6Addr) -> Option<Ipv6Addr> {
    let table = std::fs::read_to_string("/proc/thread-self/net/if_inet6").ok()?;
    let rows: Vec<(Ipv6Addr, &str)> = table
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let hex = cols.next()?;
            let addr = u128::from_str_radix(hex, 16).ok()?;
            Some((Ipv6Addr::from(addr), cols.nth(4)?))
        })
        .collect();
    let dev = rows.iter().find(|(a, _)| *a == global)?.1;
    rows.iter()
        .find(|(a, d)| *d == dev && a.is_unicast_link_local())
        .map(|(a, _)| *a)
}

fn next_hop_self(local: IpAddr) -> NextHopSelf {
    match local {
        IpAddr::V4(v4) => NextHopSelf::V4(v4),
        IpAddr::V6(global) => NextHopSelf::V6 {
            global,
            link_local: link_local_beside(global),
        },
    }
}

/// Reads the MD5 key file (the key is the file's first line).
pub(crate) fn read_md5_key(cfg: &PeerConfig) -> io::Result<Option<Vec<u8>>> {
    let Some(path) = &cfg.md5_key_file else {
        return Ok(None);
    };
    let text = std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("MD5 key file {}: {e}", path.display())))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Some(line.to_vec()))
}

/// One peer's session task.
pub(crate) struct Session {
    peer: PeerId,
    cfg: PeerConfig,
    fsm: Fsm,
    md5_key: Option<Vec<u8>>,
    conn: Option<Conn>,
    /// A connection the peer opened while ours was opening (collision), until its OPEN.
    pending: Option<Conn>,
    attempt: u64,
    connecting: Option<JoinHandle<()>>,
    connected_tx: mpsc::UnboundedSender<(u64, io::Result<TcpStream>)>,
    timers: HashMap<Timer, Instant>,
    epoch: u64,
    max_len: Arc<AtomicUsize>,
    reports: mpsc::UnboundedSender<Report>,
    reported: (State, Option<String>),
}

enum Input {
    Command(Option<Command>),
    Connected(u64, io::Result<TcpStream>),
    Read(Read),
    PendingRead(Read),
    Timer(Timer),
}

impl Session {
    pub(crate) fn new(
        peer: PeerId,
        cfg: PeerConfig,
        fsm_cfg: FsmConfig,
        md5_key: Option<Vec<u8>>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> (
        Session,
        mpsc::UnboundedReceiver<(u64, io::Result<TcpStream>)>,
    ) {
        let (connected_tx, connected_rx) = mpsc::unbounded_channel();
        (
            Session {
                peer,
                cfg,
                fsm: Fsm::new(fsm_cfg),
                md5_key,
                conn: None,
                pending: None,
                attempt: 0,
                connecting: None,
                connected_tx,
                timers: HashMap::new(),
                epoch: 0,
                max_len: Arc::new(AtomicUsize::new(MAX_MESSAGE_LEN)),
                reports,
                reported: (State::Idle, None),
            },
            connected_rx,
        )
    }

    /// Runs until the speaker stops or closes the session (or goes away).
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut connected: mpsc::UnboundedReceiver<(u64, io::Result<TcpStream>)>,
    ) {
        self.event(Event::ManualStart).await;
        loop {
            let next_timer = self
                .timers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(t, at)| (*t, *at));
            let input = tokio::select! {
                c = commands.recv() => Input::Command(c),
                Some((attempt, result)) = connected.recv() => Input::Connected(attempt, result),
                r = next_read(&mut self.conn) => Input::Read(r),
                r = next_read(&mut self.pending) => Input::PendingRead(r),
                _ = tokio::time::sleep_until(next_timer.map_or_else(Instant::now, |t| t.1)), if next_timer.is_some() => {
                    Input::Timer(next_timer.map_or(Timer::Hold, |t| t.0))
                }
            };
            match input {
                Input::Command(None) | Input::Command(Some(Command::Close)) => {
                    info!(peer = %self.cfg.name, "closing session without NOTIFICATION");
                    return;
                }
                Input::Command(Some(Command::Stop(text))) => {
                    self.event(Event::ManualStop { text }).await;
                    return;
                }
                Input::Command(Some(Command::Send { epoch, frames })) => {
                    if epoch == self.epoch && self.fsm.state() == State::Established {
                        self.send_frames(&frames).await;
                    }
                }
                Input::Command(Some(Command::Inbound(stream))) => self.inbound(stream).await,
                Input::Connected(attempt, result) if attempt == self.attempt => {
                    self.connecting = None;
                    match result.and_then(|s| Conn::new(s, true, Arc::clone(&self.max_len))) {
                        Ok(conn) => {
                            self.conn = Some(conn);
                            self.event(Event::TcpConnected).await;
                        }
                        Err(e) => {
                            debug!(peer = %self.cfg.name, "connect failed: {e}");
                            self.event(Event::TcpFailed).await;
                        }
                    }
                }
                Input::Connected(..) => {}
                Input::Read(read) => self.read(read).await,
                Input::PendingRead(read) => self.pending_read(read).await,
                Input::Timer(t) => {
                    self.timers.remove(&t);
                    self.event(Event::TimerExpired(t)).await;
                }
            }
        }
    }

    async fn read(&mut self, read: Read) {
        let event = match read {
            Read::Frame(frame) => {
                let asn4 = self.fsm.negotiated().is_some_and(|n| n.asn4);
                match codec::decode(&frame, DecodeContext { asn4 }) {
                    Ok(Message::Update(u)) => {
                        if let Some(why) = &u.treat_as_withdraw {
                            warn!(peer = %self.cfg.name, "UPDATE treated as withdraw (RFC 7606): {why}");
                        }
                        for why in &u.discarded_attributes {
                            warn!(peer = %self.cfg.name, "attribute discarded (RFC 7606): {why}");
                        }
                        Event::Message(Message::Update(u))
                    }
                    Ok(m) => Event::Message(m),
                    Err(n) => {
                        warn!(peer = %self.cfg.name, "malformed message: {n}");
                        Event::DecodeError(n)
                    }
                }
            }
            Read::Bad(n) => Event::DecodeError(n),
            Read::Closed(why) => {
                debug!(peer = %self.cfg.name, "connection closed: {why}");
                Event::TcpFailed
            }
        };
        self.event(event).await;
    }

    /// A connection the peer opened; see [`Session::pending_read`] for collisions.
    async fn inbound(&mut self, stream: TcpStream) {
        let ebgp = self.cfg.asn != self.fsm.config().local_asn;
        if let Err(e) = apply_ttl(&SockRef::from(&stream), &self.cfg, ebgp) {
            warn!(peer = %self.cfg.name, "cannot set TTL on an accepted connection: {e}");
        }
        let conn = match Conn::new(stream, false, Arc::clone(&self.max_len)) {
            Ok(conn) => conn,
            Err(e) => return warn!(peer = %self.cfg.name, "accepted connection failed: {e}"),
        };
        match self.fsm.state() {
            State::Connect | State::Active => {
                self.cancel_connect();
                self.conn = Some(conn);
                self.event(Event::TcpConnected).await;
            }
            State::OpenSent | State::OpenConfirm if self.pending.is_none() => {
                self.pending = Some(conn);
            }
            // Idle refuses; an established session keeps its connection (RFC 4271 §6.8).
            _ => debug!(peer = %self.cfg.name, "refused a connection in {:?}", self.fsm.state()),
        }
    }

    /// The first message on a colliding connection: with the peer's identifier from its
    /// OPEN, keep the connection opened by the higher identifier (RFC 4271 §6.8).
    async fn pending_read(&mut self, read: Read) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        let open = match read {
            Read::Frame(frame) => match codec::decode(&frame, DecodeContext { asn4: false }) {
                Ok(Message::Open(open)) => open,
                _ => return,
            },
            _ => return,
        };
        let current_outbound = self.conn.as_ref().is_some_and(|c| c.outbound);
        let keep_pending = current_outbound
            && self.fsm.state() != State::Established
            && collision_winner(self.fsm.config().router_id, open.router_id)
                == CollisionWinner::Theirs;
        let cease = Notification::new(err::CEASE, err::CEASE_COLLISION).encode();
        if keep_pending {
            info!(peer = %self.cfg.name, "connection collision: keeping the peer's connection");
            if let Some(mut old) = self.conn.take() {
                let _ = old.send(&cease).await;
            }
            self.conn = Some(pending);
            self.event(Event::ConnectionReplaced).await;
            self.event(Event::TcpConnected).await;
            self.event(Event::Message(Message::Open(open))).await;
        } else {
            info!(peer = %self.cfg.name, "connection collision: keeping our connection");
            let _ = pending.send(&cease).await;
        }
    }

    fn cancel_connect(&mut self) {
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
        self.attempt += 1;
    }

    fn connect(&mut self) {
        self.cancel_connect();
        let attempt = self.attempt;
        let ebgp = self.cfg.asn != self.fsm.config().local_asn;
        let socket = outbound_socket(&self.cfg, self.md5_key.as_deref(), ebgp);
        let addr = SocketAddr::new(self.cfg.address, self.cfg.port);
        let tx = self.connected_tx.clone();
        let timeout = self
            .cfg
            .connect_retry
            .max(std::time::Duration::from_secs(1));
        self.connecting = Some(tokio::spawn(async move {
            let result = match socket {
                Ok(socket) => match tokio::time::timeout(timeout, socket.connect(addr)).await {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
                },
                Err(e) => Err(e),
            };
            let _ = tx.send((attempt, result));
        }));
    }

    async fn send_frames(&mut self, frames: &[Vec<u8>]) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let result = if frames.len() == 1 {
            conn.send(&frames[0]).await
        } else {
            conn.send(&frames.concat()).await
        };
        if let Err(e) = result {
            debug!(peer = %self.cfg.name, "send failed: {e}");
            self.conn = None;
            Box::pin(self.event(Event::TcpFailed)).await;
        }
    }

    /// Runs the FSM on `event` and carries out its actions.
    async fn event(&mut self, event: Event) {
        let mut queue = std::collections::VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.fsm.handle(event) {
                if let Some(follow_up) = self.act(action).await {
                    queue.push_back(follow_up);
                }
            }
        }
        let now = (self.fsm.state(), self.fsm.last_error().map(str::to_owned));
        if now != self.reported {
            self.reported = now.clone();
            self.report(ReportKind::State {
                state: now.0,
                last_error: now.1,
            });
        }
    }

    /// Carries out one action; a failed send becomes a follow-up event.
    async fn act(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Connect => self.connect(),
            Action::Disconnect => {
                self.cancel_connect();
                if let Some(mut conn) = self.conn.take() {
                    let _ = conn.writer.shutdown().await;
                }
                self.pending = None;
                self.max_len.store(MAX_MESSAGE_LEN, Ordering::Relaxed);
            }
            Action::Send(out) => {
                let bytes = match out {
                    Outgoing::Open(open) => match open.encode() {
                        Ok(b) => b,
                        Err(e) => {
                            warn!(peer = %self.cfg.name, "cannot encode our OPEN: {e}");
                            return None;
                        }
                    },
                    Outgoing::Keepalive => codec::keepalive(),
                    Outgoing::Notification(n) => {
                        info!(peer = %self.cfg.name, "sending NOTIFICATION {n}");
                        n.encode()
                    }
                };
                if let Some(conn) = self.conn.as_mut()
                    && let Err(e) = conn.send(&bytes).await
                {
                    debug!(peer = %self.cfg.name, "send failed: {e}");
                    return Some(Event::TcpFailed);
                }
            }
            Action::StartTimer(t, d) => {
                self.timers.insert(t, Instant::now() + d);
            }
            Action::StopTimer(t) => {
                self.timers.remove(&t);
            }
            Action::Up(negotiated) => {
                self.epoch += 1;
                let max_len = if negotiated.extended_message {
                    MAX_EXTENDED_MESSAGE_LEN
                } else {
                    MAX_MESSAGE_LEN
                };
                self.max_len.store(max_len, Ordering::Relaxed);
                let local = self
                    .conn
                    .as_ref()
                    .map_or(IpAddr::from([0u8; 4]), |c| c.local.ip());
                info!(peer = %self.cfg.name, "session established from {local}");
                self.report(ReportKind::Up {
                    epoch: self.epoch,
                    negotiated: Box::new(negotiated),
                    next_hop: next_hop_self(local),
                    max_len,
                });
            }
            Action::Down(reason) => {
                info!(peer = %self.cfg.name, "session down: {reason:?}");
                self.report(ReportKind::Down(reason));
            }
            Action::Deliver(update) => self.report(ReportKind::Update(update)),
            Action::RouteRefresh { family, subtype } => {
                self.report(ReportKind::RouteRefresh { family, subtype })
            }
        }
        None
    }

    fn report(&self, kind: ReportKind) {
        let _ = self.reports.send(Report {
            peer: self.peer,
            kind,
        });
    }
}
