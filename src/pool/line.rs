//! Capacity and the line of callers waiting for it, kept under the pool's
//! one lock (inside `Slots`) and free of `.await`.
//!
//! Why not a semaphore beside the idle set: a returned connection then took
//! two locks to go back (the idle set's, then the semaphore's to wake a
//! waiter) and the woken waiter three more (the semaphore's, the idle
//! set's to pop what was just pushed, the deadline queue's to leave it).
//! Here a connection coming back with someone waiting goes straight to the
//! first waiter, under the lock that files it: the waiter wakes holding it.
//!
//! The rules, each kept by every function below:
//! - Each unit of capacity somebody holds is a [`Unit`] value: made only
//!   here, when a unit is taken (or granted to a waiter), and given back
//!   only by passing it in. `free` + units alive = `max_size` + `owed`.
//! - `free` counts capacity nobody holds. While someone is [`Waiting`],
//!   `free` is 0: capacity that comes back goes to the first waiter.
//! - Waiters are served in arrival order; entry `i` of the line has id
//!   `base + i`. An entry that left is `None` until everything ahead of it
//!   has left too (so ids stay valid without a search).
//! - Whatever is granted (capacity, and maybe a connection) belongs to the
//!   waiter's future from then on: taken when it is polled, or handed on
//!   (to the next waiter, or back to `free` and the idle set) when the
//!   future is dropped first.
//!
//! [`Waiting`]: State::Waiting

use std::collections::VecDeque;
use std::mem;
use std::panic::Location;
use std::task::{Context, Waker};

use tokio::time::Instant;

use super::conn::Conn;

/// One unit of capacity (`max_size`), taken from the line: only the line
/// makes one (a take, a grant to a waiter), and only the line takes one
/// back (`release`, `hand_over`). Whoever holds it must pass it on or give
/// it back: the pool keeps it inside a `Permit`, which gives it back when
/// dropped. Dropped anywhere else, the unit is lost to the pool, which
/// debug builds catch.
#[must_use = "a unit of capacity must be given back to the line, or it is lost"]
#[derive(Debug)]
pub(crate) struct Unit(());

impl Unit {
    fn mint() -> Self {
        Unit(())
    }

    /// Given back to the line, which now counts it.
    fn returned(self) {
        mem::forget(self);
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        // Not while unwinding: a panic elsewhere drops what it held.
        debug_assert!(
            std::thread::panicking(),
            "a unit of capacity is given back to the line, never dropped"
        );
    }
}

/// The capacity count and the line.
pub(crate) struct Line<C> {
    free: usize,
    /// Units to be removed as they come back: `Pool::resize` shrank the
    /// pool by more than was free. Capacity coming back while this is
    /// above 0 is not handed on or freed, and its connection is closed.
    owed: usize,
    base: u64,
    entries: VecDeque<Option<Waiter<C>>>,
    /// The watchdog found no deadline to wait for and waits to be told of a
    /// newcomer. Kept with the entries: a waiter that joins while expired
    /// ones are still queued (so the line is not empty) must still wake it.
    watchdog_idle: bool,
}

/// One caller in line.
struct Waiter<C> {
    deadline: Instant,
    /// Where the caller's `get()` is: a connection handed over is lent there.
    site: &'static Location<'static>,
    waker: Option<Waker>,
    state: State<C>,
}

enum State<C> {
    Waiting,
    /// Capacity is this waiter's, with a connection if one came back.
    Granted(Unit, Option<Conn<C>>),
    /// The deadline passed first.
    Expired,
    /// The pool closed first.
    Closed,
}

/// How a waiter's wait ended.
pub(crate) enum Served<C> {
    /// Capacity, and a connection straight from its last borrower.
    Granted(Unit, Option<Conn<C>>),
    Expired,
    Closed,
}

/// What the line says to a poll.
pub(crate) enum Poll<C> {
    Served(Served<C>),
    /// Joined now: the line's id, and whether the idle watchdog must be told.
    Joined {
        id: u64,
        wake_watchdog: bool,
    },
    Pending,
}

