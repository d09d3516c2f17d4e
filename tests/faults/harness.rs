//! What every scenario shares: the pool settings, the load generator that
//! records every request, and the report line.
//!
//! # What is counted
//!
//! - **requests**: `get()` + one `SELECT 1` attempts made by the load tasks.
//! - **errors**: attempts that ended in an error the caller saw: `get()`
//!   failed, or the query on a lent connection failed (or hung past
//!   [`QUERY_BOUND`]).
//! - **dead lent**: `get()` returned a connection whose first query failed
//!   with a connection error. The load's query is `SELECT 1`, which cannot
//!   fail on a live session, so every failed first query counts; scenarios
//!   that break connections *while* they are lent (a restart, a kill) count
//!   only connections lent after the fault began.
//! - **recovery**: scenario-specific, from the moment the fault was injected
//!   or lifted until the pool served again (and, where errors are expected,
//!   until they stopped); each scenario says which. Empty (`-`) when the
//!   pool never recovered during the run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use vigil::{Builder, Pool};

// The soak example (examples/soak.rs) shares this file and uses no `TokioPg`.
#[allow(unused_imports)]
pub use crate::db::{Db, Maria, Pg, TokioPg};

/// Pool size of every scenario.
pub const MAX: usize = 8;
/// Concurrent load tasks of every scenario.
pub const TASKS: usize = 64;
/// Each load task pauses this long between requests: with 64 tasks the
/// demand is still above 8 connections, without pinning both cores.
pub const THINK: Duration = Duration::from_millis(2);
/// A query on a lent connection that takes longer than this is a hang.
pub const QUERY_BOUND: Duration = Duration::from_secs(5);
pub const MS: Duration = Duration::from_millis(1);
pub const SEC: Duration = Duration::from_secs(1);

pub fn trace() {
    crate::support::db::trace();
}

// ---------------------------------------------------------------- pools

/// The settings every scenario starts from: 8 connections, every I/O the
/// pool makes bounded by 1 s, callers wait at most 5 s.
pub fn builder<D: Db>(db: &D, via: SocketAddr) -> Builder<D::M> {
    Pool::builder(db.manager(via))
        .max_size(MAX)
        .acquire_timeout(5 * SEC)
        .connect_timeout(SEC)
        .validation_timeout(SEC)
}

// ---------------------------------------------------------------- load

/// How one request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok,
    /// `get()` returned an error.
    GetErr(String),
    /// `get()` did not return within `acquire_timeout` + 2 s.
    GetHung,
    /// The query on the lent connection failed.
    QueryErr(String),
    /// The query on the lent connection did not finish within [`QUERY_BOUND`].
    QueryHung,
}

/// One request: when it started, when `get()` returned a connection, when it ended.
#[derive(Debug, Clone)]
pub struct Rec {
    pub started: Instant,
    pub lent: Option<Instant>,
    pub done: Instant,
    pub outcome: Outcome,
}

impl Rec {
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok)
    }

    /// The query on a lent connection failed or hung.
    pub fn query_failed(&self) -> bool {
        matches!(self.outcome, Outcome::QueryErr(_) | Outcome::QueryHung)
    }

    pub fn get_failed(&self) -> bool {
        matches!(self.outcome, Outcome::GetErr(_) | Outcome::GetHung)
    }
}

/// `TASKS` tasks, each looping `get()` + `SELECT 1` + return (+ `think`)
/// until stopped. A failed query's connection is returned like any other,
/// as an application that does not call `Pooled::retire` would.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Vec<Rec>>,
}

impl Load {
    pub fn start<D: Db>(pool: &Pool<D::M>, think: Duration) -> Load {
        Load::start_with::<D>(pool, TASKS, think)
    }

    /// Like [`start`](Load::start) with `tasks` tasks.
    pub fn start_with<D: Db>(pool: &Pool<D::M>, tasks_n: usize, think: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let get_bound = pool.config().acquire_timeout + 2 * SEC;
        for _ in 0..tasks_n {
            let pool = pool.clone();
            let stop = Arc::clone(&stop);
            tasks.spawn(async move {
                let mut recs = Vec::new();
                while !stop.load(SeqCst) {
                    recs.push(request::<D>(&pool, get_bound).await);
                    if think.is_zero() {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(think).await;
                    }
                }
                recs
            });
        }
        Load { stop, tasks }
    }

