//! Pool-wide pacing of connect attempts after failures.

use std::time::Duration;

use tokio::time::Instant;

/// First pause after a failed connect; doubles per consecutive failure up
/// to [`BACKOFF_MAX`], and each pause is drawn from its upper half at random.
pub(super) const BACKOFF_START: Duration = Duration::from_millis(10);
/// Bounds how long a recovered server waits for the pool's next attempt.
pub(super) const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Pool-wide pacing of connect attempts. While connects fail, attempts are
/// spaced by a pause that doubles per consecutive failure (10 ms up to
/// 500 ms), each drawn at random from the upper half of its range so pools
/// restarted together do not retry in lockstep. Shared, not per caller: a
/// server that is down sees about two attempts a second from the whole pool
/// however many callers wait, and a recovered one is found within 500 ms.
#[derive(Debug, Default)]
pub(super) struct Backoff {
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
    pub(super) fn take_turn(&mut self, now: Instant) -> bool {
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

    /// When the next attempt may start; `None` while connects succeed.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    pub(super) fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let next = now + self.pause();
        self.retry_at = Some(self.retry_at.map_or(next, |at| at.max(next)));
    }

    /// The attempt that took the last turn was declined by the manager
    /// before any server was asked: it says nothing about the server, so the
    /// turn it booked is given back.
    pub(super) fn declined(&mut self) {
        self.retry_at = None;
    }

    /// Whether this success ended a run of failures.
    pub(super) fn succeeded(&mut self) -> bool {
        let was_failing = self.failures > 0;
        *self = Backoff::default();
        was_failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_the_upper_half_and_stop_at_the_cap() {
        let mut b = Backoff::default();
        for n in 1..=12u32 {
            b.failures = n;
            let full = BACKOFF_START.saturating_mul(1 << (n - 1)).min(BACKOFF_MAX);
            for _ in 0..50 {
                let p = b.pause();
                assert!(
                    p >= full / 2 && p <= full,
                    "failure {n}: {p:?} outside {full:?}/2..={full:?}"
                );
            }
        }
    }

    #[test]
    fn while_failing_one_attempt_per_turn_and_a_success_clears_everything() {
        let now = Instant::now();
        let mut b = Backoff::default();
        assert!(b.take_turn(now) && b.take_turn(now), "healthy: no pacing");
        b.failed(now);
        assert!(!b.take_turn(now), "right after a failure: wait");
        let at = b.retry_at.expect("a failure sets the next turn");
        assert!(at > now && at <= now + BACKOFF_START);
        assert!(b.take_turn(at), "the turn comes");
        assert!(!b.take_turn(at), "and is taken once: the next is booked");
        assert!(b.succeeded(), "ends a run of failures");
        assert!(!b.succeeded(), "nothing left to end");
        assert!(b.take_turn(at) && b.retry_at.is_none());
    }
}
