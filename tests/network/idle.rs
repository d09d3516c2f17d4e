//! Idle cutoffs nobody announces: the test proxy cuts every flow that was
//! silent for 2 s (black-holes it, or resets it) at its next byte, as a
//! NAT or load balancer does; the server knows nothing of it. Bursts of
//! load 5 s apart, vigil's defaults and `vigil load`'s 5 s acquire timeout:
//! no caller sees an error; the pool learns the cutoff and then no ping
//! meets it; and before it has learned, a checkout ping into the black
//! hole costs the caller the hedge delay and a connect, not
//! `validation_timeout`.

use std::net::SocketAddr;
use std::time::Duration;

use vigil::{IdleCutoff, Pool};

use crate::backends::{clean_burst, Backend, Maria, TokioPg};
use crate::proxy::{IdleCut, Proxy};
use crate::{shared_maria, shared_pg, SEC};

const CUTOFF: Duration = Duration::from_secs(2);
const GAP: Duration = Duration::from_secs(5);

fn pool<B: Backend>(proxy: &Proxy, cutoff: IdleCutoff) -> Pool<B::M> {
    Pool::builder(B::manager(proxy.addr().port()))
        .acquire_timeout(5 * SEC)
        .idle_cutoff(cutoff)
        .build()
        .expect("valid settings")
}

