//! Pool-core overhead: vigil beside bb8, deadpool, mobc and r2d2, each over
//! the same no-op manager (connect and validate are instant), so only the
//! pool's own bookkeeping is measured. Three groups in one binary:
//!
//! - `uncontended` (criterion): one task, `get` + drop, per pool; r2d2 in a
//!   plain synchronous loop.
//! - `metrics_overhead` (criterion): vigil alone, then vigil registered in a
//!   `vigil::metrics::Metrics` exporter that a background task scrapes (text
//!   encoding) every 10 ms.
//! - `contended` (own harness, criterion has no throughput-with-percentiles):
//!   2 tokio workers, pool of 8, N tasks each looping get / `yield_now` /
//!   drop until a shared total of cycles is done; cycles/s and the time spent
//!   inside `get().await` (p50, p99, max).
//!
//! Run: `cargo bench --features metrics --bench core` (quick:
//! `... -- --warm-up-time 1 --measurement-time 2`). `-- ^contended` runs the
//! contended group alone, `-- '^contended/vigil/256$'` one cell of it,
//! `-- '^(uncontended|metrics)'` skips it (see [`Filter`]).
//! Environment: `VIGIL_BENCH_CYCLES` (contended cycles per run, default
//! 200000), `VIGIL_BENCH_RUNS` (runs per pool and task count, default 3).
//!
//! A complete (unfiltered) run writes `target/bench-core.json`, all three
//! groups, for BENCHMARKS.md. `cargo test --benches --features metrics`
//! runs every bench once, briefly, as a smoke test.
//!
//! Settings: every pool is sized 8 and pre-warmed (8 connections open before
//! anything is measured, so connect is never on the measured path); apart
//! from that each keeps its defaults, written down at its builder in
//! `benches/support/core_pools.rs` (with the no-op manager); the tables and
//! JSON are in `benches/support/core_report.rs`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::runtime::Runtime;

#[path = "support/common.rs"]
mod common;
use common::{env_or, runtime, target_dir, Span, WORKERS};
#[path = "support/core_pools.rs"]
mod core_pools;
use core_pools::{BenchPool, Noop};
#[path = "support/core_report.rs"]
mod core_report;
#[path = "support/paired.rs"]
mod paired;
use core_report::{criterion_dir, print_contended, print_metrics, print_uncontended};

const POOL_SIZE: usize = 8;
const TASK_COUNTS: [usize; 3] = [16, 256, 1024];
const SCRAPE_EVERY: Duration = Duration::from_millis(10);

// ------------------------------------------------------------------ uncontended

fn uncontended(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("uncontended");
    group.throughput(Throughput::Elements(1));
    // The measured loop is one task on a worker; tasks a pool spawns
    // (vigil's housekeeper, mobc's check-in) share the 2 workers with it.
    bench_async::<vigil::Pool<Noop>>(&mut group, &rt);
    bench_async::<bb8::Pool<Noop>>(&mut group, &rt);
    bench_async::<deadpool::managed::Pool<Noop>>(&mut group, &rt);
    bench_async::<mobc::Pool<Noop>>(&mut group, &rt);

    // r2d2 is synchronous: a plain loop on the bench thread. Defaults:
    // test_on_check_out = true (an instant `is_valid`), min_idle = max_size
    // (so `build` opens all 8), 3 helper threads, connection_timeout 30 s.
    let pool = r2d2::Pool::builder()
        .max_size(POOL_SIZE as u32)
        .build(Noop)
        .expect("r2d2 build");
    group.bench_function("r2d2", |b| {
        b.iter(|| black_box(pool.get().expect("r2d2 get").0))
    });
    group.finish();
}

fn bench_async<P: BenchPool>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
) {
    let pool = rt.block_on(P::warm());
    group.bench_function(P::NAME, |b| {
        b.iter_custom(|iters| cycles_in_task(rt, &pool, iters))
    });
    // Dropped inside the runtime: some pools spawn their shutdown.
    rt.block_on(async move { drop(pool) });
}

