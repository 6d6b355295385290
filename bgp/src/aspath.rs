//! AS paths as segments, and the RFC 6793 transition between 2-octet and 4-octet AS numbers.
//!
//! A peer that did not negotiate the 4-octet AS capability sends AS_PATH with 2-octet numbers
//! (AS_TRANS, 23456, standing for every 4-octet AS) and, when the path holds 4-octet ASes,
//! an AS4_PATH beside it. [`reconstruct`] merges the two (RFC 6793 §4.2.3); [`parse_as4_path`]
//! and [`check_as4_aggregator`] read the two transition attributes from their raw bytes,
//! because a malformed one is discarded alone (RFC 7606 §7.7, RFC 6793 §6) rather than
//! withdrawing the routes, which is what the codec does for other malformed attributes.

/// The kinds of AS path segment (RFC 4271, RFC 5065).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// AS_SET: counts as one AS for the path length.
    Set,
    /// AS_SEQUENCE.
    Sequence,
    /// AS_CONFED_SEQUENCE: not counted.
    ConfedSequence,
    /// AS_CONFED_SET: not counted.
    ConfedSet,
}

/// One AS path segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its kind.
    pub kind: SegmentKind,
    /// Its AS numbers (never empty).
    pub asns: Vec<u32>,
}

impl SegmentKind {
    fn from_code(code: u8) -> Option<SegmentKind> {
        match code {
            1 => Some(SegmentKind::Set),
            2 => Some(SegmentKind::Sequence),
            3 => Some(SegmentKind::ConfedSequence),
            4 => Some(SegmentKind::ConfedSet),
            _ => None,
        }
    }

    fn is_confed(self) -> bool {
        matches!(self, SegmentKind::ConfedSequence | SegmentKind::ConfedSet)
    }
}

/// The path length for best-path selection: a sequence counts its ASes, a set one,
/// confederation segments nothing (RFC 4271 §9.1.2.2, RFC 5065 §5.3).
pub fn path_len(segments: &[Segment]) -> usize {
    segments
        .iter()
        .map(|s| match s.kind {
            SegmentKind::Sequence => s.asns.len(),
            SegmentKind::Set => 1,
            SegmentKind::ConfedSequence | SegmentKind::ConfedSet => 0,
        })
        .sum()
}

/// Every AS number on the path, in order (for loop detection).
pub fn flatten(segments: &[Segment]) -> Vec<u32> {
    segments
        .iter()
        .flat_map(|s| s.asns.iter().copied())
        .collect()
}

/// Why a transition attribute was discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A segment header or its AS numbers run past the attribute.
    #[error("segment overruns the attribute")]
    Truncated,
    /// A segment with no AS numbers (RFC 7606 §7.2 applies to AS4_PATH too).
    #[error("segment of length zero")]
    EmptySegment,
    /// An unknown segment type.
    #[error("unknown segment type {0}")]
    SegmentType(u8),
    /// Confederation segments have no place in AS4_PATH (RFC 6793 §6).
    #[error("confederation segment in AS4_PATH")]
    Confederation,
    /// AS4_AGGREGATOR must be 8 bytes.
    #[error("AS4_AGGREGATOR of {0} bytes")]
    AggregatorLength(usize),
    /// The attribute flags are not optional transitive.
    #[error("attribute flags {0:#04x} are not optional transitive")]
    Flags(u8),
}

const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;

fn check_flags(flags: u8) -> Result<(), Malformed> {
    if flags & (OPTIONAL | TRANSITIVE) == OPTIONAL | TRANSITIVE {
        Ok(())
    } else {
        Err(Malformed::Flags(flags))
    }
}

/// Parses an AS4_PATH attribute's value (flags as received).
pub fn parse_as4_path(flags: u8, value: &[u8]) -> Result<Vec<Segment>, Malformed> {
    check_flags(flags)?;
    let segments = parse_segments(value, 4)?;
    if segments.iter().any(|s| s.kind.is_confed()) {
        return Err(Malformed::Confederation);
    }
    Ok(segments)
}

/// Parses an AS_PATH attribute's value, with 4-octet AS numbers if `asn4` was negotiated.
pub fn parse_as_path(value: &[u8], asn4: bool) -> Result<Vec<Segment>, Malformed> {
    parse_segments(value, if asn4 { 4 } else { 2 })
}

fn parse_segments(mut value: &[u8], width: usize) -> Result<Vec<Segment>, Malformed> {
    let mut out = Vec::new();
    while let [code, count, rest @ ..] = value {
        let kind = SegmentKind::from_code(*code).ok_or(Malformed::SegmentType(*code))?;
        if *count == 0 {
            return Err(Malformed::EmptySegment);
        }
        let (asns, rest) = rest
            .split_at_checked(usize::from(*count) * width)
            .ok_or(Malformed::Truncated)?;
        out.push(Segment {
            kind,
            asns: asns
                .chunks_exact(width)
                .map(|c| c.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)))
                .collect(),
        });
        value = rest;
    }
    if value.is_empty() {
        Ok(out)
    } else {
        Err(Malformed::Truncated)
    }
}

/// Checks an AS4_AGGREGATOR attribute's value (a 4-octet AS and an IPv4 address).
pub fn check_as4_aggregator(flags: u8, value: &[u8]) -> Result<(), Malformed> {
    check_flags(flags)?;
    if value.len() == 8 {
        Ok(())
    } else {
        Err(Malformed::AggregatorLength(value.len()))
    }
}

