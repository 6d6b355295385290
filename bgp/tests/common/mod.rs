//! Shared pieces of the interop tests: a speaker running inside a hypervisor namespace, the
//! peers the testbed's ToR configurations expect, and waits on both sides.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use skog_bgp::config::GracefulRestartConfig;
use skog_bgp::fsm::State;
use skog_bgp::{PeerConfig, PeerSnapshot, RouteEvent, Speaker, SpeakerConfig, SpeakerHandle};
use skog_testbed::{HvId, Netns, Testbed, TorId, wait_until};

pub const CONVERGE: Duration = Duration::from_secs(60);
pub const HV_ASN: u32 = 4_200_000_001;

/// A speaker running on a tokio runtime whose threads live in a hypervisor's namespace.
pub struct Running {
    pub rt: tokio::runtime::Runtime,
    pub handle: SpeakerHandle,
    /// The learned routes as the events describe them.
    pub learned: Arc<Mutex<BTreeMap<IpNet, Vec<IpAddr>>>>,
    /// Every event, in order.
    pub events: Arc<Mutex<Vec<RouteEvent>>>,
}

/// The speaker configuration for `hv`: a v4 and a v6 session per uplink, as the testbed's
/// ToR configurations expect, our 4-byte AS, listening on `[::]:179`.
pub fn speaker_config(tb: &Testbed, hv: HvId, gr: Option<GracefulRestartConfig>) -> SpeakerConfig {
    let h = tb.hv(hv).unwrap();
    let mut peers = Vec::new();
    for u in &h.uplinks {
        let t = tb.tor(u.tor).unwrap();
        for (addr, local, family) in [
            (IpAddr::from(u.tor_v4), IpAddr::from(u.hv_v4), "v4"),
            (IpAddr::from(u.tor_v6), IpAddr::from(u.hv_v6), "v6"),
        ] {
            let mut p = PeerConfig::new(format!("{}_{family}", t.name), addr, t.asn);
            p.local_address = Some(local);
            p.connect_retry = Duration::from_secs(1);
            p.hold_time = 9;
            peers.push(p);
        }
    }
    SpeakerConfig {
        asn: h.asn,
        router_id: h.uplinks[0].hv_v4,
        listen: Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 179))),
        peers,
        graceful_restart: gr,
        export: Vec::new(),
        selection_deferral: skog_bgp::config::DEFAULT_SELECTION_DEFERRAL,
    }
}

/// Starts the speaker inside `hv`'s namespace. Learned routes are also installed in the
/// hypervisor's kernel with `ip route replace` (the agent's route programmer does that in
/// production), so tests can look at the kernel.
pub fn start_speaker(tb: &Testbed, hv: HvId, cfg: SpeakerConfig) -> Running {
    start_speaker_in(tb.hv(hv).unwrap().ns(), cfg)
}

/// Starts the speaker inside `ns` (a hypervisor's, or a VM's for multihop sessions); learned
/// routes go to that namespace's kernel.
pub fn start_speaker_in(ns: &Netns, cfg: SpeakerConfig) -> Running {
    start(ns, cfg, Some(ns.name().to_owned()))
}

/// Starts the speaker in the hypervisor without installing its routes (for tests that look
/// at the events only: an `ip` process per route is slow on a loaded machine).
pub fn start_speaker_events_only(tb: &Testbed, hv: HvId, cfg: SpeakerConfig) -> Running {
    start(tb.hv(hv).unwrap().ns(), cfg, None)
}

