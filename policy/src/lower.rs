//! Skog's rule text lowered to nf_tables expressions ([`crate::expr`]).
//!
//! The compiler writes rules as nft text (what golden files, `nft -f` and operators read). This
//! module lowers exactly the grammar the compiler emits (meta nfproto/l4proto/mark/iifname/
//! oifname, ip/ip6 addresses and prefixes, th/tcp/udp ports and ranges, icmp/icmpv6 type and
//! code, anonymous sets, named set and verdict map lookups, ct state, counter, log, snat/dnat,
//! verdicts)
//! to the expressions nft 1.0.6 would send for it, including the protocol dependencies nft adds
//! (`ip saddr` implies `meta nfproto ipv4`, `tcp dport` implies `meta l4proto tcp`), so that
//! `nft list` renders a rule written here exactly as one written by nft. Anything else is
//! [`Unsupported`]: the applier then sends that change through `nft -f` instead.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::expr::{
    AnonSet, BASE_NETWORK, BASE_TRANSPORT, CMP_EQ, CMP_GTE, CMP_LTE, CMP_NEQ, Expr, Lowered,
    META_IIFNAME, META_L4PROTO, META_MARK, META_NFPROTO, META_OIFNAME, NFPROTO_IPV4, NFPROTO_IPV6,
    REG_1, REG_2, SetRef, TYPE_ICMP6_TYPE, TYPE_INET_SERVICE, TYPE_IP6ADDR, TYPE_IPADDR, Verdict,
};

/// A rule text outside the grammar this module lowers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {token:?} of rule {rule:?} over nfnetlink")]
pub struct Unsupported {
    pub rule: String,
    pub token: String,
}

#[derive(Debug)]
enum Token<'a> {
    Word(&'a str),
    Quoted(&'a str),
    Set(Vec<&'a str>),
}

fn tokens(rule: &str) -> Option<Vec<Token<'_>>> {
    let mut out = Vec::new();
    let mut rest = rule.trim_start();
    while !rest.is_empty() {
        let (token, after) = if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"')?;
            (Token::Quoted(&r[..end]), &r[end + 1..])
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}')?;
            let items = r[..end].split(',').map(str::trim).collect();
            (Token::Set(items), &r[end + 1..])
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (Token::Word(&rest[..end]), &rest[end..])
        };
        out.push(token);
        rest = after.trim_start();
    }
    Some(out)
}

/// What earlier matches established (nft leaves out dependencies they imply).
#[derive(Default)]
struct Context {
    nfproto: Option<u8>,
    l4proto: Option<u8>,
}

struct Lowering<'r> {
    rule: &'r str,
    tokens: std::vec::IntoIter<Token<'r>>,
    ctx: Context,
    out: Lowered,
}

/// Lowers one rule of the compiler's grammar.
pub fn lower(rule: &str) -> Result<Lowered, Unsupported> {
    let unsupported = |token: &str| Unsupported {
        rule: rule.to_owned(),
        token: token.to_owned(),
    };
    let toks = tokens(rule).ok_or_else(|| unsupported("unbalanced quote or brace"))?;
    let mut l = Lowering {
        rule,
        tokens: toks.into_iter(),
        ctx: Context::default(),
        out: Lowered::default(),
    };
    while let Some(t) = l.tokens.next() {
        let Token::Word(w) = t else {
            return Err(unsupported(&format!("{t:?}")));
        };
        l.word(w)?;
        if matches!(l.out.exprs.last(), Some(Expr::Verdict(_)))
            && let Some(extra) = l.tokens.next()
        {
            return Err(unsupported(&format!("{extra:?}")));
        }
    }
    merge_payloads(&mut l.out.exprs);
    Ok(l.out)
}

/// nft's payload merging: two adjacent equality matches on neighbouring header fields of the
/// same base (e.g. `udp sport 68 udp dport 67`, `icmpv6 type 128 icmpv6 code 0`) become one
/// load and one comparison when the merged field is at most 4 bytes.
fn merge_payloads(exprs: &mut Vec<Expr>) {
    let mut i = 0;
    while i + 3 < exprs.len() {
        if let [
            Expr::Payload {
                base: b1,
                offset: o1,
                len: l1,
            },
            Expr::Cmp {
                op: CMP_EQ,
                data: d1,
            },
            Expr::Payload {
                base: b2,
                offset: o2,
                len: l2,
            },
            Expr::Cmp {
                op: CMP_EQ,
                data: d2,
            },
        ] = &exprs[i..i + 4]
            && b1 == b2
            && *o2 == o1 + l1
            && l1 + l2 <= 4
        {
            let merged = [
                Expr::Payload {
                    base: *b1,
                    offset: *o1,
                    len: l1 + l2,
                },
                Expr::Cmp {
                    op: CMP_EQ,
                    data: [d1.as_slice(), d2.as_slice()].concat(),
                },
            ];
            exprs.splice(i..i + 4, merged);
            continue;
        }
        i += 1;
    }
}

