//! `PgManager` (sqlx) against the real PostgreSQL 15 at 127.0.0.1:5432
//! (trust auth, user `postgres`, database `test`).
//!
//! These tests fail loudly when the server is missing. They change no global
//! server setting (timeouts are set per session through the connect
//! options), give every pool its own `application_name` so they count and
//! kill only their own backends in `pg_stat_activity`, and name their tables
//! uniquely, so they can run in parallel (one process per test under
//! nextest). Run with `RUST_LOG=vigil=debug` to see the pool's events.

mod bad_input;
mod discovery;
mod kills;
mod load;
mod round_trips;
mod session_state;
#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use sqlx::postgres::PgConnection;
use vigil::backend::sqlx::PgManager;
use vigil::Pool;

use support::db::{pg_admin, pg_options, trace};
use support::eventually;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// An `application_name` no other test or run uses (PostgreSQL keeps 63 bytes).
fn unique(tag: &str) -> String {
    support::db::unique(&format!("vigil_{tag}"))
}

/// A connection outside any pool, for looking at and acting on the server.
async fn admin() -> PgConnection {
    pg_admin("vigil_test_admin").await
}

/// How many server backends carry `app` as their application_name.
async fn backends(admin: &mut PgConnection, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(admin)
        .await
        .expect("pg_stat_activity is readable")
}

/// A checkout and one query, the error as text (the two error types differ).
async fn select_one(pool: &Pool<PgManager>) -> Result<i32, String> {
    let mut conn = pool.get().await.map_err(|e| format!("get: {e}"))?;
    sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| format!("query: {e}"))
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("SELECT pg_backend_pid()")
}

fn builder(app: &str) -> vigil::Builder<PgManager> {
    Pool::builder(PgManager::new(pg_options(app)))
        .max_size(8)
        .acquire_timeout(10 * SEC)
}
