//! What the network between does, with the fake's middlebox: hedged
//! checkout pings (a black-holed idle connection does not cost the caller
//! `validation_timeout`) and idle cutoffs learned from evidence.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use tokio::time::Instant;
use vigil::{Hedge, IdleCutoff, Pool, Reason};

use crate::support::fake::Fake;
use crate::{settle, MS};

const SEC: Duration = Duration::from_secs(1);

fn builder(fake: &Fake, max: usize) -> vigil::Builder<Fake> {
    Pool::builder(fake.clone())
        .max_size(max)
        .acquire_timeout(5 * SEC)
}

/// One idle connection, silent for a second (past the bypass window).
async fn one_silent_idle(pool: &Pool<Fake>) {
    drop(pool.get().await.expect("a connection"));
    tokio::time::sleep(SEC).await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_checkout_ping_is_hedged_with_a_new_connect_after_the_floor() {
    let fake = Fake::new();
    let pool = builder(&fake, 4).build().expect("valid settings");
    one_silent_idle(&pool).await;
    fake.script.ping_hangs.store(true, SeqCst);

    let started = Instant::now();
    let conn = pool.get().await.expect("served by the hedge");
    let waited = started.elapsed();
    // No ping answered yet and connects take no time here: the floor.
    assert_eq!(waited, 50 * MS, "{:?}", pool.state());
    assert_eq!(vigil::Pooled::id(&conn), 2, "a new connection");
    let s = pool.state();
    assert_eq!((s.validations_hedged, s.created), (1, 2), "{s:?}");
    assert_eq!(
        (s.open, s.presumed_dead),
        (1, 1),
        "the silent one is presumed dead and gave its slot up: {s:?}"
    );

    // Its ping times out after validation_timeout: retired.
    tokio::time::sleep(5 * SEC).await;
    settle().await;
    let s = pool.state();
    assert_eq!(s.closed.get(Reason::ValidationFailed), 1, "{s:?}");
    assert_eq!((s.open, s.active, s.presumed_dead), (1, 1, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn the_automatic_hedge_delay_follows_the_slowest_recent_ping() {
    let fake = Fake::new();
    let pool = builder(&fake, 4).build().expect("valid settings");
    *fake.script.ping_delay.lock().unwrap() = 30 * MS;
    one_silent_idle(&pool).await;
    drop(pool.get().await.expect("a 30 ms ping answered, not hedged"));
    assert_eq!(pool.state().validations_hedged, 0);
    tokio::time::sleep(SEC).await;
    fake.script.ping_hangs.store(true, SeqCst);
    let started = Instant::now();
    let _conn = pool.get().await.expect("served by the hedge");
    assert_eq!(started.elapsed(), 4 * 30 * MS, "4 × the slowest ping");
}

#[tokio::test(start_paused = true)]
async fn a_warm_connection_back_meanwhile_serves_the_hedge() {
    let fake = Fake::new();
    let pool = builder(&fake, 4).build().expect("valid settings");
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    drop(a);
    tokio::time::sleep(SEC).await;
    fake.script.ping_hangs.store(true, SeqCst);
    let pool2 = pool.clone();
    let waiting = tokio::spawn(async move { pool2.get().await.map(|c| vigil::Pooled::id(&c)) });
    tokio::time::sleep(10 * MS).await;
    drop(b); // warm: used just now
    let id = waiting.await.unwrap().expect("served");
    assert_eq!(id, 2, "the warm connection, not a new connect");
    assert_eq!(fake.script.connects.load(SeqCst), 2);
}

/// Issue 27: in a pool whose every slot is held, a silent ping used to
/// hold its slot for the whole `validation_timeout` (5.07 s for the
/// slowest request of a black-holed `vigil load`). Presumed dead at the
/// hedge delay, it gives the slot to the caller, who connects anew.
#[tokio::test(start_paused = true)]
async fn with_every_slot_taken_a_silent_ping_gives_its_slot_up() {
    let fake = Fake::new();
    let pool = builder(&fake, 1)
        .acquire_timeout(10 * SEC)
        .build()
        .expect("valid settings");
    one_silent_idle(&pool).await;
    fake.script.ping_hangs.store(true, SeqCst);
    let started = Instant::now();
    let conn = pool.get().await.expect("a new connection at the hedge");
    assert_eq!(
        started.elapsed(),
        50 * MS,
        "the hedge floor, not validation_timeout"
    );
    let s = pool.state();
    assert_eq!(
        (s.open, s.presumed_dead, s.validations_hedged),
        (1, 1, 1),
        "{s:?}"
    );

    // A second silent ping while the first is still presumed dead: at most
    // `max_size` sockets are presumed dead, so the first is evicted (closed
    // at once) and the second gives its slot up in turn.
    drop(conn);
    tokio::time::sleep(SEC).await;
    let started = Instant::now();
    let _conn = pool.get().await.expect("a new connection at the hedge");
    assert_eq!(started.elapsed(), 50 * MS, "the hedge floor again");
    settle().await;
    let s = pool.state();
    assert_eq!(s.presumed_dead, 1, "never more than max_size: {s:?}");
    assert_eq!(
        s.closed.get(Reason::ValidationFailed),
        1,
        "the evicted one: {s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn hedge_off_waits_for_the_ping() {
    let fake = Fake::new();
    let pool = builder(&fake, 4)
        .acquire_timeout(10 * SEC)
        .hedge(Hedge::Off)
        .build()
        .expect("valid settings");
    one_silent_idle(&pool).await;
    fake.script.ping_hangs.store(true, SeqCst);
    let started = Instant::now();
    let _conn = pool.get().await.expect("a connection");
    assert_eq!(started.elapsed(), 5 * SEC);
    assert_eq!(pool.state().validations_hedged, 0);
}

/// 4 tasks × 10 checkouts, each touching its connection (traffic the
/// middlebox sees); the errors callers saw.
async fn burst(pool: &Pool<Fake>) -> usize {
    let runs = (0..4).map(|_| async {
        let mut errors = 0;
        for _ in 0..10 {
            match pool.get().await {
                Ok(mut conn) => {
                    conn.touch();
                    tokio::time::sleep(MS).await;
                }
                Err(_) => errors += 1,
            }
        }
        errors
    });
    futures::future::join_all(runs).await.into_iter().sum()
}

/// A middlebox that black-holes flows idle 2 s, bursts 5 s apart, vigil's
/// defaults: the hedge keeps every caller served while the pool learns;
/// the cutoff converges to within 1/0.75 of 2 s; then no ping fails.
#[tokio::test(start_paused = true)]
async fn an_unannounced_idle_cutoff_is_learned_and_then_no_ping_fails() {
    let fake = Fake::new();
    fake.script.idle_cut_ms.store(2_000, SeqCst);
    let pool = builder(&fake, 10).build().expect("valid settings");
    let mut gaps_to_learn = None;
    for gap in 0..8 {
        assert_eq!(burst(&pool).await, 0, "gap {gap}: {:?}", pool.state());
        if gaps_to_learn.is_none() && pool.state().idle_cutoff.is_some() {
            gaps_to_learn = Some(gap);
        }
        tokio::time::sleep(5 * SEC).await;
    }
    let s = pool.state();
    let cutoff = s.idle_cutoff.expect("a cutoff learned");
    assert!(
        cutoff >= 2 * SEC && cutoff < (2 * SEC).mul_f64(1.0 / 0.75),
        "learned {cutoff:?}: {s:?}"
    );
    assert!(
        gaps_to_learn <= Some(2),
        "learned after {gaps_to_learn:?} gaps"
    );
    let cut = fake.script.cut_pings.load(SeqCst);
    for gap in 0..3 {
        assert_eq!(burst(&pool).await, 0, "{:?}", pool.state());
        tokio::time::sleep(5 * SEC).await;
        assert_eq!(
            fake.script.cut_pings.load(SeqCst),
            cut,
            "a ping met the cutoff {gap} gaps after convergence"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_known_cutoff_pings_before_it_and_off_learns_nothing() {
    let fake = Fake::new();
    fake.script.idle_cut_ms.store(2_000, SeqCst);
    let pool = builder(&fake, 10)
        .idle_cutoff(IdleCutoff::Known(2 * SEC))
        .build()
        .expect("valid settings");
    for _ in 0..3 {
        assert_eq!(burst(&pool).await, 0);
        tokio::time::sleep(5 * SEC).await;
    }
    assert_eq!(fake.script.cut_pings.load(SeqCst), 0);
    assert_eq!(pool.state().idle_cutoff, Some(2 * SEC));

    let fake = Fake::new();
    fake.script.idle_cut_ms.store(2_000, SeqCst);
    let pool = builder(&fake, 10)
        .idle_cutoff(IdleCutoff::Off)
        .build()
        .expect("valid settings");
    for _ in 0..4 {
        assert_eq!(
            burst(&pool).await,
            0,
            "the hedge still serves: {:?}",
            pool.state()
        );
        tokio::time::sleep(5 * SEC).await;
    }
    assert_eq!(pool.state().idle_cutoff, None);
    assert!(fake.script.cut_pings.load(SeqCst) > 0);
}

/// `close()` waits for connections presumed dead too, and does not wait
/// out their pings: it evicts them, and their tasks close them at once.
#[tokio::test(start_paused = true)]
async fn close_closes_presumed_dead_connections_at_once() {
    let fake = Fake::new();
    let pool = builder(&fake, 2).build().expect("valid settings");
    one_silent_idle(&pool).await;
    fake.script.ping_hangs.store(true, SeqCst);
    drop(pool.get().await.expect("served at the hedge"));
    assert_eq!(pool.state().presumed_dead, 1);
    let closes = fake.script.closes.load(SeqCst);
    let started = Instant::now();
    pool.close().await;
    assert!(
        started.elapsed() < SEC,
        "close waited {:?}",
        started.elapsed()
    );
    let s = pool.state();
    assert_eq!((s.presumed_dead, s.open), (0, 0), "{s:?}");
    assert_eq!(
        fake.script.closes.load(SeqCst),
        closes + 2,
        "the presumed-dead one and the idle one"
    );
}
