//! Soak: vigil under mixed load and random faults for a long run (default
//! 10 minutes), against private PostgreSQL and MariaDB instances (started
//! into temp dirs on free ports, like the fault suite's), each behind a
//! fault proxy. Prints one table at the end; RELIABILITY.md quotes it.
//!
//! ```sh
//! cargo run --release --features postgres,mysql,tokio-postgres --example soak             # 10 minutes
//! cargo run --release --features postgres,mysql,tokio-postgres --example soak -- --minutes 1
//! ```
//!
//! Both servers are soaked at once, each by 64 tasks on a pool of 8. The
//! run is a sequence of episodes; each picks a fault at random and runs
//! load for 4–12 s before it and 8 s after it:
//!
//! | fault | what happens | errors a caller may see |
//! |---|---|---|
//! | `reset` | every link reset (RST) under load | queries in flight at the reset |
//! | `idle_reset` | load stops, 3 s idle, every link reset, load resumes | none |
//! | `black_hole` | every open link answers nothing from now on | queries in flight (they hang up to 5 s) |
//! | `latency` | 40 ms added per chunk for 3 s | none |
//! | `outage` | new connects refused and every link reset, for 2 s | queries in flight |
//! | `restart` | the server is stopped cleanly and started again | queries in flight |
//! | `crash` | the server is killed (SIGKILL / `-m immediate`) and started again | queries in flight |
//!
//! "Dead connections lent" counts failed queries on connections lent 100 ms
//! or more after the fault began (and, for `idle_reset`, every failure):
//! the pool had time to know. Not part of CI: the fault suite
//! (`tests/faults`) runs each scenario once there.

#[allow(dead_code)]
#[path = "../tests/faults/db.rs"]
mod db;
#[allow(dead_code)]
#[path = "../tests/faults/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../tests/faults/proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../tests/faults/servers.rs"]
mod servers;
// Its own `#![allow(dead_code, …)]` covers what the soak does not use.
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{builder, check_settled, Db, Load, Maria, Pg, Records, Report, MS, SEC, THINK};
use proxy::Proxy;
use rand::Rng;
use servers::{blocking, PrivateMaria, PrivatePg, Restartable};
use vigil::Pool;

/// Failed queries on connections lent this long after a fault count as dead lends.
const GRACE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Reset,
    IdleReset,
    BlackHole,
    Latency,
    Outage,
    Restart,
    Crash,
}

const FAULTS: [Fault; 7] = [
    Fault::Reset,
    Fault::IdleReset,
    Fault::BlackHole,
    Fault::Latency,
    Fault::Outage,
    Fault::Restart,
    Fault::Crash,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Reset => "reset",
            Fault::IdleReset => "idle_reset",
            Fault::BlackHole => "black_hole",
            Fault::Latency => "latency",
            Fault::Outage => "outage",
            Fault::Restart => "restart",
            Fault::Crash => "crash",
        }
    }
}

/// What one fault kind did to one server over the run.
#[derive(Debug, Default, Clone)]
struct Tally {
    episodes: u64,
    requests: u64,
    errors: u64,
    in_flight: u64,
    dead_lent: u64,
    worst_recovery: Option<Duration>,
    never_recovered: u64,
    samples: Vec<String>,
}

impl Tally {
    /// `fault_at`: when the fault began; `lifted`: when it ended (the
    /// server back, the outage over; the same instant for one-shot faults).
    fn add(&mut self, recs: &Records, fault_at: Instant, lifted: Instant, fault: Fault) {
        self.episodes += 1;
        self.requests += recs.requests();
        self.errors += recs.errors();
        let dead = if fault == Fault::IdleReset {
            recs.query_errors()
        } else {
            recs.query_errors_lent_after(fault_at + GRACE)
        };
        self.dead_lent += dead;
        self.in_flight += recs.query_errors() - dead;
        // Recovery: from the fault's end until a request that started
        // after it was served. (Errors are counted above, not here: a query
        // hung on a black-holed link ends only at its own 5 s bound.)
        let served = recs
            .0
            .iter()
            .filter(|r| r.ok() && r.started >= lifted)
            .map(|r| r.done)
            .min();
        match served {
            Some(t) => {
                let took = t.saturating_duration_since(lifted);
                self.worst_recovery = Some(self.worst_recovery.map_or(took, |w| w.max(took)));
            }
            None => self.never_recovered += 1,
        }
        for e in recs.sample_errors() {
            if self.samples.len() < 3 && !self.samples.contains(&e) {
                self.samples.push(e);
            }
        }
    }
}

