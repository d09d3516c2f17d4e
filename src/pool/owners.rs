//! The RAII owners of the pool's undo work: each is made before the first
//! `.await` of what it guards and gives back a permit, a count or a
//! connection however the future or task ends (done, failed, cancelled,
//! dropped with the runtime). Capacity itself is an owner type, [`Permit`],
//! carried by whatever uses it, so "who gives the permit back" is answered
//! by the type system, not by convention.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::time::Instant;

use super::conn::{Conn, Meta, Record};
use super::guard::Pooled;
use super::inner::Shared;
use super::line::Unit;
use super::slots::Activity;
use crate::liveness::Reason;
use crate::manager::Manager;
use crate::stats::Stats;

/// One unit of capacity (`max_size`), owned by what uses it: a checkout in
/// progress, a lent connection (inside [`Pooled`]), a connection the pool
/// is doing I/O on (a ping, a reset, a connect). Made only from a [`Unit`]
/// the line has just given out (a take, a grant to a waiter), and it gives
/// that unit back when dropped (to the first caller in line, or free): no
/// code gives capacity back by hand, so no path can forget a unit or give
/// one back twice. The one exception is [`Permit::give_up`], for filing a
/// connection back with its unit under the lock (`Slots::file`).
///
/// Never dropped while the pool's lock is held: giving it back takes that
/// lock.
pub(crate) struct Permit<M: Manager> {
    shared: Arc<Shared<M>>,
    /// Given back on drop; taken out by `give_up`.
    unit: Option<Unit>,
}

