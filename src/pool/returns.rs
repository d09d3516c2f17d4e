//! The way back: a dropped [`Pooled`](super::Pooled) checks its connection
//! in (`Shared::check_in`), which files it idle at once or hands it to a
//! [`Returning`] task that cleans it first (a rollback, a reset, a ping);
//! and every way a connection leaves the pool (`retire_active`, `retire`,
//! the polite goodbye in a task of its own).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::time::{timeout, Instant};

use super::conn::{Conn, Meta, Record};
use super::hooks::ConnectionMetadata;
use super::inner::{Shared, AFTER_CONNECT};
use super::owners::{Io, Permit};
use super::slots::{Activity, Filed};
use super::TARGET;
use crate::liveness::{assess, may_retire_at_return, Policy, Reason, Verdict};
use crate::manager::{Cleaned, Cleanup, ErrorClass, Manager};
use crate::stats::Stats;

impl<M: Manager> Shared<M> {
    /// Takes back a connection from a dropped [`Pooled`], with its permit.
    /// Synchronous: when the connection needs cleaning, the round trip runs
    /// in a task that keeps the permit until it is done (or until it goes
    /// silent past the hedge delay: see [`Io`]), so the pool never exceeds
    /// `max_size` while a connection is being reset.
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
        let session = this.manager.session(&mut conn.raw);
        let broken = session.broken;
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
                // A borrower that left mid-query may have left the
                // statement running on the server (mysql_async gives such
                // a session up): ask the server to stop it on the way out.
                if session.query_in_flight {
                    this.slots.lock().forget_active(&conn.meta);
                    this.note_retired(&conn.meta, reason);
                    this.cancel_and_say_goodbye(conn.into_raw());
                } else {
                    this.retire_active(conn, reason);
                }
                return; // the permit goes back as it is dropped
            }
        }
        let full = full_reset || this.config.reset_on_return;
        let dirty = full || session.needs_cleanup;
        // A role check is due (the housekeeper found nothing idle to ask),
        // or a reply on this session said the server turned read-only.
        let role = this.requires_role
            && ((this.role_check_wanted.load(Relaxed)
                && this.role_check_wanted.swap(false, Relaxed))
                || session.role_in_doubt);
        let release = this.hooks.after_release.is_some();
        if !dirty && !this.verify_returns && !role && !release {
            Self::make_idle(conn, permit);
            return;
        }
        let plan = Plan {
            // A reply still on its way: stop the statement rather than
            // queue a rollback or a ping behind it.
            stop_query: dirty && session.query_in_flight,
            // A reset is a round trip too, and proves the session alive: a
            // dirty connection is cleaned, a clean one only pinged (the
            // role question proves it alive as well as a ping).
            reset: dirty.then_some(full),
            ping: !dirty && this.verify_returns && !role,
            role,
            release,
        };
        let runtime = this.runtime.clone();
        runtime.spawn(Returning::new(conn, permit).finish(plan));
    }

    /// Asks the server to stop what `raw`'s borrower left running, then
    /// closes it politely, in a task of its own counted in `goodbyes`.
    fn cancel_and_say_goodbye(self: &Arc<Self>, mut raw: M::Connection) {
        self.goodbyes.fetch_add(1, Relaxed);
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            let limit = shared.config.validation_timeout;
            let stop = Cleanup {
                stop_query: true,
                full: false,
            };
            let stopped = timeout(limit, shared.manager.reset(&mut raw, stop)).await;
            shared.note_stop(stopped.ok());
            shared.close_raw(raw).await;
            shared.goodbyes.fetch_sub(1, Relaxed);
            shared.changed.notify_waiters();
        });
    }

    /// Counts and logs what a reset that had to stop a statement left
    /// running did with it (`None`: it timed out). `Some` carries a
    /// cleaned session's outcome on, `None` says close it.
    fn note_stop(
        &self,
        outcome: Option<Result<Cleaned, M::Error>>,
    ) -> Option<Result<(), M::Error>> {
        let (stopped, go_on) = match outcome {
            Some(Ok(Cleaned::Ready)) => (false, Some(Ok(()))),
            Some(Ok(Cleaned::QueryStopped)) => (true, Some(Ok(()))),
            Some(Ok(Cleaned::Unusable { query_stopped })) => (query_stopped, None),
            Some(Err(error)) => {
                tracing::debug!(target: TARGET, %error, "stopping a statement left running failed");
                (false, Some(Err(error)))
            }
            None => {
                tracing::debug!(target: TARGET, "stopping a statement left running timed out");
                (false, None)
            }
        };
        if stopped {
            Stats::bump(&self.stats.queries_cancelled);
            // debug: the borrower chose to leave; this is the pool cleaning up.
            tracing::debug!(target: TARGET, reusable = go_on.is_some(), "statement left running by its borrower stopped");
        }
        go_on
    }

    /// Puts an active connection back with its permit, in one step under
    /// the lock: straight to the first caller in line, who wakes holding
    /// both, or into the idle set with the capacity freed. The checkout
    /// decision is precomputed here (`Meta::lend_before`): the connection's
    /// facts change only with I/O, which it does not do idle.
    pub(crate) fn make_idle(mut conn: Conn<M::Connection>, mut permit: Permit<M>) {
        let meta = &conn.meta;
        let lend_before =
            Policy::lend_before_allowed(meta.last_io, meta.lend_allowance, meta.expires);
        conn.meta.lend_before = lend_before;
        // The unit goes on under the lock, with the connection or without.
        let unit = permit.give_up();
        let filed = permit.shared().slots.lock().file(conn, unit);
        match filed {
            Filed::Idle { wake_backoff } => {
                if wake_backoff {
                    permit.shared().backoff_over.notify_waiters();
                }
            }
            Filed::Handed(waiter) => {
                if let Some(waker) = waiter {
                    waker.wake();
                }
            }
            Filed::Refused(conn) => permit.shared().retire_active(conn, Reason::Closed),
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

/// What a returned connection needs before it goes back idle, in order.
#[derive(Clone, Copy)]
struct Plan {
    /// Stop the statement its borrower left running first
    /// (`Cleanup::stop_query`; only with a reset).
    stop_query: bool,
    /// Clean it (`reset`; `Some(true)`: a full reset, after which the
    /// `after_connect` hook runs again).
    reset: Option<bool>,
    /// Ping it (`verify_on_return`; only when it is not reset).
    ping: bool,
    /// Ask the session its role (`has_role`).
    role: bool,
    /// Run the `after_release` hook, last and outside the hedge (the
    /// user's code may take its time; that is not a sign of a dead path).
    release: bool,
}

/// How a [`Plan`] ended.
enum Outcome {
    Clean,
    Retire(Reason),
    /// The session no longer has the role the manager requires.
    RoleGone,
}

/// A returned connection being cleaned in its own task, with its permit
/// (given up if the cleaning goes silent past the hedge delay): however
/// the task ends (done, failed, or dropped with the runtime), the
/// connection ends up idle or retired and the permit goes back.
pub(super) struct Returning<M: Manager>(Io<M>);

impl<M: Manager> Returning<M> {
    pub(super) fn new(conn: Conn<M::Connection>, permit: Permit<M>) -> Self {
        permit
            .shared()
            .slots
            .lock()
            .set_activity(&conn.meta, Activity::Returning);
        Returning(Io::new(conn, permit))
    }

    /// Runs the plan on the connection, each step bounded by
    /// `validation_timeout`, then files the connection by its outcome.
    async fn finish(mut self, plan: Plan) {
        let shared = Arc::clone(self.0.shared());
        let outcome = {
            let (conn, hold) = self.0.parts();
            let work = shared.run_plan(&mut conn.raw, conn.meta, plan);
            tokio::pin!(work);
            match shared.evidence.hedge_delay(&shared.config) {
                Some(delay) => match timeout(delay, &mut work).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        // Presumed dead (an abandoned statement the server
                        // cannot be made to stop, a black hole): the next
                        // caller does not wait for it. The unit goes back
                        // to the line at once.
                        drop(hold.silence(&shared, &conn.meta));
                        tokio::select! {
                            outcome = work => outcome,
                            // Evicted from the presumed dead by a newer
                            // one, or the pool closed: closed now.
                            () = hold.evicted() => Outcome::Retire(match plan.reset {
                                Some(_) => Reason::ResetFailed,
                                None => Reason::ValidationFailed,
                            }),
                        }
                    }
                },
                None => work.await,
            }
        };
        let outcome = match outcome {
            Outcome::Clean if plan.release => {
                let (conn, _) = self.0.parts();
                shared.released(conn).await
            }
            outcome => outcome,
        };
        match outcome {
            Outcome::Clean => {
                if let Some((mut conn, permit)) = self.0.keep() {
                    conn.meta.last_io = Instant::now();
                    Shared::make_idle(conn, permit);
                }
            }
            Outcome::Retire(reason) => {
                if reason != Reason::Refused {
                    shared.suspect();
                }
                drop(self.0.retire(reason));
            }
            Outcome::RoleGone => {
                drop(self.0.retire(Reason::RoleChanged));
                shared.role_changed("a returned session no longer has its role");
            }
        }
    }
}

