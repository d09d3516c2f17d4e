//! The pool's async flow: checkout, connect, check-in, retirement, housekeeping.
//!
//! Capacity is a semaphore with `max_size` permits. A permit is held by every
//! connection that is lent out or held by the pool for I/O, and by every
//! connect in flight; idle connections hold none. Waiters queue on the
//! semaphore, which is FIFO and cancel-safe, so fairness and lost wake-ups
//! are tokio's proven code, not ours. Each permit is `forget`-ed on
//! acquisition and given back by exactly one RAII owner: [`Permit`]
//! during a checkout, the [`Pooled`] guard while lent, a `Returning` task
//! while a returned connection is cleaned.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::time::timeout;

use super::guard::Pooled;
use super::slots::{Activity, Conn, Meta, Slots};
use crate::config::Config;
use crate::error::{Error, TimeoutPhase};
use crate::liveness::{assess, Policy, Reason, Verdict};
use crate::manager::{Manager, ServerTimeouts};
use crate::stats::Stats;

/// Tracing target for every event of the pool.
pub(crate) const TARGET: &str = "vigil::pool";

/// The housekeeper looks at the idle set at least this often, so a
/// connection returned with a short server timeout is not overlooked for long.
const HOUSEKEEPING_MAX_SLEEP: Duration = Duration::from_millis(500);

/// First pause after a failed connect; doubles per consecutive failure up
/// to [`BACKOFF_MAX`], and each pause is drawn from its upper half at random.
const BACKOFF_START: Duration = Duration::from_millis(10);
/// Bounds how long a recovered server waits for the pool's next attempt.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

pub(crate) struct Shared<M: Manager> {
    pub(crate) manager: M,
    pub(crate) config: Config,
    pub(crate) policy: Policy,
    pub(crate) slots: Mutex<Slots<M::Connection>>,
    /// Capacity: `max_size` permits; see the module docs.
    pub(crate) permits: Semaphore,
    /// Bounds connects in flight (`max_concurrent_connects`).
    connects: Semaphore,
    pub(crate) stats: Stats,
    /// Why the most recent connect attempt failed; cleared by a success.
    last_connect_failure: Mutex<Option<ConnectFailure<M::Error>>>,
    /// Pool-wide pacing of connect attempts after failures.
    backoff: Mutex<Backoff>,
    /// Wakes callers waiting out the backoff: a connect succeeded, or the
    /// pool was closed.
    pub(crate) backoff_over: Notify,
    runtime: Handle,
    next_id: AtomicU64,
    /// When the pool last saw a sign of trouble (a failed ping, reset or
    /// connect, a broken return), in ns since `epoch`; 0 = never.
    suspect_since: AtomicU64,
    epoch: Instant,
    /// Bumped by `retire_all`; connections from older generations are never lent.
    generation: AtomicU64,
    /// Wakes the housekeeper (on close) and `close()` (when a connection leaves).
    pub(crate) changed: Notify,
    /// Goodbyes (`Manager::close`) running in their own tasks; `close()`
    /// waits for them, so a process that exits after it leaves no session
    /// to be cut off mid-goodbye.
    goodbyes: AtomicU64,
}

impl<M: Manager> Shared<M> {
    pub(crate) fn new(manager: M, config: Config, runtime: Handle) -> Self {
        Shared {
            manager,
            policy: Policy::from(&config),
            slots: Mutex::new(Slots::new(config.max_size)),
            permits: Semaphore::new(config.max_size),
            connects: Semaphore::new(config.max_concurrent_connects),
            stats: Stats::new(),
            last_connect_failure: Mutex::new(None),
            backoff: Mutex::new(Backoff::default()),
            backoff_over: Notify::new(),
            runtime,
            next_id: AtomicU64::new(1),
            suspect_since: AtomicU64::new(0),
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            goodbyes: AtomicU64::new(0),
            config,
        }
    }

    /// Notes a sign of trouble: a server that failed one session (restart,
    /// failover, a proxy resetting flows) has often failed the others too,
    /// including idle ones used moments ago. Until each proves itself, none
    /// is lent on the strength of the bypass window.
    pub(crate) fn suspect(&self) {
        let ns = u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.suspect_since.store(ns, Relaxed);
    }

