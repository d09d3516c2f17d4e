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
use crate::manager::{
    Capabilities, Cleaned, Cleanup, ErrorClass, Manager, ServerTimeouts, Session,
};

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
            failed_hook,
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
                failed_hook,
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

    fn session(&self, conn: &mut Self::Connection) -> Session {
        self.inner.session(&mut conn.raw)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    /// A backend error is the backend's to classify. The cap's own refusals
    /// (a background connect under a full cap, a connect whose callers all
    /// left, a closed keyed pool) are declined connects: no backoff, no
    /// warning, no `connect_errors`. A connect that timed out is a failure
    /// like any other.
    fn classify(&self, error: &Self::Error) -> ErrorClass {
        match error {
            CappedError::Backend(e) => self.inner.classify(e),
            CappedError::TimedOut(_) => ErrorClass::Other,
            CappedError::Closed | CappedError::Full | CappedError::Abandoned => {
                ErrorClass::Declined
            }
        }
    }

    async fn has_role(&self, conn: &mut Self::Connection) -> Result<bool, Self::Error> {
        self.inner.has_role(&mut conn.raw).await.map_err(backend)
    }

    async fn reset(
        &self,
        conn: &mut Self::Connection,
        cleanup: Cleanup,
    ) -> Result<Cleaned, Self::Error> {
        self.inner
            .reset(&mut conn.raw, cleanup)
            .await
            .map_err(backend)
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

#[cfg(test)]
mod conformance {
    //! `Capped` answers every question of the [`Manager`] contract as the
    //! manager it wraps does. A recording manager gives an answer no
    //! default gives to each method; the test asks each through the
    //! wrapper. A method added to the contract and not forwarded fails
    //! `every_manager_method_is_forwarded`, which reads the trait's method
    //! names from the source and wants each one asked here and implemented
    //! by `Capped`.
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::keyed::cap::Victim;
    use crate::manager::BrokenDetection;

    #[derive(Debug, thiserror::Error)]
    #[error("recorded error {0}")]
    struct RecError(u8);

    /// Answers what no default answers, and records each call by name.
    #[derive(Default)]
    struct Recording {
        calls: StdMutex<Vec<&'static str>>,
    }

    impl Recording {
        fn note(&self, name: &'static str) {
            self.calls.lock().unwrap().push(name);
        }
    }

    impl Manager for Recording {
        type Connection = u32;
        type Error = RecError;

        async fn connect(&self) -> Result<u32, RecError> {
            self.note("connect");
            Ok(7)
        }
        async fn is_valid(&self, _: &mut u32) -> Result<(), RecError> {
            self.note("is_valid");
            Err(RecError(1))
        }
        fn classify(&self, e: &RecError) -> ErrorClass {
            self.note("classify");
            match e.0 {
                2 => ErrorClass::EndsSession,
                3 => ErrorClass::RoleChanged,
                9 => ErrorClass::Declined,
                _ => ErrorClass::Other,
            }
        }
        fn session(&self, _: &mut u32) -> Session {
            self.note("session");
            // Each answer unlike the default, so a wrapper that drops one is seen.
            Session {
                broken: true,
                needs_cleanup: true,
                query_in_flight: true,
                role_in_doubt: true,
                ..Session::default()
            }
        }
        fn capabilities(&self) -> Capabilities {
            self.note("capabilities");
            // Both unlike the default.
            Capabilities {
                detection: BrokenDetection::Blind,
                checks_role: true,
            }
        }
        async fn has_role(&self, _: &mut u32) -> Result<bool, RecError> {
            self.note("has_role");
            Ok(false)
        }
        async fn reset(&self, _: &mut u32, cleanup: Cleanup) -> Result<Cleaned, RecError> {
            self.note("reset");
            match (cleanup.stop_query, cleanup.full) {
                (true, _) => Ok(Cleaned::QueryStopped),
                (false, full) => Err(RecError(if full { 4 } else { 5 })),
            }
        }
        async fn server_timeouts(&self, _: &mut u32) -> Result<ServerTimeouts, RecError> {
            self.note("server_timeouts");
            Ok(ServerTimeouts {
                idle: Some(Duration::from_secs(42)),
            })
        }
        async fn close(&self, _: u32) {
            self.note("close");
        }
    }

    struct NoVictims;
    impl Victims for NoVictims {
        fn pick(&self, _: u64) -> Option<Victim> {
            None
        }
    }

    fn backend_code(e: CappedError<RecError>) -> Option<u8> {
        match e {
            CappedError::Backend(e) => Some(e.0),
            _ => None,
        }
    }

    /// Each method asked through the wrapper, by name, with the answer the
    /// recording manager gives.
    #[tokio::test]
    async fn capped_answers_as_the_manager_it_wraps() {
        let victims: Arc<dyn Victims> = Arc::new(NoVictims);
        let capped = Capped {
            inner: Recording::default(),
            cap: Arc::new(Cap::new(4, tokio::runtime::Handle::current())),
            victims: Arc::downgrade(&victims),
            usage: Arc::new(Usage::new(1, None, tokio::time::Instant::now())),
            connect_timeout: Duration::from_secs(5),
        };
        let mut conn = capped
            .connect()
            .await
            .expect("the recording manager connects");
        assert_eq!(conn.raw, 7);
        let err = |code| CappedError::Backend(Arc::new(RecError(code)));
        assert_eq!(
            backend_code(capped.is_valid(&mut conn).await.unwrap_err()),
            Some(1)
        );
        for code in [1, 2, 3, 9] {
            assert_eq!(
                capped.classify(&err(code)),
                capped.inner.classify(&RecError(code)),
                "a backend error is the backend's to classify ({code})"
            );
        }
        assert_eq!(
            capped.classify(&CappedError::Full),
            ErrorClass::Declined,
            "the cap's own refusal"
        );
        assert_eq!(capped.session(&mut conn), capped.inner.session(&mut 7));
        assert_eq!(capped.capabilities(), capped.inner.capabilities());
        assert!(!capped.has_role(&mut conn).await.unwrap());
        let stop = Cleanup {
            stop_query: true,
            full: false,
        };
        assert_eq!(
            capped.reset(&mut conn, stop).await.unwrap(),
            Cleaned::QueryStopped
        );
        let full = Cleanup {
            full: true,
            stop_query: false,
        };
        assert_eq!(
            backend_code(capped.reset(&mut conn, full).await.unwrap_err()),
            Some(4)
        );
        assert_eq!(
            capped.server_timeouts(&mut conn).await.unwrap().idle,
            Some(Duration::from_secs(42))
        );
        capped.close(conn).await;
        let mut calls = capped.inner.calls.lock().unwrap().clone();
        calls.sort_unstable();
        calls.dedup();
        let mut asked: Vec<&str> = ASKED.to_vec();
        asked.sort_unstable();
        assert_eq!(calls, asked, "every method reached the wrapped manager");
    }

    /// What `capped_answers_as_the_manager_it_wraps` asks.
    const ASKED: &[&str] = &[
        "connect",
        "is_valid",
        "session",
        "capabilities",
        "classify",
        "has_role",
        "reset",
        "server_timeouts",
        "close",
    ];

    /// The `fn` names declared in the first `{ … }` block after `header`.
    fn methods(source: &str, header: &str) -> Vec<String> {
        let start = source.find(header).expect("the block is in the file");
        let body = &source[start..];
        let mut depth = 0;
        let mut names = Vec::new();
        for line in body.lines() {
            let trimmed = line.trim_start();
            if depth == 1 {
                let rest = trimmed
                    .strip_prefix("async fn ")
                    .or_else(|| trimmed.strip_prefix("fn "));
                if let Some(rest) = rest {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    names.push(name);
                }
            }
            depth += line.matches('{').count() as i32;
            depth -= line.matches('}').count() as i32;
            if depth == 0 && line.contains('}') {
                break;
            }
        }
        names.sort();
        names
    }

    #[test]
    fn every_manager_method_is_forwarded() {
        let contract = methods(include_str!("../manager.rs"), "pub trait Manager");
        let forwarded = methods(
            include_str!("capped.rs"),
            "impl<M: Manager> Manager for Capped<M>",
        );
        let mut asked: Vec<String> = ASKED.iter().map(|s| s.to_string()).collect();
        asked.sort();
        assert!(
            contract.len() >= 9,
            "the trait's methods were found: {contract:?}"
        );
        assert_eq!(
            forwarded, contract,
            "Capped implements every Manager method"
        );
        assert_eq!(
            asked, contract,
            "the conformance test asks every Manager method"
        );
    }
}
