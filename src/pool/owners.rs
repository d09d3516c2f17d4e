//! The RAII owners of the pool's undo work: each is made before the first
//! `.await` of what it guards and gives back a permit, a count or a
//! connection however the future or task ends (done, failed, cancelled,
//! dropped with the runtime). Capacity itself is an owner type, [`Permit`],
//! carried by whatever uses it, so "who gives the permit back" is answered
//! by the type system, not by convention.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::time::{timeout, Instant};

use super::guard::Pooled;
use super::inner::{Shared, TARGET};
use super::slots::{Activity, Conn, Meta};
use crate::liveness::Reason;
use crate::manager::Manager;
use crate::stats::Stats;

/// One unit of capacity (`max_size`), owned by what uses it: a checkout in
/// progress, a lent connection (inside [`Pooled`]), a connection the pool
/// is doing I/O on (a ping, a reset, a connect). It goes back to the
/// semaphore when dropped, and only then: no code gives a permit back by
/// hand, so no path can forget one or give one back twice.
pub(crate) struct Permit<M: Manager>(Arc<Shared<M>>);

impl<M: Manager> Permit<M> {
    /// Owns a permit just taken from the semaphore (and `forget`-ed there).
    pub(super) fn new(shared: &Arc<Shared<M>>) -> Self {
        Permit(Arc::clone(shared))
    }

    pub(super) fn shared(&self) -> &Arc<Shared<M>> {
        &self.0
    }

    /// The permit moves into the connection being lent.
    pub(super) fn lend(self, conn: Conn<M::Connection>, now: Instant) -> Pooled<M> {
        Pooled::new(conn, self, now)
    }
}

impl<M: Manager> Drop for Permit<M> {
    fn drop(&mut self) {
        // A waiting `get()` (first in line) gets it.
        self.0.permits.add_permits(1);
    }
}

/// Counts a caller waiting for a permit, for `State::pending`.
pub(super) struct Pending<'a>(&'a Stats);

impl<'a> Pending<'a> {
    /// Joins the waiters, unless `limit` are already waiting. Compare and
    /// swap, so concurrent callers can never exceed the limit together.
    pub(super) fn enter(stats: &'a Stats, limit: Option<usize>) -> Option<Self> {
        let limit = limit.unwrap_or(usize::MAX);
        stats
            .pending
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()?;
        Some(Pending(stats))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Relaxed);
    }
}

/// Counts a connect in flight; on drop without `succeeded` (failure or
/// cancellation) the count is undone without adding an active connection.
pub(super) struct Connecting<'a, M: Manager>(&'a Shared<M>);

impl<'a, M: Manager> Connecting<'a, M> {
    pub(super) fn new(shared: &'a Shared<M>) -> Self {
        shared.slots.lock().start_connect();
        Connecting(shared)
    }

    /// The connect succeeded: the connection counts active, in one step
    /// under the lock, so no snapshot sees it in neither state.
    pub(super) fn opened(self, meta: &mut Meta, activity: Activity) {
        self.0
            .slots
            .lock()
            .finish_connect(Some((meta, activity)), Instant::now());
        std::mem::forget(self);
    }
}

impl<M: Manager> Drop for Connecting<'_, M> {
    fn drop(&mut self) {
        self.0.slots.lock().finish_connect(None, Instant::now());
    }
}

/// An active connection in the middle of pool-owned I/O during a checkout,
/// with its permit. Dropped before `take` (its task was dropped
/// unfinished) it retires the connection, whose protocol state is unknown,
/// and the permit goes back.
pub(super) struct InFlight<M: Manager>(Option<(Conn<M::Connection>, Permit<M>)>);

impl<M: Manager> InFlight<M> {
    pub(super) fn new(conn: Conn<M::Connection>, permit: Permit<M>) -> Self {
        InFlight(Some((conn, permit)))
    }

    pub(super) fn conn(&mut self) -> &mut Conn<M::Connection> {
        &mut self
            .0
            .as_mut()
            .expect("InFlight holds its connection until take")
            .0
    }

