//! Request-scoped connections (feature `tower`): one connection per HTTP
//! request, taken on first use, cleaned and returned when the request ends.
//!
//! The Django / Werkzeug pattern for tower and axum. [`RequestScopeLayer`]
//! puts a fresh [`Scoped`] handle into every request's extensions; handlers
//! (and middleware) extract it and call [`Scoped::conn`]:
//!
//! | when | what happens |
//! |---|---|
//! | request arrives | a scope is made; **no connection is taken** |
//! | first [`Scoped::conn`] | one connection is taken from the pool and marked for a full reset on return ([`Pooled::reset_on_return`]) |
//! | later `conn()` calls in the same request (other extractors, middleware, concurrent branches) | the same connection, one user at a time |
//! | the inner service's future completes, **or is dropped** (client went away, timeout layer, a panic unwinding through it) | the scope ends: the connection goes back to the pool, which rolls back anything open and resets the session (PostgreSQL `ROLLBACK` + `DISCARD ALL`, MySQL/MariaDB through `mysql_async` `COM_RESET_CONNECTION`) before lending it again |
//!
//! So a worker that serves the next request never carries the previous
//! request's transaction, session variables, temporary tables or
//! `search_path`. A failed reset retires the connection instead. The reset
//! runs in the background while the connection keeps its slot, so the next
//! borrower waits for a clean session rather than getting a dirty one.
//!
//! What a full reset covers depends on the backend: sqlx's MySQL driver
//! (`MySqlSqlxManager`) cannot send `COM_RESET_CONNECTION`, so there only the
//! transaction is rolled back; see the `backend::sqlx` module docs.
//!
//! # Example
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # mod demo {
//! use axum::http::StatusCode;
//! use axum::response::{IntoResponse, Response};
//! use axum::{routing::get, Router};
//! use vigil::backend::sqlx::PgManager;
//! use vigil::scope::{RequestScopeLayer, Scoped};
//! use vigil::Pool;
//!
//! async fn whoami(db: Scoped<PgManager>) -> Result<String, Response> {
//!     // The first call takes a connection; the error is a 503 response.
//!     let mut conn = db.conn().await.map_err(IntoResponse::into_response)?;
//!     let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
//!         .fetch_one(&mut *conn)
//!         .await
//!         .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())?;
//!     Ok(format!("served by backend {pid}"))
//! }
//!
//! pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = Pool::builder(PgManager::from_url("postgres://postgres@127.0.0.1/test")?)
//!         .max_size(8)
//!         .connect()
//!         .await?;
//!     let app = Router::new()
//!         .route("/whoami", get(whoami))
//!         .layer(RequestScopeLayer::new(pool));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! # Concurrency within one request
//! One connection serves the whole request, and a connection runs one
//! statement at a time, so [`Scoped::conn`] hands out a guard
//! ([`ScopedConn`]) one user at a time. Holding the guard across `.await`s
//! serializes every other user of the scope until it is dropped; asking for
//! a second guard while holding the first **in the same task** waits forever,
//! as with any async mutex. Take the guard, run the statements, drop it.
//!
//! # One scope per manager type
//! The handle is found in the request's extensions by its type,
//! `Scoped<M>`. Two layers with the same manager type on one route share a
//! slot: the inner one wins and the outer one's scope stays unused (it never
//! takes a connection).
//!
//! # Errors as responses
//! [`ScopeError`] and [`MissingScope`] implement
//! [`IntoResponse`]: an acquire error (timeout, busy, closed) is a `503`
//! with the pool's error text (which names the phase and the last connect
//! error, never a password); a missing layer is a `500` naming the layer.

use std::any::type_name;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{header, Request, StatusCode};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Error;
use crate::manager::Manager;
use crate::pool::{Pool, Pooled};

/// Tracing target of this module.
const TARGET: &str = "vigil::scope";

