//! The speaker's configuration: our AS and identifier, where to listen, the peers, the import
//! filter (RFC 8212: nothing is accepted unless configured) and what we add on export.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::codec::{Family, PathAttrs};
use crate::rib::ImportFilter;

/// The whole speaker.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    /// Our AS (4-octet ASNs are fine).
    pub asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Where to accept connections (`[::]:179` takes both families); `None`: active only.
    pub listen: Option<SocketAddr>,
    /// The peers.
    pub peers: Vec<PeerConfig>,
    /// Graceful restart (RFC 4724); `None` disables both roles.
    pub graceful_restart: Option<GracefulRestartConfig>,
    /// Endpoint routes to announce from the start, so that the first UPDATEs (and, after a
    /// graceful restart, the End-of-RIB) already carry them.
    pub export: Vec<IpNet>,
    /// The selection-deferral timer (RFC 4724 §4.1): how long to wait at most for the peers'
    /// End-of-RIB before [`crate::RouteEvent::Converged`] is sent anyway
    /// ([`DEFAULT_SELECTION_DEFERRAL`] is a good value).
    pub selection_deferral: Duration,
}

/// The default selection-deferral timer: 60 s.
pub const DEFAULT_SELECTION_DEFERRAL: Duration = Duration::from_secs(60);

/// Graceful restart settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// How long peers keep our routes while we restart (seconds, at most 4095).
    pub restart_time: u16,
    /// We are coming back from a graceful shutdown: set the R bit and the F bits (forwarding
    /// state preserved), so the peers keep our routes until our End-of-RIB.
    pub restarting: bool,
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// A name for logs and the CLI (unique within the speaker).
    pub name: String,
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's TCP port (179).
    pub port: u16,
    /// The peer's AS; equal to ours makes it iBGP.
    pub asn: u32,
    /// Our source address for the session; `None` lets the kernel pick.
    pub local_address: Option<IpAddr>,
    /// Only wait for the peer to connect.
    pub passive: bool,
    /// Families to negotiate; empty means the session's own family.
    pub families: Vec<Family>,
    /// Offer IPv4 routes with IPv6 next hops on an IPv6 session (RFC 8950); adds IPv4.
    pub extended_next_hop: bool,
    /// Hold time we propose (seconds; 0 or at least 3).
    pub hold_time: u16,
    /// ConnectRetryTime.
    pub connect_retry: Duration,
    /// eBGP multihop: the TTL of our packets (`None`: 1 for eBGP, 64 for iBGP).
    pub multihop_ttl: Option<u8>,
    /// GTSM (RFC 5082): send with TTL 255 and accept only TTL 255 from the peer.
    pub ttl_security: bool,
    /// A file holding the TCP MD5 key (RFC 2385), trailing newline ignored.
    pub md5_key_file: Option<PathBuf>,
    /// Communities added to our routes.
    pub communities: Vec<u32>,
    /// Large communities added to our routes.
    pub large_communities: Vec<(u32, u32, u32)>,
    /// What we accept from the peer.
    pub import: ImportPolicy,
}

impl PeerConfig {
    /// A peer with the defaults: active and passive, hold time 90 s, connect retry 5 s, the
    /// session's own family, accepting the default route only.
    pub fn new(name: impl Into<String>, address: IpAddr, asn: u32) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            address,
            port: 179,
            asn,
            local_address: None,
            passive: false,
            families: Vec::new(),
            extended_next_hop: false,
            hold_time: 90,
            connect_retry: Duration::from_secs(5),
            multihop_ttl: None,
            ttl_security: false,
            md5_key_file: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            import: ImportPolicy::default(),
        }
    }

    /// The families this session offers.
    pub fn offered_families(&self) -> Vec<Family> {
        let mut families = if self.families.is_empty() {
            vec![if self.address.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            }]
        } else {
            self.families.clone()
        };
        if self.extended_next_hop && !families.contains(&Family::Ipv4) {
            families.insert(0, Family::Ipv4);
        }
        families
    }
}

/// The import filter (RFC 8212): the default route if allowed, and prefixes inside the
/// configured ones (equal or more specific).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportPolicy {
    /// Accept `0.0.0.0/0` and `::/0`.
    pub default_route: bool,
    /// Accept these prefixes and anything more specific.
    pub prefixes: Vec<IpNet>,
}

impl Default for ImportPolicy {
    fn default() -> ImportPolicy {
        ImportPolicy {
            default_route: true,
            prefixes: Vec::new(),
        }
    }
}

impl ImportFilter for ImportPolicy {
    fn accepts(&self, prefix: &IpNet, _attrs: &PathAttrs) -> bool {
        (self.default_route && prefix.prefix_len() == 0)
            || self.prefixes.iter().any(|p| p.contains(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_policy_is_default_route_only_unless_configured() {
        let attrs = PathAttrs::default();
        let p = ImportPolicy::default();
        assert!(p.accepts(&"0.0.0.0/0".parse().unwrap(), &attrs));
        assert!(p.accepts(&"::/0".parse().unwrap(), &attrs));
        assert!(!p.accepts(&"198.51.100.0/24".parse().unwrap(), &attrs));
        let p = ImportPolicy {
            default_route: false,
            prefixes: vec!["198.51.100.0/24".parse().unwrap()],
        };
        assert!(!p.accepts(&"0.0.0.0/0".parse().unwrap(), &attrs));
        assert!(p.accepts(&"198.51.100.0/24".parse().unwrap(), &attrs));
        assert!(p.accepts(&"198.51.100.7/32".parse().unwrap(), &attrs));
        assert!(!p.accepts(&"198.51.0.0/16".parse().unwrap(), &attrs));
    }

    #[test]
    fn families_default_to_the_transport_and_rfc8950_adds_ipv4() {
        let mut p = PeerConfig::new("tor1", "2001:db8::1".parse().unwrap(), 65001);
        assert_eq!(p.offered_families(), vec![Family::Ipv6]);
        p.extended_next_hop = true;
        assert_eq!(p.offered_families(), vec![Family::Ipv4, Family::Ipv6]);
    }
}
