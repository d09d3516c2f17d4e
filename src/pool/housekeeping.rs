//! The housekeeper: its loop, its pass and the connects it makes: retiring obsolete idle
//! connections before the server would, keepalive pings, replacements and
//! `min_idle`, plus `Builder::connect`'s eager first connect. The decisions
//! are taken under the lock (`Slots::sweep`); every piece of I/O runs in a
//! task of its own.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::inner::{ConnectFailure, OpenError, Shared};
use super::owners::{Io, Permit};
use super::slots::Activity;
use super::TARGET;
use crate::error::ConnectError;
use crate::liveness::Reason;
use crate::manager::Manager;
use crate::stats::Stats;

/// The housekeeper looks at the idle set at least this often, so a
/// connection returned with a short server timeout is not overlooked for long.
const HOUSEKEEPING_MAX_SLEEP: Duration = Duration::from_millis(500);

impl<M: Manager> Shared<M> {
    /// One housekeeping pass; returns when the next one is due.
    /// Synchronous: the decision is taken under the lock, and the I/O it
    /// calls for is spawned, not awaited.
    pub(crate) fn housekeep(self: &Arc<Self>) -> Instant {
        let now = Instant::now();
        let (sweep, deficit, leaks) = {
            let mut slots = self.slots.lock();
            let sweep = slots.sweep(
                now,
                &self.evidence.sweep_policy(&self.config, self.policy),
                self.config.min_idle,
                self.generation(),
                |c| self.manager.session(c).broken,
                |unit| Permit::new(self, unit),
            );
            let leaks = match self.config.leak_threshold {
                Some(threshold) => slots.new_leaks(now, threshold),
                None => Vec::new(),
            };
            (sweep, slots.idle_deficit(self.config.min_idle), leaks)
        };
        for leak in leaks {
            Stats::bump(&self.stats.leaks_suspected);
            if let Activity::Lent(site) = leak.activity {
                // warn: a guard held this long is almost always a bug in the caller.
                tracing::warn!(
                    target: TARGET,
                    conn_id = leak.id,
                    held_for = ?now.saturating_duration_since(leak.since),
                    borrowed_at = %site,
                    "connection held longer than leak_threshold; possible leak"
                );
            }
        }
        // Every piece of I/O runs in a task of its own, and the sweep does
        // not wait for them: a black-holed ping must not delay the next
        // sweep (and with it the detection of the others) by a whole
        // `validation_timeout`. Each task owns what it works on (removed from
        // the idle set, holding a permit), so no two sweeps touch the same
        // connection.
        let spawner = self.runtime();
        for (conn, reason) in sweep.retired {
            if reason == Reason::Broken {
                let idle = now.saturating_duration_since(conn.meta.last_io);
                self.evidence
                    .idle_died(&self.config, idle, conn.meta.server_idle);
            }
            self.note_retired(&conn.meta, reason);
            self.say_goodbye(conn.into_raw());
        }
        for (conn, permit) in sweep.keepalive {
            let mut io = Io::new(conn, permit);
            spawner.spawn(async move {
                let shared = Arc::clone(io.shared());
                // Silent past the hedge delay: presumed dead, and its unit
                // goes back to the line at once.
                if shared.ping(&mut io, drop).await {
                    if let Some((conn, permit)) = io.keep() {
                        Shared::make_idle(conn, permit);
                    }
                } else {
                    io.retire(Reason::ValidationFailed);
                }
            });
        }
        // Replace what was retired as obsolete, so callers do not pay for
        // the reconnect after an idle period; and top up to `min_idle`.
        let inherit = sweep.replace;
        let wanted = inherit.len().max(deficit);
        for i in 0..wanted {
            let Some(permit) = self.try_permit() else {
                break;
            };
            let last_borrowed = inherit.get(i).copied();
            spawner.spawn(Self::open_idle(permit, last_borrowed));
        }
        let role_check = self.check_role(now);
        let cap = Instant::now() + HOUSEKEEPING_MAX_SLEEP;
        let next = sweep.next_deadline.map_or(cap, |d| d.min(cap));
        role_check.map_or(next, |at| at.min(next))
    }