fn proto_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "ipv6-icmp" => Some(58),
        "sctp" => Some(132),
        "udplite" => Some(136),
        n => n.parse().ok(),
    }
}

fn icmpv6_type(name: &str) -> Option<u8> {
    Some(match name {
        "echo-request" => 128,
        "echo-reply" => 129,
        "mld-listener-query" => 130,
        "mld-listener-report" => 131,
        "mld-listener-done" => 132,
        "nd-router-solicit" => 133,
        "nd-router-advert" => 134,
        "nd-neighbor-solicit" => 135,
        "nd-neighbor-advert" => 136,
        n => return n.parse().ok(),
    })
}

fn hex_u32(s: &str) -> Option<u32> {
    u32::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// The byte string of an address, and of the last address of a prefix.
fn net_range(s: &str) -> Option<(Vec<u8>, Vec<u8>, u8, bool)> {
    let net: IpNet = match s.parse() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    let (lo, hi, v6) = match net {
        IpNet::V4(n) => (
            n.network().octets().to_vec(),
            n.broadcast().octets().to_vec(),
            false,
        ),
        IpNet::V6(n) => (
            n.network().octets().to_vec(),
            n.broadcast().octets().to_vec(),
            true,
        ),
    };
    Some((lo, hi, net.prefix_len(), v6))
}

fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
        None => {
            let p = s.parse().ok()?;
            Some((p, p))
        }
    }
}

/// Big-endian bytes plus one, or `None` at the top.
fn successor(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    for b in out.iter_mut().rev() {
        if *b == 0xff {
            *b = 0;
        } else {
            *b += 1;
            return Some(out);
        }
    }
    None
}

/// Interval elements as nft sends them for an anonymous set: ranges merged when they touch or
/// overlap (nft's auto-merge), a leading interval end at zero, then start / end+1 pairs.
fn interval_elements(mut ranges: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, bool)> {
    ranges.sort();
    let mut merged: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (lo, hi) in ranges {
        if let Some(last) = merged.last_mut()
            && successor(&last.1).is_none_or(|next| lo <= next)
        {
            if hi > last.1 {
                last.1 = hi;
            }
            continue;
        }
        merged.push((lo, hi));
    }
    let mut out = Vec::new();
    if let Some((first, _)) = merged.first()
        && first.iter().any(|b| *b != 0)
    {
        out.push((vec![0; first.len()], true));
    }
    for (lo, hi) in merged {
        out.push((lo, false));
        if let Some(end) = successor(&hi) {
            out.push((end, true));
        }
    }
    out
}

impl<'r> Lowering<'r> {
    fn unsupported(&self, token: &str) -> Unsupported {
        Unsupported {
            rule: self.rule.to_owned(),
            token: token.to_owned(),
        }
    }

