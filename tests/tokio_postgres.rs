//! `TokioPgManager` (tokio-postgres) against the real PostgreSQL at
//! 127.0.0.1:5432 (trust auth, user `postgres`, database `test`).
//!
//! What this backend promises over the sqlx one: a session the server ended
//! is seen without a round trip (`Client::is_closed`), so the pool neither
//! lends it nor pings to find out. These tests count pings through the
//! pool's own validation counters and fail loudly when the server is down.
//! Each pool names its sessions (`application_name`), so tests count and
//! kill only their own backends and can run in parallel.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};
use vigil::backend::tokio_postgres::TokioPgManager;
use vigil::{Pool, Reason};

use support::db::{trace, unique};
use support::eventually;

const SEC: Duration = Duration::from_secs(1);

fn url(app: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/test?application_name={app}")
}

fn pool(app: &str, size: usize) -> vigil::Builder<TokioPgManager> {
    let manager = TokioPgManager::from_url(&url(app)).expect("a valid URL");
    Pool::builder(manager)
        .max_size(size)
        .acquire_timeout(10 * SEC)
}

/// A connection outside any pool, for looking at and acting on the server.
async fn admin() -> Client {
    let (client, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test application_name=vigil_tp_admin",
        NoTls,
    )
    .await
    .unwrap_or_else(|e| {
        panic!("these tests need PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres): {e}")
    });
    tokio::spawn(connection);
    client
}

async fn terminate(admin: &Client, app: &str) -> usize {
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("pg_terminate_backend")
        .len()
}

/// Terminates the sessions named `app`; their pids.
async fn terminate_pids(admin: &Client, app: &str) -> Vec<i32> {
    admin
        .query(
            // In the select list, so it runs only on the rows the filter keeps.
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("pg_terminate_backend")
        .iter()
        .filter(|row| row.get::<_, bool>(1))
        .map(|row| row.get(0))
        .collect()
}

/// How many of `pids` are still running.
async fn alive(admin: &Client, pids: &[i32]) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
            &[&pids],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

async fn pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("SELECT pg_backend_pid()")
        .get(0)
}

