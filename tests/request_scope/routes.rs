//! The axum app the database tests drive (every route under one
//! `RequestScopeLayer`), and the checks they make on the pool afterwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::{from_fn, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::sync::Notify;
use vigil::scope::{RequestScopeLayer, Scoped};
use vigil::{Manager, Pool, State};

use crate::backends::Backend;
use crate::http::get_ok;
use crate::{eventually, SEC};

/// Flags the slow route sets, so the cancellation test knows the handler
/// really was dropped mid-query rather than finishing.
#[derive(Clone, Default)]
pub(crate) struct Probe {
    pub(crate) started: Arc<Notify>,
    pub(crate) finished: Arc<AtomicBool>,
    pub(crate) dropped_early: Arc<AtomicBool>,
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
pub(crate) fn app<B: Backend>(pool: Pool<B>, table: &str, probe: Probe) -> Router {
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

pub(crate) fn parse_ids(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("not an id: {s:?} in {text:?}"))
        })
        .collect()
}

/// Waits until no connection is lent, opening or being cleaned, and
/// returns the state then.
pub(crate) async fn settled<B: Manager>(pool: &Pool<B>) -> State {
    eventually!("every connection back in the pool", 10 * SEC, {
        let s = pool.state();
        // A return whose cleaning went silent past the hedge delay (sqlx's
        // ping queued behind a cancelled statement) is presumed dead until
        // it answers or times out: settled only then.
        s.active == 0 && s.connecting == 0 && s.presumed_dead == 0
    });
    pool.state()
}

/// The pool holds exactly one connection, idle, the one it ever opened.
pub(crate) fn assert_one_reused_connection(s: &State) {
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
pub(crate) async fn assert_next_request_clean(addr: SocketAddr, expected: u64) {
    let body = get_ok(addr, "/check").await;
    let (id, leftovers) = body.split_once(' ').expect("`<id> <leftovers>`");
    assert_eq!(
        id.parse::<u64>().expect("an id"),
        expected,
        "the next request got another session: the test would prove nothing"
    );
    assert_eq!(leftovers, "", "state leaked into the next request");
}
