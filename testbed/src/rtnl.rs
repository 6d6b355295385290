//! A namespace's routes over rtnetlink, without spawning `ip`, for benchmarks that time how
//! fast routes propagate: [`RouteWatch`] follows the main routing table as the kernel announces
//! its changes (RTM_NEWROUTE / RTM_DELROUTE multicast) and timestamps each one on arrival;
//! [`RouteWriter`] adds and deletes device routes with netlink requests, as Felix does.
//!
//! The sockets are opened inside the namespace and then used from ordinary threads (a netlink
//! socket stays in the namespace it was created in).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netns::Netns;
use crate::{Error, Result};

/// rtnetlink multicast groups (`RTNLGRP_*` of `linux/rtnetlink.h`).
const GROUP_IPV4_ROUTE: u32 = 7;
const GROUP_IPV6_ROUTE: u32 = 11;
/// Receive buffer asked for (the kernel caps it at `net.core.rmem_max`): large enough that
/// bursts of thousands of route changes are not dropped while we read.
const RECEIVE_BUFFER: usize = 8 << 20;
/// How often the watcher thread looks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long a waiter lets the table stay unchanged before it has it re-read from a dump.
const QUIET_BEFORE_DUMP: Duration = Duration::from_secs(1);

/// Requests per datagram, each datagram's acknowledgements read before the next is sent.
const WRITE_CHUNK: usize = 256;

type Message = NetlinkMessage<RouteNetlinkMessage>;

/// When a destination of the main table was last seen to appear or disappear.
#[derive(Debug, Clone, Copy)]
struct Seen {
    present: bool,
    at: Instant,
}

#[derive(Debug)]
struct Table {
    routes: HashMap<IpNet, Seen>,
    /// When the watch started: the time of "absent" for destinations never seen.
    started: Instant,
    /// How often a re-read of the table found changes whose notifications were lost.
    resyncs: u32,
    /// Why the watcher thread stopped, if it failed.
    failed: Option<String>,
    /// A waiter saw nothing change for a while: re-read the table.
    dump_requested: bool,
}

#[derive(Debug)]
struct Shared {
    table: Mutex<Table>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Follows a namespace's main routing table (IPv4 and IPv6) from a thread of its own, keyed by
/// destination. Each change is timestamped when the thread receives it, so
/// [`RouteWatch::wait_for`] tells when a set of routes was complete (or gone), not when the
/// caller happened to look. If the kernel drops notifications (receive buffer full), the table
/// is re-read from a dump and the changes found get the dump's time, an upper bound;
/// [`RouteWatch::resyncs`] counts those. The kernel reports one loss per congestion episode and
/// can drop more silently before the socket is drained, so a waiter that sees nothing change
/// for [`QUIET_BEFORE_DUMP`] while still unsatisfied has the table re-read as well. ECMP routes are one destination: a deletion of one of
/// their paths counts as the destination disappearing.
#[derive(Debug)]
pub struct RouteWatch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Netns {
    /// Starts watching this namespace's main routing table. Returns once subscribed and
    /// filled with the routes present.
    pub fn watch_routes(&self) -> Result<RouteWatch> {
        let (events, dumps) = self
            .enter(|| -> io::Result<(Socket, Socket)> {
                let mut events = Socket::new(NETLINK_ROUTE)?;
                events.bind_auto()?;
                events.set_rx_buf_sz(RECEIVE_BUFFER)?;
                events.add_membership(GROUP_IPV4_ROUTE)?;
                events.add_membership(GROUP_IPV6_ROUTE)?;
                let mut dumps = Socket::new(NETLINK_ROUTE)?;
                dumps.bind_auto()?;
                dumps.set_rx_buf_sz(RECEIVE_BUFFER)?;
                Ok((events, dumps))
            })?
            .map_err(|e| Error::io(format!("open rtnetlink sockets in {}", self.name()), e))?;
        socket2::SockRef::from(&events)
            .set_read_timeout(Some(STOP_POLL))
            .map_err(|e| Error::io("set a receive timeout on an rtnetlink socket", e))?;
        let started = Instant::now();
        let routes = dump_main_table(&dumps)
            .map_err(|e| Error::io(format!("dump the routes of {}", self.name()), e))?
            .into_iter()
            .map(|dst| {
                let seen = Seen {
                    present: true,
                    at: started,
                };
                (dst, seen)
            })
            .collect();
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                routes,
                started,
                resyncs: 0,
                failed: None,
                dump_requested: false,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread = thread::Builder::new()
            .name(format!("routes-{}", self.name()))
            .spawn({
                let shared = Arc::clone(&shared);
                move || follow(&events, &dumps, &shared)
            })
            .map_err(|e| Error::io("spawn a route watcher thread", e))?;
        Ok(RouteWatch {
            shared,
            thread: Some(thread),
        })
    }
}

impl RouteWatch {
    /// Waits until every one of `dsts` is in the main table (`present`) or none is (`!present`),
    /// and returns when the last of them got there, as the watcher thread saw it.
    pub fn wait_for(&self, dsts: &[IpNet], present: bool, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut table = self.shared.lock();
        loop {
            let mut last = table.started;
            let mut missing = 0usize;
            for dst in dsts {
                match table.routes.get(dst) {
                    Some(seen) if seen.present == present => last = last.max(seen.at),
                    None if !present => {}
                    _ => missing += 1,
                }
            }
            if missing == 0 {
                return Ok(last);
            }
            let state = if present { "present" } else { "gone" };
            if let Some(why) = &table.failed {
                return Err(Error::Topology(format!("route watcher stopped: {why}")));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::WaitTimedOut {
                    what: format!("{} routes to be {state}", dsts.len()),
                    timeout,
                    last: Some(format!("{missing} not {state}")),
                });
            }
            let (next, waited) = self
                .shared
                .changed
                .wait_timeout(table, left.min(QUIET_BEFORE_DUMP))
                .unwrap_or_else(PoisonError::into_inner);
            table = next;
            if waited.timed_out() {
                table.dump_requested = true;
            }
        }
    }

