//! `Pool::run` and `Pool::run_idempotent`: a unit of work on a pooled
//! connection, which the pool sees the result of, and so can retry once
//! when the connection turned out to be dead before the work could do
//! anything on it.

use std::future::Future;
use std::pin::Pin;

use super::{Pool, Pooled};
use crate::error::RunError;
use crate::liveness::Reason;
use crate::manager::{ErrorClass, Manager};
use crate::stats::Stats;

/// The future a unit of work returns, borrowing the connection.
pub type Work<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

impl<M: Manager> Pool<M> {
    /// Runs `work` on a connection from the pool and returns its result.
    /// Never retries: use [`run_idempotent`](Pool::run_idempotent) for
    /// work that may safely run twice.
    ///
    /// A connection the work found dead (an error the manager classifies
    /// as [`ErrorClass::EndsSession`]) is retired at once instead of going
    /// back to the pool.
    ///
    /// ```no_run
    /// # #[cfg(feature = "tokio-postgres")]
    /// # async fn demo(pool: vigil::Pool<vigil::backend::tokio_postgres::TokioPgManager>)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let n: i64 = pool
    ///     .run(|conn| Box::pin(async move { Ok(conn.query_one("SELECT count(*) FROM t", &[]).await?.get(0)) }))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RunError::Get`] when no connection could be had, [`RunError::Work`]
    /// with the work's own error.
    ///
    /// # Cancel safety
    /// As [`get`](Pool::get) while waiting for a connection; dropped while
    /// the work runs, the connection is returned as a dropped guard is
    /// (rolled back if the work left a transaction open).
    #[track_caller]
    pub fn run<'p, T, F>(
        &'p self,
        work: F,
    ) -> impl Future<Output = Result<T, RunError<M::Error>>> + Send + 'p
    where
        T: Send + 'p,
        F: for<'c> FnMut(&'c mut M::Connection) -> Work<'c, T, M::Error> + Send + 'p,
    {
        let site = std::panic::Location::caller();
        self.run_at(work, false, site)
    }

    /// As [`run`](Pool::run), for work that may run twice (a read, an
    /// upsert, anything whose second run changes nothing the first did not):
    /// when it fails because its connection was already dead (the session
    /// ended: killed, timed out, the server restarted, a socket reset;
    /// [`classify`](Manager::classify) says which errors mean that), the
    /// pool retires that connection and runs `work` once
    /// more on another, and returns that second result, whatever it is.
    ///
    /// Exactly when it retries: the first attempt's error ends the session,
    /// or shows the server turned read-only ([`ErrorClass::RoleChanged`]:
    /// then the whole pool moves to where the role is, and the second run
    /// goes there).
    /// Never twice; never on another error (a constraint violation, a
    /// syntax error, a timeout of the caller's own); never when the pool
    /// itself could not lend a connection; never when the session died
    /// inside a transaction the work had opened (the manager's
    /// [`Session::in_transaction`](crate::Session::in_transaction) says the session's last
    /// word was that one is open; a query still in flight when it died
    /// does not count as one): what a
    /// half-done transaction means is the caller's to decide. The work must
    /// be idempotent as a whole, because statements it committed before
    /// the session ended stay committed. Each retry counts in `State::retries` and
    /// `vigil_retries_total`.
    ///
    /// # Errors
    /// As [`run`](Pool::run), from the second attempt when there was one.
    ///
    /// # Cancel safety
    /// As [`run`](Pool::run).
    #[track_caller]
    pub fn run_idempotent<'p, T, F>(
        &'p self,
        work: F,
    ) -> impl Future<Output = Result<T, RunError<M::Error>>> + Send + 'p
    where
        T: Send + 'p,
        F: for<'c> FnMut(&'c mut M::Connection) -> Work<'c, T, M::Error> + Send + 'p,
    {
        let site = std::panic::Location::caller();
        self.run_at(work, true, site)
    }

    async fn run_at<T, F>(
        &self,
        mut work: F,
        idempotent: bool,
        site: &'static std::panic::Location<'static>,
    ) -> Result<T, RunError<M::Error>>
    where
        F: for<'c> FnMut(&'c mut M::Connection) -> Work<'c, T, M::Error>,
    {
        let shared = self.shared();
        let mut conn = self.get_at(site, None).await.map_err(RunError::Get)?;
        let error = match work(&mut conn).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let class = shared.manager.classify(&error);
        if class == ErrorClass::RoleChanged {
            Pooled::retire_as(conn, Reason::RoleChanged);
            shared.role_changed("an error showed the session is read-only");
            if !idempotent {
                return Err(RunError::Work(error));
            }
            // The server refused to write: nothing the work did there
            // stands (a read-only session writes nothing), so it runs once
            // more, on a session of the new generation.
            Stats::bump(&shared.stats.retries_role_changed);
            let mut conn = self.get_at(site, None).await.map_err(RunError::Get)?;
            return work(&mut conn).await.map_err(RunError::Work);
        }
        let session = shared.manager.session(&mut conn);
        if !(class == ErrorClass::EndsSession || session.broken) {
            return Err(RunError::Work(error));
        }
        // Inside a transaction the work opened (the session's last word said
        // one was open): the caller decides what a half-done transaction
        // means, so it is never run again behind its back.
        let in_transaction = session.in_transaction;
        // The session is over: its connection never goes back idle.
        Pooled::retire_as(conn, Reason::Broken);
        shared.suspect();
        if !idempotent || in_transaction {
            return Err(RunError::Work(error));
        }
        Stats::bump(&shared.stats.retries);
        // debug: the retry is the pool doing its job; the caller sees only
        // the second attempt's result.
        tracing::debug!(target: super::TARGET, %error, "work retried once on another connection: its session had ended");
        let mut conn = self.get_at(site, None).await.map_err(RunError::Get)?;
        work(&mut conn).await.map_err(RunError::Work)
    }
}
