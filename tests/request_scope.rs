//! Request-scoped connections (`vigil::scope`) driven by real HTTP/1.1
//! requests to an axum app, against the real PostgreSQL (127.0.0.1:5432,
//! trust auth, user `postgres`, database `test`) through sqlx and the real
//! MariaDB (127.0.0.1:3306, user `root`, no password, database `test`)
//! through mysql_async; plus the wiring and error paths on the in-process
//! fake manager.
//!
//! Each database test is written once, generic over [`Backend`], and run on
//! both servers. The tests fail loudly when a server is missing (the table
//! each creates first needs it). They change no global server setting (only
//! session state, which is the point), name their tables and PostgreSQL
//! `application_name`s uniquely, and can run in parallel (one process per
//! test under nextest). Run with `RUST_LOG=vigil=trace` to see the scope's
//! events.

#[path = "request_scope/backends.rs"]
mod backends;
mod support;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use backends::{mysql_admin, Backend};
use futures::FutureExt;
use mysql_async::prelude::Queryable;
use support::fake::Fake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::scope::{RequestScopeLayer, ScopeError, Scoped, ScopedConn};
use vigil::{Manager, Pool, Reason, State};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A name no other test or run uses (PostgreSQL keeps 63 bytes).
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

// ------------------------------------------------------------------ HTTP

/// Serves `app` on an ephemeral loopback port in a background task.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("axum serve");
    });
    addr
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

fn request_bytes(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// A plain HTTP/1.1 GET; `Err` when the server closed the connection
/// without a response (a handler panic nobody caught).
async fn try_get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(request_bytes(addr, path).as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if buf.is_empty() {
        return Err("the server closed the connection without a response".into());
    }
    let text = String::from_utf8(buf).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(Reply {
        status,
        body: body.to_owned(),
    })
}

async fn get_ok(addr: SocketAddr, path: &str) -> String {
    let reply = try_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    reply.body
}

/// Answers a panic in the inner service with a 500, as tower-http's
/// `CatchPanicLayer` would: the panic unwinds through the scope's future,
/// which is dropped after `catch_unwind` returns.
async fn catch_panic(req: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "handler panicked").into_response(),
    }
}

// -------------------------------------------------------------- the app

/// Flags the slow route sets, so the cancellation test knows the handler
/// really was dropped mid-query rather than finishing.
#[derive(Clone, Default)]
struct Probe {
    started: Arc<Notify>,
    finished: Arc<AtomicBool>,
    dropped_early: Arc<AtomicBool>,
}

/// Sets `dropped_early` if dropped before `disarm`.
struct DropFlag(Option<Arc<AtomicBool>>);

impl DropFlag {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, SeqCst);
        }
    }
}

async fn id_of<B: Backend>(db: &Scoped<B>) -> u64 {
    let mut conn = db.conn().await.expect("the request's connection");
    B::session_id(&mut conn).await
}

/// Middleware that uses the scope before the handler (a second extractor
/// in the same request) and reports the session it saw in a header.
async fn session_header<B: Backend>(db: Scoped<B>, req: Request, next: Next) -> Response {
    let id = id_of(&db).await;
    let mut response = next.run(req).await;
    response
        .headers_mut()
        .insert("x-middleware-session", id.into());
    response
}

/// Every route the database tests use, under one `RequestScopeLayer`.
fn app<B: Backend>(pool: Pool<B>, table: &str, probe: Probe) -> Router {
    let t = table.to_owned();
    let dirty = move |db: Scoped<B>| {
        let t = t.clone();
        async move {
            let mut conn = db.conn().await.expect("the request's connection");
            B::dirty(&mut conn, &t).await;
            B::session_id(&mut conn).await.to_string()
        }
    };
    let t = table.to_owned();
    let check = move |db: Scoped<B>| {
        let t = t.clone();
        async move {
            let mut conn = db.conn().await.expect("the request's connection");
            let id = B::session_id(&mut conn).await;
            format!("{id} {}", B::leftovers(&mut conn, &t).await.join("; "))
        }
    };
    let t = table.to_owned();
    let panics = move |db: Scoped<B>| {
        let t = t.clone();
        async move {
            let mut conn = db.conn().await.expect("the request's connection");
            B::dirty(&mut conn, &t).await;
            boom()
        }
    };
    let t = table.to_owned();
    let slow = move |db: Scoped<B>| {
        let (t, probe) = (t.clone(), probe.clone());
        async move {
            let flag = DropFlag(Some(Arc::clone(&probe.dropped_early)));
            let mut conn = db.conn().await.expect("the request's connection");
            B::dirty(&mut conn, &t).await;
            probe.started.notify_one();
            B::slow_query(&mut conn).await;
            probe.finished.store(true, SeqCst);
            flag.disarm();
            "finished"
        }
    };
    Router::new()
        .route("/plain", get(|| async { "no extractor" }))
        .route(
            "/unused",
            get(|_db: Scoped<B>| async { "extracted, not used" }),
        )
        .route("/ids", get(ids::<B>).layer(from_fn(session_header::<B>)))
        .route("/dirty", get(dirty))
        .route("/check", get(check))
        .route("/panic", get(panics))
        .route("/slow", get(slow))
        .layer(RequestScopeLayer::new(pool))
}