    /// Stops the tasks (each finishes its request) and returns every record.
    pub async fn stop(mut self) -> Records {
        self.stop.store(true, SeqCst);
        let mut all = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            all.extend(r.expect("a load task panicked"));
        }
        all.sort_by_key(|r| r.started);
        Records(all)
    }
}

pub async fn request<D: Db>(pool: &Pool<D::M>, get_bound: Duration) -> Rec {
    let started = Instant::now();
    let got = tokio::time::timeout(get_bound, pool.get()).await;
    let (lent, outcome) = match got {
        Err(_) => (None, Outcome::GetHung),
        Ok(Err(e)) => (None, Outcome::GetErr(e.to_string())),
        Ok(Ok(mut conn)) => {
            let lent = Instant::now();
            let outcome = match tokio::time::timeout(QUERY_BOUND, D::select_one(&mut conn)).await {
                Ok(Ok(())) => Outcome::Ok,
                Ok(Err(e)) => Outcome::QueryErr(e),
                Err(_) => Outcome::QueryHung,
            };
            drop(conn);
            (Some(lent), outcome)
        }
    };
    Rec {
        started,
        lent,
        done: Instant::now(),
        outcome,
    }
}

/// Every request of one load run, in start order.
pub struct Records(pub Vec<Rec>);

impl Records {
    pub fn requests(&self) -> u64 {
        self.0.len() as u64
    }

    pub fn oks(&self) -> u64 {
        self.0.iter().filter(|r| r.ok()).count() as u64
    }

    pub fn errors(&self) -> u64 {
        self.requests() - self.oks()
    }

    pub fn get_errors(&self) -> u64 {
        self.0.iter().filter(|r| r.get_failed()).count() as u64
    }

    pub fn query_errors(&self) -> u64 {
        self.0.iter().filter(|r| r.query_failed()).count() as u64
    }

    /// Failed queries on connections lent at or after `t`.
    pub fn query_errors_lent_after(&self, t: Instant) -> u64 {
        self.0
            .iter()
            .filter(|r| r.query_failed() && r.lent.is_some_and(|l| l >= t))
            .count() as u64
    }

    /// When the first request that succeeded and ended after `t` ended.
    pub fn first_ok_after(&self, t: Instant) -> Option<Instant> {
        self.0
            .iter()
            .filter(|r| r.ok() && r.done > t)
            .map(|r| r.done)
            .min()
    }

    /// When the pool had recovered from a fault at `t`: the first success
    /// after `t`, or the end of the last failed request after `t` if that is
    /// later. `None` when no request succeeded after `t` or failures went on
    /// into the last 500 ms of the run (never recovered).
    pub fn recovered_after(&self, t: Instant) -> Option<Instant> {
        let first_ok = self.first_ok_after(t)?;
        let end = self.0.iter().map(|r| r.done).max()?;
        let last_err = self
            .0
            .iter()
            .filter(|r| !r.ok() && r.done > t)
            .map(|r| r.done)
            .max();
        match last_err {
            Some(e) if e + 500 * MS > end => None,
            Some(e) => Some(e.max(first_ok)),
            None => Some(first_ok),
        }
    }

    /// The longest a `get()` took.
    pub fn longest_get(&self) -> Duration {
        self.0
            .iter()
            .map(|r| r.lent.unwrap_or(r.done) - r.started)
            .max()
            .unwrap_or_default()
    }

    /// A few distinct error messages, for the report.
    pub fn sample_errors(&self) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for r in &self.0 {
            let msg = match &r.outcome {
                Outcome::Ok => continue,
                Outcome::GetErr(e) => format!("get: {e}"),
                Outcome::GetHung => "get: hung".to_owned(),
                Outcome::QueryErr(e) => format!("query: {e}"),
                Outcome::QueryHung => "query: hung".to_owned(),
            };
            if !seen.contains(&msg) {
                seen.push(msg);
            }
            if seen.len() == 4 {
                break;
            }
        }
        seen
    }
}

