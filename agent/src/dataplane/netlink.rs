//! The thin netlink driver: the request socket (strict-checked dumps filtered by protocol;
//! batched and pipelined writes, acknowledged per batch, with a large receive buffer and a
//! timeout around every batch; route lookups), the nexthop-object socket, the notification
//! socket (read as the programmer asks), and the per-tap sysctls (files under /proc/sys of the
//! calling thread's network namespace).

use std::io;
use std::net::IpAddr;
use std::num::NonZeroI32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use futures::stream::FuturesOrdered;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkDeserializable, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_proto::sys::protocols::NETLINK_ROUTE;
use netlink_proto::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use netlink_proto::{ConnectionHandle, ReplyExpectation};
use nix::libc::MSG_DONTWAIT;
use nix::sys::socket::{setsockopt, sockopt};
use rtnetlink::MulticastGroup;
use socket2::{SockFilter, SockRef};

use super::desired::Tap;
use super::kernel::{HopSets, KernelView};
use super::messages::{self, Message};
use super::nexthop::{self, NextHop, NextHopMessage, NextHops, Write};
use super::reconcile::Op;

/// Receive buffer of every socket (the kernel doubles it for its bookkeeping).
const RECEIVE_BUFFER: usize = 16 << 20;
/// Room for one notification datagram (the kernel sends at most a page or two).
const DATAGRAM: usize = 64 << 10;
/// Batches in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENOBUFS: i32 = 105;
const EEXIST: i32 = 17;
const EOPNOTSUPP: i32 = 95;
const EACCES: i32 = 13;
const EINVAL: i32 = 22;
const ENETUNREACH: i32 = 101;
const EHOSTUNREACH: i32 = 113;

/// A failure of the netlink driver.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket could not be opened or configured.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The connection task is gone.
    #[error("netlink connection closed")]
    Closed,
    /// The kernel did not answer in time (lost acknowledgements, e.g. after an overrun).
    #[error("no complete answer from the kernel to {what} within {timeout:?}")]
    Timeout {
        /// What was asked.
        what: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// The kernel refused a dump or a single request.
    #[error("kernel refused {what}: {source}")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
    /// The kernel refused one write.
    #[error("{0}")]
    Kernel(io::Error),
    /// A nexthop object id we tried to create is someone else's.
    #[error("nexthop id {0} is taken")]
    NextHopIdTaken(u32),
    /// The socket overflowed while writes were answered: whether they were done is unknown.
    #[error("answers lost (netlink socket overrun)")]
    AnswersLost,
    /// A sysctl could not be written.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// The error.
        source: io::Error,
    },
}

impl NetlinkError {
    /// Whether the request went unanswered, so whether it was done is unknown (only a
    /// resync tells).
    pub fn unanswered(&self) -> bool {
        matches!(
            self,
            NetlinkError::Timeout { .. } | NetlinkError::AnswersLost | NetlinkError::Closed
        )
    }

    /// Whether the kernel refused a request with one of these errnos.
    fn refused_with(&self, errnos: &[i32]) -> bool {
        matches!(self, NetlinkError::Refused { source, .. }
            if source.raw_os_error().is_some_and(|e| errnos.contains(&e)))
    }
}

fn kernel_error(code: NonZeroI32) -> io::Error {
    io::Error::from_raw_os_error(-code.get())
}

/// The request socket (dumps, lookups and writes: one, not several in parallel, see
/// docs/decisions.md), and the socket for nexthop objects (netlink-packet-route has no nexthop
/// messages).
#[derive(Debug, Clone)]
pub struct Netlink {
    requests: Connection<RouteNetlinkMessage>,
    /// Where netlink-proto puts the request socket's answers nobody waits for: the errors of
    /// the messages of a batch other than its last (see [`apply_batch`]).
    unanswered: Arc<Mutex<Unanswered<RouteNetlinkMessage>>>,
    nexthops: Connection<NextHopMessage>,
    batch_size: usize,
    timeout: Duration,
}

/// A netlink-proto connection, served by its own task.
#[derive(Debug, Clone)]
struct Connection<T: std::fmt::Debug + Clone> {
    handle: ConnectionHandle<T>,
    /// The socket's netlink port id, which the kernel puts in the notifications of our writes.
    port: u32,
}

/// netlink-proto's stream of answers nobody waits for.
type Unanswered<T> = UnboundedReceiver<(NetlinkMessage<T>, SocketAddr)>;