/// vigil's defaults learn the cutoff within a few gaps, to within 1/0.75
/// of it; from then on no ping meets it, and no caller ever saw an error.
async fn learns<B: Backend>(server: SocketAddr, how: IdleCut) {
    let proxy = Proxy::start(server).await;
    proxy.set_idle_cutoff(Some(CUTOFF), how);
    let pool = pool::<B>(&proxy, IdleCutoff::Learn);
    let mut learned_after = None;
    for gap in 0..7 {
        clean_burst::<B>(&pool, &format!("after gap {gap}")).await;
        if learned_after.is_none() && pool.state().idle_cutoff.is_some() {
            learned_after = Some(gap);
        }
        tokio::time::sleep(GAP).await;
    }
    let s = pool.state();
    let learning_failures = s.validations_failed;
    let cutoff = s.idle_cutoff.expect("a cutoff learned");
    assert!(
        cutoff >= CUTOFF && cutoff < CUTOFF.mul_f64(1.0 / 0.75),
        "learned {cutoff:?}, the proxy cuts at {CUTOFF:?}: {s:?}"
    );
    let (cuts, failed) = (proxy.idle_cuts(), s.validations_failed);
    assert!(cuts > 0, "the proxy never cut a flow");
    for gap in 0..2 {
        clean_burst::<B>(&pool, &format!("after learning, gap {gap}")).await;
        tokio::time::sleep(GAP).await;
    }
    let s = pool.state();
    let scenario = match how {
        IdleCut::BlackHole => "learned_cutoff_black_hole",
        IdleCut::Reset => "learned_cutoff_reset",
    };
    crate::report(
        scenario,
        B::NAME,
        900,
        0,
        &format!(
            "proxy cuts flows idle {CUTOFF:?}, gaps {GAP:?}: a cutoff first learned after {} gaps, \
             {cutoff:.2?} after 7; pings failed while learning {learning_failures}, in the 2 gaps \
             after {}; flows cut in them {}",
            learned_after.map_or(0, |g| g + 1),
            s.validations_failed - failed,
            proxy.idle_cuts() - cuts
        ),
    );
    assert_eq!(
        (proxy.idle_cuts(), s.validations_failed),
        (cuts, failed),
        "flows cut / pings failed after the pool had learned {cutoff:?}: {s:?}"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_learns_a_black_holing_idle_cutoff() {
    learns::<TokioPg>(shared_pg(), IdleCut::BlackHole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_learns_a_black_holing_idle_cutoff() {
    learns::<Maria>(shared_maria(), IdleCut::BlackHole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_learns_a_resetting_idle_cutoff() {
    learns::<Maria>(shared_maria(), IdleCut::Reset).await;
}

/// Learning off, so every gap ends in black-holed idle connections: the
/// first requests after each gap wait for the hedge (50 ms at the floor,
/// loopback pings being far quicker) and a connect, not for
/// `validation_timeout` (5 s) — and with `vigil load`'s 5 s acquire
/// timeout, none fails.
async fn hedges<B: Backend>(server: SocketAddr) {
    let proxy = Proxy::start(server).await;
    proxy.set_idle_cutoff(Some(CUTOFF), IdleCut::BlackHole);
    let pool = pool::<B>(&proxy, IdleCutoff::Off);
    clean_burst::<B>(&pool, "at the start").await;
    let mut worst = Duration::ZERO;
    for gap in 0..3 {
        tokio::time::sleep(GAP).await;
        let hedged = pool.state().validations_hedged;
        let longest = clean_burst::<B>(&pool, &format!("after gap {gap}")).await;
        let s = pool.state();
        worst = worst.max(longest);
        if gap == 2 {
            crate::report(
                "hedged_checkout_black_hole",
                B::NAME,
                400,
                0,
                &format!(
                    "idle connections black-holed after every {GAP:?} gap, learning off: \
                     longest get() after a gap {worst:.0?} (validation_timeout 5 s); {} pings hedged",
                    s.validations_hedged
                ),
            );
        }
        assert!(s.validations_hedged > hedged, "no ping was hedged: {s:?}");
        assert!(
            longest < 2 * SEC,
            "a get() waited {longest:?} after gap {gap}, not the hedge and a connect: {s:?}"
        );
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_checkouts_into_a_black_hole_wait_the_hedge_not_the_timeout() {
    hedges::<TokioPg>(shared_pg()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_checkouts_into_a_black_hole_wait_the_hedge_not_the_timeout() {
    hedges::<Maria>(shared_maria()).await;
}

/// 16 tasks × 25 requests (`get()` + `SELECT 1`) on a pool of 8: every
/// slot busy, callers waiting. The errors, and the slowest request.
async fn full_burst<B: Backend>(pool: &Pool<B::M>) -> (Vec<String>, Duration) {
    let runs = (0..16).map(|_| async {
        let (mut errors, mut slowest) = (Vec::new(), Duration::ZERO);
        for _ in 0..25 {
            let started = std::time::Instant::now();
            match pool.get().await {
                Ok(mut conn) => {
                    if let Err(e) = B::select_1(&mut conn).await {
                        errors.push(e);
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
            slowest = slowest.max(started.elapsed());
        }
        (errors, slowest)
    });
    let all = futures::future::join_all(runs).await;
    let slowest = all.iter().map(|(_, s)| *s).max().unwrap_or_default();
    (all.into_iter().flat_map(|(e, _)| e).collect(), slowest)
}

/// Issue 27: with every slot taken, each idle connection black-holed after
/// a gap used to hold its slot for its whole ping (`validation_timeout`):
/// the hedge had no free slot to connect with, and the slowest request of
/// `vigil load` took 5.07 s (MariaDB) and 5.03 s (PostgreSQL). A ping
/// silent past the hedge delay now gives its slot up. vigil's defaults
/// (learning on), pool 8, 16 workers, bursts after 5 s gaps.
async fn full_pool_black_hole<B: Backend>(server: SocketAddr) {
    let proxy = Proxy::start(server).await;
    proxy.set_idle_cutoff(Some(CUTOFF), IdleCut::BlackHole);
    let pool = Pool::builder(B::manager(proxy.addr().port()))
        .max_size(8)
        .acquire_timeout(5 * SEC)
        .build()
        .expect("valid settings");
    let (errors, _) = full_burst::<B>(&pool).await;
    assert!(errors.is_empty(), "at the start: {errors:?}");
    assert_eq!(pool.state().open, 8, "the first burst fills the pool");
    let (mut slowest, mut requests, mut all_errors) = (Duration::ZERO, 400, 0);
    for gap in 0..3 {
        tokio::time::sleep(GAP).await;
        let (errors, worst) = full_burst::<B>(&pool).await;
        requests += 400;
        all_errors += errors.len();
        slowest = slowest.max(worst);
        assert!(
            errors.is_empty(),
            "after gap {gap}: {errors:?}; {:?}",
            pool.state()
        );
    }
    let s = pool.state();
    crate::report(
        "full_pool_black_hole",
        B::NAME,
        requests,
        all_errors,
        &format!(
            "pool 8, 16 workers, every idle connection black-holed after each {GAP:?} gap, \
             defaults: slowest request {slowest:.0?} (was 5.07 s / 5.03 s); {} pings hedged, \
             {} connections presumed dead at the end",
            s.validations_hedged, s.presumed_dead
        ),
    );
    assert!(
        slowest < 2 * SEC,
        "a request took {slowest:?}: a silent ping held its slot ({s:?})"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_a_full_pool_black_holed_answers_in_milliseconds() {
    full_pool_black_hole::<TokioPg>(shared_pg()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_a_full_pool_black_holed_answers_in_milliseconds() {
    full_pool_black_hole::<Maria>(shared_maria()).await;
}
