//! nf_tables expressions as Skog uses them, and their netlink encoding.
//!
//! [`crate::lower`] turns the compiler's rule text into these; `netlink` sends them. The
//! encoding is byte for byte what nft 1.0.6 sends for the same rule (attribute order included),
//! so the kernel holds the same rule whichever of the two wrote it.

use crate::wire::{attr, attr_be32, attr_str, nested};

pub(crate) const NFPROTO_IPV4: u8 = 2;
pub(crate) const NFPROTO_IPV6: u8 = 10;
pub(crate) const META_MARK: u32 = 3;
pub(crate) const META_IIFNAME: u32 = 6;
pub(crate) const META_OIFNAME: u32 = 7;
pub(crate) const META_NFPROTO: u32 = 15;
pub(crate) const META_L4PROTO: u32 = 16;
pub(crate) const BASE_NETWORK: u32 = 1;
pub(crate) const BASE_TRANSPORT: u32 = 2;
pub(crate) const CMP_EQ: u32 = 0;
pub(crate) const CMP_NEQ: u32 = 1;
pub(crate) const CMP_LTE: u32 = 3;
pub(crate) const CMP_GTE: u32 = 5;
pub(crate) const REG_VERDICT: u32 = 0;
pub(crate) const REG_1: u32 = 1;
pub(crate) const REG_2: u32 = 2;
// nft's datatype ids (set key types).
pub(crate) const TYPE_IPADDR: u32 = 7;
pub(crate) const TYPE_IP6ADDR: u32 = 8;
pub(crate) const TYPE_INET_SERVICE: u32 = 13;
pub(crate) const TYPE_ICMP6_TYPE: u32 = 29;

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }

    /// The verdict of a kernel verdict code (and chain, for jump and goto).
    pub fn from_code(code: i32, chain: Option<String>) -> Option<Verdict> {
        Some(match (code, chain) {
            (0, None) => Verdict::Drop,
            (1, None) => Verdict::Accept,
            (-5, None) => Verdict::Return,
            (-3, Some(c)) => Verdict::Jump(c),
            (-4, Some(c)) => Verdict::Goto(c),
            _ => return None,
        })
    }

    /// Parses `accept`, `drop`, `return`, `jump <chain>`, `goto <chain>` (map element values).
    pub fn parse(text: &str) -> Option<Verdict> {
        let mut words = text.split_whitespace();
        let v = match (words.next()?, words.next()) {
            ("accept", None) => Verdict::Accept,
            ("drop", None) => Verdict::Drop,
            ("return", None) => Verdict::Return,
            ("jump", Some(c)) => Verdict::Jump(c.to_owned()),
            ("goto", Some(c)) => Verdict::Goto(c.to_owned()),
            _ => return None,
        };
        words.next().is_none().then_some(v)
    }

    /// `NFTA_DATA_VERDICT` content.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        nested(buf, 2, |v| {
            attr(v, 1, &self.code().to_be_bytes());
            if let Verdict::Jump(c) | Verdict::Goto(c) = self {
                attr_str(v, 2, c);
            }
        });
    }
}

/// Which set a lookup uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetRef {
    Named(String),
    /// Index into [`Lowered::sets`].
    Anonymous(usize),
}

/// One nf_tables expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta(u32),
    MetaSetMark,
    CtState,
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    Cmp {
        op: u32,
        data: Vec<u8>,
    },
    RangeNeq {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// `reg = (reg & mask) ^ xor`; `mark_op` adds the explicit boolean op nft sends for marks.
    Bitwise {
        mask: Vec<u8>,
        xor: Vec<u8>,
        mark_op: bool,
    },
    Lookup {
        set: SetRef,
        invert: bool,
        vmap: bool,
    },
    Immediate {
        reg: u32,
        data: Vec<u8>,
    },
    Verdict(Verdict),
    Log {
        prefix: String,
    },
    /// Packets and bytes matched (the kernel keeps the values; we send none).
    Counter,
    Nat {
        dnat: bool,
        nfproto: u8,
        port: bool,
    },
}

/// An anonymous (constant) set a rule brings along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonSet {
    pub key_type: u32,
    pub key_len: u32,
    pub interval: bool,
    /// nft's `typeof` description: (protocol, field) of the payload the set is matched with.
    pub typeof_field: (u32, u32),
    /// Element keys, with `true` for interval ends.
    pub elements: Vec<(Vec<u8>, bool)>,
}

