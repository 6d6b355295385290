//! Prometheus metrics and health checks, served over HTTP on `[metrics].listen`:
//! `/metrics` (OpenMetrics text), `/livez` (the main loop ticked recently) and `/readyz`
//! (datastore in sync and dataplane reconciled once). The tasks update [`Metrics`] and
//! [`Health`]; this module only holds and serves them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of metrics per endpoint state (`up`, `down`, `missing`, `error`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state.
    pub state: String,
}

/// Label of per-peer metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's configured name.
    pub peer: String,
}

/// Label of route metrics (`endpoint` or `learned`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
}

/// Every metric skogd exports.
#[derive(Debug)]
pub struct Metrics {
    /// Local endpoints by state.
    pub endpoints: Family<StateLabel, Gauge>,
    /// Routes Skog holds in the kernel, by kind.
    pub routes_programmed: Family<KindLabel, Gauge>,
    /// Duration of one route-dataplane apply.
    pub route_apply_seconds: Histogram,
    /// Route and neighbour writes sent to the kernel.
    pub kernel_writes: Counter,
    /// Nexthop object writes (created, replaced, deleted) sent to the kernel.
    pub nexthop_writes: Counter,
    /// Nexthop objects of ours in the kernel.
    pub nexthop_objects: Gauge,
    /// Full resyncs of the route dataplane (periodic, or after lost notifications).
    pub dataplane_resyncs: Counter,
    /// Duration of one nftables transaction.
    pub policy_apply_seconds: Histogram,
    /// 1 when the datastore is in sync.
    pub datastore_in_sync: Gauge,
    /// Resources the datastore rejected.
    pub datastore_rejected: Gauge,
    /// BGP session state per peer, as RFC 4271 numbers it (1 Idle … 6 Established).
    pub bgp_session_state: Family<PeerLabel, Gauge>,
    /// Prefixes received per peer.
    pub bgp_prefixes_received: Family<PeerLabel, Gauge>,
    /// Prefixes advertised per peer.
    pub bgp_prefixes_advertised: Family<PeerLabel, Gauge>,
    /// Errors by kind (`netlink`, `nft`, `datastore`, `bgp`, ...).
    pub errors: Family<KindLabel, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `skog_` prefix.
    pub fn new(registry: &mut Registry) -> Metrics {
        let apply_buckets = || exponential_buckets(0.0005, 2.0, 16);
        let m = Metrics {
            endpoints: Family::default(),
            routes_programmed: Family::default(),
            route_apply_seconds: Histogram::new(apply_buckets()),
            kernel_writes: Counter::default(),
            nexthop_writes: Counter::default(),
            nexthop_objects: Gauge::default(),
            dataplane_resyncs: Counter::default(),
            policy_apply_seconds: Histogram::new(apply_buckets()),
            datastore_in_sync: Gauge::default(),
            datastore_rejected: Gauge::default(),
            bgp_session_state: Family::default(),
            bgp_prefixes_received: Family::default(),
            bgp_prefixes_advertised: Family::default(),
            errors: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("skog");
        r.register("endpoints", "Local endpoints by state", m.endpoints.clone());
        r.register(
            "routes_programmed",
            "Routes Skog holds in the kernel",
            m.routes_programmed.clone(),
        );
        r.register(
            "route_apply_seconds",
            "Duration of one route apply",
            m.route_apply_seconds.clone(),
        );
        r.register(
            "kernel_writes",
            "Route and neighbour writes sent to the kernel",
            m.kernel_writes.clone(),
        );
        r.register(
            "nexthop_writes",
            "Nexthop object writes sent to the kernel",
            m.nexthop_writes.clone(),
        );
        r.register(
            "nexthop_objects",
            "Nexthop objects of ours in the kernel",
            m.nexthop_objects.clone(),
        );
        r.register(
            "dataplane_resyncs",
            "Full re-reads of the kernel by the route dataplane",
            m.dataplane_resyncs.clone(),
        );
        r.register(
            "policy_apply_seconds",
            "Duration of one nftables transaction",
            m.policy_apply_seconds.clone(),
        );
        r.register(
            "datastore_in_sync",
            "1 when the datastore is in sync",
            m.datastore_in_sync.clone(),
        );
        r.register(
            "datastore_rejected_resources",
            "Resources rejected as invalid",
            m.datastore_rejected.clone(),
        );
        r.register(
            "bgp_session_state",
            "BGP FSM state (1 Idle .. 6 Established)",
            m.bgp_session_state.clone(),
        );
        r.register(
            "bgp_prefixes_received",
            "Prefixes received from the peer",
            m.bgp_prefixes_received.clone(),
        );
        r.register(
            "bgp_prefixes_advertised",
            "Prefixes advertised to the peer",
            m.bgp_prefixes_advertised.clone(),
        );
        r.register("errors", "Errors by kind", m.errors.clone());
        m
    }

    /// Counts one error of `kind`.
    pub fn count_error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
}

/// Liveness and readiness, shared between the main loop and the HTTP handlers.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    last_tick_ms: AtomicU64,
    ready: AtomicBool,
    stall: Duration,
}

impl Health {
    /// Live while the main loop ticks at least every `stall`.
    pub fn new(stall: Duration) -> Health {
        Health {
            started: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            stall,
        }
    }

    /// Called by the main loop on every turn.
    pub fn tick(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_tick_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks the daemon ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the main loop ticked recently.
    pub fn is_live(&self) -> bool {
        let since_start = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let stall = u64::try_from(self.stall.as_millis()).unwrap_or(u64::MAX);
        since_start.saturating_sub(self.last_tick_ms.load(Ordering::Relaxed)) <= stall
    }

    /// Whether `/readyz` says ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
struct Shared {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// The `/metrics`, `/livez` and `/readyz` routes.
pub fn router(registry: Arc<Registry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|State(s): State<Shared>| async move { check(s.health.is_live(), "main loop stalled") }))
        .route(
            "/readyz",
            get(|State(s): State<Shared>| async move { check(s.health.is_ready(), "not in sync yet") }),
        )
        .with_state(Shared { registry, health })
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn check(ok: bool, why: &'static str) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, why)
    }
}

/// Serves the routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, health))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_and_health_are_served() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.endpoints
            .get_or_create(&StateLabel { state: "up".into() })
            .set(3);
        m.bgp_session_state
            .get_or_create(&PeerLabel {
                peer: "tor1".into(),
            })
            .set(6);
        m.route_apply_seconds.observe(0.002);
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(registry), health.clone(), async {
            let _ = stopped.await;
        }));

        let body = get(addr, "/metrics").await;
        assert!(body.contains("skog_endpoints{state=\"up\"} 3"), "{body}");
        assert!(
            body.contains("skog_bgp_session_state{peer=\"tor1\"} 6"),
            "{body}"
        );
        assert!(body.contains("skog_route_apply_seconds_count 1"), "{body}");

        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_ready(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        health.tick();
        assert!(get(addr, "/livez").await.starts_with("HTTP/1.1 200"));

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn a_stalled_main_loop_is_not_live() {
        // A window wide enough that a preempted test thread does not overrun it between the
        // tick and the check.
        let health = Health::new(Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(350));
        assert!(!health.is_live());
        health.tick();
        assert!(health.is_live());
    }
}
