//! OpenTelemetry metrics (feature `otel`): the semantic conventions'
//! instruments for database client connection pools, for each pool you
//! register, on the `opentelemetry` crate's metrics API.
//!
//! | instrument | kind | unit | attributes |
//! |---|---|---|---|
//! | `db.client.connection.count` | up-down counter | `{connection}` | `db.client.connection.state` = `idle` \| `used` |
//! | `db.client.connection.max` | up-down counter | `{connection}` | |
//! | `db.client.connection.idle.min` | up-down counter | `{connection}` | |
//! | `db.client.connection.pending_requests` | up-down counter | `{request}` | |
//! | `db.client.connection.timeouts` | counter | `{timeout}` | |
//! | `db.client.connection.create_time` | histogram | `s` | |
//! | `db.client.connection.wait_time` | histogram | `s` | |
//! | `db.client.connection.use_time` | histogram | `s` | |
//!
//! Every series carries `db.client.connection.pool.name` (the pool's
//! [`name`](crate::Config::name)). `used` counts what [`State::active`]
//! counts: lent connections and those the pool holds for a ping or a reset.
//!
//! Nothing here runs on `get()` or drop: the counters and gauges are
//! observable instruments whose callbacks read [`Pool::state`] when the SDK
//! collects, the same relaxed atomics the Prometheus exporter reads. The
//! API has no observable histogram, so at each collection the callback
//! feeds the three histograms what vigil's own histograms gained since the
//! last one: each observation at its bucket's upper bound, with the same
//! bucket boundaries ([`HistogramSnapshot::bounds`]), so bucket counts and
//! the count are exact while sum, min and max are those upper bounds (an
//! overestimate of at most one bucket). The registration holds the pool
//! weakly: a dropped pool stops reporting.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use opentelemetry::metrics::MeterProvider as _;
//! use opentelemetry_sdk::metrics::SdkMeterProvider;
//! use vigil::{backend::sqlx::SqliteManager, Pool};
//!
//! let provider = SdkMeterProvider::builder().build(); // add your exporter's reader
//! let meter = provider.meter("vigil");
//! let pool = Pool::builder(SqliteManager::from_url("sqlite::memory:").unwrap())
//!     .name("orders")
//!     .build()
//!     .unwrap();
//! let _instruments = vigil::otel::register(&meter, &pool);
//! # });
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};

use opentelemetry::metrics::{Histogram, Meter, ObservableCounter, ObservableUpDownCounter};
use opentelemetry::KeyValue;

use crate::stats::{HistogramSnapshot, State};
use crate::{Manager, Pool};

/// The pool-name attribute of every series.
pub const POOL_NAME: &str = "db.client.connection.pool.name";
/// The state attribute of `db.client.connection.count`.
pub const STATE: &str = "db.client.connection.state";