impl<T> Connection<T>
where
    T: std::fmt::Debug
        + Clone
        + NetlinkSerializable
        + NetlinkDeserializable
        + Unpin
        + Send
        + 'static,
{
    /// Opens the socket in the calling thread's namespace and spawns its connection task on
    /// the current tokio runtime; returns it with the stream of answers nobody waits for.
    fn open() -> Result<(Connection<T>, Unanswered<T>), NetlinkError> {
        let (mut conn, handle, unanswered) =
            netlink_proto::new_connection::<T>(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        let socket = conn.socket_mut().socket_mut();
        set_receive_buffer(socket)?;
        socket.set_cap_ack(true).map_err(NetlinkError::Socket)?;
        socket
            .set_netlink_get_strict_chk(true)
            .map_err(NetlinkError::Socket)?;
        let port = socket
            .bind_auto()
            .map_err(NetlinkError::Socket)?
            .port_number();
        conn.set_forward_ack(true);
        tokio::spawn(conn);
        Ok((Connection { handle, port }, unanswered))
    }

    /// Sends a request (a dump, or a single request that asks for an acknowledgement) and hands
    /// each answer to `take` as it arrives (a dump of 100,000 routes is never held decoded all
    /// at once).
    async fn converse(
        &self,
        what: &'static str,
        request: NetlinkMessage<T>,
        timeout: Duration,
        mut take: impl FnMut(T),
    ) -> Result<(), NetlinkError> {
        let mut responses = self
            .handle
            .request(request, SocketAddr::new(0, 0))
            .map_err(|_| NetlinkError::Closed)?;
        let deadline = tokio::time::Instant::now() + timeout;
        while let Some(msg) = tokio::time::timeout_at(deadline, responses.next())
            .await
            .map_err(|_| NetlinkError::Timeout { what, timeout })?
        {
            match msg.payload {
                NetlinkPayload::InnerMessage(inner) => take(inner),
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => {
                        return Err(NetlinkError::Refused {
                            what,
                            source: kernel_error(code),
                        });
                    }
                    // The acknowledgement: nothing follows.
                    None => break,
                },
                _ => {}
            }
        }
        Ok(())
    }
}

