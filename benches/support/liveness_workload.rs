//! The workloads of `benches/liveness.rs`: one case on a fresh runtime
//! through a fresh counting proxy ([`run_case`]), the bursts, and the hot
//! kill with its admin connection. Included by `#[path]` from that bench
//! only; the shapes, sizes and cases are its own.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use sqlx::postgres::PgConnectOptions;

use crate::common::runtime;
use crate::liveness_pools::Target;
use crate::servers::{mysql_url, pg_url, Server};
use crate::wire::{start_proxy, Wire};
use crate::{Case, KillShape, Shape, Workload, ERROR_SAMPLES, QUERY_DEADLINE, TASKS};

/// The real server's address, for the proxy.
fn upstream(server: Server) -> String {
    match server {
        Server::Pg => {
            let o = PgConnectOptions::from_str(&pg_url()).expect("VIGIL_BENCH_PG_URL parses");
            format!("{}:{}", o.get_host(), o.get_port())
        }
        Server::Maria => {
            let o =
                mysql_async::Opts::from_url(&mysql_url()).expect("VIGIL_BENCH_MYSQL_URL parses");
            format!("{}:{}", o.ip_or_hostname(), o.tcp_port())
        }
    }
}

pub struct Outcome {
    pub ok: u64,
    /// Errors per burst; for the hot kill, per phase: phase 0 is before the
    /// first kill, phase `i` from kill `i` to the next.
    pub errors_per_phase: Vec<u64>,
    /// Hot kill: the sessions each kill terminated.
    pub killed: Vec<u64>,
    pub samples: Vec<String>,
    pub connections: u64,
    pub commands: u64,
    pub pings: u64,
    pub resets: u64,
    pub handshake: u64,
    pub setup: u64,
    /// The workload's own time (the bursts' gaps included), for queries/s.
    pub busy: f64,
    pub seconds: f64,
}

impl Outcome {
    pub fn errors(&self) -> u64 {
        self.errors_per_phase.iter().sum()
    }

    pub fn round_trips_per_query(&self) -> f64 {
        self.commands as f64 / self.ok.max(1) as f64
    }

    /// Hot kill: the most errors after any one kill (phase 0 included).
    pub fn max_errors_per_kill(&self) -> u64 {
        self.errors_per_phase.iter().copied().max().unwrap_or(0)
    }
}

/// Errors seen by the tasks, each with the phase it fell in.
type Errors = Vec<(usize, String)>;

/// One case on a fresh runtime, through a fresh proxy.
pub fn run_case(case: &Case, workload: Workload) -> Outcome {
    let rt = runtime();
    let began = Instant::now();
    let outcome = rt.block_on(async {
        let wire = Arc::new(Wire::default());
        let proxy = start_proxy(case.server, upstream(case.server), Arc::clone(&wire)).await;
        let target = (case.build)(proxy).await;
        let started = Instant::now();
        let (ok, errors, phases, killed) = match workload {
            Workload::Bursts(shape) => bursts(&target, shape).await,
            Workload::HotKill(shape) => hot_kill(case.server, &target, &wire, shape).await,
        };
        let busy = started.elapsed().as_secs_f64();
        let mut errors_per_phase = vec![0; phases];
        let mut samples: Vec<String> = Vec::new();
        for (phase, e) in errors {
            errors_per_phase[phase.min(phases - 1)] += 1;
            let e: String = e.chars().take(200).collect();
            if samples.len() < ERROR_SAMPLES && !samples.contains(&e) {
                samples.push(e);
            }
        }
        // Let work the last queries started on return (sqlx's release ping,
        // mysql_async's reset) reach the wire before it is read.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let w = &wire;
        let outcome = Outcome {
            ok,
            errors_per_phase,
            killed,
            samples,
            connections: Wire::get(&w.connections),
            commands: Wire::get(&w.commands),
            pings: Wire::get(&w.pings),
            resets: Wire::get(&w.resets),
            handshake: Wire::get(&w.handshake),
            setup: Wire::get(&w.setup),
            busy,
            seconds: 0.0,
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), target.close()).await;
        outcome
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    Outcome {
        seconds: began.elapsed().as_secs_f64(),
        ..outcome
    }
}

/// One query through the pool, bounded by `QUERY_DEADLINE`.
async fn query(target: &dyn Target) -> Result<(), String> {
    match tokio::time::timeout(QUERY_DEADLINE, target.query()).await {
        Ok(result) => result,
        Err(_) => Err("no answer within 30 s".into()),
    }
}

/// Bursts with idle gaps: (queries ok, errors by burst, bursts, no kills).
async fn bursts(target: &Arc<dyn Target>, shape: Shape) -> (u64, Errors, usize, Vec<u64>) {
    let mut ok = 0;
    let mut errors = Vec::new();
    for burst in 0..shape.bursts {
        if burst > 0 {
            tokio::time::sleep(shape.gap).await;
        }
        let left = Arc::new(AtomicU64::new(shape.queries_per_burst));
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                let (target, left) = (Arc::clone(target), Arc::clone(&left));
                tokio::spawn(async move {
                    let (mut ok, mut errors) = (0u64, Vec::new());
                    while left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        match query(&*target).await {
                            Ok(()) => ok += 1,
                            Err(e) => errors.push((burst, e)),
                        }
                    }
                    (ok, errors)
                })
            })
            .collect();
        for h in handles {
            let (o, e) = h.await.expect("bench task");
            ok += o;
            errors.extend(e);
        }
    }
    (ok, errors, shape.bursts, Vec::new())
}

