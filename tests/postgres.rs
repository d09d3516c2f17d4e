//! `PgManager` (sqlx) against the real PostgreSQL 15 at 127.0.0.1:5432
//! (trust auth, user `postgres`, database `test`).
//!
//! These tests fail loudly when the server is missing. They change no global
//! server setting (timeouts are set per session through the connect
//! options), give every pool its own `application_name` so they count and
//! kill only their own backends in `pg_stat_activity`, and name their tables
//! uniquely, so they can run in parallel (one process per test under
//! nextest). Run with `RUST_LOG=vigil=debug` to see the pool's events.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{Connection, Executor};
use tokio::task::JoinSet;
use vigil::backend::sqlx::PgManager;
use vigil::{BuildError, Error, Manager, Pool, Reason, ServerTimeouts, Validation};

const SECRET: &str = "secret-pw-123";
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

type PoolError = Error<sqlx::Error>;

fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An `application_name` no other test or run uses (PostgreSQL keeps 63 bytes).
fn unique(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "vigil_{tag}_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, SeqCst)
    )
}

fn options(app: &str) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(5432)
        .username("postgres")
        .database("test")
        .ssl_mode(PgSslMode::Disable)
        .application_name(app)
}

/// A connection outside any pool, for looking at and acting on the server.
async fn admin() -> PgConnection {
    PgConnection::connect_with(&options("vigil_test_admin"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres, \
                 database `test`), and it is not usable: {e}"
            )
        })
}

/// How many server backends carry `app` as their application_name.
async fn backends(admin: &mut PgConnection, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(admin)
        .await
        .expect("pg_stat_activity is readable")
}

/// Polls `cond` (an expression that may `.await`) every 10 ms until it
/// holds; fails the test after `within`.
macro_rules! eventually {
    ($what:expr, $within:expr, $cond:expr) => {{
        let within: Duration = $within;
        let deadline = Instant::now() + within;
        loop {
            if $cond {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {}",
                $what
            );
            tokio::time::sleep(10 * MS).await;
        }
    }};
}

/// A checkout and one query, the error as text (the two error types differ).
async fn select_one(pool: &Pool<PgManager>) -> Result<i32, String> {
    let mut conn = pool.get().await.map_err(|e| format!("get: {e}"))?;
    sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| format!("query: {e}"))
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("SELECT pg_backend_pid()")
}

/// Whether the session is inside a transaction block, asked of the server
/// (not of sqlx's bookkeeping): SAVEPOINT fails with 25P01 outside one.
async fn in_transaction_block(conn: &mut PgConnection) -> bool {
    match conn.execute(sqlx::raw_sql("SAVEPOINT vigil_probe")).await {
        Ok(_) => true,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25P01") => false,
        Err(e) => panic!("SAVEPOINT probe failed unexpectedly: {e}"),
    }
}

fn builder(app: &str) -> vigil::Builder<PgManager> {
    Pool::builder(PgManager::new(options(app)))
        .max_size(8)
        .acquire_timeout(10 * SEC)
}

