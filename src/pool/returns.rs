//! The way back: a dropped [`Pooled`](super::Pooled) checks its connection
//! in (`Shared::check_in`), which files it idle at once or hands it to a
//! [`Returning`] task that cleans it first (a rollback, a reset, a ping);
//! and every way a connection leaves the pool (`retire_active`, `retire`,
//! the polite goodbye in a task of its own).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::time::{timeout, Instant};

use super::inner::Shared;
use super::owners::Permit;
use super::slots::{Activity, Conn, Filed, Meta};
use super::TARGET;
use crate::liveness::{assess, may_retire_at_return, Policy, Reason, Verdict};
use crate::manager::Manager;

impl<M: Manager> Shared<M> {
    /// Takes back a connection from a dropped [`Pooled`], with its permit.
    /// Synchronous: when the connection needs cleaning, the round trip runs
    /// in a task that keeps the permit until it is done, so the pool never
    /// exceeds `max_size` while a connection is being reset.
    pub(crate) fn check_in(
        mut conn: Conn<M::Connection>,
        permit: Permit<M>,
        lent_at: Instant,
        full_reset: bool,
    ) {
        let this = permit.shared();
        let now = Instant::now();
        this.stats.usage.observe(now - lent_at);
        conn.meta.last_io = now;
        conn.meta.last_borrowed = now;
        conn.meta.uses += 1;
        let broken = this.manager.has_broken(&mut conn.raw);
        if broken {
            this.suspect();
        }
        let stale = conn.meta.generation < this.generation();
        let meta = &conn.meta;
        if may_retire_at_return(broken, stale, meta.expires, meta.server_idle, now) {
            if let Verdict::Retire(reason) = assess(
                &conn.meta.facts(broken, false, this.generation()),
                &this.policy,
                now,
            ) {
                this.retire_active(conn, reason);
                return; // the permit goes back as it is dropped
            }
        }
        let full = full_reset || this.config.reset_on_return;
        let dirty = full || this.manager.needs_cleanup(&mut conn.raw);
        if !dirty && !this.verify_returns {
            Self::make_idle(conn, permit);
            return;
        }
        let runtime = this.runtime.clone();
        let returning = Returning::new(conn, permit);
        // A reset is a round trip too, and proves the session alive: a
        // dirty connection is cleaned, a clean one only pinged.
        if dirty {
            runtime.spawn(returning.reset(full));
        } else {
            runtime.spawn(returning.verify());
        }
    }

    /// Puts an active connection back with its permit, in one step under
    /// the lock: straight to the first caller in line, who wakes holding
    /// both, or into the idle set with the capacity freed. The checkout
    /// decision is precomputed here (`Meta::lend_before`): the connection's
    /// facts change only with I/O, which it does not do idle.
    pub(crate) fn make_idle(mut conn: Conn<M::Connection>, permit: Permit<M>) {
        let meta = &conn.meta;
        let lend_before =
            Policy::lend_before_allowed(meta.last_io, meta.lend_allowance, meta.expires);
        conn.meta.lend_before = lend_before;
        let filed = permit.shared().slots.lock().file(conn);
        match filed {
            Filed::Idle => permit.handed_on(),
            Filed::Handed(waiter) => {
                permit.handed_on();
                if let Some(waker) = waiter {
                    waker.wake();
                }
            }
            Filed::Refused(conn) => {
                permit.shared().retire_active(conn, Reason::Closed);
                drop(permit);
            }
        }
    }

    /// Closes a connection counted active. Its permit, if it has one, is
    /// the caller's value and goes back when the caller drops it.
    pub(crate) fn retire_active(self: &Arc<Self>, conn: Conn<M::Connection>, reason: Reason) {
        self.slots.lock().forget_active(&conn.meta);
        self.retire(conn, reason);
    }

    /// Counts, logs and politely closes a connection no longer counted anywhere.
    pub(crate) fn retire(self: &Arc<Self>, conn: Conn<M::Connection>, reason: Reason) {
        self.note_retired(&conn.meta, reason);
        self.say_goodbye(conn.into_raw());
    }

    /// Closes `raw` politely in a task of its own, counted in `goodbyes`.
    pub(super) fn say_goodbye(self: &Arc<Self>, raw: M::Connection) {
        self.goodbyes.fetch_add(1, Relaxed);
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            shared.close_raw(raw).await;
            shared.goodbyes.fetch_sub(1, Relaxed);
            shared.changed.notify_waiters();
        });
    }

    /// Goodbyes still running.
    pub(crate) fn goodbyes(&self) -> u64 {
        self.goodbyes.load(Relaxed)
    }

    pub(crate) fn note_retired(&self, meta: &Meta, reason: Reason) {
        self.stats.closed(reason);
        // debug, not info: retirement is the pool doing its job.
        tracing::debug!(
            target: TARGET,
            conn_id = meta.id,
            reason = reason.as_str(),
            age = ?meta.created.elapsed(),
            uses = meta.uses,
            "connection retired"
        );
        self.changed.notify_waiters();
    }

    /// A goodbye to the server, bounded: a black-holed socket must not hang a task.
    pub(crate) async fn close_raw(&self, raw: M::Connection) {
        let _ = timeout(self.config.validation_timeout, self.manager.close(raw)).await;
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
