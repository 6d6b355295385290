//! The core's periodic look at the route programmer and the speaker: the metrics, systemd's
//! `STATUS=` line, and each endpoint's status for the datastore (Neutron's port status).

use super::*;

impl Core {
    /// Reads the programmer and the speaker: metrics, endpoint status for the datastore.
    pub(super) async fn observe(&mut self) {
        let Ok(snapshot) = self.parts.programmer.snapshot().await else {
            return;
        };
        let m = &self.parts.metrics;
        let mut counts: BTreeMap<&str, i64> =
            [("up", 0), ("down", 0), ("missing", 0), ("error", 0)].into();
        for ep in &snapshot.endpoints {
            *counts
                .entry(state_name(ep.tap, !ep.errors.is_empty()))
                .or_default() += 1;
        }
        let unprogrammable = self
            .endpoints
            .values()
            .filter(|e| e.problem.is_some())
            .count();
        *counts.entry("error").or_default() += i64::try_from(unprogrammable).unwrap_or(0);
        for (state, n) in counts {
            m.endpoints
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n);
        }
        let learned = i64::try_from(snapshot.learned_routes).unwrap_or(i64::MAX);
        let total = i64::try_from(snapshot.routes_programmed).unwrap_or(i64::MAX);
        m.routes_programmed
            .get_or_create(&KindLabel {
                kind: "learned".into(),
            })
            .set(learned);
        m.routes_programmed
            .get_or_create(&KindLabel {
                kind: "endpoint".into(),
            })
            .set(total.saturating_sub(learned).max(0));
        self.exported.export(&snapshot, m);
        let status = self.parts.model_status.borrow().clone();
        m.datastore_in_sync.set(i64::from(status.in_sync));
        m.datastore_rejected
            .set(i64::try_from(status.rejected.len()).unwrap_or(i64::MAX));
        let mut peers_up = (0, 0);
        if let Some(speaker) = &self.speaker
            && let Ok(peers) = speaker.peers().await
        {
            for p in peers {
                peers_up.1 += 1;
                if p.state == skog_bgp::fsm::State::Established {
                    peers_up.0 += 1;
                }
                let label = PeerLabel {
                    peer: p.name.clone(),
                };
                m.bgp_session_state
                    .get_or_create(&label)
                    .set(fsm_number(p.state));
                m.bgp_prefixes_received
                    .get_or_create(&label)
                    .set(i64::try_from(p.received).unwrap_or(i64::MAX));
                m.bgp_prefixes_advertised
                    .get_or_create(&label)
                    .set(i64::try_from(p.advertised).unwrap_or(i64::MAX));
            }
        }
        if self.ready {
            let up = snapshot
                .endpoints
                .iter()
                .filter(|e| e.tap == TapState::Up && e.errors.is_empty())
                .count();
            let mut line = format!(
                "{up}/{} endpoints up, {} routes announced, {}/{} peers established",
                self.endpoints.len(),
                self.announced.len(),
                peers_up.0,
                peers_up.1
            );
            if !status.rejected.is_empty() {
                line.push_str(&format!(", {} resources rejected", status.rejected.len()));
            }
            if line != self.status_sent {
                let _ = self.parts.notifier.status(&line);
                self.status_sent = line;
            }
        }
        if self.status_dirty && self.in_sync {
            self.status_dirty = false;
            let by_key: HashMap<&str, &dataplane::EndpointStatus> = snapshot
                .endpoints
                .iter()
                .map(|e| (e.id.as_str(), e))
                .collect();
            let updates: Vec<(EndpointId, ReportedStatus)> = self
                .endpoints
                .iter()
                .map(|(key, ep)| {
                    let status = match (by_key.get(key.as_str()), &ep.problem) {
                        (_, Some(_)) => ReportedStatus::Error,
                        (Some(s), None) if !s.errors.is_empty() => ReportedStatus::Error,
                        (Some(s), None) if s.tap == TapState::Up => ReportedStatus::Up,
                        _ => ReportedStatus::Down,
                    };
                    (ep.local.endpoint.id.clone(), status)
                })
                .collect();
            for (id, status) in updates {
                self.report(&id, Some(status)).await;
            }
        }
    }

    /// Sends an endpoint's status to the datastore if it changed.
    pub(super) async fn report(&mut self, id: &EndpointId, status: Option<ReportedStatus>) {
        let key = id.to_string();
        let changed = match status {
            Some(s) => self.reported.insert(key, s) != Some(s),
            None => self.reported.remove(&key).is_some(),
        };
        if let (true, Some(tx)) = (changed, &self.parts.status_updates) {
            let _ = tx
                .send(StatusUpdate {
                    id: id.clone(),
                    status,
                })
                .await;
        }
    }
}

/// RFC 4271's numbering of the states (1 Idle … 6 Established).
fn fsm_number(state: skog_bgp::fsm::State) -> i64 {
    use skog_bgp::fsm::State;
    match state {
        State::Idle => 1,
        State::Connect => 2,
        State::Active => 3,
        State::OpenSent => 4,
        State::OpenConfirm => 5,
        State::Established => 6,
    }
}

/// The route programmer's counters (totals since it started) as last exported; the metrics
/// grow by what they grew since.
#[derive(Debug, Default)]
pub(super) struct ExportedCounts {
    kernel_writes: u64,
    nexthop_writes: u64,
    resyncs: u64,
}

impl ExportedCounts {
    fn export(&mut self, snapshot: &dataplane::Snapshot, m: &Metrics) {
        if snapshot.kernel_writes != self.kernel_writes
            && let Some(d) = snapshot.last_apply
        {
            m.route_apply_seconds.observe(d.as_secs_f64());
        }
        let grown = |now: u64, last: &mut u64| now.saturating_sub(std::mem::replace(last, now));
        m.kernel_writes
            .inc_by(grown(snapshot.kernel_writes, &mut self.kernel_writes));
        m.nexthop_writes
            .inc_by(grown(snapshot.nexthop_writes, &mut self.nexthop_writes));
        m.dataplane_resyncs
            .inc_by(grown(snapshot.resyncs, &mut self.resyncs));
        m.nexthop_objects
            .set(i64::try_from(snapshot.nexthop_objects).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn counters_grow_by_what_the_programmer_counted_since_the_last_export() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let mut exported = ExportedCounts::default();
        let mut snapshot = dataplane::Snapshot {
            kernel_writes: 5,
            nexthop_writes: 2,
            resyncs: 1,
            nexthop_objects: 3,
            last_apply: Some(Duration::from_millis(2)),
            ..Default::default()
        };
        exported.export(&snapshot, &m);
        // Nothing new: nothing counted twice, no apply observed twice.
        exported.export(&snapshot, &m);
        snapshot.kernel_writes = 8;
        snapshot.nexthop_objects = 1;
        exported.export(&snapshot, &m);
        assert_eq!(m.kernel_writes.get(), 8);
        assert_eq!(m.nexthop_writes.get(), 2);
        assert_eq!(m.dataplane_resyncs.get(), 1);
        assert_eq!(m.nexthop_objects.get(), 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("skog_route_apply_seconds_count 2"), "{text}");
        assert!(text.contains("skog_kernel_writes_total 8"), "{text}");
    }
}