// ---------------------------------------------------------------- liveness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conn_killed_by_idle_session_timeout_is_never_lent() {
    trace();
    let app = unique("idlekill");
    let session = [("idle_session_timeout", "2s")];
    // Control: the server really ends a session idle for longer than its
    // session timeout, so the pool below has something to dodge.
    let control = tokio::spawn({
        let opts = options(&unique("idlectl")).options(session);
        async move {
            let mut conn = PgConnection::connect_with(&opts).await.expect("connect");
            tokio::time::sleep(3 * SEC).await;
            conn.ping().await
        }
    });

    let pool = Pool::builder(PgManager::new(options(&app).options(session)))
        .max_size(8)
        .acquire_timeout(10 * SEC)
        .build()
        .expect("valid settings");
    let mut errors = Vec::new();
    for burst in 0..5 {
        if burst > 0 {
            // Longer than the server's 2 s: every connection idle through
            // the gap would be dead if the pool kept it.
            tokio::time::sleep(3 * SEC).await;
        }
        let mut tasks = JoinSet::new();
        for _ in 0..8 {
            let pool = pool.clone();
            tasks.spawn(async move {
                let mut errors = Vec::new();
                for _ in 0..25 {
                    if let Err(e) = select_one(&pool).await {
                        errors.push(e);
                    }
                }
                errors
            });
        }
        while let Some(r) = tasks.join_next().await {
            errors.extend(r.expect("burst task"));
        }
    }

    let control = control.await.expect("control task");
    assert!(
        control.is_err(),
        "the server did not end a session idle past idle_session_timeout; the test proves nothing"
    );
    let s = pool.state();
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(s.server_idle_timeout, Some(Some(2 * SEC)), "{s:?}");
    assert!(s.closed.get(Reason::ServerTimeout) > 0, "{s:?}");
    assert_eq!(
        s.validations_failed, 0,
        "a server-killed session reached validation: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_idle_connections_are_never_lent() {
    trace();
    let app = unique("killed");
    let mut admin = admin().await;
    let pool = builder(&app).build().expect("valid settings");

    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(pool.get().await.expect("get"));
    }
    let mut killed = HashSet::new();
    for conn in &mut held {
        killed.insert(backend_pid(conn).await);
    }
    assert_eq!(killed.len(), 8, "eight distinct backends");
    drop(held);
    // Each return is verified with a ping in the background first
    // (`verify_on_return`), so the connections reach the idle set shortly.
    eventually!(
        "the returns to be verified",
        5 * SEC,
        pool.state().idle == 8
    );
    let returned = Instant::now();

    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app)
    .fetch_all(&mut admin)
    .await
    .expect("pg_terminate_backend");
    assert_eq!(terminated, vec![true; 8]);
    eventually!(
        "the killed backends to go",
        5 * SEC,
        backends(&mut admin, &app).await == 0
    );
    // Past the 500 ms bypass window: a checkout must validate, else it
    // would lend a dead connection and this test would prove nothing.
    tokio::time::sleep((600 * MS).saturating_sub(returned.elapsed())).await;

    let before = pool.state();
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        });
    }
    let mut pids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        pids.push(
            r.expect("task")
                .expect("a checkout after the kill succeeds"),
        );
    }
    assert!(
        pids.iter().all(|p| !killed.contains(p)),
        "lent a killed backend"
    );
    let after = pool.state();
    assert_eq!(
        after.validations_failed - before.validations_failed,
        8,
        "{after:?}"
    );
    assert_eq!(after.closed.get(Reason::ValidationFailed), 8, "{after:?}");
}

/// Wraps [`PgManager`] and counts validation round trips.
#[derive(Debug, Clone)]
struct Counting {
    inner: PgManager,
    pings: Arc<AtomicUsize>,
}

impl Manager for Counting {
    type Connection = PgConnection;
    type Error = sqlx::Error;

    fn connect(&self) -> impl Future<Output = Result<PgConnection, sqlx::Error>> + Send {
        self.inner.connect()
    }

    fn is_valid(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.pings.fetch_add(1, SeqCst);
        self.inner.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        self.inner.has_broken(conn)
    }

    fn needs_cleanup(&self, conn: &mut PgConnection) -> bool {
        self.inner.needs_cleanup(conn)
    }

    fn reset(
        &self,
        conn: &mut PgConnection,
        full: bool,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.inner.reset(conn, full)
    }

