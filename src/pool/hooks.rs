//! Lifecycle hooks: the user's own async code at three points of a
//! connection's life (see [`Builder::after_connect`](super::Builder::after_connect)
//! and its two siblings). Stored as `Option`s, so a pool without hooks asks
//! one `is_some()` on the paths they would run on and nothing else.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Meta;

/// The future a hook returns: boxed, `Send`, borrowing the connection.
pub type HookFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// What a hook is told about the connection it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionMetadata {
    /// The pool's id for the connection (as in its log lines and
    /// [`Pooled::id`](crate::Pooled::id)).
    pub id: u64,
    /// How long ago it was opened.
    pub age: Duration,
    /// How long since the pool last saw it do I/O (a borrower's query,
    /// a ping, a reset).
    pub idle_for: Duration,
    /// How many borrowers it had before this one.
    pub uses: u64,
}

impl ConnectionMetadata {
    /// A session opened `age` ago, never lent.
    pub(crate) fn new(id: u64, age: Duration) -> Self {
        ConnectionMetadata {
            id,
            age,
            idle_for: Duration::ZERO,
            uses: 0,
        }
    }

    pub(crate) fn of(meta: &Meta, now: Instant) -> Self {
        ConnectionMetadata {
            id: meta.id,
            age: now.saturating_duration_since(meta.created),
            idle_for: now.saturating_duration_since(meta.last_io),
            uses: meta.uses,
        }
    }
}

type SetUp<C, E> = Hook<C, (), E>;
type Vet<C, E> = Hook<C, bool, E>;

/// A hook that sets a session up: an async closure (boxed) given the
/// connection, `Ok(())` or the error that fails it. Implemented for every
/// such closure; see [`Builder::after_connect`](crate::Builder::after_connect).
pub trait SetUpHook<C, E>:
    for<'c> Fn(&'c mut C, ConnectionMetadata) -> HookFuture<'c, (), E> + Send + Sync + 'static
{
}

impl<C, E, F> SetUpHook<C, E> for F where
    F: for<'c> Fn(&'c mut C, ConnectionMetadata) -> HookFuture<'c, (), E> + Send + Sync + 'static
{
}

/// A hook that judges a connection: an async closure (boxed) given the
/// connection, `Ok(true)` to keep it, `Ok(false)` or an error to close it.
/// Implemented for every such closure; see
/// [`Builder::before_acquire`](crate::Builder::before_acquire).
pub trait VetHook<C, E>:
    for<'c> Fn(&'c mut C, ConnectionMetadata) -> HookFuture<'c, bool, E> + Send + Sync + 'static
{
}

impl<C, E, F> VetHook<C, E> for F where
    F: for<'c> Fn(&'c mut C, ConnectionMetadata) -> HookFuture<'c, bool, E> + Send + Sync + 'static
{
}

/// The hooks of one pool (shared by a keyed pool's sub-pools).
pub(crate) struct Hooks<C, E> {
    pub(crate) after_connect: Option<Arc<SetUp<C, E>>>,
    pub(crate) before_acquire: Option<Arc<Vet<C, E>>>,
    pub(crate) after_release: Option<Arc<Vet<C, E>>>,
}

impl<C, E> Default for Hooks<C, E> {
    fn default() -> Self {
        Hooks {
            after_connect: None,
            before_acquire: None,
            after_release: None,
        }
    }
}

impl<C, E> Clone for Hooks<C, E> {
    fn clone(&self) -> Self {
        Hooks {
            after_connect: self.after_connect.clone(),
            before_acquire: self.before_acquire.clone(),
            after_release: self.after_release.clone(),
        }
    }
}

impl<C, E> fmt::Debug for Hooks<C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("after_connect", &self.after_connect.is_some())
            .field("before_acquire", &self.before_acquire.is_some())
            .field("after_release", &self.after_release.is_some())
            .finish()
    }
}

impl<C: Send + 'static, E: Send + 'static> Hooks<C, E> {
    /// The same hooks for a wrapper's connection and error types (a keyed
    /// pool's sub-pools lend `CappedConn`s and fail with `CappedError`s).
    pub(crate) fn wrapped<D: Send + 'static, F: Send + 'static>(
        &self,
        inner: fn(&mut D) -> &mut C,
        wrap: fn(E) -> F,
    ) -> Hooks<D, F> {
        Hooks {
            after_connect: self.after_connect.clone().map(|h| map(h, inner, wrap)),
            before_acquire: self.before_acquire.clone().map(|h| map(h, inner, wrap)),
            after_release: self.after_release.clone().map(|h| map(h, inner, wrap)),
        }
    }
}

type Hook<C, T, E> =
    dyn for<'c> Fn(&'c mut C, ConnectionMetadata) -> HookFuture<'c, T, E> + Send + Sync;

/// `hook` over a wrapper's connection and error types.
fn map<C, D, T, E, F>(
    hook: Arc<Hook<C, T, E>>,
    inner: fn(&mut D) -> &mut C,
    wrap: fn(E) -> F,
) -> Arc<Hook<D, T, F>>
where
    C: Send + 'static,
    D: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    F: Send + 'static,
{
    Arc::new(hrtb(move |conn: &mut D, meta| {
        let run = hook(inner(conn), meta);
        Box::pin(async move { run.await.map_err(wrap) })
    }))
}

/// Pins a closure's signature to the higher-ranked one a hook has (closure
/// signatures are inferred from a bound, not from a cast).
fn hrtb<C, T, F, G>(g: G) -> G
where
    G: for<'c> Fn(&'c mut C, ConnectionMetadata) -> HookFuture<'c, T, F>,
{
    g
}
