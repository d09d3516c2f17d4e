//! `vigil load`: a fleet of workers sharing one pool, each looping
//! get → query → return, in one or more bursts; then a report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{watch, RwLock};
use tokio::task::JoinSet;
use tokio::time::Instant;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::{PgManager, SqliteManager};
use vigil::backend::tokio_postgres::TokioPgManager;
use vigil::Pool;

use crate::backend::{error_chain, tokio_pg, Backend, Target};
use crate::kill::{kill_loop, KillTally, Killer};
use crate::live::{micros, Amount, Live};
use crate::progress::{progress_bar, tick};
use crate::report::{self, Acquire, Latency, PoolFigures, Report};
use crate::sampler::sample_loop;
use crate::timeline::Sample;
use crate::{redact, Driver, Fail, LivenessArgs, LoadArgs};

/// The killer and how often it runs its rounds, if `--kill-idle-every` was given.
type KillPlan = Option<(Killer, Duration)>;

/// The settings of one run, checked.
struct Plan {
    backend: &'static str,
    /// The driver under the pool (`tokio-postgres`, `sqlx`, `mysql_async`).
    driver: &'static str,
    target: String,
    sql: Arc<str>,
    pool_size: usize,
    concurrency: usize,
    amount: Amount,
    bursts: u32,
    idle_gap: Duration,
    acquire_timeout: Duration,
    liveness: LivenessArgs,
    metrics_addr: Option<SocketAddr>,
    session_idle_timeout: Option<Duration>,
    kill_idle_every: Option<Duration>,
    sample_every: Duration,
    live: Arc<Live>,
}

/// Runs `vigil load`; returns the exit code (0, or 1 when requests failed).
pub(crate) async fn run(args: LoadArgs) -> Result<u8, Fail> {
    let (plan, target, killer, tokio_pg) = prepare(&args)?;
    // Created now, so an unwritable path fails before the run, not after.
    let create = |flag: &str, path: &std::path::Path| {
        std::fs::File::create(path)
            .map_err(|e| Fail::input(format!("--{flag} {}: {e}", path.display())))
    };
    let mut json_file = args
        .json
        .as_deref()
        .map(|p| create("json", p))
        .transpose()?;
    let mut html_file = args
        .report
        .as_deref()
        .map(|p| create("report", p))
        .transpose()?;
    let report = match target {
        Target::MySql(opts) => drive(MySqlManager::new(opts), &plan, killer).await,
        Target::Postgres(opts) => match tokio_pg {
            Some(manager) => drive(manager, &plan, killer).await,
            None => drive(PgManager::new(opts), &plan, killer).await,
        },
        Target::Sqlite(opts) => drive(SqliteManager::new(opts), &plan, killer).await,
    };
    let report = match (report, &args.json) {
        (Ok(report), _) => report,
        (Err(fail), _) => {
            // No report: do not leave the empty files behind.
            for path in [&args.json, &args.report].into_iter().flatten() {
                let _ = std::fs::remove_file(path);
            }
            return Err(fail);
        }
    };
    out!("{}", report.human());
    if let Some(file) = json_file.as_mut() {
        serde_json::to_writer_pretty(&mut *file, &report)
            .map_err(|e| Fail::internal(format!("cannot write the JSON report: {e}")))?;
    }
    if let Some(file) = html_file.as_mut() {
        let value = serde_json::to_value(&report)
            .map_err(|e| Fail::internal(format!("cannot encode the report: {e}")))?;
        std::io::Write::write_all(file, crate::html::render(&value).as_bytes())
            .map_err(|e| Fail::internal(format!("cannot write the HTML report: {e}")))?;
    }
    Ok(if report.errors > 0 && !args.allow_errors {
        1
    } else {
        0
    })
}