impl<M: Manager> Shared<M> {
    /// The I/O of a [`Plan`], step by step.
    async fn run_plan(&self, raw: &mut M::Connection, meta: Meta, plan: Plan) -> Outcome {
        let conn_id = meta.id;
        let limit = self.config.validation_timeout;
        let manager = &self.manager;
        let (what, failed) = match plan.reset {
            Some(_) => ("reset on return", Reason::ResetFailed),
            None => ("verify on return", Reason::ValidationFailed),
        };
        let cleaned = match plan.reset {
            Some(full) => {
                let cleanup = Cleanup {
                    full,
                    stop_query: plan.stop_query,
                };
                let result = timeout(limit, manager.reset(raw, cleanup)).await;
                if !plan.stop_query {
                    Some(result.map(|r| r.map(drop)))
                } else if let Some(stopped) = self.note_stop(result.ok()) {
                    Some(Ok(stopped))
                } else {
                    // Never lent with a reply pending: closed instead.
                    return Outcome::Retire(Reason::ResetFailed);
                }
            }
            None if plan.ping => Some(timeout(limit, manager.is_valid(raw)).await),
            None => None,
        };
        if let Some(result) = cleaned {
            if let Some(reason) = self.return_failure(raw, conn_id, what, failed, result) {
                return Outcome::Retire(reason);
            }
        }
        if let (Some(true), Some(hook)) = (plan.reset, &self.hooks.after_connect) {
            // The full reset undid what the hook set on the new session.
            let meta = ConnectionMetadata::of(&meta, Instant::now());
            let result = timeout(limit, hook(raw, meta)).await;
            let what = AFTER_CONNECT;
            if let Some(reason) = self.return_failure(raw, conn_id, what, failed, result) {
                return Outcome::Retire(reason);
            }
        }
        if plan.role {
            match timeout(limit, manager.has_role(raw)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Outcome::RoleGone,
                result => {
                    let result = result.map(|r| r.map(drop));
                    let reason = self
                        .return_failure(
                            raw,
                            conn_id,
                            "role check",
                            Reason::ValidationFailed,
                            result,
                        )
                        .unwrap_or(Reason::ValidationFailed);
                    return Outcome::Retire(reason);
                }
            }
        }
        Outcome::Clean
    }