impl AnonSet {
    /// `NFTA_SET_USERDATA` as nft writes it: key byte order, auto-merge, typeof.
    pub fn userdata(&self) -> Vec<u8> {
        let mut u = vec![0, 4, 2, 0, 0, 0];
        if self.interval {
            u.extend_from_slice(&[2, 4, 1, 0, 0, 0]);
        }
        let (proto, field) = self.typeof_field;
        u.extend_from_slice(&[3, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4]);
        u.extend_from_slice(&proto.to_le_bytes());
        u.extend_from_slice(&[1, 4]);
        u.extend_from_slice(&field.to_le_bytes());
        u
    }
}

/// A rule as expressions, with its anonymous sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lowered {
    pub exprs: Vec<Expr>,
    pub sets: Vec<AnonSet>,
}
fn data_value(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    nested(buf, ty, |d| attr(d, 1, data));
}

/// Appends `NFTA_RULE_EXPRESSIONS` content: one `NFTA_LIST_ELEM` per expression. `set_ids`
/// gives the batch-wide id of each anonymous set of the rule; `named_set_id` the id of a named
/// set created in the same batch, if any.
pub fn encode_exprs(
    buf: &mut Vec<u8>,
    exprs: &[Expr],
    set_ids: &[u32],
    named_set_id: &dyn Fn(&str) -> Option<u32>,
) {
    for e in exprs {
        nested(buf, 1, |el| encode_one(el, e, set_ids, named_set_id));
    }
}

