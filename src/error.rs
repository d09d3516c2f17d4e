//! Errors, one enum per operation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why [`Pool::get`](crate::Pool::get) did not return a connection.
///
/// `E` is the manager's error type. A timeout carries the last connect error,
/// so wrong credentials read as wrong credentials, not as "timed out". Every
/// variant is one `get()` can return; [`Builder::connect`](crate::Builder::connect)
/// has its own [`ConnectError`], [`Pool::get_blocking`](crate::Pool::get_blocking)
/// its own [`BlockingError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E: std::error::Error + 'static> {
    /// The pool was closed with [`Pool::close`](crate::Pool::close) before or while waiting.
    #[error("the pool is closed")]
    Closed,
    /// No connection could be had within `acquire_timeout`.
    #[error(
        "timed out after {waited:?} {phase}{}{}",
        LastError(.last_error, .failed_hook),
        LastTimeout(.last_connect_timeout)
    )]
    Timeout {
        /// What the caller was doing when the time ran out.
        phase: TimeoutPhase,
        /// How long the caller waited in total.
        waited: Duration,
        /// The last error from the manager's `connect` (or the server timeout
        /// discovery) seen by this pool, if any connect failed recently.
        #[source]
        last_error: Option<Arc<E>>,
        /// Set when `last_error` came from a setup hook rather than the
        /// driver's connect: the hook's name (`"after_connect"`).
        failed_hook: Option<&'static str>,
        /// Set when the last connect attempt got no answer within
        /// `connect_timeout` (an unreachable or black-holed host): how long it waited.
        last_connect_timeout: Option<Duration>,
    },
    /// `max_waiters` callers were already waiting: refused at once (load shedding).
    #[error("the pool is busy: {max_waiters} callers are already waiting for a connection")]
    Busy {
        /// The `max_waiters` setting.
        max_waiters: usize,
    },
}

/// Why [`Pool::run`](crate::Pool::run) or
/// [`Pool::run_idempotent`](crate::Pool::run_idempotent) did not return the
/// work's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError<E: std::error::Error + 'static> {
    /// No connection to run the work on.
    #[error(transparent)]
    Get(Error<E>),
    /// The work failed (on its second attempt, if it was retried).
    #[error(transparent)]
    Work(E),
}

/// Why [`Builder::connect`](crate::Builder::connect) did not return a pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError<E: std::error::Error + 'static> {
    /// The settings are invalid, or there is no tokio runtime.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The first connect failed with the driver's error (wrong host name,
    /// refused, bad credentials, an unknown database, ...).
    #[error("could not open a connection: {}", WithCauses(&**.0))]
    Connect(#[source] Arc<E>),
    /// The first connect succeeded but the
    /// [`after_connect`](crate::Builder::after_connect) hook failed on it.
    #[error("the {hook} hook failed on a new connection: {}", WithCauses(&**.error))]
    Hook {
        /// The hook's name (`"after_connect"`).
        hook: &'static str,
        /// What the hook returned.
        #[source]
        error: Arc<E>,
    },
    /// The server did not answer the first connect within `connect_timeout`
    /// (an unreachable or black-holed host).
    #[error("could not open a connection: no answer within {connect_timeout:?}")]
    NoAnswer {
        /// The `connect_timeout` setting.
        connect_timeout: Duration,
    },
}

impl<E: std::error::Error + 'static> ConnectError<E> {
    /// The driver's error, if the connect got one.
    pub fn last_connect_error(&self) -> Option<&E> {
        match self {
            ConnectError::Connect(e) | ConnectError::Hook { error: e, .. } => Some(e),
            ConnectError::Build(_) | ConnectError::NoAnswer { .. } => None,
        }
    }
}

/// Why [`Pool::get_blocking`](crate::Pool::get_blocking) did not return a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockingError<E: std::error::Error + 'static> {
    /// Called on a thread inside a tokio runtime, where blocking would stall it.
    #[error("Pool::get_blocking called inside a tokio runtime; use `pool.get().await` there")]
    InRuntime,
    /// What [`Pool::get`](crate::Pool::get) would have said.
    #[error(transparent)]
    Get(#[from] Error<E>),
}

struct LastError<'a, E>(&'a Option<Arc<E>>, &'a Option<&'static str>);

impl<E: std::error::Error> fmt::Display for LastError<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(e), None) => write!(f, "; last connect error: {}", WithCauses(&**e)),
            (Some(e), Some(hook)) => write!(
                f,
                "; last connect error (in the {hook} hook): {}",
                WithCauses(&**e)
            ),
            (None, _) => Ok(()),
        }
    }
}

/// An error and the causes its own message leaves out: drivers put the
/// telling part in `source()` (tokio-postgres says "error communicating
/// with the server", its cause says what went wrong), while others repeat
/// their causes in their message, which is not repeated again.
pub(crate) struct WithCauses<'a>(pub(crate) &'a dyn std::error::Error);

impl fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cause = c.source();
        }
        f.write_str(&shown)
    }
}

struct LastTimeout<'a>(&'a Option<Duration>);

impl fmt::Display for LastTimeout<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, "; the last connect attempt got no answer within {d:?}"),
            None => Ok(()),
        }
    }
}

impl<E: std::error::Error + 'static> Error<E> {
    /// The last connect error carried by a timeout, if any.
    pub fn last_connect_error(&self) -> Option<&E> {
        match self {
            Error::Timeout { last_error, .. } => last_error.as_deref(),
            Error::Closed | Error::Busy { .. } => None,
        }
    }
}

/// What a caller of [`Pool::get`](crate::Pool::get) was doing when `acquire_timeout` ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// Every connection was lent out and none came back in time.
    WaitingForConnection,
    /// The pool had room, but opening a new connection did not succeed in time.
    Connecting,
    /// Validating an idle connection did not finish in time.
    Validating,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::WaitingForConnection => "waiting for a connection to be returned",
            TimeoutPhase::Connecting => "opening a new connection",
            TimeoutPhase::Validating => "validating an idle connection",
        })
    }
}

/// A setting given to [`Builder`](crate::Builder) is invalid; names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pool setting `{setting}`: {reason}")]
pub struct ConfigError {
    /// The name of the setting, as spelled by the builder method.
    pub setting: &'static str,
    /// What is wrong with the value.
    pub reason: String,
}

/// Why [`Builder::build`](crate::Builder::build) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `build` was called outside a tokio runtime; the pool needs one for its
    /// housekeeper and for cleaning up returned connections.
    #[error("vigil::Pool must be built inside a tokio runtime (no runtime handle found)")]
    NoRuntime,
}