impl<C> Line<C> {
    pub(crate) fn new(capacity: usize) -> Self {
        Line {
            free: capacity,
            owed: 0,
            base: 0,
            entries: VecDeque::new(),
            watchdog_idle: false,
        }
    }

    /// Takes a unit of capacity if one is free.
    pub(crate) fn try_take(&mut self) -> Option<Unit> {
        if self.free == 0 {
            return None;
        }
        self.free -= 1;
        Some(Unit::mint())
    }

    /// Capacity nobody holds.
    pub(crate) fn free(&self) -> usize {
        self.free
    }

    /// A unit of capacity comes back without a connection: the first
    /// waiter gets it (the waker to wake is returned), or it is free.
    #[must_use = "the waker must be woken outside the lock"]
    pub(crate) fn release(&mut self, unit: Unit) -> Option<Waker> {
        if self.owed > 0 {
            // The pool shrank: this unit goes with the old size.
            self.owed -= 1;
            unit.returned();
            return None;
        }
        match self.first_waiting() {
            Some(w) => {
                w.state = State::Granted(unit, None);
                w.waker.take()
            }
            None => {
                self.free += 1;
                unit.returned();
                None
            }
        }
    }

    /// A connection comes back with its capacity: straight to the first
    /// waiter (after `lend` notes it lent at that waiter's `get()` site;
    /// the waker to wake is returned), or `Err` with the connection to put
    /// into the idle set (its capacity is free then).
    #[inline]
    pub(crate) fn hand_over(
        &mut self,
        mut conn: Conn<C>,
        unit: Unit,
        lend: impl FnOnce(&mut Conn<C>, &'static Location<'static>),
    ) -> Result<Option<Waker>, Conn<C>> {
        match self.first_waiting() {
            Some(w) => {
                lend(&mut conn, w.site);
                w.state = State::Granted(unit, Some(conn));
                Ok(w.waker.take())
            }
            None => {
                self.free += 1;
                unit.returned();
                Err(conn)
            }
        }
    }

    /// Units somebody holds, of `capacity` (`max_size` now): lent and
    /// returning connections, checkouts and connects in progress.
    pub(crate) fn held(&self, capacity: usize) -> usize {
        capacity + self.owed - self.free
    }

    /// Capacity coming back now is removed (the pool shrank): its
    /// connection is to be closed, not filed.
    pub(crate) fn owes(&self) -> bool {
        self.owed > 0
    }

    /// `n` more units: first cancelling units still owed from a shrink,
    /// then each to the first waiter (its waker pushed onto `wake`) or free.
    pub(crate) fn grow(&mut self, n: usize, wake: &mut Vec<Waker>) {
        let cancelled = n.min(self.owed);
        self.owed -= cancelled;
        let mut left = n - cancelled;
        while left > 0 {
            match self.first_waiting() {
                Some(w) => {
                    w.state = State::Granted(Unit::mint(), None);
                    wake.extend(w.waker.take());
                    left -= 1;
                }
                None => {
                    self.free += left;
                    break;
                }
            }
        }
    }

    /// `n` fewer units: free ones go now, the rest as they come back.
    pub(crate) fn shrink(&mut self, n: usize) {
        let now = n.min(self.free);
        self.free -= now;
        self.owed += n - now;
    }

    fn first_waiting(&mut self) -> Option<&mut Waiter<C>> {
        self.entries
            .iter_mut()
            .flatten()
            .find(|w| matches!(w.state, State::Waiting))
    }