    pub(super) fn take(&mut self) -> (Conn<M::Connection>, Permit<M>) {
        self.0.take().expect("InFlight::take is called once")
    }
}

impl<M: Manager> Drop for InFlight<M> {
    fn drop(&mut self) {
        if let Some((conn, permit)) = self.0.take() {
            permit.shared().retire_active(conn, Reason::Closed);
        }
    }
}

/// A returned connection being cleaned in its own task, with its permit:
/// however the task ends (done, failed, or dropped with the runtime), the
/// connection ends up idle or retired and the permit goes back.
pub(super) struct Returning<M: Manager>(Option<(Conn<M::Connection>, Permit<M>)>);

impl<M: Manager> Returning<M> {
    pub(super) fn new(conn: Conn<M::Connection>, permit: Permit<M>) -> Self {
        permit
            .shared()
            .slots
            .lock()
            .set_activity(&conn.meta, Activity::Returning);
        Returning(Some((conn, permit)))
    }

    /// Cleans the connection (rollback, and a full reset when `full`), then
    /// puts it back idle, or retires it if the cleaning failed.
    pub(super) async fn reset(self, full: bool) {
        self.finish(ReturnIo::Reset { full }).await;
    }

    /// Pings the connection (`verify_on_return`), then puts it back idle, or
    /// retires it if the session did not survive its borrower.
    pub(super) async fn verify(self) {
        self.finish(ReturnIo::Verify).await;
    }

    /// Runs `io` on the connection, bounded by `validation_timeout`, and
    /// files the connection by its outcome.
    async fn finish(mut self, io: ReturnIo) {
        let (what, failed) = match io {
            ReturnIo::Reset { .. } => ("reset on return", Reason::ResetFailed),
            ReturnIo::Verify => ("verify on return", Reason::ValidationFailed),
        };
        // The connection stays in `self` across the await: if this task is
        // dropped mid-I/O, `Drop` closes it and the permit goes back.
        let result = {
            let (conn, permit) = self.0.as_mut().expect("Returning holds its connection");
            let shared = permit.shared();
            let (raw, manager) = (&mut conn.raw, &shared.manager);
            timeout(shared.config.validation_timeout, async move {
                match io {
                    ReturnIo::Reset { full } => manager.reset(raw, full).await,
                    ReturnIo::Verify => manager.is_valid(raw).await,
                }
            })
            .await
        };
        let (mut conn, permit) = self.0.take().expect("Returning holds its connection");
        let shared = Arc::clone(permit.shared());
        let reason = match result {
            Ok(Ok(())) => {
                conn.meta.last_io = Instant::now();
                Shared::make_idle(conn, permit);
                return;
            }
            Ok(Err(error)) => {
                let manager = &shared.manager;
                if manager.error_ends_session(&error) || manager.has_broken(&mut conn.raw) {
                    // The session died while it was lent (a restart, a kill):
                    // the borrower saw that already; debug, like every retirement.
                    tracing::debug!(target: TARGET, conn_id = conn.meta.id, %error, "returned connection's session is gone ({what})");
                    Reason::Broken
                } else {
                    tracing::warn!(target: TARGET, conn_id = conn.meta.id, %error, "{what} failed");
                    failed
                }
            }
            Err(_) => {
                tracing::warn!(target: TARGET, conn_id = conn.meta.id, "{what} timed out");
                failed
            }
        };
        shared.suspect();
        shared.retire_active(conn, reason);
        drop(permit);
    }
}

/// What a `Returning` task does to its connection.
#[derive(Clone, Copy)]
enum ReturnIo {
    Reset { full: bool },
    Verify,
}

impl<M: Manager> Drop for Returning<M> {
    fn drop(&mut self) {
        if let Some((conn, permit)) = self.0.take() {
            // The task was dropped unfinished (runtime shutting down): the
            // connection may be mid-reset, so it is closed, never reused.
            let shared = permit.shared();
            shared.slots.lock().forget_active(&conn.meta);
            shared.note_retired(&conn.meta, Reason::ResetFailed);
            drop(conn);
        }
    }
}
