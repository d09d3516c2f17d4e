//! The two servers behind one trait, so each database test is written once.

use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use sqlx::postgres::PgConnection;
use sqlx::Executor;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::{Manager, Pool};

use super::unique;
use crate::support::db::{maria_admin, pg_admin, pg_options, MARIA_URL};

const SEC: Duration = Duration::from_secs(1);
/// The `application_name` of the PostgreSQL admin connections.
const ADMIN_APP: &str = "vigil_test_admin";

/// What the generic tests need from a server. Every method panics with a
/// clear message when the server misbehaves or is missing.
pub(crate) trait Backend: Manager + Sized {
    /// A pool of at most `max_size` connections; opens none yet.
    fn pool(max_size: usize) -> Pool<Self>;
    /// Creates a table only this test uses, through a connection outside
    /// the pool; the first thing each test does, so a missing server fails it.
    fn create_table() -> impl Future<Output = String> + Send;
    /// Rows of `table` another session can see (committed ones).
    fn committed_rows(table: &str) -> impl Future<Output = i64> + Send;
    fn drop_table(table: &str) -> impl Future<Output = ()> + Send;
    /// The server's id for this session (PostgreSQL backend pid,
    /// MariaDB `CONNECTION_ID()`).
    fn session_id(conn: &mut Self::Connection) -> impl Future<Output = u64> + Send;
    /// Leaves what a careless request leaves: a session variable, a changed
    /// setting, a temporary table, and an open transaction (a raw `BEGIN`,
    /// invisible to the driver's bookkeeping) with an uncommitted row in `table`.
    fn dirty(conn: &mut Self::Connection, table: &str) -> impl Future<Output = ()> + Send;
    /// Which of the things `dirty` leaves this session still shows; empty
    /// when the session is clean.
    fn leftovers(
        conn: &mut Self::Connection,
        table: &str,
    ) -> impl Future<Output = Vec<String>> + Send;
    /// A statement that runs for 1.5 s on the server.
    fn slow_query(conn: &mut Self::Connection) -> impl Future<Output = ()> + Send;
}

impl Backend for PgManager {
    fn pool(max_size: usize) -> Pool<Self> {
        Pool::builder(PgManager::new(pg_options(&unique("scope"))))
            .max_size(max_size)
            .acquire_timeout(10 * SEC)
            .build()
            .expect("valid settings")
    }

    async fn create_table() -> String {
        let table = unique("scope");
        pg_admin(ADMIN_APP)
            .await
            .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {table} (x int)"
            ))))
            .await
            .expect("CREATE TABLE");
        table
    }

    async fn committed_rows(table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut pg_admin(ADMIN_APP).await)
            .await
            .expect("count rows")
    }

    async fn drop_table(table: &str) {
        pg_admin(ADMIN_APP)
            .await
            .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP TABLE {table}"
            ))))
            .await
            .expect("DROP TABLE");
    }

    async fn session_id(conn: &mut PgConnection) -> u64 {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
            .expect("SELECT pg_backend_pid()");
        u64::try_from(pid).expect("pids are positive")
    }

    async fn dirty(conn: &mut PgConnection, table: &str) {
        // Session-level state first: inside the transaction, a rollback
        // alone would undo it and prove nothing about DISCARD ALL.
        conn.execute(sqlx::raw_sql(
            "SELECT set_config('vigil.scope_test', 'dirty', false); \
             SET statement_timeout = '123s'; \
             CREATE TEMP TABLE vigil_scope_tmp (x int)",
        ))
        .await
        .expect("leave session state");
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "BEGIN; INSERT INTO {table} VALUES (1)"
        ))))
        .await
        .expect("open a transaction");
    }

    async fn leftovers(conn: &mut PgConnection, table: &str) -> Vec<String> {
        let mut found = Vec::new();
        // Inside a transaction block SAVEPOINT succeeds; outside it fails
        // with 25P01 and changes nothing.
        match conn.execute(sqlx::raw_sql("SAVEPOINT vigil_probe")).await {
            Ok(_) => found.push("open transaction".to_owned()),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25P01") => {}
            Err(e) => panic!("SAVEPOINT probe: {e}"),
        }
        let (var, timeout, temp, rows): (Option<String>, String, bool, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT current_setting('vigil.scope_test', true), \
                        current_setting('statement_timeout'), \
                        to_regclass('pg_temp.vigil_scope_tmp') IS NOT NULL, \
                        (SELECT count(*) FROM {table})"
            )))
            .fetch_one(&mut *conn)
            .await
            .expect("read session state");
        if var.as_deref().is_some_and(|v| !v.is_empty()) {
            found.push(format!("session variable = {var:?}"));
        }
        if timeout != "0" {
            found.push(format!("statement_timeout = {timeout}"));
        }
        if temp {
            found.push("temporary table".to_owned());
        }
        if rows != 0 {
            found.push(format!("{rows} uncommitted rows visible"));
        }
        found
    }

    async fn slow_query(conn: &mut PgConnection) {
        conn.execute(sqlx::raw_sql("SELECT pg_sleep(1.5)"))
            .await
            .expect("SELECT pg_sleep(1.5)");
    }
}

