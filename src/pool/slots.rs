//! The pool's synchronous state, kept under one lock and free of `.await`.
//!
//! This module owns the idle set, the counts of connections in each state,
//! capacity and the line of callers waiting for it (`line.rs`), and the
//! housekeeper's sweep decision: everything a checkout or a return changes,
//! so each takes this one lock once.

use std::collections::VecDeque;
use std::mem;
use std::panic::Location;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::oneshot;

use super::conn::{Conn, Meta};
use super::line::{self, Line, Served, Unit};
use crate::liveness::{assess, Policy, Reason, Verdict};

/// The housekeeper's decision for one pass, taken under the lock. `P` is
/// the capacity permit a keepalive ping holds.
pub(crate) struct Sweep<C, P> {
    /// Removed from the idle set (no longer counted anywhere): close them.
    pub(crate) retired: Vec<(Conn<C>, Reason)>,
    /// Removed from the idle set and counted active, each with the permit
    /// it holds: ping them, then put them back idle.
    pub(crate) keepalive: Vec<(Conn<C>, P)>,
    /// `last_borrowed` of each obsolete connection that deserves a replacement.
    pub(crate) replace: Vec<Instant>,
    /// When the verdict on some idle connection next changes.
    pub(crate) next_deadline: Option<Instant>,
}

/// Idle connections and the counts of the others.
pub(crate) struct Slots<C> {
    /// Back = most recently used. Checkout takes from the back, so a busy
    /// pool keeps reusing warm connections (they skip the validation ping)
    /// and the surplus at the front ages out.
    idle: VecDeque<Conn<C>>,
    /// Lent out, or held by the pool for I/O (validation, reset, keepalive).
    active: Registry,
    /// Connect attempts in flight.
    connecting: usize,
    /// Checkouts holding capacity while they wait out the connect backoff
    /// (`Shared::backoff_wait`): a connection filed idle wakes them.
    backing_off: usize,
    /// Active connections out for a keepalive ping: idle again unless the
    /// ping fails, so `min_idle` counts them.
    pinging: usize,
    /// Connections presumed dead, oldest first, by id, each with the
    /// sender that evicts it: pool I/O on them (a ping, a return's
    /// cleaning) went silent past the hedge delay, so they left `active`
    /// and gave up their capacity, and wait for that I/O to end (taken
    /// back if it answers, closed if not). At most `capacity` of them: a
    /// new one evicts the oldest (its task closes it at once), so a black
    /// hole leaves at most `max_size` sockets open beside the pool.
    /// (The sender is taken when it fires: by `close`, which keeps the
    /// entry until the connection's task has closed it.)
    silent: VecDeque<(u64, Option<oneshot::Sender<()>>)>,
    /// `max_size`: the bound on `silent`.
    capacity: usize,
    closed: bool,
    /// Capacity (`max_size`) and the callers waiting for it.
    line: Line<C>,
}

/// What became of a connection filed back by [`Slots::file`].
pub(crate) enum Filed<C> {
    /// Idle; its capacity is free. `wake_backoff`: checkouts are waiting
    /// out the connect backoff with capacity in hand, and one of them is to
    /// take this connection instead.
    Idle { wake_backoff: bool },
    /// Straight to the first waiter, with its capacity; the waker is to be
    /// woken outside the lock.
    Handed(Option<Waker>),
    /// The pool is closed, or shrank: still counted active, for the
    /// caller to retire; its capacity went back (or went with the old size).
    Refused(Conn<C>),
}

/// Counts read by `Pool::state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) idle: usize,
    pub(crate) active: usize,
    pub(crate) connecting: usize,
    /// Presumed dead, outside `max_size` (see `Slots::silence`).
    pub(crate) silent: usize,
    /// `max_size` now.
    pub(crate) capacity: usize,
}

impl<C> Slots<C> {
    /// Empty, with `capacity` (`max_size`) free.
    pub(crate) fn new(capacity: usize) -> Self {
        Slots {
            // Grown on demand: `max_size` is a cap, and may be huge.
            idle: VecDeque::new(),
            active: Registry::default(),
            connecting: 0,
            backing_off: 0,
            pinging: 0,
            silent: VecDeque::new(),
            capacity,
            closed: false,
            line: Line::new(capacity),
        }
    }

    /// Takes a unit of capacity if one is free and the pool is open.
    pub(crate) fn try_take(&mut self) -> Option<Unit> {
        if self.closed {
            return None;
        }
        self.line.try_take()
    }