    /// Does lending this idle connection at `now` need a round trip first:
    /// it is silent past the bypass window, or it was last heard from before
    /// the pool last saw trouble.
    fn must_ping(&self, meta: &Meta, now: Instant) -> bool {
        if self.policy.needs_ping(meta.last_io, now) {
            return true;
        }
        let suspect = self.suspect_since.load(Relaxed);
        suspect != 0 && {
            let last_io = meta
                .last_io
                .saturating_duration_since(self.epoch)
                .as_nanos();
            last_io < u128::from(suspect)
        }
    }

    pub(crate) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    pub(crate) fn generation(&self) -> u64 {
        // Relaxed: a checkout racing with `retire_all` may lend a connection
        // of the old generation once; it is retired when it comes back.
        self.generation.load(Relaxed)
    }

    /// Starts a new generation and closes every idle connection now; lent
    /// ones are closed when they come back.
    pub(crate) fn retire_all(self: &Arc<Self>) {
        self.generation.fetch_add(1, Relaxed);
        let idle = self.slots.lock().drain_idle();
        for conn in idle {
            self.retire(conn, Reason::Closed);
        }
        // The housekeeper refills `min_idle` with new-generation connections.
        self.changed.notify_waiters();
    }

    /// Gives one capacity permit back; a waiting `get()` (first in line) gets it.
    pub(crate) fn release_permit(&self) {
        self.permits.add_permits(1);
    }

    // ---------------------------------------------------------------- checkout

    /// The fast path of `get()`: a free slot and a warm idle connection that
    /// needs neither retirement nor a ping. Synchronous: no timer, no await,
    /// one lock. `None` sends the caller down the slow path, with nothing
    /// changed.
    pub(crate) fn try_checkout_now(
        self: &Arc<Self>,
        now: Instant,
        site: &'static Location<'static>,
    ) -> Option<Pooled<M>> {
        self.permits.try_acquire().ok()?.forget();
        let popped = {
            let mut slots = self.slots.lock();
            if slots.is_closed() {
                None
            } else {
                slots.pop_if(now, site, |conn| {
                    let broken = self.manager.has_broken(&mut conn.raw);
                    assess(
                        &conn.meta.facts(broken, false, self.generation()),
                        &self.policy,
                        now,
                    ) == Verdict::Keep
                        && !self.must_ping(&conn.meta, now)
                })
            }
        };
        match popped {
            Some(conn) => {
                Stats::bump(&self.stats.validations_skipped);
                Some(Pooled::new(Arc::clone(self), conn, now))
            }
            None => {
                self.release_permit();
                None
            }
        }
    }