/// Runs episodes against one server until `until`; returns the tally per fault.
async fn soak<D: Db, S: Restartable>(
    db: D,
    server: Arc<S>,
    until: Instant,
) -> (BTreeMap<Fault, Tally>, Vec<String>) {
    let proxy = Proxy::start(db.server()).await;
    let pool: Pool<D::M> = builder(&db, proxy.addr()).build().expect("valid settings");
    let mut tallies: BTreeMap<Fault, Tally> = BTreeMap::new();
    while Instant::now() < until {
        let (fault, calm) = {
            let mut rng = rand::rng();
            let fault = FAULTS[rng.random_range(0..FAULTS.len())];
            (
                fault,
                Duration::from_millis(rng.random_range(4_000..12_000)),
            )
        };
        let load = Load::start::<D>(&pool, THINK);
        tokio::time::sleep(calm).await;
        let (recs, fault_at, lifted) = match fault {
            Fault::IdleReset => {
                let before = load.stop().await;
                tokio::time::sleep(3 * SEC).await;
                proxy.reset_all().await;
                let fault_at = Instant::now();
                let load = Load::start::<D>(&pool, THINK);
                tokio::time::sleep(5 * SEC).await;
                let mut recs = load.stop().await;
                // Failures before the idle gap are not this fault's.
                recs.0.retain(|r| r.started >= fault_at);
                drop(before);
                (recs, fault_at, fault_at)
            }
            _ => {
                let fault_at = Instant::now();
                inject(fault, &proxy, &server).await;
                let lifted = Instant::now();
                // Long enough for a query hung on a black-holed link
                // (QUERY_BOUND, 5 s) to end and the pool to be seen serving.
                tokio::time::sleep(8 * SEC).await;
                // The episode's calm part counts too (its requests and any
                // error); recovery and dead lends are measured from the fault.
                (load.stop().await, fault_at, lifted)
            }
        };
        tallies
            .entry(fault)
            .or_default()
            .add(&recs, fault_at, lifted, fault);
        println!(
            "soak: {:<8} {:<10} {:>6} requests, {} errors",
            D::SERVER,
            fault.name(),
            recs.requests(),
            recs.errors()
        );
    }
    // After the last episode: quiet pool, server sessions == open, counts add up.
    let mut report = Report::new::<D>("soak");
    check_settled(&db, &pool, &mut report).await;
    let failed = report.print();
    let s = pool.state();
    let mut end = vec![format!(
        "{}: settled afterwards: {}",
        D::SERVER,
        if failed.is_empty() {
            "yes (pool quiet, server sessions == open, created - closed == open)".to_owned()
        } else {
            format!("NO: {}", failed.join("; "))
        }
    )];
    end.push(format!(
        "{}: {} connections opened, {} connect errors, closed by reason [{}], {} validations ok / {} failed / {} skipped",
        D::SERVER,
        s.created,
        s.connect_errors,
        s.closed
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{} {n}", r.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
        s.validations_ok,
        s.validations_failed,
        s.validations_skipped
    ));
    pool.close().await;
    (tallies, end)
}

async fn inject<S: Restartable>(fault: Fault, proxy: &Proxy, server: &Arc<S>) {
    match fault {
        Fault::Reset => {
            proxy.reset_all().await;
        }
        Fault::BlackHole => {
            proxy.black_hole_all();
        }
        Fault::Latency => {
            proxy.set_latency(40 * MS);
            tokio::time::sleep(3 * SEC).await;
            proxy.set_latency(Duration::ZERO);
        }
        Fault::Outage => {
            proxy.set_refuse(true);
            proxy.reset_all().await;
            tokio::time::sleep(2 * SEC).await;
            proxy.set_refuse(false);
        }
        Fault::Restart => {
            blocking(server, S::stop).await;
            blocking(server, S::start).await;
        }
        Fault::Crash => {
            blocking(server, S::crash).await;
            blocking(server, S::start).await;
        }
        Fault::IdleReset => unreachable!("handled by the episode"),
    }
}