/// Opens `n` sessions at once and returns them to the pool.
async fn fill(pool: &Pool<TokioPgManager>, n: usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.expect("a connection"));
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_terminated_from_outside_are_retired_without_a_ping() {
    trace();
    let app = unique("tp_kill");
    let pool = pool(&app, 4).build().expect("valid settings");
    let admin = admin().await;
    fill(&pool, 4).await;
    eventually!("four idle sessions", 5 * SEC, pool.state().idle == 4);
    // Past the 500 ms bypass window: a checkout would ping each of them,
    // were the kills not seen without one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(terminate(&admin, &app).await, 4);
    // The housekeeper's sweep asks `Session::broken` (no I/O) of every idle
    // connection and retires the dead ones.
    eventually!(
        "the killed sessions to be retired as broken",
        5 * SEC,
        pool.state().closed.get(Reason::Broken) == 4
    );
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            client
                .query_one("SELECT 1", &[])
                .await
                .map(|row| row.get::<_, i32>(0))
                .map_err(|e| e.to_string())
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.expect("task"), Ok(1));
    }
    let s = pool.state();
    assert_eq!(
        (s.validations_ok, s.validations_failed),
        (0, 0),
        "no ping was needed: {s:?}"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_killed_between_checkouts_are_never_lent_and_never_pinged() {
    // Kills that land while the sessions sit idle between back-to-back
    // checkouts: the checkout's own `Session::broken` sees them.
    trace();
    let app = unique("tp_hot");
    let pool = pool(&app, 2)
        .validation(vigil::Validation::Never)
        .build()
        .expect("valid settings");
    let admin = admin().await;
    let mut errors = Vec::new();
    for round in 1..=5u64 {
        fill(&pool, 2).await;
        let killed = terminate_pids(&admin, &app).await;
        assert_eq!(killed.len(), 2);
        // By pid, not by name: the housekeeper may already be opening
        // replacements under the same application name.
        eventually!(
            "the killed backends to go",
            5 * SEC,
            alive(&admin, &killed).await == 0
        );
        // The FATAL reached each client before its backend exited; once the
        // connection tasks have read it the pool retires both sessions (at
        // its sweep or a checkout), with no round trip.
        eventually!(
            "both killed sessions retired as broken",
            5 * SEC,
            pool.state().closed.get(Reason::Broken) >= 2 * round
        );
        for _ in 0..2 {
            let client = pool.get().await.expect("a connection");
            if let Err(e) = client.query_one("SELECT 1", &[]).await {
                errors.push(e.to_string());
            }
        }
    }
    assert!(errors.is_empty(), "dead sessions were lent: {errors:?}");
    assert!(pool.state().closed.get(Reason::Broken) >= 10);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_timeout_across_bursts_is_dodged_as_server_timeout() {
    trace();
    let app = unique("tp_idle");
    let manager = TokioPgManager::from_url(&format!(
        "{}&options=-c%20idle_session_timeout%3D2000",
        url(&app)
    ))
    .expect("a valid URL");
    let pool = Pool::builder(manager)
        .max_size(4)
        .acquire_timeout(10 * SEC)
        .build()
        .expect("valid settings");
    let mut errors = Vec::new();
    for burst in 0..3 {
        if burst > 0 {
            tokio::time::sleep(Duration::from_millis(3000)).await;
        }
        let mut tasks = JoinSet::new();
        for _ in 0..4 {
            let pool = pool.clone();
            tasks.spawn(async move {
                let mut errs = Vec::new();
                for _ in 0..25 {
                    let client = match pool.get().await {
                        Ok(c) => c,
                        Err(e) => {
                            errs.push(e.to_string());
                            continue;
                        }
                    };
                    if let Err(e) = client.query_one("SELECT 1", &[]).await {
                        errs.push(e.to_string());
                    }
                }
                errs
            });
        }
        while let Some(done) = tasks.join_next().await {
            errors.extend(done.expect("task"));
        }
    }
    assert!(errors.is_empty(), "{errors:?}");
    let s = pool.state();
    assert_eq!(s.server_idle_timeout, Some(Some(2 * SEC)), "{s:?}");
    assert!(s.closed.get(Reason::ServerTimeout) >= 1, "{s:?}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_on_a_session_killed_while_lent_fails_once_and_the_session_is_not_lent_again() {
    trace();
    let app = unique("tp_lent");
    let pool = pool(&app, 1).build().expect("valid settings");
    let admin = admin().await;
    let client = pool.get().await.expect("a connection");
    let first = pid(&client).await;
    assert_eq!(terminate(&admin, &app).await, 1);
    let failed = client.query_one("SELECT 1", &[]).await;
    assert!(failed.is_err(), "the killed session answered");
    drop(client);
    let client = pool.get().await.expect("a fresh connection");
    assert_ne!(pid(&client).await, first);
    drop(client);
    let s = pool.state();
    assert_eq!(s.closed.get(Reason::Broken), 1, "{s:?}");
    assert_eq!(s.closed.get(Reason::ResetFailed), 0, "{s:?}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_is_rolled_back_before_the_next_borrower() {
    trace();
    let app = unique("tp_tx");
    let table = unique("tp_tx_t");
    let pool = pool(&app, 1).build().expect("valid settings");
    {
        let client = pool.get().await.expect("a connection");
        client
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await
            .expect("create table");
    }
    {
        let mut client = pool.get().await.expect("a connection");
        let tx = client.transaction().await.expect("BEGIN");
        tx.execute(&format!("INSERT INTO {table} VALUES (1)"), &[])
            .await
            .expect("insert");
        // Dropped without commit.
    }
    let client = pool.get().await.expect("the same session");
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "the next borrower saw the uncommitted row");
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop table");
    drop(client);
    assert_eq!(pool.state().created, 1, "one session served all three");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_begin_or_failed_transaction_left_open_is_rolled_back_without_reset_on_return() {
    trace();
    let app = unique("tp_raw");
    let table = unique("tp_raw_t");
    let pool = pool(&app, 1).build().expect("valid settings");
    pool.get()
        .await
        .expect("a connection")
        .batch_execute(&format!("CREATE TABLE {table} (id int)"))
        .await
        .expect("create table");
    // A raw `BEGIN` the borrower never ends.
    pool.get()
        .await
        .expect("a connection")
        .batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .expect("begin and insert");
    {
        let client = pool.get().await.expect("the same session");
        // Inside the first borrower's transaction it would see its own row.
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(rows, 0, "the next borrower was lent the open transaction");
        // A transaction that failed: every later query would fail (25P02).
        let failed = client
            .batch_execute("BEGIN; SELECT 1 / 0")
            .await
            .expect_err("division by zero");
        assert_eq!(
            failed.code(),
            Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
        );
    }
    let client = pool.get().await.expect("the same session");
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("the failed transaction was rolled back")
        .get(0);
    assert_eq!(one, 1);
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop table");
    drop(client);
    let s = pool.state();
    assert_eq!(
        (s.created, s.closed.get(Reason::ResetFailed)),
        (1, 0),
        "one session served every borrower: {s:?}"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_return_clears_session_state_and_a_raw_begin() {
    trace();
    let app = unique("tp_reset");
    let table = unique("tp_reset_t");
    let pool = pool(&app, 1)
        .reset_on_return(true)
        .build()
        .expect("valid settings");
    {
        let client = pool.get().await.expect("a connection");
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id int); SET search_path = nowhere; BEGIN; \
                 INSERT INTO public.{table} VALUES (1)"
            ))
            .await
            .expect("dirty the session");
    }
    let client = pool.get().await.expect("the same session, cleaned");
    let path: String = client
        .query_one("SHOW search_path", &[])
        .await
        .expect("SHOW")
        .get(0);
    assert_eq!(path, "\"$user\", public");
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass")
        .get(0);
    assert!(!exists, "the raw BEGIN's CREATE TABLE was rolled back");
    drop(client);
    let s = pool.state();
    assert_eq!(
        (s.created, s.closed.get(Reason::ResetFailed)),
        (1, 0),
        "{s:?}"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_clearly_without_the_password() {
    let secret = "secret-pw-123";
    for (url, mentions) in [
        (
            format!("postgres://u:{secret}@127.0.0.1:notaport/test"),
            "port",
        ),
        (
            format!("mysql://u:{secret}@127.0.0.1/test"),
            "scheme `mysql`",
        ),
        (
            format!("postgres://u:{secret}@127.0.0.1/test?sslmode=bogus"),
            "sslmode",
        ),
    ] {
        let e = TokioPgManager::from_url(&url).expect_err("an invalid URL");
        let shown = format!("{e} {e:?}");
        assert!(shown.contains(mentions), "{shown}");
        assert!(!shown.contains(secret), "{shown}");
    }
    let manager = TokioPgManager::from_url(&format!("postgres://u:{secret}@127.0.0.1/test"))
        .expect("a valid URL");
    assert!(!format!("{manager:?}").contains(secret));

    let started = std::time::Instant::now();
    for (url, mentions) in [
        (format!("postgres://postgres:{secret}@127.0.0.1:1/test"), "refused"),
        (
            format!("postgres://no_such_role_vigil:{secret}@127.0.0.1:5432/test"),
            "no_such_role_vigil",
        ),
        // Every host of the list is read-only: `target_session_attrs`
        // refuses each session (the driver checks `transaction_read_only`).
        (
            "postgres://postgres@127.0.0.1:5432,127.0.0.1:5432/test?target_session_attrs=read-write\
             &options=-c%20default_transaction_read_only%3Don"
                .to_owned(),
            "does not allow writes",
        ),
    ] {
        let manager = TokioPgManager::from_url(&url).expect("a valid URL");
        let e = Pool::builder(manager)
            .acquire_timeout(5 * SEC)
            .connect()
            .await
            .expect_err("no usable session");
        let shown = format!("{e} {e:?}");
        assert!(shown.contains(mentions), "{url}: {shown}");
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(started.elapsed() < 20 * SEC, "{:?}", started.elapsed());

    // A host list whose first host is down: the next one serves.
    let manager = TokioPgManager::from_url("postgres://postgres@127.0.0.1:1,127.0.0.1:5432/test")
        .expect("a valid URL");
    let pool = Pool::builder(manager)
        .connect()
        .await
        .expect("the second host");
    let one: i32 = pool
        .get()
        .await
        .expect("a connection")
        .query_one("SELECT 1", &[])
        .await
        .expect("SELECT 1")
        .get(0);
    assert_eq!(one, 1);
    pool.close().await;
}

/// Kills the session of `conn` from `admin` and waits until its backend
/// has exited (so its `FATAL` is on the way to the client).
async fn kill_own_session(admin: &Client, conn: &Client) {
    let me = pid(conn).await;
    admin
        .query("SELECT pg_terminate_backend($1)", &[&me])
        .await
        .expect("pg_terminate_backend");
    eventually!(
        "the killed backend to go",
        5 * SEC,
        alive(admin, &[me]).await == 0
    );
}

/// A session that dies while its query is in flight (here the query ends
/// its own session) leaves a request that never gets its `ReadyForQuery`:
/// that says nothing about a transaction, so idempotent work is rerun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_idempotent_reruns_work_whose_session_died_mid_query() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    trace();
    let app = unique("tp_mid_query");
    let pool = pool(&app, 1).build().expect("valid settings");
    let attempts = Arc::new(AtomicUsize::new(0));
    let got = pool
        .run_idempotent({
            let attempts = Arc::clone(&attempts);
            move |conn| {
                let attempts = Arc::clone(&attempts);
                Box::pin(async move {
                    if attempts.fetch_add(1, SeqCst) == 0 {
                        conn.simple_query("SELECT pg_terminate_backend(pg_backend_pid())")
                            .await?;
                    }
                    Ok::<i32, _>(conn.query_one("SELECT 7", &[]).await?.get(0))
                })
            }
        })
        .await;
    assert_eq!(got.expect("the rerun succeeds"), 7);
    assert_eq!(attempts.load(SeqCst), 2, "run twice");
    assert_eq!(pool.state().retries, 1);
    pool.close().await;
}

/// `run_idempotent` reruns work once, on another connection, when its first
/// connection's session was killed between the checkout and the query;
/// `run` returns the original error; neither retries another kind of error,
/// and `run_idempotent` never retries twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_idempotent_retries_once_when_the_session_died_and_run_never_does() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use vigil::backend::tokio_postgres::PgClient;
    use vigil::RunError;
    trace();
    let app = unique("tp_retry");
    let pool = pool(&app, 1).build().expect("valid settings");
    let admin = Arc::new(admin().await);
    // The work kills its own session before its query on the first
    // `kill_first` attempts.
    fn work(
        admin: &Arc<Client>,
        kill_first: usize,
        attempts: Arc<AtomicUsize>,
    ) -> impl for<'c> FnMut(&'c mut PgClient) -> vigil::Work<'c, i32, tokio_postgres::Error> + Send
    {
        let admin = Arc::clone(admin);
        move |conn| {
            let admin = Arc::clone(&admin);
            let attempts = Arc::clone(&attempts);
            Box::pin(async move {
                if attempts.fetch_add(1, SeqCst) < kill_first {
                    kill_own_session(&admin, conn).await;
                }
                Ok(conn.query_one("SELECT 7", &[]).await?.get(0))
            })
        }
    }

    let attempts = Arc::new(AtomicUsize::new(0));
    let got = pool
        .run_idempotent(work(&admin, 1, Arc::clone(&attempts)))
        .await;
    assert_eq!(got.expect("the retry succeeds"), 7);
    assert_eq!(attempts.load(SeqCst), 2, "run twice");
    assert_eq!(pool.state().retries, 1);

    let attempts = Arc::new(AtomicUsize::new(0));
    let got = pool.run(work(&admin, 1, Arc::clone(&attempts))).await;
    assert!(
        matches!(got, Err(RunError::Work(_))),
        "run returns the error: {got:?}"
    );
    assert_eq!(attempts.load(SeqCst), 1, "run never retries");
    assert_eq!(pool.state().retries, 1);

    let attempts = Arc::new(AtomicUsize::new(0));
    let got = pool
        .run_idempotent(work(&admin, 2, Arc::clone(&attempts)))
        .await;
    assert!(
        matches!(got, Err(RunError::Work(_))),
        "the second failure is returned: {got:?}"
    );
    assert_eq!(attempts.load(SeqCst), 2, "never a third attempt");
    assert_eq!(pool.state().retries, 2);

    let attempts = Arc::new(AtomicUsize::new(0));
    let got = pool
        .run_idempotent(move |conn| {
            let attempts = Arc::clone(&attempts);
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                Ok::<i32, _>(conn.query_one("SELECT no_such_column", &[]).await?.get(0))
            })
        })
        .await;
    assert!(matches!(got, Err(RunError::Work(_))), "{got:?}");
    assert_eq!(
        pool.state().retries,
        2,
        "a failed statement is not a dead session"
    );
    // Inside a transaction the work opened: never run again.
    let attempts = Arc::new(AtomicUsize::new(0));
    let got = pool
        .run_idempotent({
            let (admin, attempts) = (Arc::clone(&admin), Arc::clone(&attempts));
            move |conn| {
                let (admin, attempts) = (Arc::clone(&admin), Arc::clone(&attempts));
                Box::pin(async move {
                    attempts.fetch_add(1, SeqCst);
                    conn.batch_execute("BEGIN").await?;
                    kill_own_session(&admin, conn).await;
                    Ok::<i32, _>(conn.query_one("SELECT 7", &[]).await?.get(0))
                })
            }
        })
        .await;
    assert!(matches!(got, Err(RunError::Work(_))), "{got:?}");
    assert_eq!(attempts.load(SeqCst), 1, "not retried inside a transaction");
    assert_eq!(pool.state().retries, 2);
    // Every dead session was retired as broken; the pool still works.
    let s = pool.state();
    assert_eq!(
        s.closed.get(Reason::Broken),
        5,
        "one per killed session: {s:?}"
    );
    let client = pool.get().await.expect("a connection");
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .expect("query")
            .get::<_, i32>(0),
        1
    );
    drop(client);
    pool.close().await;
}