/// A tower [`Layer`] that gives every request its own lazily taken
/// connection from `pool` (see the [module docs](self)).
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: vigil::Pool<vigil::backend::sqlx::PgManager>) {
/// let app: axum::Router = axum::Router::new()
///     // .route(...)
///     .layer(vigil::scope::RequestScopeLayer::new(pool));
/// # }
/// ```
pub struct RequestScopeLayer<M: Manager> {
    pool: Pool<M>,
}

impl<M: Manager> RequestScopeLayer<M> {
    /// A layer whose requests take their connection from `pool`.
    pub fn new(pool: Pool<M>) -> Self {
        RequestScopeLayer { pool }
    }
}

impl<M: Manager> Clone for RequestScopeLayer<M> {
    fn clone(&self) -> Self {
        RequestScopeLayer {
            pool: self.pool.clone(),
        }
    }
}

impl<M: Manager> fmt::Debug for RequestScopeLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestScopeLayer")
            .field("pool", &self.pool.config().name)
            .finish_non_exhaustive()
    }
}

impl<S, M: Manager> Layer<S> for RequestScopeLayer<M> {
    type Service = RequestScope<S, M>;

    fn layer(&self, inner: S) -> RequestScope<S, M> {
        RequestScope {
            inner,
            pool: self.pool.clone(),
        }
    }
}

/// The [`Service`] made by [`RequestScopeLayer`]: inserts a [`Scoped`] into
/// each request's extensions and ends the scope when the inner service's
/// future completes or is dropped.
pub struct RequestScope<S, M: Manager> {
    inner: S,
    pool: Pool<M>,
}

impl<S: Clone, M: Manager> Clone for RequestScope<S, M> {
    fn clone(&self) -> Self {
        RequestScope {
            inner: self.inner.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl<S: fmt::Debug, M: Manager> fmt::Debug for RequestScope<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestScope")
            .field("inner", &self.inner)
            .field("pool", &self.pool.config().name)
            .finish()
    }
}

impl<S, M, B> Service<Request<B>> for RequestScope<S, M>
where
    S: Service<Request<B>>,
    M: Manager,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ScopeFuture<S::Future, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let scope = Arc::new(Scope::new(self.pool.clone()));
        req.extensions_mut().insert(Scoped {
            scope: Arc::clone(&scope),
        });
        ScopeFuture {
            // Boxed so the future can be polled without pin projection
            // (the crate forbids `unsafe`); one allocation per request.
            inner: Box::pin(self.inner.call(req)),
            scope: Some(scope),
        }
    }
}

/// The response future of [`RequestScope`]: the inner future, then the end
/// of the scope. Ends the scope on completion and on drop, whichever comes
/// first, so a cancelled or panicking request gives its connection back.
#[must_use = "futures do nothing unless polled; dropping it ends the request scope"]
pub struct ScopeFuture<F, M: Manager> {
    inner: Pin<Box<F>>,
    /// `None` once the scope has ended.
    scope: Option<Arc<Scope<M>>>,
}

impl<F, M: Manager> fmt::Debug for ScopeFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeFuture")
            .field("ended", &self.scope.is_none())
            .finish_non_exhaustive()
    }
}

impl<F: Future, M: Manager> Future for ScopeFuture<F, M> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `ScopeFuture` is `Unpin`: the inner future is pinned in its box.
        let this = self.get_mut();
        let output = ready!(this.inner.as_mut().poll(cx));
        // End before handing the response on: the connection is on its way
        // back (or already idle) by the time the client sees the response.
        if let Some(scope) = this.scope.take() {
            scope.end();
        }
        Poll::Ready(output)
    }
}

impl<F, M: Manager> Drop for ScopeFuture<F, M> {
    fn drop(&mut self) {
        // Dropped before completion: cancelled (client gone, a timeout
        // layer) or unwinding from a panic in the handler.
        if let Some(scope) = self.scope.take() {
            scope.end();
        }
    }
}

/// One request's scope, shared by its [`Scoped`] handles and its
/// [`ScopeFuture`].
struct Scope<M: Manager> {
    pool: Pool<M>,
    /// One user of the connection at a time. Closed when the scope ends,
    /// which fails every waiting and later `conn()` with `Ended`.
    turn: Semaphore,
    state: Mutex<State<M>>,
}

