//! The pool's shared state and its way out: checkout (the fast path, the
//! wait for a slot, validation) and connect. The way back (check-in,
//! cleaning, retirement) is in `returns.rs`, the housekeeper in
//! `housekeeping.rs`, the RAII owners in `owners.rs`.
//!
//! Time: every instant is tokio's clock (`tokio::time::Instant`), so paused
//! time in tests (the pool's own and its users') moves the pool's liveness
//! rules too. A checkout reads it once (the fast path's decision, the
//! guard's `lent_at`, the slow path's deadline all use that reading; the
//! slow path reads again only after it waited), a return once (the usage
//! histogram needs the precise figure, and `last_io` takes the same
//! reading). A coarse clock (`CLOCK_MONOTONIC_COARSE`, ≈ 11 ns instead of
//! ≈ 30 here, 4 ms resolution) would be fine for the liveness rules, which
//! work at 100 ms to seconds, but it cannot follow tokio's paused clock and
//! would leave the return's histogram without a precise reading anyway, so
//! it would save one read's difference at the price of deterministic tests.
//!
//! Capacity is `max_size` units, counted with the idle set under its lock
//! (`line.rs`). A unit is held by every connection that is lent out or
//! held by the pool for I/O, and by every connect in flight; idle
//! connections hold none. Callers that find none free wait in line, first
//! come first served; a connection coming back while someone waits goes
//! straight to the first in line, with its unit, so the woken caller has
//! nothing left to take. Each unit taken is owned by a [`Permit`] value,
//! which travels with the work: through a checkout, inside the [`Pooled`]
//! guard while lent, inside a `Returning` task while a returned connection
//! is cleaned, and goes back when that value is dropped.

use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};
use tokio::time::timeout;
use tracing::Instrument;

use super::backoff::{Backoff, BACKOFF_START};
use super::conn::{Conn, Meta};
use super::deadlines::{Watchdog, Watched};
use super::evidence::Evidence;
use super::guard::Pooled;
use super::hooks::{ConnectionMetadata, Hooks};
use super::line::{self, Served};
use super::owners::{BackingOff, Connecting, Io, Pending, Permit};
use super::slots::{Activity, Slots};
use super::TARGET;
use crate::config::Config;
use crate::error::TimeoutPhase;
use crate::liveness::{at_checkout, Checkout, Policy, Reason};
use crate::manager::{ErrorClass, Manager, ServerTimeouts};
use crate::stats::Stats;

pub(crate) struct Shared<M: Manager> {
    pub(crate) manager: M,
    pub(crate) config: Config,
    pub(crate) policy: Policy,
    /// The idle set, capacity and the line (see the module docs), on a
    /// cache line of its own: every checkout and return writes it, and the
    /// settings and counters beside it are read by every thread.
    pub(crate) slots: CachePadded<Mutex<Slots<M::Connection>>>,
    /// Bounds connects in flight (`max_concurrent_connects`).
    connects: Semaphore,
    pub(crate) stats: Stats,
    /// Why the most recent connect attempt failed; cleared by a success.
    pub(super) last_connect_failure: Mutex<Option<ConnectFailure<M::Error>>>,
    /// Pool-wide pacing of connect attempts after failures.
    backoff: Mutex<Backoff>,
    /// Wakes callers waiting out the backoff: a connect succeeded, a
    /// connection was filed idle while they waited, or the pool was closed.
    pub(crate) backoff_over: Notify,
    pub(super) runtime: Handle,
    next_id: AtomicU64,
    /// When the pool last saw a sign of trouble (a failed ping, reset or
    /// connect, a broken return), in ns since `epoch`; 0 = never.
    suspect_since: AtomicU64,
    epoch: Instant,
    /// Bumped by `retire_all`; connections from older generations are never lent.
    generation: AtomicU64,
    /// Wakes the watchdog that keeps `acquire_timeout` for callers in
    /// line (`deadlines.rs`), spawned with the housekeeper.
    pub(crate) watchdog: Watchdog,
    /// Wakes the housekeeper (on close) and `close()` (when a connection leaves).
    pub(crate) changed: Notify,
    /// Goodbyes (`Manager::close`) running in their own tasks; `close()`
    /// waits for them, so a process that exits after it leaves no session
    /// to be cut off mid-goodbye.
    pub(super) goodbyes: AtomicU64,
    /// When the housekeeper next asks a connection about its role.
    pub(super) role_check_due: Mutex<Instant>,
    /// `Capabilities::checks_role`, asked once.
    pub(super) requires_role: bool,
    /// A role check fell due while nothing was idle to ask: the next
    /// connection that comes back is asked before it is filed idle, so a
    /// saturated pool checks as often as an idle one.
    pub(super) role_check_wanted: AtomicBool,
    /// Returned connections are pinged: `verify_on_return`, resolved
    /// against what the manager's `Session::broken` can see.
    pub(super) verify_returns: bool,
    /// What the pool learned from its round trips: the idle cutoff, the
    /// hedge's yardstick (`evidence.rs`).
    pub(super) evidence: Evidence,
    /// The user's lifecycle hooks (`hooks.rs`); usually none.
    pub(super) hooks: Hooks<M::Connection, M::Error>,
}