    fn next_word(&mut self) -> Result<&'r str, Unsupported> {
        match self.tokens.next() {
            Some(Token::Word(w)) => Ok(w),
            other => Err(self.unsupported(&format!("{other:?}"))),
        }
    }

    /// The next token, and whether a `!=` preceded it.
    fn value(&mut self) -> Result<(Token<'r>, bool), Unsupported> {
        let mut t = self.tokens.next();
        let negated = matches!(t, Some(Token::Word("!=")));
        if negated {
            t = self.tokens.next();
        }
        t.map(|t| (t, negated))
            .ok_or_else(|| self.unsupported("end of rule"))
    }

    fn push(&mut self, e: Expr) {
        self.out.exprs.push(e);
    }

    fn cmp(&mut self, negated: bool, data: Vec<u8>) {
        let op = if negated { CMP_NEQ } else { CMP_EQ };
        self.push(Expr::Cmp { op, data });
    }

    fn need_nfproto(&mut self, nfproto: u8) {
        if self.ctx.nfproto != Some(nfproto) {
            self.push(Expr::Meta(META_NFPROTO));
            self.cmp(false, vec![nfproto]);
            self.ctx.nfproto = Some(nfproto);
        }
    }

    fn need_l4proto(&mut self, proto: u8) {
        if self.ctx.l4proto != Some(proto) {
            self.push(Expr::Meta(META_L4PROTO));
            self.cmp(false, vec![proto]);
            self.ctx.l4proto = Some(proto);
        }
    }

    fn anon_set(&mut self, set: AnonSet, invert: bool) {
        self.out.sets.push(set);
        let set = SetRef::Anonymous(self.out.sets.len() - 1);
        self.push(Expr::Lookup {
            set,
            invert,
            vmap: false,
        });
    }

    fn word(&mut self, w: &str) -> Result<(), Unsupported> {
        match w {
            "meta" => match self.next_word()? {
                "nfproto" => {
                    let v = match self.next_word()? {
                        "ipv4" => NFPROTO_IPV4,
                        "ipv6" => NFPROTO_IPV6,
                        other => return Err(self.unsupported(other)),
                    };
                    self.push(Expr::Meta(META_NFPROTO));
                    self.cmp(false, vec![v]);
                    self.ctx.nfproto = Some(v);
                }
                "l4proto" => {
                    let (t, negated) = self.value()?;
                    let Token::Word(p) = t else {
                        return Err(self.unsupported(&format!("{t:?}")));
                    };
                    let p = proto_number(p).ok_or_else(|| self.unsupported(p))?;
                    self.push(Expr::Meta(META_L4PROTO));
                    self.cmp(negated, vec![p]);
                    if !negated {
                        self.ctx.l4proto = Some(p);
                    }
                }
                "mark" => self.mark()?,
                other => return Err(self.unsupported(other)),
            },
            "ip" | "ip6" => {
                let v6 = w == "ip6";
                let offset = match (self.next_word()?, v6) {
                    ("saddr", false) => 12,
                    ("daddr", false) => 16,
                    ("saddr", true) => 8,
                    ("daddr", true) => 24,
                    (other, _) => return Err(self.unsupported(other)),
                };
                self.need_nfproto(if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 });
                self.address(v6, offset)?;
            }
            "th" | "tcp" | "udp" => {
                match w {
                    "tcp" => self.need_l4proto(6),
                    "udp" => self.need_l4proto(17),
                    _ if self.ctx.l4proto.is_none() => return Err(self.unsupported("th")),
                    _ => {}
                }
                let offset = match self.next_word()? {
                    "sport" => 0,
                    "dport" => 2,
                    other => return Err(self.unsupported(other)),
                };
                self.port(offset)?;
            }
            "icmp" | "icmpv6" => {
                let v6 = w == "icmpv6";
                self.need_nfproto(if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 });
                self.need_l4proto(if v6 { 58 } else { 1 });
                let offset = match self.next_word()? {
                    "type" => 0,
                    "code" => 1,
                    other => return Err(self.unsupported(other)),
                };
                self.push(Expr::Payload {
                    base: BASE_TRANSPORT,
                    offset,
                    len: 1,
                });
                match self.value()? {
                    (Token::Word(n), negated) => {
                        let n: u8 = n.parse().map_err(|_| self.unsupported(n))?;
                        self.cmp(negated, vec![n]);
                    }
                    (Token::Set(items), negated) if v6 && offset == 0 => {
                        let mut elements = Vec::new();
                        for item in items {
                            let t = icmpv6_type(item).ok_or_else(|| self.unsupported(item))?;
                            elements.push((vec![t], false));
                        }
                        let set = AnonSet {
                            key_type: TYPE_ICMP6_TYPE,
                            key_len: 1,
                            interval: false,
                            typeof_field: (14, 1),
                            elements,
                        };
                        self.anon_set(set, negated);
                    }
                    (t, _) => return Err(self.unsupported(&format!("{t:?}"))),
                }
            }
            "ct" => {
                if self.next_word()? != "state" {
                    return Err(self.unsupported("ct"));
                }
                let states = self.next_word()?.to_owned();
                let mut bits = 0u32;
                for s in states.split(',') {
                    bits |= match s {
                        "invalid" => 1,
                        "established" => 2,
                        "related" => 4,
                        "new" => 8,
                        other => return Err(self.unsupported(other)),
                    };
                }
                self.push(Expr::CtState);
                self.push(Expr::Bitwise {
                    mask: bits.to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                    mark_op: false,
                });
                self.cmp(true, vec![0; 4]);
            }
            "iifname" | "oifname" => {
                let key = if w == "iifname" {
                    META_IIFNAME
                } else {
                    META_OIFNAME
                };
                match self.value()? {
                    (Token::Word("vmap"), false) => {
                        let map = self.next_word()?;
                        let name = map.strip_prefix('@').ok_or_else(|| self.unsupported(map))?;
                        let set = SetRef::Named(name.to_owned());
                        self.push(Expr::Meta(key));
                        self.push(Expr::Lookup {
                            set,
                            invert: false,
                            vmap: true,
                        });
                    }
                    (Token::Quoted(name), negated) => {
                        // Only wildcards: an exact name compares differently.
                        let prefix = name
                            .strip_suffix('*')
                            .filter(|p| !p.is_empty() && !p.contains(['*', '\\']))
                            .ok_or_else(|| self.unsupported(name))?;
                        let data = prefix.as_bytes().to_vec();
                        self.push(Expr::Meta(key));
                        self.cmp(negated, data);
                    }
                    (t, _) => return Err(self.unsupported(&format!("{t:?}"))),
                }
            }
            "log" => {
                match (self.next_word()?, self.tokens.next()) {
                    ("prefix", Some(Token::Quoted(p))) => {
                        let prefix = p.to_owned();
                        self.push(Expr::Log { prefix });
                    }
                    _ => return Err(self.unsupported("log")),
                };
            }
            "counter" => self.push(Expr::Counter),
            "dnat" | "snat" => self.nat(w == "dnat")?,
            "accept" => self.push(Expr::Verdict(Verdict::Accept)),
            "drop" => self.push(Expr::Verdict(Verdict::Drop)),
            "return" => self.push(Expr::Verdict(Verdict::Return)),
            "jump" | "goto" => {
                let chain = self.next_word()?.to_owned();
                let v = if w == "jump" {
                    Verdict::Jump(chain)
                } else {
                    Verdict::Goto(chain)
                };
                self.push(Expr::Verdict(v));
            }
            other => return Err(self.unsupported(other)),
        }
        Ok(())
    }

    /// `meta mark set meta mark | X`, `... & X`, or the match `meta mark & M == V`.
    fn mark(&mut self) -> Result<(), Unsupported> {
        let word = self.next_word()?.to_owned();
        self.push(Expr::Meta(META_MARK));
        if word == "set" {
            if (self.next_word()?, self.next_word()?) != ("meta", "mark") {
                return Err(self.unsupported("mark set"));
            }
            let op = self.next_word()?.to_owned();
            let v = self.next_word()?.to_owned();
            let v = hex_u32(&v).ok_or_else(|| self.unsupported(&v))?;
            let (mask, xor) = match op.as_str() {
                "|" => (!v, v),
                "&" => (v, 0),
                other => return Err(self.unsupported(other)),
            };
            self.push(Expr::Bitwise {
                mask: mask.to_ne_bytes().to_vec(),
                xor: xor.to_ne_bytes().to_vec(),
                mark_op: true,
            });
            self.push(Expr::MetaSetMark);
            return Ok(());
        }
        let mask = hex_u32(&word).filter(|_| word.starts_with("0x"));
        let mask = match (word.as_str(), self.next_word()?) {
            ("&", m) => hex_u32(m).ok_or_else(|| self.unsupported(m))?,
            _ => mask.ok_or_else(|| self.unsupported(&word))?,
        };
        if self.next_word()? != "==" {
            return Err(self.unsupported("mark match"));
        }
        let v = self.next_word()?.to_owned();
        let v = hex_u32(&v)
            .or_else(|| v.parse().ok())
            .ok_or_else(|| self.unsupported(&v))?;
        self.push(Expr::Bitwise {
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
            mark_op: true,
        });
        self.cmp(false, v.to_ne_bytes().to_vec());
        Ok(())
    }

    fn address(&mut self, v6: bool, offset: u32) -> Result<(), Unsupported> {
        let full = if v6 { 16 } else { 4 };
        let (t, negated) = self.value()?;
        match t {
            Token::Word(w) if w.starts_with('@') => {
                self.push(Expr::Payload {
                    base: BASE_NETWORK,
                    offset,
                    len: full,
                });
                self.push(Expr::Lookup {
                    set: SetRef::Named(w[1..].to_owned()),
                    invert: negated,
                    vmap: false,
                });
            }
            Token::Word(w) => {
                let (lo, _, prefix, is_v6) = net_range(w).ok_or_else(|| self.unsupported(w))?;
                if is_v6 != v6 || prefix == 0 {
                    return Err(self.unsupported(w));
                }
                if prefix % 8 == 0 {
                    let len = u32::from(prefix / 8);
                    self.push(Expr::Payload {
                        base: BASE_NETWORK,
                        offset,
                        len,
                    });
                    self.cmp(negated, lo[..len as usize].to_vec());
                } else {
                    self.push(Expr::Payload {
                        base: BASE_NETWORK,
                        offset,
                        len: full,
                    });
                    let mask: Vec<u8> = (0..full)
                        .map(|i| {
                            let bits = u32::from(prefix).saturating_sub(i * 8).min(8);
                            (0xff00u16 >> bits) as u8
                        })
                        .collect();
                    self.push(Expr::Bitwise {
                        mask,
                        xor: vec![0; full as usize],
                        mark_op: false,
                    });
                    self.cmp(negated, lo);
                }
            }
            Token::Set(items) => {
                self.push(Expr::Payload {
                    base: BASE_NETWORK,
                    offset,
                    len: full,
                });
                let mut ranges = Vec::new();
                for item in &items {
                    let (lo, hi, _, is_v6) =
                        net_range(item).ok_or_else(|| self.unsupported(item))?;
                    if is_v6 != v6 {
                        return Err(self.unsupported(item));
                    }
                    ranges.push((lo, hi));
                }
                let field = match (v6, offset) {
                    (false, 12) => (12, 11),
                    (false, _) => (12, 12),
                    (true, 8) => (13, 8),
                    (true, _) => (13, 9),
                };
                let set = if items.iter().any(|i| i.contains('/')) {
                    AnonSet {
                        key_type: if v6 { TYPE_IP6ADDR } else { TYPE_IPADDR },
                        key_len: full,
                        interval: true,
                        typeof_field: field,
                        elements: interval_elements(ranges),
                    }
                } else {
                    AnonSet {
                        key_type: if v6 { TYPE_IP6ADDR } else { TYPE_IPADDR },
                        key_len: full,
                        interval: false,
                        typeof_field: field,
                        elements: ranges.into_iter().map(|(lo, _)| (lo, false)).collect(),
                    }
                };
                self.anon_set(set, negated);
            }
            Token::Quoted(q) => return Err(self.unsupported(q)),
        }
        Ok(())
    }

    fn port(&mut self, offset: u32) -> Result<(), Unsupported> {
        self.push(Expr::Payload {
            base: BASE_TRANSPORT,
            offset,
            len: 2,
        });
        let (t, negated) = self.value()?;
        match t {
            Token::Word(w) => {
                let (lo, hi) = port_range(w).ok_or_else(|| self.unsupported(w))?;
                let (lo, hi) = (lo.to_be_bytes().to_vec(), hi.to_be_bytes().to_vec());
                if lo == hi {
                    self.cmp(negated, lo);
                } else if negated {
                    self.push(Expr::RangeNeq { from: lo, to: hi });
                } else {
                    self.push(Expr::Cmp {
                        op: CMP_GTE,
                        data: lo,
                    });
                    self.push(Expr::Cmp {
                        op: CMP_LTE,
                        data: hi,
                    });
                }
            }
            Token::Set(items) => {
                let mut ranges = Vec::new();
                for item in &items {
                    let (lo, hi) = port_range(item).ok_or_else(|| self.unsupported(item))?;
                    ranges.push((lo.to_be_bytes().to_vec(), hi.to_be_bytes().to_vec()));
                }
                let interval = items.iter().any(|i| i.contains('-'));
                let elements = if interval {
                    interval_elements(ranges)
                } else {
                    ranges.into_iter().map(|(lo, _)| (lo, false)).collect()
                };
                let set = AnonSet {
                    key_type: TYPE_INET_SERVICE,
                    key_len: 2,
                    interval,
                    typeof_field: (11, if offset == 0 { 1 } else { 2 }),
                    elements,
                };
                self.anon_set(set, negated);
            }
            Token::Quoted(q) => return Err(self.unsupported(q)),
        }
        Ok(())
    }

    /// `dnat ip to ADDR[:PORT]`, `snat ip6 to ADDR`.
    fn nat(&mut self, dnat: bool) -> Result<(), Unsupported> {
        let nfproto = match self.next_word()? {
            "ip" => NFPROTO_IPV4,
            "ip6" => NFPROTO_IPV6,
            other => return Err(self.unsupported(other)),
        };
        if self.next_word()? != "to" {
            return Err(self.unsupported("nat"));
        }
        let target = self.next_word()?.to_owned();
        let (addr, port) = match target.parse::<std::net::SocketAddr>() {
            Ok(sa) if nfproto == NFPROTO_IPV4 => (sa.ip(), Some(sa.port())),
            _ => (
                target
                    .parse::<IpAddr>()
                    .map_err(|_| self.unsupported(&target))?,
                None,
            ),
        };
        if addr.is_ipv6() != (nfproto == NFPROTO_IPV6) {
            return Err(self.unsupported(&target));
        }
        let data = match addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        self.push(Expr::Immediate { reg: REG_1, data });
        if let Some(p) = port {
            self.push(Expr::Immediate {
                reg: REG_2,
                data: p.to_be_bytes().to_vec(),
            });
        }
        self.push(Expr::Nat {
            dnat,
            nfproto,
            port: port.is_some(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_added_as_nft_adds_them() {
        let l = lower("udp dport 53 accept").unwrap();
        assert_eq!(
            l.exprs[..2],
            [
                Expr::Meta(META_L4PROTO),
                Expr::Cmp {
                    op: CMP_EQ,
                    data: vec![17]
                }
            ]
        );
        let l = lower("meta nfproto ipv4 ip saddr 192.0.2.0/24 return").unwrap();
        assert_eq!(l.exprs.len(), 5, "{:?}", l.exprs);
        let l = lower("ip6 saddr fe80::/10 return").unwrap();
        assert!(matches!(&l.exprs[3], Expr::Bitwise { mask, .. } if mask[..2] == [0xff, 0xc0]));
    }

    #[test]
    fn interval_sets_merge_and_start_with_an_end_at_zero() {
        let l = lower("meta l4proto tcp th dport != { 25, 5000-5999 } accept").unwrap();
        let keys: Vec<(u16, bool)> = l.sets[0]
            .elements
            .iter()
            .map(|(k, end)| (u16::from_be_bytes([k[0], k[1]]), *end))
            .collect();
        assert_eq!(
            keys,
            [
                (0, true),
                (25, false),
                (26, true),
                (5000, false),
                (6000, true)
            ]
        );
        let l = lower("ip saddr { 198.51.100.13/32, 198.51.100.14/32 } return").unwrap();
        assert_eq!(l.sets[0].elements.len(), 3, "adjacent members merge");
    }

    /// Rule texts are ours, but the lowering must not panic on any text: every prefix and
    /// every single-byte corruption of real rules is lowered or refused.
    #[test]
    fn no_text_makes_it_panic() {
        let rules = [
            "meta nfproto ipv4 meta l4proto tcp ip saddr @sel4-ba0a00158374616b th dport != { 25, 5000-5999 } meta mark set meta mark | 0x00010000 return",
            "iifname \"tap*\" ip daddr 169.254.169.254 tcp dport 80 dnat ip to 127.0.0.1:8775",
            "icmpv6 type { mld-listener-query, nd-neighbor-advert } accept",
            "meta mark & 0x00020000 == 0 jump pol-1c692cfd0ae6315b-in",
            "ip6 saddr 2001:db8:100::d oifname != \"tap*\" snat ip6 to 2001:db8:200::d",
            "meta l4proto udp log prefix \"skog pol 0: \"",
        ];
        let noise = [
            '{', '}', '"', ' ', '-', '/', ':', ',', '@', '!', '\u{e9}', '0', 'f',
        ];
        for rule in rules {
            assert!(lower(rule).is_ok(), "{rule}");
            for (i, _) in rule.char_indices() {
                let _ = lower(&rule[..i]);
                for c in noise {
                    let mut mutated = rule.to_owned();
                    mutated.replace_range(i..i + 1, &c.to_string());
                    let _ = lower(&mutated);
                }
            }
        }
    }

    #[test]
    fn anything_else_is_unsupported() {
        for rule in [
            "tcp dport 22 counter packets 1 bytes 60 accept",
            "ip saddr 0.0.0.0/0 accept",
            "iifname \"tap0\" accept",
            "accept drop",
            "th dport 22 accept",
            "log prefix \"unterminated",
            "meta mark set 0x1",
        ] {
            assert!(lower(rule).is_err(), "{rule}");
        }
    }
}