    fn server_timeouts(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<ServerTimeouts, sqlx::Error>> + Send {
        self.inner.server_timeouts(conn)
    }

    fn close(&self, conn: PgConnection) -> impl Future<Output = ()> + Send {
        self.inner.close(conn)
    }
}

async fn checkouts(pool: &Pool<Counting>, n: usize) {
    for _ in 0..n {
        let mut conn = pool.get().await.expect("get");
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *conn)
            .await
            .expect("SELECT 1");
        assert_eq!(one, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_within_bypass_window_adds_no_round_trip() {
    trace();
    let pings = Arc::new(AtomicUsize::new(0));
    let manager = Counting {
        inner: PgManager::new(options(&unique("bypass"))),
        pings: Arc::clone(&pings),
    };
    let pool = Pool::builder(manager.clone())
        .max_size(1)
        .build()
        .expect("valid settings");
    let started = Instant::now();
    checkouts(&pool, 100).await;
    let quick = started.elapsed();
    assert_eq!(pings.load(SeqCst), 0, "100 checkouts in {quick:?}");
    assert_eq!(pool.state().validations_skipped, 99, "the first one opened");

    tokio::time::sleep(600 * MS).await;
    checkouts(&pool, 1).await;
    assert_eq!(
        pings.load(SeqCst),
        1,
        "a checkout after 600 ms idle pings once"
    );
    checkouts(&pool, 10).await;
    assert_eq!(pings.load(SeqCst), 1, "and the ones right after it do not");

    let always = Pool::builder(manager)
        .max_size(1)
        .validation(Validation::Always)
        .build()
        .expect("valid settings");
    checkouts(&always, 1).await; // opens: nothing to validate
    pings.store(0, SeqCst);
    checkouts(&always, 50).await;
    assert_eq!(
        pings.load(SeqCst),
        50,
        "Validation::Always pings every checkout"
    );
    assert_eq!(always.state().validations_ok, 50);
}

// ---------------------------------------------------------------- session state

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_session_is_not_seen_by_next_borrower() {
    trace();
    let mut admin = admin().await;
    let table = unique("dirty");
    admin
        .execute(&*format!("CREATE TABLE {table} (x int)"))
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
        tx.execute(&*insert).await.expect("insert");
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
        let n: i64 = sqlx::query_scalar(&count)
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
        tx.execute(&*insert).await.expect("insert");
        std::mem::forget(tx);
    }
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(backend_pid(&mut conn).await, pid, "same session");
        assert!(!in_transaction_block(&mut conn).await);
        let mut tx = conn.begin().await.expect("begin");
        tx.execute(&*insert).await.expect("insert");
        tx.commit().await.expect("commit");
    }
    let n: i64 = sqlx::query_scalar(&count)
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
        conn.execute(&*insert).await.expect("insert");
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
    let n: i64 = sqlx::query_scalar(&count)
        .fetch_one(&mut admin)
        .await
        .expect("count");
    assert_eq!(n, 1, "the raw transaction's row was rolled back");
    assert_eq!(pool.state().closed.get(Reason::ResetFailed), 0);

    admin
        .execute(&*format!("DROP TABLE {table}"))
        .await
        .expect("drop table");
}

// ---------------------------------------------------------------- load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_1000_tasks_pool_of_8_all_finish() {
    trace();
    let app = unique("contention");
    let pool = builder(&app)
        .acquire_timeout(30 * SEC)
        .build()
        .expect("valid settings");
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (pool, done, app) = (pool.clone(), Arc::clone(&done), app.clone());
        async move {
            let mut admin = admin().await;
            let (mut server, mut open, mut samples) = (0, 0, 0);
            while !done.load(SeqCst) {
                server = server.max(backends(&mut admin, &app).await);
                open = open.max(pool.state().open);
                samples += 1;
                tokio::time::sleep(5 * MS).await;
            }
            (server, open, samples)
        }
    });

    let mut tasks = JoinSet::new();
    for _ in 0..1000 {
        let pool = pool.clone();
        tasks.spawn(async move { select_one(&pool).await });
    }
    let mut errors = Vec::new();
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(1) => ok += 1,
            Ok(n) => errors.push(format!("SELECT 1 returned {n}")),
            Err(e) => errors.push(e),
        }
    }
    done.store(true, SeqCst);
    let (server, open, samples) = sampler.await.expect("sampler");
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(ok, 1000);
    assert!(samples > 0);
    assert!(server <= 8, "{server} server backends for a pool of 8");
    assert!(open <= 8, "{open} open for a pool of 8");
    assert!(server > 0, "the sampler saw the pool's backends");
}