/// Checks the flags against the URL: the plan, the target to open pool
/// sessions with, and the killer (with its period) if one was asked for.
fn prepare(args: &LoadArgs) -> Result<(Plan, Target, KillPlan, Option<TokioPgManager>), Fail> {
    let base = Target::from_arg(args.url.as_deref())?;
    if args.kill_idle_every.is_some() && matches!(base, Target::Sqlite(_)) {
        return Err(Fail::input(
            "--kill-idle-every needs a server (MySQL/MariaDB or PostgreSQL); SQLite has no sessions to kill",
        ));
    }
    // Every session of this run carries its own application_name on
    // PostgreSQL, so the killer (and a DBA) can tell them apart. A name in
    // the URL is kept unless the killer needs a unique one.
    let application_name = format!("vigil-load-{}", std::process::id());
    let base = match base {
        Target::Postgres(o)
            if args.kill_idle_every.is_some() || o.get_application_name().is_none() =>
        {
            Target::Postgres(o.application_name(&application_name))
        }
        other => other,
    };
    let target = match args.session_idle_timeout {
        Some(t) => base.clone().with_session_idle_timeout(t)?,
        None => base.clone(),
    };
    let live = Arc::new(Live {
        gate: args.kill_idle_every.map(|_| RwLock::new(())),
        ..Live::default()
    });
    // The admin session is opened from `base`: without the session idle
    // timeout, which would end it between rounds.
    let killer = args.kill_idle_every.and_then(|every| {
        Killer::new(&base, Arc::clone(&live.ids), &application_name).map(|k| (k, every))
    });
    // postgres:// with the tokio-postgres driver: the same URL, read by that
    // driver, with the same session name and timeout.
    let tokio_pg = match (&target, args.driver) {
        (Target::Postgres(o), Driver::TokioPostgres) => Some(tokio_pg(
            args.url.as_deref().unwrap_or_default(),
            o.get_application_name().unwrap_or(&application_name),
            args.session_idle_timeout,
        )?),
        _ => None,
    };
    let driver = match (&target, &tokio_pg) {
        (Target::MySql(_), _) => "mysql_async",
        (_, Some(_)) => "tokio-postgres",
        _ => "sqlx",
    };
    let plan = Plan {
        backend: target.kind(),
        driver,
        target: target.describe(),
        sql: Arc::from(args.query.as_str()),
        pool_size: args.pool_size,
        concurrency: args.concurrency,
        amount: match (args.requests, args.duration) {
            (Some(n), _) => Amount::Requests(n),
            (None, Some(d)) => Amount::Duration(d),
            (None, None) => Amount::Duration(Duration::from_secs(30)),
        },
        bursts: args.bursts,
        idle_gap: if args.bursts > 1 {
            args.idle_gap
        } else {
            Duration::ZERO
        },
        acquire_timeout: args.acquire_timeout,
        liveness: args.liveness.clone(),
        metrics_addr: args.metrics_addr,
        session_idle_timeout: args.session_idle_timeout,
        kill_idle_every: args.kill_idle_every,
        sample_every: args.sample_every,
        live,
    };
    Ok((plan, target, killer, tokio_pg))
}

/// Builds the pool, runs the bursts with the killer, the progress bar and
/// the metrics server beside them, and reads the report off the pool.
async fn drive<B: Backend>(manager: B, plan: &Plan, killer: KillPlan) -> Result<Report, Fail> {
    let live = &plan.live;
    let pool = open_pool(manager, plan).await?;
    preflight(&pool, plan).await?;
    let _server = serve_metrics(&pool, plan.metrics_addr).await?;

    let (halt, halted) = watch::channel(false);
    let ctrl_c = tokio::spawn(interrupt(Arc::clone(live), halt.clone()));
    let killing = killer
        .map(|(k, every)| tokio::spawn(kill_loop(k, every, Arc::clone(live), halted.clone())));
    let bar = progress_bar(plan.amount);
    let ticker = tokio::spawn(tick(
        bar.clone(),
        pool.clone(),
        Arc::clone(live),
        plan.amount,
    ));
    let sampler = tokio::spawn(sample_loop(
        pool.clone(),
        Arc::clone(live),
        plan.sample_every,
        halted.clone(),
    ));

    let ran = run_bursts(&pool, plan, halted).await;

    ticker.abort();
    bar.finish_and_clear();
    let _ = halt.send(true);
    ctrl_c.abort();
    let kills = match killing {
        Some(task) => task
            .await
            .map_err(|e| Fail::internal(format!("the killer task failed: {e}")))?,
        None => KillTally::default(),
    };
    let timeline = sampler
        .await
        .map_err(|e| Fail::internal(format!("the sampler task failed: {e}")))?;
    let ran = ran?;
    // Read before closing: closing retires every connection with reason
    // `closed`, which would drown what happened during the run.
    let figures = PoolFigures::from(&pool.state());
    pool.close().await;
    Ok(report_of(plan, ran, figures, kills, timeline))
}