/// Prepared statements on this session, as the server counts them.
async fn server_statements(conn: &vigil::backend::tokio_postgres::PgClient) -> i64 {
    let rows = conn
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await
        .expect("pg_prepared_statements");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .expect("a count")
}

/// `prepare_cached` prepares a query once per session: the same statement
/// comes back on later borrows of the session, with no round trip, and
/// the server holds one prepared statement for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_cached_prepares_once_per_session() {
    let pool = pool(&unique("vigil_stmt"), 1)
        .build()
        .expect("valid settings");
    {
        let conn = pool.get().await.expect("a connection");
        let a = conn.prepare_cached("SELECT $1::int4").await.unwrap();
        let b = conn.prepare_cached("SELECT $1::int4").await.unwrap();
        assert_eq!(server_statements(&conn).await, 1, "prepared once");
        let row = conn.query_one(&b, &[&7i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 7);
        drop(a);
    }
    let conn = pool.get().await.expect("the same session");
    let again = conn.prepare_cached("SELECT $1::int4").await.unwrap();
    conn.query_one(&again, &[&8i32]).await.unwrap();
    assert_eq!(conn.cached_statements(), 1);
    assert_eq!(
        server_statements(&conn).await,
        1,
        "kept across borrows of the session, not prepared again"
    );
    drop(conn);
    pool.close().await;
}

