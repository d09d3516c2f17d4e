//! Idle cutoffs learned from evidence: something between vigil and the
//! server (a NAT, a load balancer, pgbouncer's `client_idle_timeout`)
//! closes connections idle past a time of its own, and nothing announces
//! it. The pool reports each connection it finds dead after idling (a
//! failed or unanswered ping, a broken flag on an idle connection) and
//! each one that proves alive after idling (a ping answered); this file
//! turns those into a cutoff. Pure: no clock, no I/O, no lock of its own
//! (the pool keeps it under a mutex, touched only on the slow paths).
//!
//! The rule:
//!
//! - Only idles of at least [`MIN_IDLE`] (2 s) count (a death sooner after
//!   use is more likely a reset, a kill or a restart than an idle cutoff).
//! - Learned: once [`NEEDED`] of the last [`WINDOW`] deaths were seen in at
//!   least two episodes (deaths [`EPISODE_GAP`] or more apart: one restart
//!   kills many idle connections at once, a cutoff kills again after every
//!   idle period), the cutoff is the shortest of their idles.
//! - Refined: a death after a shorter idle than the cutoff lowers it at
//!   once (the pool acts before the cutoff, so a death there is the
//!   evidence that it is shorter still).
//! - Unlearned: a connection that survives an idle at least as long as the
//!   cutoff proves it gone; deaths no longer than a survived idle are
//!   forgotten (the path changed since).
//!
//! The pool acts at [`ACT_AT`] of the cutoff: it pings idle connections
//! then (a keepalive, which restarts every middlebox's idle clock), and a
//! ping that fails there lowers the cutoff. From a first estimate as long
//! as the idle gaps themselves, it converges in a few gaps to within
//! `1 / ACT_AT` of the real cutoff, after which no ping fails.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Deaths after a shorter idle are not evidence of an idle cutoff: the
/// middleboxes that cut idle flows do so after tens of seconds or minutes
/// (pgbouncer's `client_idle_timeout` is set in seconds, and rarely under
/// a few); a connection found dead sooner was more likely reset, killed or
/// restarted, and a pool that learned such a cutoff would ping every idle
/// connection every second for nothing.
pub(crate) const MIN_IDLE: Duration = Duration::from_secs(2);
/// Deaths kept.
pub(crate) const WINDOW: usize = 8;
/// Deaths needed (in at least two episodes) to learn a cutoff.
pub(crate) const NEEDED: usize = 3;
/// Deaths at least this far apart belong to different episodes.
pub(crate) const EPISODE_GAP: Duration = Duration::from_secs(1);
/// The pool pings idle connections at this fraction of the cutoff.
pub(crate) const ACT_AT: f64 = 0.75;

/// What an observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lesson {
    /// Nothing.
    Nothing,
    /// A cutoff was learned (there was none).
    Learned(Duration),
    /// The cutoff was lowered to this.
    Lowered(Duration),
    /// A connection survived `survived` (at least the cutoff `was`).
    Unlearned { was: Duration, survived: Duration },
}

#[derive(Debug, Default)]
pub(crate) struct Learner {
    /// (idle, when seen) of the last deaths that count, oldest first.
    deaths: VecDeque<(Duration, Instant)>,
    cutoff: Option<Duration>,
}

impl Learner {
    /// The cutoff learned, if any.
    #[cfg(test)]
    pub(crate) fn cutoff(&self) -> Option<Duration> {
        self.cutoff
    }

    /// When the pool acts on the cutoff: this long after a connection's last I/O.
    #[cfg(test)]
    pub(crate) fn act_after(&self) -> Option<Duration> {
        self.cutoff.map(|c| c.mul_f64(ACT_AT))
    }

    /// A connection found dead after idling `idle`, seen at `at`.
    pub(crate) fn died(&mut self, idle: Duration, at: Instant) -> Lesson {
        if idle < MIN_IDLE {
            return Lesson::Nothing;
        }
        if self.deaths.len() == WINDOW {
            self.deaths.pop_front();
        }
        self.deaths.push_back((idle, at));
        match self.cutoff {
            Some(c) if idle < c => {
                self.cutoff = Some(idle);
                Lesson::Lowered(idle)
            }
            Some(_) => Lesson::Nothing,
            None if self.deaths.len() >= NEEDED && self.episodes() >= 2 => {
                let shortest = self.deaths.iter().map(|(d, _)| *d).min();
                self.cutoff = shortest;
                shortest.map_or(Lesson::Nothing, Lesson::Learned)
            }
            None => Lesson::Nothing,
        }
    }

