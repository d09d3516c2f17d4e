//! Real-database throughput: `SELECT 1` through vigil and the peers against
//! PostgreSQL and MariaDB, 64 tasks sharing 16 connections.
//!
//! Per server and driver, every pool lends the same driver connection, so
//! only the pool differs: PostgreSQL over tokio-postgres (`Client`; vigil's
//! default backend) and over sqlx (`sqlx::PgConnection`); MariaDB over
//! `mysql_async::Conn`, and `sqlx::MySqlConnection` for the sqlx rows. Cases:
//!
//! | pool | validation on | validation off |
//! |---|---|---|
//! | vigil | its defaults (validation `IdleFor(500 ms)`, ...): PG over tokio-postgres | — |
//! | vigil-sqlx | vigil over sqlx (PG `PgManager`, MariaDB `MySqlSqlxManager`), defaults | — |
//! | vigil-no-user-timeout (PG) | defaults over tokio-postgres but `tcp_user_timeout` off: what that default safety costs | — |
//! | vigil-no-return-ping (PG, sqlx) | defaults but `VerifyOnReturn::Never`: what that default costs | — |
//! | deadpool-postgres (PG) | the crate, `RecyclingMethod::Verified` | `RecyclingMethod::Fast` (its default) |
//! | bb8-tp (PG) | bb8 over a plain tokio-postgres `Client`, `test_on_check_out(true)` | `false` |
//! | dedicated-tp (PG) | 16 plain tokio-postgres clients, no pool | |
//! | sqlx `PgPool` / `MySqlPool` | `test_before_acquire(true)` (default) | `false` |
//! | mysql_async `Pool` (MariaDB) | reset on return (default) | `with_reset_connection(false)` |
//! | bb8 | `test_on_check_out(true)` (default): a ping | `false` |
//! | deadpool | a ping in `recycle` (like `RecyclingMethod::Verified`) | only the driver's cheap flag (like `Fast`) |
//! | dedicated | 16 connections, no pool: task `i` locks connection `i % 16` | |
//!
//! Every pool is sized 16 and pre-warmed (16 connections open before the clock
//! starts), then 64 tasks on a 2-worker runtime share `VIGIL_BENCH_QUERIES`
//! queries (default 20,000): claim one, time `get` + query + drop, repeat.
//! Runs are interleaved (every case once, then again, every other round in
//! reverse order) so load from elsewhere falls on all cases alike; queries/s is the median run, latency percentiles
//! are over all runs (acquire included).
//!
//! The targets are judged on **paired blocks** instead (see
//! [`measure_blocks`]): per server, vigil and the pools its targets name are
//! all open at once in one runtime, and each block runs `VIGIL_BENCH_BLOCK_QUERIES`
//! (2,000) queries through each of them back to back; vigil's queries/s ÷ a
//! peer's within each block, over `VIGIL_BENCH_BLOCKS` (200) blocks, gives
//! the median, and the medians of batches of 10 blocks its interval. A
//! target is met when every interval it names clears its bar, not met when
//! one lies below it, and not shown when one holds it.
//!
//! Run: `cargo bench --features postgres,mysql,sqlx-mysql,tokio-postgres --bench realdb`.
//! Environment: `VIGIL_BENCH_QUERIES` (20000), `VIGIL_BENCH_RUNS` (15; 0
//! runs the blocks alone), `VIGIL_BENCH_BLOCKS` (200; 0: none),
//! `VIGIL_BENCH_BLOCK_QUERIES` (2000),
//! `VIGIL_BENCH_POOLS` (comma list of pool names, default all),
//! `VIGIL_BENCH_SERVERS` (`pg,mariadb`), `VIGIL_BENCH_VALIDATION` (`on,off`),
//! `VIGIL_BENCH_PG_URL`
//! (`postgres://postgres@127.0.0.1:5432/test`), `VIGIL_BENCH_MYSQL_URL`
//! (`mysql://root@127.0.0.1:3306/test`). A complete (unfiltered) run writes
//! `target/bench-realdb.json` for BENCHMARKS.md. `cargo test --benches
//! --features postgres,mysql,sqlx-mysql` runs every case once, briefly, as a
//! smoke test (and writes nothing).
//!
//! TLS is off for every client (sqlx `ssl_mode(Disable)`, mysql_async has
//! none configured) and mysql_async uses `prefer_socket(false)`, so every
//! MariaDB pool talks plain TCP to 127.0.0.1, like the sqlx one.
//!
//! Here: the cases, the workload and `main`. In `benches/support/`: the
//! pools and their builders (`realdb_pools.rs`) and the table and JSON
//! (`realdb_report.rs`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::postgres::PgConnection;