fn encode_one(
    el: &mut Vec<u8>,
    e: &Expr,
    set_ids: &[u32],
    named_set_id: &dyn Fn(&str) -> Option<u32>,
) {
    let name = match e {
        Expr::Meta(_) | Expr::MetaSetMark => "meta",
        Expr::CtState => "ct",
        Expr::Payload { .. } => "payload",
        Expr::Cmp { .. } => "cmp",
        Expr::RangeNeq { .. } => "range",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Lookup { .. } => "lookup",
        Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
        Expr::Log { .. } => "log",
        Expr::Nat { .. } => "nat",
        Expr::Counter => "counter",
    };
    attr_str(el, 1, name);
    nested(el, 2, |a| match e {
        Expr::Meta(key) => {
            attr_be32(a, 2, *key);
            attr_be32(a, 1, REG_1);
        }
        Expr::MetaSetMark => {
            attr_be32(a, 2, META_MARK);
            attr_be32(a, 3, REG_1);
        }
        Expr::CtState => {
            attr_be32(a, 2, 0);
            attr_be32(a, 1, REG_1);
        }
        Expr::Payload { base, offset, len } => {
            attr_be32(a, 1, REG_1);
            attr_be32(a, 2, *base);
            attr_be32(a, 3, *offset);
            attr_be32(a, 4, *len);
        }
        Expr::Cmp { op, data } => {
            attr_be32(a, 1, REG_1);
            attr_be32(a, 2, *op);
            data_value(a, 3, data);
        }
        Expr::RangeNeq { from, to } => {
            attr_be32(a, 1, REG_1);
            attr_be32(a, 2, 1);
            data_value(a, 3, from);
            data_value(a, 4, to);
        }
        Expr::Bitwise { mask, xor, mark_op } => {
            attr_be32(a, 1, REG_1);
            attr_be32(a, 2, REG_1);
            if *mark_op {
                attr_be32(a, 6, 0);
            }
            attr_be32(a, 3, mask.len() as u32);
            data_value(a, 4, mask);
            data_value(a, 5, xor);
        }
        Expr::Lookup { set, invert, vmap } => {
            attr_be32(a, 2, REG_1);
            if *vmap {
                attr_be32(a, 3, REG_VERDICT);
            }
            match set {
                SetRef::Named(n) => {
                    attr_str(a, 1, n);
                    if let Some(id) = named_set_id(n) {
                        attr_be32(a, 4, id);
                    }
                }
                SetRef::Anonymous(i) => {
                    attr_str(a, 1, "__set%d");
                    attr_be32(a, 4, set_ids.get(*i).copied().unwrap_or_default());
                }
            }
            if *invert {
                attr_be32(a, 5, 1);
            }
        }
        Expr::Immediate { reg, data } => {
            attr_be32(a, 1, *reg);
            data_value(a, 2, data);
        }
        Expr::Verdict(v) => {
            attr_be32(a, 1, REG_VERDICT);
            nested(a, 2, |d| v.encode(d));
        }
        Expr::Log { prefix } => attr_str(a, 2, prefix),
        Expr::Counter => {}
        Expr::Nat {
            dnat,
            nfproto,
            port,
        } => {
            attr_be32(a, 1, u32::from(*dnat));
            attr_be32(a, 2, u32::from(*nfproto));
            attr_be32(a, 3, REG_1);
            if *port {
                attr_be32(a, 5, REG_2);
                attr_be32(a, 7, 2);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::lower;

    fn encoded(rule: &str) -> Vec<u8> {
        let l = lower(rule).unwrap();
        let ids: Vec<u32> = (0..l.sets.len() as u32).map(|i| 7 + i).collect();
        let mut buf = Vec::new();
        encode_exprs(&mut buf, &l.exprs, &ids, &|_| None);
        buf
    }

    /// The expression bytes nft 1.0.6 sent for these rules (captured with strace).
    #[test]
    fn encoding_equals_what_nft_sends() {
        for (rule, want) in [
            (
                "meta l4proto tcp th dport { 80, 443 } meta mark set meta mark | 0x00010000 return",
                "24000180090001006d6574610000000014000280080002000000001008000100000000012c000180\
             08000100636d700020000280080001000000000108000200000000000c0003800500010006000000\
             340001800c0001007061796c6f616400240002800800010000000001080002000000000208000300\
             000000020800040000000002300001800b0001006c6f6f6b75700000200002800800020000000001\
             0c0001005f5f736574256400080004000000000724000180090001006d6574610000000014000280\
             080002000000000308000100000000014c0001800c00010062697477697365003c00028008000100\
             000000010800020000000001080006000000000008000300000000040c00048008000100fffffeff\
             0c000580080001000000010024000180090001006d65746100000000140002800800020000000003\
             0800030000000001300001800e000100696d6d6564696174650000001c0002800800010000000000\
             100002800c00028008000100fffffffb",
            ),
            (
                "meta l4proto udp log prefix \"skog pol 0: \"",
                "24000180090001006d6574610000000014000280080002000000001008000100000000012c000180\
             08000100636d700020000280080001000000000108000200000000000c0003800500010011000000\
             24000180080001006c6f67001800028011000200736b6f6720706f6c20303a2000000000",
            ),
            (
                "iifname \"tap*\" ip daddr 169.254.169.254 tcp dport 80 dnat ip to 127.0.0.1:8775",
                "24000180090001006d6574610000000014000280080002000000000608000100000000012c000180\
             08000100636d700020000280080001000000000108000200000000000c0003800700010074617000\
             24000180090001006d6574610000000014000280080002000000000f08000100000000012c000180\
             08000100636d700020000280080001000000000108000200000000000c0003800500010002000000\
             340001800c0001007061796c6f616400240002800800010000000001080002000000000108000300\
             0000001008000400000000042c00018008000100636d700020000280080001000000000108000200\
             000000000c00038008000100a9fea9fe24000180090001006d657461000000001400028008000200\
             0000001008000100000000012c00018008000100636d700020000280080001000000000108000200\
             000000000c0003800500010006000000340001800c0001007061796c6f6164002400028008000100\
             000000010800020000000002080003000000000208000400000000022c00018008000100636d7000\
             20000280080001000000000108000200000000000c00038006000100005000002c0001800e000100\
             696d6d6564696174650000001800028008000100000000010c000280080001007f0000012c000180\
             0e000100696d6d6564696174650000001800028008000100000000020c0002800600010022470000\
             38000180080001006e6174002c000280080001000000000108000200000000020800030000000001\
             08000500000000020800070000000002",
            ),
            (
                "ct state established,related accept",
                "2000018007000100637400001400028008000200000000000800010000000001440001800c000100\
             6269747769736500340002800800010000000001080002000000000108000300000000040c000480\
             08000100060000000c00058008000100000000002c00018008000100636d70002000028008000100\
             0000000108000200000000010c0003800800010000000000300001800e000100696d6d6564696174\
             650000001c0002800800010000000000100002800c0002800800010000000001",
            ),
        ] {
            assert_eq!(hex_of(&encoded(rule)), want, "{rule}");
        }
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