/// `iters` get + drop cycles in one task on a worker thread, as a request
/// handler would run them (criterion's `to_async` would run them in
/// `block_on` on the bench thread instead, outside the workers, where every
/// task a pool spawns must wake a worker across threads). The spawn is paid
/// once per sample, not per cycle.
fn cycles_in_task<P: BenchPool>(rt: &Runtime, pool: &P, iters: u64) -> Duration {
    let pool = pool.clone();
    rt.block_on(rt.spawn(async move {
        let began = Instant::now();
        for _ in 0..iters {
            black_box(pool.checkout().await.0);
        }
        began.elapsed()
    }))
    .expect("bench task")
}

// ------------------------------------------------------------------ metrics overhead

fn metrics_overhead(c: &mut Criterion) -> u64 {
    let rt = runtime();
    let mut group = c.benchmark_group("metrics_overhead");
    group.throughput(Throughput::Elements(1));

    let plain = rt.block_on(<vigil::Pool<Noop>>::warm());
    group.bench_function("plain", |b| {
        b.iter_custom(|iters| cycles_in_task(&rt, &plain, iters))
    });
    rt.block_on(async move { drop(plain) });

    let pool = rt.block_on(<vigil::Pool<Noop>>::warm());
    let metrics = vigil::metrics::Metrics::new();
    metrics.add(&pool);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let scrapes = Arc::new(AtomicU64::new(0));
    let scraper = {
        let scrapes = Arc::clone(&scrapes);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(SCRAPE_EVERY);
            let mut text = String::new();
            loop {
                tick.tick().await;
                text.clear();
                prometheus_client::encoding::text::encode(&mut text, &registry)
                    .expect("encode metrics");
                black_box(text.len());
                scrapes.fetch_add(1, Relaxed);
            }
        })
    };
    group.bench_function("scraped_every_10ms", |b| {
        b.iter_custom(|iters| cycles_in_task(&rt, &pool, iters))
    });
    scraper.abort();
    rt.block_on(async move { drop(pool) });
    group.finish();
    scrapes.load(Relaxed)
}

// ------------------------------------------------------------------ contended

/// One contended run: cycles/s and every wait inside `get().await`, in ns.
struct RunResult {
    cycles_per_sec: f64,
    waits: Vec<u64>,
}

/// `tasks` tasks share `cycles` get / yield / drop cycles on a fresh runtime
/// and a fresh, pre-warmed pool; the clock runs from the moment the first
/// task starts until the last one finishes ([`Span`]).
fn contended_run<P: BenchPool>(tasks: usize, cycles: u64) -> RunResult {
    let rt = runtime();
    let result = rt.block_on(async {
        let pool = P::warm().await;
        let left = Arc::new(AtomicU64::new(cycles));
        let start = Arc::new(tokio::sync::Barrier::new(tasks));
        let span = Arc::new(Span::new());
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (pool, left, start, span) = (
                    pool.clone(),
                    Arc::clone(&left),
                    Arc::clone(&start),
                    Arc::clone(&span),
                );
                tokio::spawn(async move {
                    let mut waits = Vec::with_capacity((cycles as usize / tasks) * 2 + 16);
                    start.wait().await;
                    span.start();
                    // Claim one cycle of the shared total; none left ends the task.
                    while left
                        .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        let t = Instant::now();
                        let conn = pool.checkout().await;
                        waits.push(t.elapsed().as_nanos() as u64);
                        black_box(conn.0);
                        tokio::task::yield_now().await;
                        drop(conn);
                    }
                    span.end();
                    waits
                })
            })
            .collect();
        let mut waits = Vec::with_capacity(cycles as usize);
        for h in handles {
            waits.extend(h.await.expect("bench task"));
        }
        let elapsed = span.elapsed();
        drop(pool);
        RunResult {
            cycles_per_sec: cycles as f64 / elapsed.as_secs_f64(),
            waits,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    assert_eq!(result.waits.len() as u64, cycles, "every cycle recorded");
    result
}

/// Every run of one pool at one task count.
struct Cell {
    pool: &'static str,
    tasks: usize,
    runs: Vec<f64>,
    waits: Histogram<u64>,
}

