//! Prometheus export (feature `metrics`), on prometheus-client.
//!
//! The pool records counters and histograms with relaxed atomics whatever
//! the feature; this module only reads them, at scrape time, through a
//! [`Collector`]. A scrape never blocks a checkout (it takes the pool's lock
//! once, for the gauges) and a checkout never formats anything.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! # use vigil::{Pool, Manager};
//! # #[derive(Debug)] struct Noop;
//! # impl Manager for Noop { type Connection = (); type Error = std::io::Error;
//! #   async fn connect(&self) -> Result<(), std::io::Error> { Ok(()) }
//! #   async fn is_valid(&self, _: &mut ()) -> Result<(), std::io::Error> { Ok(()) }
//! #   fn session(&self, _: &mut ()) -> vigil::Session { vigil::Session::default() }
//! #   fn classify(&self, _: &std::io::Error) -> vigil::ErrorClass { vigil::ErrorClass::Other } }
//! let pool = Pool::builder(Noop).name("orders").build().unwrap();
//! let metrics = vigil::metrics::Metrics::new();
//! metrics.add(&pool);
//! let mut registry = prometheus_client::registry::Registry::default();
//! metrics.register(&mut registry);
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains(r#"vigil_connections{pool="orders",state="idle"} 0"#));
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::pool::Observer;
use crate::stats::{HistogramSnapshot, State};
use crate::{Manager, Pool, Reason};

/// Exports any number of pools, each labelled `pool="<name>"`, as one set of
/// metric families. Cheap to clone; clones share the list of pools.
#[derive(Clone, Default)]
pub struct Metrics {
    pools: Arc<Mutex<Vec<Observer>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.pools.lock().iter().map(|o| o.name.clone()).collect();
        f.debug_struct("Metrics").field("pools", &names).finish()
    }
}

impl Metrics {
    /// An exporter with no pools yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exports `pool` under its [`name`](crate::Config::name). The exporter
    /// holds no strong reference: a dropped pool disappears from the output.
    pub fn add<M: Manager>(&self, pool: &Pool<M>) {
        self.pools.lock().push(pool.observer());
    }

    /// Registers this exporter as a collector of `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// Each live pool's name, state and connections (dropped pools are forgotten).
    #[cfg(feature = "metrics-server")]
    pub(crate) fn observe(&self) -> Vec<(String, State, Vec<crate::ConnectionInfo>)> {
        let mut pools = self.pools.lock();
        let mut out = Vec::with_capacity(pools.len());
        pools.retain(|o| match ((o.state)(), (o.connections)()) {
            (Some(state), Some(conns)) => {
                out.push((o.name.clone(), state, conns));
                true
            }
            _ => false,
        });
        out
    }

    /// The pools' current states, by name (dropped pools are left out and forgotten).
    pub fn states(&self) -> Vec<(String, State)> {
        let mut pools = self.pools.lock();
        let mut out = Vec::with_capacity(pools.len());
        pools.retain(|o| match (o.state)() {
            Some(state) => {
                out.push((o.name.clone(), state));
                true
            }
            None => false,
        });
        out
    }
}

/// A second label beside `pool` (`state`, `reason`, `result`), from a closed set.
type Extra = Option<(&'static str, &'static str)>;

/// One metric family: its descriptor, then one sample (or one per `Extra`)
/// for every pool.
fn family(
    enc: &mut DescriptorEncoder,
    states: &[(String, State)],
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    each: impl Fn(&State) -> Vec<(Extra, Value)>,
) -> fmt::Result {
    let mut desc = enc.encode_descriptor(name, help, unit, kind)?;
    for (pool, state) in states {
        for (extra, value) in each(state) {
            let mut labels = vec![("pool", pool.as_str())];
            labels.extend(extra);
            let m = desc.encode_family(&labels)?;
            match value {
                Value::Counter(v) => ConstCounter::new(v).encode(m)?,
                Value::Gauge(v) => ConstGauge::new(v).encode(m)?,
                Value::GaugeF(v) => ConstGauge::new(v).encode(m)?,
                Value::Histogram(h) => {
                    let buckets: Vec<(f64, u64)> = h.buckets().collect();
                    let mut m = m;
                    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        h.sum.as_secs_f64(),
                        h.count,
                        &buckets,
                        None,
                    )?
                }
            }
        }
    }
    Ok(())
}

enum Value {
    Counter(u64),
    Gauge(i64),
    GaugeF(f64),
    Histogram(HistogramSnapshot),
}

fn gauge(n: usize) -> Value {
    Value::Gauge(i64::try_from(n).unwrap_or(i64::MAX))
}

