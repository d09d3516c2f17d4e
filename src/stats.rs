//! Counters kept by the pool with relaxed atomics, and the public snapshot.

use crossbeam_utils::CachePadded;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::liveness::Reason;

/// Counters bumped on the pool's paths. Relaxed: each is an independent
/// tally read for reporting, never used to synchronise anything.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) created: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) closed: [AtomicU64; Reason::ALL.len()],
    pub(crate) acquire_timeouts: AtomicU64,
    pub(crate) validations_ok: AtomicU64,
    pub(crate) validations_failed: AtomicU64,
    /// Checkout pings silent past the hedge delay (`hedge.rs`).
    pub(crate) validations_hedged: AtomicU64,
    /// Statements left running by a borrower that the server was asked to stop.
    pub(crate) queries_cancelled: AtomicU64,
    /// Validations skipped by checkouts on the slow path; see `lent_at_once`.
    pub(crate) validations_skipped: AtomicU64,
    /// Checkouts served at once by the fast path. Each is a skipped
    /// validation and an acquire wait of zero: one counter bumped instead of
    /// two, split again when read (`validations_skipped`, `acquire_snapshot`).
    /// On a line of its own: every fast checkout writes it, from any thread.
    pub(crate) lent_at_once: CachePadded<AtomicU64>,
    pub(crate) pending: AtomicUsize,
    /// The server idle timeout of the newest connection, in ms; `u64::MAX` = unknown.
    pub(crate) server_idle_timeout_ms: AtomicU64,
    pub(crate) leaks_suspected: AtomicU64,
    /// `get()` calls refused at once because `max_waiters` were waiting.
    pub(crate) rejected: AtomicU64,
    /// Work that `Pool::run_idempotent` ran a second time: its session had
    /// ended, or its server had turned read-only.
    pub(crate) retries: AtomicU64,
    pub(crate) retries_role_changed: AtomicU64,
    /// Time from `get()` to a connection (or to the error).
    pub(crate) acquire: Histogram,
    /// Time a connection was lent out. Every return writes it: on lines of
    /// its own.
    pub(crate) usage: CachePadded<Histogram>,
    /// Time to open a connection (including timeout discovery).
    pub(crate) connect: Histogram,
}

/// Upper bounds, in seconds, shared by every histogram: 10 µs to 60 s.
pub(crate) const BUCKETS: [f64; 16] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 5.0, 60.0,
];

/// [`BUCKETS`] in nanoseconds, for recording.
const BUCKET_NANOS: [u64; 16] = [
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    60_000_000_000,
];

/// A fixed-bucket histogram recorded with relaxed atomics: recording never
/// takes a lock and never allocates (the hot path records two per checkout).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Non-cumulative counts; the last bucket is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // A linear scan over integers: observations cluster in the first
        // buckets, and this is cheaper than float conversion plus bisection.
        let i = BUCKET_NANOS
            .iter()
            .position(|upper| nanos <= *upper)
            .unwrap_or(BUCKET_NANOS.len());
        self.counts[i].fetch_add(1, Relaxed);
        if nanos != 0 {
            self.sum_nanos.fetch_add(nanos, Relaxed);
        }
    }

    /// A consistent-enough copy for a scrape: counts may be a step ahead of
    /// the sum, never behind by more than the observations in flight.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let counts: [u64; BUCKETS.len() + 1] =
            std::array::from_fn(|i| self.counts[i].load(Relaxed));
        HistogramSnapshot {
            count: counts.iter().sum(),
            sum: Duration::from_nanos(self.sum_nanos.load(Relaxed)),
            counts,
        }
    }
}

/// A copy of one histogram, for exporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations in all.
    pub count: u64,
    /// Sum of the observations.
    pub sum: Duration,
    /// Non-cumulative count per bucket of [`HistogramSnapshot::bounds`], then `+Inf`.
    pub counts: [u64; BUCKETS.len() + 1],
}

impl HistogramSnapshot {
    /// The buckets' upper bounds in seconds (the last, `+Inf`, is implied).
    pub fn bounds() -> &'static [f64] {
        &BUCKETS
    }

    /// `(upper bound in seconds, non-cumulative count)`, ending with `+Inf`.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
    }
}

impl Stats {
    pub(crate) fn new() -> Self {
        let s = Stats::default();
        s.server_idle_timeout_ms.store(u64::MAX, Relaxed);
        s
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Validations skipped, on either path.
    pub(crate) fn validations_skipped(&self) -> u64 {
        self.validations_skipped.load(Relaxed) + self.lent_at_once.load(Relaxed)
    }

    /// The acquire-wait histogram, with the fast path's waits of zero in
    /// its lowest bucket.
    pub(crate) fn acquire_snapshot(&self) -> HistogramSnapshot {
        let mut snap = self.acquire.snapshot();
        let at_once = self.lent_at_once.load(Relaxed);
        snap.counts[0] += at_once;
        snap.count += at_once;
        snap
    }

    pub(crate) fn closed(&self, reason: Reason) {
        Stats::bump(&self.closed[reason as usize]);
    }

    pub(crate) fn closed_counts(&self) -> ClosedCounts {
        ClosedCounts(std::array::from_fn(|i| self.closed[i].load(Relaxed)))
    }
}

/// Connections closed, by [`Reason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClosedCounts([u64; Reason::ALL.len()]);

impl ClosedCounts {
    /// How many were closed for `reason`.
    pub fn get(&self, reason: Reason) -> u64 {
        self.0[reason as usize]
    }

