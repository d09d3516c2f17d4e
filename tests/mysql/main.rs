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

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use vigil::backend::mysql::MySqlManager;

const URL: &str = "mysql://root@127.0.0.1:3306/test";

fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn base() -> OptsBuilder {
    OptsBuilder::from_opts(Opts::from_url(URL).expect("the test URL parses"))
}

fn manager() -> MySqlManager {
    MySqlManager::new(base().into())
}

/// A manager whose connections run `init` once when opened.
fn manager_with_init(init: &[&str]) -> MySqlManager {
    MySqlManager::new(base().init(init.to_vec()).into())
}

/// A connection outside any pool, for looking at and acting on the server.
async fn admin() -> Conn {
    Conn::new(Opts::from_url(URL).expect("the test URL parses"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need MariaDB at 127.0.0.1:3306 (user root, no password, \
                 database `test`), and it is not usable: {e}"
            )
        })
}

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, SeqCst)
    )
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