/// A full reset (`DISCARD ALL`) drops every prepared statement on the
/// server; the cache is emptied with it, so the next borrower's cached
/// query prepares anew instead of failing with "prepared statement ...
/// does not exist".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_cached_after_a_full_reset_prepares_again() {
    let pool = pool(&unique("vigil_stmt_reset"), 1)
        .reset_on_return(true)
        .build()
        .expect("valid settings");
    {
        let conn = pool.get().await.expect("a connection");
        let s = conn.prepare_cached("SELECT $1::int8").await.unwrap();
        conn.query_one(&s, &[&1i64]).await.unwrap();
    }
    let conn = pool.get().await.expect("the same session, reset");
    assert_eq!(conn.cached_statements(), 0, "emptied with DISCARD ALL");
    let s = conn.prepare_cached("SELECT $1::int8").await.unwrap();
    let row = conn
        .query_one(&s, &[&2i64])
        .await
        .expect("the cached statement exists on the server");
    assert_eq!(row.get::<_, i64>(0), 2);
    drop(conn);
    pool.close().await;
}

/// The cache is bounded: the least recently used statement goes, and is
/// closed on the server. Capacity 0 turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_cached_is_bounded_and_can_be_turned_off() {
    let app = unique("vigil_stmt_lru");
    let manager = TokioPgManager::from_url(&url(&app))
        .expect("a valid URL")
        .with_statement_cache(2);
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let conn = pool.get().await.expect("a connection");
    for q in ["SELECT 1::int4", "SELECT 2::int4", "SELECT 3::int4"] {
        conn.prepare_cached(q).await.unwrap();
    }
    assert_eq!(conn.cached_statements(), 2);
    assert_eq!(server_statements(&conn).await, 2, "the evicted one closed");
    drop(conn);
    pool.close().await;

    let manager = TokioPgManager::from_url(&url(&app))
        .expect("a valid URL")
        .with_statement_cache(0);
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let conn = pool.get().await.expect("a connection");
    let a = conn.prepare_cached("SELECT 1").await.unwrap();
    let b = conn.prepare_cached("SELECT 1").await.unwrap();
    assert_eq!(server_statements(&conn).await, 2, "off: prepared each time");
    assert_eq!(conn.cached_statements(), 0);
    drop((a, b, conn));
    pool.close().await;
}
