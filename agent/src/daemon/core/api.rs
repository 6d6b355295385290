//! The core's answers to the local API (`skogctl`): status, peers, routes, endpoints, the
//! rules in force and packet traces. They read the core's own state and ask the route
//! programmer, the BGP speaker and the policy task.

use super::*;

impl Core {
    /// Answers one API request.
    pub(super) async fn on_api(&mut self, request: ApiRequest) {
        match request {
            ApiRequest::Status { reply } => {
                let _ = reply.send(self.status().await);
            }
            ApiRequest::Peers { reply } => {
                let _ = reply.send(self.peer_statuses().await);
            }
            ApiRequest::Routes { filter, reply } => {
                let _ = reply.send(self.routes(&filter).await);
            }
            ApiRequest::Endpoints { reply } => {
                let _ = reply.send(self.endpoint_statuses().await);
            }
            ApiRequest::PolicyShow { interface, reply } => {
                let policy = self.parts.policy.clone();
                tokio::spawn(async move {
                    let _ = reply.send(policy.show(interface).await);
                });
            }
            ApiRequest::PolicyTrace { query, reply } => {
                let policy = self.parts.policy.clone();
                tokio::spawn(async move {
                    let _ = reply.send(trace(&policy, &query).await);
                });
            }
        }
    }

