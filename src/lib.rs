//! vigil: an async database connection pool that never lends a dead connection.
//!
//! Connections die while they sit idle: the server's own idle timeout
//! (MySQL `wait_timeout`, PostgreSQL `idle_session_timeout`), a proxy, a NAT
//! or a load balancer closes them. vigil reads the server's timeout from each
//! new session and retires connections before it fires; pings a connection at
//! checkout only when it has been silent longer than a short bypass window
//! (so a busy pool pays no ping tax); rolls back what a borrower left open;
//! and keeps the truth in counters ([`Pool::state`], and Prometheus with the
//! `metrics` feature). The rules that keep or retire a connection for its
//! own state are pure functions in [`liveness`] ([`liveness::assess`], and
//! [`liveness::at_checkout`] with the ping rules), asked at checkout, at
//! return and by the background housekeeper.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use vigil::{backend::sqlx::SqliteManager, Pool, Reason};
//!
//! let pool = Pool::builder(SqliteManager::from_url("sqlite::memory:")?)
//!     .max_size(4)
//!     .acquire_timeout(Duration::from_secs(5))
//!     .build()?;
//!
//! let mut conn = pool.get().await?; // a live connection
//! let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?;
//! assert_eq!(one, 1);
//! drop(conn); // back to the pool, synchronously
//!
//! let state = pool.state();
//! assert_eq!((state.open, state.idle), (1, 1));
//! assert_eq!(state.closed.get(Reason::ServerTimeout), 0);
//! pool.close().await;
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
//!
//! Any database works through the [`Manager`] trait; the backends vigil
//! provides are behind features.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` (default) | [`backend::sqlx::SqliteManager`] (sqlx) |
//! | `postgres` | [`backend::sqlx::PgManager`] (sqlx) |
//! | `sqlx-mysql` | `backend::sqlx::MySqlSqlxManager` (sqlx) |
//! | `tokio-postgres` | `backend::tokio_postgres::TokioPgManager`: PostgreSQL whose dead sessions are seen without a round trip |
//! | `mysql` | `backend::mysql::MySqlManager` (mysql_async) |
//! | `tls` | TLS to the database for every enabled backend (rustls, ring) |
//! | `metrics` | `metrics::Metrics`: a prometheus-client exporter read at scrape time |
//! | `otel` | `otel::register`: the OpenTelemetry semantic-convention instruments (`db.client.connection.*`) |
//! | `metrics-server` | `server::serve`: `/metrics` and `/status` over HTTP (axum) |
//! | `bb8` | `bb8::Bb8Manager`: vigil's liveness under an existing bb8 pool |
//! | `tower` | `scope`: request-scoped connections, a tower `Layer` and an axum extractor |
//! | `cli` | the `vigil` binary: `vigil load` (with `--report`), `vigil probe`, `vigil report` |
//!
//! Each backend has an example that runs against a local server:
//! `cargo run --example quickstart` (SQLite, no server), `--example mysql
//! --features mysql`, `--example tokio_postgres --features tokio-postgres`,
//! `--example sqlx_postgres --features postgres`, `--example sqlx_mysql
//! --features sqlx-mysql`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod backend;
#[cfg(feature = "bb8")]
#[cfg_attr(docsrs, doc(cfg(feature = "bb8")))]
pub mod bb8;
mod config;
mod error;
pub mod keyed;
pub mod liveness;
mod manager;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
mod pool;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod scope;
#[cfg(feature = "metrics-server")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics-server")))]
pub mod server;
mod stats;

pub use config::{Config, Hedge, IdleCutoff, Validation, VerifyOnReturn};
pub use error::{
    BlockingError, BuildError, ConfigError, ConnectError, Error, RunError, TimeoutPhase,
};
pub use liveness::Reason;
pub use manager::{
    BrokenDetection, Capabilities, Cleaned, Cleanup, ErrorClass, Manager, ServerTimeouts, Session,
};
pub use pool::{Builder, ConnectionMetadata, HookFuture, Pool, Pooled, SetUpHook, VetHook, Work};
pub use stats::{ClosedCounts, ConnectionInfo, ConnectionState, HistogramSnapshot, State};
