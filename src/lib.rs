//! vigil: an async database connection pool that never lends a dead connection.
//!
//! Connections die while they sit idle: the server's own idle timeout
//! (MySQL `wait_timeout`, PostgreSQL `idle_session_timeout`), a proxy, a NAT
//! or a load balancer closes them. vigil reads the server's timeout from each
//! new session and retires connections before it fires; pings a connection at
//! checkout only when it has been silent longer than a short bypass window
//! (so a busy pool pays no ping tax); rolls back what a borrower left open;
//! and keeps the truth in counters ([`Pool::state`], and Prometheus with the
//! `metrics` feature). The keep-or-retire decision is one pure function,
//! [`liveness::assess`], called at checkout, at return and by the background
//! housekeeper.
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
//! Any database works through the [`Manager`] trait; `mysql` (mysql_async),
//! `postgres`, `sqlite` and `sqlx-mysql` (sqlx) are provided behind features.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod backend;
#[cfg(feature = "bb8")]
pub mod bb8;
mod config;
mod error;
pub mod keyed;
pub mod liveness;
mod manager;
#[cfg(feature = "metrics")]
pub mod metrics;
mod pool;
#[cfg(feature = "tower")]
pub mod scope;
#[cfg(feature = "metrics-server")]
pub mod server;
mod stats;

pub use config::{Config, Hedge, IdleCutoff, Validation, VerifyOnReturn};
pub use error::{
    BlockingError, BuildError, ConfigError, ConnectError, Error, RunError, TimeoutPhase,
};
pub use liveness::Reason;
pub use manager::{BrokenDetection, Manager, ServerTimeouts};
pub use pool::{Builder, Pool, Pooled, Work};
pub use stats::{ClosedCounts, ConnectionInfo, ConnectionState, HistogramSnapshot, State};
