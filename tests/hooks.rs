//! Lifecycle hooks against the real servers (PostgreSQL 127.0.0.1:5432,
//! MariaDB 127.0.0.1:3306), the way a service uses them: `SET`s in
//! `after_connect` that every borrower must see, including after the full
//! reset that wipes them; `before_acquire` / `after_release` that read the
//! session and refuse it. Each test names its sessions, so tests run in
//! parallel without counting each other's.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::task::JoinSet;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::backend::tokio_postgres::TokioPgManager;
use vigil::keyed::{Credentials, KeyedPool};
use vigil::{Pool, Pooled, Reason};

use support::db::unique;
use support::eventually;

const SEC: Duration = Duration::from_secs(1);

fn pg_url(app: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/test?application_name={app}")
}

const MARIA_URL: &str = "mysql://root@127.0.0.1:3306/test";

fn tokio_pg(app: &str) -> TokioPgManager {
    TokioPgManager::from_url(&pg_url(app)).expect("a valid URL")
}

async fn show(conn: &tokio_postgres::Client, setting: &str) -> String {
    conn.query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap_or_else(|e| panic!("SHOW {setting} (PostgreSQL at 127.0.0.1:5432): {e}"))
        .get(0)
}

/// Eight borrowers at once on a pool of four, each through the driver's
/// own query: every one sees what `after_connect` set, with and without
/// the full reset between borrowers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_after_connect_is_seen_by_every_borrower_even_after_discard_all() {
    for reset in [false, true] {
        let app = unique("hook_pg");
        let pool = Pool::builder(tokio_pg(&app))
            .max_size(4)
            .reset_on_return(reset)
            .acquire_timeout(10 * SEC)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.batch_execute(
                        "SET search_path TO vigil_hooked, public; SET statement_timeout = '4321ms'",
                    )
                    .await
                })
            })
            .build()
            .unwrap();
        let mut borrowers = JoinSet::new();
        for _ in 0..8 {
            let pool = pool.clone();
            borrowers.spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..10 {
                    let conn = pool.get().await.expect("a connection");
                    seen.push((
                        show(&conn, "search_path").await,
                        show(&conn, "statement_timeout").await,
                    ));
                    // A borrower that changes the setting itself: the full
                    // reset (when on) must undo it and the hook set it again.
                    if reset {
                        conn.batch_execute("SET statement_timeout = '1s'")
                            .await
                            .unwrap();
                    }
                }
                seen
            });
        }
        while let Some(seen) = borrowers.join_next().await {
            for (path, timeout) in seen.unwrap() {
                assert_eq!(path, "vigil_hooked, public", "reset_on_return {reset}");
                assert_eq!(timeout, "4321ms", "reset_on_return {reset}");
            }
        }
        let s = pool.state();
        assert!(s.created <= 4, "hooks ran on reused sessions: {s:?}");
        pool.close().await;
    }
}

/// The pool reads the server's idle timeout after `after_connect`: a hook
/// that sets `idle_session_timeout` (or `wait_timeout`) is obeyed.
#[tokio::test]
async fn a_server_timeout_set_in_after_connect_is_the_one_the_pool_reads() {
    let app = unique("hook_pg_idle");
    let pool = Pool::builder(tokio_pg(&app))
        .after_connect(|conn, _meta| {
            Box::pin(async move { conn.batch_execute("SET idle_session_timeout = '37s'").await })
        })
        .connect()
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    assert_eq!(pool.state().server_idle_timeout, Some(Some(37 * SEC)));

    let pool = Pool::builder(MySqlManager::from_url(MARIA_URL).unwrap())
        .after_connect(|conn, _meta| {
            Box::pin(async move { conn.query_drop("SET SESSION wait_timeout = 41").await })
        })
        .connect()
        .await
        .expect("MariaDB at 127.0.0.1:3306");
    assert_eq!(pool.state().server_idle_timeout, Some(Some(41 * SEC)));
}

/// MariaDB: a user variable set in `after_connect` survives
/// `COM_RESET_CONNECTION` (which clears user variables) because the hook
/// runs again, for every borrower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_after_connect_is_seen_by_every_borrower_even_after_reset_connection() {
    for reset in [false, true] {
        let pool = Pool::builder(MySqlManager::from_url(MARIA_URL).unwrap())
            .max_size(4)
            .reset_on_return(reset)
            .acquire_timeout(10 * SEC)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.query_drop("SET @tenant = 'acme', SESSION sql_mode = 'ANSI_QUOTES'")
                        .await
                })
            })
            .build()
            .unwrap();
        let mut borrowers = JoinSet::new();
        for _ in 0..8 {
            let pool = pool.clone();
            borrowers.spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..10 {
                    let mut conn = pool.get().await.expect("a connection");
                    let row: (Option<String>, String) = conn
                        .query_first("SELECT @tenant, @@session.sql_mode")
                        .await
                        .expect("MariaDB at 127.0.0.1:3306")
                        .unwrap();
                    seen.push(row);
                    if reset {
                        conn.query_drop("SET @tenant = 'someone else'")
                            .await
                            .unwrap();
                    }
                }
                seen
            });
        }
        while let Some(seen) = borrowers.join_next().await {
            for (tenant, mode) in seen.unwrap() {
                assert_eq!(tenant.as_deref(), Some("acme"), "reset_on_return {reset}");
                assert_eq!(mode, "ANSI_QUOTES", "reset_on_return {reset}");
            }
        }
        pool.close().await;
    }
}