    /// How often notifications were lost and the table re-read (timings across such a loss are
    /// upper bounds).
    pub fn resyncs(&self) -> u32 {
        self.shared.lock().resyncs
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The watcher thread: applies notifications as they come, re-reads the table after a loss.
fn follow(events: &Socket, dumps: &Socket, shared: &Shared) {
    let mut buf = Vec::with_capacity(1 << 16);
    while !shared.stop.load(Ordering::Relaxed) {
        buf.clear();
        let received = events.recv(&mut buf, 0);
        let at = Instant::now();
        match received {
            Ok(_) => {
                let mut table = shared.lock();
                let mut changed = false;
                for (present, dst) in route_changes(&buf) {
                    table.routes.insert(dst, Seen { present, at });
                    changed = true;
                }
                if changed {
                    shared.changed.notify_all();
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => resync_from_dump(dumps, shared),
            Err(e) => {
                shared.lock().failed = Some(e.to_string());
                shared.changed.notify_all();
                return;
            }
        }
        let dump_requested = std::mem::take(&mut shared.lock().dump_requested);
        if dump_requested {
            resync_from_dump(dumps, shared);
        }
        if shared.lock().failed.is_some() {
            return;
        }
    }
}

/// Re-reads the table and dates what changed unseen with the dump's time.
fn resync_from_dump(dumps: &Socket, shared: &Shared) {
    let dumped = dump_main_table(dumps);
    let at = Instant::now();
    let mut table = shared.lock();
    match dumped {
        Ok(now) => {
            if resync(&mut table.routes, &now, at) {
                table.resyncs += 1;
            }
        }
        Err(e) => table.failed = Some(format!("dump after a loss: {e}")),
    }
    shared.changed.notify_all();
}

/// Marks every destination whose presence differs from the dump as changed at `at`; says
/// whether there was any (notifications had been lost).
fn resync(routes: &mut HashMap<IpNet, Seen>, now: &HashSet<IpNet>, at: Instant) -> bool {
    let mut lost = false;
    for (dst, seen) in routes.iter_mut() {
        let present = now.contains(dst);
        if seen.present != present {
            *seen = Seen { present, at };
            lost = true;
        }
    }
    for dst in now {
        if !routes.contains_key(dst) {
            routes.insert(*dst, Seen { present: true, at });
            lost = true;
        }
    }
    lost
}

/// The (appeared, destination) pairs of the main-table route messages in one datagram.
fn route_changes(datagram: &[u8]) -> Vec<(bool, IpNet)> {
    messages(datagram)
        .into_iter()
        .filter_map(|m| match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                Some((true, main_table_dst(&r)?))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => {
                Some((false, main_table_dst(&r)?))
            }
            _ => None,
        })
        .collect()
}

/// The netlink messages of one datagram; what cannot be decoded is skipped.
fn messages(mut datagram: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while let Ok(header) = NetlinkBuffer::new_checked(datagram) {
        let len = header.length() as usize;
        if let Some(bytes) = datagram.get(..len)
            && let Ok(m) = Message::deserialize(bytes)
        {
            out.push(m);
        }
        // Messages are 4-byte aligned within a datagram.
        let next = (len + 3) & !3;
        match datagram.get(next..) {
            Some(rest) if next > 0 => datagram = rest,
            _ => break,
        }
    }
    out
}

/// The destination of a route of the main table, `None` for other tables and cached clones.
fn main_table_dst(r: &RouteMessage) -> Option<IpNet> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.flags.contains(RouteFlags::Cloned)
    {
        return None;
    }
    let len = r.header.destination_prefix_length;
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    let addr = match (dst, r.header.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    IpNet::new(addr, len).ok()
}

/// The destinations of the main table, both families.
fn dump_main_table(socket: &Socket) -> io::Result<HashSet<IpNet>> {
    let mut dsts = HashSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        let mut request = Message::from(RouteNetlinkMessage::GetRoute(msg));
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        send(socket, &[request])?;
        let mut buf = Vec::with_capacity(1 << 16);
        'reply: loop {
            buf.clear();
            socket.recv(&mut buf, 0)?;
            for m in messages(&buf) {
                match m.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                        dsts.extend(main_table_dst(&r));
                    }
                    NetlinkPayload::Done(_) => break 'reply,
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    _ => {}
                }
            }
        }
    }
    Ok(dsts)
}

