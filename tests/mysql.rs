//! `MySqlManager` against the real MariaDB at 127.0.0.1:3306 (user `root`, no
//! password, database `test`).
//!
//! These tests fail loudly when the server is missing. They change no global
//! server setting (timeouts are set per session with `init` commands), kill
//! only connections their own pools opened, and name their tables and
//! databases uniquely, so they can run in parallel (one process per test
//! under nextest). Run with `RUST_LOG=vigil=debug` to see the pool's events.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, TxOpts};
use vigil::backend::mysql::MySqlManager;
use vigil::{BuildError, Error, Manager, Pool, Reason, ServerTimeouts, TimeoutPhase, Validation};

const URL: &str = "mysql://root@127.0.0.1:3306/test";
const SECRET: &str = "secret-pw-123";

type PoolError = Error<mysql_async::Error>;

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

/// This session's own count of `COM_PING` and other admin commands.
async fn admin_commands(conn: &mut Conn) -> u64 {
    let row: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Com_admin_commands'")
        .await
        .expect("read session status");
    row.expect("Com_admin_commands exists")
        .1
        .parse()
        .expect("a counter is a number")
}

fn error_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

// ---------------------------------------------------------------- timeouts and kills

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conn_killed_by_wait_timeout_is_never_lent() {
    trace();
    const INIT: &str = "SET SESSION wait_timeout = 2";
    // Control: a bare connection with the same session timeout, left idle
    // over the first gap. It must be dead afterwards, or this test proves
    // nothing about the pool.
    let mut control = Conn::new(base().init(vec![INIT]))
        .await
        .expect("open the control connection");
    let pool = Pool::builder(manager_with_init(&[INIT]))
        .max_size(8)
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .expect("valid settings");
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    for burst in 0..5 {
        if burst > 0 {
            // Real idle time: the server's clock is what is under test.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if burst == 1 {
            let dead = control.query_drop("SELECT 1").await;
            assert!(
                dead.is_err(),
                "the server did not close a session idle for 3 s with wait_timeout = 2"
            );
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let pool = pool.clone();
            let errors = Arc::clone(&errors);
            tasks.spawn(async move {
                for _ in 0..25 {
                    let outcome = match pool.get().await {
                        Ok(mut conn) => {
                            conn.query_drop("SELECT 1").await.map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = outcome {
                        errors.lock().unwrap().push(format!("burst {burst}: {e}"));
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a burst task panicked");
        }
    }
    let errors = errors.lock().unwrap();
    let state = pool.state();
    assert!(
        errors.is_empty(),
        "callers saw errors: {errors:#?}\n{state:#?}"
    );
    assert_eq!(
        state.server_idle_timeout,
        Some(Some(Duration::from_secs(2))),
        "{state:#?}"
    );
    assert!(
        state.closed.get(Reason::ServerTimeout) > 0,
        "no connection was retired for the server's timeout: {state:#?}"
    );
    assert_eq!(
        state.validations_failed, 0,
        "connections were found dead instead of retired in time: {state:#?}"
    );
    assert_eq!(state.closed.get(Reason::Broken), 0, "{state:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_idle_connections_are_never_lent() {
    trace();
    let mut admin = admin().await;
    let pool = Pool::builder(manager())
        .max_size(8)
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .expect("valid settings");
    // Fill the pool: eight connections lent at once, then all returned.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(pool.get().await.expect("fill the pool"));
    }
    let ids: Vec<u32> = held.iter().map(|c| c.id()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 8, "{ids:?}");
    drop(held);
    let returned = Instant::now();
    assert_eq!(pool.state().idle, 8);

    for id in &ids {
        admin
            .query_drop(format!("KILL {id}"))
            .await
            .expect("kill a pool connection");
    }
    wait_until_gone(&mut admin, &ids, Duration::from_secs(10)).await;
    // Checkout pings only connections silent longer than the 500 ms window;
    // without this wait the dead connections would be lent unchecked.
    let window = Duration::from_millis(600);
    if let Some(rest) = window.checked_sub(returned.elapsed()) {
        tokio::time::sleep(rest).await;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            conn.query_drop("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u32, String>(conn.id())
        });
    }
    let mut errors = Vec::new();
    let mut new_ids = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done.expect("a task panicked") {
            Ok(id) => new_ids.push(id),
            Err(e) => errors.push(e),
        }
    }
    let state = pool.state();
    assert!(
        errors.is_empty(),
        "callers saw errors: {errors:#?}\n{state:#?}"
    );
    assert!(
        new_ids.iter().all(|id| !ids.contains(id)),
        "a killed session was lent: {new_ids:?} vs killed {ids:?}"
    );
    assert!(
        state.validations_failed > 0,
        "the dead connections were never checked: {state:#?}"
    );
    assert_eq!(
        state.closed.get(Reason::ValidationFailed),
        state.validations_failed,
        "{state:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_query_leaves_no_half_read_connection_in_the_pool() {
    trace();
    let pool = Pool::builder(manager())
        .max_size(1)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    let first_id = {
        let mut conn = pool.get().await.expect("get");
        let cancelled = tokio::time::timeout(
            Duration::from_millis(100),
            conn.query_drop("SELECT SLEEP(2)"),
        )
        .await;
        assert!(cancelled.is_err(), "the query should have been cut off");
        conn.id()
    };
    let mut conn = pool.get().await.expect("get after a cancelled query");
    let one: Option<u8> = conn.query_first("SELECT 1").await.expect("a clean session");
    assert_eq!(one, Some(1));
    assert_ne!(
        conn.id(),
        first_id,
        "the half-read connection was lent again"
    );
    assert_eq!(
        pool.state().closed.get(Reason::Broken),
        1,
        "{:#?}",
        pool.state()
    );
}

// ---------------------------------------------------------------- round trips

/// Wraps [`MySqlManager`] and counts validation pings.
struct Counting {
    inner: MySqlManager,
    pings: Arc<AtomicUsize>,
}

impl Manager for Counting {
    type Connection = Conn;
    type Error = mysql_async::Error;

    fn connect(&self) -> impl Future<Output = Result<Conn, mysql_async::Error>> + Send {
        self.inner.connect()
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), mysql_async::Error> {
        self.pings.fetch_add(1, SeqCst);
        self.inner.is_valid(conn).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        self.inner.has_broken(conn)
    }

    fn needs_cleanup(&self, conn: &mut Conn) -> bool {
        self.inner.needs_cleanup(conn)
    }

    fn reset(
        &self,
        conn: &mut Conn,
        full: bool,
    ) -> impl Future<Output = Result<(), mysql_async::Error>> + Send {
        self.inner.reset(conn, full)
    }

    fn server_timeouts(
        &self,
        conn: &mut Conn,
    ) -> impl Future<Output = Result<ServerTimeouts, mysql_async::Error>> + Send {
        self.inner.server_timeouts(conn)
    }

    fn close(&self, conn: Conn) -> impl Future<Output = ()> + Send {
        self.inner.close(conn)
    }
}

fn counting_pool(validation: Validation) -> (Pool<Counting>, Arc<AtomicUsize>) {
    let pings = Arc::new(AtomicUsize::new(0));
    let manager = Counting {
        inner: manager(),
        pings: Arc::clone(&pings),
    };
    let pool = Pool::builder(manager)
        .max_size(1)
        .validation(validation)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    (pool, pings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_within_bypass_window_adds_no_round_trip() {
    trace();
    // Pool of one: every checkout lends the same session, so the session's
    // own `Com_admin_commands` (COM_PING counts there) is the server's
    // witness, next to the wrapper's count.
    let (pool, pings) = counting_pool(Validation::default());
    let (id, server_before) = {
        let mut conn = pool.get().await.expect("first get");
        (conn.id(), admin_commands(&mut conn).await)
    };
    // Calibrate the witness: one COM_PING is one admin command.
    {
        let mut bare = admin().await;
        let before = admin_commands(&mut bare).await;
        bare.ping().await.expect("ping");
        assert_eq!(
            admin_commands(&mut bare).await,
            before + 1,
            "COM_PING is not counted"
        );
    }
    let skipped_before = pool.state().validations_skipped;
    for _ in 0..100 {
        let mut conn = pool.get().await.expect("get");
        conn.query_drop("SELECT 1").await.expect("query");
    }
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(conn.id(), id, "the pool of one changed its connection");
        assert_eq!(
            admin_commands(&mut conn).await,
            server_before,
            "the server saw pings"
        );
    }
    assert_eq!(pings.load(SeqCst), 0, "checkouts within the window pinged");
    assert_eq!(pool.state().validations_skipped - skipped_before, 101);

    // Silent longer than the window: exactly one ping.
    tokio::time::sleep(Duration::from_millis(600)).await;
    {
        let mut conn = pool.get().await.expect("get after idling");
        assert_eq!(pings.load(SeqCst), 1);
        assert_eq!(admin_commands(&mut conn).await, server_before + 1);
    }
    assert_eq!(pool.state().validations_ok, 1);

    // `Always`: one ping per checkout of an idle connection.
    let (pool, pings) = counting_pool(Validation::Always);
    let server_before = {
        let mut conn = pool.get().await.expect("first get (opens, no ping)");
        admin_commands(&mut conn).await
    };
    for _ in 0..20 {
        let mut conn = pool.get().await.expect("get");
        conn.query_drop("SELECT 1").await.expect("query");
    }
    let mut conn = pool.get().await.expect("get");
    assert_eq!(pings.load(SeqCst), 21);
    assert_eq!(admin_commands(&mut conn).await, server_before + 21);
}

// ---------------------------------------------------------------- session state

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transaction_is_seen_without_a_round_trip() {
    trace();
    let m = manager();
    let mut admin = admin().await;
    let table = unique("vigil_flag");
    admin
        .query_drop(format!("CREATE TABLE {table} (a INT) ENGINE=InnoDB"))
        .await
        .expect("create table");
    let mut conn = m.connect().await.expect("connect");
    let mut steps = Vec::new();
    let mut step = |conn: &mut Conn, what: &str, expected: bool| {
        let seen = m.needs_cleanup(conn);
        steps.push(format!("{what}: {seen}"));
        assert_eq!(seen, expected, "after {what}; steps: {steps:#?}");
    };
    step(&mut conn, "connect", false);
    conn.query_drop("BEGIN").await.unwrap();
    step(&mut conn, "BEGIN", true);
    let _: Option<u8> = conn.query_first("SELECT 1").await.unwrap();
    step(&mut conn, "SELECT 1 in a transaction", true);
    conn.query_drop(format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    step(&mut conn, "INSERT in a transaction", true);
    conn.query_drop("COMMIT").await.unwrap();
    step(&mut conn, "COMMIT", false);
    let _: Option<u8> = conn.query_first("SELECT 1").await.unwrap();
    step(&mut conn, "SELECT 1 after COMMIT", false);
    conn.exec_drop("SELECT ?", (1,)).await.unwrap();
    step(&mut conn, "prepared SELECT outside a transaction", false);
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.exec_drop(format!("INSERT INTO {table} VALUES (?)"), (2,))
        .await
        .unwrap();
    step(&mut conn, "prepared INSERT in a transaction", true);
    conn.query_drop("ROLLBACK").await.unwrap();
    step(&mut conn, "ROLLBACK", false);
    // An error reply carries no status: unknown counts as dirty.
    assert!(conn
        .query_drop("SELECT * FROM no_such_table_vigil")
        .await
        .is_err());
    step(&mut conn, "an error", true);
    conn.query_drop("SET autocommit = 0").await.unwrap();
    let _: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap();
    step(&mut conn, "a read with autocommit = 0", true);
    conn.query_drop("COMMIT").await.unwrap();
    step(&mut conn, "COMMIT with autocommit = 0", false);
    m.close(conn).await;
    admin
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_session_is_not_seen_by_next_borrower() {
    trace();
    let mut admin = admin().await;
    let table = unique("vigil_dirty");
    admin
        .query_drop(format!("CREATE TABLE {table} (a INT) ENGINE=InnoDB"))
        .await
        .expect("create table");
    let count = format!("SELECT COUNT(*) FROM {table}");
    let insert = format!("INSERT INTO {table} VALUES (1)");

    // (a) No full reset: an open transaction is rolled back, nothing more.
    let pool = Pool::builder(manager())
        .max_size(1)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    let id = {
        let mut conn = pool.get().await.expect("get");
        conn.query_drop("SET @kept = 7").await.unwrap();
        conn.query_drop("BEGIN").await.unwrap();
        conn.query_drop(&insert).await.unwrap();
        let seen: Option<u64> = conn.query_first(&count).await.unwrap();
        assert_eq!(seen, Some(1), "the borrower sees its own row");
        conn.id()
    };
    // Borrower 1 again, but ending on an error inside the transaction.
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(conn.id(), id);
        conn.query_drop("BEGIN").await.unwrap();
        conn.query_drop(&insert).await.unwrap();
        assert!(conn
            .query_drop("SELECT * FROM no_such_table_vigil")
            .await
            .is_err());
    }
    // And through a `Transaction` dropped without commit.
    {
        let mut conn = pool.get().await.expect("get");
        let mut tx = conn.start_transaction(TxOpts::default()).await.unwrap();
        tx.query_drop(&insert).await.unwrap();
    }
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(conn.id(), id, "the pool of one changed its connection");
        let in_tx: Option<u8> = conn.query_first("SELECT @@in_transaction").await.unwrap();
        assert_eq!(
            in_tx,
            Some(0),
            "the next borrower inherited an open transaction"
        );
        let seen: Option<u64> = conn.query_first(&count).await.unwrap();
        assert_eq!(seen, Some(0), "the next borrower sees uncommitted rows");
        // Only the transaction was cleaned: no full reset per return.
        let kept: Option<u8> = conn.query_first("SELECT @kept").await.unwrap();
        assert_eq!(kept, Some(7), "a plain return did a full reset");
    }
    let state = pool.state();
    assert_eq!(state.closed.total(), 0, "{state:#?}");

    // (b) and (c) `reset_on_return`: session variables, temporary tables
    // and server-side prepared statements are gone, and a statement the
    // client had cached still works.
    let tmp = unique("vigil_tmp");
    let pool = Pool::builder(manager())
        .max_size(1)
        .reset_on_return(true)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    let id = {
        let mut conn = pool.get().await.expect("get");
        conn.query_drop("SET @x = 42").await.unwrap();
        conn.query_drop(format!("CREATE TEMPORARY TABLE {tmp} (a INT)"))
            .await
            .unwrap();
        let two: Option<i64> = conn.exec_first("SELECT ? + 1", (1,)).await.unwrap();
        assert_eq!(two, Some(2));
        conn.id()
    };
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(conn.id(), id, "the pool of one changed its connection");
        let x: Option<Option<i64>> = conn.query_first("SELECT @x").await.unwrap();
        assert_eq!(x, Some(None), "a session variable survived the reset");
        let tmp_error = conn
            .query_drop(format!("SELECT * FROM {tmp}"))
            .await
            .expect_err("a temporary table survived the reset");
        assert_eq!(error_code(&tmp_error), Some(1146), "{tmp_error}");
        let three: Option<i64> = conn
            .exec_first("SELECT ? + 1", (2,))
            .await
            .expect("a cached statement works after the reset");
        assert_eq!(three, Some(3));
    }
    let state = pool.state();
    assert_eq!(state.closed.total(), 0, "{state:#?}");
    admin
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

// ---------------------------------------------------------------- contention

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_1000_tasks_pool_of_8_all_finish() {
    trace();
    let mut admin = admin().await;
    // The pool's sessions are marked by a database of their own, so the
    // server's count of them does not depend on our bookkeeping. TCP only:
    // by default (`prefer_socket`) mysql_async opens each connection over
    // TCP, then reopens it over the server's Unix socket and quits the TCP
    // session, which the server lists for a moment longer; that transient
    // second session is the driver's, not the pool's.
    let db = unique("vigil_contention");
    admin
        .query_drop(format!("CREATE DATABASE {db}"))
        .await
        .expect("create database");
    let pool = Pool::builder(MySqlManager::new(
        base().db_name(Some(&db)).prefer_socket(false).into(),
    ))
    .max_size(8)
    .acquire_timeout(Duration::from_secs(30))
    .build()
    .expect("valid settings");

    let done = Arc::new(AtomicBool::new(false));
    let gauge = {
        let (pool, done) = (pool.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(SeqCst) {
                let s = pool.state();
                max = max.max(s.open + s.connecting);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max
        })
    };
    let server = {
        let (db, done) = (db.clone(), Arc::clone(&done));
        let mut admin = self::admin().await;
        tokio::spawn(async move {
            let (mut max, mut samples) = (0, 0);
            while !done.load(SeqCst) {
                let rows: Vec<u64> = admin
                    .exec(
                        "SELECT ID FROM information_schema.processlist WHERE DB = ?",
                        (&db,),
                    )
                    .await
                    .expect("count sessions");
                max = max.max(rows.len() as u64);
                samples += 1;
            }
            (max, samples)
        })
    };

    let ids = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (pool, ids) = (pool.clone(), Arc::clone(&ids));
        tasks.spawn(async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            conn.query_drop("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            ids.lock().unwrap().insert(conn.id());
            Ok::<(), String>(())
        });
    }
    let mut errors = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result.expect("a task panicked") {
            errors.push(e);
        }
    }
    done.store(true, SeqCst);
    let max_open = gauge.await.expect("gauge task");
    let (max_server, samples) = server.await.expect("server sampler");
    let state = pool.state();
    let ids = ids.lock().unwrap().clone();
    admin
        .query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();

    assert!(
        errors.is_empty(),
        "{} of 1000 failed: {errors:?}",
        errors.len()
    );
    assert!(ids.len() <= 8, "{} distinct sessions: {ids:?}", ids.len());
    assert!(max_open <= 8, "the pool counted {max_open} connections");
    assert!(
        samples > 0 && max_server >= 1,
        "the server sampler saw nothing"
    );
    assert!(
        max_server <= 8,
        "the server saw {max_server} sessions of this pool"
    );
    assert!(state.created <= 8, "the pool churned: {state:#?}");
    assert_eq!(state.acquire_timeouts, 0, "{state:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pool_leaves_no_server_sessions() {
    trace();
    let mut admin = admin().await;
    let pool = Pool::builder(manager())
        .max_size(4)
        .build()
        .expect("valid settings");
    let held: Vec<_> = futures::future::try_join_all((0..4).map(|_| pool.get()))
        .await
        .expect("get four");
    let ids: Vec<u32> = held.iter().map(|c| c.id()).collect();
    drop(held);
    assert_eq!(listed(&mut admin, &ids).await.len(), 4);
    pool.close().await;
    wait_until_gone(&mut admin, &ids, Duration::from_secs(5)).await;
    assert_eq!(pool.state().closed.get(Reason::Closed), 4);
}

// ---------------------------------------------------------------- bad input

/// Runs `get` through an eager `connect()` and a lazy `build()` + `get()`,
/// checks both fail within `acquire_timeout` plus slack, and returns the errors.
async fn both_ways(manager: MySqlManager, connect_timeout: Duration) -> Vec<PoolError> {
    let acquire = Duration::from_secs(2);
    let builder = || {
        Pool::builder(manager.clone())
            .acquire_timeout(acquire)
            .connect_timeout(connect_timeout)
    };
    let started = Instant::now();
    let eager = builder()
        .connect()
        .await
        .expect_err("connect() should fail");
    let eager_took = started.elapsed();
    let pool = builder().build().expect("build() opens nothing");
    let started = Instant::now();
    let lazy = pool.get().await.expect_err("get() should fail");
    let lazy_took = started.elapsed();
    for took in [eager_took, lazy_took] {
        assert!(
            took < acquire + Duration::from_secs(1),
            "failing took {took:?} with acquire_timeout {acquire:?}"
        );
    }
    assert_eq!(pool.state().open, 0);
    vec![eager, lazy]
}

/// The eager `connect()` reports the driver's error itself (`Connect`), or a
/// `Connecting` timeout when the server never answered; the lazy `get()`
/// always a `Connecting` timeout carrying the last connect error.
fn assert_connecting_timeout(e: &PoolError) {
    assert!(
        matches!(
            e,
            Error::Connect(_)
                | Error::Timeout {
                    phase: TimeoutPhase::Connecting,
                    ..
                }
        ),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_host_fails_with_connection_refused_not_a_hang() {
    trace();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let m = MySqlManager::new(base().tcp_port(port).into());
    for e in both_ways(m, Duration::from_secs(1)).await {
        assert_connecting_timeout(&e);
        let text = e.to_string();
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(e.last_connect_error().is_some(), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_host_fails_within_acquire_timeout() {
    trace();
    // Not routable: the SYN goes unanswered (or the network says so at once).
    let m = MySqlManager::new(base().ip_or_hostname("10.255.255.1").into());
    for e in both_ways(m, Duration::from_millis(500)).await {
        assert_connecting_timeout(&e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_reads_as_access_denied_and_hides_the_password() {
    trace();
    let m = MySqlManager::from_url(&format!("mysql://root:{SECRET}@127.0.0.1:3306/test"))
        .expect("a well-formed URL");
    let shown = format!("{m:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(
        shown.contains("127.0.0.1") && shown.contains("root"),
        "{shown}"
    );
    for e in both_ways(m, Duration::from_secs(1)).await {
        assert_connecting_timeout(&e);
        let (text, debug) = (e.to_string(), format!("{e:?}"));
        assert!(text.contains("Access denied"), "{text}");
        assert!(
            !text.contains(SECRET) && !debug.contains(SECRET),
            "{text}\n{debug}"
        );
        assert_eq!(
            e.last_connect_error().and_then(error_code),
            Some(1045),
            "{e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_database_reads_as_unknown_database() {
    trace();
    let m = MySqlManager::from_url("mysql://root@127.0.0.1:3306/no_such_db_vigil")
        .expect("a well-formed URL");
    for e in both_ways(m, Duration::from_secs(1)).await {
        assert_connecting_timeout(&e);
        let text = e.to_string();
        assert!(text.contains("Unknown database"), "{text}");
        assert_eq!(
            e.last_connect_error().and_then(error_code),
            Some(1049),
            "{e:?}"
        );
    }
}

#[test]
fn malformed_url_is_a_clear_error_not_a_panic() {
    let cases = [
        ("mysql://root@:notaport/test", "host"),
        (
            &*format!("mysql://root:{SECRET}@host:notaport/test"),
            "port",
        ),
        (
            &*format!("postgres://root:{SECRET}@127.0.0.1/test"),
            "scheme",
        ),
        ("not a url", "URL"),
        (
            &*format!("mysql://root:{SECRET}@127.0.0.1/test?pool_min=many"),
            "pool_min",
        ),
        (
            &*format!("mysql://root:{SECRET}@127.0.0.1/test?no_such_param=1"),
            "no_such_param",
        ),
    ];
    for (url, names) in cases {
        let e = MySqlManager::from_url(url).expect_err(url);
        let (text, debug) = (e.to_string(), format!("{e:?}"));
        assert!(text.contains(names), "{url}: {text}");
        assert!(
            !text.contains(SECRET) && !debug.contains(SECRET),
            "{text}\n{debug}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_setting_is_named_not_a_panic() {
    trace();
    match Pool::builder(manager()).max_size(0).build() {
        Err(BuildError::Config(c)) => assert_eq!(c.setting, "max_size", "{c}"),
        other => panic!("expected a max_size error, got {other:?}"),
    }
    match Pool::builder(manager()).max_size(0).connect().await {
        Err(Error::Build(BuildError::Config(c))) => {
            assert_eq!(c.setting, "max_size");
            assert!(c.to_string().contains("max_size"), "{c}");
        }
        other => panic!("expected a max_size error, got {other:?}"),
    }
    match Pool::builder(manager()).max_size(2).min_idle(3).build() {
        Err(BuildError::Config(c)) => assert_eq!(c.setting, "min_idle", "{c}"),
        other => panic!("expected a min_idle error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timeout_discovery_reads_session_wait_timeout() {
    trace();
    let pool = Pool::builder(manager_with_init(&["SET SESSION wait_timeout = 7"]))
        .build()
        .expect("valid settings");
    assert_eq!(pool.state().server_idle_timeout, None, "nothing opened yet");
    let conn = pool.get().await.expect("get");
    drop(conn);
    assert_eq!(
        pool.state().server_idle_timeout,
        Some(Some(Duration::from_secs(7)))
    );

    let m = manager_with_init(&[
        "SET SESSION wait_timeout = 7",
        "SET SESSION idle_transaction_timeout = 9",
    ]);
    let mut conn = m.connect().await.expect("connect");
    let found = m.server_timeouts(&mut conn).await.expect("discover");
    assert_eq!(
        found,
        ServerTimeouts {
            idle: Some(Duration::from_secs(7)),
            idle_in_transaction: Some(Duration::from_secs(9)),
        }
    );
    m.close(conn).await;

    // Untouched session: the server's default (28800 s unless configured).
    let global: Option<u64> = admin()
        .await
        .query_first("SELECT @@GLOBAL.wait_timeout")
        .await
        .expect("read the global default");
    let global = Duration::from_secs(global.expect("a value"));
    let m = manager();
    let mut conn = m.connect().await.expect("connect");
    let found = m.server_timeouts(&mut conn).await.expect("discover");
    assert_eq!(
        found,
        ServerTimeouts {
            idle: Some(global),
            idle_in_transaction: None,
        }
    );
    m.close(conn).await;
    let pool = Pool::builder(manager()).build().expect("valid settings");
    drop(pool.get().await.expect("get"));
    assert_eq!(pool.state().server_idle_timeout, Some(Some(global)));
}