    /// The body of `Pool::get`, run under `acquire_timeout` by the caller,
    /// which reads `phase` if the time runs out.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        phase: &mut TimeoutPhase,
        site: &'static Location<'static>,
    ) -> Result<Pooled<M>, Error<M::Error>> {
        self.acquire_permit().await?;
        // From here until the connection is handed to `Pooled`, the permit is
        // ours to give back, on every path including cancellation.
        let mut permit = Permit::new(self);
        loop {
            permit = match self.checkout_idle(permit, phase, site).await? {
                Checkout::Lent(pooled) => return Ok(pooled),
                Checkout::Empty(permit) => permit,
            };
            *phase = TimeoutPhase::Connecting;
            match self.connect_detached(permit, site).await {
                Connected::Lent(pooled) => return Ok(pooled),
                Connected::Closed => return Err(Error::Closed),
                // The pool is backing off: wait for the next attempt's turn
                // (or another caller's success), then look at the idle set
                // again: a connection may have come back meanwhile.
                Connected::Failed(p) | Connected::NotYet(p) => {
                    permit = p;
                    self.backoff_wait().await;
                }
                // Not the server's doing, so no backoff; a short pause
                // keeps a manager that declines again from spinning us.
                Connected::Declined(p) => {
                    permit = p;
                    tokio::time::sleep(BACKOFF_START).await;
                }
            }
        }
    }

    /// Sleeps until the pool may try to connect again, or until a connect
    /// succeeds. Cancel safe: it holds nothing.
    async fn backoff_wait(&self) {
        // Registered before reading the deadline, so a success in between
        // is not missed.
        let over = self.backoff_over.notified();
        // `close()` may have run before `over` existed: its wake-up is lost,
        // but the semaphore it closed tells.
        if self.permits.is_closed() {
            return;
        }
        let Some(at) = self.backoff.lock().retry_at else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            () = over => {}
        }
    }

    /// Opens a connection in a task of its own, which owns the permit. A
    /// caller that gives up mid-connect (cancelled, or out of time) does not
    /// throw the connect away: the new connection goes to the idle set for
    /// the next caller. Without this, callers more impatient than a connect
    /// is slow would keep the pool from ever growing.
    async fn connect_detached(
        self: &Arc<Self>,
        permit: Permit<M>,
        site: &'static Location<'static>,
    ) -> Connected<M> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            let outcome = match shared.open_one(Activity::Lent(site)).await {
                Ok(conn) => Connected::Lent(permit.lend(conn, Instant::now())),
                Err(OpenError::Failed) => Connected::Failed(permit),
                Err(OpenError::NotYet) => Connected::NotYet(permit),
                Err(OpenError::Declined) => Connected::Declined(permit),
                Err(OpenError::Closed) => Connected::Closed,
            };
            // If the caller is gone, `send` hands the outcome back: a new
            // connection goes to the idle set unused, a `Permit` is released
            // on drop. If the caller drops the receiver after this succeeded,
            // the `Pooled` is dropped there and checks itself in.
            if let Err(Connected::Lent(pooled)) = tx.send(outcome) {
                Pooled::put_back_unused(pooled);
            }
        });
        // The task ends without sending only if the runtime is shutting down;
        // its permit was released when it was dropped.
        rx.await.unwrap_or(Connected::Closed)
    }

    async fn acquire_permit(&self) -> Result<(), Error<M::Error>> {
        match self.permits.try_acquire() {
            Ok(p) => {
                p.forget();
                return Ok(());
            }
            Err(TryAcquireError::Closed) => return Err(Error::Closed),
            Err(TryAcquireError::NoPermits) => {}
        }
        let Some(_pending) = Pending::enter(&self.stats, self.config.max_waiters) else {
            Stats::bump(&self.stats.rejected);
            return Err(Error::Busy {
                max_waiters: self.config.max_waiters.unwrap_or_default(),
            });
        };
        let p = self.permits.acquire().await.map_err(|_| Error::Closed)?;
        p.forget();
        Ok(())
    }

    /// Takes idle connections until one passes the policy (and, when due, a
    /// validation round trip) and lends it on `permit`; hands the permit
    /// back when the idle set is empty.
    async fn checkout_idle(
        self: &Arc<Self>,
        mut permit: Permit<M>,
        phase: &mut TimeoutPhase,
        site: &'static Location<'static>,
    ) -> Result<Checkout<M>, Error<M::Error>> {
        loop {
            let popped = {
                let mut slots = self.slots.lock();
                if slots.is_closed() {
                    return Err(Error::Closed);
                }
                slots.pop(Instant::now(), site)
            };
            let Some(mut conn) = popped else {
                return Ok(Checkout::Empty(permit));
            };
            let now = Instant::now();
            let broken = self.manager.has_broken(&mut conn.raw);
            if let Verdict::Retire(reason) = assess(
                &conn.meta.facts(broken, false, self.generation()),
                &self.policy,
                now,
            ) {
                self.retire_active(conn, reason);
                continue;
            }
            if !self.must_ping(&conn.meta, now) {
                Stats::bump(&self.stats.validations_skipped);
                return Ok(Checkout::Lent(permit.lend(conn, now)));
            }
            *phase = TimeoutPhase::Validating;
            permit = match self.validate_detached(conn, permit).await {
                Validated::Lent(pooled) => return Ok(Checkout::Lent(pooled)),
                Validated::Failed(permit) => permit,
                Validated::Gone => return Err(Error::Closed),
            };
        }
    }

    /// Pings a connection in a task of its own, which owns the connection
    /// and the permit. A caller that gives up mid-ping (cancelled, or out of
    /// time) does not cost the pool the connection: a ping cut short leaves
    /// the session mid-protocol, so it would have to be closed, while the
    /// task lets the ping finish and puts a live connection back idle. Under
    /// tight client timeouts this is the difference between reusing
    /// connections and reconnecting on every cancelled checkout.
    async fn validate_detached(
        self: &Arc<Self>,
        conn: Conn<M::Connection>,
        permit: Permit<M>,
    ) -> Validated<M> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(self);
        // If the runtime drops the task unrun, `InFlight` retires the
        // connection and the permit is released.
        let mut held = InFlight::new(self, conn);
        self.runtime.spawn(async move {
            let ok = shared.ping(held.conn()).await;
            let conn = held.take();
            let outcome = if ok {
                Stats::bump(&shared.stats.validations_ok);
                Validated::Lent(permit.lend(conn, Instant::now()))
            } else {
                shared.retire_active(conn, Reason::ValidationFailed);
                Validated::Failed(permit)
            };
            if let Err(Validated::Lent(pooled)) = tx.send(outcome) {
                // The caller is gone; the connection just proved alive.
                Pooled::put_back_unused(pooled);
            }
        });
        rx.await.unwrap_or(Validated::Gone)
    }

    /// One validation round trip, bounded by `validation_timeout`.
    async fn ping(&self, conn: &mut Conn<M::Connection>) -> bool {
        let result = timeout(
            self.config.validation_timeout,
            self.manager.is_valid(&mut conn.raw),
        )
        .await;
        match result {
            Ok(Ok(())) => {
                conn.meta.last_io = Instant::now();
                true
            }
            Ok(Err(error)) => {
                Stats::bump(&self.stats.validations_failed);
                self.suspect();
                tracing::warn!(target: TARGET, conn_id = conn.meta.id, %error, "validation failed");
                false
            }
            Err(_) => {
                Stats::bump(&self.stats.validations_failed);
                self.suspect();
                tracing::warn!(
                    target: TARGET,
                    conn_id = conn.meta.id,
                    timeout = ?self.config.validation_timeout,
                    "validation timed out"
                );
                false
            }
        }
    }

    // ---------------------------------------------------------------- connect

    /// One connect attempt, bounded by `connect_timeout` and by the
    /// `max_concurrent_connects` gate. The caller holds a capacity permit.
    /// On success the connection counts active, doing `activity`.
    pub(crate) async fn open_one(
        &self,
        activity: Activity,
    ) -> Result<Conn<M::Connection>, OpenError> {
        // Waiting here is what keeps a restart from becoming a connect storm.
        let _gate = self
            .connects
            .acquire()
            .await
            .map_err(|_| OpenError::Closed)?;
        // Checked after the gate: callers queued behind a failing attempt
        // must not all try again the moment it fails.
        if !self.backoff.lock().take_turn(Instant::now()) {
            return Err(OpenError::NotYet);
        }
        let connecting = Connecting::new(self);
        let started = Instant::now();
        let result = timeout(self.config.connect_timeout, async {
            let mut raw = self.manager.connect().await?;
            let server = match self.config.server_idle_timeout_override {
                Some(idle) => ServerTimeouts {
                    idle,
                    idle_in_transaction: None,
                },
                None => self.manager.server_timeouts(&mut raw).await?,
            };
            Ok::<_, M::Error>((raw, server))
        })
        .await;
        let (raw, server) = match result {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) if self.manager.connect_declined(&error) => {
                // debug: nothing went wrong; the manager chose not to connect.
                tracing::debug!(target: TARGET, %error, "connect declined by the manager");
                // Says nothing about the server: the turn this attempt
                // booked is given back.
                self.backoff.lock().retry_at = None;
                return Err(OpenError::Declined);
            }
            Ok(Err(error)) => {
                Stats::bump(&self.stats.connect_errors);
                self.suspect();
                tracing::warn!(target: TARGET, %error, "connect failed");
                *self.last_connect_failure.lock() = Some(ConnectFailure::Error(Arc::new(error)));
                self.backoff.lock().failed(Instant::now());
                return Err(OpenError::Failed);
            }
            Err(_) => {
                Stats::bump(&self.stats.connect_errors);
                self.suspect();
                tracing::warn!(target: TARGET, timeout = ?self.config.connect_timeout, "connect timed out");
                *self.last_connect_failure.lock() =
                    Some(ConnectFailure::TimedOut(self.config.connect_timeout));
                self.backoff.lock().failed(Instant::now());
                return Err(OpenError::Failed);
            }
        };
        let now = Instant::now();
        self.stats.connect.observe(now - started);
        let mut meta = Meta {
            id: self.next_id.fetch_add(1, Relaxed),
            created: now,
            lifetime: self.config.max_lifetime.map(jitter),
            last_io: now,
            last_borrowed: now,
            server,
            uses: 0,
            slot: usize::MAX,
            generation: self.generation(),
        };
        Stats::bump(&self.stats.created);
        let ms = server.idle.map_or(0, |d| d.as_millis() as u64);
        self.stats.server_idle_timeout_ms.store(ms, Relaxed);
        *self.last_connect_failure.lock() = None;
        if self.backoff.lock().succeeded() {
            // info, the one success that is: it closes an outage the
            // operator saw as a run of warnings.
            tracing::info!(target: TARGET, "connect succeeded again after failures");
            self.backoff_over.notify_waiters();
        }
        tracing::debug!(
            target: TARGET,
            conn_id = meta.id,
            elapsed = ?now - started,
            server_idle_timeout = ?server.idle,
            "connection opened"
        );
        connecting.opened(&mut meta, activity);
        Ok(Conn { raw, meta })
    }

    /// `(last connect error, last connect timeout)`: at most one is set.
    pub(crate) fn last_connect_failure(&self) -> (Option<Arc<M::Error>>, Option<Duration>) {
        match &*self.last_connect_failure.lock() {
            Some(ConnectFailure::Error(e)) => (Some(Arc::clone(e)), None),
            Some(ConnectFailure::TimedOut(d)) => (None, Some(*d)),
            None => (None, None),
        }
    }

    // ---------------------------------------------------------------- return

    /// Takes back a connection from a dropped [`Pooled`] (which held a permit).
    /// Synchronous: when the connection needs cleaning, the round trip runs
    /// in a task that keeps the permit until it is done, so the pool never
    /// exceeds `max_size` while a connection is being reset.
    pub(crate) fn check_in(
        self: &Arc<Self>,
        mut conn: Conn<M::Connection>,
        lent_at: Instant,
        full_reset: bool,
    ) {
        let now = Instant::now();
        self.stats.usage.observe(now - lent_at);
        conn.meta.last_io = now;
        conn.meta.last_borrowed = now;
        conn.meta.uses += 1;
        let broken = self.manager.has_broken(&mut conn.raw);
        if broken {
            self.suspect();
        }
        if let Verdict::Retire(reason) = assess(
            &conn.meta.facts(broken, false, self.generation()),
            &self.policy,
            now,
        ) {
            self.retire_active(conn, reason);
            self.release_permit();
            return;
        }
        let full = full_reset || self.config.reset_on_return;
        if !full && !self.manager.needs_cleanup(&mut conn.raw) {
            self.make_idle(conn);
            return;
        }
        let returning = Returning::new(self, conn);
        self.runtime.spawn(returning.reset(full));
    }

    /// Puts an active connection into the idle set and gives its permit back.
    /// Ordering: the push comes first, so the waiter the permit wakes finds
    /// the connection in the idle set instead of opening a new one.
    pub(crate) fn make_idle(self: &Arc<Self>, conn: Conn<M::Connection>) {
        let refused = self.slots.lock().push(conn);
        if let Some(conn) = refused {
            self.retire_active(conn, Reason::Closed);
        }
        self.release_permit();
    }

    /// Closes a connection counted active (the caller gives back its permit).
    pub(crate) fn retire_active(self: &Arc<Self>, conn: Conn<M::Connection>, reason: Reason) {
        self.slots.lock().forget_active(&conn.meta);
        self.retire(conn, reason);
    }

    /// Counts, logs and politely closes a connection no longer counted anywhere.
    pub(crate) fn retire(self: &Arc<Self>, conn: Conn<M::Connection>, reason: Reason) {
        self.note_retired(&conn.meta, reason);
        self.say_goodbye(conn.raw);
    }

    /// Closes `raw` politely in a task of its own, counted in `goodbyes`.
    fn say_goodbye(self: &Arc<Self>, raw: M::Connection) {
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

    // ---------------------------------------------------------------- housekeeping

    /// One housekeeping pass; returns when the next one is due.
    /// Synchronous: the decision is taken under the lock, and the I/O it
    /// calls for is spawned, not awaited.
    pub(crate) fn housekeep(self: &Arc<Self>) -> Instant {
        let now = Instant::now();
        let (sweep, deficit, leaks) = {
            let mut slots = self.slots.lock();
            let sweep = slots.sweep(
                now,
                &self.policy,
                self.config.min_idle,
                self.generation(),
                |c| self.manager.has_broken(c),
                || self.try_take_permit(),
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
                    conn_id = leak.meta.id,
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
        let spawner = &self.runtime;
        for (conn, reason) in sweep.retired {
            self.note_retired(&conn.meta, reason);
            self.say_goodbye(conn.raw);
        }
        for mut conn in sweep.keepalive {
            let shared = Arc::clone(self);
            spawner.spawn(async move {
                if shared.ping(&mut conn).await {
                    shared.make_idle(conn);
                } else {
                    shared.retire_active(conn, Reason::ValidationFailed);
                    shared.release_permit();
                }
            });
        }
        // Replace what was retired as obsolete, so callers do not pay for
        // the reconnect after an idle period; and top up to `min_idle`.
        let mut inherit = sweep.replace;
        let wanted = inherit.len().max(deficit);
        for i in 0..wanted {
            if !self.try_take_permit() {
                break;
            }
            let last_borrowed = inherit.get(i).copied();
            let shared = Arc::clone(self);
            spawner.spawn(async move { shared.open_idle(last_borrowed).await });
        }
        inherit.clear();
        let cap = Instant::now() + HOUSEKEEPING_MAX_SLEEP;
        sweep.next_deadline.map_or(cap, |d| d.min(cap))
    }

    /// `Builder::connect`'s single attempt: one connect into the idle set,
    /// or the driver's own error (taken, not copied: nobody else has seen it).
    pub(crate) async fn open_first(
        self: &Arc<Self>,
        started: Instant,
    ) -> Result<(), Error<M::Error>> {
        let Some(permit) = self.permits.try_acquire().ok() else {
            // Only if a caller got in first: it will report any failure itself.
            return Ok(());
        };
        permit.forget();
        let permit = Permit::new(self);
        match self.open_one(Activity::Opening).await {
            Ok(conn) => {
                permit.hand_over(); // make_idle gives the permit back
                self.make_idle(conn);
                Ok(())
            }
            Err(OpenError::Closed) => Err(Error::Closed),
            Err(OpenError::Failed | OpenError::NotYet | OpenError::Declined) => {
                match self.last_connect_failure.lock().take() {
                    Some(ConnectFailure::Error(e)) => match Arc::try_unwrap(e) {
                        Ok(e) => Err(Error::Connect(e)),
                        Err(e) => Err(Error::Timeout {
                            phase: TimeoutPhase::Connecting,
                            waited: started.elapsed(),
                            last_error: Some(e),
                            last_connect_timeout: None,
                        }),
                    },
                    other => Err(Error::Timeout {
                        phase: TimeoutPhase::Connecting,
                        waited: started.elapsed(),
                        last_error: None,
                        last_connect_timeout: match other {
                            Some(ConnectFailure::TimedOut(d)) => Some(d),
                            _ => None,
                        },
                    }),
                }
            }
        }
    }

    /// Opens a connection straight into the idle set (the caller took a permit).
    /// A replacement inherits its predecessor's `last_borrowed`, so
    /// `idle_timeout` still shrinks a pool nobody uses.
    async fn open_idle(self: &Arc<Self>, last_borrowed: Option<Instant>) {
        match self.open_one(Activity::Opening).await {
            Ok(mut conn) => {
                if let Some(t) = last_borrowed {
                    conn.meta.last_borrowed = t;
                }
                self.make_idle(conn);
            }
            Err(_) => self.release_permit(),
        }
    }

    fn try_take_permit(&self) -> bool {
        match self.permits.try_acquire() {
            Ok(p) => {
                p.forget();
                true
            }
            Err(_) => false,
        }
    }
}

/// `max_lifetime` minus a random 0–2.5 %, so connections opened together do
/// not expire together (HikariCP's figure).
fn jitter(lifetime: Duration) -> Duration {
    lifetime.mul_f64(1.0 - rand::random::<f64>() * 0.025)
}

/// Why the last connect attempt failed.
enum ConnectFailure<E> {
    Error(Arc<E>),
    TimedOut(Duration),
}

/// Why [`Shared::open_one`] gave no connection. The error itself is kept in
/// `last_connect_failure`, shared by every waiter.
#[derive(Debug)]
pub(crate) enum OpenError {
    Closed,
    Failed,
    /// Not attempted: the pool is backing off after failures.
    NotYet,
    /// The manager declined to connect (`Manager::connect_declined`).
    Declined,
}

/// Pool-wide pacing of connect attempts. While connects fail, attempts are
/// spaced by a pause that doubles per consecutive failure (10 ms up to
/// 500 ms), each drawn at random from the upper half of its range so pools
/// restarted together do not retry in lockstep. Shared, not per caller: a
/// server that is down sees about two attempts a second from the whole pool
/// however many callers wait, and a recovered one is found within 500 ms.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    /// No attempt starts before this; `None` while connects succeed.
    retry_at: Option<Instant>,
}

impl Backoff {
    fn pause(&self) -> Duration {
        let doubled = BACKOFF_START.saturating_mul(1 << self.failures.min(16).saturating_sub(1));
        doubled
            .min(BACKOFF_MAX)
            .mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }

    /// May an attempt start now? While failing, one that may also books the
    /// next turn, so attempts stay spaced even before this one ends.
    fn take_turn(&mut self, now: Instant) -> bool {
        if self.failures == 0 {
            return true;
        }
        match self.retry_at {
            Some(at) if at > now => false,
            _ => {
                self.retry_at = Some(now + self.pause());
                true
            }
        }
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let next = now + self.pause();
        self.retry_at = Some(self.retry_at.map_or(next, |at| at.max(next)));
    }

    /// Whether this success ended a run of failures.
    fn succeeded(&mut self) -> bool {
        let was_failing = self.failures > 0;
        *self = Backoff::default();
        was_failing
    }
}

/// A capacity permit owned by a checkout in progress. Given back on drop
/// (the checkout failed or was cancelled) unless it becomes a [`Pooled`].
pub(crate) struct Permit<M: Manager>(Option<Arc<Shared<M>>>);

impl<M: Manager> Permit<M> {
    /// Takes ownership of a permit already acquired (and `forget`-ed).
    fn new(shared: &Arc<Shared<M>>) -> Self {
        Permit(Some(Arc::clone(shared)))
    }

    /// Someone else now gives the permit back (the idle set's `make_idle`).
    fn hand_over(mut self) {
        self.0 = None;
    }

    /// The permit moves to the connection being lent.
    fn lend(mut self, conn: Conn<M::Connection>, now: Instant) -> Pooled<M> {
        let shared = self.0.take().expect("a Permit is lent once");
        Pooled::new(shared, conn, now)
    }
}

impl<M: Manager> Drop for Permit<M> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.release_permit();
        }
    }
}

