//! `skog.toml`: the daemon's configuration, parsed strictly (unknown keys are errors naming the
//! file and line) and validated into typed values.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// Where skogd reads its configuration unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/skog/skog.toml";

/// Why a configuration was rejected. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which gives the line and column.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("{path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `bgp.peers[tor1].address`.
        field: String,
        /// Why.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name as networking-calico knows it (the WorkloadEndpoint's host); default:
    /// the host name.
    #[serde(default)]
    pub node_name: Option<String>,
    /// OpenStack region, when networking-calico is configured with one (its resources then
    /// live in namespace `openstack-region-<region>`).
    #[serde(default)]
    pub region: Option<String>,
    /// Log level or filter (`info`, `skog_bgp=debug`); `SKOG_LOG` overrides it.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Where resources come from.
    #[serde(default)]
    pub datastore: DatastoreConfig,
    /// Routes, neighbours, sysctls and rules.
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// The BGP speaker; absent means no BGP.
    #[serde(default)]
    pub bgp: Option<BgpConfig>,
    /// The local API socket.
    #[serde(default)]
    pub api: ApiConfig,
    /// Prometheus metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[datastore]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DatastoreConfig {
    /// etcd v3, as networking-calico writes it.
    Etcd {
        /// Client URLs (`https://192.0.2.10:2379`).
        endpoints: Vec<String>,
        /// CA bundle for the servers' certificates.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// Client certificate.
        #[serde(default)]
        cert_file: Option<PathBuf>,
        /// Client key.
        #[serde(default)]
        key_file: Option<PathBuf>,
    },
    /// A directory of YAML or JSON Calico v3 resources, watched for changes.
    File {
        /// The directory.
        path: PathBuf,
    },
}

impl Default for DatastoreConfig {
    fn default() -> Self {
        DatastoreConfig::File {
            path: PathBuf::from("/etc/skog/resources"),
        }
    }
}

/// `[dataplane]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Interfaces whose names start with this are VM taps.
    pub interface_prefix: String,
    /// Route protocol number of endpoint routes. 83 is listed in no `rt_protos` we know of
    /// (Felix uses 3 = boot, BIRD 12, FRR 186-198).
    pub route_protocol: u8,
    /// Route protocol number of routes learned over BGP.
    pub learned_route_protocol: u8,
    /// Where 169.254.169.254:80 is DNATed: `address:port`, or `none`.
    pub metadata: String,
    /// Seconds between full resyncs of routes and rules (jittered).
    pub resync_interval_s: u64,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            interface_prefix: "tap".into(),
            route_protocol: 83,
            learned_route_protocol: 84,
            metadata: "127.0.0.1:8775".into(),
            resync_interval_s: 90,
        }
    }
}

/// `[bgp]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// Our AS number (4-byte ASNs allowed).
    pub asn: u32,
    /// Our router id.
    pub router_id: Ipv4Addr,
    /// TCP port to listen on; 0 = do not listen.
    #[serde(default = "default_bgp_port")]
    pub listen_port: u16,
    /// The peers.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

fn default_bgp_port() -> u16 {
    179
}

/// `[[bgp.peers]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// A unique name (`tor1`).
    pub name: String,
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's AS number (ours for iBGP).
    pub asn: u32,
    /// Our source address for the session.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// A file holding the TCP MD5 key.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Hold time we offer, seconds (0 or 3..=65535).
    #[serde(default = "default_hold_time")]
    pub hold_time_s: u16,
    /// Graceful-restart time we advertise, seconds; 0 disables graceful restart.
    #[serde(default = "default_graceful_restart")]
    pub graceful_restart_s: u16,
    /// Only accept connections, never connect.
    #[serde(default)]
    pub passive: bool,
    /// TTL of our packets: 1 for a directly connected peer, more for eBGP multihop.
    #[serde(default = "default_ttl")]
    pub multihop_ttl: u8,
    /// GTSM (RFC 5082): send with TTL 255 and accept only packets that arrive with 255.
    #[serde(default)]
    pub ttl_security: bool,
    /// Address families to negotiate.
    #[serde(default = "default_families")]
    pub families: Vec<Family>,
    /// Prefixes accepted from this peer (exact match, RFC 8212: nothing else is imported).
    #[serde(default = "default_import")]
    pub import: Vec<IpNet>,
    /// Standard communities (`65001:100`) added to our routes.
    #[serde(default)]
    pub communities: Vec<String>,
    /// Large communities (`65001:1:2`) added to our routes.
    #[serde(default)]
    pub large_communities: Vec<String>,
}

