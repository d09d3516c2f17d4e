//! `Pool::resize`: growing serves the line at once, shrinking closes idle
//! connections first and lent ones as they come back, and the pool never
//! lends beyond its current size.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use tokio::task::JoinSet;
use vigil::{Pool, Reason};

use crate::support::fake::Fake;
use crate::{pool, settle};

#[tokio::test(start_paused = true)]
async fn growing_serves_callers_in_line_at_once() {
    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let held = pool.get().await.unwrap();
    let mut waiters = JoinSet::new();
    for _ in 0..3 {
        let pool = pool.clone();
        waiters.spawn(async move { pool.get().await.map(drop) });
    }
    settle().await;
    assert_eq!(pool.state().pending, 3);
    pool.resize(4).unwrap();
    // No time passes and nothing comes back: the new capacity serves them.
    while let Some(served) = waiters.join_next().await {
        served.unwrap().expect("served by the new capacity");
    }
    let s = pool.state();
    assert_eq!((s.max_size, s.pending, s.acquire_timeouts), (4, 0, 0));
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn shrinking_closes_idle_connections_first() {
    let fake = Fake::new();
    let pool = pool(&fake, 4);
    let lent: Vec<_> = lend_all(&pool, 4).await;
    drop(lent);
    assert_eq!(pool.state().idle, 4);
    pool.resize(2).unwrap();
    let s = pool.state();
    assert_eq!(
        (s.max_size, s.open, s.idle, s.closed.get(Reason::Closed)),
        (2, 2, 2, 2),
        "{s:?}"
    );
    // Two can be had; a third waits for one of them.
    let (a, _b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    let third = tokio::time::timeout(Duration::from_secs(1), pool.get()).await;
    assert!(third.is_err(), "nothing beyond the new size is lent");
    drop(a);
    let c = pool.get().await.unwrap();
    assert_eq!(pool.state().open, 2);
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn shrinking_below_what_is_lent_closes_connections_as_they_come_back() {
    let fake = Fake::new();
    let pool = pool(&fake, 4);
    let mut lent = lend_all(&pool, 4).await;
    pool.resize(2).unwrap();
    assert_eq!((pool.state().max_size, pool.state().open), (2, 4));
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { vigil::Pooled::id(&pool.get().await.unwrap()) }
    });
    settle().await;
    // The first two back are closed, and the caller in line still waits.
    drop(lent.pop());
    drop(lent.pop());
    settle().await;
    let s = pool.state();
    assert_eq!(
        (s.open, s.closed.get(Reason::Closed), s.pending),
        (2, 2, 1),
        "{s:?}"
    );
    assert!(!waiter.is_finished());
    // The third goes to the caller in line.
    let handed = vigil::Pooled::id(&lent[1]);
    drop(lent.pop());
    assert_eq!(waiter.await.unwrap(), handed);
    drop(lent);
    settle().await;
    let s = pool.state();
    assert_eq!((s.open, s.idle, s.active), (2, 2, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn growing_back_before_they_return_keeps_every_connection() {
    let fake = Fake::new();
    let pool = pool(&fake, 4);
    let lent = lend_all(&pool, 4).await;
    pool.resize(2).unwrap();
    pool.resize(5).unwrap();
    drop(lent);
    settle().await;
    let s = pool.state();
    assert_eq!(
        (s.max_size, s.idle, s.closed.total()),
        (5, 4, 0),
        "the shrink was undone before anything came back: {s:?}"
    );
    // And the fifth unit is there.
    let five = lend_all(&pool, 5).await;
    assert_eq!(five.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_bad_size_is_refused_by_name_and_changes_nothing() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(4)
        .min_idle(2)
        .build()
        .unwrap();
    for bad in [0, 1] {
        let err = pool.resize(bad).unwrap_err();
        assert_eq!(err.setting, "max_size", "{err}");
    }
    assert!(pool.resize(1).unwrap_err().to_string().contains("min_idle"));
    assert_eq!(pool.state().max_size, 4);
}

/// `n` connections lent at once.
/// Symptom (found by the model test): a shrink counted the connects in
/// flight, but not a checkout queued behind `max_concurrent_connects` with
/// capacity in hand. It kept an idle connection that the queued connect
/// would push over the new size: a caller in line waited while it sat
/// idle, and the pool settled one over its size.
#[tokio::test(start_paused = true)]
async fn a_shrink_counts_checkouts_queued_to_connect() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(3)
        .max_concurrent_connects(1)
        .build()
        .unwrap();
    let lent = pool.get().await.unwrap();
    fake.script.set_connect_delay(Duration::from_millis(100));
    // Two callers that give up at once: their connects go on, one in
    // flight and one queued behind it.
    for _ in 0..2 {
        let _ = tokio::time::timeout(Duration::from_millis(1), pool.get()).await;
    }
    drop(lent);
    settle().await;
    let s = pool.state();
    assert_eq!((s.idle, s.connecting, s.available), (1, 1, 1), "{s:?}");
    pool.resize(2).unwrap();
    let s = pool.state();
    assert_eq!(
        (s.idle, s.closed.get(Reason::Closed)),
        (0, 1),
        "the idle one makes way for the two being opened: {s:?}"
    );
    // A caller in line is served by the first connect to come in.
    let waited = tokio::spawn({
        let pool = pool.clone();
        async move {
            let started = tokio::time::Instant::now();
            pool.get().await.map(|_| started.elapsed())
        }
    });
    let waited = waited.await.unwrap().unwrap();
    assert!(waited <= Duration::from_millis(100), "waited {waited:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = pool.state();
    assert_eq!(fake.script.connects.load(SeqCst), 3);
    assert_eq!((s.open, s.idle, s.available), (2, 2, 2), "{s:?}");
}

async fn lend_all(pool: &Pool<Fake>, n: usize) -> Vec<vigil::Pooled<Fake>> {
    let mut lent = Vec::new();
    for _ in 0..n {
        lent.push(pool.get().await.expect("a connection"));
    }
    lent
}