/// One sample with only the `pool` label.
fn one(v: Value) -> Vec<(Extra, Value)> {
    vec![(None, v)]
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        use MetricType::{Counter, Gauge, Histogram};
        use Value::Counter as C;
        let states = self.states();
        let s = &states[..];
        let e = &mut enc;
        let secs = Some(&Unit::Seconds);
        family(
            e,
            s,
            "vigil_connections",
            "Open connections by state; idle + active = open.",
            None,
            Gauge,
            |st| {
                vec![
                    (Some(("state", "idle")), gauge(st.idle)),
                    (Some(("state", "active")), gauge(st.active)),
                ]
            },
        )?;
        family(
            e,
            s,
            "vigil_connections_max",
            "The pool's max_size.",
            None,
            Gauge,
            |st| one(gauge(st.max_size)),
        )?;
        family(
            e,
            s,
            "vigil_connections_min",
            "The pool's min_idle.",
            None,
            Gauge,
            |st| one(gauge(st.min_idle)),
        )?;
        family(
            e,
            s,
            "vigil_pending_acquires",
            "Callers of get() waiting for a slot.",
            None,
            Gauge,
            |st| one(gauge(st.pending)),
        )?;
        family(
            e,
            s,
            "vigil_connections_created",
            "Connections opened.",
            None,
            Counter,
            |st| one(C(st.created)),
        )?;
        family(
            e,
            s,
            "vigil_connection_errors",
            "Connect attempts that failed.",
            None,
            Counter,
            |st| one(C(st.connect_errors)),
        )?;
        family(
            e,
            s,
            "vigil_connections_closed",
            "Connections closed, by liveness reason.",
            None,
            Counter,
            |st| {
                Reason::ALL
                    .iter()
                    .map(|r| (Some(("reason", r.as_str())), C(st.closed.get(*r))))
                    .collect()
            },
        )?;
        family(
            e,
            s,
            "vigil_acquire_timeouts",
            "get() calls that ran out of acquire_timeout.",
            None,
            Counter,
            |st| one(C(st.acquire_timeouts)),
        )?;
        family(
            e,
            s,
            "vigil_validations",
            "Checkout validations: ok, failed, skipped inside the bypass window, or hedged (silent past the hedge delay).",
            None,
            Counter,
            |st| {
                vec![
                    (Some(("result", "ok")), C(st.validations_ok)),
                    (Some(("result", "failed")), C(st.validations_failed)),
                    (Some(("result", "skipped")), C(st.validations_skipped)),
                    (Some(("result", "hedged")), C(st.validations_hedged)),
                ]
            },
        )?;
        family(
            e,
            s,
            "vigil_retries",
            "Work Pool::run_idempotent ran a second time: its connection's session had ended, or its server had turned read-only.",
            None,
            Counter,
            |st| {
                vec![
                    (Some(("reason", "session_ended")), C(st.retries)),
                    (Some(("reason", "role_changed")), C(st.retries_role_changed)),
                ]
            },
        )?;
        family(
            e,
            s,
            "vigil_queries_cancelled",
            "Statements a borrower left running (a query future dropped mid-flight) that the server was asked to stop.",
            None,
            Counter,
            |st| one(C(st.queries_cancelled)),
        )?;
        family(
            e,
            s,
            "vigil_acquires_rejected",
            "get() calls refused at once because max_waiters were waiting.",
            None,
            Counter,
            |st| one(C(st.rejected)),
        )?;
        family(
            e,
            s,
            "vigil_leaks_suspected",
            "Guards held longer than leak_threshold.",
            None,
            Counter,
            |st| one(C(st.leaks_suspected)),
        )?;
        family(
            e,
            s,
            "vigil_server_idle_timeout",
            "The server's idle timeout seen on the newest connection; 0 when none.",
            secs,
            Gauge,
            |st| {
                one(Value::GaugeF(
                    st.server_idle_timeout
                        .flatten()
                        .map_or(0.0, |d| d.as_secs_f64()),
                ))
            },
        )?;
        family(
            e,
            s,
            "vigil_learned_idle_cutoff",
            "The idle cutoff in force that the server does not announce (a NAT, load balancer or proxy): learned from connections found dead after idling, or set; 0 when none.",
            secs,
            Gauge,
            |st| {
                one(Value::GaugeF(
                    st.idle_cutoff.map_or(0.0, |d| d.as_secs_f64()),
                ))
            },
        )?;
        family(
            e,
            s,
            "vigil_acquire_duration",
            "Time from get() to a connection or an error.",
            secs,
            Histogram,
            |st| one(Value::Histogram(st.acquire_duration)),
        )?;
        family(
            e,
            s,
            "vigil_connection_usage",
            "Time connections were lent out.",
            secs,
            Histogram,
            |st| one(Value::Histogram(st.usage_duration)),
        )?;
        family(
            e,
            s,
            "vigil_connect_duration",
            "Time to open a connection.",
            secs,
            Histogram,
            |st| one(Value::Histogram(st.connect_duration)),
        )?;
        Ok(())
    }
}