/// What a look at the idle set gives a checkout.
enum Checkout<M: Manager> {
    Lent(Pooled<M>),
    /// Nothing usable was idle; the permit comes back to connect with.
    Empty(Permit<M>),
}

/// What a detached validation hands back to its caller.
enum Validated<M: Manager> {
    Lent(Pooled<M>),
    /// The ping failed and the connection was retired; try the next one.
    Failed(Permit<M>),
    /// The task was dropped unfinished: the runtime is shutting down.
    Gone,
}

/// What a detached connect hands back to its caller.
enum Connected<M: Manager> {
    Lent(Pooled<M>),
    Failed(Permit<M>),
    NotYet(Permit<M>),
    Declined(Permit<M>),
    Closed,
}

/// Counts a caller waiting for a permit, for `State::pending`.
struct Pending<'a>(&'a Stats);

impl<'a> Pending<'a> {
    /// Joins the waiters, unless `limit` are already waiting. Compare and
    /// swap, so concurrent callers can never exceed the limit together.
    fn enter(stats: &'a Stats, limit: Option<usize>) -> Option<Self> {
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
struct Connecting<'a, M: Manager>(&'a Shared<M>);

impl<'a, M: Manager> Connecting<'a, M> {
    fn new(shared: &'a Shared<M>) -> Self {
        shared.slots.lock().start_connect();
        Connecting(shared)
    }

