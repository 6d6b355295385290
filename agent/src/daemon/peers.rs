//! BGP peers: the speaker's configuration from `skog.toml` and from the datastore's Calico
//! resources (BGPConfiguration, this node's Node, BGPPeers selecting it), and what a change of
//! either does.
//!
//! `[bgp]` in the file, when present, gives our AS and router id; otherwise the datastore's do
//! (Node `asNumber`/`ipv4Address`, BGPConfiguration `asNumber`/`listenPort`). The peers are the
//! file's plus the datastore's (named `bgppeer/<name>`, so they never clash). A change never
//! restarts the speaker: peers that are new are added, peers that are gone are removed, peers
//! whose settings changed are removed and added again, and every other session is left alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use skog_bgp::codec::Family;
use skog_bgp::config::{GracefulRestartConfig, ImportPolicy};
use skog_bgp::{PeerConfig, SpeakerConfig};

use crate::config::{self, BgpConfig};
use crate::model::{DatastoreBgp, DatastorePeer};

/// The restart time advertised when no configured peer sets one (BIRD's and FRR's default).
const DEFAULT_RESTART_TIME: u16 = 120;

/// Who the speaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Our AS.
    pub asn: u32,
    /// Our router id.
    pub router_id: std::net::Ipv4Addr,
    /// Where to listen (0: not at all).
    pub listen_port: u16,
}

/// Our identity: the file's `[bgp]`, else the datastore's AS and router id; `None` when
/// neither has both (no BGP).
pub fn identity(file: Option<&BgpConfig>, datastore: &DatastoreBgp) -> Option<Identity> {
    match file {
        Some(b) => Some(Identity {
            asn: b.asn,
            router_id: b.router_id,
            listen_port: b.listen_port,
        }),
        None => Some(Identity {
            asn: datastore.asn?,
            router_id: datastore.router_id?,
            listen_port: datastore.listen_port.unwrap_or(179),
        }),
    }
}

/// Every peer: the file's, then the datastore's, keyed by name.
pub fn desired(file: Option<&BgpConfig>, datastore: &DatastoreBgp) -> BTreeMap<String, PeerConfig> {
    file.into_iter()
        .flat_map(|b| b.peers.iter().map(peer_config))
        .chain(datastore.peers.iter().map(datastore_peer))
        .map(|p| (p.name.clone(), p))
        .collect()
}

/// The speaker's configuration. `restarting` says a previous run left routes in place (the
/// R bit of graceful restart); `export` is what to announce from the first UPDATE on.
pub fn speaker_config(
    identity: Identity,
    file: Option<&BgpConfig>,
    peers: &BTreeMap<String, PeerConfig>,
    restarting: bool,
    export: Vec<IpNet>,
) -> SpeakerConfig {
    // The file's peers say what we advertise; datastore peers get the usual default.
    let restart_time = match file {
        Some(b) if !b.peers.is_empty() => b.peers.iter().map(|p| p.graceful_restart_s).max(),
        _ => Some(DEFAULT_RESTART_TIME),
    };
    SpeakerConfig {
        asn: identity.asn,
        router_id: identity.router_id,
        listen: (identity.listen_port != 0)
            .then(|| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, identity.listen_port))),
        peers: peers.values().cloned().collect(),
        graceful_restart: restart_time.filter(|t| *t > 0).map(|restart_time| {
            GracefulRestartConfig {
                restart_time,
                restarting,
            }
        }),
        export,
        selection_deferral: skog_bgp::config::DEFAULT_SELECTION_DEFERRAL,
    }
}

/// A BGPPeer from the datastore as the speaker takes it: the family of its address, the
/// default route imported (RFC 8212), GTSM with its hop count.
pub fn datastore_peer(p: &DatastorePeer) -> PeerConfig {
    let mut peer = PeerConfig::new(p.name.clone(), p.address, p.asn);
    if let Some(port) = p.port {
        peer.port = port;
    }
    peer.local_address = p.source_address;
    peer.families = vec![if p.address.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    }];
    if let Some(hops) = p.ttl_security_hops {
        peer.ttl_security = true;
        peer.multihop_ttl = (hops > 1).then_some(hops);
    }
    peer
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
        let none = DatastoreBgp::default();
        let id = identity(Some(&cfg), &none).unwrap();
        let speaker = speaker_config(
            id,
            Some(&cfg),
            &desired(Some(&cfg), &none),
            true,
            Vec::new(),
        );
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
        let by_name = |b: &BgpConfig| desired(Some(b), &DatastoreBgp::default());
        let before = by_name(&bgp(&format!("{TOR1}{TOR2}")));
        let same = by_name(&bgp(&format!("{TOR1}{TOR2}")));
        assert!(diff(&before, &same).is_empty());

        let tor1_changed = TOR1.replace("65001", "65009");
        let tor3 = TOR1
            .replace("tor1", "tor3")
            .replace("192.0.2.2", "192.0.2.4");
        let after = by_name(&bgp(&format!("{tor1_changed}{tor3}")));
        let changes = diff(&before, &after);
        assert_eq!(changes.remove, ["tor1", "tor2"]);
        let added: Vec<_> = changes.add.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(added, ["tor1", "tor3"]);
        assert_eq!(changes.add[0].asn, 65009);
    }

    #[test]
    fn datastore_peers_join_the_files_and_give_the_identity_without_a_bgp_table() {
        let ds = DatastoreBgp {
            asn: Some(64512),
            router_id: Some("192.0.2.9".parse().unwrap()),
            listen_port: None,
            peers: vec![DatastorePeer {
                name: "bgppeer/rack1-tor".into(),
                address: "2001:db8:ffff::1".parse().unwrap(),
                port: Some(1179),
                asn: 65000,
                source_address: None,
                ttl_security_hops: Some(2),
                max_restart_time_s: None,
                keep_original_next_hop: false,
            }],
        };
        let id = identity(None, &ds).unwrap();
        assert_eq!((id.asn, id.listen_port), (64512, 179));
        assert_eq!(identity(None, &DatastoreBgp::default()), None);
        let file = bgp(TOR1);
        // The file's identity wins; the peers add up.
        assert_eq!(identity(Some(&file), &ds).unwrap().asn, 65002);
        let peers = desired(Some(&file), &ds);
        let names: Vec<_> = peers.keys().map(String::as_str).collect();
        assert_eq!(names, ["bgppeer/rack1-tor", "tor1"]);
        let p = &peers["bgppeer/rack1-tor"];
        assert_eq!((p.port, p.families.as_slice()), (1179, &[Family::Ipv6][..]));
        assert!(p.ttl_security);
        assert_eq!(p.multihop_ttl, Some(2));
    }
}