/// Opens the pool eagerly. A bare connect comes first: a refused password
/// or port fails at once with the driver's own error (`Builder::connect`
/// retries until `acquire_timeout`, which is right for a flapping server
/// and slow for a typo).
async fn open_pool<B: Backend>(manager: B, plan: &Plan) -> Result<Pool<B>, Fail> {
    let cannot = |why: String| {
        Fail::input(format!(
            "cannot connect to {} at {}: {why}",
            plan.backend, plan.target
        ))
    };
    let within = plan.acquire_timeout;
    match tokio::time::timeout(within, manager.connect()).await {
        Ok(Ok(conn)) => manager.close(conn).await,
        Ok(Err(e)) => return Err(cannot(error_chain(&e))),
        Err(_) => return Err(cannot(format!("no answer within {within:?}"))),
    }
    let l = &plan.liveness;
    if within <= l.validation_timeout {
        // warn: legal, but one hanging checkout ping uses up a caller's wait.
        tracing::warn!(
            acquire_timeout = ?within,
            validation_timeout = ?l.validation_timeout,
            "--acquire-timeout is not longer than --validation-timeout: a caller whose \
             checkout ping meets a black-holed connection times out before it can reconnect"
        );
    }
    Pool::builder(manager)
        .name("load")
        .max_size(plan.pool_size)
        .acquire_timeout(within)
        .connect_timeout(within.min(Duration::from_secs(10)))
        .validation_timeout(l.validation_timeout)
        .validation(l.validation)
        .keepalive_interval(l.keepalive_interval.0)
        .max_lifetime(l.max_lifetime.0)
        .idle_timeout(l.idle_timeout.0)
        .reset_on_return(l.reset_on_return)
        .close_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| match e {
            vigil::ConnectError::Build(vigil::BuildError::Config(e)) => Fail::input(format!(
                "--{}: {}",
                e.setting.replace('_', "-"),
                e.reason.replace("None means never", "`off` means never")
            )),
            e => match e.last_connect_error() {
                Some(cause) => cannot(format!(
                    "{} (no connection within {within:?})",
                    error_chain(cause)
                )),
                None => cannot(e.to_string()),
            },
        })
}

/// Serves /metrics and /status for the pool while the returned server lives.
async fn serve_metrics<B: Backend>(
    pool: &Pool<B>,
    addr: Option<SocketAddr>,
) -> Result<Option<vigil::server::MetricsServer>, Fail> {
    let Some(addr) = addr else { return Ok(None) };
    let metrics = vigil::metrics::Metrics::new();
    metrics.add(pool);
    let server = vigil::server::serve(metrics, addr)
        .await
        .map_err(|e| Fail::input(format!("--metrics-addr: {e}")))?;
    let at = server.local_addr();
    // Announced on stderr (one line, before the bar), so scripts can find a port-0 address.
    say!("vigil: serving http://{at}/metrics and http://{at}/status");
    Ok(Some(server))
}

/// What the bursts measured.
struct Ran {
    elapsed: Duration,
    busy: Duration,
    latency: Histogram<u64>,
    acquire: Histogram<u64>,
}