    /// The connect succeeded: the connection counts active, in one step
    /// under the lock, so no snapshot sees it in neither state.
    fn opened(self, meta: &mut Meta, activity: Activity) {
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

/// An active connection in the middle of pool-owned I/O during a checkout.
/// Dropped before `take` (its task was dropped unfinished) it retires the
/// connection: its protocol state is unknown.
struct InFlight<M: Manager> {
    shared: Arc<Shared<M>>,
    conn: Option<Conn<M::Connection>>,
}

impl<M: Manager> InFlight<M> {
    fn new(shared: &Arc<Shared<M>>, conn: Conn<M::Connection>) -> Self {
        InFlight {
            shared: Arc::clone(shared),
            conn: Some(conn),
        }
    }

    fn conn(&mut self) -> &mut Conn<M::Connection> {
        self.conn
            .as_mut()
            .expect("InFlight holds its connection until take")
    }

    fn take(&mut self) -> Conn<M::Connection> {
        self.conn.take().expect("InFlight::take is called once")
    }
}

impl<M: Manager> Drop for InFlight<M> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.shared.retire_active(conn, Reason::Closed);
        }
    }
}

/// A returned connection being cleaned in its own task. Owns the permit:
/// however the task ends (done, failed, or dropped with the runtime), the
/// connection ends up idle or retired and the permit comes back.
struct Returning<M: Manager> {
    shared: Arc<Shared<M>>,
    conn: Option<Conn<M::Connection>>,
}

