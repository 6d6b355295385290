//! Table changes straight over nfnetlink, without the `nft` binary.
//!
//! `nft` reloads the table's chains, rules and sets before every command (30-100 ms for a
//! table of 1,000 endpoints) and parses and evaluates the whole text of a full load in
//! userspace. This module encodes the applier's [`Op`]s as one nfnetlink batch, which is one
//! transaction like `nft -f`: table replacement, chains (with hooks), interval address sets,
//! verdict maps and their elements, rules (lowered by [`crate::lower`], encoded by [`crate::expr`]), flushes and deletes.
//! A rule outside the lowered grammar makes [`Batch::push`] fail: the caller uses `nft` then.
//!
//! [`crate::live`] reads the table back through the same socket.
//!
//! The kernel handles a netlink message while `send` runs, so every answer is queued on the
//! socket when `send` returns: reading never blocks, and no timeout is needed. Only the last
//! message of a batch asks for an acknowledgement; errors are always reported.
//!
//! Element encoding of an interval set (what `nft` sends): an element keyed by the first
//! address, and an element flagged `INTERVAL_END` keyed by the address after the last (none
//! when the range ends at the top of the address space).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::diff::Op;
use crate::expr::{self, Verdict};
use crate::lower::{self, Unsupported};
use crate::names::TABLE;
use crate::ruleset::AddressSet;
use crate::wire::{self, attr, attr_be32, attr_str, nested};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_IFNAME: u32 = 41;
const IFNAMSIZ: usize = 16;
/// Elements per message: an attribute's length is 16 bits, so a big set or map is sent in
/// several messages (of the same transaction), each well below 64 KiB.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// A failed batch or dump. A batch is one transaction: nothing of a failed one was applied.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("nfnetlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("kernel refused {what}: {error}")]
    Refused { what: String, error: std::io::Error },
    #[error("kernel did not acknowledge the batch of {sent} messages")]
    Incomplete { sent: usize },
    #[error("malformed nfnetlink answer")]
    Malformed,
}

/// One transaction being built: begin, the messages, end.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    first_seq: u32,
    /// What each message does, for error reports (index = sequence number - first - 1).
    what: Vec<String>,
    /// Ids of sets created in this batch (named sets by name).
    set_ids: HashMap<String, u32>,
    next_set_id: u32,
    last_message_at: Option<usize>,
    /// Encoded expressions of rules without anonymous sets, by text (many endpoint chains
    /// share rules; the set ids they may contain are fixed within one batch).
    encoded: HashMap<String, Vec<u8>>,
}

impl Batch {
    fn new(first_seq: u32) -> Batch {
        let mut buf = Vec::new();
        wire::message(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        Batch {
            buf,
            first_seq,
            what: Vec::new(),
            set_ids: HashMap::new(),
            next_set_id: 1,
            last_message_at: None,
            encoded: HashMap::new(),
        }
    }

    /// Number of messages (without begin and end).
    pub fn len(&self) -> usize {
        self.what.len()
    }

    pub fn is_empty(&self) -> bool {
        self.what.is_empty()
    }

    fn message(
        &mut self,
        msg: u16,
        flags: u16,
        what: impl FnOnce() -> String,
        fill: impl FnOnce(&mut Vec<u8>),
    ) {
        self.what.push(what());
        let seq = self.first_seq.wrapping_add(self.what.len() as u32);
        self.last_message_at = Some(self.buf.len());
        wire::message(
            &mut self.buf,
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | flags,
            seq,
            NFPROTO_INET,
            0,
            |m| {
                attr_str(m, 1, TABLE);
                fill(m);
            },
        );
    }

    fn new_set_id(&mut self) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        id
    }

