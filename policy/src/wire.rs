//! Netlink wire primitives shared by the nfnetlink encoders: attributes (nested ones written
//! in place), nfnetlink message headers, and reading answers back (acks, errors, dumps) without
//! ever trusting a length from the kernel.

/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 0x8000;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// Appends attribute `ty` with `payload`, padded to 4 bytes.
pub fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    pad(buf);
}

/// A big-endian u32 attribute (what nf_tables uses for numbers).
pub fn attr_be32(buf: &mut Vec<u8>, ty: u16, value: u32) {
    attr(buf, ty, &value.to_be_bytes());
}

/// A NUL-terminated string attribute.
pub fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let len = 4 + s.len() + 1;
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    pad(buf);
}

/// A nested attribute whose content `fill` appends.
pub fn nested(buf: &mut Vec<u8>, ty: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    fill(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Appends one nfnetlink message (header, nfgenmsg, then what `fill` appends).
pub fn message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    fill: impl FnOnce(&mut Vec<u8>),
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
    fill(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// One message of a datagram from the kernel.
#[derive(Debug, PartialEq, Eq)]
pub struct Received<'a> {
    pub ty: u16,
    pub seq: u32,
    /// Everything after the 16-byte header.
    pub body: &'a [u8],
}

/// Splits a datagram into messages; `None` if a length is inconsistent.
pub fn messages(mut data: &[u8]) -> Option<Vec<Received<'_>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let len = u32::from_ne_bytes(data.get(0..4)?.try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(data.get(4..6)?.try_into().ok()?);
        let seq = u32::from_ne_bytes(data.get(8..12)?.try_into().ok()?);
        let body = data.get(16..len)?;
        out.push(Received { ty, seq, body });
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Some(out)
}

/// The errno of an `NLMSG_ERROR` body (0 = ack).
pub fn error_code(body: &[u8]) -> Option<i32> {
    Some(-i32::from_ne_bytes(body.get(0..4)?.try_into().ok()?))
}

/// The top-level attributes `(type without flags, payload)` of an attribute stream.
pub fn attrs(mut data: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes(data.get(0..2)?.try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?) & 0x3fff;
        out.push((ty, data.get(4..len)?));
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_are_written_in_place_and_read_back() {
        let mut buf = Vec::new();
        message(&mut buf, 0x0a06, 1, 7, 1, 0, |m| {
            attr_str(m, 1, "skog");
            nested(m, 4, |n| attr_be32(n, 2, 5));
        });
        let msgs = messages(&buf).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].ty, msgs[0].seq), (0x0a06, 7));
        let top = attrs(&msgs[0].body[4..]).unwrap();
        assert_eq!(top[0], (1, &b"skog\0"[..]));
        assert_eq!(attrs(top[1].1).unwrap(), vec![(2, &[0, 0, 0, 5][..])]);
    }

    #[test]
    fn garbage_never_panics() {
        // An NLMSG_ERROR: header, errno, the header of the refused message.
        let mut buf = Vec::new();
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&[0; 2]);
        buf.extend_from_slice(&9u32.to_ne_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&(-17i32).to_ne_bytes());
        buf.extend_from_slice(&[0; 16]);
        for cut in 0..buf.len() {
            let _ = messages(&buf[..cut]);
            let _ = attrs(&buf[..cut]);
        }
        assert!(messages(&[0xff; 40]).is_none());
        for at in 0..buf.len() {
            for value in 0..=255u8 {
                let mut mutated = buf.clone();
                mutated[at] = value;
                if let Some(msgs) = messages(&mutated) {
                    for m in msgs {
                        let _ = error_code(m.body);
                        let _ = attrs(m.body);
                    }
                }
            }
        }
        let msgs = messages(&buf).unwrap();
        assert_eq!(error_code(msgs[0].body), Some(17));
    }
}