fn boom() -> &'static str {
    panic!("handler panics holding a dirty connection (on purpose)")
}

/// Two calls one after the other, then two at once: the sessions each saw.
async fn ids<B: Backend>(db: Scoped<B>) -> String {
    let first = id_of(&db).await;
    let second = id_of(&db).await;
    let other = db.clone(); // a clone is the same scope
    let (a, b) = tokio::join!(id_of(&db), id_of(&other));
    format!("{first} {second} {a} {b}")
}

fn parse_ids(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("not an id: {s:?} in {text:?}"))
        })
        .collect()
}

/// Waits until no connection is lent, opening or being cleaned, and
/// returns the state then.
async fn settled<B: Manager>(pool: &Pool<B>) -> State {
    eventually!("every connection back in the pool", 10 * SEC, {
        let s = pool.state();
        s.active == 0 && s.connecting == 0
    });
    pool.state()
}

/// The pool holds exactly one connection, idle, the one it ever opened.
fn assert_one_reused_connection(s: &State) {
    assert_eq!(
        (
            s.open,
            s.idle,
            s.active,
            s.pending,
            s.created,
            s.closed.total()
        ),
        (1, 1, 0, 0, 1, 0),
        "one connection, idle, never replaced: {s:?}"
    );
}

/// `/check` on the next request: same session as `expected`, nothing left.
async fn assert_next_request_clean(addr: SocketAddr, expected: u64) {
    let body = get_ok(addr, "/check").await;
    let (id, leftovers) = body.split_once(' ').expect("`<id> <leftovers>`");
    assert_eq!(
        id.parse::<u64>().expect("an id"),
        expected,
        "the next request got another session: the test would prove nothing"
    );
    assert_eq!(leftovers, "", "state leaked into the next request");
}

// ------------------------------------------------------------------ tests