#[path = "support/common.rs"]
mod common;
use common::{env_list, env_or, runtime, target_dir, Span, WORKERS};
#[path = "support/drivers.rs"]
mod drivers;
use drivers::TpConn;
#[path = "support/servers.rs"]
mod servers;
use servers::Server;
#[path = "support/realdb_pools.rs"]
mod realdb_pools;
use realdb_pools::{
    bb8_pool, deadpool_pool, deadpool_postgres_natural, deadpool_postgres_pool, dedicated, my_opts,
    mysql_async_pool, pg_options, sqlx_mysql_options, sqlx_pool, tp_config, vigil_maria, vigil_pg,
    vigil_pg_no_return_ping, vigil_sqlx_maria, vigil_tp, vigil_tp_natural,
    vigil_tp_no_user_timeout, Target,
};
#[path = "support/paired.rs"]
mod paired;
#[path = "support/realdb_report.rs"]
mod realdb_report;
use realdb_report::{judged, report};

const POOL_SIZE: usize = 16;
const TASKS: usize = 64;
/// A query that takes longer than this counts as an error (a stuck pool
/// must not stall the bench).
const QUERY_DEADLINE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ the cases

type Build = fn() -> BoxFuture<'static, Arc<dyn Target>>;

/// One pool in one configuration against one server.
struct Case {
    pool: &'static str,
    server: Server,
    /// Checkout validation (or, for mysql_async, reset on return) on.
    validation: bool,
    /// What "validation" means for this pool, for the table's footnotes.
    detail: &'static str,
    build: Build,
}