impl<M: Manager> Returning<M> {
    fn new(shared: &Arc<Shared<M>>, conn: Conn<M::Connection>) -> Self {
        shared
            .slots
            .lock()
            .set_activity(&conn.meta, Activity::Returning);
        Returning {
            shared: Arc::clone(shared),
            conn: Some(conn),
        }
    }

    async fn reset(mut self, full: bool) {
        let conn = self.conn.as_mut().expect("Returning holds its connection");
        let shared = &self.shared;
        let result = timeout(
            shared.config.validation_timeout,
            shared.manager.reset(&mut conn.raw, full),
        )
        .await;
        let conn = self.conn.take().expect("Returning holds its connection");
        match result {
            Ok(Ok(())) => {
                let mut conn = conn;
                conn.meta.last_io = Instant::now();
                self.shared.make_idle(conn);
            }
            Ok(Err(error)) => {
                tracing::warn!(target: TARGET, conn_id = conn.meta.id, %error, "reset on return failed");
                self.shared.suspect();
                self.shared.retire_active(conn, Reason::ResetFailed);
                self.shared.release_permit();
            }
            Err(_) => {
                tracing::warn!(target: TARGET, conn_id = conn.meta.id, "reset on return timed out");
                self.shared.suspect();
                self.shared.retire_active(conn, Reason::ResetFailed);
                self.shared.release_permit();
            }
        }
    }
}

impl<M: Manager> Drop for Returning<M> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // The task was dropped unfinished (runtime shutting down): the
            // connection may be mid-reset, so it is closed, never reused.
            self.shared.slots.lock().forget_active(&conn.meta);
            self.shared.note_retired(&conn.meta, Reason::ResetFailed);
            drop(conn);
            self.shared.release_permit();
        }
    }
}