/// The AS path of a route from a 2-octet peer (RFC 6793 §4.2.3): AS_PATH's leading part
/// (as many ASes as it has more than AS4_PATH) followed by AS4_PATH. AS4_PATH is ignored when
/// it is longer than AS_PATH, or when an AGGREGATOR names a 2-octet AS other than AS_TRANS
/// (the aggregating speaker was an old one, so AS4_PATH predates the aggregation).
pub fn reconstruct(
    as_path: Vec<Segment>,
    as4_path: Option<Vec<Segment>>,
    aggregator_as: Option<u32>,
) -> Vec<Segment> {
    let Some(as4_path) = as4_path else {
        return as_path;
    };
    if aggregator_as.is_some_and(|a| a != u32::from(crate::codec::AS_TRANS)) {
        return as_path;
    }
    let Some(mut leading) = path_len(&as_path).checked_sub(path_len(&as4_path)) else {
        return as_path;
    };
    let mut out = Vec::new();
    for seg in as_path {
        if leading == 0 {
            break;
        }
        match seg.kind {
            SegmentKind::Sequence => {
                let take = leading.min(seg.asns.len());
                leading -= take;
                out.push(Segment {
                    kind: seg.kind,
                    asns: seg.asns[..take].to_vec(),
                });
            }
            SegmentKind::Set => {
                leading -= 1;
                out.push(seg);
            }
            SegmentKind::ConfedSequence | SegmentKind::ConfedSet => out.push(seg),
        }
    }
    out.extend(as4_path);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(asns: &[u32]) -> Segment {
        Segment {
            kind: SegmentKind::Sequence,
            asns: asns.to_vec(),
        }
    }

    const TRANS: u32 = crate::codec::AS_TRANS as u32;

    #[test]
    fn as4_path_replaces_the_as_trans_tail() {
        // 65001 (2-octet) learned a route through 4200000001 and 4200000002.
        let as_path = vec![seq(&[65001, TRANS, TRANS])];
        let as4 = vec![seq(&[4_200_000_001, 4_200_000_002])];
        let got = reconstruct(as_path, Some(as4), None);
        assert_eq!(flatten(&got), vec![65001, 4_200_000_001, 4_200_000_002]);
        assert_eq!(path_len(&got), 3);
    }

    #[test]
    fn prepends_by_old_speakers_keep_their_count() {
        // An old speaker prepended twice after AS4_PATH was formed.
        let as_path = vec![seq(&[65001, 65001, TRANS]), seq(&[64999])];
        let as4 = vec![seq(&[4_200_000_001, 64999])];
        let got = reconstruct(as_path, Some(as4), None);
        assert_eq!(flatten(&got), vec![65001, 65001, 4_200_000_001, 64999]);
    }

    #[test]
    fn a_longer_as4_path_or_an_old_aggregator_is_ignored() {
        let as_path = vec![seq(&[65001])];
        let as4 = vec![seq(&[4_200_000_001, 4_200_000_002])];
        assert_eq!(
            reconstruct(as_path.clone(), Some(as4.clone()), None),
            as_path
        );
        let as_path = vec![seq(&[65001, TRANS])];
        let as4 = vec![seq(&[4_200_000_001])];
        assert_eq!(
            reconstruct(as_path.clone(), Some(as4.clone()), Some(65002)),
            as_path
        );
        // An aggregator of AS_TRANS (with AS4_AGGREGATOR) keeps AS4_PATH in play.
        let got = reconstruct(as_path, Some(as4), Some(TRANS));
        assert_eq!(flatten(&got), vec![65001, 4_200_000_001]);
    }

    #[test]
    fn sets_count_as_one_and_confederations_as_none() {
        let as_path = vec![
            Segment {
                kind: SegmentKind::ConfedSequence,
                asns: vec![65100],
            },
            Segment {
                kind: SegmentKind::Set,
                asns: vec![65002, 65003],
            },
            seq(&[TRANS]),
        ];
        assert_eq!(path_len(&as_path), 2);
        let got = reconstruct(as_path, Some(vec![seq(&[4_200_000_009])]), None);
        assert_eq!(flatten(&got), vec![65100, 65002, 65003, 4_200_000_009]);
        assert_eq!(path_len(&got), 2);
    }

    #[test]
    fn as4_path_bytes_parse_and_malformed_ones_are_named() {
        let ok = [2, 2, 0xfa, 0x56, 0xea, 0x01, 0xfa, 0x56, 0xea, 0x02];
        assert_eq!(
            parse_as4_path(0xc0, &ok).unwrap(),
            vec![seq(&[4_200_000_001, 4_200_000_002])]
        );
        assert_eq!(parse_as4_path(0xc0, &[]).unwrap(), vec![]);
        assert_eq!(parse_as4_path(0xc0, &ok[..9]), Err(Malformed::Truncated));
        assert_eq!(parse_as4_path(0xc0, &[2]), Err(Malformed::Truncated));
        assert_eq!(parse_as4_path(0xc0, &[2, 0]), Err(Malformed::EmptySegment));
        assert_eq!(
            parse_as4_path(0xc0, &[9, 1, 0, 0, 0, 1]),
            Err(Malformed::SegmentType(9))
        );
        assert_eq!(
            parse_as4_path(0xc0, &[3, 1, 0, 0, 0, 1]),
            Err(Malformed::Confederation)
        );
        assert_eq!(parse_as4_path(0x40, &ok), Err(Malformed::Flags(0x40)));
    }

    #[test]
    fn as4_aggregator_must_be_eight_bytes() {
        assert_eq!(
            check_as4_aggregator(0xc0, &[0xfa, 0x56, 0xea, 0x01, 192, 0, 2, 1]),
            Ok(())
        );
        assert_eq!(
            check_as4_aggregator(0xc0, &[0xfa, 0x56, 0xea, 0x01, 192, 0, 2]),
            Err(Malformed::AggregatorLength(7))
        );
    }
}