fn all_cases() -> Vec<Case> {
    use Server::{Maria, Pg};
    type Conn = mysql_async::Conn;
    let case = |pool, server, validation, detail, build: Build| Case {
        pool,
        server,
        validation,
        detail,
        build,
    };
    vec![
        case(
            "vigil",
            Pg,
            true,
            "vigil's defaults, over tokio-postgres (TokioPgManager)",
            vigil_tp,
        ),
        case(
            "vigil-sqlx",
            Pg,
            true,
            "vigil's defaults, over sqlx (PgManager: a ping on every return)",
            vigil_pg,
        ),
        case(
            "bb8-tp",
            Pg,
            true,
            "over tokio-postgres, test_on_check_out(true)",
            || bb8_pool::<TpConn>(tp_config(), true),
        ),
        case(
            "bb8-tp",
            Pg,
            false,
            "over tokio-postgres, test_on_check_out(false)",
            || bb8_pool::<TpConn>(tp_config(), false),
        ),
        case(
            "deadpool-postgres",
            Pg,
            true,
            "RecyclingMethod::Verified: is_closed, then an empty query",
            || deadpool_postgres_pool(deadpool_postgres::RecyclingMethod::Verified),
        ),
        case(
            "deadpool-postgres",
            Pg,
            false,
            "RecyclingMethod::Fast: is_closed only (its default)",
            || deadpool_postgres_pool(deadpool_postgres::RecyclingMethod::Fast),
        ),
        case(
            "vigil-natural",
            Pg,
            true,
            "vigil's defaults over tokio-postgres, queried as services write it: `SELECT $1::int4` through `prepare_cached` (issue 28)",
            vigil_tp_natural,
        ),
        case(
            "deadpool-postgres-natural",
            Pg,
            false,
            "RecyclingMethod::Fast, queried as services write it: `SELECT $1::int4` through its `prepare_cached`",
            deadpool_postgres_natural,
        ),
        case(
            "vigil-no-user-timeout",
            Pg,
            true,
            "vigil's defaults over tokio-postgres but tcp_user_timeout=0 (off; not a default)",
            vigil_tp_no_user_timeout,
        ),
        case(
            "dedicated-tp",
            Pg,
            false,
            "16 tokio-postgres connections as the driver opens them, no pool",
            || dedicated::<TpConn>(tp_config()),
        ),
        case(
            "vigil-no-return-ping",
            Pg,
            true,
            "vigil's defaults but verify_on_return(VerifyOnReturn::Never) (not a default)",
            vigil_pg_no_return_ping,
        ),
        case(
            "sqlx",
            Pg,
            true,
            "test_before_acquire(true), default",
            || sqlx_pool::<sqlx::Postgres>(pg_options(), true),
        ),
        case("sqlx", Pg, false, "test_before_acquire(false)", || {
            sqlx_pool::<sqlx::Postgres>(pg_options(), false)
        }),
        case("bb8", Pg, true, "test_on_check_out(true), default", || {
            bb8_pool::<PgConnection>(pg_options(), true)
        }),
        case("bb8", Pg, false, "test_on_check_out(false)", || {
            bb8_pool::<PgConnection>(pg_options(), false)
        }),
        case("deadpool", Pg, true, "ping in recycle (Verified)", || {
            deadpool_pool::<PgConnection>(pg_options(), true)
        }),
        case("deadpool", Pg, false, "no ping in recycle (Fast)", || {
            deadpool_pool::<PgConnection>(pg_options(), false)
        }),
        case("dedicated", Pg, false, "16 connections, no pool", || {
            dedicated::<PgConnection>(pg_options())
        }),
        case("vigil", Maria, true, "vigil's defaults", vigil_maria),
        case(
            "vigil-sqlx",
            Maria,
            true,
            "vigil over sqlx::MySqlConnection, vigil's defaults",
            vigil_sqlx_maria,
        ),
        case(
            "sqlx",
            Maria,
            true,
            "test_before_acquire(true), default",
            || sqlx_pool::<sqlx::MySql>(sqlx_mysql_options(), true),
        ),
        case("sqlx", Maria, false, "test_before_acquire(false)", || {
            sqlx_pool::<sqlx::MySql>(sqlx_mysql_options(), false)
        }),
        case(
            "mysql_async",
            Maria,
            true,
            "reset on return, default",
            || mysql_async_pool(true),
        ),
        case(
            "mysql_async",
            Maria,
            false,
            "with_reset_connection(false)",
            || mysql_async_pool(false),
        ),
        case(
            "bb8",
            Maria,
            true,
            "test_on_check_out(true), default",
            || bb8_pool::<Conn>(my_opts(), true),
        ),
        case("bb8", Maria, false, "test_on_check_out(false)", || {
            bb8_pool::<Conn>(my_opts(), false)
        }),
        case(
            "deadpool",
            Maria,
            true,
            "ping in recycle (Verified)",
            || deadpool_pool::<Conn>(my_opts(), true),
        ),
        case(
            "deadpool",
            Maria,
            false,
            "no ping in recycle (Fast)",
            || deadpool_pool::<Conn>(my_opts(), false),
        ),
        case("dedicated", Maria, false, "16 connections, no pool", || {
            dedicated::<Conn>(my_opts())
        }),
    ]
}

// ------------------------------------------------------------------ the workload