/// Starts the speaker in `ns`; with `install_in`, learned routes go to that namespace's
/// kernel.
fn start(ns: &Netns, cfg: SpeakerConfig, install_in: Option<String>) -> Running {
    let rt = ns.tokio_runtime(2).unwrap();
    // Spawned, not block_on'd: tasks run on the runtime's threads, inside the namespace.
    let (handle, mut rx) = rt.block_on(rt.spawn(Speaker::start(cfg))).unwrap().unwrap();
    let learned = Arc::new(Mutex::new(BTreeMap::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let (l, e) = (Arc::clone(&learned), Arc::clone(&events));
    rt.spawn(async move {
        while let Some(event) = rx.recv().await {
            if let Some(ns_name) = &install_in {
                install(ns_name, &event);
            }
            match &event {
                RouteEvent::Install { prefix, next_hops } => {
                    l.lock().unwrap().insert(*prefix, next_hops.to_vec());
                }
                RouteEvent::Remove { prefix } => {
                    l.lock().unwrap().remove(prefix);
                }
                RouteEvent::Converged => {}
            }
            e.lock().unwrap().push(event);
        }
    });
    Running {
        rt,
        handle,
        learned,
        events,
    }
}

/// `ip route replace` / `ip route del` in the hypervisor for one event.
fn install(ns: &str, event: &RouteEvent) {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["-n", ns]);
    match event {
        RouteEvent::Install { prefix, next_hops } => {
            cmd.args(["route", "replace", &prefix.to_string(), "proto", "bgp"]);
            let via = |hop: &IpAddr| {
                // RFC 8950: an IPv4 route through an IPv6 next hop.
                let family = if prefix.addr().is_ipv4() && hop.is_ipv6() {
                    "inet6"
                } else {
                    ""
                };
                ["via", family, &hop.to_string()]
                    .into_iter()
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            if let [one] = &next_hops[..] {
                cmd.args(via(one));
            } else {
                for hop in next_hops.iter() {
                    cmd.arg("nexthop").args(via(hop));
                }
            }
        }
        RouteEvent::Remove { prefix } => {
            cmd.args(["route", "del", &prefix.to_string(), "proto", "bgp"]);
        }
        RouteEvent::Converged => return,
    }
    let _ = cmd.output();
}

impl Running {
    pub fn peers(&self) -> Vec<PeerSnapshot> {
        self.rt.block_on(self.handle.peers()).unwrap()
    }

    pub fn wait_established(&self, names: &[&str]) {
        wait_until("the sessions to establish", CONVERGE, || {
            let peers = self.peers();
            let down: Vec<String> = peers
                .iter()
                .filter(|p| names.contains(&p.name.as_str()) && p.state != State::Established)
                .map(|p| format!("{} {:?} {:?}", p.name, p.state, p.last_error))
                .collect();
            if down.is_empty() {
                Ok(())
            } else {
                Err(down.join("; "))
            }
        })
        .unwrap();
    }

    pub fn wait_learned(&self, prefix: &str, next_hops: &[IpAddr]) {
        let prefix: IpNet = prefix.parse().unwrap();
        let mut want = next_hops.to_vec();
        want.sort();
        wait_until(&format!("{prefix} via {want:?} learned"), CONVERGE, || {
            let got = self.learned.lock().unwrap().get(&prefix).cloned();
            if got.as_ref() == Some(&want) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .unwrap();
    }

    /// The Remove events received so far.
    pub fn removals(&self) -> Vec<RouteEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, RouteEvent::Remove { .. }))
            .cloned()
            .collect()
    }

    /// The state of the peer named `name`.
    pub fn peer(&self, name: &str) -> PeerSnapshot {
        self.peers().into_iter().find(|p| p.name == name).unwrap()
    }

    /// Whether the peer `name` reaches Established within `within`.
    pub fn establishes(&self, name: &str, within: Duration) -> bool {
        wait_until(&format!("{name} established"), within, || {
            let p = self.peer(name);
            if p.state == State::Established {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", p.state, p.last_error))
            }
        })
        .is_ok()
    }

    pub fn stop(self, how: skog_bgp::Shutdown) {
        self.rt.block_on(self.handle.shutdown(how)).unwrap();
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

/// The ToR's kernel route for `prefix`, if any, as its gateways.
pub fn tor_kernel_gateways(tb: &Testbed, tor: TorId, prefix: IpNet) -> Option<Vec<IpAddr>> {
    tb.tor(tor)
        .unwrap()
        .kernel_routes(prefix.addr().is_ipv6())
        .unwrap()
        .into_iter()
        .find(|r| r.dst == prefix)
        .map(|r| r.gateways)
}

/// The link-local address of an interface in the hypervisor.
pub fn hv_link_local(tb: &Testbed, hv: HvId, ifname: &str) -> IpAddr {
    let out = tb
        .hv(hv)
        .unwrap()
        .ns()
        .ip(&["-6", "-o", "addr", "show", "dev", ifname, "scope", "link"])
        .unwrap();
    let mut words = out.split_whitespace().skip_while(|w| *w != "inet6");
    let addr = words.nth(1).unwrap();
    addr.split('/').next().unwrap().parse().unwrap()
}

/// The next hops a ToR may install for our routes on uplink 0: the uplink's global address,
/// or (IPv6) the link-local one we announce beside it, which FRR prefers.
pub fn our_next_hops(tb: &Testbed, hv: HvId, v6: bool) -> Vec<IpAddr> {
    let u = &tb.hv(hv).unwrap().uplinks[0];
    if v6 {
        vec![IpAddr::from(u.hv_v6), hv_link_local(tb, hv, &u.hv_if)]
    } else {
        vec![IpAddr::from(u.hv_v4)]
    }
}

/// Waits until the ToR's kernel routes `prefix` via one of `via` (or, with `via` empty, has
/// no route for it).
pub fn wait_tor_kernel(tb: &Testbed, tor: TorId, prefix: IpNet, via: &[IpAddr]) {
    wait_until(
        &format!("{prefix} via {via:?} in the ToR's kernel"),
        CONVERGE,
        || {
            let got = tor_kernel_gateways(tb, tor, prefix);
            match &got {
                Some(gws) if gws.iter().any(|g| via.contains(g)) => Ok(()),
                None if via.is_empty() => Ok(()),
                _ => Err(format!("{got:?}")),
            }
        },
    )
    .unwrap();
}

pub fn wait_tor_daemon(tb: &Testbed, tor: TorId, prefix: IpNet, present: bool) {
    wait_until(
        &format!("{prefix} in the ToR's RIB: {present}"),
        CONVERGE,
        || {
            let have = tb
                .tor(tor)
                .unwrap()
                .daemon_prefixes(prefix.addr().is_ipv6())
                .map_err(|e| e.to_string())?;
            if have.contains(&prefix) == present {
                Ok(())
            } else {
                Err(format!("{have:?}"))
            }
        },
    )
    .unwrap();
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}
