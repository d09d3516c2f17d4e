//! Lifecycle hooks over tokio-postgres: session settings every borrower
//! sees (even after the full reset that wipes them), and a rule that
//! refuses sessions a borrower left in a state the next one must not get.
//!
//! ```text
//! cargo run --example hooks --features tokio-postgres   # postgres@127.0.0.1:5432/test
//! DATABASE_URL=postgres://user:pass@host/db cargo run --example hooks --features tokio-postgres
//! ```

use std::time::Duration;

use vigil::backend::tokio_postgres::TokioPgManager;
use vigil::{Pool, Pooled, Reason};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        "postgres://postgres@127.0.0.1:5432/test?application_name=vigil_hooks_example".into()
    });
    let pool = Pool::builder(TokioPgManager::from_url(&url)?)
        // One session, so each `get` below waits for the previous return
        // (and its hooks) to finish: the output is the same on every run.
        .max_size(1)
        .acquire_timeout(Duration::from_secs(5))
        // Each new session, and each session after a full reset: the pool
        // reads the server's idle timeout after this, so it obeys it too.
        .after_connect(|conn, meta| {
            Box::pin(async move {
                conn.batch_execute(
                    "SET statement_timeout = '2s'; SET idle_session_timeout = '60s'",
                )
                .await?;
                println!("after_connect: session {} set up", meta.id);
                Ok(())
            })
        })
        // A borrower that assumed another role: closed, never lent on.
        .after_release(|conn, _meta| {
            Box::pin(async move {
                let role: String = conn.query_one("SHOW role", &[]).await?.get(0);
                Ok(role == "none")
            })
        })
        // Sessions older than an hour are not lent (a rule of the service's
        // own, on top of the pool's liveness checks).
        .before_acquire(|_conn, meta| {
            Box::pin(async move { Ok(meta.age < Duration::from_secs(3600)) })
        })
        .connect()
        .await?;

    let mut conn = pool.get().await?;
    let timeout: String = conn.query_one("SHOW statement_timeout", &[]).await?.get(0);
    println!("statement_timeout seen by the borrower: {timeout}");
    // This borrower changes the setting and asks for a full reset
    // (DISCARD ALL), which would lose the hook's settings: it runs again.
    conn.batch_execute("SET statement_timeout = '1min'").await?;
    Pooled::reset_on_return(&mut conn);
    drop(conn);

    let conn = pool.get().await?;
    let timeout: String = conn.query_one("SHOW statement_timeout", &[]).await?.get(0);
    println!("after DISCARD ALL the next borrower sees: {timeout}");
    conn.batch_execute("SET ROLE pg_read_all_data").await?;
    drop(conn);

    let conn = pool.get().await?;
    let role: String = conn.query_one("SHOW role", &[]).await?.get(0);
    drop(conn);
    let s = pool.state();
    println!(
        "the next borrower's role: {role}; refused by a hook: {}; server idle timeout read: {:?}",
        s.closed.get(Reason::Refused),
        s.server_idle_timeout.flatten()
    );
    pool.close().await;
    Ok(())
}
