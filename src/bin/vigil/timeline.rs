//! `vigil load`'s timeline: once per `--sample-every` (1 s by default) a
//! sample of what happened in that interval (requests, errors, latency and
//! acquire-wait quantiles, the pool's idle/active/pending, connections
//! opened and closed by reason), and markers for the tool's own events
//! (a burst starts, an idle gap starts, a kill round killed n sessions).
//! Both go into `--json` (`timeline`, `events`) and the HTML report.
//!
//! Workers record each request's latency into one of a few window
//! histograms (two significant digits: 1 % error is plenty for a chart);
//! the sampler drains them every interval, so no histogram grows with the
//! run's length.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// Window histogram pairs (worker `i` records into `i % WINDOWS`).
const WINDOWS: usize = 16;

/// One interval of the run. Field names are the JSON keys; times in seconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// The interval's end, since the run started.
    pub(crate) t: f64,
    /// Requests that finished in the interval (succeeded or failed).
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// Quantiles over the interval's successful requests (`null`: none).
    pub(crate) latency_p50: Option<f64>,
    pub(crate) latency_p99: Option<f64>,
    /// The p99 of `get()` over the interval (`null`: no `get()` ended).
    pub(crate) acquire_p99: Option<f64>,
    /// The pool at the interval's end.
    pub(crate) idle: usize,
    pub(crate) active: usize,
    pub(crate) pending: usize,
    /// Connections opened in the interval.
    pub(crate) created: u64,
    /// Connections closed in the interval, by reason (only reasons that occurred).
    pub(crate) closed: BTreeMap<&'static str, u64>,
}

impl Sample {
    /// Takes in the interval right after this one.
    pub(crate) fn absorb(&mut self, next: Sample) {
        self.t = next.t;
        self.requests += next.requests;
        self.errors += next.errors;
        self.latency_p50 = self.latency_p50.or(next.latency_p50);
        self.latency_p99 = larger(self.latency_p99, next.latency_p99);
        self.acquire_p99 = larger(self.acquire_p99, next.acquire_p99);
        (self.idle, self.active, self.pending) = (next.idle, next.active, next.pending);
        self.created += next.created;
        for (reason, n) in next.closed {
            *self.closed.entry(reason).or_default() += n;
        }
    }
}

/// The larger of two optional quantiles (an upper bound of the merged one).
fn larger(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A marker of the tool's own doing.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    /// Since the run started.
    pub(crate) t: f64,
    /// `burst` (its number in `count`), `idle_gap` or `kill` (sessions
    /// killed by that round in `count`).
    pub(crate) kind: &'static str,
    pub(crate) count: Option<u64>,
}

struct Window {
    latency: Histogram<u64>,
    acquire: Histogram<u64>,
}

fn window_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("constant, valid histogram bounds")
}

/// The timeline's shared part: the clock's zero, the events, the windows.
pub(crate) struct Timeline {
    start: Instant,
    events: Mutex<Vec<Event>>,
    windows: Arc<[Mutex<Window>]>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            start: Instant::now(),
            events: Mutex::default(),
            windows: (0..WINDOWS)
                .map(|_| {
                    Mutex::new(Window {
                        latency: window_histogram(),
                        acquire: window_histogram(),
                    })
                })
                .collect(),
        }
    }
}

impl Timeline {
    pub(crate) fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Marks an event of the tool's at this moment.
    pub(crate) fn mark(&self, kind: &'static str, count: Option<u64>) {
        let t = self.now();
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Event { t, kind, count });
    }

    /// One request of worker `worker`: its `get()` wait, and its whole
    /// latency if it succeeded (µs).
    pub(crate) fn record(&self, worker: usize, acquire_us: u64, latency_us: Option<u64>) {
        let mut w = self.windows[worker % WINDOWS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        w.acquire.saturating_record(acquire_us.max(1));
        if let Some(l) = latency_us {
            w.latency.saturating_record(l.max(1));
        }
    }

    /// The events so far.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Empties every window into one pair.
    pub(crate) fn drain(&self) -> (Histogram<u64>, Histogram<u64>) {
        let (mut latency, mut acquire) = (window_histogram(), window_histogram());
        for w in self.windows.iter() {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds on every histogram: adding cannot fail.
            let _ = latency.add(&w.latency);
            let _ = acquire.add(&w.acquire);
            w.latency.reset();
            w.acquire.reset();
        }
        (latency, acquire)
    }
}