/// Sends `requests` in one datagram.
fn send(socket: &Socket, requests: &[Message]) -> io::Result<()> {
    let mut bytes = Vec::new();
    for (seq, mut m) in (1u32..).zip(requests.iter().cloned()) {
        m.header.sequence_number = seq;
        m.finalize();
        let at = bytes.len();
        bytes.resize(at + m.buffer_len(), 0);
        m.serialize(&mut bytes[at..]);
        bytes.resize((bytes.len() + 3) & !3, 0);
    }
    socket.send_to(&bytes, &SocketAddr::new(0, 0), 0).map(drop)
}

/// Adds and deletes host routes through one device of a namespace with netlink requests, the
/// way Felix programs a tap's routes (`proto boot`, link scope for IPv4), each request
/// acknowledged by the kernel.
#[derive(Debug)]
pub struct RouteWriter {
    socket: Socket,
    ifindex: u32,
    device: String,
}

impl Netns {
    /// A writer of routes through `device` (which must exist) in this namespace.
    pub fn route_writer(&self, device: &str) -> Result<RouteWriter> {
        let ifindex = self.ifindex(device)?;
        let socket = self
            .enter(|| -> io::Result<Socket> {
                let mut s = Socket::new(NETLINK_ROUTE)?;
                s.bind_auto()?;
                s.set_rx_buf_sz(RECEIVE_BUFFER)?;
                Ok(s)
            })?
            .map_err(|e| Error::io(format!("open an rtnetlink socket in {}", self.name()), e))?;
        Ok(RouteWriter {
            socket,
            ifindex,
            device: device.to_owned(),
        })
    }

    /// The interface index of `device` in this namespace.
    pub fn ifindex(&self, device: &str) -> Result<u32> {
        let json = self.ip(&["-j", "link", "show", "dev", device])?;
        let parse_err = |reason: String| Error::Parse {
            tool: "ip -j link".into(),
            reason,
        };
        let links: serde_json::Value =
            serde_json::from_str(json.trim()).map_err(|e| parse_err(e.to_string()))?;
        links
            .get(0)
            .and_then(|l| l.get("ifindex"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| parse_err(format!("no ifindex for {device} in {json}")))
    }
}

impl RouteWriter {
    /// Adds host routes `dsts` through the device (failing if one exists already).
    pub fn add(&self, dsts: &[IpNet]) -> Result<()> {
        self.write(dsts, true)
    }

