//! Session state: what one borrower leaves in its session is gone for the
//! next.

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};
use vigil::Reason;

use crate::{admin, backend_pid, builder, eventually, trace, unique, SEC};

/// Whether the session is inside a transaction block, asked of the server
/// (not of sqlx's bookkeeping): SAVEPOINT fails with 25P01 outside one.
async fn in_transaction_block(conn: &mut PgConnection) -> bool {
    match conn.execute(sqlx::raw_sql("SAVEPOINT vigil_probe")).await {
        Ok(_) => true,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25P01") => false,
        Err(e) => panic!("SAVEPOINT probe failed unexpectedly: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_session_is_not_seen_by_next_borrower() {
    trace();
    let mut admin = admin().await;
    let table = unique("dirty");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE TABLE {table} (x int)")))
        .await
        .expect("create table");
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let count = format!("SELECT count(*) FROM {table}");

    // (a) A sqlx transaction dropped without commit. sqlx only queues its
    // ROLLBACK; the pool must send it on return, not leave the session
    // "idle in transaction" (holding the row's locks) until the next use.
    let app = unique("dirty_a");
    let pool = builder(&app).max_size(1).build().expect("valid settings");
    let pid = {
        let mut conn = pool.get().await.expect("get");
        let pid = backend_pid(&mut conn).await;
        let mut tx = conn.begin().await.expect("begin");
        tx.execute(sqlx::AssertSqlSafe(insert.as_str()))
            .await
            .expect("insert");
        drop(tx);
        pid
    };
    eventually!(
        "the returned session to be idle, not idle in transaction",
        5 * SEC,
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT state FROM pg_stat_activity WHERE pid = $1"
        )
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_activity")
        .as_deref()
            == Some("idle")
    );
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(backend_pid(&mut conn).await, pid, "same session");
        assert!(!in_transaction_block(&mut conn).await);
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count.as_str()))
            .fetch_one(&mut *conn)
            .await
            .expect("count");
        assert_eq!(n, 0, "the uncommitted row is gone");
    }

    // (a') A leaked `Transaction`: sqlx still counts it open. The pool must
    // roll it back through sqlx, or the next `begin()` would only open a
    // savepoint and its commit would commit nothing.
    {
        let mut conn = pool.get().await.expect("get");
        let mut tx = conn.begin().await.expect("begin");
        tx.execute(sqlx::AssertSqlSafe(insert.as_str()))
            .await
            .expect("insert");
        std::mem::forget(tx);
    }
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(backend_pid(&mut conn).await, pid, "same session");
        assert!(!in_transaction_block(&mut conn).await);
        let mut tx = conn.begin().await.expect("begin");
        tx.execute(sqlx::AssertSqlSafe(insert.as_str()))
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
    }
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count.as_str()))
        .fetch_one(&mut admin)
        .await
        .expect("count");
    assert_eq!(n, 1, "only the committed row, visible to another session");

    // (b) reset_on_return: session settings, a temporary table and a raw
    // BEGIN (invisible to sqlx) are all gone for the next borrower.
    let app = unique("dirty_b");
    let pool = builder(&app)
        .max_size(1)
        .reset_on_return(true)
        .build()
        .expect("valid settings");
    let cached = || sqlx::query_scalar::<_, i32>("SELECT $1::int4 + 1").bind(41);
    let pid = {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(
            cached().fetch_one(&mut *conn).await.expect("cached query"),
            42
        );
        assert!(
            conn.cached_statements_size() > 0,
            "sqlx cached the statement"
        );
        conn.execute(sqlx::raw_sql(
            "SET search_path = vigil_tenant_a, public; \
             SET application_name = 'hijacked'; \
             SET vigil.x = '42'; \
             CREATE TEMP TABLE vigil_tmp (x int)",
        ))
        .await
        .expect("dirty the session");
        conn.execute(sqlx::raw_sql("BEGIN"))
            .await
            .expect("raw BEGIN");
        conn.execute(sqlx::AssertSqlSafe(insert.as_str()))
            .await
            .expect("insert");
        assert!(!conn.is_in_transaction(), "sqlx does not see a raw BEGIN");
        backend_pid(&mut conn).await
    };
    let mut conn = pool.get().await.expect("get");
    assert_eq!(backend_pid(&mut conn).await, pid, "same session");
    assert!(
        !in_transaction_block(&mut conn).await,
        "the raw BEGIN was rolled back"
    );
    let (search_path, app_name, x, tmp): (String, String, Option<String>, Option<String>) =
        sqlx::query_as(
            "SELECT current_setting('search_path'), current_setting('application_name'), \
             current_setting('vigil.x', true), to_regclass('vigil_tmp')::text",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("read the session");
    assert_eq!(search_path, "\"$user\", public");
    assert_eq!(app_name, app, "back to the value the session started with");
    assert_eq!(x.unwrap_or_default(), "");
    assert_eq!(tmp, None, "temporary table dropped");
    // (c) The statement sqlx cached before the reset: DISCARD ALL dropped it
    // on the server, so this fails unless sqlx's cache was cleared too.
    assert_eq!(
        cached()
            .fetch_one(&mut *conn)
            .await
            .expect("cached query after reset"),
        42
    );
    drop(conn);
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count.as_str()))
        .fetch_one(&mut admin)
        .await
        .expect("count");
    assert_eq!(n, 1, "the raw transaction's row was rolled back");
    assert_eq!(pool.state().closed.get(Reason::ResetFailed), 0);

    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .await
        .expect("drop table");
}
