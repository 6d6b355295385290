//! What the route programmer takes in (endpoints and learned routes, as the daemon converts them
//! from the datastore model and from skog-bgp) and what it reports (route events for the BGP
//! speaker, per-endpoint status and counters for the CLI and metrics).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::HashMap;

/// A VM MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// A MAC address that is not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six colon-separated hex octets")]
pub struct InvalidMac(pub String);

impl FromStr for MacAddr {
    type Err = InvalidMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(|| InvalidMac(s.into()))?;
            if part.len() != 2 {
                return Err(InvalidMac(s.into()));
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| InvalidMac(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(InvalidMac(s.into()));
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A local workload endpoint (a VM's tap) as the programmer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredEndpoint {
    /// Unique id (the workload endpoint's key); names the endpoint in errors and status.
    pub id: String,
    /// The tap's name on this host.
    pub interface: String,
    /// The VM's MAC, for the permanent ARP entries.
    pub mac: MacAddr,
    /// The endpoint's addresses (`ipNetworks`); each gets a route through the tap.
    pub addresses: Vec<IpNet>,
    /// Floating IPs (`ipNATs[].externalIP`); each gets a host route through the tap.
    pub floating_ips: Vec<IpAddr>,
    /// The VM's IPv6 gateway (`ipv6Gateway`), answered by a proxy NDP entry on the tap.
    pub ipv6_gateway: Option<Ipv6Addr>,
}

/// One next hop of a route learned over BGP.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LearnedNextHop {
    /// The peer's next-hop address.
    pub gateway: IpAddr,
    /// The interface to reach it through; needed for link-local gateways, optional otherwise.
    pub interface: Option<String>,
}

/// A route learned over BGP: installed as one (ECMP when several next hops) kernel route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedRoute {
    /// The destination prefix.
    pub prefix: IpNet,
    /// The equal-cost next hops; never empty (remove the route instead). Shared: the routes
    /// of one peer hold one copy.
    pub next_hops: Arc<[LearnedNextHop]>,
}

/// The learned routes the programmer holds: prefix → its next hops (shared sets).
pub type LearnedRoutes = HashMap<IpNet, Arc<[LearnedNextHop]>>;

/// Settings of the route programmer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Route (and neighbour) protocol number of endpoint routes; no other daemon may use it.
    pub endpoint_protocol: u8,
    /// Route protocol number of routes learned over BGP.
    pub learned_protocol: u8,
    /// Metric of endpoint routes.
    pub endpoint_metric: u32,
    /// Metric of learned routes.
    pub learned_metric: u32,
    /// Period of the full resync (jittered by a tenth).
    pub resync_interval: Duration,
    /// Set `route_localnet=1` on taps (metadata DNAT to a loopback address).
    pub route_localnet: bool,
    /// Messages per netlink batch.
    pub batch_size: usize,
    /// Limit for one batch to be answered by the kernel.
    pub batch_timeout: Duration,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            endpoint_protocol: 83,
            learned_protocol: 84,
            endpoint_metric: 1024,
            learned_metric: 1024,
            resync_interval: Duration::from_secs(90),
            route_localnet: true,
            batch_size: 256,
            batch_timeout: Duration::from_secs(5),
        }
    }
}

/// Route events for the BGP speaker: local endpoint routes to announce or withdraw as their taps
/// come up or go down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteEvent {
    /// The route is programmed and its tap is up.
    Announce(IpNet),
    /// The route is gone (tap down or missing, endpoint removed).
    Withdraw(IpNet),
}

/// State of an endpoint's tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapState {
    /// No interface of that name exists.
    Missing,
    /// It exists but is not operationally up (not IFF_RUNNING).
    Down,
    /// It is running; its routes are programmed.
    Up,
}

/// What the CLI shows for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The endpoint id.
    pub id: String,
    /// Its tap.
    pub interface: String,
    /// The tap's state.
    pub tap: TapState,
    /// Problems found with it: input conflicts and the last kernel error.
    pub errors: Vec<String>,
}

/// A route of ours as the kernel has it (`skogctl routes --kernel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammedRoute {
    /// Destination.
    pub prefix: IpNet,
    /// Where it goes: `dev tap…` or `via 192.0.2.0 dev up-tor1`, one per next hop.
    pub next_hops: Vec<String>,
    /// Whether it is a learned (BGP) route rather than an endpoint route.
    pub learned: bool,
}

/// A point-in-time view of the programmer, for the CLI and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every endpoint, sorted by id.
    pub endpoints: Vec<EndpointStatus>,
    /// Routes with our protocols in the kernel (as last seen).
    pub routes_programmed: usize,
    /// Learned routes we hold.
    pub learned_routes: usize,
    /// Problems with learned routes (`<prefix>: <problem>`).
    pub learned_problems: Vec<String>,
    /// Route and neighbour writes sent since start.
    pub kernel_writes: u64,
    /// Nexthop object writes (created, replaced, deleted) sent since start.
    pub nexthop_writes: u64,
    /// Nexthop objects of ours in the kernel (as last seen).
    pub nexthop_objects: usize,
    /// Full resyncs done since start.
    pub resyncs: u64,
    /// Duration of the last apply of kernel operations.
    pub last_apply: Option<Duration>,
    /// Duration of the last full resync (dump plus apply).
    pub last_resync: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let mac: MacAddr = "fa:16:3e:00:01:0A".parse().unwrap();
        assert_eq!(mac.0, [0xfa, 0x16, 0x3e, 0, 1, 0x0a]);
        assert_eq!(mac.to_string(), "fa:16:3e:00:01:0a");
        for bad in [
            "",
            "fa:16:3e:00:01",
            "fa:16:3e:00:01:02:03",
            "fa:16:3e:00:01:zz",
            "fa:16:3e:0:01:02",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
