//! The OpenTelemetry instruments (feature `otel`) read by the SDK's
//! in-memory exporter while a pool is used: names, units and attributes
//! follow the semantic conventions, and every value equals `pool.state()`.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::Value;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use vigil::backend::sqlx::SqliteManager;
use vigil::Pool;

/// What one collection held: per (instrument, state attribute) its unit,
/// value (sums) or count and bucket counts (histograms).
#[derive(Debug, Default)]
struct Seen {
    units: HashMap<String, String>,
    values: HashMap<(String, Option<String>), i64>,
    histograms: HashMap<String, (u64, Vec<u64>)>,
}

fn collect(exporter: &InMemoryMetricExporter, provider: &SdkMeterProvider) -> Seen {
    exporter.reset();
    provider.force_flush().expect("flush");
    let mut seen = Seen::default();
    let batches = exporter.get_finished_metrics().expect("metrics");
    let last = batches.last().expect("one collection");
    for scope in last.scope_metrics() {
        for metric in scope.metrics() {
            let name = metric.name().to_owned();
            seen.units.insert(name.clone(), metric.unit().to_owned());
            let pool_of = |attrs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                let mut pool = None;
                let mut state = None;
                for kv in attrs {
                    match kv.key.as_str() {
                        "db.client.connection.pool.name" => pool = Some(kv.value.clone()),
                        "db.client.connection.state" => state = Some(kv.value.to_string()),
                        _ => {}
                    }
                }
                assert_eq!(
                    pool,
                    Some(Value::from("orders")),
                    "{name}: the pool attribute"
                );
                state
            };
            match metric.data() {
                AggregatedMetrics::I64(MetricData::Sum(sum)) => {
                    for p in sum.data_points() {
                        let state = pool_of(&mut p.attributes());
                        seen.values.insert((name.clone(), state), p.value());
                    }
                }
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    for p in sum.data_points() {
                        let state = pool_of(&mut p.attributes());
                        seen.values
                            .insert((name.clone(), state), i64::try_from(p.value()).unwrap());
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        pool_of(&mut p.attributes());
                        seen.histograms
                            .insert(name.clone(), (p.count(), p.bucket_counts().collect()));
                    }
                }
                other => panic!("{name}: unexpected data {other:?}"),
            }
        }
    }
    seen
}

#[tokio::test]
async fn the_semantic_convention_instruments_equal_the_pool_state() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let meter = provider.meter("vigil-test");
    let pool = Pool::builder(SqliteManager::from_url("sqlite::memory:").unwrap())
        .name("orders")
        .max_size(3)
        .min_idle(1)
        .acquire_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let _registration = vigil::otel::register(&meter, &pool);

    let held: Vec<_> = futures::future::join_all((0..3).map(|_| pool.get())).await;
    assert!(pool.get().await.is_err(), "a fourth get times out");
    let mut held: Vec<_> = held.into_iter().map(Result::unwrap).collect();
    drop(held.pop()); // one back: idle 1, used 2

    let state = pool.state();
    let seen = collect(&exporter, &provider);
    let value = |name: &str, s: Option<&str>| seen.values[&(name.to_owned(), s.map(str::to_owned))];
    assert_eq!(
        value("db.client.connection.count", Some("idle")),
        state.idle as i64
    );
    assert_eq!(
        value("db.client.connection.count", Some("used")),
        state.active as i64
    );
    assert_eq!((state.idle, state.active), (1, 2));
    assert_eq!(value("db.client.connection.max", None), 3);
    assert_eq!(value("db.client.connection.idle.min", None), 1);
    assert_eq!(value("db.client.connection.pending_requests", None), 0);
    assert_eq!(value("db.client.connection.timeouts", None), 1);
    assert_eq!(state.acquire_timeouts, 1);
    for (name, h) in [
        ("db.client.connection.create_time", state.connect_duration),
        ("db.client.connection.wait_time", state.acquire_duration),
        ("db.client.connection.use_time", state.usage_duration),
    ] {
        let (count, buckets) = &seen.histograms[name];
        assert_eq!(*count, h.count, "{name}");
        assert_eq!(buckets, &h.counts.to_vec(), "{name}: the bucket counts");
        assert_eq!(seen.units[name], "s", "{name}");
    }
    for name in [
        "db.client.connection.count",
        "db.client.connection.max",
        "db.client.connection.idle.min",
    ] {
        assert_eq!(seen.units[name], "{connection}", "{name}");
    }
    assert_eq!(
        seen.units["db.client.connection.pending_requests"],
        "{request}"
    );
    assert_eq!(seen.units["db.client.connection.timeouts"], "{timeout}");

    // A second collection reports what changed since, not the same again.
    drop(held);
    let state = pool.state();
    let seen = collect(&exporter, &provider);
    assert_eq!(
        seen.values[&("db.client.connection.count".into(), Some("idle".into()))],
        3
    );
    assert_eq!(
        seen.histograms["db.client.connection.use_time"].0,
        state.usage_duration.count
    );
    assert_eq!(state.usage_duration.count, 3);
}
