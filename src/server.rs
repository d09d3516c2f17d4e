//! A scrape endpoint (feature `metrics-server`): `/metrics` in OpenMetrics
//! text and `/status` as JSON, for any number of pools.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::stats::State;

/// Where [`serve`] listens unless told otherwise: loopback only, so pool
/// internals are not published to the network by accident.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9898);

/// The OpenMetrics text content type, served when the scraper asks for it
/// (Prometheus does).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format, served to everyone else (curl,
/// `promtool check metrics`, older scrapers).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running endpoint; dropping it stops the server.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct AppState {
    metrics: Metrics,
    registry: Registry,
}

/// Binds `addr` and serves `/metrics` and `/status` for the pools added to
/// `metrics`, in a background task.
///
/// # Errors
/// The bind error, naming the address.
pub async fn serve(metrics: Metrics, addr: SocketAddr) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let addr = listener.local_addr()?;
    let app = router(metrics);
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(target: "vigil::server", %error, "metrics server stopped");
        }
    });
    Ok(MetricsServer { addr, task })
}

/// The `/metrics` and `/status` routes for the pools added to `metrics`,
/// for merging into your own axum app ([`Router::merge`]) instead of
/// running [`serve`]'s separate listener. Registers the pools' metrics once,
/// here.
///
/// ```
/// let metrics = vigil::metrics::Metrics::new();
/// let app: axum::Router = axum::Router::new().merge(vigil::server::router(metrics));
/// # let _ = app;
/// ```
pub fn router(metrics: Metrics) -> Router {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let state = Arc::new(AppState { metrics, registry });
    Router::new()
        .route("/metrics", get(scrape))
        .route("/status", get(status))
        .with_state(state)
}

async fn scrape(
    axum::extract::State(app): axum::extract::State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers.get_all(axum::http::header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &app.registry) {
        Ok(()) if openmetrics => (
            StatusCode::OK,
            [(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            text,
        ),
        Ok(()) => (
            StatusCode::OK,
            [(CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)],
            to_prometheus_text(&text),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            "could not encode metrics".to_owned(),
        ),
    }
}

/// Rewrites prometheus-client's OpenMetrics output as Prometheus text 0.0.4:
/// a counter family's HELP and TYPE name its `_total` samples, and the
/// `# UNIT` and `# EOF` lines, which 0.0.4 does not have, are dropped.
/// Only our own output passes through here, so the line shapes are known.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let name = rest.split(' ').next().unwrap_or_default();
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(&name) {
                    out.push_str("_total");
                }
                out.push_str(&rest[name.len()..]);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

async fn status(
    axum::extract::State(app): axum::extract::State<Arc<AppState>>,
) -> impl IntoResponse {
    let body = status_json(&app.metrics);
    ([(CONTENT_TYPE, "application/json")], body.to_string())
}

/// The `/status` document: per pool its gauges and counters, and per
/// connection its state, age, idle time, uses, and for a lent one how long
/// and from which call site.
pub fn status_json(metrics: &Metrics) -> Value {
    let pools: Vec<Value> = metrics
        .observe()
        .into_iter()
        .map(|(name, state, conns)| {
            let conns: Vec<Value> = conns
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "state": c.state.as_str(),
                        "age_seconds": c.age.as_secs_f64(),
                        "idle_seconds": c.idle_for.map(|d| d.as_secs_f64()),
                        "uses": c.uses,
                        "held_seconds": c.held_for.map(|d| d.as_secs_f64()),
                        "borrowed_at": c.borrowed_at.map(|l| l.to_string()),
                        "server_idle_timeout_seconds": c.server_idle_timeout.map(|d| d.as_secs_f64()),
                    })
                })
                .collect();
            json!({ "pool": name, "state": state_json(&state), "connections": conns })
        })
        .collect();
    json!({ "pools": pools })
}

fn state_json(s: &State) -> Value {
    let closed: serde_json::Map<String, Value> = s
        .closed
        .iter()
        .map(|(r, n)| (r.as_str().to_owned(), json!(n)))
        .collect();
    json!({
        "max_size": s.max_size,
        "min_idle": s.min_idle,
        "open": s.open,
        "idle": s.idle,
        "active": s.active,
        "connecting": s.connecting,
        "pending": s.pending,
        "created": s.created,
        "connect_errors": s.connect_errors,
        "closed": closed,
        "acquire_timeouts": s.acquire_timeouts,
        "validations": { "ok": s.validations_ok, "failed": s.validations_failed, "skipped": s.validations_skipped },
        "leaks_suspected": s.leaks_suspected,
        "server_idle_timeout_seconds": s.server_idle_timeout.flatten().map(|d| d.as_secs_f64()),
    })
}
