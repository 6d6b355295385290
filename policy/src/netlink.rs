//! Set element updates straight over nfnetlink, without the `nft` binary.
//!
//! `nft` reloads the table's chains, rules and sets before every command (about 0.1 s for a
//! table of 1,000 endpoints), which is too slow for the most frequent change: an address
//! joining or leaving a selector. This module encodes that one kind of change, adding and
//! deleting elements of Skog's interval address sets, as one nfnetlink batch (one
//! transaction, like `nft -f`). Everything else goes through `nft`.
//!
//! The kernel handles a netlink message while `send` runs, so every answer is queued on the
//! socket when `send` returns: reading never blocks, and no timeout is needed.
//!
//! Element encoding of an interval set (what `nft` sends): an element keyed by the first
//! address, and an element flagged `INTERVAL_END` keyed by the address after the last (none
//! when the range ends at the top of the address space).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::names::TABLE;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

/// A failed element update. The batch is one transaction: nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("nfnetlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("kernel refused the update of set {set}: {error}")]
    Refused { set: String, error: std::io::Error },
    #[error("kernel answered {answered} of {sent} messages")]
    Incomplete { sent: usize, answered: usize },
    #[error("malformed nfnetlink answer")]
    Malformed,
}

/// Add or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementOp {
    Add,
    Delete,
}

/// One message of a batch: elements to add to or delete from one set of Skog's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementChange {
    pub op: ElementOp,
    pub set: String,
    pub elements: Vec<IpNet>,
}

/// An nfnetlink socket in the network namespace it was opened in.
#[derive(Debug)]
pub struct SetElementWriter {
    socket: Socket,
    seq: u32,
}

impl SetElementWriter {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<SetElementWriter, NetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket.set_non_blocking(true)?;
        Ok(SetElementWriter { socket, seq: 1 })
    }

    /// Sends `changes` as one transaction and checks every answer.
    pub fn apply(&mut self, changes: &[ElementChange]) -> Result<(), NetlinkError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Drop anything left from an earlier call.
        while self.recv_datagram()?.is_some() {}
        let first = self.seq;
        let batch = encode_batch(first, changes);
        self.seq = self.seq.wrapping_add(changes.len() as u32 + 2);
        self.socket.send(&batch, 0)?;
        let mut answered = 0;
        while answered < changes.len() {
            let Some(datagram) = self.recv_datagram()? else {
                return Err(NetlinkError::Incomplete {
                    sent: changes.len(),
                    answered,
                });
            };
            for (seq, errno) in parse_acks(&datagram)? {
                let index = seq.wrapping_sub(first + 1) as usize;
                let Some(change) = changes.get(index) else {
                    continue;
                };
                if errno != 0 {
                    return Err(NetlinkError::Refused {
                        set: change.set.clone(),
                        error: std::io::Error::from_raw_os_error(errno),
                    });
                }
                answered += 1;
            }
        }
        Ok(())
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

fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

fn put_nested(buf: &mut Vec<u8>, ty: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    fill(&mut inner);
    put_attr(buf, ty | NLA_F_NESTED, &inner);
}

fn put_message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(attrs);
}

fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
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

fn put_element(buf: &mut Vec<u8>, key: IpAddr, interval_end: bool) {
    put_nested(buf, NFTA_LIST_ELEM, |e| {
        put_nested(e, NFTA_SET_ELEM_KEY, |k| {
            put_attr(k, NFTA_DATA_VALUE, &addr_bytes(key))
        });
        if interval_end {
            put_attr(
                e,
                NFTA_SET_ELEM_FLAGS,
                &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
            );
        }
    });
}

/// The batch: begin, one message per change (sequence numbers `first + 1 ..`), end.
fn encode_batch(first: u32, changes: &[ElementChange]) -> Vec<u8> {
    let mut buf = Vec::new();
    let subsys = NFNL_SUBSYS_NFTABLES;
    put_message(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first,
        0,
        subsys,
        &[],
    );
    for (i, change) in changes.iter().enumerate() {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &c_string(TABLE));
        put_attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &c_string(&change.set));
        put_nested(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
            for net in &change.elements {
                let net = net.trunc();
                put_element(list, net.network(), false);
                if let Some(end) = after_last(&net) {
                    put_element(list, end, true);
                }
            }
        });
        let (msg, flags) = match change.op {
            ElementOp::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
            ElementOp::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        };
        let seq = first.wrapping_add(1 + i as u32);
        put_message(
            &mut buf,
            (subsys << 8) | msg,
            flags,
            seq,
            NFPROTO_INET,
            0,
            &attrs,
        );
    }
    let end_seq = first.wrapping_add(1 + changes.len() as u32);
    put_message(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end_seq,
        0,
        subsys,
        &[],
    );
    buf
}

/// The (sequence number, errno) of every error/ack message in a datagram.
fn parse_acks(mut data: &[u8]) -> Result<Vec<(u32, i32)>, NetlinkError> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let word = |at: usize| -> Result<[u8; 4], NetlinkError> {
            data.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or(NetlinkError::Malformed)
        };
        let len = u32::from_ne_bytes(word(0)?) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes(word(8)?);
        if len < 16 || len > data.len() {
            return Err(NetlinkError::Malformed);
        }
        if ty == NLMSG_ERROR {
            let errno = i32::from_ne_bytes(word(16)?);
            out.push((seq, -errno));
        }
        data = data.get((len + 3) & !3..).unwrap_or_default();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_start_and_end_elements() {
        let change = ElementChange {
            op: ElementOp::Add,
            set: "s".into(),
            elements: vec![
                "192.0.2.77/32".parse().unwrap(),
                "0.0.0.0/0".parse().unwrap(),
            ],
        };
        let batch = encode_batch(7, &[change]);
        let has = |needle: &[u8]| batch.windows(needle.len()).any(|w| w == needle);
        // 192.0.2.77 (start) and 192.0.2.78 (end); 0.0.0.0/0 has a start only.
        assert!(has(&[8, 0, 1, 0, 192, 0, 2, 77]));
        assert!(has(&[8, 0, 1, 0, 192, 0, 2, 78]));
        assert!(!has(&[8, 0, 1, 0, 0, 0, 0, 0, 8, 0, 3, 0]));
        // Three messages, each length-prefixed and 4-aligned, covering the whole buffer.
        let mut rest = &batch[..];
        let mut count = 0;
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            rest = &rest[len..];
            count += 1;
        }
        assert_eq!(count, 3);
    }

    #[test]
    fn answers_are_parsed_without_panicking_on_garbage() {
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&0u16.to_ne_bytes());
        ack.extend_from_slice(&9u32.to_ne_bytes());
        ack.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&(-17i32).to_ne_bytes());
        ack.extend_from_slice(&[0; 16]);
        assert_eq!(parse_acks(&ack).unwrap(), vec![(9, 17)]);
        for cut in 0..ack.len() {
            let _ = parse_acks(&ack[..cut]);
        }
        let mut bad = ack.clone();
        bad[0] = 200;
        assert!(parse_acks(&bad).is_err());
        assert!(parse_acks(&[0xff; 40]).is_err());
    }
}