async fn every_call_in_a_request_gets_the_same_session<B: Backend>() {
    trace();
    let table = B::create_table().await;
    let pool = B::pool(4);
    let addr = serve(app(pool.clone(), &table, Probe::default())).await;

    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request_bytes(addr, "/ids").as_bytes())
        .await
        .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{raw}");
    let middleware: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("x-middleware-session: "))
        .expect("the middleware's header")
        .parse()
        .expect("an id");
    let ids = parse_ids(body);
    assert_eq!(ids.len(), 4, "{body}");
    assert!(
        ids.iter().all(|&id| id == middleware),
        "middleware saw session {middleware}, the handler's calls saw {ids:?}"
    );
    let s = settled(&pool).await;
    assert_eq!(s.created, 1, "one connection for the whole request: {s:?}");
    B::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_in_a_request_gets_the_same_session_pg() {
    every_call_in_a_request_gets_the_same_session::<PgManager>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_in_a_request_gets_the_same_session_mariadb() {
    every_call_in_a_request_gets_the_same_session::<MySqlManager>().await;
}

async fn requests_that_never_touch_the_db_take_no_connection<B: Backend>() {
    trace();
    let table = B::create_table().await;
    let pool = B::pool(4);
    let addr = serve(app(pool.clone(), &table, Probe::default())).await;

    get_ok(addr, "/plain").await;
    get_ok(addr, "/unused").await;
    let s = pool.state();
    assert_eq!(
        (s.created, s.open, s.connecting, s.pending),
        (0, 0, 0, 0),
        "a request that never asked for a connection took one: {s:?}"
    );
    // Control: the same app does take one when asked.
    get_ok(addr, "/check").await;
    assert_eq!(settled(&pool).await.created, 1);
    B::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_never_touch_the_db_take_no_connection_pg() {
    requests_that_never_touch_the_db_take_no_connection::<PgManager>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_never_touch_the_db_take_no_connection_mariadb() {
    requests_that_never_touch_the_db_take_no_connection::<MySqlManager>().await;
}

async fn state_left_by_a_request_is_gone_for_the_next<B: Backend>() {
    trace();
    let table = B::create_table().await;
    // One connection: the next request is served by the same session.
    let pool = B::pool(1);
    let addr = serve(app(pool.clone(), &table, Probe::default())).await;

    let dirty: u64 = get_ok(addr, "/dirty").await.parse().expect("an id");
    assert_next_request_clean(addr, dirty).await;
    assert_eq!(
        B::committed_rows(&table).await,
        0,
        "the row of the transaction left open was committed"
    );
    assert_one_reused_connection(&settled(&pool).await);
    B::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_left_by_a_request_is_gone_for_the_next_pg() {
    state_left_by_a_request_is_gone_for_the_next::<PgManager>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_left_by_a_request_is_gone_for_the_next_mariadb() {
    state_left_by_a_request_is_gone_for_the_next::<MySqlManager>().await;
}

async fn a_panicking_handler_gives_back_a_clean_connection<B: Backend>() {
    trace();
    let table = B::create_table().await;
    let pool = B::pool(1);
    let probe = Probe::default();

    // Nothing catches the panic: hyper's connection task dies with it and
    // tokio drops the request's future while unwinding.
    let addr = serve(app(pool.clone(), &table, probe.clone())).await;
    let first = get_ok(addr, "/check").await;
    let id = parse_ids(first.split_whitespace().next().expect("an id"))[0];
    let outcome = try_get(addr, "/panic").await;
    assert!(
        outcome.is_err(),
        "an uncaught panic sends no response: {outcome:?}"
    );
    assert_one_reused_connection(&settled(&pool).await);
    assert_next_request_clean(addr, id).await;

    // A catch-panic layer outside the scope answers 500; the scope's future
    // is dropped after the panic was caught.
    let caught = serve(app(pool.clone(), &table, probe).layer(from_fn(catch_panic))).await;
    let reply = try_get(caught, "/panic").await.expect("a response");
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_one_reused_connection(&settled(&pool).await);
    assert_next_request_clean(caught, id).await;

    assert_eq!(B::committed_rows(&table).await, 0);
    B::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gives_back_a_clean_connection_pg() {
    a_panicking_handler_gives_back_a_clean_connection::<PgManager>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gives_back_a_clean_connection_mariadb() {
    a_panicking_handler_gives_back_a_clean_connection::<MySqlManager>().await;
}

/// Sends `/slow`, waits until the handler is inside its slow query, and
/// hangs up. Returns once the server has dropped the handler's future.
async fn hang_up_mid_query(addr: SocketAddr, probe: &Probe) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request_bytes(addr, "/slow").as_bytes())
        .await
        .expect("write");
    tokio::time::timeout(5 * SEC, probe.started.notified())
        .await
        .expect("the handler reached its slow query");
    // Let the statement reach the server before hanging up.
    tokio::time::sleep(200 * MS).await;
    drop(s);
    eventually!(
        "the server to drop the request's future",
        SEC,
        probe.dropped_early.load(SeqCst)
    );
    assert!(
        !probe.finished.load(SeqCst),
        "the handler finished: it was not cancelled, the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_gives_back_a_clean_connection_pg() {
    trace();
    let table = PgManager::create_table().await;
    let pool = PgManager::pool(1);
    let probe = Probe::default();
    let addr = serve(app(pool.clone(), &table, probe.clone())).await;
    let first = get_ok(addr, "/check").await;
    let id = parse_ids(first.split_whitespace().next().expect("an id"))[0];

    hang_up_mid_query(addr, &probe).await;
    // sqlx waits for the cancelled statement's reply on return (the
    // pool's ping queues behind it), then rolls back and DISCARDs ALL: the
    // same session comes back, clean.
    assert_one_reused_connection(&settled(&pool).await);
    assert_next_request_clean(addr, id).await;
    assert_eq!(PgManager::committed_rows(&table).await, 0);
    PgManager::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_gives_back_a_clean_connection_mariadb() {
    trace();
    let table = MySqlManager::create_table().await;
    let pool = MySqlManager::pool(1);
    let probe = Probe::default();
    let addr = serve(app(pool.clone(), &table, probe.clone())).await;
    let first = get_ok(addr, "/check").await;
    let id = parse_ids(first.split_whitespace().next().expect("an id"))[0];

    hang_up_mid_query(addr, &probe).await;
    // mysql_async marks a connection whose command was cancelled midway as
    // disconnected and closes its socket; the pool sees `has_broken` on
    // return and retires it rather than lending a session in doubt.
    let s = settled(&pool).await;
    assert_eq!(
        (s.open, s.active, s.pending, s.created),
        (0, 0, 0, 1),
        "the slot is free, the connection closed: {s:?}"
    );
    assert_eq!(
        (s.closed.get(Reason::Broken), s.closed.total()),
        (1, 1),
        "{s:?}"
    );
    // The server ends that session (and its open transaction) once the
    // slow statement notices the closed socket.
    let mut admin = mysql_admin().await;
    eventually!("the server to end the cancelled session", 10 * SEC, {
        let listed: Option<u64> = admin
            .exec_first(
                "SELECT ID FROM information_schema.processlist WHERE ID = ?",
                (id,),
            )
            .await
            .expect("read the processlist");
        listed.is_none()
    });
    admin.disconnect().await.expect("disconnect");
    let body = get_ok(addr, "/check").await;
    let (next, leftovers) = body.split_once(' ').expect("`<id> <leftovers>`");
    assert_ne!(next.parse::<u64>().expect("an id"), id, "a new session");
    assert_eq!(leftovers, "", "state leaked into the next request");
    assert_eq!(MySqlManager::committed_rows(&table).await, 0);
    MySqlManager::drop_table(&table).await;
}

// ------------------------------------------------- wiring, on the fake

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_the_layer_answers_500_naming_it() {
    let app = Router::new().route("/", get(|_db: Scoped<Fake>| async { "unreachable" }));
    let reply = try_get(serve(app).await, "/").await.expect("a response");
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(
        reply.body.contains("RequestScopeLayer") && reply.body.contains("Fake"),
        "the body names the missing layer and the manager: {}",
        reply.body
    );
}

async fn take_conn(db: Scoped<Fake>) -> Result<String, ScopeError<support::fake::FakeError>> {
    let conn = db.conn().await?;
    Ok(conn.id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_errors_answer_503_with_the_pools_error() {
    let pool = Pool::builder(Fake::new())
        .max_size(1)
        .acquire_timeout(200 * MS)
        .build()
        .expect("valid settings");
    let app = Router::new()
        .route("/", get(take_conn))
        .layer(RequestScopeLayer::new(pool.clone()));
    let addr = serve(app).await;

    let held = pool.get().await.expect("the only connection");
    let reply = try_get(addr, "/").await.expect("a response");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body.contains("timed out"), "{}", reply.body);
    drop(held);
    assert_eq!(
        get_ok(addr, "/").await,
        "1",
        "served once a connection is free"
    );

    pool.close().await;
    let reply = try_get(addr, "/").await.expect("a response");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body.contains("closed"), "{}", reply.body);
}

/// Records the order in which guards were taken and dropped.
type Log = Arc<Mutex<Vec<String>>>;

async fn hold_for(db: &Scoped<Fake>, who: &str, log: &Log, d: Duration) -> u64 {
    let conn = db.conn().await.expect("the request's connection");
    log.lock().unwrap().push(format!("{who} in"));
    tokio::time::sleep(d).await;
    log.lock().unwrap().push(format!("{who} out"));
    ScopedConn::id(&conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_users_in_a_request_take_turns_on_one_connection() {
    let pool = Pool::builder(Fake::new()).max_size(4).build().unwrap();
    let log = Log::default();
    let handler = {
        let log = Arc::clone(&log);
        move |db: Scoped<Fake>| async move {
            let (a, b) = tokio::join!(
                hold_for(&db, "a", &log, 50 * MS),
                hold_for(&db, "b", &log, Duration::ZERO)
            );
            format!("{a} {b}")
        }
    };
    let app = Router::new()
        .route("/", get(handler))
        .layer(RequestScopeLayer::new(pool.clone()));
    let ids = parse_ids(&get_ok(serve(app).await, "/").await);
    assert_eq!(ids[0], ids[1], "one connection for both users");
    assert_eq!(*log.lock().unwrap(), ["a in", "a out", "b in", "b out"]);
    let s = settled(&pool).await;
    assert_eq!((s.created, s.open, s.idle), (1, 1, 1), "{s:?}");
}

/// What a late `conn()` call returned: the connection's id, or why none.
type LateConn = Result<u64, ScopeError<support::fake::FakeError>>;

/// What a task that outlives its request holds and is told to do.
#[derive(Clone, Default)]
struct Straggler {
    /// Hold the guard (not just the handle) past the response.
    hold_guard: bool,
    ready: Arc<Notify>,
    go: Arc<Notify>,
    done: Arc<Notify>,
    report: Arc<Mutex<Option<LateConn>>>,
}

/// The request dirties its connection and leaves a task behind with a
/// clone of the scope handle (and, if `hold_guard`, the guard itself).
async fn leave_a_straggler(db: Scoped<Fake>, st: Straggler) -> &'static str {
    let mut conn = db.conn().await.expect("the request's connection");
    conn.session_var = Some("dirty".into());
    let guard_id = ScopedConn::id(&conn);
    drop(conn);
    let task = st.clone();
    tokio::spawn(async move {
        let conn = if task.hold_guard {
            Some(db.conn().await.expect("the request's connection"))
        } else {
            None
        };
        assert!(conn
            .as_ref()
            .map_or(true, |c| ScopedConn::id(c) == guard_id));
        task.ready.notify_one();
        task.go.notified().await;
        drop(conn);
        // The request is over: no connection, and none taken.
        let late = db.conn().await.map(|c| ScopedConn::id(&c));
        *task.report.lock().unwrap() = Some(late);
        task.done.notify_one();
        // Holds the handle until the test is done looking.
        task.go.notified().await;
    });
    st.ready.notified().await;
    "responded"
}

async fn handle_kept_past_the_response(hold_guard: bool) {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone()).max_size(4).build().unwrap();
    let st = Straggler {
        hold_guard,
        ..Straggler::default()
    };
    let handler = {
        let st = st.clone();
        move |db: Scoped<Fake>| leave_a_straggler(db, st.clone())
    };
    let app = Router::new()
        .route("/", get(handler))
        .layer(RequestScopeLayer::new(pool.clone()));
    get_ok(serve(app).await, "/").await;

    if hold_guard {
        // The response is out; the task still holds the guard, so the
        // connection is still lent ...
        assert_eq!(pool.state().active, 1, "{:?}", pool.state());
        st.go.notify_one();
        st.done.notified().await;
    }
    // ... and comes back the moment it is dropped. Without the guard, it
    // came back with the response. Either way, while the task still holds
    // a handle to the scope.
    let s = settled(&pool).await;
    assert_eq!((s.created, s.idle, s.closed.total()), (1, 1, 0), "{s:?}");
    assert_eq!(
        fake.script.resets.load(SeqCst),
        1,
        "the connection came back through a full reset"
    );
    if !hold_guard {
        st.go.notify_one();
        st.done.notified().await;
    }
    let late = st.report.lock().unwrap().take().expect("the task reported");
    assert!(matches!(late, Err(ScopeError::Ended)), "{late:?}");
    assert_eq!(pool.state().created, 1, "the late call took no connection");
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.session_var, None, "the full reset cleared the session");
    drop(conn);
    st.go.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_kept_past_the_response_does_not_keep_the_connection() {
    handle_kept_past_the_response(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_kept_past_the_response_returns_the_connection_when_dropped() {
    handle_kept_past_the_response(true).await;
}

/// Axum handlers need `Send` futures: the handle, the guard and the
/// future of `conn()` are `Send` for every manager.
#[allow(dead_code)]
fn scope_types_are_send<M: Manager>(db: &Scoped<M>) {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    send_sync::<Scoped<M>>();
    send(&db.conn());
    send::<Option<ScopedConn<'_, M>>>(&None);
    send::<RequestScopeLayer<M>>(&RequestScopeLayer::new(db.pool().clone()));
}