fn minutes_from_args() -> Result<f64, String> {
    let mut args = std::env::args().skip(1);
    let mut minutes = 10.0;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--minutes" => {
                let v = args.next().ok_or("--minutes needs a value")?;
                minutes = v
                    .parse::<f64>()
                    .ok()
                    .filter(|m| *m > 0.0)
                    .ok_or_else(|| format!("--minutes: `{v}` is not a positive number"))?;
            }
            other => return Err(format!("unknown argument `{other}` (try --minutes 10)")),
        }
    }
    Ok(minutes)
}

fn print_table(rows: &[(&str, BTreeMap<Fault, Tally>)]) {
    println!();
    println!("| fault | server | episodes | requests | errors reaching callers | of which in flight at the fault | dead connections lent | worst recovery after the fault ended (ms) |");
    println!("|---|---|--:|--:|--:|--:|--:|--:|");
    for fault in FAULTS {
        for (server, tallies) in rows {
            let Some(t) = tallies.get(&fault) else {
                continue;
            };
            let recovery = match (t.worst_recovery, t.never_recovered) {
                (_, n) if n > 0 => format!("never ({n}×)"),
                (Some(d), _) => d.as_millis().to_string(),
                (None, _) => "-".into(),
            };
            println!(
                "| {} | {server} | {} | {} | {} | {} | {} | {recovery} |",
                fault.name(),
                t.episodes,
                t.requests,
                t.errors,
                t.in_flight,
                t.dead_lent
            );
        }
    }
    println!();
    for (server, tallies) in rows {
        for (fault, t) in tallies {
            if !t.samples.is_empty() {
                println!("- {server} / {}: {:?}", fault.name(), t.samples);
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let minutes = match minutes_from_args() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(minutes * 60.0);
    println!("soak: starting private PostgreSQL and MariaDB; {minutes} min of load and faults");
    let pg = Arc::new(
        tokio::task::spawn_blocking(PrivatePg::start)
            .await
            .expect("start the private PostgreSQL"),
    );
    let maria = Arc::new(
        tokio::task::spawn_blocking(PrivateMaria::start)
            .await
            .expect("start the private MariaDB"),
    );
    let pg_db = Pg::private(pg.port(), "soak");
    let maria_db = Maria::private(maria.port(), "soak").await;
    let pg_run = tokio::spawn(soak(pg_db, Arc::clone(&pg), until));
    let maria_run = tokio::spawn(soak(maria_db, Arc::clone(&maria), until));
    // Ctrl-C: end both soaks, so that their handles on the private
    // servers drop, then stop the servers and remove their temp dirs.
    let aborts = [pg_run.abort_handle(), maria_run.abort_handle()];
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("soak: interrupted; stopping the private servers");
            for a in &aborts {
                a.abort();
            }
        }
    });
    let (pg_run, maria_run) = (pg_run.await, maria_run.await);
    if [&pg_run, &maria_run]
        .iter()
        .any(|r| r.as_ref().is_err_and(|e| e.is_cancelled()))
    {
        drop((pg, maria));
        std::process::exit(130);
    }
    let (pg_tallies, pg_end) = pg_run.expect("the PostgreSQL soak panicked");
    let (maria_tallies, maria_end) = maria_run.expect("the MariaDB soak panicked");
    print_table(&[("mariadb", maria_tallies), ("postgres", pg_tallies)]);
    println!();
    for line in maria_end.iter().chain(&pg_end) {
        println!("{line}");
    }
    println!(
        "soak: {:.1} min, vigil {} ({}), 64 tasks / pool of 8 per server",
        started.elapsed().as_secs_f64() / 60.0,
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}
