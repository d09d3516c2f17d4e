//! diesel-async through vigil against the real servers (PostgreSQL at
//! 127.0.0.1:5432, MariaDB at 127.0.0.1:3306), written as a diesel user
//! writes: `pool.get()`, then diesel's own queries on `&mut **conn`,
//! transactions whose futures are dropped, statements abandoned midway.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use vigil::backend::diesel::{DieselMysqlManager, DieselPgManager};
use vigil::{Pool, Pooled, Reason};

use support::db::unique;
use support::eventually;

const SEC: Duration = Duration::from_secs(1);
const MARIA_URL: &str = "mysql://root@127.0.0.1:3306/test";

fn pg_url(app: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/test?application_name={app}")
}

fn pg_pool(app: &str, size: usize) -> vigil::Builder<DieselPgManager> {
    Pool::builder(DieselPgManager::from_url(&pg_url(app)).unwrap())
        .max_size(size)
        .acquire_timeout(10 * SEC)
}

fn maria_pool(size: usize) -> vigil::Builder<DieselMysqlManager> {
    Pool::builder(DieselMysqlManager::from_url(MARIA_URL).unwrap())
        .max_size(size)
        .acquire_timeout(10 * SEC)
}

/// A one-column `SELECT` through diesel.
macro_rules! select {
    ($conn:expr, $ty:ty => $rust:ty, $sql:expr) => {
        diesel::select(diesel::dsl::sql::<$ty>($sql))
            .get_result::<$rust>($conn)
            .await
    };
}

/// A session outside any pool, for looking at and acting on the server.
async fn pg_admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test application_name=vigil_diesel_admin",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("these tests need PostgreSQL at 127.0.0.1:5432: {e}"));
    tokio::spawn(connection);
    client
}

