//! The server restarts under load: a normal restart and a crash, each on a
//! private instance (never the shared servers), through the proxy, which
//! counts the pool's connect attempts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{
    builder, check_settled, conclude, trace, Db, Load, Maria, Pg, Report, TokioPg, MAX, SEC, THINK,
};
use crate::proxy::Proxy;
use crate::servers::{blocking, PrivateMaria, PrivatePg, Restartable};

/// A query on a connection lent this soon after the stop began counts as in
/// flight at the restart (the server takes a moment to end its sessions).
const GRACE: Duration = Duration::from_millis(100);
/// How long the server stays down between stop and start.
const DOWN: Duration = Duration::from_millis(500);
/// Most connect attempts the pool may make while the server is down (0.5 s,
/// plus the time it takes to stop): pacing is pool-wide, so about 7.
const ATTEMPTS_BOUND: u64 = 20;

#[derive(Clone, Copy)]
enum How {
    Restart,
    Crash,
}

/// 64 tasks load a pool of 8; the server is stopped (or crashes), stays down
/// 0.5 s and comes back.
///
/// Errors may reach only queries in flight at the restart; `get()` callers
/// wait through it (the outage is shorter than `acquire_timeout`), no
/// connection is lent dead afterwards (dead lent: failed queries on
/// connections lent 100 ms or more after the stop began), every connection
/// fails at most one caller, connect attempts during the outage stay
/// bounded, and the pool serves again within 1 s of the server being back
/// (recovery: from the start command's return until requests succeed and
/// no more fail).
async fn restart_mid_load<D: Db, S: Restartable>(
    db: &D,
    server: &Arc<S>,
    how: How,
) -> Result<(), String> {
    let proxy = Proxy::start(db.server()).await;
    let pool = builder(db, proxy.addr()).build().expect("valid settings");
    let scenario = match how {
        How::Restart => "restart",
        How::Crash => "crash_restart",
    };
    let mut report = Report::new::<D>(scenario);

    let load = Load::start::<D>(&pool, THINK);
    tokio::time::sleep(SEC).await;
    let attempts_before = proxy.accepted();
    let t_stop = Instant::now();
    match how {
        How::Restart => blocking(server, S::stop).await,
        How::Crash => blocking(server, S::crash).await,
    }
    let t_down = Instant::now();
    tokio::time::sleep(DOWN).await;
    blocking(server, S::start).await;
    let t_up = Instant::now();
    let attempts = proxy.accepted() - attempts_before;
    let failed_attempts = proxy.upstream_failures();
    tokio::time::sleep(2 * SEC).await;
    let recs = load.stop().await;

    report.add(&recs);
    report.dead_lent = recs.query_errors_lent_after(t_stop + GRACE);
    let in_flight = recs.query_errors() - report.dead_lent;
    // From the server's return until requests succeed and errors stopped
    // (errors of requests that failed before it count as zero).
    report.recovery = recs
        .recovered_after(t_up)
        .map(|t| t.saturating_duration_since(t_up));
    report.note(format!(
        "stop took {:?}, down {:?}; {in_flight} in-flight errors, {} get() errors; {attempts} connect attempts while down ({failed_attempts} found the server down)",
        t_down - t_stop,
        t_up - t_stop,
        recs.get_errors()
    ));
    if recs.errors() > 0 {
        report.note(format!("errors: {:?}", recs.sample_errors()));
    }
    report.check(
        recs.get_errors() == 0,
        format!(
            "get() callers waited through the restart ({} failed)",
            recs.get_errors()
        ),
    );
    // A session the server ends less than the bypass window (500 ms) after
    // its last use, before the pool has seen any failure, can be lent once
    // without a ping (sqlx offers no zero-round-trip socket check); its
    // failure retires it, and from the first failure seen on, every idle
    // connection is pinged before it is lent (`Shared::suspect`). So: at
    // most one dead lend per pooled connection, never a second one.
    if D::WATCHED {
        // The driver saw each session end (FATAL, EOF): none is lent again.
        report.check(
            report.dead_lent == 0,
            format!(
                "no dead lend after the restart began ({})",
                report.dead_lent
            ),
        );
    }
    report.check(
        report.dead_lent <= MAX as u64,
        format!(
            "at most one dead lend per connection after the restart began ({})",
            report.dead_lent
        ),
    );
    report.check(
        recs.errors() <= MAX as u64,
        format!(
            "each connection failed at most one caller ({} errors)",
            recs.errors()
        ),
    );
    report.check(
        recs.0.iter().all(|r| r.ok() || r.started < t_up + SEC),
        "no error for requests started 1 s after the server was back",
    );
    report.check(
        report.recovery.is_some_and(|d| d <= SEC),
        format!(
            "served again within 1 s of the server being back ({:?})",
            report.recovery
        ),
    );
    report.check(
        attempts <= ATTEMPTS_BOUND,
        format!("connect attempts while down bounded: {attempts} <= {ATTEMPTS_BOUND}"),
    );
    check_settled(db, &pool, &mut report).await;
    report.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restart_mid_load_fails_only_queries_in_flight() {
    trace();
    let server = Arc::new(
        tokio::task::spawn_blocking(PrivateMaria::start)
            .await
            .expect("start the private MariaDB"),
    );
    let db = Maria::private(server.port(), "restart").await;
    let restart = restart_mid_load(&db, &server, How::Restart).await;
    let crash = restart_mid_load(&db, &server, How::Crash).await;
    drop(db);
    conclude([restart, crash]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_load_fails_only_queries_in_flight() {
    trace();
    let server = Arc::new(
        tokio::task::spawn_blocking(PrivatePg::start)
            .await
            .expect("start the private PostgreSQL"),
    );
    let db = Pg::private(server.port(), "restart");
    let restart = restart_mid_load(&db, &server, How::Restart).await;
    let crash = restart_mid_load(&db, &server, How::Crash).await;
    conclude([restart, crash]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tokio_restart_mid_load_lends_no_dead_session() {
    trace();
    let server = Arc::new(
        tokio::task::spawn_blocking(PrivatePg::start)
            .await
            .expect("start the private PostgreSQL"),
    );
    let db = TokioPg::private(server.port(), "restart");
    let restart = restart_mid_load(&db, &server, How::Restart).await;
    let crash = restart_mid_load(&db, &server, How::Crash).await;
    conclude([restart, crash]);
}
