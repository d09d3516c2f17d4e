//! The real servers the database tests run against, and what every one of
//! those tests needs around them: PostgreSQL at 127.0.0.1:5432 (trust auth,
//! user `postgres`, database `test`) and MariaDB at 127.0.0.1:3306 (user
//! `root`, no password, database `test`).
//!
//! The connections made here fail loudly, naming the server, when it is
//! missing. The PostgreSQL items need the `postgres` feature, the MariaDB
//! ones the `mysql` feature.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

#[cfg(feature = "mysql")]
use mysql_async::{Conn, Opts, OptsBuilder};
#[cfg(feature = "postgres")]
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
#[cfg(feature = "postgres")]
use sqlx::Connection;

/// Sends the test's tracing events to its output, filtered by `RUST_LOG`
/// (e.g. `RUST_LOG=vigil=debug`); a no-op after the first call.
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A name no other test or run uses: `{prefix}_{pid}_{nanos}_{counter}`.
/// PostgreSQL keeps 63 bytes of a name (an `application_name`, a role);
/// MariaDB allows 64 for a database name and 80 for a user name.
pub fn unique(prefix: &str) -> String {
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

// ---------------------------------------------------------------- PostgreSQL

/// The panic message of [`pg_admin`] (before `: {error}`).
#[cfg(feature = "postgres")]
pub const PG_NEEDED: &str = "these tests need PostgreSQL at 127.0.0.1:5432 (trust auth, user \
                             postgres, database `test`), and it is not usable";

/// Options for the shared PostgreSQL (user `postgres`, database `test`, no
/// TLS, no `.pgpass`), its sessions named `app` in `pg_stat_activity`.
/// Override what differs (`.port(…)`, `.username(…)`, …) on the result.
#[cfg(feature = "postgres")]
pub fn pg_options(app: &str) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(5432)
        .username("postgres")
        .database("test")
        .ssl_mode(PgSslMode::Disable)
        .application_name(app)
}

/// A connection with `opts`, outside any pool; panics with
/// `{needed}: {error}` when the server is not usable.
#[cfg(feature = "postgres")]
pub async fn pg_connect(opts: &PgConnectOptions, needed: &str) -> PgConnection {
    PgConnection::connect_with(opts)
        .await
        .unwrap_or_else(|e| panic!("{needed}: {e}"))
}

/// A connection to the shared PostgreSQL outside any pool, for looking at
/// and acting on the server; its session is named `app`.
#[cfg(feature = "postgres")]
pub async fn pg_admin(app: &str) -> PgConnection {
    pg_connect(&pg_options(app), PG_NEEDED).await
}

// ---------------------------------------------------------------- MariaDB

/// The shared MariaDB: user `root`, no password, database `test`.
#[cfg(feature = "mysql")]
pub const MARIA_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// The panic message of [`maria_admin`] (before `: {error}`).
#[cfg(feature = "mysql")]
pub const MARIA_NEEDED: &str = "these tests need MariaDB at 127.0.0.1:3306 (user root, no \
                                password, database `test`), and it is not usable";

/// [`MARIA_URL`] as options.
#[cfg(feature = "mysql")]
pub fn maria_opts() -> Opts {
    Opts::from_url(MARIA_URL).expect("the test URL parses")
}

/// Options for user `root` (no password, no database) at
/// 127.0.0.1:`port`, over TCP only (`prefer_socket(false)`): else
/// mysql_async reconnects over the server's unix socket once it learns of
/// it, around a proxy in front of the port. Override what differs
/// (`.user(…)`, `.db_name(…)`, …) on the result.
#[cfg(feature = "mysql")]
pub fn maria_tcp(port: u16) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false)
}

/// A connection with `opts`, outside any pool; panics with
/// `{needed}: {error}` when the server is not usable.
#[cfg(feature = "mysql")]
pub async fn maria_connect(opts: Opts, needed: &str) -> Conn {
    Conn::new(opts)
        .await
        .unwrap_or_else(|e| panic!("{needed}: {e}"))
}

/// A connection to the shared MariaDB outside any pool, for looking at and
/// acting on the server.
#[cfg(feature = "mysql")]
pub async fn maria_admin() -> Conn {
    maria_connect(maria_opts(), MARIA_NEEDED).await
}
