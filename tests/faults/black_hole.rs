//! Black-holed connections (a NAT or firewall that forgot the flow and drops
//! its packets without a reset): every round trip the pool makes on them must
//! be bounded by `validation_timeout`. On the shared servers through the proxy.

use std::time::{Duration, Instant};

use vigil::{Pooled, Reason, Validation};

use crate::harness::{
    builder, check_settled, conclude, trace, wait_until, Db, Load, Maria, Pg, Report, TokioPg, MAX,
    MS, SEC, THINK,
};
use crate::proxy::Proxy;

const VALIDATION_TIMEOUT: Duration = SEC;
/// How often the housekeeper looks at the idle set at the latest (inner.rs).
const HOUSEKEEPING: Duration = Duration::from_millis(500);

/// Warms the pool up to `MAX` connections, then stops the load.
async fn warm<D: Db>(pool: &vigil::Pool<D::M>, report: &mut Report) {
    let load = Load::start::<D>(pool, THINK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recs = load.stop().await;
    report.add(&recs);
    report.check(recs.errors() == 0, "no error while warming up");
}

/// Idle connections black-holed, nobody borrowing: the keepalive pings them
/// (they are silent for `keepalive_interval`), the pings get no answer, and
/// each is retired `validation_failed` after `validation_timeout`. Then a
/// burst of load sees no error. Recovery: from the black-hole until the
/// last black-holed connection was retired.
///
/// The bound allows two `validation_timeout`s: the housekeeper awaits a
/// whole batch of keepalive pings before it sweeps again, so a connection
/// that falls due while a batch of black-holed pings hangs waits for it.
async fn keepalive_detects<D: Db>(db: &D) -> Result<(), String> {
    let keepalive = SEC;
    let proxy = Proxy::start(db.server()).await;
    let pool = builder(db, proxy.addr())
        .validation_timeout(VALIDATION_TIMEOUT)
        .keepalive_interval(Some(keepalive))
        .build()
        .expect("valid settings");
    let mut report = Report::new::<D>("black_hole_keepalive");
    warm::<D>(&pool, &mut report).await;

    let holed = proxy.black_hole_all() as u64;
    let before = pool.state().closed.get(Reason::ValidationFailed);
    let bound = keepalive + HOUSEKEEPING + 2 * VALIDATION_TIMEOUT + Duration::from_millis(500);
    let detected = wait_until(bound + 2 * SEC, || {
        pool.state().closed.get(Reason::ValidationFailed) - before >= holed
    })
    .await;
    report.recovery = detected;
    report.check(
        holed as usize == MAX,
        format!("{MAX} idle connections black-holed ({holed})"),
    );
    report.check(
        detected.is_some_and(|d| d <= bound),
        format!(
            "the keepalive retired every black-holed connection within keepalive + housekeeping + \
             2 x validation_timeout + 0.5 s = {bound:?} ({detected:?})"
        ),
    );

    let load = Load::start::<D>(&pool, THINK);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let recs = load.stop().await;
    report.add(&recs);
    report.dead_lent = recs.query_errors();
    if recs.errors() > 0 {
        report.note(format!("errors: {:?}", recs.sample_errors()));
    }
    report.check(recs.errors() == 0, "zero errors reach callers afterwards");
    check_settled(db, &pool, &mut report).await;
    report.finish()
}

/// Idle connections black-holed, then the load comes back after they have
/// been silent past the bypass window (but before the keepalive would look):
/// the checkout validation pings each, gets no answer, retires it after
/// `validation_timeout` and opens a new one. No caller gets an error or a
/// dead connection, and no `get()` takes longer than `acquire_timeout`.
/// Recovery: from the load's return to its first success.
async fn checkout_detects<D: Db>(db: &D) -> Result<(), String> {
    let proxy = Proxy::start(db.server()).await;
    let pool = builder(db, proxy.addr())
        .validation_timeout(VALIDATION_TIMEOUT)
        .keepalive_interval(Some(60 * SEC))
        .validation(Validation::IdleFor(Duration::from_millis(500)))
        .build()
        .expect("valid settings");
    let acquire_timeout = pool.config().acquire_timeout;
    let mut report = Report::new::<D>("black_hole_checkout");
    warm::<D>(&pool, &mut report).await;

    let holed = proxy.black_hole_all() as u64;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t0 = Instant::now();
    let load = Load::start::<D>(&pool, THINK);
    tokio::time::sleep(3 * SEC).await;
    let recs = load.stop().await;
    report.add(&recs);
    report.dead_lent = recs.query_errors();
    report.recovery = recs.first_ok_after(t0).map(|t| t - t0);
    let s = pool.state();
    let longest = recs.longest_get();
    report.note(format!("longest get() {longest:?}"));
    if recs.errors() > 0 {
        report.note(format!("errors: {:?}", recs.sample_errors()));
    }
    report.check(recs.errors() == 0, "zero errors reach callers");
    report.check(report.dead_lent == 0, "no black-holed connection lent");
    report.check(
        longest <= acquire_timeout,
        format!("no get() waited longer than acquire_timeout ({longest:?})"),
    );
    report.check(
        s.closed.get(Reason::ValidationFailed) >= holed,
        format!(
            "every black-holed connection retired validation_failed ({} of {holed})",
            s.closed.get(Reason::ValidationFailed)
        ),
    );
    report.check(
        report
            .recovery
            .is_some_and(|d| d <= VALIDATION_TIMEOUT + SEC),
        "served within validation_timeout + 1 s",
    );
    check_settled(db, &pool, &mut report).await;
    report.finish()
}

/// A borrower opens a transaction, then the network black-holes its
/// connection, then it drops the guard: the pool's rollback on return gets
/// no answer, times out after `validation_timeout`, the connection is
/// retired `reset_failed` and its slot freed, all while 64 tasks keep
/// the pool busy. Three times. Recovery: from the guard's drop to the
/// retirement (worst of three).
async fn hanging_reset<D: Db>(db: &D) -> Result<(), String> {
    let proxy = Proxy::start(db.server()).await;
    let pool = builder(db, proxy.addr())
        .validation_timeout(VALIDATION_TIMEOUT)
        .build()
        .expect("valid settings");
    let mut report = Report::new::<D>("hanging_reset");
    let load = Load::start::<D>(&pool, THINK);
    tokio::time::sleep(300 * MS).await;

    let mut worst = Duration::ZERO;
    for round in 1..=3u64 {
        let mut conn = pool.get().await.expect("get the victim");
        let port = D::client_port(&mut conn).await;
        D::begin(&mut conn).await;
        proxy.black_hole_port(port);
        let t0 = Instant::now();
        drop(conn);
        let retired = wait_until(VALIDATION_TIMEOUT + 3 * SEC, || {
            pool.state().closed.get(Reason::ResetFailed) >= round
        })
        .await;
        let took = retired.map_or(Duration::MAX, |_| t0.elapsed());
        worst = worst.max(took);
        report.check(
            retired.is_some() && took >= VALIDATION_TIMEOUT - 50 * MS,
            format!("round {round}: retired reset_failed, after the timeout ran out ({took:?})"),
        );
        report.check(
            took <= VALIDATION_TIMEOUT + 500 * MS,
            format!("round {round}: the hanging reset was bounded by validation_timeout + 0.5 s ({took:?})"),
        );
    }
    report.recovery = Some(worst);
    let recs = load.stop().await;
    report.add(&recs);
    report.dead_lent = recs.query_errors();
    if recs.errors() > 0 {
        report.note(format!("errors: {:?}", recs.sample_errors()));
    }
    report.check(recs.errors() == 0, "zero errors reach the other callers");

    // Every slot is usable again: all MAX at once, promptly.
    let all = tokio::time::timeout(2 * SEC, async {
        let mut held: Vec<Pooled<D::M>> = Vec::new();
        for _ in 0..MAX {
            held.push(pool.get().await.expect("get"));
        }
        held
    })
    .await;
    report.check(
        all.is_ok(),
        format!("all {MAX} slots free: {MAX} gets at once within 2 s"),
    );
    drop(all);
    check_settled(db, &pool, &mut report).await;
    report.finish()
}

async fn all<D: Db>(db: D) {
    trace();
    // Sequential within one test: each measures time bounds that two
    // scenarios loading the same 2-core machine at once would blur.
    let keepalive = keepalive_detects(&db).await;
    let checkout = checkout_detects(&db).await;
    let reset = hanging_reset(&db).await;
    conclude([keepalive, checkout, reset]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_black_holed_connections_are_retired_within_validation_timeout() {
    let db = Maria::shared("blackhole").await;
    all(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_black_holed_connections_are_retired_within_validation_timeout() {
    all(Pg::shared("blackhole")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tokio_black_holed_connections_are_retired_within_validation_timeout() {
    trace();
    // No `hanging_reset`: over tokio-postgres a plain return sends nothing.
    let db = TokioPg::shared("blackhole");
    let keepalive = keepalive_detects(&db).await;
    let checkout = checkout_detects(&db).await;
    conclude([keepalive, checkout]);
}