    /// A unit of capacity comes back without a connection; the waker (of
    /// the waiter it went to) is to be woken outside the lock.
    #[must_use = "the waker must be woken outside the lock"]
    pub(crate) fn release(&mut self, unit: Unit) -> Option<Waker> {
        self.line.release(unit)
    }

    /// A waiter's poll; see [`Line::poll`].
    pub(crate) fn poll_line(
        &mut self,
        id: Option<u64>,
        deadline: Instant,
        site: &'static Location<'static>,
        cx: &mut Context<'_>,
    ) -> line::Poll<C> {
        self.line.poll(id, deadline, site, self.closed, cx)
    }

    /// Waiter `id` gives up its place; what it was granted, if anything,
    /// is the caller's to hand on.
    pub(crate) fn leave_line(&mut self, id: u64) -> Option<Served<C>> {
        self.line.leave(id)
    }

    /// Expires the waiters due at `now`; see [`Line::expire_due`].
    pub(crate) fn expire_due(&mut self, now: Instant, due: &mut Vec<Waker>) -> Option<Instant> {
        self.line.expire_due(now, due)
    }

    /// Files an active connection coming back with its capacity: to the
    /// first waiter, lent at its `get()` site from the connection's
    /// `last_io` on, or into the idle set with the capacity freed.
    #[inline]
    pub(crate) fn file(&mut self, conn: Conn<C>, unit: Unit) -> Filed<C> {
        if self.closed || self.line.owes() {
            // Closed, or shrunk (`resize`): the capacity goes back without
            // the connection, or with the old size.
            let woken = self.line.release(unit);
            debug_assert!(
                woken.is_none(),
                "a closed or shrinking pool hands no capacity to a waiter"
            );
            return Filed::Refused(conn);
        }
        let (active, pinging) = (&mut self.active, &mut self.pinging);
        let handed = self.line.hand_over(conn, unit, |conn, site| {
            // Active before, active after: only what it is doing changes.
            let since = conn.meta.last_io;
            if active.relend(&conn.meta, since, site) == Some(Activity::Keepalive) {
                *pinging -= 1;
            }
        });
        match handed {
            Ok(waker) => Filed::Handed(waker),
            Err(conn) => {
                self.remove_active(&conn.meta);
                self.idle.push_back(conn);
                Filed::Idle {
                    wake_backoff: self.backing_off > 0,
                }
            }
        }
    }

    /// A checkout with capacity in hand starts waiting out the connect
    /// backoff, unless there is no point: the pool is closed, or a
    /// connection is idle for it to take instead. `false`: don't wait.
    pub(crate) fn enter_backoff(&mut self) -> bool {
        if self.closed || !self.idle.is_empty() {
            return false;
        }
        self.backing_off += 1;
        true
    }

    /// The end of an [`enter_backoff`](Self::enter_backoff) that said wait.
    pub(crate) fn leave_backoff(&mut self) {
        self.backing_off -= 1;
    }

    /// Sets `max_size` to `new` (`Pool::resize`). Growing serves callers in
    /// line at once (their wakers are pushed onto `wake`). Shrinking takes
    /// free capacity now and the rest as it comes back (those connections
    /// are closed, not filed), and hands back the idle connections above
    /// the new size, least recently used first, to close.
    pub(crate) fn resize(&mut self, new: usize, wake: &mut Vec<Waker>) -> Vec<Conn<C>> {
        let old = mem::replace(&mut self.capacity, new);
        if new >= old {
            self.line.grow(new - old, wake);
            return Vec::new();
        }
        self.line.shrink(old - new);
        // Every unit held carries a connection or will: lent and returning
        // ones now, checkouts that are connecting or queued to connect
        // soon. Idle connections may fill the new size beside them, no
        // more (kept, callers in line would wait while they sit idle, and
        // the pool would settle above its size).
        let open = self.idle.len() + self.line.held(new);
        let surplus = open.saturating_sub(new).min(self.idle.len());
        self.idle.drain(..surplus).collect()
    }