/// Where the scope's connection is: in `conn` between users, inside the
/// [`ScopedConn`] of the current user, or nowhere (not taken yet, or gone).
/// Both `end` and a returning guard decide under this lock, so exactly one
/// of them gives the connection back to the pool.
struct State<M: Manager> {
    conn: Option<Pooled<M>>,
    ended: bool,
}

impl<M: Manager> Scope<M> {
    fn new(pool: Pool<M>) -> Self {
        Scope {
            pool,
            turn: Semaphore::new(1),
            state: Mutex::new(State {
                conn: None,
                ended: false,
            }),
        }
    }

    /// Ends the scope: no more turns, and the connection, if the scope took
    /// one and no guard holds it, goes back to the pool now; a guard that
    /// holds it gives it back when dropped.
    fn end(&self) {
        self.turn.close();
        let conn = {
            let mut state = self.state.lock();
            state.ended = true;
            state.conn.take()
        };
        // Dropped outside our lock: the check-in takes the pool's lock.
        if let Some(conn) = conn {
            tracing::trace!(target: TARGET, id = Pooled::id(&conn), "request scope ended");
            drop(conn);
        }
    }
}

/// The request's scope handle: an axum extractor (and a request extension
/// inserted by [`RequestScopeLayer`]). Cheap to clone; clones share the
/// request's one connection.
///
/// Extracting it takes no connection; [`conn`](Scoped::conn) does, once per
/// request.
pub struct Scoped<M: Manager> {
    scope: Arc<Scope<M>>,
}

impl<M: Manager> Clone for Scoped<M> {
    fn clone(&self) -> Self {
        Scoped {
            scope: Arc::clone(&self.scope),
        }
    }
}

impl<M: Manager> fmt::Debug for Scoped<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.scope.state.lock();
        f.debug_struct("Scoped")
            .field("pool", &self.scope.pool.config().name)
            .field("idle_conn", &state.conn.as_ref().map(Pooled::id))
            .field("ended", &state.ended)
            .finish()
    }
}

impl<M: Manager> Scoped<M> {
    /// The request's connection: taken from the pool on the first call,
    /// the same one on every later call in this request. Waits while
    /// another user of the scope holds the guard, so a second call while
    /// this task still holds one waits forever: drop the first guard first.
    ///
    /// The connection is marked for a full session reset on return
    /// ([`Pooled::reset_on_return`]) and goes back to the pool when the
    /// request ends, not when the guard is dropped.
    ///
    /// # Errors
    /// - [`ScopeError::Acquire`] when the pool could not lend a connection
    ///   ([`Error::Timeout`], [`Error::Busy`], [`Error::Closed`]); a later
    ///   call tries again.
    /// - [`ScopeError::Ended`] when the request has ended (the handle was
    ///   kept past the response, say by a spawned task).
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future while it waits for its turn gives
    /// the turn up; dropping it while the pool is lending gives back the
    /// pool's slot ([`Pool::get`] is cancel-safe). The scope's connection,
    /// once taken, stays in the scope.
    pub async fn conn(&self) -> Result<ScopedConn<'_, M>, ScopeError<M::Error>> {
        let scope = &*self.scope;
        // Our turn first: only the holder of the turn touches `state.conn`
        // or takes a connection, so two first calls cannot take two.
        let turn = scope.turn.acquire().await.map_err(|_| ScopeError::Ended)?;
        let held = {
            let mut state = scope.state.lock();
            if state.ended {
                return Err(ScopeError::Ended);
            }
            state.conn.take()
        };
        let conn = match held {
            Some(conn) => conn,
            None => {
                let mut conn = scope.pool.get().await.map_err(ScopeError::Acquire)?;
                Pooled::reset_on_return(&mut conn);
                tracing::trace!(target: TARGET, id = Pooled::id(&conn), "request scope took a connection");
                // The request may have ended while the pool was lending (the
                // handle outlived it); then this connection goes straight back.
                if scope.state.lock().ended {
                    drop(conn);
                    return Err(ScopeError::Ended);
                }
                conn
            }
        };
        Ok(ScopedConn {
            conn: Some(conn),
            scope,
            _turn: turn,
        })
    }

    /// The pool this scope takes its connection from.
    pub fn pool(&self) -> &Pool<M> {
        &self.scope.pool
    }
}