impl Cell {
    fn median(&self) -> f64 {
        paired::median(&self.runs)
    }

    fn micros(&self, q: f64) -> f64 {
        self.waits.value_at_quantile(q) as f64 / 1_000.0
    }
}

fn contended(cycles: u64, runs: usize, filter: &Filter) -> Vec<Cell> {
    type Run = fn(usize, u64) -> RunResult;
    let pools: [(&str, Run); 4] = [
        ("vigil", contended_run::<vigil::Pool<Noop>>),
        ("bb8", contended_run::<bb8::Pool<Noop>>),
        ("deadpool", contended_run::<deadpool::managed::Pool<Noop>>),
        ("mobc", contended_run::<mobc::Pool<Noop>>),
    ];
    let mut cells: Vec<Cell> = Vec::new();
    for &tasks in &TASK_COUNTS {
        for &(pool, _) in &pools {
            if !filter.contended(pool, tasks) {
                continue;
            }
            cells.push(Cell {
                pool,
                tasks,
                runs: Vec::new(),
                waits: Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram"),
            });
        }
    }
    // Runs are interleaved (every pool once, then again) so a burst of load
    // from elsewhere on the machine falls on all pools alike.
    for run in 0..runs {
        for cell in cells.iter_mut() {
            let f = pools.iter().find(|p| p.0 == cell.pool).expect("pool").1;
            let r = f(cell.tasks, cycles);
            for w in &r.waits {
                cell.waits.saturating_record((*w).max(1));
            }
            eprintln!(
                "contended/{}/{} run {}: {:.0} cycles/s",
                cell.pool,
                cell.tasks,
                run + 1,
                r.cycles_per_sec
            );
            cell.runs.push(r.cycles_per_sec);
        }
    }
    cells
}

// ------------------------------------------------------------------ main

/// Criterion's command line, read only for what the contended group needs:
/// the mode, and the name filter.
struct Args {
    bench: bool,
    list: bool,
    filter: Filter,
}

/// Criterion's filter is a regex over `group/bench`; the contended group
/// (`contended/<pool>/<tasks>`) honours the simple cases without a regex
/// engine: none (everything), a prefix of `contended` (all of it),
/// `contended/...` (the cells whose name starts so; a trailing `$` asks for
/// the exact name), anything else (none of it, as for `^uncontended`).
/// A leading `^` is ignored.
struct Filter(Option<String>);

impl Filter {
    fn contended(&self, pool: &str, tasks: usize) -> bool {
        let Some(f) = &self.0 else {
            return true;
        };
        let name = format!("contended/{pool}/{tasks}");
        match f.strip_suffix('$') {
            Some(exact) => name == exact || "contended" == exact,
            None => name.starts_with(f.as_str()) || "contended".starts_with(f.as_str()),
        }
    }

    fn any_contended(&self) -> bool {
        TASK_COUNTS.iter().any(|&t| {
            ["vigil", "bb8", "deadpool", "mobc"]
                .iter()
                .any(|p| self.contended(p, t))
        })
    }
}

fn args() -> Args {
    // Criterion 0.5 options that take a value (their value is not a filter).
    const WITH_VALUE: [&str; 19] = [
        "--color",
        "-c",
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--plotting-backend",
        "--output-format",
        "--format",
    ];
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut filter = None;
    let mut skip = false;
    for a in &argv {
        if skip {
            skip = false;
        } else if WITH_VALUE.contains(&a.as_str()) {
            skip = true;
        } else if !a.starts_with('-') {
            filter = Some(a.trim_start_matches('^').to_owned());
        }
    }
    Args {
        bench: argv.iter().any(|a| a == "--bench"),
        list: argv.iter().any(|a| a == "--list"),
        filter: Filter(filter),
    }
}