/// The instruments of one registered pool; they report while this lives
/// (and the meter provider does).
pub struct Registration {
    _count: ObservableUpDownCounter<i64>,
    _max: ObservableUpDownCounter<i64>,
    _idle_min: ObservableUpDownCounter<i64>,
    _pending: ObservableUpDownCounter<i64>,
    _timeouts: ObservableCounter<u64>,
    pool: String,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The three duration histograms, fed at each collection with what vigil's
/// own histograms gained since the previous one.
struct Feeder {
    create: Histogram<f64>,
    wait: Histogram<f64>,
    use_: Histogram<f64>,
    seen: Mutex<Option<[HistogramSnapshot; 3]>>,
}

impl Feeder {
    fn feed(&self, state: &State, attrs: &[KeyValue]) {
        let now = [
            state.connect_duration,
            state.acquire_duration,
            state.usage_duration,
        ];
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (i, hist) in [&self.create, &self.wait, &self.use_]
            .into_iter()
            .enumerate()
        {
            let before = seen.as_ref().map(|s| s[i].counts);
            for (b, (bound, count)) in now[i].buckets().enumerate() {
                let gained = count - before.map_or(0, |c| c[b]);
                // The `+Inf` bucket's observations go just past the last bound.
                let at = if bound.is_finite() {
                    bound
                } else {
                    HistogramSnapshot::bounds().last().copied().unwrap_or(1.0) * 2.0
                };
                for _ in 0..gained {
                    hist.record(at, attrs);
                }
            }
        }
        *seen = Some(now);
    }
}

/// Registers `pool`'s instruments on `meter`.
pub fn register<M: Manager>(meter: &Meter, pool: &Pool<M>) -> Registration {
    let observer = Arc::new(pool.observer());
    let name = observer.name.clone();
    let attrs = Arc::new([KeyValue::new(POOL_NAME, name.clone())]);
    let bounds = HistogramSnapshot::bounds().to_vec();
    let histogram = |name: &'static str, what: &'static str| {
        meter
            .f64_histogram(name)
            .with_unit("s")
            .with_description(what)
            .with_boundaries(bounds.clone())
            .build()
    };
    let feeder = Arc::new(Feeder {
        create: histogram(
            "db.client.connection.create_time",
            "The time it took to create a new connection.",
        ),
        wait: histogram(
            "db.client.connection.wait_time",
            "The time it took to obtain an open connection from the pool.",
        ),
        use_: histogram(
            "db.client.connection.use_time",
            "The time between borrowing a connection and returning it to the pool.",
        ),
        seen: Mutex::new(None),
    });
    // An observable instrument whose callback reports `value(state)`.
    let gauge =
        |name: &'static str, unit: &'static str, what: &'static str, value: fn(&State) -> i64| {
            let (observer, attrs) = (Arc::clone(&observer), Arc::clone(&attrs));
            meter
                .i64_observable_up_down_counter(name)
                .with_unit(unit)
                .with_description(what)
                .with_callback(move |o| {
                    if let Some(state) = (observer.state)() {
                        o.observe(value(&state), &attrs[..]);
                    }
                })
                .build()
        };
    let count = {
        let (observer, attrs, feeder) = (
            Arc::clone(&observer),
            Arc::clone(&attrs),
            Arc::clone(&feeder),
        );
        meter
            .i64_observable_up_down_counter("db.client.connection.count")
            .with_unit("{connection}")
            .with_description(
                "The number of connections that are currently in state described by the state attribute.",
            )
            .with_callback(move |o| {
                let Some(state) = (observer.state)() else {
                    return;
                };
                let with = |s: &'static str| [attrs[0].clone(), KeyValue::new(STATE, s)];
                o.observe(to_i64(state.idle), &with("idle"));
                o.observe(to_i64(state.active), &with("used"));
                feeder.feed(&state, &attrs[..]);
            })
            .build()
    };
    let timeouts = {
        let (observer, attrs) = (Arc::clone(&observer), Arc::clone(&attrs));
        meter
            .u64_observable_counter("db.client.connection.timeouts")
            .with_unit("{timeout}")
            .with_description(
                "The number of connection timeouts that have occurred trying to obtain a connection from the pool.",
            )
            .with_callback(move |o| {
                if let Some(state) = (observer.state)() {
                    o.observe(state.acquire_timeouts, &attrs[..]);
                }
            })
            .build()
    };
    Registration {
        _count: count,
        _max: gauge(
            "db.client.connection.max",
            "{connection}",
            "The maximum number of open connections allowed.",
            |s| to_i64(s.max_size),
        ),
        _idle_min: gauge(
            "db.client.connection.idle.min",
            "{connection}",
            "The minimum number of idle open connections allowed.",
            |s| to_i64(s.min_idle),
        ),
        _pending: gauge(
            "db.client.connection.pending_requests",
            "{request}",
            "The number of current pending requests for an open connection.",
            |s| to_i64(s.pending),
        ),
        _timeouts: timeouts,
        pool: name,
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
