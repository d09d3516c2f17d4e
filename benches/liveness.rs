//! Liveness: how many errors reach callers when the server kills
//! connections, and how many round trips each pool spends per query.
//!
//! Two workloads, every pool and mode in each:
//!
//! - **Bursts.** Each session's idle timeout is 2 s, set per session (never
//!   `SET GLOBAL`: other tests share the servers): PostgreSQL through the
//!   startup option `idle_session_timeout=2s`; MariaDB by `SET SESSION
//!   wait_timeout=2` after each connect (mysql_async `init`, or `setup` for
//!   mysql_async's own pool, whose `COM_RESET_CONNECTION` on return would
//!   otherwise put the session back on the global timeout; sqlx
//!   `after_connect`). Pool 8, 8 tasks, 5 bursts of 200 `SELECT 1` (the
//!   tasks share each burst's queries), 3.5 s apart, so every idle
//!   connection is dead by the next burst.
//! - **Hot kill.** Pool 8, 8 tasks querying back to back for 8 s while an
//!   admin connection (straight to the server) terminates every session of
//!   the pool once a second, half a second in (PostgreSQL
//!   `pg_terminate_backend`, MariaDB `KILL CONNECTION`; the pool's sessions
//!   are found by the proxy's upstream ports, so nothing else on the server
//!   is touched). At most the queries in flight at a kill (8) can fail
//!   through no fault of the pool; more means a dead session was lent.
//!   Errors are counted per kill (the phase from one kill to the next).
//!
//! | pool | validation on | off |
//! |---|---|---|
//! | vigil | its defaults (the only row); PG over tokio-postgres, and over sqlx as vigil-sqlx | |
//! | deadpool-postgres (PG) | the crate, `RecyclingMethod::Verified` | `Fast` (its default) |
//! | bb8-tp (PG) | bb8 over a plain tokio-postgres `Client`, `test_on_check_out(true)` | `false` |
//! | sqlx `PgPool` / `MySqlPool` | `test_before_acquire(true)` (default) | `false` |
//! | mysql_async `Pool` (MariaDB) | reset on return (default) | `with_reset_connection(false)` |
//! | bb8 | `test_on_check_out(true)` (default): a ping | `false` |
//! | deadpool | a ping in `recycle` | only the driver's cheap flag (default-like: deadpool-postgres `Fast`) |
//! | vigil-diesel | vigil's defaults over diesel-async's connections (`DieselPgManager`, `DieselMysqlManager`) | |
//! | diesel-bb8, diesel-deadpool | diesel-async's own pools with their defaults (`RecyclingMethod::Verified`: a `SELECT 1` at checkout) | deadpool `Fast` |
//!
//! The diesel rows run diesel's `SELECT $1` (1 bound), a statement diesel
//! caches, so each query is one round trip once prepared.
//!
//! bb8 and deadpool run a small manager written here over the driver
//! connection (`sqlx::PgConnection`, `mysql_async::Conn`, tokio-postgres).
//!
//! **Errors** are failed `get`s or queries seen by the tasks (no retries).
//! **Round trips** are counted on the wire: every pool connects through a
//! counting TCP proxy in this process, which frames the client's messages
//! (PostgreSQL v3 / MySQL packets) and counts one round trip each time the
//! client speaks after the server did, i.e. each request/response exchange
//! (pipelined messages count once). Exchanges during connect/authentication
//! and the bench's own `SET SESSION wait_timeout` are counted apart; pings
//! (`COM_PING`, a lone PostgreSQL `Sync`) and resets (`COM_RESET_CONNECTION`)
//! are also counted on their own. Round trips per query = command round trips
//! (queries, pings, resets, rollbacks, the pools' own discovery queries)
//! / successful queries. No server counters are read, so other activity on
//! the servers does not disturb the figures.
//!
//! Run: `cargo bench --features postgres,mysql,sqlx-mysql,tokio-postgres,diesel-async --bench liveness`
//! (~25 s per case with both workloads, 30 cases). Environment: `VIGIL_LIVENESS_POOLS`
//! (pool names, default all), `VIGIL_LIVENESS_WORKLOADS` (`bursts,hotkill`), `VIGIL_LIVENESS_SERVERS`
//! (`pg,mariadb`), `VIGIL_BENCH_PG_URL`, `VIGIL_BENCH_MYSQL_URL` (as in
//! `realdb`). A complete run writes `target/bench-liveness.json`.
//! `cargo test --benches ...` runs each case with 2 short bursts and a 2 s
//! hot kill as a smoke test.
//!
//! Here: the shapes, the cases and `main`. In `benches/support/`: the
//! counting proxy (`wire.rs`), the pools and their builders
//! (`liveness_pools.rs`), the workloads (`liveness_workload.rs`) and the
//! tables and JSON (`liveness_report.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;
use sqlx::postgres::PgConnection;