/// Queries back to back while an admin connection terminates every session
/// of the pool once per `shape.every`: (queries ok, errors by phase,
/// phases, sessions terminated per kill).
async fn hot_kill(
    server: Server,
    target: &Arc<dyn Target>,
    wire: &Arc<Wire>,
    shape: KillShape,
) -> (u64, Errors, usize, Vec<u64>) {
    let mut admin = Admin::connect(server).await;
    let start = tokio::time::Instant::now();
    let stop = start + shape.length;
    let phase = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..TASKS)
        .map(|_| {
            let (target, phase) = (Arc::clone(target), Arc::clone(&phase));
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u64, Vec::new());
                while tokio::time::Instant::now() < stop {
                    match query(&*target).await {
                        Ok(()) => ok += 1,
                        Err(e) => errors.push((phase.load(Ordering::Acquire), e)),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    let mut killed = Vec::new();
    let mut at = start + shape.every / 2;
    while at < stop {
        tokio::time::sleep_until(at).await;
        let ports = wire.ports.lock().expect("ports").clone();
        // The phase turns before the kill is sent: an error it causes
        // cannot be counted against the previous one.
        phase.fetch_add(1, Ordering::AcqRel);
        killed.push(admin.kill(&ports).await);
        at += shape.every;
    }
    let (mut ok, mut errors) = (0, Vec::new());
    for h in handles {
        let (o, e) = h.await.expect("bench task");
        ok += o;
        errors.extend(e);
    }
    let phases = killed.len() + 1;
    (ok, errors, phases, killed)
}

/// A connection to the server itself (not through the proxy), for kills.
enum Admin {
    Pg(tokio_postgres::Client),
    Maria(mysql_async::Conn),
}

impl Admin {
    async fn connect(server: Server) -> Admin {
        match server {
            Server::Pg => {
                let (client, connection) =
                    tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
                        .await
                        .expect("admin connection to PostgreSQL");
                tokio::spawn(connection);
                Admin::Pg(client)
            }
            Server::Maria => {
                let opts =
                    mysql_async::Opts::from_url(&mysql_url()).expect("VIGIL_BENCH_MYSQL_URL");
                let conn = mysql_async::Conn::new(opts)
                    .await
                    .expect("admin connection to MariaDB");
                Admin::Maria(conn)
            }
        }
    }

    /// Terminates the sessions whose client port is one of `ports`; how
    /// many it terminated.
    async fn kill(&mut self, ports: &[u16]) -> u64 {
        if ports.is_empty() {
            return 0;
        }
        match self {
            Admin::Pg(client) => {
                let ports: Vec<i32> = ports.iter().map(|p| i32::from(*p)).collect();
                let row = client
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                         FROM pg_stat_activity WHERE client_port = ANY($1)",
                        &[&ports],
                    )
                    .await
                    .expect("pg_terminate_backend");
                row.get::<_, i64>(0) as u64
            }
            Admin::Maria(conn) => {
                let list = ports
                    .iter()
                    .map(|p| format!("'{p}'"))
                    .collect::<Vec<_>>()
                    .join(",");
                let ids: Vec<u64> = conn
                    .query(format!(
                        "SELECT ID FROM information_schema.PROCESSLIST \
                         WHERE SUBSTRING_INDEX(HOST, ':', -1) IN ({list})"
                    ))
                    .await
                    .expect("PROCESSLIST");
                let mut killed = 0;
                for id in ids {
                    // A session that ended meanwhile is "unknown thread id".
                    if conn
                        .query_drop(format!("KILL CONNECTION {id}"))
                        .await
                        .is_ok()
                    {
                        killed += 1;
                    }
                }
                killed
            }
        }
    }
}
