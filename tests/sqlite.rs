//! `SqliteManager` (sqlx) on in-memory SQLite: no server needed.
//!
//! Each `sqlite::memory:` connection is its own database, so tests that need
//! the same data on every connection use a uniquely named shared-cache
//! in-memory database (`sqlite:file:NAME?mode=memory&cache=shared`).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use sqlx::{Connection, Executor, SqliteConnection};
use vigil::backend::sqlx::SqliteManager;
use vigil::{Manager, Pool, Pooled, Reason, ServerTimeouts};

/// A shared in-memory database no other test uses.
fn shared_db() -> SqliteManager {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let url = format!(
        "sqlite:file:vigil_test_{}_{}?mode=memory&cache=shared",
        std::process::id(),
        NEXT.fetch_add(1, SeqCst)
    );
    SqliteManager::from_url(&url).expect("valid URL")
}

fn pool(manager: SqliteManager, max: usize) -> Pool<SqliteManager> {
    Pool::builder(manager)
        .max_size(max)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings")
}

async fn count(conn: &mut SqliteConnection, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(conn)
        .await
        .expect("count")
}

/// Asks SQLite itself (not sqlx's bookkeeping) whether a transaction is
/// open: `BEGIN` fails inside one.
async fn in_transaction(conn: &mut SqliteConnection) -> bool {
    match conn.execute(sqlx::raw_sql("BEGIN; ROLLBACK")).await {
        Ok(_) => false,
        Err(e) if e.to_string().contains("within a transaction") => true,
        Err(e) => panic!("BEGIN probe failed unexpectedly: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_connection_is_reused_not_reopened() {
    let pool = pool(SqliteManager::from_url("sqlite::memory:").expect("url"), 1);
    let first = {
        let mut conn = pool.get().await.expect("get");
        conn.execute("CREATE TABLE t (x INTEGER)")
            .await
            .expect("create");
        Pooled::id(&conn)
    };
    for _ in 0..20 {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(Pooled::id(&conn), first, "the same connection comes back");
        // The table lives in this connection's private in-memory database.
        assert_eq!(count(&mut conn, "t").await, 0);
    }
    let s = pool.state();
    assert_eq!((s.created, s.open, s.idle), (1, 1, 1), "{s:?}");
    assert_eq!(
        s.server_idle_timeout,
        Some(None),
        "SQLite has no server timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_share_a_pool_of_4() {
    let pool = pool(shared_db(), 4);
    pool.get()
        .await
        .expect("get")
        .execute("CREATE TABLE hits (task INTEGER)")
        .await
        .expect("create");
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let pool = pool.clone();
        tasks.spawn(async move {
            for _ in 0..10 {
                let mut conn = pool.get().await.expect("get");
                sqlx::query("INSERT INTO hits VALUES (?)")
                    .bind(task)
                    .execute(&mut *conn)
                    .await
                    .expect("insert");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    let mut conn = pool.get().await.expect("get");
    assert_eq!(count(&mut conn, "hits").await, 160);
    drop(conn);
    let s = pool.state();
    assert!(s.open <= 4 && s.idle + s.active == s.open, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_transaction_is_rolled_back_on_return() {
    let pool = pool(shared_db(), 1);
    let id = {
        let mut conn = pool.get().await.expect("get");
        conn.execute("CREATE TABLE t (x INTEGER)")
            .await
            .expect("create");
        let mut tx = conn.begin().await.expect("begin");
        tx.execute("INSERT INTO t VALUES (1)")
            .await
            .expect("insert");
        // Dropped without commit.
        drop(tx);
        Pooled::id(&conn)
    };
    // A leaked `Transaction`: sqlx still counts it open; the pool rolls it
    // back through sqlx so the next `begin()` is a real BEGIN.
    {
        let mut conn = pool.get().await.expect("get");
        let mut tx = conn.begin().await.expect("begin");
        tx.execute("INSERT INTO t VALUES (2)")
            .await
            .expect("insert");
        std::mem::forget(tx);
    }
    let mut conn = pool.get().await.expect("get");
    assert_eq!(
        Pooled::id(&conn),
        id,
        "same connection, cleaned not replaced"
    );
    assert!(!conn.is_in_transaction());
    assert!(!in_transaction(&mut conn).await);
    assert_eq!(
        count(&mut conn, "t").await,
        0,
        "no uncommitted row survives"
    );
    let mut tx = conn.begin().await.expect("begin");
    tx.execute("INSERT INTO t VALUES (3)")
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(count(&mut conn, "t").await, 1);
    drop(conn);
    assert_eq!(pool.state().closed.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_begin_is_rolled_back_with_reset_on_return() {
    let pool = Pool::builder(shared_db())
        .max_size(1)
        .reset_on_return(true)
        .build()
        .expect("valid settings");
    let id = {
        let mut conn = pool.get().await.expect("get");
        conn.execute("CREATE TABLE t (x INTEGER)")
            .await
            .expect("create");
        conn.execute(sqlx::raw_sql("BEGIN; INSERT INTO t VALUES (1)"))
            .await
            .expect("raw BEGIN");
        assert!(!conn.is_in_transaction(), "sqlx does not see a raw BEGIN");
        Pooled::id(&conn)
    };
    // A return with nothing to roll back must not fail the reset either.
    drop(pool.get().await.expect("get"));
    let mut conn = pool.get().await.expect("get");
    assert_eq!(Pooled::id(&conn), id, "reset succeeded: same connection");
    assert!(!in_transaction(&mut conn).await);
    assert_eq!(count(&mut conn, "t").await, 0);
    drop(conn);
    assert_eq!(pool.state().closed.get(Reason::ResetFailed), 0);
}

#[tokio::test]
async fn manager_reports_no_server_timeouts_and_prints_the_file() {
    let m = SqliteManager::from_url("sqlite::memory:").expect("url");
    let mut conn = m.connect().await.expect("connect");
    assert_eq!(
        m.server_timeouts(&mut conn).await.expect("timeouts"),
        ServerTimeouts::default()
    );
    m.is_valid(&mut conn).await.expect("ping");
    m.close(conn).await;
    let shown = format!("{m:?}");
    assert!(
        shown.contains("SQLite") && shown.contains("memory"),
        "{shown}"
    );
}

#[test]
fn malformed_url_is_an_error_naming_the_problem() {
    let err = SqliteManager::from_url("sqlite::memory:?bogus=1").expect_err("unknown parameter");
    let shown = err.to_string();
    assert!(shown.contains("invalid SQLite connection URL"), "{shown}");
    assert!(shown.contains("bogus"), "{shown}");
}
