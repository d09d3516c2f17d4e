//! What the pool learns from its own round trips, off the hot path: the
//! idle cutoff nobody announces (`cutoff.rs` holds the rule) and how slow a
//! ping may be before a checkout hedges (`hedge.rs`). Written by pings,
//! connects and connections found broken while idle; read by the
//! housekeeper once per pass, by a checkout only when it pings, and by the
//! metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::cutoff::{Learner, Lesson, ACT_AT};
use super::TARGET;
use crate::config::{Config, Hedge, IdleCutoff};
use crate::liveness::Policy;

/// The shortest automatic hedge delay: below it, scheduler noise on a busy
/// machine would hedge healthy pings.
pub(crate) const HEDGE_FLOOR: Duration = Duration::from_millis(50);
/// The automatic hedge delay is this many times the slowest recent ping.
const HEDGE_FACTOR: u32 = 4;

#[derive(Debug, Default)]
pub(crate) struct Evidence {
    learner: Mutex<Learner>,
    /// The cutoff in force (learned or known), in ns; 0 = none. For readers
    /// that must not lock (metrics, `state()`).
    cutoff_ns: AtomicU64,
    /// The slowest recent ping, in ns, decaying by 1/8 per ping: a
    /// maximum that forgets a one-off stall after a few dozen pings.
    slow_ping_ns: AtomicU64,
    /// The last connect's duration, in ns: the hedge's yardstick before
    /// the first ping.
    last_connect_ns: AtomicU64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Each method is given the settings it reads (`Config`, the pool's
/// `Policy`): the record keeps none of its own, so the pool's shared state
/// stays as it is laid out.
impl Evidence {
    /// The idle cutoff in force: known from the settings, or learned.
    pub(crate) fn idle_cutoff(&self, config: &Config) -> Option<Duration> {
        match config.idle_cutoff {
            IdleCutoff::Off => None,
            IdleCutoff::Known(d) => Some(d),
            IdleCutoff::Learn => match self.cutoff_ns.load(Relaxed) {
                0 => None,
                n => Some(Duration::from_nanos(n)),
            },
        }
    }

    /// The policy the housekeeper sweeps with: the settings', with idle
    /// connections also pinged at 75 % of the idle cutoff in force.
    pub(crate) fn sweep_policy(&self, config: &Config, mut policy: Policy) -> Policy {
        if let Some(cutoff) = self.idle_cutoff(config) {
            let act = cutoff.mul_f64(ACT_AT);
            policy.keepalive_interval = Some(policy.keepalive_interval.map_or(act, |k| k.min(act)));
        }
        policy
    }

    /// A connection silent for `idle` turned out dead (its ping failed or
    /// went unanswered, or it was found broken while idle).
    /// `server_idle`: its server's idle timeout, which would explain it.
    pub(crate) fn idle_died(&self, config: &Config, idle: Duration, server_idle: Option<Duration>) {
        if config.idle_cutoff != IdleCutoff::Learn || server_idle.is_some_and(|t| idle >= t) {
            return;
        }
        let lesson = self.learner.lock().died(idle, Instant::now());
        self.heed(lesson);
    }

    /// A connection silent for `idle` answered a ping in `rtt`.
    pub(crate) fn idle_survived(&self, config: &Config, idle: Duration, rtt: Duration) {
        let rtt = ns(rtt);
        let decayed = |old: u64| Some(rtt.max(old - old / 8));
        let _ = self.slow_ping_ns.fetch_update(Relaxed, Relaxed, decayed);
        if config.idle_cutoff == IdleCutoff::Learn {
            let lesson = self.learner.lock().survived(idle);
            self.heed(lesson);
        }
    }

    /// A connect took `took`.
    pub(crate) fn connected_in(&self, took: Duration) {
        self.last_connect_ns.store(ns(took), Relaxed);
    }

    fn heed(&self, lesson: Lesson) {
        let cutoff_ns = &self.cutoff_ns;
        match lesson {
            Lesson::Nothing => {}
            Lesson::Learned(cutoff) => {
                cutoff_ns.store(ns(cutoff), Relaxed);
                // info, once per finding: the operator should know that
                // something on the path cuts idle connections.
                tracing::info!(
                    target: TARGET,
                    cutoff = ?cutoff,
                    pinging_at = ?cutoff.mul_f64(ACT_AT),
                    "connections idle for {cutoff:.1?} or more are being cut by something \
                     between vigil and the server; pinging idle connections at {:.1?}",
                    cutoff.mul_f64(ACT_AT)
                );
            }
            Lesson::Lowered(cutoff) => {
                cutoff_ns.store(ns(cutoff), Relaxed);
                // debug: a refinement of what was logged at info.
                tracing::debug!(target: TARGET, cutoff = ?cutoff, "learned idle cutoff lowered");
            }
            Lesson::Unlearned { was, survived } => {
                cutoff_ns.store(0, Relaxed);
                tracing::info!(
                    target: TARGET,
                    was = ?was,
                    survived = ?survived,
                    "a connection survived {survived:.1?} idle: the learned idle cutoff \
                     ({was:.1?}) no longer holds"
                );
            }
        }
    }

    /// How long a checkout waits for its ping before it hedges; `None`: never.
    pub(crate) fn hedge_delay(&self, config: &Config) -> Option<Duration> {
        let ceiling = config.validation_timeout;
        match config.hedge {
            Hedge::Off => None,
            Hedge::After(d) => Some(d.min(ceiling)),
            Hedge::Auto => {
                let yardstick = match self.slow_ping_ns.load(Relaxed) {
                    0 => Duration::from_nanos(self.last_connect_ns.load(Relaxed)),
                    n => Duration::from_nanos(n) * HEDGE_FACTOR,
                };
                Some(yardstick.max(HEDGE_FLOOR).min(ceiling))
            }
        }
    }
}
