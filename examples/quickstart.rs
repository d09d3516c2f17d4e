//! vigil in one screen: a pool over an in-memory SQLite database (no server),
//! a few tasks querying it concurrently, and the pool's state.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::Duration;

use vigil::backend::sqlx::SqliteManager;
use vigil::Pool;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One in-memory database shared by all the pool's connections (a plain
    // `sqlite::memory:` would give each connection its own empty database).
    let manager = SqliteManager::from_url("sqlite:file:vigil_demo?mode=memory&cache=shared")?;
    let pool = Pool::builder(manager)
        .max_size(4)
        .acquire_timeout(Duration::from_secs(5))
        // Opens one connection now, so a bad URL fails here, not on first use.
        .connect()
        .await?;

    let mut conn = pool.get().await?;
    sqlx::query("CREATE TABLE visits (worker INTEGER, n INTEGER)")
        .execute(&mut *conn)
        .await?;
    drop(conn); // back to the pool

    // Eight tasks share four connections.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let pool = pool.clone();
        tasks.spawn(async move {
            for n in 0..25 {
                let mut conn = pool.get().await?;
                sqlx::query("INSERT INTO visits VALUES (?, ?)")
                    .bind(worker)
                    .bind(n)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?.map_err(|e| e.to_string())?;
    }

    let mut conn = pool.get().await?;
    let (rows, workers): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT worker) FROM visits")
            .fetch_one(&mut *conn)
            .await?;
    drop(conn);
    println!("{rows} rows written by {workers} tasks");

    // A snapshot of the pool: gauges, counters, and why connections closed.
    let s = pool.state();
    println!("pool.state():");
    println!(
        "  open {} = idle {} + active {} (max {}), connecting {}, waiting {}",
        s.open, s.idle, s.active, s.max_size, s.connecting, s.pending
    );
    println!(
        "  connections opened {}, connect errors {}, closed {}",
        s.created,
        s.connect_errors,
        s.closed.total()
    );
    println!(
        "  checkouts {} (mean wait {:?}); validations: skipped {} (used within 500 ms), ok {}, failed {}",
        s.acquire_duration.count,
        s.acquire_duration
            .sum
            .checked_div(s.acquire_duration.count.max(1) as u32)
            .unwrap_or_default(),
        s.validations_skipped,
        s.validations_ok,
        s.validations_failed
    );
    println!(
        "  server idle timeout: {}",
        match s.server_idle_timeout {
            Some(Some(t)) => format!("{t:?}"),
            Some(None) => "none (SQLite has no server)".into(),
            None => "unknown (no connection yet)".into(),
        }
    );

    pool.close().await;
    Ok(())
}