    /// Units of `max_size` nobody holds (see `line.rs`).
    pub(crate) fn free(&self) -> usize {
        self.line.free()
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            idle: self.idle.len(),
            active: self.active.len,
            connecting: self.connecting,
            silent: self.silent.len(),
            capacity: self.capacity,
        }
    }

    /// The active connection whose I/O went silent is presumed dead: it
    /// leaves `active`, and the capacity its owner holds goes on without
    /// it. With `max_size` presumed dead already, the oldest is evicted
    /// (its task closes it at once). The receiver fires if this one is
    /// evicted in turn.
    pub(crate) fn silence(&mut self, meta: &Meta) -> oneshot::Receiver<()> {
        if self.silent.len() >= self.capacity {
            if let Some((_, Some(evict))) = self.silent.pop_front() {
                let _ = evict.send(());
            }
        }
        self.remove_active(meta);
        let (evict, evicted) = oneshot::channel();
        self.silent.push_back((meta.id, Some(evict)));
        evicted
    }

    /// Takes a connection presumed dead off the list; `false` when it was
    /// evicted already (and counted out then).
    fn unsilence(&mut self, id: u64) -> bool {
        match self.silent.iter().position(|(silent, _)| *silent == id) {
            Some(at) => {
                self.silent.remove(at);
                true
            }
            None => false,
        }
    }

    /// The silent I/O answered after all: the connection counts active
    /// again, on a unit of capacity taken for it (the caller owns it), if
    /// it was not evicted meanwhile and a unit is free; else `false`, and
    /// it is no longer counted anywhere (the caller closes it).
    pub(crate) fn revive(&mut self, meta: &mut Meta, now: Instant) -> Option<Unit> {
        if !self.unsilence(meta.id) {
            return None;
        }
        let unit = self.try_take()?;
        self.active.insert(meta, now, Activity::Returning);
        Some(unit)
    }

    /// The silent I/O failed, timed out or was evicted: the connection
    /// presumed dead is no longer counted anywhere (the caller closes it).
    pub(crate) fn bury(&mut self, id: u64) {
        self.unsilence(id);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Marks the pool closed and hands back every idle connection to close,
    /// and the wakers of the callers in line (each is told `Closed`).
    pub(crate) fn close(&mut self) -> (Vec<Conn<C>>, Vec<Waker>) {
        self.closed = true;
        // Connections presumed dead are closed by their tasks at once; they
        // stay counted until then, so `Pool::close` waits for them.
        for (_, evict) in &mut self.silent {
            if let Some(evict) = evict.take() {
                let _ = evict.send(());
            }
        }
        (self.drain_idle(), self.line.close())
    }

    /// Empties the idle set; the connections are no longer counted anywhere.
    pub(crate) fn drain_idle(&mut self) -> Vec<Conn<C>> {
        self.idle.drain(..).collect()
    }

    /// Takes the most recently used idle connection if `lendable` says it may
    /// be lent as it is (no retirement, no ping due); it now counts active.
    /// Otherwise leaves the idle set alone for the slow path to deal with.
    pub(crate) fn pop_if(
        &mut self,
        now: Instant,
        site: &'static Location<'static>,
        lendable: impl FnOnce(&mut Conn<C>) -> bool,
    ) -> Option<Conn<C>> {
        if !lendable(self.idle.back_mut()?) {
            return None;
        }
        self.pop(now, site)
    }

    /// Takes the most recently used idle connection; it now counts active,
    /// lent to the caller at `site`.
    pub(crate) fn pop(
        &mut self,
        now: Instant,
        site: &'static Location<'static>,
    ) -> Option<Conn<C>> {
        let mut conn = self.idle.pop_back()?;
        self.active
            .insert(&mut conn.meta, now, Activity::Lent(site));
        Some(conn)
    }

    /// Takes the most recently used idle connection out for a check by the
    /// housekeeper (its role): it counts active, as out for a keepalive,
    /// and comes back through the idle set or leaves the pool.
    pub(crate) fn take_for_check(&mut self, now: Instant) -> Option<Conn<C>> {
        let mut conn = self.idle.pop_back()?;
        self.active.insert(&mut conn.meta, now, Activity::Keepalive);
        self.pinging += 1;
        Some(conn)
    }

    /// When the least recently used idle connection (the front of the idle
    /// set) was last heard from; `None` when nothing is idle.
    pub(crate) fn oldest_idle(&self) -> Option<Instant> {
        self.idle.front().map(|c| c.meta.last_io)
    }

    /// Takes the least recently used idle connection out of the idle set;
    /// it is no longer counted anywhere (the caller closes it).
    pub(crate) fn pop_oldest(&mut self) -> Option<Conn<C>> {
        self.idle.pop_front()
    }

    /// An active connection left the pool (retired or detached).
    pub(crate) fn forget_active(&mut self, meta: &Meta) {
        self.remove_active(meta);
    }

    fn remove_active(&mut self, meta: &Meta) {
        if self.active.remove(meta) == Some(Activity::Keepalive) {
            self.pinging -= 1;
        }
    }

    /// Notes what the pool is now doing with an active connection.
    pub(crate) fn set_activity(&mut self, meta: &Meta, activity: Activity) {
        let was = self.active.set_activity(meta, activity);
        debug_assert!(
            was != Some(Activity::Keepalive) && activity != Activity::Keepalive,
            "a keepalive ping starts only in the sweep and ends by leaving the active set"
        );
    }

    pub(crate) fn start_connect(&mut self) {
        self.connecting += 1;
    }

    /// A connect attempt ended; on success the new connection counts active,
    /// doing `activity`.
    pub(crate) fn finish_connect(&mut self, opened: Option<(&mut Meta, Activity)>, now: Instant) {
        debug_assert!(self.connecting > 0, "a finished connect was counted");
        self.connecting -= 1;
        if let Some((meta, activity)) = opened {
            self.active.insert(meta, now, activity);
        }
    }

    /// Connections lent longer than `threshold` and not reported before;
    /// each is reported once.
    pub(crate) fn new_leaks(&mut self, now: Instant, threshold: Duration) -> Vec<ActiveInfo> {
        let mut found = Vec::new();
        for info in self.active.entries.iter_mut().flatten() {
            if matches!(info.activity, Activity::Lent(_))
                && !info.leak_reported
                && now.saturating_duration_since(info.since) >= threshold
            {
                info.leak_reported = true;
                found.push(*info);
            }
        }
        found
    }

    /// Every connection the pool knows: idle ones, then active ones.
    pub(crate) fn snapshot(&self) -> (Vec<Meta>, Vec<ActiveInfo>) {
        let idle = self.idle.iter().map(|c| c.meta).collect();
        let active = self.active.entries.iter().flatten().copied().collect();
        (idle, active)
    }

    /// The housekeeper's pass: retires idle connections the policy calls
    /// obsolete, takes out those due a keepalive ping (each takes a unit of
    /// free capacity, owned by the `P` that `permit` makes; without one it
    /// stays idle for now), and notes which retirements deserve a
    /// replacement.
    pub(crate) fn sweep<P>(
        &mut self,
        now: Instant,
        policy: &Policy,
        min_idle: usize,
        generation: u64,
        mut broken: impl FnMut(&mut C) -> bool,
        mut permit: impl FnMut(Unit) -> P,
    ) -> Sweep<C, P> {
        let mut out = Sweep {
            retired: Vec::new(),
            keepalive: Vec::new(),
            replace: Vec::new(),
            next_deadline: None,
        };
        let mut open = self.idle.len() + self.active.len;
        // Oldest first, so shrinking retires the connections idle longest.
        for mut conn in mem::take(&mut self.idle) {
            let broken = broken(&mut conn.raw);
            let facts = conn.meta.facts(broken, open > min_idle, generation);
            match assess(&facts, policy, now) {
                Verdict::Retire(reason) => {
                    open -= 1;
                    // Replaced so the next caller finds it warm, but only if
                    // it was lent since it opened: a replacement nobody used
                    // before it, too, aged out is not replaced again (else a
                    // short server timeout makes an idle pool reconnect every
                    // few seconds until `idle_timeout`). `min_idle` still
                    // keeps its floor.
                    let used = conn.meta.uses > 0;
                    if used
                        && !matches!(reason, Reason::IdleTimeout | Reason::Closed)
                        && !self.closed
                    {
                        out.replace.push(conn.meta.last_borrowed);
                    }
                    out.retired.push((conn, reason));
                }
                Verdict::Keep => {
                    if policy.keepalive_due(conn.meta.last_io, now) {
                        if let Some(unit) = self.try_take() {
                            self.active.insert(&mut conn.meta, now, Activity::Keepalive);
                            self.pinging += 1;
                            out.keepalive.push((conn, permit(unit)));
                            continue;
                        }
                    }
                    let next = policy.next_deadline(&facts);
                    out.next_deadline = match (out.next_deadline, next) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    self.idle.push_back(conn);
                }
            }
        }
        out
    }

    /// Idle connections the pool lacks to reach `min_idle`, counting those
    /// being opened and those out for a keepalive ping (without them, every
    /// keepalive round would open `min_idle` more).
    pub(crate) fn idle_deficit(&self, min_idle: usize) -> usize {
        if self.closed {
            return 0;
        }
        min_idle.saturating_sub(self.idle.len() + self.connecting + self.pinging)
    }
}