#[path = "support/common.rs"]
mod common;
use common::{env_list, target_dir};
#[path = "support/drivers.rs"]
mod drivers;
use drivers::TpConn;
#[path = "support/servers.rs"]
mod servers;
use servers::Server;
#[path = "support/liveness_pools.rs"]
mod liveness_pools;
#[path = "support/wire.rs"]
mod wire;
use liveness_pools::{
    bb8_pool, deadpool_pool, deadpool_postgres_pool, diesel_bb8_maria, diesel_bb8_pg,
    diesel_deadpool_maria, diesel_deadpool_pg, my_opts, mysql_async_pool, pg_options, sqlx_maria,
    sqlx_pg, tp_config, vigil_diesel_maria, vigil_diesel_pg, vigil_maria, vigil_pg, vigil_tp,
    Target,
};
#[path = "support/liveness_workload.rs"]
mod liveness_workload;
use liveness_workload::run_case;
#[path = "support/liveness_report.rs"]
mod liveness_report;
use liveness_report::{report, report_hot_kill};

const POOL_SIZE: usize = 8;
const TASKS: usize = 8;
const SERVER_IDLE_TIMEOUT_S: u64 = 2;
const MYSQL_SESSION_TIMEOUT: &str = "SET SESSION wait_timeout=2";
/// A query that takes longer counts as an error (a stuck pool must not
/// stall the bench).
const QUERY_DEADLINE: Duration = Duration::from_secs(30);
/// At most this many distinct error messages are kept per case.
const ERROR_SAMPLES: usize = 3;

/// The workload's shape; `Full` for `--bench`, `Smoke` for `cargo test --benches`.
#[derive(Debug, Clone, Copy)]
struct Shape {
    bursts: usize,
    queries_per_burst: u64,
    gap: Duration,
}

const FULL: Shape = Shape {
    bursts: 5,
    queries_per_burst: 200,
    gap: Duration::from_millis(3_500),
};
const SMOKE: Shape = Shape {
    bursts: 2,
    queries_per_burst: 40,
    gap: Duration::from_millis(3_500),
};

/// The hot-kill workload: `TASKS` tasks query back to back for `length`
/// while every session of the pool is terminated from an admin connection
/// once per `every` (the first half a period in).
#[derive(Debug, Clone, Copy)]
struct KillShape {
    length: Duration,
    every: Duration,
}

const FULL_KILL: KillShape = KillShape {
    length: Duration::from_secs(8),
    every: Duration::from_secs(1),
};
const SMOKE_KILL: KillShape = KillShape {
    length: Duration::from_secs(2),
    every: Duration::from_secs(1),
};

#[derive(Debug, Clone, Copy)]
enum Workload {
    Bursts(Shape),
    HotKill(KillShape),
}

// ------------------------------------------------------------------ the cases

type Build = fn(SocketAddr) -> BoxFuture<'static, Arc<dyn Target>>;

#[derive(Clone)]
struct Case {
    pool: &'static str,
    server: Server,
    /// Checkout validation (mysql_async: reset on return) on.
    validation: bool,
    /// Whether this is the pool's default setting.
    default: bool,
    detail: &'static str,
    build: Build,
}

const VIGIL_DEFAULTS: &str = "vigil's defaults";

