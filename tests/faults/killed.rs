//! A connection broken while it is lent: its session is killed from an
//! admin connection in the middle of a long query. On the shared servers
//! (only this scenario's own sessions are killed), through the proxy.

use std::time::{Duration, Instant};

use vigil::Reason;

use crate::harness::{
    builder, check_settled, conclude, request, trace, Db, Load, Maria, Pg, Report, TokioPg, MS,
    SEC, THINK,
};
use crate::proxy::Proxy;

const KILLS: u64 = 5;

/// While 64 tasks load the pool, a victim borrows a connection, starts a
/// 5 s sleep query and has its session killed 300 ms in; then it drops the
/// guard as an ordinary application would (no `Pooled::retire`). Five times.
///
/// The kill's error reaches that caller once; the connection is retired
/// (never returned to the idle set: no load request ever gets it) and
/// replaced; the victim's next `get()` succeeds. Recovery: from the kill to
/// the victim's next successful request (worst of five).
async fn killed_mid_query<D: Db>(db: D) -> Result<(), String> {
    trace();
    let proxy = Proxy::start(db.server()).await;
    let pool = builder(&db, proxy.addr()).build().expect("valid settings");
    let mut report = Report::new::<D>("killed_mid_query");
    let load = Load::start::<D>(&pool, THINK);
    tokio::time::sleep(300 * MS).await;

    let mut worst = Duration::ZERO;
    let mut victim_errors = 0;
    let mut victim_dead_lent = 0;
    let mut next_failed = false;
    for round in 1..=KILLS {
        // The victim's connection; a dead one (a previous victim's, lent
        // again) counts as a dead lend and the victim tries again.
        let deadline = Instant::now() + 10 * SEC;
        let (mut conn, id) = loop {
            if Instant::now() > deadline {
                report.check(false, "the victim found a live connection within 10 s");
                report.add(&load.stop().await);
                return report.finish();
            }
            let mut conn = pool.get().await.expect("get the victim's connection");
            report.requests += 1;
            match D::session_id(&mut conn).await {
                Ok(id) => break (conn, id),
                Err(e) => {
                    report.errors += 1;
                    report.dead_lent += 1;
                    victim_dead_lent += 1;
                    if victim_dead_lent == 1 {
                        report.note(format!(
                            "round {round}: the victim was lent a dead connection: {e}"
                        ));
                    }
                }
            }
        };
        let t_kill = Instant::now() + 300 * MS;
        let (result, ()) = tokio::join!(D::sleep(&mut conn, 5), async {
            tokio::time::sleep_until(t_kill.into()).await;
            db.kill(id).await;
        });
        let failed_after = t_kill.elapsed();
        drop(conn);
        match result {
            Err(e) => {
                victim_errors += 1;
                report.errors += 1;
                if round == 1 {
                    report.note(format!("victim's error: {e}"));
                }
            }
            Ok(()) => report.check(false, format!("round {round}: the killed query succeeded")),
        }
        report.check(
            failed_after < 2 * SEC,
            format!(
                "round {round}: the killed query failed promptly ({failed_after:?} after the kill)"
            ),
        );
        // The victim's very next request, competing with the load.
        let next = request::<D>(&pool, 10 * SEC).await;
        report.requests += 1;
        if next.ok() {
            worst = worst.max(next.done - t_kill);
        } else {
            next_failed = true;
            report.errors += 1;
            if next.query_failed() {
                report.dead_lent += 1;
            }
            report.check(
                false,
                format!(
                    "round {round}: the victim's next request failed: {:?}",
                    next.outcome
                ),
            );
        }
    }
    // Not recovered if a victim's next request failed.
    report.recovery = (!next_failed).then_some(worst);
    tokio::time::sleep(200 * MS).await;
    let recs = load.stop().await;
    report.add(&recs);
    report.dead_lent += recs.query_errors();
    if recs.errors() > 0 {
        report.note(format!("load errors: {:?}", recs.sample_errors()));
    }
    report.check(
        victim_errors == KILLS,
        format!("each kill's error reached its caller ({victim_errors} of {KILLS})"),
    );
    report.check(
        recs.errors() == 0,
        format!("no other caller saw an error ({} did)", recs.errors()),
    );
    report.check(
        report.dead_lent == 0,
        format!(
            "no killed connection lent again ({} dead lent)",
            report.dead_lent
        ),
    );
    report.check(
        victim_dead_lent == 0,
        format!("the victims were never lent a dead connection ({victim_dead_lent} times)"),
    );
    let s = pool.state();
    let retired = s.closed.get(Reason::Broken)
        + s.closed.get(Reason::ValidationFailed)
        + s.closed.get(Reason::ResetFailed);
    report.note(format!(
        "closed: broken {}, validation_failed {}, reset_failed {}",
        s.closed.get(Reason::Broken),
        s.closed.get(Reason::ValidationFailed),
        s.closed.get(Reason::ResetFailed)
    ));
    report.check(
        retired >= KILLS,
        format!("every killed connection was retired ({retired} of {KILLS})"),
    );
    let on_return = s.closed.get(Reason::Broken) + s.closed.get(Reason::ResetFailed);
    report.check(
        on_return >= KILLS,
        format!(
            "retired on return (broken or reset_failed), never put back idle ({on_return} of {KILLS})"
        ),
    );
    check_settled(&db, &pool, &mut report).await;
    report.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_connection_killed_mid_query_fails_only_its_caller_and_is_replaced() {
    let db = Maria::shared("killed").await;
    conclude([killed_mid_query(db).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_killed_mid_query_fails_only_its_caller_and_is_replaced() {
    conclude([killed_mid_query(Pg::shared("killed")).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tokio_connection_killed_mid_query_fails_only_its_caller_and_is_replaced() {
    conclude([killed_mid_query(TokioPg::shared("killed")).await]);
}
