//! An axum app on PostgreSQL with request-scoped connections and `/metrics`.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/test \
//!   cargo run --example axum_app --features tower,metrics-server,postgres
//!
//! curl localhost:3000/remember/alice   # sets a session variable, leaves a transaction open
//! curl localhost:3000/recall           # same backend (pool of 1), nothing left behind
//! curl localhost:3000/metrics          # the pool's gauges and counters
//! curl localhost:3000/status           # per-connection JSON
//! ```
//!
//! The pool has one connection so every request lands on the same
//! PostgreSQL backend: `/recall` shows the pid `/remember` used, and that the
//! variable and the transaction `/remember` left behind are gone. Listens on
//! `ADDR` (default `127.0.0.1:3000`).

use std::net::SocketAddr;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sqlx::Executor;
use vigil::backend::sqlx::PgManager;
use vigil::metrics::Metrics;
use vigil::scope::{RequestScopeLayer, ScopeError, Scoped};
use vigil::Pool;

/// Everything a handler can fail with, as a response.
enum AppError {
    /// No connection (503) or a wiring mistake (500); see `ScopeError`.
    Scope(ScopeError<sqlx::Error>),
    Db(sqlx::Error),
}

impl From<ScopeError<sqlx::Error>> for AppError {
    fn from(e: ScopeError<sqlx::Error>) -> Self {
        AppError::Scope(e)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Db(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Scope(e) => e.into_response(),
            AppError::Db(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

/// Leaves session state behind on purpose: a session variable and an open
/// transaction (a raw `BEGIN`, invisible to sqlx). The request scope resets
/// both when the request ends.
async fn remember(db: Scoped<PgManager>, Path(name): Path<String>) -> Result<String, AppError> {
    let mut conn = db.conn().await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("SELECT set_config('app.name', $1, false)")
        .bind(&name)
        .execute(&mut *conn)
        .await?;
    conn.execute(sqlx::raw_sql("BEGIN")).await?;
    Ok(format!(
        "backend {pid}: app.name = {name:?}, transaction left open\n"
    ))
}

/// Reads what `/remember` left, with two separate calls to the scope: both
/// are served by the same connection.
async fn recall(db: Scoped<PgManager>) -> Result<String, AppError> {
    let pid: i32 = {
        let mut conn = db.conn().await?;
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await?
    };
    let mut conn = db.conn().await?;
    let name: Option<String> = sqlx::query_scalar("SELECT current_setting('app.name', true)")
        .fetch_one(&mut *conn)
        .await?;
    let in_transaction = conn.execute(sqlx::raw_sql("SAVEPOINT probe")).await.is_ok();
    Ok(format!(
        "backend {pid}: app.name = {:?}, in a transaction: {in_transaction}\n",
        name.unwrap_or_default()
    ))
}

/// Never touches the database: no connection is taken for it.
async fn health() -> &'static str {
    "ok\n"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/test".to_owned());
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()?;

    // `connect`: a wrong URL fails here, at once, with the driver's error.
    let pool = Pool::builder(PgManager::from_url(&url)?)
        .name("app")
        .max_size(1)
        .connect()
        .await?;
    let metrics = Metrics::new();
    metrics.add(&pool);

    let app = Router::new()
        .route("/remember/{name}", get(remember))
        .route("/recall", get(recall))
        .route("/health", get(health))
        // Applies to the routes above; `/metrics` and `/status`, merged
        // below, take no connection.
        .layer(RequestScopeLayer::new(pool.clone()))
        .merge(vigil::server::router(metrics));

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    pool.close().await;
    Ok(())
}