    /// Appends the messages of `op`; fails (appending nothing) for a rule outside the
    /// lowered grammar or a hook it cannot parse.
    pub fn push(&mut self, op: &Op<'_>) -> Result<(), Unsupported> {
        match op {
            Op::ReplaceTable => {
                for msg in [NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, NFT_MSG_NEWTABLE] {
                    self.message(
                        msg,
                        0,
                        || "the table replacement".to_owned(),
                        |m| {
                            if msg == NFT_MSG_NEWTABLE {
                                attr_be32(m, 2, 0);
                            }
                        },
                    );
                }
            }
            Op::AddChain { name, hook } => {
                let hook = hook
                    .map(|h| parse_hook(h).ok_or_else(|| unsupported(h)))
                    .transpose()?;
                self.message(
                    NFT_MSG_NEWCHAIN,
                    NLM_F_CREATE,
                    || format!("chain {name}"),
                    |m| {
                        attr_str(m, 3, name);
                        if let Some(h) = hook {
                            attr_str(m, 7, h.ty);
                            attr_be32(m, 5, h.policy);
                            nested(m, 4, |n| {
                                attr_be32(n, 1, h.hooknum);
                                attr(n, 2, &h.priority.to_be_bytes());
                            });
                        }
                    },
                );
            }
            Op::AddSet { name, set } => self.add_address_set(name, set),
            Op::AddElements { set, elements } => {
                self.address_elements(NFT_MSG_NEWSETELEM, set, elements)
            }
            Op::DeleteElements { set, elements } => {
                self.address_elements(NFT_MSG_DELSETELEM, set, elements)
            }
            Op::FlushChain { name } => self.message(
                NFT_MSG_DELRULE,
                0,
                || format!("flushing chain {name}"),
                |m| attr_str(m, 2, name),
            ),
            Op::AddRule { chain, rule } => self.add_rule(chain, rule)?,
            Op::AddMap { name } => {
                let id = self.new_set_id();
                self.set_ids.insert((*name).to_owned(), id);
                self.message(
                    NFT_MSG_NEWSET,
                    NLM_F_CREATE,
                    || format!("map {name}"),
                    |m| {
                        attr_str(m, 2, name);
                        attr_be32(m, 3, NFT_SET_MAP);
                        attr_be32(m, 4, TYPE_IFNAME);
                        attr_be32(m, 5, IFNAMSIZ as u32);
                        attr_be32(m, 6, NFT_DATA_VERDICT);
                        attr_be32(m, 7, 0);
                        attr_be32(m, 10, id);
                        // Key byte order host, data byte order unset (as nft writes them).
                        attr(
                            m,
                            13,
                            &[0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0],
                        );
                    },
                );
            }
            Op::AddMapElements { map, elements } => {
                let mut verdicts = Vec::new();
                for (key, v) in elements {
                    let verdict = Verdict::parse(v).ok_or_else(|| unsupported(v))?;
                    verdicts.push((ifname_key(key), verdict));
                }
                let id = self.set_ids.get(*map).copied();
                for chunk in verdicts.chunks(ELEMENTS_PER_MESSAGE) {
                    self.message(
                        NFT_MSG_NEWSETELEM,
                        NLM_F_CREATE,
                        || format!("elements of map {map}"),
                        |m| {
                            attr_str(m, 2, map);
                            if let Some(id) = id {
                                attr_be32(m, 4, id);
                            }
                            nested(m, 3, |list| {
                                for (key, verdict) in chunk {
                                    nested(list, 1, |e| {
                                        nested(e, 1, |k| attr(k, 1, key));
                                        nested(e, 2, |d| verdict.encode(d));
                                    });
                                }
                            });
                        },
                    );
                }
            }
            Op::DeleteMapElements { map, keys } => {
                for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
                    self.message(
                        NFT_MSG_DELSETELEM,
                        0,
                        || format!("elements of map {map}"),
                        |m| {
                            attr_str(m, 2, map);
                            nested(m, 3, |list| {
                                for key in chunk {
                                    nested(list, 1, |e| {
                                        nested(e, 1, |k| attr(k, 1, &ifname_key(key)))
                                    });
                                }
                            });
                        },
                    );
                }
            }
            Op::DeleteMap { name } | Op::DeleteSet { name } => self.message(
                NFT_MSG_DELSET,
                0,
                || format!("deleting set {name}"),
                |m| attr_str(m, 2, name),
            ),
            Op::DeleteChain { name } => self.message(
                NFT_MSG_DELCHAIN,
                0,
                || format!("deleting chain {name}"),
                |m| attr_str(m, 3, name),
            ),
        }
        Ok(())
    }

    fn add_address_set(&mut self, name: &str, set: &AddressSet) {
        let id = self.new_set_id();
        self.set_ids.insert(name.to_owned(), id);
        self.message(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            || format!("set {name}"),
            |m| {
                attr_str(m, 2, name);
                attr_be32(m, 3, NFT_SET_INTERVAL);
                attr_be32(m, 4, if set.v6 { TYPE_IP6ADDR } else { TYPE_IPADDR });
                attr_be32(m, 5, if set.v6 { 16 } else { 4 });
                attr_be32(m, 10, id);
                // Key byte order: big endian.
                attr(m, 13, &[0, 4, 2, 0, 0, 0]);
            },
        );
    }

    fn address_elements(&mut self, msg: u16, set: &str, elements: &[&IpNet]) {
        let id = self.set_ids.get(set).copied();
        let flags = if msg == NFT_MSG_NEWSETELEM {
            NLM_F_CREATE
        } else {
            0
        };
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            self.message(
                msg,
                flags,
                || format!("elements of set {set}"),
                |m| {
                    attr_str(m, 2, set);
                    if let Some(id) = id {
                        attr_be32(m, 4, id);
                    }
                    nested(m, 3, |list| {
                        for net in chunk {
                            let net = net.trunc();
                            put_element(list, &addr_bytes(net.network()), false);
                            if let Some(end) = after_last(&net) {
                                put_element(list, &addr_bytes(end), true);
                            }
                        }
                    });
                },
            );
        }
    }

    fn add_rule(&mut self, chain: &str, rule: &str) -> Result<(), Unsupported> {
        if let Some(exprs) = self.encoded.get(rule) {
            let exprs = exprs.clone();
            self.rule_message(chain, rule, &exprs);
            return Ok(());
        }
        let lowered = lower::lower(rule)?;
        let mut anon_ids = Vec::new();
        for set in &lowered.sets {
            let id = self.new_set_id();
            anon_ids.push(id);
            let flags = NFT_SET_ANONYMOUS
                | NFT_SET_CONSTANT
                | if set.interval { NFT_SET_INTERVAL } else { 0 };
            self.message(
                NFT_MSG_NEWSET,
                NLM_F_CREATE,
                || format!("an anonymous set of rule {rule:?} in chain {chain}"),
                |m| {
                    attr_str(m, 2, "__set%d");
                    attr_be32(m, 3, flags);
                    attr_be32(m, 4, set.key_type);
                    attr_be32(m, 5, set.key_len);
                    attr_be32(m, 10, id);
                    nested(m, 9, |d| attr_be32(d, 1, set.elements.len() as u32));
                    attr(m, 13, &set.userdata());
                },
            );
            for chunk in set.elements.chunks(2 * ELEMENTS_PER_MESSAGE) {
                self.message(
                    NFT_MSG_NEWSETELEM,
                    NLM_F_CREATE,
                    || format!("an anonymous set of rule {rule:?} in chain {chain}"),
                    |m| {
                        attr_str(m, 2, "__set%d");
                        attr_be32(m, 4, id);
                        nested(m, 3, |list| {
                            for (key, end) in chunk {
                                put_element(list, key, *end);
                            }
                        });
                    },
                );
            }
        }
        let set_ids = &self.set_ids;
        let named = |n: &str| set_ids.get(n).copied();
        let mut exprs = Vec::new();
        expr::encode_exprs(&mut exprs, &lowered.exprs, &anon_ids, &named);
        self.rule_message(chain, rule, &exprs);
        if lowered.sets.is_empty() {
            self.encoded.insert(rule.to_owned(), exprs);
        }
        Ok(())
    }

    fn rule_message(&mut self, chain: &str, rule: &str, exprs: &[u8]) {
        self.message(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            || format!("rule {rule:?} in chain {chain}"),
            |m| {
                attr_str(m, 2, chain);
                nested(m, 4, |e| e.extend_from_slice(exprs));
            },
        );
    }

    /// The bytes to send: the last message asks for an ack, then the end of the batch.
    fn finish(mut self) -> (Vec<u8>, Vec<String>, u32) {
        if let Some(at) = self.last_message_at {
            let flags = u16::from_ne_bytes([self.buf[at + 6], self.buf[at + 7]]) | NLM_F_ACK;
            self.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        let end_seq = self.first_seq.wrapping_add(self.what.len() as u32 + 1);
        wire::message(
            &mut self.buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        (self.buf, self.what, self.first_seq)
    }
}

/// A hook declaration or map verdict outside what the encoder knows.
fn unsupported(text: &str) -> Unsupported {
    Unsupported {
        rule: text.to_owned(),
        token: text.to_owned(),
    }
}

/// A base chain's declaration, e.g. `type filter hook forward priority filter; policy accept;`.
struct Hook<'a> {
    ty: &'a str,
    hooknum: u32,
    priority: i32,
    policy: u32,
}

