//! The server is down when the pool starts: the eager `Builder::connect()`
//! and the lazy pool's `get()` report the real connect error within
//! `acquire_timeout`; when the server comes up, the lazy pool serves.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::{
    builder, check_settled, conclude, trace, Db, Load, Maria, Outcome, Pg, Report, TokioPg, MS,
    SEC, THINK,
};
use crate::proxy::Proxy;
use crate::servers::free_port;

const ACQUIRE_TIMEOUT: Duration = SEC;
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(300);

/// The whole error chain as one string.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(" <- ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn down_at_start<D: Db>(db: D) -> Result<(), String> {
    trace();
    let mut report = Report::new::<D>("down_at_start");

    // 1. Eager connect, nothing listening: the real error ("refused").
    let nowhere = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let t = Instant::now();
    let eager = builder(&db, nowhere)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect()
        .await;
    let took = t.elapsed();
    report.requests += 1;
    match eager {
        Ok(_) => report.check(false, "Builder::connect() succeeded with no server"),
        Err(e) => {
            report.errors += 1;
            let text = chain(&e);
            report.note(format!("eager: {text} (after {took:?})"));
            report.check(
                e.last_connect_error().is_some() && text.to_lowercase().contains("refused"),
                format!("Builder::connect() names the real error (connection refused): {text}"),
            );
        }
    }
    report.check(
        took <= ACQUIRE_TIMEOUT + SLACK,
        format!("Builder::connect() failed within acquire_timeout ({took:?})"),
    );

    // 2. Lazy pool, connects black-holed (the host answers nothing): the
    // error names the connect timeout.
    let proxy = Proxy::start(db.server()).await;
    proxy.set_black_hole_new(true);
    let pool = builder(&db, proxy.addr())
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_timeout(300 * MS)
        .build()
        .expect("valid settings");
    let t = Instant::now();
    let got = pool.get().await;
    let took = t.elapsed();
    report.requests += 1;
    match got {
        Ok(_) => report.check(false, "get() succeeded through a black hole"),
        Err(e) => {
            report.errors += 1;
            let text = e.to_string();
            report.note(format!("black-holed: {text}"));
            report.check(
                matches!(&e, vigil::Error::Timeout { last_connect_timeout: Some(d), .. } if *d == 300 * MS),
                format!("get() names the connect timeout: {text}"),
            );
        }
    }
    report.check(
        took <= ACQUIRE_TIMEOUT + SLACK,
        format!("black-holed get() failed within acquire_timeout ({took:?})"),
    );
    drop(pool);
    drop(proxy);

    // 3. Lazy pool under load while every connect is reset; then the server
    // "comes up" (the proxy forwards again).
    let proxy = Proxy::start(db.server()).await;
    proxy.set_refuse(true);
    let pool = builder(&db, proxy.addr())
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .build()
        .expect("valid settings");
    let load = Load::start::<D>(&pool, THINK);
    tokio::time::sleep(2 * SEC).await;
    let attempts = proxy.accepted();
    proxy.set_refuse(false);
    let t_up = Instant::now();
    tokio::time::sleep(2 * SEC).await;
    let recs = load.stop().await;
    report.add(&recs);
    report.dead_lent = recs.query_errors();
    report.recovery = recs.recovered_after(t_up).map(|t| t - t_up);
    report.note(format!("{attempts} connect attempts in 2 s down"));
    let down: Vec<_> = recs.0.iter().filter(|r| r.done < t_up).collect();
    let named = down
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::GetErr(e) if e.contains("last connect error")))
        .count();
    if let Some(Outcome::GetErr(e)) = down.first().map(|r| &r.outcome) {
        report.note(format!("lazy: {e}"));
    }
    report.check(
        !down.is_empty() && named == down.len(),
        format!(
            "while down, every get() failed carrying the last connect error ({named} of {})",
            down.len()
        ),
    );
    let longest = recs.longest_get();
    report.check(
        longest <= ACQUIRE_TIMEOUT + SLACK,
        format!("no get() waited longer than acquire_timeout ({longest:?})"),
    );
    report.check(
        report.recovery.is_some_and(|d| d <= SEC),
        format!(
            "served within 1 s of the server coming up ({:?})",
            report.recovery
        ),
    );
    report.check(
        recs.0.iter().all(|r| r.ok() || r.started < t_up + SEC),
        "no error for requests started 1 s after the server came up",
    );
    // Attempts are paced pool-wide (10 ms doubling to 500 ms, jittered),
    // however many callers wait: about 10 in 2 s. One retry stream per slot
    // (what vigil did before) made 120; a storm would be hundreds.
    report.check(
        attempts <= 25,
        format!("connect attempts while down bounded ({attempts} in 2 s <= 25)"),
    );
    report.check(report.dead_lent == 0, "no dead connection lent");
    check_settled(&db, &pool, &mut report).await;
    report.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_server_down_at_start_reports_the_real_connect_error() {
    let db = Maria::shared("down").await;
    conclude([down_at_start(db).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_down_at_start_reports_the_real_connect_error() {
    conclude([down_at_start(Pg::shared("down")).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tokio_server_down_at_start_reports_the_real_connect_error() {
    conclude([down_at_start(TokioPg::shared("down")).await]);
}