fn all_cases() -> Vec<Case> {
    use Server::{Maria, Pg};
    type Conn = mysql_async::Conn;
    let case = |pool, server, validation, default, detail, build: Build| Case {
        pool,
        server,
        validation,
        default,
        detail,
        build,
    };
    vec![
        case(
            "vigil",
            Pg,
            true,
            true,
            "vigil's defaults, over tokio-postgres (TokioPgManager)",
            vigil_tp,
        ),
        case(
            "vigil-sqlx",
            Pg,
            true,
            true,
            "vigil's defaults, over sqlx (PgManager: a ping on every return)",
            vigil_pg,
        ),
        case(
            "bb8-tp",
            Pg,
            true,
            true,
            "over tokio-postgres, test_on_check_out(true)",
            |p| bb8_pool::<TpConn>(tp_config(p), true),
        ),
        case(
            "bb8-tp",
            Pg,
            false,
            false,
            "over tokio-postgres, test_on_check_out(false)",
            |p| bb8_pool::<TpConn>(tp_config(p), false),
        ),
        case(
            "deadpool-postgres",
            Pg,
            true,
            false,
            "RecyclingMethod::Verified: is_closed, then an empty query",
            |p| deadpool_postgres_pool(p, deadpool_postgres::RecyclingMethod::Verified),
        ),
        case(
            "deadpool-postgres",
            Pg,
            false,
            true,
            "RecyclingMethod::Fast: is_closed only",
            |p| deadpool_postgres_pool(p, deadpool_postgres::RecyclingMethod::Fast),
        ),
        case("sqlx", Pg, true, true, "test_before_acquire(true)", |p| {
            sqlx_pg(p, true)
        }),
        case(
            "sqlx",
            Pg,
            false,
            false,
            "test_before_acquire(false)",
            |p| sqlx_pg(p, false),
        ),
        case("bb8", Pg, true, true, "test_on_check_out(true)", |p| {
            bb8_pool::<PgConnection>(pg_options(p), true)
        }),
        case("bb8", Pg, false, false, "test_on_check_out(false)", |p| {
            bb8_pool::<PgConnection>(pg_options(p), false)
        }),
        case("deadpool", Pg, true, false, "ping in recycle", |p| {
            deadpool_pool::<PgConnection>(pg_options(p), true)
        }),
        case("deadpool", Pg, false, true, "no ping in recycle", |p| {
            deadpool_pool::<PgConnection>(pg_options(p), false)
        }),
        case(
            "vigil-diesel",
            Pg,
            true,
            true,
            "vigil's defaults, diesel-async's AsyncPgConnection (DieselPgManager)",
            vigil_diesel_pg,
        ),
        case(
            "diesel-bb8",
            Pg,
            true,
            true,
            "diesel-async's bb8 pool, its defaults (RecyclingMethod::Verified, test_on_check_out)",
            |p| diesel_bb8_pg(p, true),
        ),
        case(
            "diesel-deadpool",
            Pg,
            true,
            true,
            "diesel-async's deadpool pool, its defaults (RecyclingMethod::Verified)",
            |p| diesel_deadpool_pg(p, true),
        ),
        case(
            "diesel-deadpool",
            Pg,
            false,
            false,
            "RecyclingMethod::Fast: is_broken only",
            |p| diesel_deadpool_pg(p, false),
        ),
        case("vigil", Maria, true, true, VIGIL_DEFAULTS, vigil_maria),
        case(
            "vigil-diesel",
            Maria,
            true,
            true,
            "vigil's defaults, diesel-async's AsyncMysqlConnection (DieselMysqlManager)",
            vigil_diesel_maria,
        ),
        case(
            "diesel-bb8",
            Maria,
            true,
            true,
            "diesel-async's bb8 pool, its defaults (RecyclingMethod::Verified, test_on_check_out)",
            |p| diesel_bb8_maria(p, true),
        ),
        case(
            "diesel-deadpool",
            Maria,
            true,
            true,
            "diesel-async's deadpool pool, its defaults (RecyclingMethod::Verified)",
            |p| diesel_deadpool_maria(p, true),
        ),
        case(
            "diesel-deadpool",
            Maria,
            false,
            false,
            "RecyclingMethod::Fast: is_broken only",
            |p| diesel_deadpool_maria(p, false),
        ),
        case(
            "sqlx",
            Maria,
            true,
            true,
            "test_before_acquire(true)",
            |p| sqlx_maria(p, true),
        ),
        case(
            "sqlx",
            Maria,
            false,
            false,
            "test_before_acquire(false)",
            |p| sqlx_maria(p, false),
        ),
        case("mysql_async", Maria, true, true, "reset on return", |p| {
            mysql_async_pool(p, true)
        }),
        case(
            "mysql_async",
            Maria,
            false,
            false,
            "with_reset_connection(false)",
            |p| mysql_async_pool(p, false),
        ),
        case("bb8", Maria, true, true, "test_on_check_out(true)", |p| {
            bb8_pool::<Conn>(my_opts(p), true)
        }),
        case(
            "bb8",
            Maria,
            false,
            false,
            "test_on_check_out(false)",
            |p| bb8_pool::<Conn>(my_opts(p), false),
        ),
        case("deadpool", Maria, true, false, "ping in recycle", |p| {
            deadpool_pool::<Conn>(my_opts(p), true)
        }),
        case(
            "deadpool",
            Maria,
            false,
            true,
            "is_disconnected only",
            |p| deadpool_pool::<Conn>(my_opts(p), false),
        ),
    ]
}