/// The bursts, with idle gaps between them; stops early on Ctrl-C.
async fn run_bursts<B: Backend>(
    pool: &Pool<B>,
    plan: &Plan,
    mut halted: watch::Receiver<bool>,
) -> Result<Ran, Fail> {
    let live = &plan.live;
    let started = Instant::now();
    let mut ran = Ran {
        elapsed: Duration::ZERO,
        busy: Duration::ZERO,
        latency: report::histogram(),
        acquire: report::histogram(),
    };
    for burst in 0..plan.bursts {
        if burst > 0 {
            live.in_gap.store(true, Relaxed);
            live.timeline.mark("idle_gap", None);
            tokio::select! {
                _ = tokio::time::sleep(plan.idle_gap) => {}
                _ = halted.wait_for(|h| *h) => {}
            }
            live.in_gap.store(false, Relaxed);
        }
        if live.interrupted.load(Relaxed) {
            break;
        }
        live.burst.store(burst + 1, Relaxed);
        live.timeline.mark("burst", Some(u64::from(burst + 1)));
        let burst_start = Instant::now();
        let (lat, acq) = run_burst(pool, plan, burst).await?;
        ran.busy += burst_start.elapsed();
        // Same bounds on every histogram: adding cannot fail.
        let _ = ran.latency.add(&lat);
        let _ = ran.acquire.add(&acq);
    }
    ran.elapsed = started.elapsed();
    Ok(ran)
}

fn report_of(
    plan: &Plan,
    ran: Ran,
    figures: PoolFigures,
    kills: KillTally,
    timeline: Vec<Sample>,
) -> Report {
    let live = &plan.live;
    let requests = live.started.load(Relaxed);
    let samples = std::mem::take(&mut *live.samples.lock().unwrap_or_else(|p| p.into_inner()));
    Report {
        backend: plan.backend,
        driver: plan.driver,
        target: plan.target.clone(),
        query: plan.sql.to_string(),
        pool_size: plan.pool_size,
        concurrency: plan.concurrency,
        bursts: plan.bursts,
        idle_gap_seconds: plan.idle_gap.as_secs_f64(),
        session_idle_timeout_seconds: plan.session_idle_timeout.map(|d| d.as_secs_f64()),
        kill_idle_every_seconds: plan.kill_idle_every.map(|d| d.as_secs_f64()),
        requests,
        errors: live.errors.load(Relaxed),
        error_samples: samples,
        elapsed_seconds: ran.elapsed.as_secs_f64(),
        busy_seconds: ran.busy.as_secs_f64(),
        throughput_per_s: requests as f64 / ran.busy.as_secs_f64().max(1e-9),
        latency_seconds: Latency::from(&ran.latency),
        acquire_seconds: Acquire::from(&ran.acquire),
        connections_created: figures.created,
        connections_closed: figures.closed,
        connections_open_at_end: figures.open,
        connect_errors: figures.connect_errors,
        acquire_timeouts: figures.acquire_timeouts,
        validations: figures.validations,
        server_idle_timeout_seconds: figures.server_idle_timeout,
        killed_idle: live.killed.load(Relaxed),
        kill_failures: kills.failures,
        kill_error: kills.first_error.map(|e| redact(&e)),
        interrupted: live.interrupted.load(Relaxed),
        sample_every_seconds: plan.sample_every.as_secs_f64(),
        timeline,
        events: live.timeline.events(),
    }
}

/// Runs the query once before the clock starts: a query the server rejects
/// is bad input (exit 2), not thousands of failed requests.
async fn preflight<B: Backend>(pool: &Pool<B>, plan: &Plan) -> Result<(), Fail> {
    let live = &plan.live;
    let mut conn = pool
        .get()
        .await
        .map_err(|e| Fail::input(format!("cannot get a connection: {e}")))?;
    if let Some(id) = B::session_id(&conn) {
        live.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }
    B::execute(&mut conn, &plan.sql)
        .await
        .map_err(|e| Fail::input(format!("the query {:?} failed: {e}", plan.sql)))
}