/// `VIGIL_BENCH_INSTRUCTIONS=<pool>:<cycles>[:<tasks>]`: warm the pool, run
/// that many get + drop cycles (uncontended, or shared by `tasks` tasks on
/// a pool of 8) on a current-thread runtime, and exit,
/// for `valgrind --tool=callgrind` (instruction counts are stable on a
/// noisy machine, where times are not). `scripts/instructions` runs it at
/// two cycle counts and prints the difference per cycle.
fn instructions(spec: &str) {
    /// `n` get + drop cycles shared by `tasks` tasks; with more tasks than
    /// connections, each cycle goes through the waiters' queue, and a
    /// `yield_now` while holding lets the others queue up.
    async fn cycles<P: BenchPool>(n: u64, tasks: usize) {
        let pool = P::warm().await;
        if tasks <= 1 {
            for _ in 0..n {
                let guard = pool.checkout().await;
                black_box(&*guard);
            }
            return;
        }
        let left = Arc::new(AtomicU64::new(n));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (pool, left) = (pool.clone(), Arc::clone(&left));
            set.spawn(async move {
                while left
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let guard = pool.checkout().await;
                    tokio::task::yield_now().await;
                    black_box(&*guard);
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
    let mut parts = spec.split(':');
    let (pool, n, tasks) = (parts.next(), parts.next(), parts.next());
    let pool = pool.expect("VIGIL_BENCH_INSTRUCTIONS=<pool>:<cycles>[:<tasks>]");
    let n: u64 = n.and_then(|n| n.parse().ok()).expect("a cycle count");
    let tasks: usize = tasks.map_or(1, |t| t.parse().expect("a task count"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        match pool {
            "vigil" => cycles::<vigil::Pool<Noop>>(n, tasks).await,
            "bb8" => cycles::<bb8::Pool<Noop>>(n, tasks).await,
            "deadpool" => cycles::<deadpool::managed::Pool<Noop>>(n, tasks).await,
            other => panic!("no pool {other} (vigil, bb8, deadpool)"),
        }
    });
}

fn main() {
    if let Ok(spec) = std::env::var("VIGIL_BENCH_INSTRUCTIONS") {
        return instructions(&spec);
    }
    let args = args();
    let since = SystemTime::now();
    let mut criterion = Criterion::default()
        .output_directory(&criterion_dir())
        .configure_from_args();
    uncontended(&mut criterion);
    let scrapes = metrics_overhead(&mut criterion);
    criterion.final_summary();

    if args.list {
        for tasks in TASK_COUNTS {
            for pool in ["vigil", "bb8", "deadpool", "mobc"] {
                if args.filter.contended(pool, tasks) {
                    println!("contended/{pool}/{tasks}: bench");
                }
            }
        }
        return;
    }
    // Without `--bench` (`cargo test --benches`) criterion runs each bench
    // once as a test; the contended group does the same: one short run, no report.
    if !args.bench {
        if args.filter.any_contended() {
            print_contended(&contended(2_000, 1, &args.filter), 2_000, 1);
        }
        return;
    }
    let uncontended = print_uncontended(since);
    let metrics = print_metrics(since, scrapes);
    let cycles = env_or("VIGIL_BENCH_CYCLES", 200_000u64).max(1);
    let runs = env_or("VIGIL_BENCH_RUNS", 3usize).max(1);
    let contended = if args.filter.any_contended() {
        print_contended(&contended(cycles, runs, &args.filter), cycles, runs)
    } else {
        Vec::new()
    };
    // Only a complete run replaces the report, so a filtered or profiling
    // run never leaves BENCHMARKS.md's source half empty.
    let complete =
        uncontended.len() == 5 && !metrics.is_null() && contended.len() == TASK_COUNTS.len() * 4;
    if !complete {
        println!("\nnot writing bench-core.json: not every bench ran in this invocation");
        return;
    }
    let report = json!({
        "note": "no-op manager; absolute numbers depend on the machine and its load: compare ratios within one run",
        "pool_size": POOL_SIZE,
        "workers": WORKERS,
        "contended_cycles_per_run": cycles,
        "contended_runs": runs,
        "uncontended": uncontended,
        "metrics_overhead": metrics,
        "contended": contended,
    });
    let path = target_dir().join("bench-core.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .expect("write bench-core.json");
    println!("\nwrote {}", path.display());
}