// ---------------------------------------------------------------- report

/// The result of one scenario on one server: printed as one machine-readable
/// line (before any assertion fails, so a failing scenario still reports),
/// then every check is asserted.
pub struct Report {
    scenario: &'static str,
    server: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub dead_lent: u64,
    pub recovery: Option<Duration>,
    checks: Vec<(String, bool)>,
    notes: Vec<String>,
}

impl Report {
    pub fn new<D: Db>(scenario: &'static str) -> Report {
        Report {
            scenario,
            server: D::SERVER,
            requests: 0,
            errors: 0,
            dead_lent: 0,
            recovery: None,
            checks: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records a check; all are asserted in [`finish`](Report::finish).
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        self.checks.push((what.into(), ok));
    }

    /// Adds context printed with the line (and with a failure).
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Takes requests and errors from `recs` (adding to what is there).
    pub fn add(&mut self, recs: &Records) {
        self.requests += recs.requests();
        self.errors += recs.errors();
    }

    pub fn failed(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(what, _)| what.as_str())
            .collect()
    }

    /// Prints `RELIABILITY|scenario|server|requests|errors|dead_lent|recovery_ms|verdict|notes`
    /// and returns the failed checks (empty when all passed).
    pub fn print(&self) -> Vec<String> {
        let failed: Vec<String> = self.failed().into_iter().map(str::to_owned).collect();
        let recovery = self
            .recovery
            .map_or("-".to_owned(), |d| d.as_millis().to_string());
        let verdict = if failed.is_empty() {
            "pass".to_owned()
        } else {
            format!("FAIL: {}", failed.join("; "))
        };
        println!(
            "RELIABILITY|{}|{}|{}|{}|{}|{}|{}|{}",
            self.scenario,
            self.server,
            self.requests,
            self.errors,
            self.dead_lent,
            recovery,
            verdict,
            self.notes.join("; ").replace('|', "/")
        );
        failed
    }

    /// Prints the line; `Err` describes the failed checks.
    #[must_use = "pass the result to `conclude`"]
    pub fn finish(self) -> Result<(), String> {
        let failed = self.print();
        if failed.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} on {}: failed checks:\n  - {}\n  notes: {}",
            self.scenario,
            self.server,
            failed.join("\n  - "),
            self.notes.join("; ")
        ))
    }
}

/// Fails the test if any scenario failed, naming every failed check. (A
/// test runs several scenarios in sequence; each prints its line first.)
pub fn conclude(results: impl IntoIterator<Item = Result<(), String>>) {
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Waits (up to 5 s) for the pool to be quiet and for the server to list
/// exactly the sessions the pool counts open, then checks the identities
/// `state()` promises. Adds the checks to `report`.
pub async fn check_settled<D: Db>(db: &D, pool: &Pool<D::M>, report: &mut Report) {
    let deadline = Instant::now() + 5 * SEC;
    let (state, server) = loop {
        let s = pool.state();
        let server = db.sessions().await;
        let quiet = s.active == 0 && s.connecting == 0 && s.pending == 0;
        if (quiet && server == s.open as i64) || Instant::now() > deadline {
            break (s, server);
        }
        tokio::time::sleep(20 * MS).await;
    };
    report.check(
        state.active == 0 && state.connecting == 0 && state.pending == 0,
        format!(
            "pool quiet afterwards (active {}, connecting {}, pending {})",
            state.active, state.connecting, state.pending
        ),
    );
    report.check(
        server == state.open as i64,
        format!(
            "server sessions ({server}) == state().open ({}): nothing half-open",
            state.open
        ),
    );
    report.check(
        state.created - state.closed.total() == state.open as u64,
        format!(
            "created ({}) - closed ({}) == open ({})",
            state.created,
            state.closed.total(),
            state.open
        ),
    );
    report.check(
        state.idle == state.open && state.open <= MAX,
        format!("idle ({}) == open ({}) <= {MAX}", state.idle, state.open),
    );
}

/// Polls `cond` every 10 ms until it holds or `within` passes; returns how
/// long it took, or `None` if it never held.
pub async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(5 * MS).await;
    }
}