    /// A caller's poll. `id` is its place from an earlier poll, `None` the
    /// first time: then it takes free capacity (there is none while anyone
    /// waits) or joins the line with `deadline`. Afterwards it is told how
    /// its wait ended, or has `cx`'s waker kept for when it does.
    pub(crate) fn poll(
        &mut self,
        id: Option<u64>,
        deadline: Instant,
        site: &'static Location<'static>,
        closed: bool,
        cx: &mut Context<'_>,
    ) -> Poll<C> {
        let Some(id) = id else {
            if closed {
                return Poll::Served(Served::Closed);
            }
            if let Some(unit) = self.try_take() {
                return Poll::Served(Served::Granted(unit, None));
            }
            self.entries.push_back(Some(Waiter {
                deadline,
                site,
                waker: Some(cx.waker().clone()),
                state: State::Waiting,
            }));
            let id = self.base + self.entries.len() as u64 - 1;
            let wake_watchdog = mem::take(&mut self.watchdog_idle);
            return Poll::Joined { id, wake_watchdog };
        };
        let found = self
            .index(id)
            .and_then(|i| Some((i, self.entries[i].as_mut()?)));
        let Some((i, w)) = found else {
            debug_assert!(
                false,
                "a waiter polled after its wait ended is still in line"
            );
            return Poll::Served(Served::Closed);
        };
        match w.state {
            State::Waiting => {
                match &w.waker {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    _ => w.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => Poll::Served(self.take(i).expect("the entry was just seen")),
        }
    }

    /// Where waiter `id` is in `entries`, if it is still there.
    fn index(&self, id: u64) -> Option<usize> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        (i < self.entries.len()).then_some(i)
    }

    /// Takes waiter `id` out of the line, with how its wait ended (`None`
    /// if it had left already). A grant it never took is the caller's to
    /// hand on.
    pub(crate) fn leave(&mut self, id: u64) -> Option<Served<C>> {
        let i = self.index(id)?;
        self.take(i)
    }

    /// Takes the waiter at `i` out, and the places left before it off the
    /// front. Served waiters are usually the first: that case pops at once.
    fn take(&mut self, i: usize) -> Option<Served<C>> {
        let w = if i == 0 && matches!(self.entries.front(), Some(Some(_))) {
            self.base += 1;
            self.entries
                .pop_front()
                .flatten()
                .expect("the front was just seen to hold a waiter")
        } else {
            self.entries.get_mut(i)?.take()?
        };
        while matches!(self.entries.front(), Some(None)) {
            self.entries.pop_front();
            self.base += 1;
        }
        Some(match w.state {
            State::Granted(unit, conn) => Served::Granted(unit, conn),
            State::Expired => Served::Expired,
            State::Waiting | State::Closed => Served::Closed,
        })
    }

    /// Expires every waiter due at `now`, pushing the wakers to wake onto
    /// `due`; returns the next deadline to wait for, if anyone still waits.
    pub(crate) fn expire_due(&mut self, now: Instant, due: &mut Vec<Waker>) -> Option<Instant> {
        let mut next = None;
        for w in self.entries.iter_mut().flatten() {
            if !matches!(w.state, State::Waiting) {
                continue;
            }
            if w.deadline <= now {
                w.state = State::Expired;
                due.extend(w.waker.take());
            } else {
                // Deadlines come in arrival order (give or take the moments
                // between a caller's clock read and its entry): the first
                // one not due is the next to wait for.
                next = Some(w.deadline);
                break;
            }
        }
        self.watchdog_idle = next.is_none();
        next
    }

    /// The pool closed: every waiter is told so; their wakers are returned.
    pub(crate) fn close(&mut self) -> Vec<Waker> {
        let mut wake = Vec::new();
        for w in self.entries.iter_mut().flatten() {
            if matches!(w.state, State::Waiting) {
                w.state = State::Closed;
                wake.extend(w.waker.take());
            }
        }
        wake
    }
}

#[cfg(test)]
mod tests {
    //! The line without a runtime: plain data and a no-op waker.
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn waker() -> Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }

    fn join(line: &mut Line<u8>, deadline: Instant) -> u64 {
        let w = waker();
        let mut cx = Context::from_waker(&w);
        match line.poll(None, deadline, Location::caller(), false, &mut cx) {
            Poll::Joined { id, .. } => id,
            _ => panic!("expected to join the line"),
        }
    }

    fn poll(line: &mut Line<u8>, id: u64) -> Option<Served<u8>> {
        let w = waker();
        let mut cx = Context::from_waker(&w);
        match line.poll(Some(id), Instant::now(), Location::caller(), false, &mut cx) {
            Poll::Served(s) => Some(s),
            Poll::Pending => None,
            Poll::Joined { .. } => panic!("already in line"),
        }
    }

