//! `vigil load`'s sampler: once per `--sample-every` it turns the run's
//! shared counters (`live.rs`) and the pool's state into a [`Sample`] of
//! the timeline (`timeline.rs`). Kept apart from both so that the shared
//! state and the timeline's data do not depend on each other.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;
use vigil::{Manager, Pool, State};

use crate::live::Live;
use crate::timeline::Sample;

fn quantile(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e6)
}

/// What the previous sample saw, to turn counters into per-interval figures.
struct Before {
    done: u64,
    errors: u64,
    created: u64,
    closed: Vec<u64>,
}

impl Before {
    fn of(live: &Live, state: &State) -> Self {
        Before {
            done: live.done.load(Relaxed),
            errors: live.errors.load(Relaxed),
            created: state.created,
            closed: state.closed.iter().map(|(_, n)| n).collect(),
        }
    }
}

fn sample(live: &Live, state: &State, before: &Before) -> Sample {
    let (latency, acquire) = live.timeline.drain();
    let closed = state
        .closed
        .iter()
        .zip(&before.closed)
        .filter(|((_, n), was)| n > *was)
        .map(|((reason, n), was)| (reason.as_str(), n - was))
        .collect();
    Sample {
        t: live.timeline.now(),
        requests: live.done.load(Relaxed) - before.done,
        errors: live.errors.load(Relaxed) - before.errors,
        latency_p50: quantile(&latency, 0.5),
        latency_p99: quantile(&latency, 0.99),
        acquire_p99: quantile(&acquire, 0.99),
        idle: state.idle,
        active: state.active,
        pending: state.pending,
        created: state.created - before.created,
        closed,
    }
}

/// Samples every `every` until the run halts, then once more (the last,
/// partial interval).
pub(crate) async fn sample_loop<M: Manager>(
    pool: Pool<M>,
    live: Arc<Live>,
    every: Duration,
    mut halted: watch::Receiver<bool>,
) -> Vec<Sample> {
    let mut samples: Vec<Sample> = Vec::new();
    let mut before = Before::of(&live, &pool.state());
    let mut next = Instant::now() + every;
    loop {
        let stop = tokio::select! {
            () = tokio::time::sleep_until(next) => false,
            _ = halted.wait_for(|h| *h) => true,
        };
        next += every;
        let state = pool.state();
        let new = sample(&live, &state, &before);
        before = Before::of(&live, &state);
        match samples.last_mut() {
            // The run ended just after a tick: a sliver of an interval would
            // chart as a spike (a few requests over a millisecond), so it
            // joins the interval before it.
            Some(last) if stop && new.t - last.t < every.as_secs_f64() / 10.0 => last.absorb(new),
            _ => samples.push(new),
        }
        if stop {
            return samples;
        }
    }
}