impl<M: Manager> Permit<M> {
    /// Owns a unit of capacity the line has just given out.
    pub(super) fn new(shared: &Arc<Shared<M>>, unit: Unit) -> Self {
        Permit {
            shared: Arc::clone(shared),
            unit: Some(unit),
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared<M>> {
        &self.shared
    }

    /// The unit, to go on with a connection under the lock
    /// (`Slots::file`: to a waiter, or freed with the connection idle):
    /// this value owns nothing afterwards.
    pub(super) fn give_up(&mut self) -> Unit {
        self.unit
            .take()
            .expect("a permit owns its unit until it gives it up, once")
    }

    /// The permit moves into the connection being lent.
    pub(super) fn lend(self, conn: Conn<M::Connection>, now: Instant) -> Pooled<M> {
        Pooled::new(conn, self, now)
    }
}

impl<M: Manager> Drop for Permit<M> {
    fn drop(&mut self) {
        let Some(unit) = self.unit.take() else {
            return;
        };
        // The first caller in line gets it, woken outside the lock.
        let waiter = self.shared.slots.lock().release(unit);
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

/// A checkout waiting out the connect backoff with capacity in hand,
/// counted so that a connection filed idle wakes it (`Slots::file`);
/// uncounted on drop, cancellation included.
pub(super) struct BackingOff<'a, M: Manager>(&'a Shared<M>);

impl<'a, M: Manager> BackingOff<'a, M> {
    /// `None` when there is no point in waiting: the pool is closed, or a
    /// connection is idle to be taken instead.
    pub(super) fn enter(shared: &'a Shared<M>) -> Option<Self> {
        // Counted under the lock, made after it is let go: dropped, the
        // guard takes the lock again.
        let counted = shared.slots.lock().enter_backoff();
        counted.then(|| BackingOff(shared))
    }
}

impl<M: Manager> Drop for BackingOff<'_, M> {
    fn drop(&mut self) {
        self.0.slots.lock().leave_backoff();
    }
}

/// An active connection the pool does I/O on (a checkout's ping, a
/// keepalive, a return's cleaning), with its permit until that I/O goes
/// silent past the hedge delay: then the connection is presumed dead
/// ([`Hold::silence`]), its permit goes on without it (to the caller, or
/// back to the line) and it no longer counts against `max_size`. However
/// the I/O ends, [`keep`](Io::keep) or [`retire`](Io::retire) settles it;
/// dropped before either (its task dropped with the runtime), it retires
/// the connection, whose protocol state is unknown.
pub(super) struct Io<M: Manager> {
    conn: Option<Conn<M::Connection>>,
    hold: Hold<M>,
    shared: Arc<Shared<M>>,
}

/// What an [`Io`] holds beside its connection: the permit, until the I/O
/// goes silent; then the signal that evicts it from the presumed dead.
pub(super) struct Hold<M: Manager> {
    permit: Option<Permit<M>>,
    evicted: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl<M: Manager> Hold<M> {
    /// The I/O went silent: presume the connection dead and give up its
    /// capacity, which the caller passes on. `None` when it was silenced
    /// already. With `max_size` presumed dead, the oldest is evicted.
    pub(super) fn silence(&mut self, shared: &Shared<M>, meta: &Meta) -> Option<Permit<M>> {
        let permit = self.permit.take()?;
        self.evicted = Some(shared.slots.lock().silence(meta));
        // debug: the outcome of the I/O is logged when it comes.
        tracing::debug!(target: super::TARGET, conn_id = meta.id, "pool I/O silent past the hedge delay; connection presumed dead, its slot goes on");
        Some(permit)
    }

    /// Resolves when this connection, presumed dead, is evicted by a newer
    /// one (close it now); never before it is silenced.
    pub(super) async fn evicted(&mut self) {
        match self.evicted.as_mut() {
            Some(rx) => {
                // A dropped sender (the pool gone) counts as eviction too.
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }
}

impl<M: Manager> Io<M> {
    pub(super) fn new(conn: Conn<M::Connection>, permit: Permit<M>) -> Self {
        Io {
            shared: Arc::clone(permit.shared()),
            conn: Some(conn),
            hold: Hold {
                permit: Some(permit),
                evicted: None,
            },
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared<M>> {
        &self.shared
    }

    /// The record's fields can be borrowed apart (the I/O on `raw`,
    /// `silence` on `meta`).
    pub(super) fn parts(&mut self) -> (&mut Record<M::Connection>, &mut Hold<M>) {
        let conn = self
            .conn
            .as_mut()
            .expect("Io holds its connection until it is settled");
        (&mut **conn, &mut self.hold)
    }

    /// The I/O succeeded: the connection with its permit, to lend or file
    /// idle. A connection presumed dead takes a unit of capacity again if
    /// it was not evicted and one is free; else its place went to another
    /// and it is closed (`None`).
    pub(super) fn keep(mut self) -> Option<(Conn<M::Connection>, Permit<M>)> {
        let mut conn = self.conn.take().expect("Io is settled once");
        if let Some(permit) = self.hold.permit.take() {
            return Some((conn, permit));
        }
        let now = Instant::now();
        let revived = self.shared.slots.lock().revive(&mut conn.meta, now);
        if let Some(unit) = revived {
            return Some((conn, Permit::new(&self.shared, unit)));
        }
        // Not `retire_active`: it left the active set when it went silent.
        self.shared.retire(conn, Reason::Closed);
        None
    }

    /// The I/O failed: the connection is closed for `reason`; its permit,
    /// if it still has one, comes back to the caller.
    pub(super) fn retire(mut self, reason: Reason) -> Option<Permit<M>> {
        let conn = self.conn.take().expect("Io is settled once");
        match self.hold.permit.take() {
            Some(permit) => {
                self.shared.retire_active(conn, reason);
                Some(permit)
            }
            None => {
                self.shared.slots.lock().bury(conn.meta.id);
                self.shared.retire(conn, reason);
                None
            }
        }
    }
}

impl<M: Manager> Drop for Io<M> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        match self.hold.permit.take() {
            Some(permit) => {
                self.shared.slots.lock().forget_active(&conn.meta);
                drop(permit);
            }
            None => self.shared.slots.lock().bury(conn.meta.id),
        }
        // Dropped unfinished (the runtime is shutting down): mid-protocol,
        // never reused; no goodbye task can be spawned now.
        self.shared.note_retired(&conn.meta, Reason::Closed);
        drop(conn);
    }
}