impl<S, M> FromRequestParts<S> for Scoped<M>
where
    S: Send + Sync,
    M: Manager,
{
    type Rejection = MissingScope;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, MissingScope> {
        match parts.extensions.get::<Scoped<M>>() {
            Some(scoped) => Ok(scoped.clone()),
            None => {
                // warn: a wiring mistake that fails every request of the
                // route, not a per-request condition.
                tracing::warn!(
                    target: TARGET,
                    manager = type_name::<M>(),
                    "Scoped extractor used without RequestScopeLayer"
                );
                Err(MissingScope {
                    manager: type_name::<M>(),
                })
            }
        }
    }
}

/// The request's connection, one user at a time (see
/// [`Scoped::conn`]). Derefs to the driver's connection. Dropping it hands
/// the connection back to the request's scope (not to the pool) and lets
/// the next user of the scope in.
#[must_use = "dropping the guard lets the next user of the request's connection in"]
pub struct ScopedConn<'a, M: Manager> {
    /// `Some` until dropped.
    conn: Option<Pooled<M>>,
    scope: &'a Scope<M>,
    /// Declared last: released after `drop` has put the connection back,
    /// so the next user finds it in the scope instead of taking another.
    _turn: SemaphorePermit<'a>,
}

impl<M: Manager> ScopedConn<'_, M> {
    fn pooled(&self) -> &Pooled<M> {
        self.conn
            .as_ref()
            .expect("ScopedConn holds its connection until dropped")
    }

    /// The pool's id for this connection (as in its log lines and
    /// `/status`); the same for every guard of one request.
    pub fn id(this: &Self) -> u64 {
        Pooled::id(this.pooled())
    }
}

impl<M: Manager> Deref for ScopedConn<'_, M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        self.pooled()
    }
}

impl<M: Manager> DerefMut for ScopedConn<'_, M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        self.conn
            .as_mut()
            .expect("ScopedConn holds its connection until dropped")
    }
}

impl<M: Manager> Drop for ScopedConn<'_, M> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let late = {
            let mut state = self.scope.state.lock();
            if state.ended {
                // The request ended while this guard was out: the
                // connection goes to the pool from here.
                Some(conn)
            } else {
                state.conn = Some(conn);
                None
            }
        };
        drop(late);
    }
}

impl<M: Manager> fmt::Debug for ScopedConn<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedConn")
            .field("id", &self.conn.as_ref().map(Pooled::id))
            .finish_non_exhaustive()
    }
}

/// Why [`Scoped::conn`] gave no connection. As a response
/// ([`IntoResponse`]): `503 Service Unavailable` for `Acquire`, `500` for
/// `Ended`, with the error text as a plain-text body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError<E: std::error::Error + 'static> {
    /// The pool could not lend a connection (timeout, busy, closed).
    #[error("no database connection for this request: {0}")]
    Acquire(#[source] Error<E>),
    /// The request has ended; its connection went back to the pool.
    #[error("the request scope has ended; its connection went back to the pool")]
    Ended,
}

impl<E: std::error::Error + 'static> ScopeError<E> {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ScopeError::Acquire(_) => StatusCode::SERVICE_UNAVAILABLE,
            ScopeError::Ended => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl<E: std::error::Error + 'static> IntoResponse for ScopeError<E> {
    fn into_response(self) -> Response {
        text_response(self.status(), self.to_string())
    }
}

/// The rejection of the [`Scoped`] extractor: the request went through no
/// [`RequestScopeLayer`] for this manager type. Answered with
/// `500 Internal Server Error` naming the missing layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no request scope for {manager}: add `.layer(vigil::scope::RequestScopeLayer::new(pool))` \
     to the router (over this route) to use the `Scoped<{manager}>` extractor"
)]
pub struct MissingScope {
    manager: &'static str,
}

impl IntoResponse for MissingScope {
    fn into_response(self) -> Response {
        text_response(StatusCode::INTERNAL_SERVER_ERROR, self.to_string())
    }
}

fn text_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}