impl Backend for MySqlManager {
    fn pool(max_size: usize) -> Pool<Self> {
        Pool::builder(MySqlManager::from_url(MARIA_URL).expect("the test URL parses"))
            .max_size(max_size)
            .acquire_timeout(10 * SEC)
            .build()
            .expect("valid settings")
    }

    async fn create_table() -> String {
        let table = unique("scope");
        let mut admin = maria_admin().await;
        admin
            .query_drop(format!("CREATE TABLE {table} (x INT) ENGINE=InnoDB"))
            .await
            .expect("CREATE TABLE");
        admin.disconnect().await.expect("disconnect");
        table
    }

    async fn committed_rows(table: &str) -> i64 {
        let mut admin = maria_admin().await;
        let n: Option<i64> = admin
            .query_first(format!("SELECT COUNT(*) FROM {table}"))
            .await
            .expect("count rows");
        admin.disconnect().await.expect("disconnect");
        n.expect("COUNT(*) returns a row")
    }

    async fn drop_table(table: &str) {
        let mut admin = maria_admin().await;
        admin
            .query_drop(format!("DROP TABLE {table}"))
            .await
            .expect("DROP TABLE");
        admin.disconnect().await.expect("disconnect");
    }

    async fn session_id(conn: &mut mysql_async::Conn) -> u64 {
        conn.query_first("SELECT CONNECTION_ID()")
            .await
            .expect("SELECT CONNECTION_ID()")
            .expect("a row")
    }

    async fn dirty(conn: &mut mysql_async::Conn, table: &str) {
        for sql in [
            "SET @vigil_scope_test = 'dirty'".to_owned(),
            "SET SESSION lock_wait_timeout = 123".to_owned(),
            "CREATE TEMPORARY TABLE vigil_scope_tmp (x INT)".to_owned(),
            "BEGIN".to_owned(),
            format!("INSERT INTO {table} VALUES (1)"),
        ] {
            conn.query_drop(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    async fn leftovers(conn: &mut mysql_async::Conn, table: &str) -> Vec<String> {
        let mut found = Vec::new();
        let row: (Option<String>, u64, u64, i64, i64) = conn
            .query_first(format!(
                "SELECT @vigil_scope_test, @@SESSION.lock_wait_timeout, \
                        @@GLOBAL.lock_wait_timeout, @@in_transaction, \
                        (SELECT COUNT(*) FROM {table})"
            ))
            .await
            .expect("read session state")
            .expect("a row");
        let (var, session_timeout, global_timeout, in_transaction, rows) = row;
        if var.is_some() {
            found.push(format!("user variable = {var:?}"));
        }
        if session_timeout != global_timeout {
            found.push(format!("lock_wait_timeout = {session_timeout}"));
        }
        if in_transaction != 0 {
            found.push("open transaction".to_owned());
        }
        if rows != 0 {
            found.push(format!("{rows} uncommitted rows visible"));
        }
        match conn.query_drop("SELECT 1 FROM vigil_scope_tmp").await {
            Ok(()) => found.push("temporary table".to_owned()),
            // ER_NO_SUCH_TABLE
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => {}
            Err(e) => panic!("temporary table probe: {e}"),
        }
        found
    }

    async fn slow_query(conn: &mut mysql_async::Conn) {
        conn.query_drop("SELECT SLEEP(1.5)")
            .await
            .expect("SELECT SLEEP(1.5)");
    }
}
