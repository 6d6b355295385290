//! Status write-back exactly as Felix does it, so networking-calico shows the agent alive and
//! ports ACTIVE/DOWN/ERROR:
//! - `/calico/felix/v2/<region>/host/<host>/status` = `{"time","uptime","first_update"}` on a
//!   90 s lease, rewritten every 30 s (`first_update` true on the first write), plus
//!   `last_reported_status` with the same value and no lease;
//! - `/calico/felix/v2/<region>/host/<host>/workload/<orchestrator>/<namespace>%2f<workload>/endpoint/<port>`
//!   = `{"status":"up"|"down"|"error"}`, deleted when the endpoint goes away.
//!
//! The reporter task owns the desired endpoint statuses and what etcd holds; failed writes are
//! retried on the next tick, and stale endpoint keys of this host are deleted at start.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, GetOptions, PutOptions};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::etcd::EtcdError;
use crate::model::EndpointId;
use crate::model::key::region_string;

/// Status of one endpoint, as networking-calico maps it to a Neutron port status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointStatus {
    /// Interface up and programmed: port ACTIVE.
    Up,
    /// Interface down: port DOWN.
    Down,
    /// Programming failed: port ERROR.
    Error,
}

impl EndpointStatus {
    fn as_str(self) -> &'static str {
        match self {
            EndpointStatus::Up => "up",
            EndpointStatus::Down => "down",
            EndpointStatus::Error => "error",
        }
    }
}

/// Where and how often to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    /// This node's name.
    pub hostname: String,
    /// OpenStack region, if any.
    pub region: Option<String>,
    /// Time between heartbeats (Felix `ReportingIntervalSecs`, 30 s).
    pub interval: Duration,
    /// Lease of the heartbeat key (Felix `ReportingTTLSecs`, 90 s).
    pub ttl: Duration,
}

impl StatusConfig {
    /// Felix's defaults for `hostname`.
    pub fn new(hostname: impl Into<String>, region: Option<String>) -> StatusConfig {
        StatusConfig {
            hostname: hostname.into(),
            region,
            interval: Duration::from_secs(30),
            ttl: Duration::from_secs(90),
        }
    }

    fn host_dir(&self) -> String {
        format!(
            "/calico/felix/v2/{}/host/{}",
            region_string(self.region.as_deref()),
            escape(&self.hostname)
        )
    }

    /// The heartbeat key.
    pub fn status_key(&self) -> String {
        format!("{}/status", self.host_dir())
    }

    /// The lease-less copy of the heartbeat.
    pub fn last_reported_key(&self) -> String {
        format!("{}/last_reported_status", self.host_dir())
    }

    /// Prefix of this host's endpoint status keys.
    pub fn workload_prefix(&self) -> String {
        format!("{}/workload/", self.host_dir())
    }

    /// The status key of an endpoint (the workload part is `<namespace>/<device id>`, escaped).
    pub fn endpoint_key(&self, id: &EndpointId) -> String {
        format!(
            "{}{}/{}/endpoint/{}",
            self.workload_prefix(),
            escape(&id.orchestrator),
            escape(&format!("{}/{}", id.namespace, id.workload)),
            escape(&id.endpoint)
        )
    }
}

/// libcalico-go's key escaping: `%` → `%25`, `/` → `%2f`.
fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('/', "%2f")
}

/// The heartbeat value.
pub fn heartbeat_value(now: SystemTime, uptime: Duration, first_update: bool) -> String {
    serde_json::json!({
        "time": rfc3339(now),
        "uptime": uptime.as_secs_f64(),
        "first_update": first_update,
    })
    .to_string()
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC), as Felix writes it.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A change of what an endpoint's status should be (`None`: the endpoint is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// The endpoint.
    pub id: EndpointId,
    /// Its status, or `None` to delete the key.
    pub status: Option<EndpointStatus>,
}

/// Writes heartbeats and endpoint statuses.
pub struct StatusReporter {
    client: Client,
    config: StatusConfig,
    started: Instant,
    first_update: bool,
    lease: Option<i64>,
    desired: HashMap<EndpointId, EndpointStatus>,
    written: HashMap<EndpointId, EndpointStatus>,
    /// Keys to delete (endpoints gone, or stale from a previous run).
    to_delete: Vec<String>,
    cleaned_up: bool,
}

impl std::fmt::Debug for StatusReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusReporter")
            .field("config", &self.config)
            .field("lease", &self.lease)
            .field("desired", &self.desired.len())
            .finish_non_exhaustive()
    }
}

impl StatusReporter {
    /// A reporter using `client`.
    pub fn new(client: Client, config: StatusConfig) -> StatusReporter {
        StatusReporter {
            client,
            config,
            started: Instant::now(),
            first_update: true,
            lease: None,
            desired: HashMap::new(),
            written: HashMap::new(),
            to_delete: Vec::new(),
            cleaned_up: false,
        }
    }

