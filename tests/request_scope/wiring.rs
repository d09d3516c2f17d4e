//! Wiring and error paths, on the fake manager: a route without the layer,
//! acquire errors, concurrent users of one scope, and `Send` futures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use vigil::scope::{RequestScopeLayer, ScopeError, Scoped, ScopedConn};
use vigil::{Manager, Pool};

use crate::http::{get_ok, serve, try_get};
use crate::routes::{parse_ids, settled};
use crate::support::fake::Fake;
use crate::{support, MS};

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