    /// Every `role_check_interval`, when the manager requires a role: asks
    /// one idle connection (the most recently used) whether its session
    /// still has it, in a task of its own. Returns when the next check is due.
    fn check_role(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        if !self.requires_role {
            return None;
        }
        let mut due = self.role_check_due.lock();
        if now < *due {
            return Some(*due);
        }
        *due = now + self.config.role_check_interval;
        // Nothing idle, or every unit lent: the next connection that comes
        // back is asked instead (`check_in`), so a busy pool is checked too.
        let Some(permit) = self.try_permit() else {
            self.role_check_wanted.store(true, Relaxed);
            return Some(*due);
        };
        let Some(mut conn) = self.slots.lock().take_for_check(now) else {
            self.role_check_wanted.store(true, Relaxed);
            return Some(*due);
        };
        self.runtime().spawn(async move {
            let shared = Arc::clone(permit.shared());
            let asked = tokio::time::timeout(
                shared.config.validation_timeout,
                shared.manager.has_role(&mut conn.raw),
            )
            .await;
            match asked {
                Ok(Ok(true)) => {
                    conn.meta.last_io = Instant::now();
                    Shared::make_idle(conn, permit);
                }
                Ok(Ok(false)) => {
                    shared.retire_active(conn, Reason::RoleChanged);
                    shared.role_changed("the role check found the session without its role");
                }
                Ok(Err(error)) => {
                    tracing::warn!(target: TARGET, %error, "role check failed");
                    shared.suspect();
                    shared.retire_active(conn, Reason::ValidationFailed);
                }
                Err(_) => {
                    tracing::warn!(target: TARGET, "role check timed out");
                    shared.suspect();
                    shared.retire_active(conn, Reason::ValidationFailed);
                }
            }
        });
        Some(*due)
    }

    /// `Builder::connect`'s single attempt: one connect into the idle set,
    /// or the driver's own error.
    pub(crate) async fn open_first(self: &Arc<Self>) -> Result<(), ConnectError<M::Error>> {
        // Nobody else holds the pool yet, so a permit is free; without one
        // (cannot happen) the first `get()` reports any failure itself.
        let Some(permit) = self.try_permit() else {
            return Ok(());
        };
        match self.open_one(Activity::Opening).await {
            Ok(conn) => {
                Self::make_idle(conn, permit);
                Ok(())
            }
            // Closed cannot happen either (the caller owns the pool): its
            // first `get()` would say so.
            Err(OpenError::Closed) => Ok(()),
            // The failure is in `last_connect_failure`, unless a concurrent
            // connect of the housekeeper (`min_idle`) succeeded meanwhile: then
            // the server is reachable and the pool is fine.
            Err(OpenError::Failed | OpenError::NotYet | OpenError::Declined) => {
                match &*self.last_connect_failure.lock() {
                    Some(ConnectFailure::Error(e, None)) => {
                        Err(ConnectError::Connect(Arc::clone(e)))
                    }
                    &Some(ConnectFailure::Error(ref e, Some(hook))) => Err(ConnectError::Hook {
                        hook,
                        error: Arc::clone(e),
                    }),
                    &Some(ConnectFailure::TimedOut(connect_timeout)) => {
                        Err(ConnectError::NoAnswer { connect_timeout })
                    }
                    None => Ok(()),
                }
            }
        }
    }

    /// Opens a connection straight into the idle set, on `permit`.
    /// A replacement inherits its predecessor's `last_borrowed`, so
    /// `idle_timeout` still shrinks a pool nobody uses. A failed connect
    /// drops the permit, which gives it back.
    async fn open_idle(permit: Permit<M>, last_borrowed: Option<Instant>) {
        if let Ok(mut conn) = permit.shared().open_one(Activity::Opening).await {
            if let Some(t) = last_borrowed {
                conn.meta.last_borrowed = t;
            }
            Self::make_idle(conn, permit);
        }
    }
}

/// The background task: retires obsolete idle connections, pings silent
/// ones, replaces what it retires and keeps `min_idle`. Holds no lock across
/// I/O (the sweep decides under the lock; the I/O happens after). Ends when
/// the pool closes.
pub(super) async fn housekeeper<M: Manager>(shared: Arc<Shared<M>>) {
    loop {
        let next = shared.housekeep();
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if shared.slots.lock().is_closed() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = changed => {}
        }
    }
}