impl Netlink {
    /// Takes the errors waiting for messages of these batches (sent on the request socket and
    /// answered) and puts them in the batches' outcomes.
    fn collect_errors(&self, batches: &mut [Batch]) {
        let mut unanswered = self
            .unanswered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Ok((msg, _)) = unanswered.try_recv() {
            let e = match msg.payload {
                NetlinkPayload::Error(e) => e,
                // The socket's buffer overflowed: some errors never came. Nothing written
                // since the last collect can be taken as done.
                NetlinkPayload::Overrun(_) => {
                    for batch in batches.iter_mut() {
                        for outcome in batch.outcomes.iter_mut().filter(|o| o.is_ok()) {
                            *outcome = Err(NetlinkError::AnswersLost);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(code) = e.code else { continue };
            let seq = msg.header.sequence_number;
            if let Some((batch, index)) = batches
                .iter_mut()
                .find_map(|b| b.index_of(seq).map(|i| (b, i)))
            {
                batch.outcomes[index] = outcome(batch.deletes[index], Some(code));
            }
        }
    }
}

impl Netlink {
    /// Opens the sockets in the calling thread's namespace and spawns their connection tasks
    /// on the current tokio runtime.
    pub fn open(batch_size: usize, timeout: Duration) -> Result<Netlink, NetlinkError> {
        let (requests, unanswered) = Connection::open()?;
        // Nothing unasked comes on the nexthop socket (it joins no group): netlink-proto
        // drops what would.
        let (nexthops, _) = Connection::open()?;
        Ok(Netlink {
            requests,
            unanswered: Arc::new(Mutex::new(unanswered)),
            nexthops,
            batch_size: batch_size.max(1),
            timeout,
        })
    }

    /// The port ids of the sockets that write.
    pub fn ports(&self) -> [u32; 2] {
        [self.requests.port, self.nexthops.port]
    }

    /// Our nexthop objects (protocol `protocol`); `None` when the kernel has none (before
    /// Linux 5.3).
    async fn read_nexthops(&self, protocol: u8) -> Result<Option<NextHops>, NetlinkError> {
        let mut objects = NextHops::new();
        let dumped = self
            .nexthops
            .converse(
                "a nexthop dump",
                NextHopMessage::dump(),
                self.timeout,
                |msg| {
                    if msg.protocol == protocol
                        && let (Some(id), Some(object)) = (msg.id(), msg.next_hop())
                    {
                        objects.insert(id, object);
                    }
                },
            )
            .await;
        match dumped {
            Ok(()) => Ok(Some(objects)),
            Err(e) if e.refused_with(&[EOPNOTSUPP]) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates nexthop object `id` (failing with [`NetlinkError::NextHopIdTaken`] if the id
    /// is someone else's), or replaces it.
    pub async fn write_nexthop(
        &self,
        id: u32,
        protocol: u8,
        object: &NextHop,
        write: Write,
    ) -> Result<(), NetlinkError> {
        let request = NextHopMessage::write(id, protocol, object, write);
        match self
            .nexthops
            .converse("a nexthop object", request, self.timeout, drop)
            .await
        {
            Err(e) if e.refused_with(&[EEXIST]) => Err(NetlinkError::NextHopIdTaken(id)),
            outcome => outcome,
        }
    }

    /// Deletes nexthop object `id` (and, in the kernel, every route that points at it).
    pub async fn delete_nexthop(&self, id: u32) -> Result<(), NetlinkError> {
        let request = NextHopMessage::delete(id);
        match self
            .nexthops
            .converse("a nexthop deletion", request, self.timeout, drop)
            .await
        {
            Err(e) if e.refused_with(&[ENOENT]) => Ok(()),
            outcome => outcome,
        }
    }

    /// The interface through which `gateway` is directly reachable, by the kernel's route
    /// lookup; `None` when it is reached through another gateway (or not at all).
    pub async fn gateway_interface(&self, gateway: IpAddr) -> Result<Option<u32>, NetlinkError> {
        let mut lookup = RouteMessage::default();
        (
            lookup.header.address_family,
            lookup.header.destination_prefix_length,
        ) = match gateway {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        lookup
            .attributes
            .push(RouteAttribute::Destination(gateway.into()));
        let mut request = Message::from(RouteNetlinkMessage::GetRoute(lookup));
        request.header.flags = NLM_F_REQUEST;
        // The interface of the route found, unless that route goes through a gateway itself.
        let mut direct = None;
        let looked_up = self
            .requests
            .converse("a route lookup", request, self.timeout, |answer| {
                if let RouteNetlinkMessage::NewRoute(route) = answer {
                    let mut oif = None;
                    for attribute in &route.attributes {
                        match attribute {
                            RouteAttribute::Oif(i) => oif = Some(*i),
                            // Through a gateway (of either family): not direct.
                            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => return,
                            _ => {}
                        }
                    }
                    direct = oif;
                }
            })
            .await;
        match looked_up {
            Ok(()) => Ok(direct),
            // No route, or an unreachable, blackhole or prohibit one: not reachable.
            Err(e) if e.refused_with(&[ENETUNREACH, EHOSTUNREACH, EINVAL, EACCES]) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs a dump on the request socket.
    async fn dump(
        &self,
        what: &'static str,
        request: Message,
        take: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), NetlinkError> {
        self.requests
            .converse(what, request, self.timeout, take)
            .await
    }

    /// Reads the kernel: every link, our nexthop objects (`nexthop_protocol`), the main-table
    /// routes with our protocols (their next-hop sets shared through `hop_sets`), every
    /// neighbour and proxy entry.
    pub async fn read_kernel(
        &self,
        route_protocols: &[u8],
        nexthop_protocol: u8,
        hop_sets: &mut HopSets,
    ) -> Result<KernelView, NetlinkError> {
        let mut view = KernelView {
            nexthops: self.read_nexthops(nexthop_protocol).await?,
            ..KernelView::default()
        };
        self.dump("a link dump", messages::dump_links(), |msg| {
            if let RouteNetlinkMessage::NewLink(link) = msg
                && let Some(link) = messages::link_from_kernel(&link)
            {
                view.links.insert(link.ifindex, link);
            }
        })
        .await?;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for protocol in route_protocols {
                let request = messages::dump_routes(family, *protocol);
                let nexthops = view.nexthops.as_ref();
                self.dump("a route dump", request, |msg| {
                    if let RouteNetlinkMessage::NewRoute(route) = msg
                        && let Some((key, route)) =
                            messages::route_from_kernel(&route, route_protocols, nexthops)
                    {
                        view.routes.insert(key, hop_sets.route(route));
                    }
                })
                .await?;
            }
            for proxy in [false, true] {
                let request = messages::dump_neighs(family, proxy);
                self.dump("a neighbour dump", request, |msg| {
                    if let RouteNetlinkMessage::NewNeighbour(neigh) = msg
                        && let Some((key, neigh)) = messages::neigh_from_kernel(&neigh)
                    {
                        view.neighs.insert(key, neigh);
                    }
                })
                .await?;
            }
        }
        Ok(view)
    }

    /// Sends `ops` in pipelined batches; returns one outcome per operation, in order. A delete
    /// of something already gone succeeds. Calls must not overlap: the errors of a call's
    /// batches are collected from a stream all calls share (the programmer makes one call at
    /// a time).
    pub async fn apply(&self, ops: &[Op]) -> Vec<Result<(), NetlinkError>> {
        // Requests are built a batch at a time, as batches go out: a large apply (100,000
        // learned routes) never holds every message at once.
        let mut chunks = ops.chunks(self.batch_size);
        let mut in_flight = FuturesOrdered::new();
        let mut batches = Vec::new();
        loop {
            while in_flight.len() < BATCHES_IN_FLIGHT {
                let Some(chunk) = chunks.next() else {
                    break;
                };
                let requests = chunk.iter().map(messages::op_request).collect();
                let deletes = chunk.iter().map(is_delete).collect();
                let handle = self.requests.handle.clone();
                in_flight.push_back(apply_batch(handle, requests, deletes, self.timeout));
            }
            match in_flight.next().await {
                Some(batch) => batches.push(batch),
                None => break,
            }
        }
        // Every batch is answered, so the errors of its other messages are waiting already.
        self.collect_errors(&mut batches);
        batches.into_iter().flat_map(|b| b.outcomes).collect()
    }
}

/// A batch of writes sent in one datagram, and what came of each.
struct Batch {
    deletes: Vec<bool>,
    outcomes: Vec<Result<(), NetlinkError>>,
    /// The sequence number of its last message, once answered (netlink-proto numbers the
    /// messages of a batch consecutively).
    last_seq: Option<u32>,
}

impl Batch {
    /// The position of the message numbered `seq` in this batch.
    fn index_of(&self, seq: u32) -> Option<usize> {
        let back = usize::try_from(self.last_seq?.wrapping_sub(seq)).ok()?;
        self.outcomes.len().checked_sub(1)?.checked_sub(back)
    }
}

/// What the kernel's answer `code` (none: success) to a write means.
fn outcome(is_delete: bool, code: Option<NonZeroI32>) -> Result<(), NetlinkError> {
    match code {
        None => Ok(()),
        Some(code) if is_delete && [ENOENT, ESRCH].contains(&-code.get()) => Ok(()),
        Some(code) => Err(NetlinkError::Kernel(kernel_error(code))),
    }
}

/// Sends one batch in one datagram. Only its last message asks for an acknowledgement: the
/// kernel answers the others only if they fail, and handles a batch in order, so once the
/// last is answered the batch is done, and the errors of the others (which netlink-proto
/// passes on as unsolicited) are waiting on the socket's unanswered stream, matched by
/// sequence number ([`RouteSocket::collect_errors`]). Half the messages of acknowledging each
/// write, and none of the work of tracking each.
async fn apply_batch(
    handle: ConnectionHandle<RouteNetlinkMessage>,
    requests: Vec<Message>,
    deletes: Vec<bool>,
    timeout: Duration,
) -> Batch {
    let count = requests.len();
    let failed = |deletes, error: &dyn Fn() -> NetlinkError| Batch {
        outcomes: (0..count).map(|_| Err(error())).collect(),
        deletes,
        last_seq: None,
    };
    let last = count.saturating_sub(1);
    let requests = requests.into_iter().enumerate().map(|(i, mut msg)| {
        if i == last {
            (msg, ReplyExpectation::Expected)
        } else {
            msg.header.flags &= !NLM_F_ACK;
            (msg, ReplyExpectation::NotExpected)
        }
    });
    let Ok(mut answers) = handle.request_batch_with_expectation(requests, SocketAddr::new(0, 0))
    else {
        return failed(deletes, &|| NetlinkError::Closed);
    };
    let answer = async {
        while let Some(msg) = answers.next().await {
            if let NetlinkPayload::Error(e) = msg.payload {
                return Some((msg.header.sequence_number, e.code));
            }
        }
        None
    };
    let Ok(Some((seq, code))) = tokio::time::timeout(timeout, answer).await else {
        return failed(deletes, &|| NetlinkError::Timeout {
            what: "a write batch",
            timeout,
        });
    };
    let mut outcomes: Vec<_> = (0..count).map(|_| Ok(())).collect();
    if let Some(slot) = outcomes.last_mut() {
        *slot = outcome(deletes[last], code);
    }
    Batch {
        deletes,
        outcomes,
        last_seq: Some(seq),
    }
}

fn is_delete(op: &Op) -> bool {
    matches!(op, Op::DeleteRoute(..) | Op::DeleteNeigh(_))
}

/// Gives `socket` a [`RECEIVE_BUFFER`]: forced past `net.core.rmem_max` when we may
/// (CAP_NET_ADMIN, as skogd has), else as much as that allows. The notifications of a burst
/// (other programs' changes, link events) and the answers to a round of writes must fit, or
/// they are lost and a full resync follows.
fn set_receive_buffer(socket: &mut netlink_sys::Socket) -> Result<(), NetlinkError> {
    if setsockopt(&*socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_ok() {
        return Ok(());
    }
    socket
        .set_rx_buf_sz(RECEIVE_BUFFER)
        .map_err(NetlinkError::Socket)
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// A classic BPF program that drops the netlink messages whose sender port id (`nlmsg_pid`,
/// the notifications of a request socket's writes) is one of `ports`, and keeps the rest.
fn echo_filter(ports: &[u32]) -> Vec<Insn> {
    const LOAD_WORD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const NLMSG_PID: u32 = 12; // offsetof(struct nlmsghdr, nlmsg_pid)
    let insn = |code, jt, k| Insn { code, jt, jf: 0, k };
    let mut program = vec![insn(LOAD_WORD, 0, NLMSG_PID)];
    let count = ports.len();
    for (i, port) in ports.iter().enumerate() {
        // Loads read big-endian; the header is in host order. Jump past the jumps left and
        // the "keep" to the "drop".
        let value = u32::from_be_bytes(port.to_ne_bytes());
        let to_drop = u8::try_from(count - i).unwrap_or(u8::MAX);
        program.push(insn(JUMP_IF_EQUAL, to_drop, value));
    }
    program.push(insn(RETURN, 0, u32::MAX)); // keep the whole message
    program.push(insn(RETURN, 0, 0)); // drop it
    program
}

/// A kernel notification.
#[derive(Debug)]
pub enum Event {
    /// A link, route or neighbour changed.
    Changed(RouteNetlinkMessage),
    /// A nexthop object was created or replaced: what it is now (`None`: not of a kind we
    /// write).
    NextHopChanged {
        /// Its id.
        id: u32,
        /// Its content.
        object: Option<NextHop>,
    },
    /// A nexthop object was deleted, and with it the routes that pointed at it.
    NextHopDeleted(u32),
    /// The socket's buffer overflowed and notifications were lost: only a resync is safe.
    Overrun,
}

/// Kernel notifications (links, IPv4/IPv6 routes, neighbours, nexthop deletions), read and decoded a datagram at
/// a time as the programmer asks for them: a backlog waits in the kernel's socket buffer, not
/// decoded in ours. The notifications of our own writes (their header carries the port id of
/// the socket that asked) are dropped: each write's outcome, from its batch's answers, has
/// already gone into the programmer's view.
pub struct Events {
    socket: TokioSocket,
    /// Port ids of our request sockets, whose notifications are skipped.
    own_ports: Vec<u32>,
    /// The last datagram read, and where its next undecoded message starts.
    datagram: Vec<u8>,
    at: usize,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// Subscribes to link, route, neighbour and nexthop notifications in the calling thread's
    /// namespace.
    pub fn open() -> Result<Events, NetlinkError> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        let sock = socket.socket_mut();
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Neigh,
        ];
        sock.bind(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        for group in groups {
            sock.add_membership(group as u32)
                .map_err(NetlinkError::Socket)?;
        }
        // Kernels without nexthop objects have no such group.
        if let Err(e) = sock.add_membership(nexthop::RTNLGRP_NEXTHOP) {
            tracing::debug!("no nexthop notifications: {e}");
        }
        set_receive_buffer(sock)?;
        Ok(Events {
            socket,
            own_ports: Vec::new(),
            datagram: Vec::with_capacity(DATAGRAM),
            at: 0,
        })
    }

    /// Skips from now on the notifications of what the sockets with these port ids wrote:
    /// the kernel drops them before they reach our socket (a socket filter), and what still
    /// arrives (no filter) is skipped undecoded.
    pub fn skip_echoes_of(&mut self, ports: impl IntoIterator<Item = u32>) {
        self.own_ports = ports.into_iter().collect();
        let filter: Vec<SockFilter> = echo_filter(&self.own_ports)
            .iter()
            .map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect();
        if let Err(e) = SockRef::from(self.socket.socket_ref()).attach_filter(&filter) {
            tracing::warn!("no socket filter for our own notifications ({e}); skipping them here");
        }
    }

    /// The next notification; `None` when the socket failed (logged).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.decode_next() {
                return Some(event);
            }
            self.datagram.clear();
            self.at = 0;
            let received = self.socket.recv(&mut self.datagram).await;
            if let Some(event) = self.received(received) {
                return event;
            }
        }
    }

    /// The next notification already waiting, without waiting for one (and without using the
    /// task's tokio budget, so one drain takes a whole backlog); `Some(None)` when the socket
    /// failed (logged).
    pub fn try_next(&mut self) -> Option<Option<Event>> {
        loop {
            if let Some(event) = self.decode_next() {
                return Some(Some(event));
            }
            self.datagram.clear();
            self.at = 0;
            let received = self
                .socket
                .socket_ref()
                .recv(&mut self.datagram, MSG_DONTWAIT);
            match received {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                received => {
                    if let Some(event) = self.received(received.map(drop)) {
                        return Some(event);
                    }
                }
            }
        }
    }

    /// What a receive means: `None` when a datagram arrived (decode it), else the event to
    /// report (an overrun, or `None` for a failed socket).
    fn received(&self, received: io::Result<()>) -> Option<Option<Event>> {
        match received {
            Ok(()) => None,
            Err(e) if e.raw_os_error() == Some(ENOBUFS) => Some(Some(Event::Overrun)),
            Err(e) => {
                tracing::error!("reading kernel notifications: {e}");
                Some(None)
            }
        }
    }

    /// Decodes the next message of the current datagram; skips (and logs) what does not
    /// decode, and what is not a notification we use.
    fn decode_next(&mut self) -> Option<Event> {
        while self.at < self.datagram.len() {
            let rest = &self.datagram[self.at..];
            let (len, port, kind) = match NetlinkBuffer::new_checked(rest) {
                Ok(buf) => (buf.length() as usize, buf.port_number(), buf.message_type()),
                Err(e) => {
                    tracing::warn!("undecodable kernel notification datagram: {e}");
                    self.at = self.datagram.len();
                    return None;
                }
            };
            let echo = self.own_ports.contains(&port);
            let bytes = rest.get(..len);
            // Messages in a datagram are 4-byte aligned.
            self.at += len.max(1).next_multiple_of(4);
            if echo {
                continue;
            }
            if kind == nexthop::RTM_NEWNEXTHOP || kind == nexthop::RTM_DELNEXTHOP {
                let decoded = bytes
                    .and_then(|b| NetlinkMessage::<NextHopMessage>::deserialize(b).ok())
                    .and_then(|msg| match msg.payload {
                        NetlinkPayload::InnerMessage(inner) => Some(inner),
                        _ => None,
                    });
                match decoded.as_ref().and_then(|msg| Some((msg.id()?, msg))) {
                    Some((id, msg)) if kind == nexthop::RTM_NEWNEXTHOP => {
                        let object = msg.next_hop();
                        return Some(Event::NextHopChanged { id, object });
                    }
                    Some((id, _)) => return Some(Event::NextHopDeleted(id)),
                    None => {
                        tracing::warn!("undecodable nexthop notification");
                        continue;
                    }
                }
            }
            match bytes.map(Message::deserialize) {
                Some(Ok(msg)) => {
                    if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                        return Some(Event::Changed(inner));
                    }
                }
                Some(Err(e)) => tracing::debug!("skipping a kernel notification: {e}"),
                None => tracing::warn!("truncated kernel notification"),
            }
        }
        None
    }
}

/// The per-tap sysctls that let a VM use its subnet's gateway address to reach the host. The
/// host answers a VM's neighbour solicitations for the gateway at once: by default the kernel
/// delays answers by proxy at random, up to 0.8 s for IPv6, and a VM's first packet (and its
/// first after each neighbour cache expiry) waited for that.
pub fn tap_sysctls(tap: &str, route_localnet: bool) -> Vec<(String, &'static str)> {
    let mut list = vec![
        (format!("net/ipv4/conf/{tap}/proxy_arp"), "1"),
        (format!("net/ipv4/neigh/{tap}/proxy_delay"), "0"),
        (format!("net/ipv4/conf/{tap}/forwarding"), "1"),
        (format!("net/ipv6/conf/{tap}/accept_ra"), "0"),
        (format!("net/ipv6/conf/{tap}/proxy_ndp"), "1"),
        (format!("net/ipv6/neigh/{tap}/proxy_delay"), "0"),
        (format!("net/ipv6/conf/{tap}/forwarding"), "1"),
    ];
    if route_localnet {
        list.push((format!("net/ipv4/conf/{tap}/route_localnet"), "1"));
    }
    list
}

/// Writes a tap's sysctls (in the calling thread's network namespace).
pub fn write_sysctls(tap: &Tap, route_localnet: bool) -> Result<(), NetlinkError> {
    for (key, value) in tap_sysctls(&tap.name, route_localnet) {
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, value).map_err(|source| NetlinkError::Sysctl { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_finds_its_messages_by_sequence_number_across_wrap_around() {
        let batch = |count: usize, last_seq: Option<u32>| Batch {
            deletes: vec![false; count],
            outcomes: (0..count).map(|_| Ok(())).collect(),
            last_seq,
        };
        let b = batch(4, Some(103));
        assert_eq!(
            [99, 100, 101, 102, 103, 104].map(|seq| b.index_of(seq)),
            [None, Some(0), Some(1), Some(2), Some(3), None]
        );
        // netlink-proto's numbers wrap around.
        let b = batch(3, Some(1));
        assert_eq!(
            [u32::MAX - 1, u32::MAX, 0, 1, 2].map(|seq| b.index_of(seq)),
            [None, Some(0), Some(1), Some(2), None]
        );
        // Not answered (timed out): nothing is matched to it.
        assert_eq!(batch(3, None).index_of(5), None);
    }

    #[test]
    fn the_echo_filter_drops_our_ports_and_keeps_the_rest() {
        // A small interpreter for the three instructions the filter uses.
        fn run(program: &[Insn], pid: u32) -> u32 {
            let mut pc = 0;
            let mut acc = 0u32;
            loop {
                let i = program[pc];
                match i.code {
                    0x20 => {
                        assert_eq!(i.k, 12);
                        acc = u32::from_be_bytes(pid.to_ne_bytes());
                        pc += 1;
                    }
                    0x15 => pc += 1 + usize::from(if acc == i.k { i.jt } else { i.jf }),
                    0x06 => return i.k,
                    other => panic!("unexpected instruction {other:#x}"),
                }
            }
        }
        let program = echo_filter(&[4242, 77]);
        assert_eq!(run(&program, 4242), 0);
        assert_eq!(run(&program, 77), 0);
        assert_eq!(run(&program, 0), u32::MAX);
        assert_eq!(run(&program, 4243), u32::MAX);
    }

    #[test]
    fn sysctls_cover_proxy_arp_ndp_forwarding_and_optionally_route_localnet() {
        let keys: Vec<_> = tap_sysctls("tapx", false)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            keys,
            [
                "net/ipv4/conf/tapx/proxy_arp=1",
                "net/ipv4/neigh/tapx/proxy_delay=0",
                "net/ipv4/conf/tapx/forwarding=1",
                "net/ipv6/conf/tapx/accept_ra=0",
                "net/ipv6/conf/tapx/proxy_ndp=1",
                "net/ipv6/neigh/tapx/proxy_delay=0",
                "net/ipv6/conf/tapx/forwarding=1",
            ]
        );
        assert!(
            tap_sysctls("tapx", true).contains(&("net/ipv4/conf/tapx/route_localnet".into(), "1"))
        );
    }
}