// ------------------------------------------------------------------ main

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let bench = argv.iter().any(|a| a == "--bench");
    let pools = env_list("VIGIL_LIVENESS_POOLS");
    let servers = env_list("VIGIL_LIVENESS_SERVERS");
    let every = all_cases().len();
    let cases: Vec<Case> = all_cases()
        .into_iter()
        .filter(|c| pools.as_ref().is_none_or(|p| p.iter().any(|p| p == c.pool)))
        .filter(|c| {
            servers
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| s == c.server.name()))
        })
        .collect();
    if argv.iter().any(|a| a == "--list") {
        for c in &cases {
            let v = if c.validation { "on" } else { "off" };
            println!("liveness/{}/{}/{v}: bench", c.server.name(), c.pool);
        }
        return;
    }
    let complete = bench && cases.len() == every;
    let workloads = env_list("VIGIL_LIVENESS_WORKLOADS");
    let wanted = |name: &str| {
        workloads
            .as_ref()
            .is_none_or(|w| w.iter().any(|w| w == name))
    };
    let (shape, kill) = if bench {
        (FULL, FULL_KILL)
    } else {
        (SMOKE, SMOKE_KILL)
    };
    let complete = complete && wanted("bursts") && wanted("hotkill");
    let mut bursts = Vec::new();
    let mut kills = Vec::new();
    for case in cases {
        for (name, workload, out) in [
            ("bursts", Workload::Bursts(shape), &mut bursts),
            ("hotkill", Workload::HotKill(kill), &mut kills),
        ] {
            if !wanted(name) {
                continue;
            }
            let o = run_case(&case, workload);
            eprintln!(
                "liveness/{name}/{}/{}/{}: {} errors, {:.2} round trips/query ({:.1} s)",
                case.server.name(),
                case.pool,
                if case.validation { "on" } else { "off" },
                o.errors(),
                o.round_trips_per_query(),
                o.seconds
            );
            out.push((case.clone(), o));
        }
    }
    let (rows, targets) = if bursts.is_empty() {
        Default::default()
    } else {
        report(&bursts, shape)
    };
    let (kill_rows, kill_targets) = if kills.is_empty() {
        Default::default()
    } else {
        report_hot_kill(&kills, kill)
    };
    if !complete {
        if bench {
            println!("\nnot writing bench-liveness.json: not every case ran in this invocation");
        }
        return;
    }
    let report = json!({
        "note": "errors and round trips do not depend on the machine's speed; round trips are counted by a TCP proxy in the bench (command exchanges after the handshake, the bench's own SET SESSION excluded)",
        "server_idle_timeout_s": SERVER_IDLE_TIMEOUT_S,
        "pool_size": POOL_SIZE,
        "tasks": TASKS,
        "bursts": shape.bursts,
        "queries_per_burst": shape.queries_per_burst,
        "gap_s": shape.gap.as_secs_f64(),
        "cases": rows,
        "targets": targets,
        "hot_kill": {
            "seconds": kill.length.as_secs_f64(),
            "kill_every_s": kill.every.as_secs_f64(),
            "pool_size": POOL_SIZE,
            "tasks": TASKS,
            "cases": kill_rows,
            "targets": kill_targets,
        },
    });
    let path = target_dir().join("bench-liveness.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .expect("write bench-liveness.json");
    println!("\nwrote {}", path.display());
}