/// One `get()` given a random, mostly tiny, time to succeed (by `timeout`
/// or by losing a `select!`), then a random use of what it got; in the
/// second wave some borrowers retire their connection.
async fn storm_task(
    wave: u8,
    pool: Pool<PgManager>,
    errors: Arc<AtomicUsize>,
    acquired: Arc<AtomicUsize>,
) {
    // One in five waits long enough for a connect to finish.
    let wait = if rand::random_bool(0.8) {
        Duration::from_micros(rand::random_range(0..=2000))
    } else {
        Duration::from_micros(rand::random_range(0..=20_000))
    };
    let got = if rand::random_bool(0.5) {
        tokio::select! {
            r = pool.get() => Some(r),
            _ = tokio::time::sleep(wait) => None,
        }
    } else {
        tokio::time::timeout(wait, pool.get()).await.ok()
    };
    let mut conn = match got {
        None => return,
        Some(Ok(conn)) => conn,
        Some(Err(_)) => {
            errors.fetch_add(1, SeqCst);
            return;
        }
    };
    acquired.fetch_add(1, SeqCst);
    match rand::random_range(0..4 + wave) {
        0 => {}
        1 => tokio::time::sleep(Duration::from_micros(500)).await,
        2 => {
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_err() {
                errors.fetch_add(1, SeqCst);
            }
        }
        // A query abandoned mid-flight: the next borrower must still get a
        // usable session.
        3 => {
            let q = sqlx::query("SELECT pg_sleep(0.001)").execute(&mut *conn);
            let _ = tokio::time::timeout(wait, q).await;
        }
        _ => vigil::Pooled::retire(conn),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_gets_never_leak_capacity() {
    trace();
    let app = unique("cancel");
    let mut admin = admin().await;
    let pool = builder(&app)
        .acquire_timeout(3 * SEC)
        .build()
        .expect("valid settings");
    // Start with eight idle connections, so gets within the tiny waits
    // can succeed too.
    let warm: Vec<_> = futures::future::try_join_all((0..8).map(|_| pool.get()))
        .await
        .expect("warm up");
    drop(warm);
    let errors = Arc::new(AtomicUsize::new(0));
    let acquired = Arc::new(AtomicUsize::new(0));
    // Two waves of 1,500: the first meets fresh idle connections (no ping);
    // the second starts after the 500 ms bypass window, so its gets are cut
    // off mid-validation too, and mid-connect where earlier borrowers
    // retired their connections.
    for wave in 0..2 {
        if wave == 1 {
            tokio::time::sleep(600 * MS).await;
        }
        let mut tasks = JoinSet::new();
        for _ in 0..1500 {
            tasks.spawn(storm_task(
                wave,
                pool.clone(),
                Arc::clone(&errors),
                Arc::clone(&acquired),
            ));
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task");
        }
    }
    assert_eq!(errors.load(SeqCst), 0, "a get or a query failed outright");
    // Both outcomes happened, else the storm proves nothing.
    let acquired = acquired.load(SeqCst);
    let s = pool.state();
    eprintln!("storm: {acquired} of 3000 gets acquired; {s:?}");
    assert!(
        (1..3000).contains(&acquired),
        "{acquired} of 3000 gets got a connection"
    );

    eventually!("returns and abandoned connects to settle", 5 * SEC, {
        let s = pool.state();
        s.connecting == 0 && s.active == 0
    });
    let s = pool.state();
    assert_eq!(s.idle + s.active, s.open, "{s:?}");
    assert!(s.open <= 8, "{s:?}");

    let mut held = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let mut conn = pool
            .get()
            .await
            .expect("all 8 slots are free after the storm");
        assert!(started.elapsed() < 3 * SEC);
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *conn)
            .await
            .expect("a lent session works");
        assert_eq!(one, 1);
        held.push(conn);
    }
    assert_eq!(pool.state().open, 8);
    drop(held);
    // No server session outlives the pool's count (abandoned connects are
    // closed, not leaked).
    eventually!(
        "server backends to match the pool's count",
        5 * SEC,
        backends(&mut admin, &app).await == pool.state().open as i64
    );
}

// ---------------------------------------------------------------- bad input