    /// How many were closed in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason, including zeros.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

/// A snapshot of a pool, from [`Pool::state`](crate::Pool::state).
///
/// Gauges (`open`, `idle`, `active`, `connecting`) are read together under the
/// pool's lock, so `idle + active == open` holds in every snapshot; the
/// counters are read just after and may be a step ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct State {
    /// `max_size` (as [`Pool::resize`](crate::Pool::resize) last set it).
    pub max_size: usize,
    /// Units of `max_size` nobody holds: a `get()` now takes one without
    /// waiting. Every lent connection, every connection the pool is doing
    /// I/O on and every connect in flight holds one; idle connections hold
    /// none. `max_size - available` is what is held.
    pub available: usize,
    /// `min_idle`.
    pub min_idle: usize,
    /// Connections open: `idle + active`.
    pub open: usize,
    /// Open and waiting in the pool.
    pub idle: usize,
    /// Lent out, or held by the pool for a validation, keepalive or reset.
    pub active: usize,
    /// Connect attempts in flight.
    pub connecting: usize,
    /// Callers of `get()` waiting for a slot.
    pub pending: usize,
    /// Connections opened since the pool was built.
    pub created: u64,
    /// Connect attempts that failed.
    pub connect_errors: u64,
    /// Connections closed, by reason. `created - closed.total() == open`
    /// whenever nothing is in flight.
    pub closed: ClosedCounts,
    /// `get()` calls that ran out of `acquire_timeout`.
    pub acquire_timeouts: u64,
    /// Checkout validations that passed.
    pub validations_ok: u64,
    /// Checkout or keepalive validations that failed.
    pub validations_failed: u64,
    /// Checkouts that skipped the round trip (used within the bypass window).
    pub validations_skipped: u64,
    /// Checkout or keepalive pings that went unanswered past the hedge
    /// delay: the connection was presumed dead and its slot went on without
    /// it (a checkout's caller was served another way).
    pub validations_hedged: u64,
    /// Connections presumed dead (a ping or a return's cleaning silent past
    /// the hedge delay) whose I/O has not ended yet. They hold no slot of
    /// `max_size` and are not in `open`; at most `max_size` of them.
    pub presumed_dead: usize,
    /// Statements a borrower left running (a query future dropped
    /// mid-flight) that the server was asked to stop
    /// ([`Cleanup::stop_query`](crate::Cleanup::stop_query)).
    pub queries_cancelled: u64,
    /// The idle cutoff in force: learned from connections found dead after
    /// idling, or known from the settings ([`IdleCutoff`](crate::IdleCutoff)).
    pub idle_cutoff: Option<Duration>,
    /// The server idle timeout seen on the newest connection (`Some(None)`:
    /// the server has none; `None`: no connection opened yet).
    pub server_idle_timeout: Option<Option<Duration>>,
    /// Guards held longer than `leak_threshold` (each counted once).
    pub leaks_suspected: u64,
    /// `get()` calls refused at once with [`Error::Busy`](crate::Error::Busy).
    pub rejected: u64,
    /// Work [`Pool::run_idempotent`](crate::Pool::run_idempotent) ran a
    /// second time because its first connection's session had ended.
    pub retries: u64,
    /// ... because its first connection's server had turned read-only.
    pub retries_role_changed: u64,
    /// Time from `get()` to a connection or an error.
    pub acquire_duration: HistogramSnapshot,
    /// Time connections were lent out.
    pub usage_duration: HistogramSnapshot,
    /// Time to open a connection.
    pub connect_duration: HistogramSnapshot,
}

/// Where a connection is, for [`Pool::connections`](crate::Pool::connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// In the idle set.
    Idle,
    /// Lent to a caller (including its checkout validation).
    Lent,
    /// Just opened by the housekeeper.
    Opening,
    /// Being pinged by the housekeeper.
    Keepalive,
    /// Returned and being cleaned.
    Returning,
}

impl ConnectionState {
    /// A lower-case name for status pages.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Idle => "idle",
            ConnectionState::Lent => "lent",
            ConnectionState::Opening => "opening",
            ConnectionState::Keepalive => "keepalive",
            ConnectionState::Returning => "returning",
        }
    }
}

/// One connection of a pool, as seen by [`Pool::connections`](crate::Pool::connections).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The pool's id for the connection (as in log lines).
    pub id: u64,
    /// Where it is.
    pub state: ConnectionState,
    /// Time since it was opened.
    pub age: Duration,
    /// For an idle connection: time since the server last saw it do anything.
    pub idle_for: Option<Duration>,
    /// How many times it was lent and returned.
    pub uses: u64,
    /// For an active connection: time in its current state (for a lent one,
    /// how long it has been held).
    pub held_for: Option<Duration>,
    /// For a lent connection: the source location of the `get()` that borrowed it.
    pub borrowed_at: Option<&'static Location<'static>>,
    /// The server's idle timeout for this session.
    pub server_idle_timeout: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_agree_in_seconds_and_nanoseconds() {
        for (secs, nanos) in BUCKETS.iter().zip(BUCKET_NANOS) {
            assert_eq!(Duration::from_secs_f64(*secs).as_nanos(), u128::from(nanos));
        }
    }

    #[test]
    fn an_observation_on_a_bound_counts_in_that_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(11));
        h.observe(Duration::from_secs(61));
        let s = h.snapshot();
        assert_eq!(
            (s.counts[0], s.counts[1], s.counts[BUCKETS.len()]),
            (1, 1, 1)
        );
        assert_eq!(s.count, 3);
        assert_eq!(s.sum, Duration::from_micros(21) + Duration::from_secs(61));
    }
}
