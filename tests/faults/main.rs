//! The fault suite (issue #5): vigil under network and server faults,
//! against real MariaDB and PostgreSQL, each scenario under load (64 tasks,
//! a pool of 8).
//!
//! - [`proxy`]: a loopback TCP proxy between the pool and the server that
//!   resets, black-holes, delays or refuses connections on command;
//! - [`servers`]: private PostgreSQL and MariaDB instances for the scenarios
//!   that restart or crash a server (the shared servers on 5432/3306 are
//!   never restarted and no global setting is changed);
//! - [`db`]: the servers behind one trait (PostgreSQL through sqlx and
//!   through tokio-postgres, MariaDB through mysql_async);
//! - [`harness`]: pool settings, the load generator that records every
//!   request, and the report;
//! - one module per scenario group.
//!
//! Every scenario prints one machine-readable line,
//! `RELIABILITY|scenario|server|requests|errors|dead_lent|recovery_ms|verdict|notes`,
//! before its checks are asserted; RELIABILITY.md is generated from them:
//!
//! ```sh
//! cargo test --features postgres,mysql,tokio-postgres --test faults -- --nocapture
//! ```
//!
//! The suite needs the shared servers (PostgreSQL on 5432 with database
//! `test`, MariaDB on 3306) and, for the private instances, PostgreSQL 15's
//! binaries in /usr/lib/postgresql/15/bin, `runuser` and the `postgres` OS
//! user, and `mariadb-install-db` / `mariadbd`. Nothing is skipped: a
//! missing server or binary fails the test that needs it, saying which.

mod black_hole;
mod cancel_storm;
mod db;
mod down_at_start;
mod harness;
mod idle_reset;
mod killed;
mod proxy;
mod restart;
mod servers;
#[path = "../support/mod.rs"]
mod support;
