//! vigil over tokio-postgres against a local PostgreSQL: sessions killed
//! from outside are seen without a round trip and never lent.
//!
//! ```text
//! cargo run --example tokio_postgres --features tokio-postgres   # postgres@127.0.0.1:5432/test
//! DATABASE_URL=postgres://user:pass@host/db cargo run --example tokio_postgres --features tokio-postgres
//! ```

use std::time::Duration;

use vigil::backend::tokio_postgres::TokioPgManager;
use vigil::{Pool, Reason};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        "postgres://postgres@127.0.0.1:5432/test?application_name=vigil_example".into()
    });
    let pool = Pool::builder(TokioPgManager::from_url(&url)?)
        .max_size(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect()
        .await?;

    // An idle session of the pool ended from outside, as an idle timeout,
    // a failover or a DBA would: `b` kills `a` while `a` sits idle.
    let (a, b) = (pool.get().await?, pool.get().await?);
    let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    drop(a);
    b.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // While `b` is held, the only idle connection is the killed one: it is
    // retired as `broken` at checkout, without a ping, and a new one lent.
    let c = pool.get().await?;
    let one: i32 = c.query_one("SELECT 1", &[]).await?.get(0);
    drop((b, c));
    let s = pool.state();
    println!(
        "query returned {one}; retired broken: {}; pings sent: {}",
        s.closed.get(Reason::Broken),
        s.validations_ok + s.validations_failed
    );
    pool.close().await;
    Ok(())
}