    #[test]
    fn capacity_is_taken_while_free_then_waiters_are_served_in_order() {
        let now = Instant::now();
        let mut line = Line::<u8>::new(1);
        let unit = line.try_take().expect("one unit is free");
        assert!(line.try_take().is_none(), "and only one");
        let a = join(&mut line, now);
        let b = join(&mut line, now);
        assert!(poll(&mut line, a).is_none() && poll(&mut line, b).is_none());
        assert!(line.release(unit).is_some(), "the first waiter is woken");
        assert_eq!(line.free(), 0, "capacity went to the waiter, not to free");
        assert!(poll(&mut line, b).is_none(), "b is behind a");
        let Some(Served::Granted(unit, None)) = poll(&mut line, a) else {
            panic!("a is served first, with the unit given back");
        };
        assert!(line.release(unit).is_some());
        let Some(Served::Granted(unit, None)) = poll(&mut line, b) else {
            panic!("then b");
        };
        let _ = line.release(unit);
        assert_eq!(line.free(), 1, "nobody waits: capacity is free");
        assert!(line.entries.is_empty());
    }

    #[test]
    fn a_grant_left_untaken_is_the_leavers_to_hand_on() {
        let now = Instant::now();
        let mut line = Line::<u8>::new(0);
        let a = join(&mut line, now);
        let _ = line.release(Unit::mint());
        let Some(Served::Granted(unit, None)) = line.leave(a) else {
            panic!("the grant goes to the leaver");
        };
        assert_eq!(
            line.free(),
            0,
            "leave hands the grant to its caller, not to free"
        );
        unit.returned();
    }

    #[test]
    fn expired_and_left_waiters_are_skipped_when_capacity_comes_back() {
        let now = Instant::now();
        let mut line = Line::<u8>::new(0);
        let early = join(&mut line, now);
        let gone = join(&mut line, now + Duration::from_secs(1));
        let last = join(&mut line, now + Duration::from_secs(2));
        let mut due = Vec::new();
        assert_eq!(
            line.expire_due(now, &mut due),
            Some(now + Duration::from_secs(1))
        );
        assert_eq!(due.len(), 1);
        assert!(matches!(line.leave(gone), Some(Served::Closed)));
        assert!(line.release(Unit::mint()).is_some());
        assert!(matches!(poll(&mut line, early), Some(Served::Expired)));
        let Some(Served::Granted(unit, None)) = poll(&mut line, last) else {
            panic!("the last waiter is served");
        };
        unit.returned();
        assert!(line.entries.is_empty() && line.base == 3);
    }

    #[test]
    fn a_waiter_joining_behind_expired_ones_wakes_an_idle_watchdog() {
        let now = Instant::now();
        let mut line = Line::<u8>::new(0);
        let w = waker();
        let mut cx = Context::from_waker(&w);
        let first = line.poll(None, now, Location::caller(), false, &mut cx);
        assert!(matches!(
            first,
            Poll::Joined {
                wake_watchdog: false,
                ..
            }
        ));
        let mut due = Vec::new();
        assert_eq!(
            line.expire_due(now, &mut due),
            None,
            "nothing left to wait for"
        );
        // The expired waiter has not left yet: the line is not empty.
        let late = line.poll(
            None,
            now + Duration::from_secs(1),
            Location::caller(),
            false,
            &mut cx,
        );
        assert!(
            matches!(
                late,
                Poll::Joined {
                    wake_watchdog: true,
                    ..
                }
            ),
            "the watchdog is woken to wait for the newcomer's deadline"
        );
    }

    #[test]
    fn closing_tells_every_waiter_and_a_closed_pool_lets_nobody_join() {
        let now = Instant::now();
        let mut line = Line::<u8>::new(0);
        let a = join(&mut line, now);
        assert_eq!(line.close().len(), 1);
        assert!(matches!(poll(&mut line, a), Some(Served::Closed)));
        let w = waker();
        let mut cx = Context::from_waker(&w);
        let late = line.poll(None, now, Location::caller(), true, &mut cx);
        assert!(matches!(late, Poll::Served(Served::Closed)));
    }
}
