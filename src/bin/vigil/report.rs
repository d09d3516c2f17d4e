//! The load report: gathered once at the end, printed for people on stdout
//! and written as JSON with `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use vigil::State;

use crate::human_secs;

/// Latencies are recorded in microseconds, from 1 µs to an hour, with three
/// significant digits (0.1 % error).
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

/// Quantiles of request latency, in seconds.
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// Quantiles of the time `get()` took, in seconds.
#[derive(Debug, Serialize)]
pub(crate) struct Acquire {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

fn secs(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e6
}

impl Latency {
    pub(crate) fn from(h: &Histogram<u64>) -> Self {
        Latency {
            p50: secs(h, 0.5),
            p90: secs(h, 0.9),
            p99: secs(h, 0.99),
            max: h.max() as f64 / 1e6,
        }
    }
}

impl Acquire {
    pub(crate) fn from(h: &Histogram<u64>) -> Self {
        Acquire {
            p50: secs(h, 0.5),
            p99: secs(h, 0.99),
            max: h.max() as f64 / 1e6,
        }
    }
}

/// Checkout validations, from the pool's counters.
#[derive(Debug, Serialize)]
pub(crate) struct Validations {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) skipped: u64,
    /// Checkout pings still silent at the hedge delay, whose caller was
    /// served a new connection instead (the ping's outcome is counted in
    /// `ok` or `failed` only if it ends before the pool closes).
    pub(crate) hedged: u64,
}

/// Everything `vigil load` reports. Field names are the JSON keys.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) backend: &'static str,
    /// The driver under the pool: `tokio-postgres`, `sqlx` or `mysql_async`.
    pub(crate) driver: &'static str,
    /// `host:port/db` (never credentials).
    pub(crate) target: String,
    pub(crate) query: String,
    pub(crate) pool_size: usize,
    pub(crate) concurrency: usize,
    pub(crate) bursts: u32,
    pub(crate) idle_gap_seconds: f64,
    pub(crate) session_idle_timeout_seconds: Option<f64>,
    pub(crate) kill_idle_every_seconds: Option<f64>,
    /// Requests started (each one `get()` plus the query).
    pub(crate) requests: u64,
    /// Requests that failed, in `get()` or in the query.
    pub(crate) errors: u64,
    /// The first few error messages (password removed).
    pub(crate) error_samples: Vec<String>,
    /// Wall time of the whole run, idle gaps included.
    pub(crate) elapsed_seconds: f64,
    /// Time spent in bursts (the run less its idle gaps).
    pub(crate) busy_seconds: f64,
    /// `requests / busy_seconds`.
    pub(crate) throughput_per_s: f64,
    /// Whole requests that succeeded: `get()`, the query, the return.
    pub(crate) latency_seconds: Latency,
    /// `get()` alone, every call.
    pub(crate) acquire_seconds: Acquire,
    pub(crate) connections_created: u64,
    /// By reason, every reason listed (zeros included). Read before the
    /// pool is closed at the end, so `closed` counts only closes during the run.
    pub(crate) connections_closed: BTreeMap<&'static str, u64>,
    pub(crate) connections_open_at_end: usize,
    pub(crate) connect_errors: u64,
    pub(crate) acquire_timeouts: u64,
    pub(crate) validations: Validations,
    /// The server idle timeout the pool read from its newest session.
    pub(crate) server_idle_timeout_seconds: Option<f64>,
    /// Sessions killed by `--kill-idle-every`.
    pub(crate) killed_idle: u64,
    /// Kill rounds that failed (the first message is in `kill_error`).
    pub(crate) kill_failures: u64,
    pub(crate) kill_error: Option<String>,
    /// Stopped early by Ctrl-C.
    pub(crate) interrupted: bool,
    /// The timeline's interval (`--sample-every`).
    pub(crate) sample_every_seconds: f64,
    /// One sample per interval; see `timeline.rs` for the fields.
    pub(crate) timeline: Vec<crate::timeline::Sample>,
    /// The tool's own events: bursts, idle gaps, kill rounds.
    pub(crate) events: Vec<crate::timeline::Event>,
}