    /// The `after_release` hook's answer, within `validation_timeout`.
    async fn released(&self, conn: &mut Record<M::Connection>) -> Outcome {
        let Some(hook) = &self.hooks.after_release else {
            return Outcome::Clean;
        };
        let meta = ConnectionMetadata::of(&conn.meta, Instant::now());
        let answer = timeout(self.config.validation_timeout, hook(&mut conn.raw, meta)).await;
        let conn_id = conn.meta.id;
        match answer {
            Ok(Ok(true)) => return Outcome::Clean,
            // debug: the user's own rule, doing its job.
            Ok(Ok(false)) => {
                tracing::debug!(target: TARGET, conn_id, "after_release refused a returned connection")
            }
            // warn: the user's code failed; they will want to know why.
            Ok(Err(error)) => {
                tracing::warn!(target: TARGET, conn_id, %error, "after_release hook failed")
            }
            Err(_) => tracing::warn!(target: TARGET, conn_id, "after_release hook timed out"),
        }
        Outcome::Retire(Reason::Refused)
    }

    /// What a failed step of a return means for the connection; `None`: it
    /// did not fail.
    fn return_failure(
        &self,
        raw: &mut M::Connection,
        conn_id: u64,
        what: &str,
        failed: Reason,
        result: Result<Result<(), M::Error>, tokio::time::error::Elapsed>,
    ) -> Option<Reason> {
        match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => {
                let manager = &self.manager;
                if manager.classify(&error) == ErrorClass::EndsSession
                    || manager.session(raw).broken
                {
                    // The session died while it was lent (a restart, a kill):
                    // the borrower saw that already; debug, like every retirement.
                    tracing::debug!(target: TARGET, conn_id, %error, "returned connection's session is gone ({what})");
                    Some(Reason::Broken)
                } else {
                    tracing::warn!(target: TARGET, conn_id, %error, "{what} failed");
                    Some(failed)
                }
            }
            Err(_) => {
                tracing::warn!(target: TARGET, conn_id, "{what} timed out");
                Some(failed)
            }
        }
    }
}