/// What the server says the session of `app` is doing (`idle`, `idle in
/// transaction`, ...), asked while its connection is held and quiet.
async fn pg_state(admin: &tokio_postgres::Client, app: &str) -> String {
    admin
        .query_one(
            "SELECT state FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn diesel_queries_run_on_a_pooled_connection_on_both_servers() {
    let pool = pg_pool(&unique("diesel_q"), 2).build().unwrap();
    let mut conn = pool.get().await.expect("PostgreSQL at 127.0.0.1:5432");
    let n = diesel::sql_query("SELECT 1")
        .execute(&mut **conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let tz = select!(&mut **conn, Text => String, "current_setting('TimeZone')").unwrap();
    assert_eq!(tz, "UTC", "diesel's own set-up ran");

    let pool = maria_pool(2).build().unwrap();
    let mut conn = pool.get().await.expect("MariaDB at 127.0.0.1:3306");
    let two = select!(&mut **conn, BigInt => i64, "1 + 1").unwrap();
    assert_eq!(two, 2);
}

/// A session killed while idle is seen by the watch: never lent, no ping.
#[tokio::test]
async fn postgres_a_session_killed_while_idle_is_never_lent_and_costs_no_failed_ping() {
    let app = unique("diesel_kill");
    let pool = pg_pool(&app, 4).build().unwrap();
    let admin = pg_admin().await;
    for round in 0..10u64 {
        // By pid: the housekeeper may be opening a replacement under the
        // same application name.
        let mut conn = pool.get().await.unwrap();
        let pid =
            select!(&mut **conn, diesel::sql_types::Integer => i32, "pg_backend_pid()").unwrap();
        drop(conn);
        let killed = admin
            .query("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .len();
        assert_eq!(killed, 1, "round {round}");
        // The FATAL reaches the watch as the backend exits; the
        // housekeeper's sweep then retires the session, no round trip.
        eventually!(
            "the killed session retired as broken",
            5 * SEC,
            pool.state().closed.get(Reason::Broken) == round + 1
        );
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT 1")
            .execute(&mut **conn)
            .await
            .unwrap_or_else(|e| panic!("round {round}: lent a dead session: {e}"));
    }
    let s = pool.state();
    assert_eq!(s.closed.get(Reason::Broken), 10, "{s:?}");
    // Every kill was seen without a round trip: no ping met a dead session.
    // (A replacement the housekeeper opened may idle past the bypass
    // window before it is lent, and is pinged then, as the policy says.)
    assert_eq!(
        s.validations_failed, 0,
        "a ping met a killed session: {s:?}"
    );
}

/// A diesel transaction whose future is dropped midway (a request that
/// gave up) leaves `BEGIN` open on the server and diesel's depth at 1: the
/// next borrower gets a session outside any transaction, where diesel
/// opens a new one.
#[tokio::test]
async fn postgres_a_dropped_diesel_transaction_is_rolled_back_before_the_next_borrower() {
    let app = unique("diesel_tx");
    let pool = pg_pool(&app, 1).build().unwrap();
    let admin = pg_admin().await;
    for round in 0..3 {
        let mut conn = pool.get().await.unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(100),
            conn.transaction::<(), diesel::result::Error, _>(async |c| {
                diesel::sql_query("SELECT 1").execute(c).await?;
                std::future::pending::<()>().await;
                Ok(())
            }),
        )
        .await;
        assert!(gave_up.is_err());
        drop(conn);
        let mut conn = pool.get().await.unwrap();
        let state = pg_state(&admin, &app).await;
        assert_eq!(
            state, "idle",
            "round {round}: lent inside the dropped transaction"
        );
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::sql_query("SELECT 1").execute(c).await
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: diesel's bookkeeping was not reset: {e}"));
    }
    assert_eq!(pool.state().created, 1, "cleaned, not replaced");
}

#[tokio::test]
async fn mariadb_a_dropped_diesel_transaction_is_rolled_back_before_the_next_borrower() {
    let pool = maria_pool(1).build().unwrap();
    for round in 0..3 {
        let mut conn = pool.get().await.expect("MariaDB at 127.0.0.1:3306");
        let gave_up = tokio::time::timeout(
            Duration::from_millis(100),
            conn.transaction::<(), diesel::result::Error, _>(async |c| {
                diesel::sql_query("SELECT 1").execute(c).await?;
                std::future::pending::<()>().await;
                Ok(())
            }),
        )
        .await;
        assert!(gave_up.is_err());
        drop(conn);
        let mut conn = pool.get().await.unwrap();
        let open = select!(&mut **conn, BigInt => i64, "@@in_transaction").unwrap();
        assert_eq!(
            open, 0,
            "round {round}: lent inside the dropped transaction"
        );
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::sql_query("SELECT 1").execute(c).await
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: diesel's bookkeeping was not reset: {e}"));
    }
    assert_eq!(pool.state().created, 1, "cleaned, not replaced");
}

/// A raw `BEGIN` (no diesel bookkeeping) is seen in the server's own
/// transaction status and rolled back too.
#[tokio::test]
async fn postgres_a_raw_begin_left_open_is_rolled_back() {
    let app = unique("diesel_raw");
    let pool = pg_pool(&app, 1).build().unwrap();
    let admin = pg_admin().await;
    let mut conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(pg_state(&admin, &app).await, "idle in transaction");
    drop(conn);
    let _conn = pool.get().await.unwrap();
    assert_eq!(pg_state(&admin, &app).await, "idle");
}

/// `reset_on_return`: `DISCARD ALL` deallocates the server's statements;
/// diesel's cached ones are prepared again, and diesel's `UTC` set again.
#[tokio::test]
async fn postgres_a_full_reset_keeps_diesel_working() {
    let pool = pg_pool(&unique("diesel_full"), 1)
        .reset_on_return(true)
        .build()
        .unwrap();
    for round in 0..3 {
        let mut conn = pool.get().await.unwrap();
        // The same typed query each round: diesel caches its statement.
        let tz = select!(&mut **conn, Text => String, "current_setting('TimeZone')")
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(tz, "UTC", "round {round}");
        conn.batch_execute("SET TIME ZONE 'Europe/Paris'")
            .await
            .unwrap();
    }
    assert_eq!(pool.state().created, 1);
}

/// A statement abandoned by its borrower (the request timed out) is
/// cancelled on the server, and the next borrower is served at once.
#[tokio::test]
async fn an_abandoned_statement_is_stopped_and_the_next_borrower_served_at_once() {
    let app = unique("diesel_sleep");
    let pool = pg_pool(&app, 1).build().unwrap();
    let admin = pg_admin().await;
    drop(pool.get().await.unwrap());
    let mut conn = pool.get().await.unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        diesel::sql_query("SELECT pg_sleep(10)").execute(&mut **conn),
    )
    .await;
    assert!(gave_up.is_err());
    let dropped = Instant::now();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("SELECT 1")
        .execute(&mut **conn)
        .await
        .unwrap();
    let next = dropped.elapsed();
    drop(conn);
    let running: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE '%pg_sleep%' AND state = 'active'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(running, 0, "the statement still runs");
    assert!(next < 2 * SEC, "the next borrower waited {next:?}");
    println!("PostgreSQL: next borrower served {next:?} after the drop");

    let pool = maria_pool(1).build().unwrap();
    let mut conn = pool.get().await.unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        diesel::sql_query("SELECT SLEEP(10)").execute(&mut **conn),
    )
    .await;
    assert!(gave_up.is_err());
    let dropped = Instant::now();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("SELECT 1")
        .execute(&mut **conn)
        .await
        .unwrap();
    let next = dropped.elapsed();
    drop(conn);
    assert!(next < 2 * SEC, "the next borrower waited {next:?}");
    println!("MariaDB: next borrower served {next:?} after the drop");
    eventually!("KILL QUERY to stop the sleep", 5 * SEC, {
        let mut admin = pool.get().await.unwrap();
        select!(
            &mut **admin,
            BigInt => i64,
            "(SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP(10)%')"
        )
        .unwrap()
            == 0
    });
}

/// The hooks work over diesel connections too.
#[tokio::test]
async fn after_connect_runs_diesel_queries() {
    let pool = pg_pool(&unique("diesel_hook"), 1)
        .reset_on_return(true)
        .after_connect(|conn, _meta| {
            Box::pin(async move { Ok(conn.batch_execute("SET statement_timeout = '3s'").await?) })
        })
        .build()
        .unwrap();
    for _ in 0..2 {
        let mut conn = pool.get().await.unwrap();
        let t =
            select!(&mut **conn, Text => String, "current_setting('statement_timeout')").unwrap();
        assert_eq!(t, "3s");
        Pooled::reset_on_return(&mut conn);
    }
}
