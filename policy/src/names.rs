//! Names of everything in Skog's nftables table, and the checks that keep outside data out
//! of nft syntax.
//!
//! Interface names go into the ruleset verbatim (chain names, quoted map keys) only after
//! [`check_interface`] accepted them; policy ids and selector expressions never do: they are
//! hashed ([`stable_hash`]) into fixed-width hex names.

use std::fmt;

/// The table Skog owns. Nothing outside it is ever read or written.
pub const TABLE: &str = "skog";
/// The table's family.
pub const FAMILY: &str = "inet";

/// Linux's interface name limit (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Why a name from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "interface name {0:?} is empty, longer than 15 bytes or has characters other than A-Z a-z 0-9 _ . -"
    )]
    BadInterface(String),
    #[error("interface name {name:?} does not start with the VM interface prefix {prefix:?}")]
    NotAVmInterface { name: String, prefix: String },
    #[error("interface prefix {0:?} must be 1-14 characters of A-Z a-z 0-9 _ . -")]
    BadPrefix(String),
}

fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks the VM interface prefix (it appears in wildcard matches like `"tap*"`).
pub fn check_prefix(prefix: &str) -> Result<(), NameError> {
    if (1..IFNAME_MAX).contains(&prefix.len()) && plain(prefix) {
        Ok(())
    } else {
        Err(NameError::BadPrefix(prefix.to_owned()))
    }
}

/// Checks a VM interface name: a valid Linux name of plain characters starting with `prefix`.
pub fn check_interface(name: &str, prefix: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > IFNAME_MAX || !plain(name) {
        return Err(NameError::BadInterface(name.to_owned()));
    }
    if !name.starts_with(prefix) {
        return Err(NameError::NotAVmInterface {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
        });
    }
    Ok(())
}

/// 64-bit FNV-1a: stable across builds and platforms, so names survive restarts (adoption).
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Direction of traffic relative to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// To the VM.
    Ingress,
    /// From the VM.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// The chain a policy's Allow rule goes to: it sets the Accept mark bit and returns to the
/// endpoint chain that jumped to the policy. One small shared chain instead of the mark
/// statement in every Allow rule keeps the policy rules small, and the kernel reads every rule
/// of the table at each commit that adds rules.
pub const ALLOW_CHAIN: &str = "policy-allow";
/// The chain a policy's Pass rule goes to (sets the Pass mark bit, returns likewise).
pub const PASS_CHAIN: &str = "policy-pass";

/// The chain holding one policy's rules for one direction, shared by every endpoint.
pub fn policy_chain(policy_id: &str, dir: Direction) -> String {
    let suffix = match dir {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    format!("pol-{:016x}-{suffix}", stable_hash(policy_id))
}

/// The chain of one endpoint and direction (interface already checked).
pub fn endpoint_chain(interface: &str, dir: Direction) -> String {
    match dir {
        Direction::Ingress => format!("to-{interface}"),
        Direction::Egress => format!("from-{interface}"),
    }
}

/// The anti-spoofing chain of one endpoint (interface already checked).
pub fn spoof_chain(interface: &str) -> String {
    format!("spoof-{interface}")
}

/// The named set holding a selector's members of one IP version.
pub fn selector_set(selector: &str, v6: bool) -> String {
    format!(
        "sel{}-{:016x}",
        if v6 { 6 } else { 4 },
        stable_hash(selector)
    )
}

/// Renders text from outside for an nft `#` comment (which runs to the end of the line):
/// printable ASCII only, so it cannot end the line.
pub fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_with_nft_syntax_are_refused() {
        for bad in [
            "",
            "tap\"; flush ruleset",
            "tap0 }",
            "tap{",
            "tap*",
            "tap0123456789abc",
            "tap\n",
        ] {
            assert!(check_interface(bad, "tap").is_err(), "{bad:?}");
        }
        assert_eq!(check_interface("tap0123456789a", "tap"), Ok(()));
        assert!(matches!(
            check_interface("eth0", "tap"),
            Err(NameError::NotAVmInterface { .. })
        ));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("tap").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("ta\"p").is_err());
    }

    #[test]
    fn hashes_are_stable_and_names_fixed_width() {
        // FNV-1a test vector: the empty string hashes to the offset basis.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let name = policy_chain("ossg.default.\"; flush ruleset", Direction::Ingress);
        assert!(name.starts_with("pol-") && name.ends_with("-in") && name.len() == 23);
        assert_ne!(selector_set("has(a)", false), selector_set("has(b)", false));
    }

    #[test]
    fn comments_stay_on_one_line() {
        assert_eq!(comment_safe("a\nb}\"c\r\u{2028}"), "a?b}\"c??");
    }
}
