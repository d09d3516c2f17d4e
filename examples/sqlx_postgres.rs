//! vigil over sqlx against a local PostgreSQL: sqlx's query API on a pooled
//! connection, and a returned connection verified off the caller's path.
//!
//! ```text
//! cargo run --example sqlx_postgres --features postgres   # postgres@127.0.0.1:5432/test
//! ```

use std::time::Duration;

use vigil::backend::sqlx::PgManager;
use vigil::Pool;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = Pool::builder(PgManager::from_url(&url)?)
        .max_size(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut conn = pool.get().await?;
    let now: String = sqlx::query_scalar("SELECT now()::text")
        .fetch_one(&mut *conn)
        .await?;
    drop(conn);
    println!("server time {now}; {:?}", pool.state().closed);
    pool.close().await;
    Ok(())
}