struct RunResult {
    queries_per_sec: f64,
    /// Per successful query, get + query + drop, in ns.
    latencies: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// One run: a fresh runtime and a fresh, pre-warmed pool, then
/// [`workload`].
fn run_once(case: &Case, queries: u64) -> RunResult {
    let rt = runtime();
    let result = rt.block_on(async {
        let target = (case.build)().await;
        target.warm(POOL_SIZE).await;
        // Let pools that return in a task (sqlx's release ping, mysql_async's
        // reset) settle before the clock starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let result = workload(&target, queries).await;
        target.close().await;
        result
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `TASKS` tasks share `queries` queries through `target`: claim one, time
/// `get` + query + drop, repeat. The clock runs from the moment the first
/// task starts until the last one finishes ([`Span`]).
async fn workload(target: &Arc<dyn Target>, queries: u64) -> RunResult {
    let left = Arc::new(AtomicU64::new(queries));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let span = Arc::new(Span::new());
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let (target, left, errors, start, span) = (
                Arc::clone(target),
                Arc::clone(&left),
                Arc::clone(&errors),
                Arc::clone(&start),
                Arc::clone(&span),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(queries as usize / TASKS * 2 + 16);
                let mut first_error = None;
                start.wait().await;
                span.start();
                while left
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let t = Instant::now();
                    let outcome = tokio::time::timeout(QUERY_DEADLINE, target.query(task))
                        .await
                        .unwrap_or_else(|_| Err("no answer within 30 s".into()));
                    match outcome {
                        Ok(()) => latencies.push(t.elapsed().as_nanos() as u64),
                        Err(e) => {
                            errors.fetch_add(1, Relaxed);
                            first_error.get_or_insert(e);
                        }
                    }
                }
                span.end();
                (latencies, first_error)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(queries as usize);
    let mut first_error = None;
    for h in handles {
        let (l, e) = h.await.expect("bench task");
        latencies.extend(l);
        first_error = first_error.or(e);
    }
    let errors = errors.load(Relaxed);
    RunResult {
        queries_per_sec: (queries - errors) as f64 / span.elapsed().as_secs_f64(),
        latencies,
        errors,
        first_error,
    }
}

/// Every run of one case.
struct Cell {
    case: Case,
    runs: Vec<f64>,
    /// Queries/s in each paired block (see [`measure_blocks`]); empty when
    /// the case is not one the targets name.
    blocks: Vec<f64>,
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Cell {
    fn median(&self) -> f64 {
        paired::median(&self.runs)
    }

    fn micros(&self, q: f64) -> f64 {
        self.latencies.value_at_quantile(q) as f64 / 1_000.0
    }
}

fn measure(cases: Vec<Case>, queries: u64, runs: usize) -> Vec<Cell> {
    let mut cells: Vec<Cell> = cases
        .into_iter()
        .map(|case| Cell {
            case,
            runs: Vec::new(),
            blocks: Vec::new(),
            latencies: Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram"),
            errors: 0,
            first_error: None,
        })
        .collect();
    // Interleaved: every case once, then again, in reverse order every
    // other round, so a machine that drifts within a round does not always
    // favour the cases that run first (vigil's MariaDB row runs first of
    // its server's, the peers' later).
    for run in 0..runs {
        let mut order: Vec<usize> = (0..cells.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for &i in &order {
            let cell = &mut cells[i];
            let r = run_once(&cell.case, queries);
            for l in &r.latencies {
                cell.latencies.saturating_record((*l).max(1));
            }
            eprintln!(
                "realdb/{}/{}/{} run {}: {:.0} queries/s{}",
                cell.case.server.name(),
                cell.case.pool,
                if cell.case.validation { "on" } else { "off" },
                run + 1,
                r.queries_per_sec,
                if r.errors > 0 {
                    format!(", {} errors", r.errors)
                } else {
                    String::new()
                }
            );
            cell.runs.push(r.queries_per_sec);
            cell.errors += r.errors;
            if cell.first_error.is_none() {
                cell.first_error = r.first_error;
            }
        }
    }
    cells
}

/// The paired blocks the targets are judged on. Per server, vigil and the
/// pools its targets name ([`judged`]: the peers over vigil's driver with
/// validation off, and the dedicated connections) are built in one runtime
/// and all kept open and warm; then each block runs the workload once
/// through each of them, `queries` queries apiece, back to back, in an
/// order that rotates from block to block (and runs backwards every other
/// lap), so no pool always follows the same one.
///
/// Why blocks, beside the interleaved runs above: a fresh runtime and pool
/// per run adds noise of its own (where 16 new server sessions land, how a
/// new runtime's workers are placed), and runs half a second apart see
/// different machines (queries/s drifts over seconds). Within a block the
/// pools are a fraction of a second apart on the same runtime and the same
/// server sessions, so the ratio of two of them in one block carries far
/// less of the machine's noise than a ratio of two runs does, and many
/// short blocks give a narrow interval for its median.
fn measure_blocks(cells: &mut [Cell], queries: u64, blocks: usize) {
    for server in [Server::Pg, Server::Maria] {
        let members: Vec<usize> = (0..cells.len())
            .filter(|&i| cells[i].case.server == server && judged(&cells[i].case))
            .collect();
        let has_vigil = members.iter().any(|&i| cells[i].case.pool == "vigil");
        if members.len() < 2 || !has_vigil || blocks == 0 {
            continue;
        }
        let rt = runtime();
        rt.block_on(async {
            let mut targets = Vec::with_capacity(members.len());
            for &i in &members {
                let target = (cells[i].case.build)().await;
                target.warm(POOL_SIZE).await;
                targets.push(target);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = members.len();
            for block in 0..blocks {
                let mut order: Vec<usize> = (0..n).map(|k| (block + k) % n).collect();
                if (block / n) % 2 == 1 {
                    order.reverse();
                }
                for k in order {
                    let r = workload(&targets[k], queries).await;
                    let cell = &mut cells[members[k]];
                    eprintln!(
                        "realdb/{}/{} block {}: {:.0} queries/s",
                        server.name(),
                        cell.case.pool,
                        block + 1,
                        r.queries_per_sec
                    );
                    cell.blocks.push(r.queries_per_sec);
                    cell.errors += r.errors;
                    if cell.first_error.is_none() {
                        cell.first_error = r.first_error;
                    }
                }
            }
            for target in &targets {
                target.close().await;
            }
        });
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

// ------------------------------------------------------------------ main

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let bench = argv.iter().any(|a| a == "--bench");
    let pools = env_list("VIGIL_BENCH_POOLS");
    let servers = env_list("VIGIL_BENCH_SERVERS");
    let validation = env_list("VIGIL_BENCH_VALIDATION");
    let every = all_cases().len();
    let cases: Vec<Case> = all_cases()
        .into_iter()
        .filter(|c| pools.as_ref().is_none_or(|p| p.iter().any(|p| p == c.pool)))
        .filter(|c| {
            servers
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| s == c.server.name()))
        })
        .filter(|c| {
            let v = if c.validation { "on" } else { "off" };
            validation.as_ref().is_none_or(|l| l.iter().any(|l| l == v))
        })
        .collect();
    if argv.iter().any(|a| a == "--list") {
        for c in &cases {
            let v = if c.validation { "on" } else { "off" };
            println!("realdb/{}/{}/{v}: bench", c.server.name(), c.pool);
        }
        return;
    }
    // Without `--bench` (`cargo test --benches`): every case once, briefly.
    if !bench {
        let mut cells = measure(cases, 500, 1);
        measure_blocks(&mut cells, 500, 2);
        report(&cells, 500, 1, (500, 2));
        return;
    }
    let queries = env_or("VIGIL_BENCH_QUERIES", 20_000u64).max(TASKS as u64);
    let runs = env_or("VIGIL_BENCH_RUNS", 15usize);
    let blocks = env_or("VIGIL_BENCH_BLOCKS", 200usize);
    let block_queries = env_or("VIGIL_BENCH_BLOCK_QUERIES", 2_000u64).max(TASKS as u64);
    let complete = cases.len() == every && runs > 0 && blocks > 0;
    let mut cells = measure(cases, queries, runs);
    measure_blocks(&mut cells, block_queries, blocks);
    let (rows, targets) = report(&cells, queries, runs, (block_queries, blocks));
    if !complete {
        println!("\nnot writing bench-realdb.json: not every case ran in this invocation");
        return;
    }
    let report = json!({
        "note": "2 workers on a machine shared with the servers; absolute numbers move between runs: compare ratios within one run",
        "tasks": TASKS,
        "pool_size": POOL_SIZE,
        "workers": WORKERS,
        "queries_per_run": queries,
        "runs": runs,
        "block_queries": block_queries,
        "blocks": blocks,
        "cases": rows,
        "targets": targets,
    });
    let path = target_dir().join("bench-realdb.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .expect("write bench-realdb.json");
    println!("\nwrote {}", path.display());
}