/// sqlx's PostgreSQL backend: the same hook, through sqlx's own executor.
#[tokio::test]
async fn sqlx_after_connect_is_seen_after_a_full_reset() {
    let app = unique("hook_sqlx");
    let manager = PgManager::from_url(&pg_url(&app)).unwrap();
    let pool = Pool::builder(manager)
        .max_size(1)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlx::Executor::execute(conn, "SET application_name = 'vigil_sqlx_hooked'")
                    .await
                    .map(drop)
            })
        })
        .build()
        .unwrap();
    for _ in 0..3 {
        let mut conn = pool.get().await.expect("PostgreSQL at 127.0.0.1:5432");
        let name: String = sqlx::query_scalar("SHOW application_name")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(name, "vigil_sqlx_hooked");
        Pooled::reset_on_return(&mut conn);
    }
    assert_eq!(pool.state().created, 1);
}

/// `before_acquire` reads the session through the driver and refuses one a
/// borrower left marked; the next borrower gets a clean session.
#[tokio::test]
async fn mariadb_before_acquire_refuses_a_session_left_marked() {
    let pool = Pool::builder(MySqlManager::from_url(MARIA_URL).unwrap())
        .max_size(2)
        .before_acquire(|conn, _meta| {
            Box::pin(async move {
                let marked: Option<Option<i64>> = conn.query_first("SELECT @tainted").await?;
                Ok(marked.flatten().is_none())
            })
        })
        .build()
        .unwrap();
    let mut conn = pool.get().await.expect("MariaDB at 127.0.0.1:3306");
    let tainted_id = conn.id();
    conn.query_drop("SET @tainted = 1").await.unwrap();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_ne!(conn.id(), tainted_id, "the marked session was not lent");
    let marked: Option<Option<i64>> = conn.query_first("SELECT @tainted").await.unwrap();
    assert_eq!(marked.flatten(), None);
    drop(conn);
    let s = pool.state();
    assert_eq!((s.closed.get(Reason::Refused), s.created), (1, 2), "{s:?}");
    // An unmarked session is kept: lent again, asked again.
    let conn = pool.get().await.unwrap();
    drop(conn);
    assert_eq!(pool.state().created, 2);
}

/// `after_release` sees what the borrower left and refuses it, before any
/// other borrower can be lent it.
#[tokio::test]
async fn postgres_after_release_refuses_a_session_left_with_a_changed_role_setting() {
    let app = unique("hook_release");
    let pool = Pool::builder(tokio_pg(&app))
        .max_size(1)
        .after_release(|conn, _meta| {
            Box::pin(async move {
                let role: String = conn.query_one("SHOW role", &[]).await?.get(0);
                Ok(role == "none")
            })
        })
        .build()
        .unwrap();
    let conn = pool.get().await.expect("PostgreSQL at 127.0.0.1:5432");
    let first = Pooled::id(&conn);
    conn.batch_execute("SET role = pg_read_all_data")
        .await
        .unwrap();
    drop(conn);
    let conn = pool.get().await.unwrap();
    assert_ne!(Pooled::id(&conn), first, "refused, not lent");
    assert_eq!(show(&conn, "role").await, "none");
    drop(conn);
    eventually!("the return to finish", 10 * SEC, pool.state().active == 0);
    let s = pool.state();
    assert_eq!((s.closed.get(Reason::Refused), s.created), (1, 2), "{s:?}");
}

/// A keyed pool: every key's sub-pool runs the builder's hooks.
#[tokio::test]
async fn keyed_after_connect_runs_for_every_key() {
    let app = unique("hook_keyed");
    let pool = KeyedPool::builder({
        let app = app.clone();
        move |key: &Credentials| tokio_pg(&format!("{app}_{}", key.user()))
    })
    .after_connect(|conn, _meta| {
        Box::pin(async move { conn.batch_execute("SET statement_timeout = '9s'").await })
    })
    .build()
    .unwrap();
    for user in ["a", "b"] {
        let conn = pool
            .get(&Credentials::new(user, ""))
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        assert_eq!(show(&conn, "statement_timeout").await, "9s");
        assert_eq!(
            show(&conn, "application_name").await,
            format!("{app}_{user}")
        );
    }
}
