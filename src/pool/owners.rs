//! The RAII owners of the pool's undo work: each is made before the first
//! `.await` of what it guards and gives back a permit, a count or a
//! connection however the future or task ends (done, failed, cancelled,
//! dropped with the runtime). Capacity itself is an owner type, [`Permit`],
//! carried by whatever uses it, so "who gives the permit back" is answered
//! by the type system, not by convention.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::time::Instant;

use super::guard::Pooled;
use super::inner::Shared;
use super::slots::{Activity, Conn, Meta};
use crate::liveness::Reason;
use crate::manager::Manager;
use crate::stats::Stats;

/// One unit of capacity (`max_size`), owned by what uses it: a checkout in
/// progress, a lent connection (inside [`Pooled`]), a connection the pool
/// is doing I/O on (a ping, a reset, a connect). It goes back when dropped
/// (to the first caller in line, or free), and only then: no code gives a
/// permit back by hand, so no path can forget one or give one back twice.
/// The one exception is [`Permit::handed_on`], for the lock holder that
/// has just passed the capacity on with a connection.
///
/// Never dropped while the pool's lock is held: giving it back takes that
/// lock.
pub(crate) struct Permit<M: Manager> {
    shared: Arc<Shared<M>>,
    /// Gives the capacity back on drop; cleared by `handed_on`.
    owned: bool,
}

impl<M: Manager> Permit<M> {
    /// Owns a unit of capacity just taken from the line (`Slots::try_take`,
    /// or granted to a waiter).
    pub(super) fn new(shared: &Arc<Shared<M>>) -> Self {
        Permit {
            shared: Arc::clone(shared),
            owned: true,
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared<M>> {
        &self.shared
    }

    /// The capacity went on with a connection under the lock
    /// (`Slots::file`: to a waiter, or freed with the connection idle):
    /// this value no longer owns it.
    pub(super) fn handed_on(mut self) {
        self.owned = false;
    }

    /// The permit moves into the connection being lent.
    pub(super) fn lend(self, conn: Conn<M::Connection>, now: Instant) -> Pooled<M> {
        Pooled::new(conn, self, now)
    }
}

impl<M: Manager> Drop for Permit<M> {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // The first caller in line gets it, woken outside the lock.
        let waiter = self.shared.slots.lock().release();
        if let Some(waker) = waiter {
            waker.wake();
        }
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