    /// A connection proved alive after idling `idle`.
    pub(crate) fn survived(&mut self, idle: Duration) -> Lesson {
        if idle < MIN_IDLE {
            return Lesson::Nothing;
        }
        self.deaths.retain(|(d, _)| *d > idle);
        match self.cutoff {
            Some(was) if idle >= was => {
                self.cutoff = None;
                Lesson::Unlearned {
                    was,
                    survived: idle,
                }
            }
            _ => Lesson::Nothing,
        }
    }

    /// Episodes among the deaths kept: runs of deaths less than
    /// [`EPISODE_GAP`] apart.
    fn episodes(&self) -> usize {
        let mut times: Vec<Instant> = self.deaths.iter().map(|(_, at)| *at).collect();
        times.sort_unstable();
        1 + times
            .windows(2)
            .filter(|w| w[1].saturating_duration_since(w[0]) >= EPISODE_GAP)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_episode_however_large_teaches_nothing() {
        let t0 = Instant::now();
        let mut l = Learner::default();
        // A restart: every idle connection dead at once.
        for i in 0..8 {
            let at = t0 + Duration::from_millis(i * 10);
            assert_eq!(
                l.died(S * 5 + Duration::from_millis(i), at),
                Lesson::Nothing
            );
        }
        assert_eq!(l.cutoff(), None);
    }

    #[test]
    fn two_episodes_teach_the_shortest_idle_and_later_deaths_lower_it() {
        let t0 = Instant::now();
        let mut l = Learner::default();
        assert_eq!(l.died(S * 5, t0), Lesson::Nothing);
        assert_eq!(l.died(S * 6, t0), Lesson::Nothing);
        assert_eq!(l.died(S * 5, t0 + S * 10), Lesson::Learned(S * 5));
        assert_eq!(l.act_after(), Some(S * 5 * 3 / 4));
        // A keepalive at 3.75 s that fails: the cutoff is shorter still.
        let lowered = S * 15 / 4;
        assert_eq!(l.died(lowered, t0 + S * 20), Lesson::Lowered(lowered));
        assert_eq!(l.died(S * 6, t0 + S * 30), Lesson::Nothing);
        assert_eq!(l.cutoff(), Some(lowered));
    }

    #[test]
    fn short_idles_count_neither_way() {
        let t0 = Instant::now();
        let mut l = Learner::default();
        for i in 0..4 {
            assert_eq!(l.died(S / 2, t0 + S * 5 * i), Lesson::Nothing);
        }
        assert_eq!(l.cutoff(), None);
        l.died(S * 2, t0);
        l.died(S * 2, t0 + S * 5);
        l.died(S * 2, t0 + S * 10);
        assert_eq!(l.survived(S / 2), Lesson::Nothing);
        assert_eq!(l.cutoff(), Some(S * 2));
    }

    #[test]
    fn a_longer_survival_unlearns_and_forgets_the_deaths_it_contradicts() {
        let t0 = Instant::now();
        let mut l = Learner::default();
        l.died(S * 2, t0);
        l.died(S * 2, t0 + S * 5);
        assert_eq!(l.died(S * 3, t0 + S * 10), Lesson::Learned(S * 2));
        assert_eq!(
            l.survived(S * 3 / 2),
            Lesson::Nothing,
            "shorter than the cutoff"
        );
        assert_eq!(
            l.survived(S * 4),
            Lesson::Unlearned {
                was: S * 2,
                survived: S * 4
            }
        );
        assert_eq!(l.cutoff(), None);
        // Those deaths are forgotten: one more does not bring the cutoff back.
        assert_eq!(l.died(S * 5, t0 + S * 20), Lesson::Nothing);
        assert_eq!(l.cutoff(), None);
    }

    #[test]
    fn the_window_keeps_only_the_last_deaths_and_longer_ones_never_raise_the_cutoff() {
        let t0 = Instant::now();
        let mut l = Learner::default();
        for i in 0..2 * WINDOW as u32 {
            l.died(S * (30 + i), t0 + S * 5 * i);
        }
        assert_eq!(l.deaths.len(), WINDOW);
        assert_eq!(l.cutoff(), Some(S * 30));
    }
}