/// The pool's counters, as the report shows them.
pub(crate) struct PoolFigures {
    pub(crate) created: u64,
    pub(crate) closed: BTreeMap<&'static str, u64>,
    pub(crate) open: usize,
    pub(crate) connect_errors: u64,
    pub(crate) acquire_timeouts: u64,
    pub(crate) validations: Validations,
    pub(crate) server_idle_timeout: Option<f64>,
}

impl PoolFigures {
    pub(crate) fn from(state: &State) -> Self {
        PoolFigures {
            created: state.created,
            closed: state.closed.iter().map(|(r, n)| (r.as_str(), n)).collect(),
            open: state.open,
            connect_errors: state.connect_errors,
            acquire_timeouts: state.acquire_timeouts,
            validations: Validations {
                ok: state.validations_ok,
                failed: state.validations_failed,
                skipped: state.validations_skipped,
                hedged: state.validations_hedged,
            },
            server_idle_timeout: state.server_idle_timeout.flatten().map(|d| d.as_secs_f64()),
        }
    }
}

impl Report {
    /// The report for people, one fact per line.
    pub(crate) fn human(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, text: String| {
            let _ = writeln!(out, "{label:<14}{text}");
        };
        line(
            "vigil load",
            format!(
                "{} ({}) {}, pool {}, {} workers, query {:?}{}",
                self.backend,
                self.driver,
                self.target,
                self.pool_size,
                self.concurrency,
                self.query,
                if self.interrupted {
                    " (interrupted)"
                } else {
                    ""
                }
            ),
        );
        if self.bursts > 1 {
            line(
                "bursts",
                format!(
                    "{} with {} idle gaps",
                    self.bursts,
                    human_secs(self.idle_gap_seconds)
                ),
            );
        }
        line(
            "requests",
            format!(
                "{} in {} (busy {}): {:.0} req/s",
                self.requests,
                human_secs(self.elapsed_seconds),
                human_secs(self.busy_seconds),
                self.throughput_per_s
            ),
        );
        line("errors", self.errors.to_string());
        for sample in &self.error_samples {
            line("", format!("- {sample}"));
        }
        let l = &self.latency_seconds;
        line(
            "latency",
            format!(
                "p50 {}  p90 {}  p99 {}  max {}",
                human_secs(l.p50),
                human_secs(l.p90),
                human_secs(l.p99),
                human_secs(l.max)
            ),
        );
        let a = &self.acquire_seconds;
        line(
            "acquire wait",
            format!(
                "p50 {}  p99 {}  max {}",
                human_secs(a.p50),
                human_secs(a.p99),
                human_secs(a.max)
            ),
        );
        let closed: Vec<String> = self
            .connections_closed
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        line(
            "connections",
            format!(
                "created {}, open at end {}, closed {}",
                self.connections_created,
                self.connections_open_at_end,
                if closed.is_empty() {
                    "none".to_owned()
                } else {
                    closed.join(", ")
                }
            ),
        );
        let v = &self.validations;
        line(
            "validations",
            format!(
                "{} pinged ok, {} failed, {} skipped (used within the bypass window)",
                v.ok, v.failed, v.skipped
            ),
        );
        if let Some(t) = self.server_idle_timeout_seconds {
            line(
                "server idle",
                format!("timeout {} (read from the sessions)", human_secs(t)),
            );
        }
        if self.connect_errors > 0 || self.acquire_timeouts > 0 {
            line(
                "failures",
                format!(
                    "{} connect errors, {} acquire timeouts",
                    self.connect_errors, self.acquire_timeouts
                ),
            );
        }
        if let Some(every) = self.kill_idle_every_seconds {
            line(
                "idle kills",
                format!("{} (a round every {})", self.kills(), human_secs(every)),
            );
        }
        out
    }

    fn kills(&self) -> String {
        let mut text = self.killed_idle.to_string();
        if self.kill_failures > 0 {
            let _ = write!(
                text,
                " ({} rounds failed: {})",
                self.kill_failures,
                self.kill_error.as_deref().unwrap_or("?")
            );
        }
        text
    }
}
