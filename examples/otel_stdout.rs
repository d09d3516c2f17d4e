//! vigil's OpenTelemetry instruments (feature `otel`) exported to stdout:
//! a pool on in-memory SQLite, a few checkouts, one export.
//!
//! ```text
//! cargo run --example otel_stdout --features otel
//! ```
//! For OTLP, build the `SdkMeterProvider` with `opentelemetry-otlp`'s
//! exporter instead; the registration is the same.

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use vigil::backend::sqlx::SqliteManager;
use vigil::Pool;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exporter = opentelemetry_stdout::MetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter).build())
        .build();
    let pool = Pool::builder(SqliteManager::from_url("sqlite::memory:")?)
        .name("orders")
        .max_size(4)
        .build()?;
    let _instruments = vigil::otel::register(&provider.meter("vigil"), &pool);
    for _ in 0..10 {
        let mut conn = pool.get().await?;
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
    }
    provider.force_flush()?; // prints db.client.connection.* to stdout
    provider.shutdown()?;
    Ok(())
}
