//! Tasks that outlive their request, on the fake manager: a kept scope
//! handle does not keep the connection; a kept guard returns it when
//! dropped.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use tokio::sync::Notify;
use vigil::scope::{RequestScopeLayer, ScopeError, Scoped, ScopedConn};
use vigil::Pool;

use crate::http::{get_ok, serve};
use crate::routes::settled;
use crate::support;
use crate::support::fake::Fake;

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
        assert!(conn.as_ref().is_none_or(|c| ScopedConn::id(c) == guard_id));
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