fn parse_hook(text: &str) -> Option<Hook<'_>> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let [
        "type",
        ty @ ("filter" | "nat"),
        "hook",
        hook,
        "priority",
        priority,
        "policy",
        policy,
    ] = words[..]
    else {
        return None;
    };
    Some(Hook {
        ty,
        hooknum: match hook {
            "prerouting" => 0,
            "input" => 1,
            "forward" => 2,
            "output" => 3,
            "postrouting" => 4,
            _ => return None,
        },
        priority: match priority {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            n => n.parse().ok()?,
        },
        policy: match policy {
            "accept" => 1,
            "drop" => 0,
            _ => return None,
        },
    })
}

fn ifname_key(name: &str) -> Vec<u8> {
    let mut key = name.as_bytes().to_vec();
    key.resize(IFNAMSIZ, 0);
    key
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The address after the last of `net`, or `None` at the top of the address space.
fn after_last(net: &IpNet) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => u32::from(n.broadcast())
            .checked_add(1)
            .map(|a| IpAddr::V4(a.into())),
        IpNet::V6(n) => u128::from(n.broadcast())
            .checked_add(1)
            .map(|a| IpAddr::V6(a.into())),
    }
}

fn put_element(buf: &mut Vec<u8>, key: &[u8], interval_end: bool) {
    nested(buf, 1, |e| {
        if interval_end {
            attr_be32(e, 3, NFT_SET_ELEM_INTERVAL_END);
        }
        nested(e, 1, |k| attr(k, 1, key));
    });
}