    /// Writes the heartbeat on a fresh lease (then revokes the previous one).
    pub async fn heartbeat(&mut self) -> Result<(), EtcdError> {
        let ttl = i64::try_from(self.config.ttl.as_secs()).unwrap_or(90);
        let lease = self.client.lease_grant(ttl, None).await?.id();
        let value = heartbeat_value(SystemTime::now(), self.started.elapsed(), self.first_update);
        self.client
            .put(
                self.config.status_key(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        self.client
            .put(self.config.last_reported_key(), value, None)
            .await?;
        if let Some(old) = self.lease.replace(lease)
            && let Err(e) = self.client.lease_revoke(old).await
        {
            debug!(error = %e, "revoking the previous heartbeat lease");
        }
        self.first_update = false;
        Ok(())
    }

    /// Records what an endpoint's status should be; written by [`StatusReporter::sync`].
    pub fn set(&mut self, update: StatusUpdate) {
        match update.status {
            Some(status) => {
                self.desired.insert(update.id, status);
            }
            None => {
                self.desired.remove(&update.id);
                if self.written.remove(&update.id).is_some() {
                    self.to_delete.push(self.config.endpoint_key(&update.id));
                }
            }
        }
    }

    /// Brings etcd in line with the desired endpoint statuses. On the first successful call,
    /// deletes this host's endpoint keys that no endpoint wants (left by a previous run).
    pub async fn sync(&mut self) -> Result<(), EtcdError> {
        if !self.cleaned_up {
            let prefix = self.config.workload_prefix();
            let existing = self
                .client
                .get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await?;
            let wanted: std::collections::HashSet<String> = self
                .desired
                .keys()
                .map(|id| self.config.endpoint_key(id))
                .collect();
            for kv in existing.kvs() {
                if let Ok(key) = kv.key_str()
                    && !wanted.contains(key)
                {
                    self.to_delete.push(key.to_owned());
                }
            }
            self.cleaned_up = true;
        }
        while let Some(key) = self.to_delete.pop() {
            if let Err(e) = self.client.delete(key.as_str(), None).await {
                self.to_delete.push(key);
                return Err(e.into());
            }
        }
        let pending: Vec<(EndpointId, EndpointStatus)> = self
            .desired
            .iter()
            .filter(|(id, s)| self.written.get(*id) != Some(*s))
            .map(|(id, s)| (id.clone(), *s))
            .collect();
        for (id, status) in pending {
            let value = serde_json::json!({ "status": status.as_str() }).to_string();
            self.client
                .put(self.config.endpoint_key(&id), value, None)
                .await?;
            self.written.insert(id, status);
        }
        Ok(())
    }
}

/// Runs the reporter: a heartbeat every interval, endpoint statuses as they arrive; failures
/// are logged and retried on the next tick. Returns when `updates` closes.
pub async fn run(mut reporter: StatusReporter, mut updates: mpsc::Receiver<StatusUpdate>) {
    let mut tick = tokio::time::interval(reporter.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match reporter.heartbeat().await {
                    Ok(()) => debug!("status heartbeat written"),
                    Err(e) => warn!(error = %e, "cannot write the status heartbeat"),
                }
            }
            update = updates.recv() => {
                let Some(update) = update else {
                    info!("status reporter stopping");
                    return;
                };
                reporter.set(update);
                while let Ok(more) = updates.try_recv() {
                    reporter.set(more);
                }
            }
        }
        if let Err(e) = reporter.sync().await {
            warn!(error = %e, "cannot write endpoint statuses; retrying on the next tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> EndpointId {
        EndpointId {
            namespace: "openstack".into(),
            host: "compute-01".into(),
            orchestrator: "openstack".into(),
            workload: "8e3941b4-a6e9-499f-a1ac-2a4662025cba".into(),
            endpoint: "ce705c24-c1ef-408a-bda3-7bbd946164ab".into(),
        }
    }

    #[test]
    fn keys_match_felix() {
        let config = StatusConfig::new("compute-01", None);
        assert_eq!(
            config.status_key(),
            "/calico/felix/v2/no-region/host/compute-01/status"
        );
        assert_eq!(
            config.last_reported_key(),
            "/calico/felix/v2/no-region/host/compute-01/last_reported_status"
        );
        assert_eq!(
            config.endpoint_key(&id()),
            "/calico/felix/v2/no-region/host/compute-01/workload/openstack/\
             openstack%2f8e3941b4-a6e9-499f-a1ac-2a4662025cba/endpoint/\
             ce705c24-c1ef-408a-bda3-7bbd946164ab"
        );
        let regional = StatusConfig::new("h", Some("r1".into()));
        assert_eq!(
            regional.status_key(),
            "/calico/felix/v2/region-r1/host/h/status"
        );
        assert_eq!(escape("a%b/c"), "a%25b%2fc");
    }

    #[test]
    fn heartbeat_is_felix_shaped() {
        let t = UNIX_EPOCH + Duration::from_secs(1_787_405_600);
        let v: serde_json::Value =
            serde_json::from_str(&heartbeat_value(t, Duration::from_millis(1500), true)).unwrap();
        assert_eq!(v["time"], "2026-08-22T13:33:20Z");
        assert_eq!(v["uptime"], 1.5);
        assert_eq!(v["first_update"], true);
    }

    #[test]
    fn dates_across_leap_years() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
    }
}
