//! BGP peers: the speaker's configuration from `skog.toml`, and what a reload changes.
//!
//! A configuration reload never restarts the speaker: peers that are new are added, peers that
//! are gone are removed, peers whose settings changed are removed and added again, and every
//! other session is left alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use skog_bgp::codec::Family;
use skog_bgp::config::{GracefulRestartConfig, ImportPolicy};
use skog_bgp::{PeerConfig, SpeakerConfig};

use crate::config::{self, BgpConfig};

/// The speaker's configuration. `restarting` says a previous run left routes in place (the
/// R bit of graceful restart); `export` is what to announce from the first UPDATE on.
pub fn speaker_config(bgp: &BgpConfig, restarting: bool, export: Vec<IpNet>) -> SpeakerConfig {
    let peers: Vec<PeerConfig> = bgp.peers.iter().map(peer_config).collect();
    let restart_time = bgp.peers.iter().map(|p| p.graceful_restart_s).max();
    SpeakerConfig {
        asn: bgp.asn,
        router_id: bgp.router_id,
        listen: (bgp.listen_port != 0)
            .then(|| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, bgp.listen_port))),
        peers,
        graceful_restart: restart_time.filter(|t| *t > 0).map(|restart_time| {
            GracefulRestartConfig {
                restart_time,
                restarting,
            }
        }),
        export,
    }
}

/// One configured peer as the speaker takes it. The configuration was validated at load, so
/// communities parse; a community that did not would be left out.
pub fn peer_config(p: &config::PeerConfig) -> PeerConfig {
    let mut peer = PeerConfig::new(p.name.clone(), p.address, p.asn);
    peer.local_address = p.source_address;
    peer.passive = p.passive;
    peer.families = p
        .families
        .iter()
        .map(|f| match f {
            config::Family::Ipv4 => Family::Ipv4,
            config::Family::Ipv6 => Family::Ipv6,
        })
        .collect();
    // IPv4 routes over an IPv6 session need RFC 8950 next hops.
    peer.extended_next_hop = p.address.is_ipv6() && peer.families.contains(&Family::Ipv4);
    peer.hold_time = p.hold_time_s;
    peer.multihop_ttl = (p.multihop_ttl > 1).then_some(p.multihop_ttl);
    peer.ttl_security = p.ttl_security;
    peer.md5_key_file = p.password_file.clone();
    peer.communities = p
        .communities
        .iter()
        .filter_map(|c| config::parse_community(c))
        .map(|(asn, value)| u32::from(asn) << 16 | u32::from(value))
        .collect();
    peer.large_communities = p
        .large_communities
        .iter()
        .filter_map(|c| config::parse_large_community(c))
        .collect();
    peer.import = import_policy(&p.import);
    peer.connect_retry = Duration::from_secs(5);
    peer
}

/// `import = [...]`: a `/0` entry accepts the default route of its family; any other entry
/// accepts that prefix and the prefixes inside it.
fn import_policy(import: &[IpNet]) -> ImportPolicy {
    ImportPolicy {
        default_route: import.iter().any(|p| p.prefix_len() == 0),
        prefixes: import
            .iter()
            .filter(|p| p.prefix_len() != 0)
            .copied()
            .collect(),
    }
}

/// What a reload does to the peers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// Names of peers to remove (gone, or changed and added again below).
    pub remove: Vec<String>,
    /// Peers to add (new, or changed).
    pub add: Vec<PeerConfig>,
}

impl PeerChanges {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

/// The changes that turn the `old` peer set into `new` (both keyed by name).
pub fn diff(old: &BTreeMap<String, PeerConfig>, new: &BTreeMap<String, PeerConfig>) -> PeerChanges {
    let mut changes = PeerChanges::default();
    for (name, before) in old {
        if new.get(name) != Some(before) {
            changes.remove.push(name.clone());
        }
    }
    for (name, after) in new {
        if old.get(name) != Some(after) {
            changes.add.push(after.clone());
        }
    }
    changes
}

/// The peers of a configuration, keyed by name.
pub fn by_name(bgp: Option<&BgpConfig>) -> BTreeMap<String, PeerConfig> {
    bgp.map(|b| b.peers.iter().map(peer_config))
        .into_iter()
        .flatten()
        .map(|p| (p.name.clone(), p))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn bgp(peers: &str) -> BgpConfig {
        let text = format!(
            "[datastore]\ntype = \"file\"\npath = \"/tmp\"\n[bgp]\nasn = 65002\nrouter_id = \"192.0.2.3\"\n{peers}"
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        config.bgp.unwrap()
    }

    const TOR1: &str = "[[bgp.peers]]\nname = \"tor1\"\naddress = \"192.0.2.2\"\nasn = 65001\n";
    const TOR2: &str = "[[bgp.peers]]\nname = \"tor2\"\naddress = \"2001:db8:ffff:1::1\"\nasn = 65001\ncommunities = [\"65001:100\"]\n";

    #[test]
    fn a_configured_peer_becomes_a_speaker_peer() {
        let cfg = bgp(TOR2);
        let speaker = speaker_config(&cfg, true, Vec::new());
        assert_eq!(
            speaker.graceful_restart,
            Some(GracefulRestartConfig {
                restart_time: 120,
                restarting: true
            })
        );
        let p = &speaker.peers[0];
        assert_eq!(p.hold_time, 9);
        assert_eq!(p.families, [Family::Ipv4, Family::Ipv6]);
        assert!(p.extended_next_hop, "IPv4 over an IPv6 session");
        assert_eq!(p.communities, [65001 << 16 | 100]);
        assert_eq!(p.multihop_ttl, None);
        // The default import list is the default routes only, not everything under /0.
        assert!(p.import.default_route);
        assert!(p.import.prefixes.is_empty());
    }

    #[test]
    fn a_reload_touches_only_the_peers_that_changed() {
        let before = by_name(Some(&bgp(&format!("{TOR1}{TOR2}"))));
        let same = by_name(Some(&bgp(&format!("{TOR1}{TOR2}"))));
        assert!(diff(&before, &same).is_empty());

        let tor1_changed = TOR1.replace("65001", "65009");
        let tor3 = TOR1
            .replace("tor1", "tor3")
            .replace("192.0.2.2", "192.0.2.4");
        let after = by_name(Some(&bgp(&format!("{tor1_changed}{tor3}"))));
        let changes = diff(&before, &after);
        assert_eq!(changes.remove, ["tor1", "tor2"]);
        let added: Vec<_> = changes.add.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(added, ["tor1", "tor3"]);
        assert_eq!(changes.add[0].asn, 65009);
    }
}
