//! [`Pooled`]: a lent connection that finds its own way back.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Conn;
use super::hooks::ConnectionMetadata;
use super::inner::Shared;
use super::owners::Permit;
use crate::liveness::Reason;
use crate::manager::Manager;

/// A connection lent by a [`Pool`](crate::Pool). Derefs to the connection;
/// dropping it hands the connection back (synchronously; when it needs
/// cleaning, the round trip runs in a background task that keeps its slot).
///
/// The guard, not the connection, knows the way back: connection types stay
/// plain driver types with no reference to the pool.
#[must_use = "dropping the guard returns the connection at once"]
pub struct Pooled<M: Manager> {
    /// The connection and its capacity permit (which knows the pool),
    /// until the guard is dropped or detached.
    lent: Option<(Conn<M::Connection>, Permit<M>)>,
    lent_at: Instant,
    /// Reset all session state on return, whatever `reset_on_return` says.
    full_reset: bool,
}

impl<M: Manager> Pooled<M> {
    pub(crate) fn new(conn: Conn<M::Connection>, permit: Permit<M>, lent_at: Instant) -> Self {
        Pooled {
            lent: Some((conn, permit)),
            lent_at,
            full_reset: false,
        }
    }

    fn conn(&self) -> &Conn<M::Connection> {
        &self
            .lent
            .as_ref()
            .expect("Pooled holds its connection until dropped")
            .0
    }

    fn conn_mut(&mut self) -> &mut Conn<M::Connection> {
        &mut self
            .lent
            .as_mut()
            .expect("Pooled holds its connection until dropped")
            .0
    }

    fn take(this: &mut Self) -> (Conn<M::Connection>, Permit<M>) {
        this.lent
            .take()
            .expect("Pooled holds its connection until dropped")
    }

    /// Takes the connection out of the pool for good. Its slot is freed; the
    /// pool counts it as closed (reason `closed`).
    pub fn detach(mut this: Self) -> M::Connection {
        let (conn, permit) = Self::take(&mut this);
        let shared = permit.shared();
        shared.slots.lock().forget_active(&conn.meta);
        shared.note_retired(&conn.meta, Reason::Closed);
        conn.into_raw()
    }

    /// Closes the connection instead of returning it (say, after an error
    /// that leaves the session in doubt). Its slot is freed.
    pub fn retire(this: Self) {
        Self::retire_as(this, Reason::Closed);
    }

    /// Closes the connection, counted for `reason`.
    pub(crate) fn retire_as(mut this: Self, reason: Reason) {
        let (conn, permit) = Self::take(&mut this);
        permit.shared().retire_active(conn, reason);
    }

    /// Asks for a full session reset (as with `reset_on_return`) when this
    /// connection comes back, for this one borrow: the borrower changed
    /// session state (variables, temporary tables, `search_path`, a role)
    /// that the next borrower must not inherit. A failed reset retires the
    /// connection.
    pub fn reset_on_return(this: &mut Self) {
        this.full_reset = true;
    }

    /// Puts a connection the caller never saw (it gave up first) back into
    /// the idle set, without counting a use.
    pub(crate) fn put_back_unused(mut this: Self) {
        let (conn, permit) = Self::take(&mut this);
        Shared::make_idle(conn, permit);
    }

    /// When the connection was lent (the checkout's last clock reading).
    pub(crate) fn lent_at(this: &Self) -> Instant {
        this.lent_at
    }

    /// What a `before_acquire` hook is told about this connection; `None`
    /// for one never lent before (opened for this checkout, or by the
    /// housekeeper and unused).
    pub(crate) fn metadata(this: &Self) -> Option<ConnectionMetadata> {
        let meta = &this.conn().meta;
        (meta.uses > 0).then(|| ConnectionMetadata::of(meta, this.lent_at))
    }

    /// How long this guard has been held.
    pub fn held_for(this: &Self) -> Duration {
        this.lent_at.elapsed()
    }

    /// The pool's id for this connection (as in its log lines).
    pub fn id(this: &Self) -> u64 {
        this.conn().meta.id
    }
}

impl<M: Manager> Deref for Pooled<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.conn().raw
    }
}

impl<M: Manager> DerefMut for Pooled<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.conn_mut().raw
    }
}

impl<M: Manager> Drop for Pooled<M> {
    fn drop(&mut self) {
        if let Some((conn, permit)) = self.lent.take() {
            Shared::check_in(conn, permit, self.lent_at, self.full_reset);
        }
    }
}

impl<M: Manager> fmt::Debug for Pooled<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meta = self.lent.as_ref().map(|(c, _)| c.meta);
        f.debug_struct("Pooled")
            .field("id", &meta.map(|m| m.id))
            .field("held_for", &self.lent_at.elapsed())
            .finish_non_exhaustive()
    }
}