/// What the pool is doing with an active connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    /// Lent to the caller of `get()` at this source location (including
    /// its checkout validation).
    Lent(&'static Location<'static>),
    /// Just opened by the housekeeper, on its way to the idle set.
    Opening,
    /// Being pinged by the housekeeper.
    Keepalive,
    /// Returned, being cleaned (rollback / session reset).
    Returning,
}

/// One active connection, for leak detection and status pages: what those
/// read of its `Meta` (copied at every checkout, so kept small).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActiveInfo {
    pub(crate) id: u64,
    pub(crate) created: Instant,
    pub(crate) uses: u64,
    pub(crate) server_idle: Option<Duration>,
    /// When the current activity began.
    pub(crate) since: Instant,
    pub(crate) activity: Activity,
    pub(crate) leak_reported: bool,
}

/// The active connections, in a slab indexed by `Meta::slot`: insert and
/// remove are O(1) and allocate only while the pool grows.
#[derive(Default)]
struct Registry {
    entries: Vec<Option<ActiveInfo>>,
    free: Vec<usize>,
    len: usize,
}

impl Registry {
    fn insert(&mut self, meta: &mut Meta, now: Instant, activity: Activity) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.entries.push(None);
            self.entries.len() - 1
        });
        meta.slot = slot;
        self.entries[slot] = Some(ActiveInfo {
            id: meta.id,
            created: meta.created,
            uses: meta.uses,
            server_idle: meta.server_idle,
            since: now,
            activity,
            leak_reported: false,
        });
        self.len += 1;
    }

    /// Removes the connection; returns what it was doing.
    fn remove(&mut self, meta: &Meta) -> Option<Activity> {
        let entry = self.entries.get_mut(meta.slot).and_then(Option::take);
        debug_assert!(
            entry.is_some_and(|e| e.id == meta.id),
            "a connection leaving the active set was in it, at its own slot"
        );
        self.free.push(meta.slot);
        self.len -= 1;
        entry.map(|e| e.activity)
    }

    /// The connection, active still, is lent anew at `site` from `since`;
    /// returns what it was doing.
    fn relend(
        &mut self,
        meta: &Meta,
        since: Instant,
        site: &'static Location<'static>,
    ) -> Option<Activity> {
        let info = self.entries.get_mut(meta.slot)?.as_mut()?;
        debug_assert!(
            info.id == meta.id,
            "an active connection is at its own slot"
        );
        info.uses = meta.uses;
        info.since = since;
        info.leak_reported = false;
        Some(mem::replace(&mut info.activity, Activity::Lent(site)))
    }

    /// Notes the new activity; returns the one it replaces.
    fn set_activity(&mut self, meta: &Meta, activity: Activity) -> Option<Activity> {
        match self.entries.get_mut(meta.slot) {
            Some(Some(info)) => Some(mem::replace(&mut info.activity, activity)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The sweep and the counts, without a runtime: `Slots` is plain data.
    use super::*;
    use crate::config::Validation;

    const S: fn(u64) -> Duration = Duration::from_secs;
    /// Capacity for tests that do not run out of it.
    const CAPACITY: usize = 8;

    fn policy() -> Policy {
        Policy {
            idle_timeout: Some(S(600)),
            server_timeout_margin: S(5),
            keepalive_interval: Some(S(120)),
            validation: Validation::IdleFor(Duration::from_millis(500)),
        }
    }

    /// Opens connection `id` at `at` (server idle timeout `server`, used
    /// `uses` times) straight into the idle set, as the pool does.
    fn open(slots: &mut Slots<u64>, id: u64, at: Instant, server: Option<u64>, uses: u64) {
        let mut meta = Meta {
            id,
            created: at,
            expires: None,
            last_io: at,
            last_borrowed: at,
            server_idle: server.map(S),
            lend_allowance: None,
            uses,
            slot: usize::MAX,
            generation: 0,
            lend_before: None,
        };
        slots.start_connect();
        slots.finish_connect(Some((&mut meta, Activity::Opening)), at);
        let unit = slots.try_take().expect("a unit for the new connection");
        let filed = slots.file(Conn::new(id, meta), unit);
        assert!(matches!(filed, Filed::Idle { .. }), "filed idle");
    }

    fn sweep(slots: &mut Slots<u64>, now: Instant, min_idle: usize) -> Sweep<u64, ()> {
        slots.sweep(now, &policy(), min_idle, 0, |_| false, std::mem::forget)
    }

    #[test]
    fn obsolete_connections_are_retired_and_only_used_ones_replaced() {
        let t0 = Instant::now();
        let mut slots = Slots::new(CAPACITY);
        open(&mut slots, 1, t0, Some(60), 3); // used, server deadline 55 s
        open(&mut slots, 2, t0, Some(60), 0); // never lent
        open(&mut slots, 3, t0 + S(30), Some(60), 1); // deadline at 85 s
        let out = sweep(&mut slots, t0 + S(55), 0);
        let retired: Vec<_> = out.retired.iter().map(|(c, r)| (c.raw, *r)).collect();
        assert_eq!(
            retired,
            [(1, Reason::ServerTimeout), (2, Reason::ServerTimeout)]
        );
        assert_eq!(
            out.replace,
            [t0],
            "only the used one deserves a warm replacement"
        );
        assert_eq!(
            out.next_deadline,
            Some(t0 + S(85)),
            "the survivor's server deadline"
        );
        assert_eq!(
            slots.counts(),
            Counts {
                idle: 1,
                active: 0,
                connecting: 0,
                silent: 0,
                capacity: CAPACITY
            }
        );
    }

    #[test]
    fn a_keepalive_needs_free_capacity_and_counts_toward_min_idle() {
        let t0 = Instant::now();
        let mut slots = Slots::new(1);
        open(&mut slots, 1, t0, None, 1);
        open(&mut slots, 2, t0, None, 1);
        let now = t0 + S(120);
        let out = sweep(&mut slots, now, 2);
        assert_eq!(out.keepalive.len(), 1, "one unit of capacity, one ping");
        assert_eq!(slots.line.free(), 0);
        assert_eq!(
            slots.counts(),
            Counts {
                idle: 1,
                active: 1,
                connecting: 0,
                silent: 0,
                capacity: 1
            }
        );
        assert_eq!(
            slots.idle_deficit(2),
            0,
            "the one out for a ping still counts"
        );
        // The one left idle is due now: the housekeeper looks again at once.
        assert_eq!(out.next_deadline, Some(now));
    }

    #[test]
    fn idle_timeout_shrinks_oldest_first_down_to_min_idle() {
        let t0 = Instant::now();
        let mut slots = Slots::new(4);
        for id in 1..=4 {
            open(&mut slots, id, t0 + S(id), None, 1);
        }
        // No free capacity (others hold it): no keepalive pings, only the shrink.
        let held: Vec<Unit> = std::iter::from_fn(|| slots.try_take()).collect();
        assert_eq!(held.len(), 4);
        let out = sweep(&mut slots, t0 + S(700), 2);
        held.into_iter().for_each(std::mem::forget);
        let retired: Vec<_> = out.retired.iter().map(|(c, r)| (c.raw, *r)).collect();
        assert_eq!(
            retired,
            [(1, Reason::IdleTimeout), (2, Reason::IdleTimeout)]
        );
        assert!(out.replace.is_empty(), "a shrink is not replaced");
        assert_eq!(slots.counts().idle, 2);
    }

    #[test]
    fn after_close_a_returned_connection_is_handed_back_to_be_retired() {
        let t0 = Instant::now();
        let mut slots = Slots::new(CAPACITY);
        open(&mut slots, 1, t0, None, 0);
        let unit = slots.try_take().expect("a unit to lend it on");
        let conn = slots.pop(t0, Location::caller()).expect("the idle one");
        assert_eq!(
            slots.counts(),
            Counts {
                idle: 0,
                active: 1,
                connecting: 0,
                silent: 0,
                capacity: CAPACITY
            }
        );
        assert_eq!(slots.close().0.len(), 0);
        let Filed::Refused(refused) = slots.file(conn, unit) else {
            panic!("a closed pool refuses a returning connection");
        };
        assert_eq!(refused.raw, 1);
        slots.forget_active(&refused.meta);
        assert_eq!(
            slots.counts(),
            Counts {
                idle: 0,
                active: 0,
                connecting: 0,
                silent: 0,
                capacity: CAPACITY
            }
        );
        assert_eq!(slots.idle_deficit(5), 0, "a closed pool wants nothing");
    }
}
