//! `MySqlManager` against the real MariaDB at 127.0.0.1:3306 (user `root`, no
//! password, database `test`).
//!
//! These tests fail loudly when the server is missing. They change no global
//! server setting (timeouts are set per session with `init` commands), kill
//! only connections their own pools opened, and name their tables and
//! databases uniquely, so they can run in parallel (one process per test
//! under nextest). Run with `RUST_LOG=vigil=debug` to see the pool's events.

mod bad_input;
mod contention;
mod discovery;
mod kills;
mod round_trips;
mod session_state;
#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use vigil::backend::mysql::MySqlManager;

use support::db::{maria_admin as admin, maria_opts, trace, unique};

fn base() -> OptsBuilder {
    OptsBuilder::from_opts(maria_opts())
}

fn manager() -> MySqlManager {
    MySqlManager::new(base().into())
}

/// A manager whose connections run `init` once when opened.
fn manager_with_init(init: &[&str]) -> MySqlManager {
    MySqlManager::new(base().init(init.to_vec()).into())
}

/// Which of `ids` the server still lists as sessions.
async fn listed(admin: &mut Conn, ids: &[u32]) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let list = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    admin
        .query(format!(
            "SELECT ID FROM information_schema.processlist WHERE ID IN ({list})"
        ))
        .await
        .expect("read the process list")
}

/// Polls the process list until none of `ids` is listed.
async fn wait_until_gone(admin: &mut Conn, ids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let still = listed(admin, ids).await;
        if still.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sessions {still:?} still listed after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn error_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}
