//! Request-scoped connections (`vigil::scope`) driven by real HTTP/1.1
//! requests to an axum app, against the real PostgreSQL (127.0.0.1:5432,
//! trust auth, user `postgres`, database `test`) through sqlx and the real
//! MariaDB (127.0.0.1:3306, user `root`, no password, database `test`)
//! through mysql_async; plus the wiring and error paths on the in-process
//! fake manager.
//!
//! Each database test is written once, generic over [`Backend`], and run on
//! both servers. The tests fail loudly when a server is missing (the table
//! each creates first needs it). They change no global server setting (only
//! session state, which is the point), name their tables and PostgreSQL
//! `application_name`s uniquely, and can run in parallel (one process per
//! test under nextest). Run with `RUST_LOG=vigil=trace` to see the scope's
//! events.

mod backends;
mod http;
mod panics_and_cancels;
mod routes;
mod sessions;
mod stragglers;
#[path = "../support/mod.rs"]
mod support;
mod wiring;

use std::time::Duration;

use support::db::trace;
use support::eventually;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A name no other test or run uses (PostgreSQL keeps 63 bytes).
fn unique(tag: &str) -> String {
    support::db::unique(&format!("vigil_{tag}"))
}