/// An nfnetlink socket in the network namespace it was opened in, writing Skog's table.
#[derive(Debug)]
pub struct NfWriter {
    socket: Socket,
    seq: u32,
}

impl NfWriter {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<NfWriter, NetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket.set_non_blocking(true)?;
        socket.set_cap_ack(true)?;
        Ok(NfWriter { socket, seq: 1 })
    }

    /// A batch to fill with [`Batch::push`] and hand to [`NfWriter::send`].
    pub fn batch(&mut self) -> Batch {
        Batch::new(self.seq)
    }

    /// Sends `batch` as one transaction and checks the kernel's answer. Returns the number of
    /// messages.
    pub fn send(&mut self, batch: Batch) -> Result<usize, NetlinkError> {
        if batch.is_empty() {
            return Ok(0);
        }
        // Drop anything left from an earlier call.
        while self.recv_datagram()?.is_some() {}
        let (bytes, what, first) = batch.finish();
        self.seq = self.seq.wrapping_add(what.len() as u32 + 2);
        // One datagram carries the whole transaction; the socket must accept it.
        nix::sys::socket::setsockopt(
            &self.socket,
            nix::sys::socket::sockopt::SndBufForce,
            &(bytes.len() + 4096).max(1 << 20),
        )
        .map_err(std::io::Error::from)?;
        self.socket.send(&bytes, 0)?;
        let last = first.wrapping_add(what.len() as u32);
        let mut acked = false;
        while let Some(datagram) = self.recv_datagram()? {
            for msg in wire::messages(&datagram).ok_or(NetlinkError::Malformed)? {
                if msg.ty != wire::NLMSG_ERROR {
                    continue;
                }
                let errno = wire::error_code(msg.body).ok_or(NetlinkError::Malformed)?;
                let index = msg.seq.wrapping_sub(first.wrapping_add(1)) as usize;
                if errno != 0 {
                    let what = what
                        .get(index)
                        .cloned()
                        .unwrap_or_else(|| "the batch".to_owned());
                    return Err(NetlinkError::Refused {
                        what,
                        error: std::io::Error::from_raw_os_error(errno),
                    });
                }
                acked |= msg.seq == last;
            }
        }
        if acked {
            Ok(what.len())
        } else {
            Err(NetlinkError::Incomplete { sent: what.len() })
        }
    }

    /// Runs a dump request (`msg` with the table and what `fill` adds) and returns the
    /// attributes of every answer, in order.
    pub(crate) fn dump(
        &mut self,
        msg: u16,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        while self.recv_datagram()?.is_some() {}
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut request = Vec::new();
        wire::message(
            &mut request,
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            NFPROTO_INET,
            0,
            |m| {
                attr_str(m, 1, TABLE);
                fill(m);
            },
        );
        self.socket.send(&request, 0)?;
        let mut out = Vec::new();
        loop {
            let Some(datagram) = self.recv_datagram()? else {
                return Err(NetlinkError::Incomplete { sent: 1 });
            };
            for msg in wire::messages(&datagram).ok_or(NetlinkError::Malformed)? {
                if msg.seq != seq {
                    continue;
                }
                match msg.ty {
                    wire::NLMSG_DONE => return Ok(out),
                    wire::NLMSG_ERROR => {
                        let errno = wire::error_code(msg.body).ok_or(NetlinkError::Malformed)?;
                        return Err(NetlinkError::Refused {
                            what: "a dump request".to_owned(),
                            error: std::io::Error::from_raw_os_error(errno),
                        });
                    }
                    _ => out.push(msg.body.get(4..).ok_or(NetlinkError::Malformed)?.to_vec()),
                }
            }
        }
    }

    fn recv_datagram(&self) -> Result<Option<Vec<u8>>, NetlinkError> {
        let mut buf = Vec::with_capacity(1 << 16);
        match self.socket.recv(&mut buf, 0) {
            Ok(_) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_start_and_end_elements() {
        let nets: Vec<IpNet> = vec![
            "192.0.2.77/32".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
        ];
        let mut batch = Batch::new(7);
        batch
            .push(&Op::AddElements {
                set: "s",
                elements: nets.iter().collect(),
            })
            .unwrap();
        let (bytes, what, _) = batch.finish();
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        // 192.0.2.77 (start) and 192.0.2.78 (end); 0.0.0.0/0 has a start only.
        assert!(has(&[8, 0, 1, 0, 192, 0, 2, 77]));
        assert!(has(&[8, 0, 1, 0, 192, 0, 2, 78]));
        assert!(!has(&[8, 0, 1, 0, 0, 0, 0, 0, 8, 0, 3, 0]));
        // Three messages, each length-prefixed and 4-aligned, covering the whole buffer.
        assert_eq!(wire::messages(&bytes).unwrap().len(), 3);
        assert_eq!(what.len(), 1);
    }

    #[test]
    fn big_sets_and_maps_are_split_into_several_messages() {
        let nets: Vec<IpNet> = (0..2000u32)
            .map(|i| IpNet::from(IpAddr::V6(u128::from(i).into())))
            .collect();
        let names: Vec<(String, String)> = (0..1000)
            .map(|i| (format!("tap{i:08x}-00"), format!("goto from-tap{i:08x}-00")))
            .collect();
        let mut batch = Batch::new(1);
        batch
            .push(&Op::AddElements {
                set: "s",
                elements: nets.iter().collect(),
            })
            .unwrap();
        batch
            .push(&Op::AddMapElements {
                map: "m",
                elements: names.iter().map(|(k, v)| (k, v)).collect(),
            })
            .unwrap();
        assert_eq!(batch.len(), 8 + 4);
        let (bytes, _, _) = batch.finish();
        assert!(
            wire::messages(&bytes)
                .unwrap()
                .iter()
                .all(|m| m.body.len() < 40_000)
        );
    }

    #[test]
    fn only_the_last_message_asks_for_an_ack() {
        let mut batch = Batch::new(1);
        batch.push(&Op::FlushChain { name: "a" }).unwrap();
        batch
            .push(&Op::AddRule {
                chain: "a",
                rule: "drop",
            })
            .unwrap();
        let (bytes, _, _) = batch.finish();
        let flags: Vec<u16> = wire::messages(&bytes)
            .unwrap()
            .iter()
            .map(|m| m.ty)
            .collect();
        assert_eq!(flags.len(), 4);
        let msgs = wire::messages(&bytes).unwrap();
        let ack = |i: usize| {
            let at = msgs[..i].iter().map(|m| m.body.len() + 16).sum::<usize>();
            u16::from_ne_bytes([bytes[at + 6], bytes[at + 7]]) & NLM_F_ACK != 0
        };
        assert_eq!(
            (ack(0), ack(1), ack(2), ack(3)),
            (false, false, true, false)
        );
    }

    #[test]
    fn unsupported_rules_and_hooks_are_refused() {
        let mut batch = Batch::new(1);
        assert!(
            batch
                .push(&Op::AddRule {
                    chain: "a",
                    rule: "counter packets 1 bytes 60 drop"
                })
                .is_err()
        );
        assert!(
            batch
                .push(&Op::AddChain {
                    name: "b",
                    hook: Some("type route hook output priority 0; policy accept;")
                })
                .is_err()
        );
        assert!(batch.is_empty());
        let hook = parse_hook("type nat hook postrouting priority srcnat; policy accept;").unwrap();
        assert_eq!((hook.hooknum, hook.priority, hook.policy), (4, 100, 1));
    }
}