/// Builds eagerly (`connect`) and lazily (`build` + `get`); both must fail
/// within the acquire timeout with the connect error, and say `expect`.
async fn fails_clearly(manager: PgManager, expect: &str) {
    const ACQUIRE: Duration = Duration::from_millis(1500);
    let check = |err: PoolError, started: Instant, how: &str| {
        let elapsed = started.elapsed();
        assert!(elapsed < ACQUIRE + SEC, "{how}: took {elapsed:?}");
        let shown = format!("{err} / {err:?}");
        assert!(
            err.last_connect_error().is_some(),
            "{how}: the connect error is carried: {shown}"
        );
        assert!(
            shown.to_lowercase().contains(&expect.to_lowercase()),
            "{how}: {shown:?} should say {expect:?}"
        );
        assert!(
            !shown.contains(SECRET),
            "{how}: the password leaked: {shown}"
        );
    };
    let started = Instant::now();
    let err = Pool::builder(manager.clone())
        .acquire_timeout(ACQUIRE)
        .connect()
        .await
        .expect_err("eager connect must fail");
    check(err, started, "connect()");

    let pool = Pool::builder(manager)
        .acquire_timeout(ACQUIRE)
        .build()
        .expect("build opens nothing");
    let started = Instant::now();
    let err = pool.get().await.expect_err("get must fail");
    check(err, started, "get()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_url_port_database_or_user_fail_clearly_without_leaking_the_password() {
    trace();
    let free_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let app = unique("bad");
    let no_user = PgManager::new(
        options(&app)
            .username("vigil_no_such_user")
            .password(SECRET),
    );
    assert!(
        !format!("{no_user:?}").contains(SECRET),
        "the manager's Debug shows the password"
    );
    tokio::join!(
        fails_clearly(
            PgManager::new(options(&app).port(free_port)),
            "connection refused"
        ),
        fails_clearly(
            PgManager::new(options(&app).database("no_such_db_vigil")),
            "database \"no_such_db_vigil\" does not exist"
        ),
        fails_clearly(no_user, "role \"vigil_no_such_user\" does not exist"),
        // sqlx reads this URL as user $USER on the default socket, database
        // ":x": not a parse error, so it must fail clearly at connect.
        async {
            let m = PgManager::from_url("postgres://:@/:x").expect("sqlx accepts this URL");
            fails_clearly(m, "error").await;
        },
    );

    for (url, expect) in [
        ("postgres://host:notaport/db", "invalid port"),
        (
            &*format!("postgres://u:{SECRET}@[::1/db"),
            "invalid IPv6 address",
        ),
        (
            &*format!("postgres://u:{SECRET}@h/db?sslmode=bogus"),
            "ssl_mode",
        ),
        ("not a url", "relative URL without a base"),
    ] {
        let err = PgManager::from_url(url).expect_err(url);
        let shown = format!("{err} / {err:?}");
        assert!(
            shown.contains(expect),
            "{url}: {shown:?} should say {expect:?}"
        );
        assert!(
            shown.contains("invalid PostgreSQL connection URL"),
            "{shown}"
        );
        assert!(
            !shown.contains(SECRET),
            "{url}: the password leaked: {shown}"
        );
    }

    for (setting, builder) in [
        ("max_size", builder(&app).max_size(0)),
        ("min_idle", builder(&app).max_size(2).min_idle(3)),
        (
            "acquire_timeout",
            builder(&app).acquire_timeout(Duration::ZERO),
        ),
    ] {
        match builder.build() {
            Err(BuildError::Config(e)) => assert_eq!(e.setting, setting, "{e}"),
            other => panic!("{setting}: expected BuildError::Config, got {other:?}"),
        }
    }
    match builder(&app).max_size(0).connect().await {
        Err(Error::Build(BuildError::Config(e))) => assert_eq!(e.setting, "max_size"),
        other => panic!("expected Error::Build, got {other:?}"),
    }
}

// ---------------------------------------------------------------- discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeouts_are_read_from_the_session() {
    trace();
    let app = unique("discover");
    let read = |opts: PgConnectOptions| async move {
        let m = PgManager::new(opts);
        let mut conn = m.connect().await.expect("connect");
        m.server_timeouts(&mut conn).await.expect("server_timeouts")
    };
    assert_eq!(
        read(options(&app).options([
            ("idle_session_timeout", "7s"),
            ("idle_in_transaction_session_timeout", "3500ms"),
        ]))
        .await,
        ServerTimeouts {
            idle: Some(7 * SEC),
            idle_in_transaction: Some(3500 * MS),
        }
    );
    assert_eq!(
        read(options(&app).options([("idle_session_timeout", "1min")])).await,
        ServerTimeouts {
            idle: Some(60 * SEC),
            idle_in_transaction: None,
        },
        "units other than ms"
    );
    assert_eq!(
        read(options(&app)).await,
        ServerTimeouts::default(),
        "the server's defaults are 0 (disabled)"
    );

    let pool = Pool::builder(PgManager::new(
        options(&app).options([("idle_session_timeout", "7s")]),
    ))
    .connect()
    .await
    .expect("connect");
    assert_eq!(pool.state().server_idle_timeout, Some(Some(7 * SEC)));
    let pool = Pool::builder(PgManager::new(options(&app)))
        .connect()
        .await
        .expect("connect");
    assert_eq!(pool.state().server_idle_timeout, Some(None));
}
