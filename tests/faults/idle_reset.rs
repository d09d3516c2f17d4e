//! Connections reset by the network (a load balancer or NAT answering with
//! an RST), on the shared servers through the proxy.

use std::time::{Duration, Instant};

use vigil::Reason;

use crate::harness::{
    builder, check_settled, conclude, trace, Db, Load, Maria, Pg, Report, TokioPg, MAX, SEC, THINK,
};
use crate::proxy::Proxy;

/// Idle longer than the checkout's bypass window (500 ms), so the pool
/// validates before lending.
const IDLE: Duration = Duration::from_millis(1000);
const BURST: Duration = Duration::from_millis(700);

/// Bursts of load separated by idle gaps; during each gap the proxy resets
/// every connection. The next burst must see no error at all: every reset
/// connection is caught by the checkout validation (it was idle past the
/// bypass window) and replaced. Recovery: from the reset to the first
/// successful request after it (worst of three rounds).
async fn idle_connections_reset<D: Db>(db: D) -> Result<(), String> {
    trace();
    let proxy = Proxy::start(db.server()).await;
    let pool = builder(&db, proxy.addr()).build().expect("valid settings");
    let mut report = Report::new::<D>("idle_reset");

    let warm = Load::start::<D>(&pool, THINK);
    tokio::time::sleep(BURST).await;
    let recs = warm.stop().await;
    report.add(&recs);
    report.check(recs.errors() == 0, "no error while warming up");

    let mut worst = Duration::ZERO;
    let mut reset_total = 0;
    for _ in 0..3 {
        tokio::time::sleep(IDLE).await;
        let open = pool.state().open;
        let reset = proxy.reset_all().await;
        reset_total += reset;
        report.check(
            reset == open && open > 0,
            format!("the proxy reset every open connection ({reset} of {open})"),
        );
        let t0 = Instant::now();
        let load = Load::start::<D>(&pool, THINK);
        tokio::time::sleep(BURST).await;
        let recs = load.stop().await;
        report.add(&recs);
        report.dead_lent += recs.query_errors();
        if let Some(t) = recs.first_ok_after(t0) {
            worst = worst.max(t - t0);
        }
        if recs.errors() > 0 {
            report.note(format!("errors after a reset: {:?}", recs.sample_errors()));
        }
    }
    report.recovery = Some(worst);
    let s = pool.state();
    report.check(report.errors == 0, "zero errors reach callers");
    report.check(report.dead_lent == 0, "no dead connection lent");
    report.check(
        s.closed.get(Reason::ValidationFailed) + s.closed.get(Reason::Broken)
            >= reset_total as u64,
        format!(
            "every reset connection was retired by validation ({} validation_failed, {} broken, {reset_total} reset)",
            s.closed.get(Reason::ValidationFailed),
            s.closed.get(Reason::Broken)
        ),
    );
    report.check(
        worst <= SEC,
        format!("served again within 1 s of each reset ({worst:?})"),
    );
    check_settled(&db, &pool, &mut report).await;
    report.finish()
}

/// The proxy resets every connection while 64 tasks keep all 8 busy. The
/// queries in flight fail (nothing can save them), and connections that sat
/// idle for a moment inside the bypass window may be lent once without a
/// ping; but each connection may fail at most one caller: the pool must
/// never lend the same dead connection twice. Dead lent here: failures on
/// connections lent after the reset completed. Recovery: from the reset
/// until requests succeed again and errors have stopped.
async fn reset_under_load<D: Db>(db: D) -> Result<(), String> {
    trace();
    let proxy = Proxy::start(db.server()).await;
    let pool = builder(&db, proxy.addr()).build().expect("valid settings");
    let mut report = Report::new::<D>("reset_under_load");

    let load = Load::start::<D>(&pool, THINK);
    tokio::time::sleep(SEC).await;
    let t0 = Instant::now();
    let reset = proxy.reset_all().await;
    let t_done = Instant::now();
    tokio::time::sleep(2 * SEC).await;
    let recs = load.stop().await;
    report.add(&recs);
    report.dead_lent = recs.query_errors_lent_after(t_done);
    report.recovery = recs.recovered_after(t0).map(|t| t - t0);
    report.note(format!("{reset} connections reset"));
    if recs.errors() > 0 {
        report.note(format!("errors: {:?}", recs.sample_errors()));
    }
    report.check(
        recs.get_errors() == 0,
        format!("no get() failed ({})", recs.get_errors()),
    );
    report.check(
        recs.errors() <= reset as u64 && reset <= MAX,
        format!(
            "each reset connection failed at most one caller ({} errors, {reset} connections)",
            recs.errors()
        ),
    );
    report.check(
        recs.0.iter().all(|r| r.ok() || r.started < t0 + SEC),
        "no error for requests started 1 s after the reset",
    );
    report.check(
        report.recovery.is_some_and(|d| d <= SEC),
        "served again within 1 s",
    );
    check_settled(&db, &pool, &mut report).await;
    report.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_idle_connections_reset_by_the_network_reach_no_caller() {
    let db = Maria::shared("idlereset").await;
    conclude([idle_connections_reset(db).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_idle_connections_reset_by_the_network_reach_no_caller() {
    conclude([idle_connections_reset(Pg::shared("idlereset")).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_reset_under_load_fails_each_connection_at_most_once() {
    let db = Maria::shared("resetload").await;
    conclude([reset_under_load(db).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reset_under_load_fails_each_connection_at_most_once() {
    conclude([reset_under_load(Pg::shared("resetload")).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tokio_idle_connections_reset_by_the_network_reach_no_caller() {
    conclude([idle_connections_reset(TokioPg::shared("idlereset")).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tokio_reset_under_load_fails_each_connection_at_most_once() {
    conclude([reset_under_load(TokioPg::shared("resetload")).await]);
}