fn default_hold_time() -> u16 {
    9
}
fn default_graceful_restart() -> u16 {
    120
}
fn default_ttl() -> u8 {
    1
}
fn default_families() -> Vec<Family> {
    vec![Family::Ipv4, Family::Ipv6]
}
fn default_import() -> Vec<IpNet> {
    vec![IpNet::V4(Default::default()), IpNet::V6(Default::default())]
}

/// An address family of a BGP session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 unicast.
    Ipv4,
    /// IPv6 unicast.
    Ipv6,
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The Unix socket skogctl talks to.
    pub socket: PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: PathBuf::from("/run/skog/skog.sock"),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus, `/livez` and `/readyz` listener; `none` disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9094".into(),
        }
    }
}

/// The metadata DNAT target, parsed from [`DataplaneConfig::metadata`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metadata {
    /// No metadata DNAT.
    None,
    /// DNAT to this address.
    To(SocketAddr),
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`, naming `path` in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end();
            let message = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {message}")
                }
                None => message.to_owned(),
            };
            ConfigError::Parse {
                path: path.into(),
                message,
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// The metadata target.
    pub fn metadata(&self) -> Metadata {
        // Validated in `validate`, so the parse cannot fail here.
        match self.dataplane.metadata.parse() {
            Ok(addr) => Metadata::To(addr),
            Err(_) => Metadata::None,
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.into(),
            field: field.into(),
            reason,
        };
        if let Some(name) = &self.node_name
            && (name.is_empty() || name.contains(char::is_whitespace))
        {
            return Err(invalid("node_name", format!("{name:?} is not a host name")));
        }
        if let DatastoreConfig::Etcd {
            endpoints,
            cert_file,
            key_file,
            ..
        } = &self.datastore
        {
            if endpoints.is_empty() {
                return Err(invalid(
                    "datastore.endpoints",
                    "at least one etcd URL is needed".into(),
                ));
            }
            if let Some(bad) = endpoints
                .iter()
                .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
            {
                return Err(invalid(
                    "datastore.endpoints",
                    format!("{bad:?} is not an http:// or https:// URL"),
                ));
            }
            if cert_file.is_some() != key_file.is_some() {
                return Err(invalid(
                    "datastore",
                    "cert_file and key_file go together".into(),
                ));
            }
        }
        let dp = &self.dataplane;
        if dp.interface_prefix.is_empty() || dp.interface_prefix.len() > 14 {
            return Err(invalid(
                "dataplane.interface_prefix",
                "must be 1 to 14 bytes".into(),
            ));
        }
        for (field, proto) in [
            ("dataplane.route_protocol", dp.route_protocol),
            (
                "dataplane.learned_route_protocol",
                dp.learned_route_protocol,
            ),
        ] {
            // 0-4 are the kernel's own; 8-99 in rt_protos, 186+ are other daemons'. Warned, not
            // refused, except for the kernel's, which we would then delete as our own.
            if proto <= 4 {
                return Err(invalid(
                    field,
                    format!("{proto} is reserved for the kernel (0-4)"),
                ));
            }
        }
        if dp.route_protocol == dp.learned_route_protocol {
            return Err(invalid(
                "dataplane.learned_route_protocol",
                "must differ from route_protocol".into(),
            ));
        }
        if dp.metadata != "none" && dp.metadata.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "dataplane.metadata",
                format!("{:?} is neither address:port nor \"none\"", dp.metadata),
            ));
        }
        if dp.resync_interval_s == 0 {
            return Err(invalid(
                "dataplane.resync_interval_s",
                "must be at least 1".into(),
            ));
        }
        if self.metrics.listen != "none" && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "{:?} is neither address:port nor \"none\"",
                    self.metrics.listen
                ),
            ));
        }
        if let Some(bgp) = &self.bgp {
            validate_bgp(bgp).map_err(|(field, reason)| invalid(&field, reason))?;
        }
        Ok(())
    }
}

fn validate_bgp(bgp: &BgpConfig) -> Result<(), (String, String)> {
    if bgp.asn == 0 {
        return Err(("bgp.asn".into(), "0 is not a valid AS number".into()));
    }
    let mut names = std::collections::HashSet::new();
    let mut addresses = std::collections::HashSet::new();
    for p in &bgp.peers {
        let field = |key: &str| format!("bgp.peers[{}].{key}", p.name);
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err((
                "bgp.peers.name".into(),
                format!("{:?}: use letters, digits, - _ .", p.name),
            ));
        }
        if !names.insert(&p.name) {
            return Err((field("name"), "is used by two peers".into()));
        }
        if !addresses.insert(p.address) {
            return Err((
                field("address"),
                format!("{} is used by two peers", p.address),
            ));
        }
        if p.asn == 0 {
            return Err((field("asn"), "0 is not a valid AS number".into()));
        }
        if p.hold_time_s != 0 && p.hold_time_s < 3 {
            return Err((
                field("hold_time_s"),
                "must be 0 or at least 3 (RFC 4271)".into(),
            ));
        }
        if p.graceful_restart_s > 4095 {
            return Err((
                field("graceful_restart_s"),
                "at most 4095 (RFC 4724)".into(),
            ));
        }
        if p.multihop_ttl == 0 {
            return Err((field("multihop_ttl"), "must be at least 1".into()));
        }
        if p.families.is_empty() {
            return Err((field("families"), "at least one family".into()));
        }
        if let Some(src) = p.source_address
            && src.is_ipv4() != p.address.is_ipv4()
        {
            return Err((
                field("source_address"),
                "must be of the peer address's family".into(),
            ));
        }
        for c in &p.communities {
            if parse_community(c).is_none() {
                return Err((
                    field("communities"),
                    format!("{c:?} is not ASN:VALUE with two 16-bit numbers"),
                ));
            }
        }
        for c in &p.large_communities {
            if parse_large_community(c).is_none() {
                return Err((
                    field("large_communities"),
                    format!("{c:?} is not three 32-bit numbers a:b:c"),
                ));
            }
        }
    }
    Ok(())
}

/// Parses a standard community `asn:value` (two 16-bit numbers).
pub fn parse_community(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Parses a large community `global:local1:local2` (three 32-bit numbers).
pub fn parse_large_community(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.split(':');
    let parsed = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../dist/skog.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/skog/skog.toml"))
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.node_name.as_deref(), Some("compute-01"));
        assert!(
            matches!(&c.datastore, DatastoreConfig::Etcd { endpoints, .. } if endpoints.len() == 1)
        );
        let bgp = c.bgp.as_ref().unwrap();
        assert_eq!(bgp.peers.len(), 1);
        assert_eq!(bgp.peers[0].families, vec![Family::Ipv4, Family::Ipv6]);
        assert_eq!(
            c.metadata(),
            Metadata::To("127.0.0.1:8775".parse().unwrap())
        );
    }

    #[test]
    fn an_empty_file_means_the_file_datastore_and_no_bgp() {
        let c = parse("").unwrap();
        assert_eq!(c.datastore, DatastoreConfig::default());
        assert!(c.bgp.is_none());
        assert_eq!(c.dataplane.route_protocol, 83);
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let err = parse(
            "node_name = \"a\"\n[dataplane]\ninterface_prefix = \"tap\"\nroute_protocl = 90\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/etc/skog/skog.toml: "), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("route_protocl"), "{err}");
    }

    #[test]
    fn unknown_keys_inside_the_datastore_are_refused_too() {
        let err =
            parse("[datastore]\ntype = \"file\"\npath = \"/x\"\nendpoint = \"y\"\n").unwrap_err();
        assert!(err.to_string().contains("endpoint"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (text, needle) in [
            ("[dataplane]\nmetadata = \"nowhere\"", "dataplane.metadata"),
            (
                "[dataplane]\nroute_protocol = 2",
                "dataplane.route_protocol",
            ),
            ("[dataplane]\nroute_protocol = 84", "learned_route_protocol"),
            (
                "[datastore]\ntype = \"etcd\"\nendpoints = []",
                "datastore.endpoints",
            ),
            (
                "[datastore]\ntype = \"etcd\"\nendpoints = [\"192.0.2.10:2379\"]",
                "not an http",
            ),
            (
                "[bgp]\nasn = 65002\nrouter_id = \"192.0.2.2\"\n[[bgp.peers]]\nname = \"t\"\naddress = \"192.0.2.1\"\nasn = 65001\nhold_time_s = 2",
                "bgp.peers[t].hold_time_s",
            ),
            (
                "[bgp]\nasn = 65002\nrouter_id = \"192.0.2.2\"\n[[bgp.peers]]\nname = \"t\"\naddress = \"192.0.2.1\"\nasn = 65001\ncommunities = [\"70000:1\"]",
                "bgp.peers[t].communities",
            ),
            (
                "[bgp]\nasn = 65002\nrouter_id = \"192.0.2.2\"\n[[bgp.peers]]\nname = \"a\"\naddress = \"192.0.2.1\"\nasn = 1\n[[bgp.peers]]\nname = \"b\"\naddress = \"192.0.2.1\"\nasn = 1",
                "used by two peers",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn communities_parse() {
        assert_eq!(parse_community("65001:100"), Some((65001, 100)));
        assert_eq!(parse_community("65001"), None);
        assert_eq!(
            parse_large_community("4200000000:1:2"),
            Some((4_200_000_000, 1, 2))
        );
        assert_eq!(parse_large_community("1:2:3:4"), None);
    }
}
