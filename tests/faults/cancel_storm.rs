//! 100,000 `get()` futures cancelled at random points while connects and
//! validations are in flight (the proxy's latency makes both slow). On the
//! shared servers through the proxy.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::Rng;
use tokio::task::JoinSet;
use vigil::{Pooled, Reason, Validation};

use crate::harness::{
    builder, check_settled, conclude, trace, Db, Load, Maria, Pg, Report, TokioPg, MAX,
    QUERY_BOUND, SEC,
};
use crate::proxy::Proxy;

const GETS: u64 = 100_000;
const STORMERS: u64 = 500;
/// Held back per chunk and direction: a ping costs ~2×, a connect ~4–6×.
const LATENCY: Duration = Duration::from_millis(4);
/// A `get()` is cancelled after a uniform random delay below this (a tenth
/// of them right after their first poll).
const MAX_PATIENCE_US: u64 = 30_000;
/// Patient callers (waiting up to `acquire_timeout`) looping through the
/// storm: the pool must keep serving them.
const PROBES: usize = 8;

#[derive(Default)]
struct Tally {
    lent: AtomicU64,
    cancelled: AtomicU64,
    get_errors: AtomicU64,
    dead_lent: AtomicU64,
}

/// The storm, then: nothing pending, connecting or lent; the server lists
/// exactly `state().open` sessions of this pool (nothing half-open);
/// `created - closed == open`; and all `MAX` slots can be had at once.
/// Recovery: from the storm's end until the pool was quiet and the server
/// agreed with it.
async fn cancel_storm<D: Db>(db: D) -> Result<(), String> {
    trace();
    let proxy = Proxy::start(db.server()).await;
    proxy.set_latency(LATENCY);
    let pool = builder(&db, proxy.addr())
        // Every checkout pings, so validations are in flight all the time.
        .validation(Validation::Always)
        .build()
        .expect("valid settings");
    let mut report = Report::new::<D>("cancel_storm");
    let tally = Arc::new(Tally::default());

    let started = Instant::now();
    let probes = Load::start_with::<D>(&pool, PROBES, Duration::ZERO);
    let mut tasks = JoinSet::new();
    for _ in 0..STORMERS {
        let pool = pool.clone();
        let tally = Arc::clone(&tally);
        tasks.spawn(async move {
            for _ in 0..GETS / STORMERS {
                let (kind, patience) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..10u8),
                        Duration::from_micros(rng.random_range(0..MAX_PATIENCE_US)),
                    )
                };
                let got = match kind {
                    0 => pool.get().now_or_never(),
                    _ => tokio::time::timeout(patience, pool.get()).await.ok(),
                };
                match got {
                    None => {
                        tally.cancelled.fetch_add(1, SeqCst);
                    }
                    Some(Err(_)) => {
                        tally.get_errors.fetch_add(1, SeqCst);
                    }
                    Some(Ok(mut conn)) => {
                        tally.lent.fetch_add(1, SeqCst);
                        let q = tokio::time::timeout(QUERY_BOUND, D::select_one(&mut conn)).await;
                        if !matches!(q, Ok(Ok(()))) {
                            tally.dead_lent.fetch_add(1, SeqCst);
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a storm task panicked");
    }
    let storm = started.elapsed();
    let probes = probes.stop().await;
    proxy.set_latency(Duration::ZERO);
    let t_end = Instant::now();

    let s = pool.state();
    report.note(format!(
        "storm {storm:?}: {} lent, {} cancelled; {} connects, {} connect errors, {} validations ok, \
         {} failed, {} closed mid-checkout (reason closed)",
        tally.lent.load(SeqCst),
        tally.cancelled.load(SeqCst),
        s.created,
        s.connect_errors,
        s.validations_ok,
        s.validations_failed,
        s.closed.get(Reason::Closed)
    ));
    report.note(format!(
        "{PROBES} patient callers: {} requests, longest get() {:?}",
        probes.requests(),
        probes.longest_get()
    ));
    if probes.errors() > 0 {
        report.note(format!(
            "patient callers' errors: {:?}",
            probes.sample_errors()
        ));
    }
    report.requests = GETS + probes.requests();
    report.dead_lent = tally.dead_lent.load(SeqCst) + probes.query_errors();
    report.errors = tally.get_errors.load(SeqCst) + tally.dead_lent.load(SeqCst) + probes.errors();

    check_settled(&db, &pool, &mut report).await;
    report.recovery = Some(t_end.elapsed());

    // No slot leaked: all MAX at once, promptly.
    let all = tokio::time::timeout(3 * SEC, async {
        let mut held: Vec<Pooled<D::M>> = Vec::new();
        for _ in 0..MAX {
            held.push(pool.get().await.expect("get"));
        }
        held
    })
    .await;
    report.check(
        all.is_ok(),
        format!("no slot leaked: {MAX} gets at once within 3 s"),
    );
    drop(all);

    report.check(
        report.errors == 0,
        "no get() failed and no dead connection lent",
    );
    report.check(
        probes.errors() == 0 && probes.oks() >= PROBES as u64,
        format!(
            "patient callers were served throughout the storm ({} served, {} errors)",
            probes.oks(),
            probes.errors()
        ),
    );
    // More validations finished than anyone was lent: the rest outlived
    // callers that gave up mid-ping. Such a ping runs to completion in its
    // own task and the live connection goes back idle (before, each one
    // closed its connection: 160-192 reconnects per storm).
    let served = tally.lent.load(SeqCst) + probes.requests();
    report.check(
        s.validations_ok > served,
        format!(
            "the storm cancelled checkouts mid-validation ({} validations, {served} served)",
            s.validations_ok
        ),
    );
    report.check(
        s.closed.total() == 0 && s.created <= MAX as u64,
        format!(
            "cancelled checkouts cost no connection ({} opened, {} closed)",
            s.created,
            s.closed.total()
        ),
    );
    report.check(
        s.acquire_timeouts == 0 && s.pending == 0,
        format!(
            "state: no acquire timeout, none pending ({} timeouts, {} pending)",
            s.acquire_timeouts, s.pending
        ),
    );
    report.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cancel_storm_leaks_no_slot_and_no_session() {
    let db = Maria::shared("storm").await;
    conclude([cancel_storm(db).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cancel_storm_leaks_no_slot_and_no_session() {
    conclude([cancel_storm(Pg::shared("storm")).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tokio_cancel_storm_leaks_no_slot_and_no_session() {
    conclude([cancel_storm(TokioPg::shared("storm")).await]);
}