    async fn status(&self) -> Status {
        let model = self.parts.model_status.borrow().clone();
        let endpoints = self.endpoint_statuses().await;
        let mut counts = EndpointCounts::default();
        for e in &endpoints {
            match e.state.as_str() {
                "up" => counts.up += 1,
                "error" => counts.error += 1,
                _ => counts.down += 1,
            }
        }
        let peers = self.peer_statuses().await;
        let routes_programmed = match self.parts.programmer.snapshot().await {
            Ok(s) => s.routes_programmed as u64,
            Err(_) => 0,
        };
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            node_name: self.parts.node_name.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            datastore: DatastoreStatus {
                kind: self.parts.datastore_kind.into(),
                state: if !model.connected {
                    "disconnected"
                } else if model.in_sync {
                    "in-sync"
                } else {
                    "syncing"
                }
                .into(),
                ready: model.datastore_ready,
                last_error: None,
            },
            endpoints: counts,
            routes_programmed,
            peers: PeerCounts {
                total: peers.len() as u64,
                established: peers.iter().filter(|p| p.state == "Established").count() as u64,
            },
            rejected: model
                .rejected
                .iter()
                .map(|r| Rejected {
                    key: r.key.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
        }
    }

    async fn peer_statuses(&self) -> Vec<PeerStatus> {
        let Some(speaker) = &self.speaker else {
            // Not started yet: the configured peers, idle.
            return self
                .peers_configured()
                .into_iter()
                .map(|p| PeerStatus {
                    name: p.name.clone(),
                    address: p.address.to_string(),
                    asn: p.asn,
                    state: "Idle".into(),
                    uptime_s: 0,
                    received: 0,
                    accepted: 0,
                    advertised: 0,
                    last_error: Some("waiting for the datastore".into()),
                })
                .collect();
        };
        let Ok(peers) = speaker.peers().await else {
            return Vec::new();
        };
        let mut out: Vec<PeerStatus> = peers
            .into_iter()
            .map(|p| PeerStatus {
                name: p.name,
                address: p.address.to_string(),
                asn: p.asn,
                state: format!("{:?}", p.state),
                uptime_s: p
                    .established_since
                    .and_then(|t| t.elapsed().ok())
                    .map_or(0, |d| d.as_secs()),
                received: p.received as u64,
                accepted: p.accepted as u64,
                advertised: p.advertised as u64,
                last_error: p.last_error,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn peers_configured(&self) -> Vec<PeerConfig> {
        peers::desired(self.parts.file_bgp.as_ref(), &self.datastore_bgp)
            .into_values()
            .collect()
    }

    async fn routes(&self, filter: &RouteFilter) -> Result<Vec<RouteEntry>, String> {
        let per_peer = match (&filter.advertised, &filter.received) {
            (Some(peer), _) => Some((peer, skog_bgp::RibSide::Advertised)),
            (None, Some(peer)) => Some((peer, skog_bgp::RibSide::Received)),
            (None, None) => None,
        };
        if let Some((peer, side)) = per_peer {
            let speaker = self.speaker.as_ref().ok_or("BGP is not running")?;
            let routes = speaker
                .peer_routes(peer, side)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(routes
                .into_iter()
                .map(|r| RouteEntry {
                    prefix: r.prefix.to_string(),
                    next_hops: vec![match r.next_hop {
                        Some(hop) => format!("via {hop}"),
                        None => "self".into(),
                    }],
                    origin: match (side, r.accepted, r.stale) {
                        (skog_bgp::RibSide::Advertised, ..) => "endpoint",
                        (_, false, _) => "bgp (filtered)",
                        (_, true, true) => "bgp (stale)",
                        (_, true, false) => "bgp",
                    }
                    .into(),
                    age_s: self.age(&r.prefix),
                })
                .collect());
        }
        let kernel = self
            .parts
            .programmer
            .routes()
            .await
            .map_err(|e| e.to_string())?;
        if filter.kernel {
            return Ok(kernel
                .into_iter()
                .map(|r| RouteEntry {
                    prefix: r.prefix.to_string(),
                    next_hops: r.next_hops,
                    origin: if r.learned { "bgp" } else { "endpoint" }.into(),
                    age_s: self.age(&r.prefix),
                })
                .collect());
        }
        // Endpoint routes we announce, then what BGP learned (the Loc-RIB).
        let mut out: Vec<RouteEntry> = kernel
            .into_iter()
            .filter(|r| !r.learned && self.announced.contains(&r.prefix))
            .map(|r| RouteEntry {
                prefix: r.prefix.to_string(),
                next_hops: r.next_hops,
                origin: "endpoint".into(),
                age_s: self.age(&r.prefix),
            })
            .collect();
        if let Some(speaker) = &self.speaker {
            let learned = speaker.routes().await.map_err(|e| e.to_string())?;
            out.extend(learned.into_iter().map(|r| RouteEntry {
                prefix: r.prefix.to_string(),
                next_hops: r.next_hops.iter().map(|h| format!("via {h}")).collect(),
                origin: "bgp".into(),
                age_s: self.age(&r.prefix),
            }));
        }
        Ok(out)
    }

    fn age(&self, prefix: &IpNet) -> Option<u64> {
        self.route_since.get(prefix).map(|t| t.elapsed().as_secs())
    }

    async fn endpoint_statuses(&self) -> Vec<EndpointStatus> {
        let snapshot = self.parts.programmer.snapshot().await.unwrap_or_default();
        let by_key: HashMap<&str, &dataplane::EndpointStatus> = snapshot
            .endpoints
            .iter()
            .map(|e| (e.id.as_str(), e))
            .collect();
        self.endpoints
            .iter()
            .map(|(key, ep)| {
                let e = &ep.local.endpoint;
                let programmed = by_key.get(key.as_str());
                let errors: Vec<String> = ep
                    .problem
                    .iter()
                    .cloned()
                    .chain(programmed.iter().flat_map(|p| p.errors.iter().cloned()))
                    .collect();
                let state = match programmed {
                    Some(p) => state_name(p.tap, !errors.is_empty()),
                    None => "error",
                };
                EndpointStatus {
                    interface: e.interface_name.clone(),
                    port_id: e.id.endpoint.clone(),
                    workload: e.id.workload.clone(),
                    mac: e.mac.map(|m| m.to_string()).unwrap_or_default(),
                    addresses: e.ip_networks.iter().map(ToString::to_string).collect(),
                    floating_ips: e
                        .ip_nats
                        .iter()
                        .map(|n| format!("{} -> {}", n.external, n.internal))
                        .collect(),
                    state: state.into(),
                    security_groups: ep.local.policies.iter().map(|p| p.name.clone()).collect(),
                    reported_status: self
                        .reported
                        .get(key)
                        .map_or("none", |s| match s {
                            ReportedStatus::Up => "up",
                            ReportedStatus::Down => "down",
                            ReportedStatus::Error => "error",
                        })
                        .into(),
                    last_error: (!errors.is_empty()).then(|| errors.join("; ")),
                }
            })
            .collect()
    }
}

/// `skogctl policy trace`: the compiler's input as it stands, this host's addresses (traffic
/// to them is VM-to-host), and the pure evaluator.
async fn trace(
    policy: &crate::daemon::policy::PolicyHandle,
    query: &TraceQuery,
) -> Result<TraceResult, String> {
    let packet =
        skog_policy::trace::TracePacket::parse(&query.src, &query.dst, &query.proto, query.port)
            .map_err(|e| e.to_string())?;
    let model = policy.model().await.ok_or("the policy task has stopped")?;
    let host = host_addresses()
        .await
        .map_err(|e| format!("reading this host's addresses: {e}"))?;
    let t = skog_policy::trace::trace(&model, &host, &packet).map_err(|e| e.to_string())?;
    Ok(TraceResult {
        verdict: t.verdict.to_string(),
        rule: t.rule.map(|r| r.to_string()),
        reason: t.reason,
        path: t.path,
    })
}

/// Every address of this host (of the namespace skogd runs in).
async fn host_addresses() -> std::io::Result<Vec<std::net::IpAddr>> {
    use futures::TryStreamExt;
    use netlink_packet_route::address::AddressAttribute;
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let mut dump = handle.address().get().execute();
    let mut out = Vec::new();
    let result = loop {
        match dump.try_next().await {
            Ok(Some(msg)) => out.extend(msg.attributes.iter().filter_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })),
            Ok(None) => break Ok(out),
            Err(e) => break Err(std::io::Error::other(e.to_string())),
        }
    };
    task.abort();
    result
}