/// One burst: `concurrency` workers until its share of the work is done.
async fn run_burst<B: Backend>(
    pool: &Pool<B>,
    plan: &Plan,
    burst: u32,
) -> Result<(Histogram<u64>, Histogram<u64>), Fail> {
    let live = &plan.live;
    let limit = match plan.amount {
        Amount::Requests(n) => {
            let k = u64::from(plan.bursts);
            let share = n / k + u64::from(u64::from(burst) < n % k);
            Limit::Count(Arc::new(AtomicU64::new(0)), share)
        }
        Amount::Duration(d) => Limit::Until(Instant::now() + d / plan.bursts),
    };
    // No more workers than requests to run: the rest would only start and stop.
    let count = match &limit {
        Limit::Count(_, share) => plan
            .concurrency
            .min(usize::try_from(*share).unwrap_or(usize::MAX)),
        Limit::Until(_) => plan.concurrency,
    };
    // Workers record into a few shared histogram pairs, not one pair each:
    // a pair is ~380 KB, and thousands of workers would need gigabytes.
    let shards: Arc<[Mutex<Recorded>]> = (0..count.clamp(1, SHARDS))
        .map(|_| Mutex::new((report::histogram(), report::histogram())))
        .collect();
    let mut workers = JoinSet::new();
    for i in 0..count {
        workers.spawn(worker(
            pool.clone(),
            Arc::clone(live),
            Arc::clone(&plan.sql),
            limit.clone(),
            (Arc::clone(&shards), i),
        ));
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| Fail::internal(format!("a worker failed: {e}")))?;
    }
    let mut latency = report::histogram();
    let mut acquire = report::histogram();
    for shard in shards.iter() {
        let (lat, acq) = &*shard.lock().unwrap_or_else(|p| p.into_inner());
        // Same bounds on every histogram: adding cannot fail.
        let _ = latency.add(lat);
        let _ = acquire.add(acq);
    }
    Ok((latency, acquire))
}

/// Latency and acquire-wait histograms (microseconds).
type Recorded = (Histogram<u64>, Histogram<u64>);

/// Histogram pairs shared by a burst's workers (worker `i` uses `i % SHARDS`):
/// enough that workers rarely wait on each other's lock.
const SHARDS: usize = 32;

/// When a worker stops.
#[derive(Clone)]
enum Limit {
    /// After the burst has started this many requests (the counter is shared).
    Count(Arc<AtomicU64>, u64),
    /// At this instant.
    Until(Instant),
}

/// Loops get → query → return, recording into its shard.
async fn worker<B: Backend>(
    pool: Pool<B>,
    live: Arc<Live>,
    sql: Arc<str>,
    limit: Limit,
    (shards, index): (Arc<[Mutex<Recorded>]>, usize),
) {
    let shard = index % shards.len();
    let record =
        |f: &dyn Fn(&mut Recorded)| f(&mut shards[shard].lock().unwrap_or_else(|p| p.into_inner()));
    let mut seen = std::collections::HashSet::new();
    loop {
        if live.interrupted.load(Relaxed) {
            break;
        }
        let more = match &limit {
            Limit::Count(started, n) => started.fetch_add(1, Relaxed) < *n,
            Limit::Until(at) => Instant::now() < *at,
        };
        if !more {
            break;
        }
        live.started.fetch_add(1, Relaxed);
        let start = Instant::now();
        let gate = match &live.gate {
            Some(gate) => Some(gate.read().await),
            None => None,
        };
        let got = pool.get().await;
        // Released once the connection is lent: from here on it is busy on
        // the server and the killer leaves it alone (see `kill`).
        drop(gate);
        let waited = micros(start.elapsed());
        record(&|(_, acquire)| acquire.saturating_record(waited));
        let outcome = match got {
            Ok(mut conn) => {
                if let Some(id) = B::session_id(&conn) {
                    if seen.insert(id) {
                        live.ids
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id);
                    }
                }
                B::execute(&mut conn, &sql).await
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                let took = micros(start.elapsed());
                record(&|(latency, _)| latency.saturating_record(took));
                live.timeline.record(index, waited, Some(took));
            }
            Err(message) => {
                live.timeline.record(index, waited, None);
                live.error(message);
            }
        }
        live.done.fetch_add(1, Relaxed);
    }
}

/// First Ctrl-C: stop after the requests in flight and report. Second: quit now.
async fn interrupt(live: Arc<Live>, halt: watch::Sender<bool>) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    live.interrupted.store(true, Relaxed);
    let _ = halt.send(true);
    say!("vigil: stopping after the requests in flight (Ctrl-C again to quit at once)");
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}