impl<M: Manager> Shared<M> {
    pub(crate) fn new(
        manager: M,
        config: Config,
        hooks: Hooks<M::Connection, M::Error>,
        runtime: Handle,
    ) -> Self {
        let can = manager.capabilities();
        let verify_returns = config.verify_on_return.pings(can.detection);
        let requires_role = can.checks_role;
        Shared {
            verify_returns,
            manager,
            policy: Policy::from(&config),
            slots: CachePadded::new(Mutex::new(Slots::new(config.max_size))),
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
            watchdog: Watchdog::default(),
            changed: Notify::new(),
            goodbyes: AtomicU64::new(0),
            role_check_due: Mutex::new(Instant::now() + config.role_check_interval),
            requires_role,
            role_check_wanted: AtomicBool::new(false),
            evidence: Evidence::default(),
            hooks,
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

    /// When the pool last saw a sign of trouble (see [`Shared::suspect`]).
    fn suspect_since(&self) -> Option<Instant> {
        match self.suspect_since.load(Relaxed) {
            0 => None,
            ns => Some(self.epoch + Duration::from_nanos(ns)),
        }
    }

    /// What a checkout does with this idle connection at `now`: the
    /// policy's [`at_checkout`], asked in its precomputed form first (one
    /// comparison against `Meta::lend_before`), in full only when that does
    /// not say "lend".
    fn decide(&self, conn: &mut Conn<M::Connection>, now: Instant) -> Checkout {
        let broken = self.manager.session(&mut conn.raw).broken;
        let stale = conn.meta.generation < self.generation();
        let suspect = self.suspect_since();
        let meta = &conn.meta;
        if !broken
            && !stale
            && meta.lend_before.is_none_or(|b| now < b)
            && suspect.is_none_or(|s| meta.last_io >= s)
        {
            return Checkout::Lend;
        }
        at_checkout(
            &meta.facts(broken, false, self.generation()),
            &self.policy,
            suspect,
            now,
        )
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
        self.new_generation(Reason::Closed);
    }

    /// [`retire_all`](Self::retire_all), counting the idle connections it
    /// closes for `reason`.
    fn new_generation(self: &Arc<Self>, reason: Reason) {
        self.generation.fetch_add(1, Relaxed);
        let idle = self.slots.lock().drain_idle();
        for conn in idle {
            self.retire(conn, reason);
        }
        // The housekeeper refills `min_idle` with new-generation connections.
        self.changed.notify_waiters();
    }

    /// The server no longer has the role the manager requires (seen by
    /// the role check or in an error `why` names): every connection goes,
    /// and new ones go where the role now is (the manager's connect checks
    /// it on each new session).
    pub(crate) fn role_changed(self: &Arc<Self>, why: &str) {
        // warn: the database moved under the pool; the operator wants to know.
        tracing::warn!(target: TARGET, why, "the server's role changed; retiring every connection");
        self.suspect();
        self.new_generation(Reason::RoleChanged);
    }

    /// A capacity permit if one is free now (never while anyone waits).
    pub(crate) fn try_permit(self: &Arc<Self>) -> Option<Permit<M>> {
        let took = self.slots.lock().try_take();
        took.map(|unit| Permit::new(self, unit))
    }

    // ---------------------------------------------------------------- checkout

    /// The fast path of `get()`: a free slot and a warm idle connection that
    /// needs neither retirement nor a ping. Synchronous: no timer, no await,
    /// one lock. `Err` sends the caller down the slow path with the slot it
    /// took, if there was one free (no warm connection: a ping or a connect
    /// is due), so the slow path does not give it back to take it again.
    pub(crate) fn try_checkout_now(
        self: &Arc<Self>,
        now: Instant,
        site: &'static Location<'static>,
    ) -> Result<Pooled<M>, Option<Permit<M>>> {
        let (unit, popped) = {
            let mut slots = self.slots.lock();
            let Some(unit) = slots.try_take() else {
                return Err(None);
            };
            let lendable =
                |conn: &mut Conn<M::Connection>| self.decide(conn, now) == Checkout::Lend;
            (unit, slots.pop_if(now, site, lendable))
        };
        // Made after the lock is let go: a permit dropped under it would
        // deadlock (giving it back takes the lock).
        let permit = Permit::new(self, unit);
        match popped {
            Some(conn) => Ok(permit.lend(conn, now)),
            None => Err(Some(permit)),
        }
    }

    /// What a caller woken in line can lend without I/O: the connection
    /// handed over with its capacity, if it needs neither retirement nor a
    /// ping, or else (capacity alone came) the most recently used idle
    /// connection, if it needs neither. `Err` gives back a handed-over
    /// connection that does, as the checkout loop's first candidate.
    #[inline]
    pub(super) fn warm(
        &self,
        handed: Option<Conn<M::Connection>>,
        now: Instant,
        site: &'static Location<'static>,
    ) -> Result<Conn<M::Connection>, Option<Conn<M::Connection>>> {
        if let Some(mut conn) = handed {
            return match self.decide(&mut conn, now) {
                Checkout::Lend => Ok(conn),
                _ => Err(Some(conn)),
            };
        }
        let mut slots = self.slots.lock();
        if slots.is_closed() {
            return Err(None);
        }
        let popped = slots.pop_if(now, site, |conn| self.decide(conn, now) == Checkout::Lend);
        popped.ok_or(None)
    }

    /// The slow path of `Pool::get`, until `deadline`, with the slot the
    /// fast path took if it took one; `phase` says what it was doing when
    /// it stopped with [`Stop::TimedOut`].
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        held: Option<Permit<M>>,
        phase: &mut TimeoutPhase,
        site: &'static Location<'static>,
        deadline: Instant,
    ) -> Result<Pooled<M>, Stop> {
        if tracing::span_enabled!(target: TARGET, tracing::Level::INFO) {
            // Boxed and made out of line, like every rarer path here: the
            // span and the traced future stay out of every `get()`'s state
            // and code (measured: +24 instructions per uncontended get +
            // drop when they were inline).
            return self.traced(held, phase, site, deadline).await;
        }
        self.acquire_in(held, phase, site, deadline).await
    }

    /// [`acquire`](Self::acquire) in a `vigil.acquire` span: the pool's
    /// name, whether the caller waited in line, how far it went, and how it
    /// ended. info, not debug: a span is no log line (fmt subscribers print
    /// none by default), and a service's usual `info` filter must let it
    /// through to tracing-opentelemetry.
    #[cold]
    #[inline(never)]
    fn traced<'a>(
        self: &'a Arc<Self>,
        held: Option<Permit<M>>,
        phase: &'a mut TimeoutPhase,
        site: &'static Location<'static>,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<Pooled<M>, Stop>> + Send + 'a>> {
        let span = tracing::info_span!(
            target: TARGET,
            "vigil.acquire",
            pool = %self.config.name,
            in_line = held.is_none(),
            last_step = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        Box::pin(async move {
            let result = self
                .acquire_in(held, phase, site, deadline)
                .instrument(span.clone())
                .await;
            span.record("last_step", super::step(*phase));
            span.record("outcome", super::outcome(&result));
            result
        })
    }

    /// The slow path itself, untraced.
    async fn acquire_in(
        self: &Arc<Self>,
        held: Option<Permit<M>>,
        phase: &mut TimeoutPhase,
        site: &'static Location<'static>,
        deadline: Instant,
    ) -> Result<Pooled<M>, Stop> {
        // From here the permit is a value: it goes back on every path that
        // drops it, cancellation included (the timeout drops the future
        // that owns it), or moves into the `Pooled` that is lent.
        let (permit, first) = match held {
            // The fast path found no warm connection a moment ago: go
            // straight to the ping or the connect.
            Some(permit) => (permit, None),
            None => {
                let (permit, handed) = self.wait_in_line(deadline, site).await?;
                // What a woken waiter usually holds: the connection just
                // returned, straight from its last borrower, lent here
                // without the boxed loop below.
                let now = Instant::now();
                match self.warm(handed, now, site) {
                    Ok(conn) => {
                        Stats::bump(&self.stats.validations_skipped);
                        return Ok(permit.lend(conn, now));
                    }
                    Err(first) => (permit, first),
                }
            }
        };
        // Otherwise a tokio timer, registered only if this phase waits (a
        // ping, a connect, a backoff). Boxed: this rarer path's state (the
        // timer, a detached ping's or connect's channel, the backoff) is most
        // of the checkout's future, which every `get()` would otherwise move
        // around at its full size (a kilobyte) before its first poll.
        Box::pin(tokio::time::timeout_at(
            deadline,
            self.lend_on(permit, first, phase, site),
        ))
        .await
        .unwrap_or(Err(Stop::TimedOut))
    }

    /// With a slot in hand: `first` (a connection handed over), an idle
    /// connection that passes, or a new one.
    async fn lend_on(
        self: &Arc<Self>,
        mut permit: Permit<M>,
        mut first: Option<Conn<M::Connection>>,
        phase: &mut TimeoutPhase,
        site: &'static Location<'static>,
    ) -> Result<Pooled<M>, Stop> {
        loop {
            permit = match self
                .checkout_idle(permit, first.take(), phase, site)
                .await?
            {
                FromIdle::Lent(pooled) => return Ok(pooled),
                FromIdle::Empty(permit) => permit,
            };
            *phase = TimeoutPhase::Connecting;
            permit = match self.connect_detached(permit, site).await {
                Connected::Lent(pooled) => return Ok(pooled),
                Connected::Closed => return Err(Stop::Closed),
                Connected::Retry(permit, retry) => {
                    match retry {
                        // The pool is backing off: wait for the next attempt's
                        // turn (or another caller's success).
                        Retry::AfterBackoff => self.backoff_wait().await,
                        // Not the server's doing, so no backoff; a short pause
                        // keeps a manager that declines again from spinning us.
                        Retry::AfterPause => tokio::time::sleep(BACKOFF_START).await,
                    }
                    // Then the idle set again: a connection may have come back.
                    permit
                }
            };
        }
    }

    /// Sleeps until the pool may try to connect again, a connect succeeds,
    /// or a connection is filed idle (the caller holds capacity, and no
    /// waiter in line would be handed that connection while it sleeps).
    /// Cancel safe: what it counts, its drop uncounts.
    async fn backoff_wait(&self) {
        // Registered before looking, so a wake-up in between is not missed.
        let over = self.backoff_over.notified();
        // `close()` may have run before `over` existed: its wake-up is lost,
        // but the closed flag it set tells.
        let Some(_counted) = BackingOff::enter(self) else {
            return;
        };
        let Some(at) = self.backoff.lock().retry_at() else {
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
    pub(super) async fn connect_detached(
        self: &Arc<Self>,
        permit: Permit<M>,
        site: &'static Location<'static>,
    ) -> Connected<M> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            let outcome = match shared.open_one(Activity::Lent(site)).await {
                Ok(conn) => Connected::Lent(permit.lend(conn, Instant::now())),
                Err(OpenError::Failed | OpenError::NotYet) => {
                    Connected::Retry(permit, Retry::AfterBackoff)
                }
                Err(OpenError::Declined) => Connected::Retry(permit, Retry::AfterPause),
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

    /// Capacity, waiting in line until `deadline`, and the connection that
    /// came with it if it was handed over by its last borrower. The fast
    /// path has just found none free, so this goes straight into the line
    /// (capacity freed in between is still taken at the first poll).
    async fn wait_in_line(
        self: &Arc<Self>,
        deadline: Instant,
        site: &'static Location<'static>,
    ) -> Result<(Permit<M>, Option<Conn<M::Connection>>), Stop> {
        let Some(_pending) = Pending::enter(&self.stats, self.config.max_waiters) else {
            Stats::bump(&self.stats.rejected);
            return Err(Stop::Busy);
        };
        // The deadline is kept by the pool's watchdog, not a timer of our
        // own (see `deadlines.rs`).
        let served = InLine {
            shared: self,
            id: None,
            deadline,
            site,
        }
        .await;
        match served {
            // From the grant to the permit with no await between: nothing
            // can drop the capacity on the floor.
            Served::Granted(unit, conn) => Ok((Permit::new(self, unit), conn)),
            Served::Expired => Err(Stop::TimedOut),
            Served::Closed => Err(Stop::Closed),
        }
    }

    /// Takes candidates, `first` and then idle connections, until one
    /// passes the policy (and, when due, a validation round trip) and lends
    /// it on `permit`; hands the permit back when the idle set is empty.
    /// The one place where a checkout acts on [`Shared::decide`]'s whole
    /// answer.
    async fn checkout_idle(
        self: &Arc<Self>,
        mut permit: Permit<M>,
        mut first: Option<Conn<M::Connection>>,
        phase: &mut TimeoutPhase,
        site: &'static Location<'static>,
    ) -> Result<FromIdle<M>, Stop> {
        loop {
            // One clock read per look: a ping below takes time, so the next
            // connection is judged at a new `now`.
            let now = Instant::now();
            let popped = match first.take() {
                Some(conn) => Some(conn),
                None => {
                    let mut slots = self.slots.lock();
                    if slots.is_closed() {
                        return Err(Stop::Closed);
                    }
                    slots.pop(now, site)
                }
            };
            let Some(mut conn) = popped else {
                return Ok(FromIdle::Empty(permit));
            };
            match self.decide(&mut conn, now) {
                Checkout::Lend => {
                    Stats::bump(&self.stats.validations_skipped);
                    return Ok(FromIdle::Lent(permit.lend(conn, now)));
                }
                Checkout::Retire(reason) => {
                    if reason == Reason::Broken {
                        let idle = now.saturating_duration_since(conn.meta.last_io);
                        self.evidence
                            .idle_died(&self.config, idle, conn.meta.server_idle);
                    }
                    self.retire_active(conn, reason);
                }
                Checkout::Ping => {
                    *phase = TimeoutPhase::Validating;
                    permit = match self.validate_hedged(conn, permit, site).await {
                        Validated::Lent(pooled) => return Ok(FromIdle::Lent(pooled)),
                        Validated::Failed(permit) | Validated::Silent(permit) => permit,
                        Validated::Gone => return Err(Stop::Closed),
                    };
                }
            }
        }
    }

    /// Pings a connection in a task of its own, which owns the connection
    /// and the permit. A caller that gives up mid-ping (cancelled, or out of
    /// time) does not cost the pool the connection: a ping cut short leaves
    /// the session mid-protocol, so it would have to be closed, while the
    /// task lets the ping finish and puts a live connection back idle. Under
    /// tight client timeouts this is the difference between reusing
    /// connections and reconnecting on every cancelled checkout. A ping
    /// still silent at the hedge delay hands the permit back at once
    /// ([`Validated::Silent`]) and goes on without it (see [`Io`]).
    pub(super) async fn validate_detached(
        self: &Arc<Self>,
        conn: Conn<M::Connection>,
        permit: Permit<M>,
    ) -> Validated<M> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(self);
        // If the runtime drops the task unrun, `Io` retires the connection
        // and the permit goes back.
        let mut io = Io::new(conn, permit);
        self.runtime.spawn(async move {
            let mut tx = Some(tx);
            let ok = shared
                .ping(&mut io, |permit| {
                    // Presumed dead: the caller goes on with the unit.
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Validated::Silent(permit));
                    }
                })
                .await;
            let outcome = if ok {
                Stats::bump(&shared.stats.validations_ok);
                let Some((conn, permit)) = io.keep() else {
                    return; // presumed dead, and its place is taken
                };
                match tx {
                    Some(_) => Validated::Lent(permit.lend(conn, Instant::now())),
                    // It answered after the caller went on without it.
                    None => return Shared::make_idle(conn, permit),
                }
            } else {
                match io.retire(Reason::ValidationFailed) {
                    Some(permit) => Validated::Failed(permit),
                    None => return,
                }
            };
            if let Some(tx) = tx {
                if let Err(Validated::Lent(pooled)) = tx.send(outcome) {
                    // The caller is gone; the connection just proved alive.
                    Pooled::put_back_unused(pooled);
                }
            }
        });
        rx.await.unwrap_or(Validated::Gone)
    }

    /// One validation round trip, bounded by `validation_timeout`.
    /// What it finds is evidence about the path (`evidence.rs`): how long
    /// the connection had been silent, and whether it survived that.
    ///
    /// A ping still silent at the hedge delay is reported dead then, not
    /// after `validation_timeout`: a black hole teaches the idle cutoff
    /// within the idle period it ends, and should the ping answer after
    /// all, its survival takes the report back. At that moment the
    /// connection is presumed dead ([`Hold::silence`](super::owners::Hold::silence)) and its permit goes
    /// to `on_silent`: a black-holed ping no longer holds a unit of
    /// `max_size` for the whole `validation_timeout`.
    pub(super) async fn ping(&self, io: &mut Io<M>, on_silent: impl FnOnce(Permit<M>)) -> bool {
        let (conn, hold) = io.parts();
        let started = Instant::now();
        let idle = started.saturating_duration_since(conn.meta.last_io);
        let limit = self.config.validation_timeout;
        let hedge = self.evidence.hedge_delay(&self.config);
        let early = hedge.unwrap_or(limit);
        let check = self.manager.is_valid(&mut conn.raw);
        tokio::pin!(check);
        let mut reported = false;
        let result = match timeout(early, &mut check).await {
            Ok(answer) => Ok(answer),
            Err(elapsed) if hedge.is_none() => Err(elapsed),
            Err(_) => {
                reported = true;
                self.evidence
                    .idle_died(&self.config, idle, conn.meta.server_idle);
                if let Some(permit) = hold.silence(self, &conn.meta) {
                    Stats::bump(&self.stats.validations_hedged);
                    on_silent(permit);
                }
                let rest = timeout(limit.saturating_sub(early), check);
                tokio::select! {
                    answer = rest => answer,
                    () = hold.evicted() => {
                        // debug: a newer silent connection took its place
                        // among the presumed dead, or the pool closed.
                        tracing::debug!(target: TARGET, conn_id = conn.meta.id, "presumed-dead connection evicted; closing it");
                        return false;
                    }
                }
            }
        };
        if !reported && !matches!(result, Ok(Ok(()))) {
            self.evidence
                .idle_died(&self.config, idle, conn.meta.server_idle);
        }
        match result {
            Ok(Ok(())) => {
                let now = Instant::now();
                conn.meta.last_io = now;
                self.evidence
                    .idle_survived(&self.config, idle, now - started);
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
        // Read before the connect: a session whose connect began before a
        // `retire_all` (say, with credentials rotated since) belongs to the
        // old generation, however late it finishes.
        let generation = self.generation();
        let started = Instant::now();
        let result = timeout(self.config.connect_timeout, async {
            let mut raw = self.manager.connect().await.map_err(|e| (e, None))?;
            let id = self.next_id.fetch_add(1, Relaxed);
            // Before the server's timeouts are read: a hook may change them.
            if let Some(hook) = &self.hooks.after_connect {
                let meta = ConnectionMetadata::new(id, started.elapsed());
                hook(&mut raw, meta)
                    .await
                    .map_err(|e| (e, Some(AFTER_CONNECT)))?;
            }
            let server = match self.config.server_idle_timeout_override {
                Some(idle) => ServerTimeouts { idle },
                None => self
                    .manager
                    .server_timeouts(&mut raw)
                    .await
                    .map_err(|e| (e, None))?,
            };
            Ok::<_, (M::Error, Option<&'static str>)>((raw, server, id))
        })
        .await;
        let (raw, server, id) = match result {
            Ok(Ok(pair)) => pair,
            Ok(Err((error, None))) if self.manager.classify(&error) == ErrorClass::Declined => {
                // debug: nothing went wrong; the manager chose not to connect.
                tracing::debug!(target: TARGET, %error, "connect declined by the manager");
                self.backoff.lock().declined();
                return Err(OpenError::Declined);
            }
            Ok(Err((error, hook))) => {
                Stats::bump(&self.stats.connect_errors);
                self.suspect();
                match hook {
                    Some(hook) => {
                        tracing::warn!(target: TARGET, %error, hook, "connect failed in a hook")
                    }
                    None => tracing::warn!(target: TARGET, %error, "connect failed"),
                }
                *self.last_connect_failure.lock() =
                    Some(ConnectFailure::Error(Arc::new(error), hook));
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
        self.evidence.connected_in(now - started);
        let mut meta = Meta {
            id,
            created: now,
            expires: self
                .config
                .max_lifetime
                .and_then(|l| now.checked_add(jitter(l))),
            last_io: now,
            last_borrowed: now,
            server_idle: server.idle,
            lend_allowance: self.policy.lend_allowance(server.idle),
            uses: 0,
            slot: usize::MAX,
            generation,
            lend_before: None,
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
        Ok(Conn::new(raw, meta))
    }

    /// `(last connect error, the hook it came from, last connect
    /// timeout)`: the error or the timeout, never both.
    pub(crate) fn last_connect_failure(&self) -> LastFailure<M::Error> {
        match &*self.last_connect_failure.lock() {
            Some(ConnectFailure::Error(e, hook)) => (Some(Arc::clone(e)), *hook, None),
            Some(ConnectFailure::TimedOut(d)) => (None, None, Some(*d)),
            None => (None, None, None),
        }
    }
}

/// `max_lifetime` minus a random 0–2.5 %, so connections opened together do
/// not expire together (HikariCP's figure).
fn jitter(lifetime: Duration) -> Duration {
    lifetime.mul_f64(1.0 - rand::random::<f64>() * 0.025)
}

/// `(last connect error, the hook it came from, last connect timeout)`.
pub(crate) type LastFailure<E> = (Option<Arc<E>>, Option<&'static str>, Option<Duration>);

/// The hook's name in errors and logs.
pub(super) const AFTER_CONNECT: &str = "after_connect";

/// Why the last connect attempt failed.
pub(super) enum ConnectFailure<E> {
    /// The driver's error, or a hook's (named).
    Error(Arc<E>, Option<&'static str>),
    TimedOut(Duration),
}

impl<M: Manager> Watched for Shared<M> {
    fn watchdog(&self) -> &Watchdog {
        &self.watchdog
    }

    fn expire_due(&self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        let next = self.slots.lock().expire_due(now, &mut due);
        // Woken outside the lock: a waker may run code of its own.
        for waker in due {
            waker.wake();
        }
        next
    }
}

/// Why [`Shared::open_one`] gave no connection. The error itself is kept in
/// `last_connect_failure`, shared by every waiter.
#[derive(Debug)]
pub(crate) enum OpenError {
    Closed,
    Failed,
    /// Not attempted: the pool is backing off after failures.
    NotYet,
    /// The manager declined to connect ([`ErrorClass::Declined`]).
    Declined,
}

/// What a look at the idle set gives a checkout.
enum FromIdle<M: Manager> {
    Lent(Pooled<M>),
    /// Nothing usable was idle; the permit comes back to connect with.
    Empty(Permit<M>),
}

/// What a detached validation hands back to its caller.
pub(super) enum Validated<M: Manager> {
    Lent(Pooled<M>),
    /// The ping is silent past the hedge delay: the connection is presumed
    /// dead and its permit comes back to be served another way.
    Silent(Permit<M>),
    /// The ping failed and the connection was retired; try the next one.
    Failed(Permit<M>),
    /// The task was dropped unfinished: the runtime is shutting down.
    Gone,
}

/// What a detached connect hands back to its caller.
pub(super) enum Connected<M: Manager> {
    Lent(Pooled<M>),
    /// No connection; the permit comes back to try again with.
    Retry(Permit<M>, Retry),
    Closed,
}

/// When a checkout whose connect failed tries again.
pub(super) enum Retry {
    /// When the pool's backoff allows the next attempt (the connect failed,
    /// or was not attempted because the pool is backing off).
    AfterBackoff,
    /// After a short pause: the manager declined ([`ErrorClass::Declined`]).
    AfterPause,
}

/// Why the slow path of a checkout stopped without a connection: the one
/// way it says so, turned into the caller's [`Error`] by `Pool::get`, which
/// knows the phase and the time waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The pool is closed.
    Closed,
    /// `max_waiters` callers are already waiting.
    Busy,
    /// The deadline passed.
    TimedOut,
}

/// A caller's place in line, from its first poll until it is served. Drop
/// safe: dropped in line it leaves; dropped after a grant it never took,
/// it hands the capacity (and the connection with it) on as if they came
/// back now.
struct InLine<'a, M: Manager> {
    shared: &'a Arc<Shared<M>>,
    /// The place in line once joined; `None` before, and after being served.
    id: Option<u64>,
    deadline: Instant,
    site: &'static Location<'static>,
}

impl<M: Manager> Future for InLine<'_, M> {
    type Output = Served<M::Connection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = this
            .shared
            .slots
            .lock()
            .poll_line(this.id, this.deadline, this.site, cx);
        match polled {
            line::Poll::Served(served) => {
                // Out of line, with what it was served: nothing to hand on.
                this.id = None;
                Poll::Ready(served)
            }
            line::Poll::Joined { id, wake_watchdog } => {
                this.id = Some(id);
                if wake_watchdog {
                    this.shared.watchdog.wake();
                }
                Poll::Pending
            }
            line::Poll::Pending => Poll::Pending,
        }
    }
}

impl<M: Manager> Drop for InLine<'_, M> {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let left = self.shared.slots.lock().leave_line(id);
        // Outside the lock: handing on takes it again.
        if let Some(Served::Granted(unit, conn)) = left {
            let permit = Permit::new(self.shared, unit);
            match conn {
                // To the next in line, or idle.
                Some(conn) => Shared::make_idle(conn, permit),
                None => drop(permit),
            }
        }
    }
}
