//! The wrapping manager of every sub-pool: [`Capped`] takes a unit of the
//! global cap before the backend's connect, and its connection carries that
//! unit until it is closed.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use super::cap::{Cap, CapError, Victims};
use super::usage::Usage;
use crate::error::{Error, TimeoutPhase};
use crate::manager::{Manager, ServerTimeouts};

/// The error type of the sub-pools: the backend's, or why the cap said no.
/// Never reaches a caller of `KeyedPool::get` (see `map_error`); it shows
/// in the sub-pools' `connect failed` log lines.
#[derive(Debug, thiserror::Error)]
pub(super) enum CappedError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Backend(Arc<E>),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the keyed pool is closed")]
    Closed,
    #[error("the global cap is reached; background connect skipped")]
    Full,
    #[error("the caller stopped waiting for the global cap")]
    Abandoned,
}

impl<E: std::error::Error + 'static> From<CapError> for CappedError<E> {
    fn from(e: CapError) -> Self {
        match e {
            CapError::Closed => CappedError::Closed,
            CapError::Full => CappedError::Full,
            CapError::Abandoned => CappedError::Abandoned,
        }
    }
}

fn backend<E: std::error::Error + 'static>(e: E) -> CappedError<E> {
    CappedError::Backend(Arc::new(e))
}

/// A sub-pool's error as the caller of `KeyedPool::get` sees it: with the
/// backend's error type, and the wrapper's reasons turned into what they mean.
pub(super) fn map_error<E: std::error::Error + 'static>(
    e: Error<CappedError<E>>,
    usage: &Usage,
) -> Error<E> {
    match e {
        Error::Timeout {
            phase,
            waited,
            last_error,
            last_connect_timeout,
        } => {
            let (last_error, last_connect_timeout) = match last_error.as_deref() {
                Some(CappedError::Backend(e)) => (Some(Arc::clone(e)), last_connect_timeout),
                Some(CappedError::TimedOut(d)) => (None, Some(*d)),
                _ => (None, last_connect_timeout),
            };
            // "Opening a new connection" would mislead: the connect never
            // started, it was queued for another key's connection to close.
            let phase = if phase == TimeoutPhase::Connecting
                && last_error.is_none()
                && usage.cap_waiting.load(SeqCst) > 0
            {
                TimeoutPhase::WaitingForConnection
            } else {
                phase
            };
            Error::Timeout {
                phase,
                waited,
                last_error,
                last_connect_timeout,
            }
        }
        Error::Closed => Error::Closed,
        Error::Busy { max_waiters } => Error::Busy { max_waiters },
    }
}

/// The key's manager, wrapped: `connect` takes a unit of the cap first.
pub(super) struct Capped<M: Manager> {
    pub(super) inner: M,
    pub(super) cap: Arc<Cap>,
    /// The keyed pool's sub-pools, to evict from while the cap is full;
    /// gone once the keyed pool is.
    pub(super) victims: Weak<dyn Victims>,
    pub(super) usage: Arc<Usage>,
    /// The template's `connect_timeout`, for the backend's own connect.
    pub(super) connect_timeout: Duration,
}

/// A connection and its unit of the cap, released when it is dropped.
pub(super) struct CappedConn<C> {
    pub(super) raw: C,
    pub(super) permit: OwnedSemaphorePermit,
}

impl<M: Manager> Manager for Capped<M> {
    type Connection = CappedConn<M::Connection>;
    type Error = CappedError<M::Error>;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let victims = self.victims.upgrade().ok_or(CappedError::Closed)?;
        let permit = self.cap.obtain(&self.usage, &*victims).await?;
        drop(victims);
        match timeout(self.connect_timeout, self.inner.connect()).await {
            Ok(Ok(raw)) => Ok(CappedConn { raw, permit }),
            Ok(Err(e)) => Err(backend(e)),
            Err(_) => Err(CappedError::TimedOut(self.connect_timeout)),
        }
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        self.inner.is_valid(&mut conn.raw).await.map_err(backend)
    }

    /// The cap's own refusals (a background connect under a full cap, a
    /// connect whose callers all left, a closed keyed pool) are not connect
    /// failures: no backoff, no warning, no `connect_errors`.
    fn connect_declined(&self, error: &Self::Error) -> bool {
        !matches!(error, CappedError::Backend(_) | CappedError::TimedOut(_))
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        self.inner.has_broken(&mut conn.raw)
    }

    fn requires_role(&self) -> bool {
        self.inner.requires_role()
    }

    async fn has_role(&self, conn: &mut Self::Connection) -> Result<bool, Self::Error> {
        self.inner.has_role(&mut conn.raw).await.map_err(backend)
    }

    fn error_shows_role_changed(&self, error: &Self::Error) -> bool {
        matches!(error, CappedError::Backend(e) if self.inner.error_shows_role_changed(e))
    }

    fn needs_cleanup(&self, conn: &mut Self::Connection) -> bool {
        self.inner.needs_cleanup(&mut conn.raw)
    }

    fn in_transaction(&self, conn: &mut Self::Connection) -> bool {
        self.inner.in_transaction(&mut conn.raw)
    }

    async fn reset(&self, conn: &mut Self::Connection, full: bool) -> Result<(), Self::Error> {
        self.inner.reset(&mut conn.raw, full).await.map_err(backend)
    }

    async fn server_timeouts(
        &self,
        conn: &mut Self::Connection,
    ) -> Result<ServerTimeouts, Self::Error> {
        match timeout(
            self.connect_timeout,
            self.inner.server_timeouts(&mut conn.raw),
        )
        .await
        {
            Ok(result) => result.map_err(backend),
            Err(_) => Err(CappedError::TimedOut(self.connect_timeout)),
        }
    }

    async fn close(&self, conn: Self::Connection) {
        let CappedConn { raw, permit } = conn;
        self.inner.close(raw).await;
        // Only now: the server was told before the unit goes to the next key.
        drop(permit);
    }
}