    /// Deletes the routes `dsts` through the device.
    pub fn delete(&self, dsts: &[IpNet]) -> Result<()> {
        self.write(dsts, false)
    }

    fn write(&self, dsts: &[IpNet], add: bool) -> Result<()> {
        let verb = if add { "add" } else { "delete" };
        for chunk in dsts.chunks(WRITE_CHUNK) {
            let requests: Vec<Message> = chunk.iter().map(|d| self.request(*d, add)).collect();
            send(&self.socket, &requests)
                .and_then(|()| self.read_acks(chunk.len()))
                .map_err(|e| Error::io(format!("{verb} routes through {}", self.device), e))?;
        }
        Ok(())
    }

    fn request(&self, dst: IpNet, add: bool) -> Message {
        let mut r = RouteMessage::default();
        r.header.address_family = match dst {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        r.header.destination_prefix_length = dst.prefix_len();
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.protocol = RouteProtocol::Boot;
        r.header.kind = RouteType::Unicast;
        r.header.scope = match dst {
            IpNet::V4(_) => RouteScope::Link,
            IpNet::V6(_) => RouteScope::Universe,
        };
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
        r.attributes.push(RouteAttribute::Oif(self.ifindex));
        let (inner, flags) = if add {
            (
                RouteNetlinkMessage::NewRoute(r),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
        } else {
            (RouteNetlinkMessage::DelRoute(r), NLM_F_REQUEST | NLM_F_ACK)
        };
        let mut m = Message::from(inner);
        m.header.flags = flags;
        m
    }

    /// Reads `count` acknowledgements; the first error the kernel reports is returned.
    fn read_acks(&self, count: usize) -> io::Result<()> {
        let mut left = count;
        let mut first_error = None;
        let mut buf = Vec::with_capacity(1 << 16);
        while left > 0 {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            for m in messages(&buf) {
                if let NetlinkPayload::Error(e) = m.payload {
                    left = left.saturating_sub(1);
                    if e.code.is_some() && first_error.is_none() {
                        first_error = Some(e.to_io());
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, base: Instant) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn route_messages_round_trip_through_the_decoder() {
        let writer_like = |dst: &str, table: u8, add: bool| {
            let dst: IpNet = dst.parse().unwrap();
            let mut r = RouteMessage::default();
            r.header.address_family = match dst {
                IpNet::V4(_) => AddressFamily::Inet,
                IpNet::V6(_) => AddressFamily::Inet6,
            };
            r.header.destination_prefix_length = dst.prefix_len();
            r.header.table = table;
            r.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
            let inner = if add {
                RouteNetlinkMessage::NewRoute(r)
            } else {
                RouteNetlinkMessage::DelRoute(r)
            };
            let mut m = Message::from(inner);
            m.finalize();
            let mut bytes = vec![0; m.buffer_len()];
            m.serialize(&mut bytes);
            bytes.resize((bytes.len() + 3) & !3, 0);
            bytes
        };
        let mut datagram = writer_like("198.51.100.7/32", 254, true);
        datagram.extend(writer_like("2001:db8::1/128", 254, false));
        datagram.extend(writer_like("198.51.100.8/32", 255, true)); // local table: ignored
        assert_eq!(
            route_changes(&datagram),
            vec![
                (true, "198.51.100.7/32".parse().unwrap()),
                (false, "2001:db8::1/128".parse().unwrap()),
            ]
        );
        assert!(route_changes(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn a_resync_dates_only_what_changed() {
        let base = Instant::now();
        let kept: IpNet = "198.51.100.1/32".parse().unwrap();
        let lost: IpNet = "198.51.100.2/32".parse().unwrap();
        let new: IpNet = "198.51.100.3/32".parse().unwrap();
        let mut routes = HashMap::from([
            (
                kept,
                Seen {
                    present: true,
                    at: at(1, base),
                },
            ),
            (
                lost,
                Seen {
                    present: true,
                    at: at(2, base),
                },
            ),
        ]);
        resync(&mut routes, &HashSet::from([kept, new]), at(9, base));
        assert_eq!(routes[&kept].at, at(1, base));
        assert!(!routes[&lost].present && routes[&lost].at == at(9, base));
        assert!(routes[&new].present && routes[&new].at == at(9, base));
    }
}
