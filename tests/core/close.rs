//! Shutting down: `close`, dropping the pool, and `retire_all`.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use vigil::{Error, Pool, Reason};

use crate::support::fake::Fake;
use crate::{pool, settle};

#[tokio::test(start_paused = true)]
async fn close_wakes_waiters_and_waits_for_lent_connections() {
    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let held = pool.get().await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    settle().await;
    let closing = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close().await }
    });
    settle().await;
    assert!(matches!(waiter.await.unwrap(), Err(Error::Closed)));
    assert!(matches!(pool.get().await, Err(Error::Closed)));
    assert!(
        !closing.is_finished(),
        "close waits for the lent connection"
    );
    drop(held);
    closing.await.unwrap();
    settle().await;
    let s = pool.state();
    assert_eq!((s.open, s.closed.get(Reason::Closed)), (0, 1));
    assert_eq!(fake.script.closes.load(SeqCst), 1, "closed politely");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_pool_stops_the_housekeeper_and_closes_idle_connections() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(3)
        .min_idle(3)
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(pool.state().idle, 3);
    drop(pool);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(fake.script.closes.load(SeqCst), 3);
    assert_eq!(fake.script.connects.load(SeqCst), 3, "nothing reopened");
    assert_eq!(fake.script.pings.load(SeqCst), 0, "no keepalive after drop");
}

#[tokio::test(start_paused = true)]
async fn retire_all_closes_idle_now_and_lent_on_return_and_never_lends_old_ones() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(3)
        .min_idle(1)
        .build()
        .unwrap();
    let lent = pool.get().await.unwrap();
    let old_ids: Vec<u64> = {
        let others: Vec<_> = futures::future::join_all((0..2).map(|_| pool.get())).await;
        others
            .iter()
            .map(|c| vigil::Pooled::id(c.as_ref().unwrap()))
            .collect()
    };
    assert_eq!(pool.state().idle, 2);
    pool.retire_all();
    assert_eq!(pool.state().idle, 0, "idle ones closed at once");
    let lent_id = vigil::Pooled::id(&lent);
    drop(lent);
    settle().await;
    assert_eq!(
        pool.state().closed.get(Reason::Closed),
        3,
        "the lent one on return"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        pool.state().idle,
        1,
        "min_idle refilled with a new connection"
    );
    for _ in 0..3 {
        let c = pool.get().await.unwrap();
        let id = vigil::Pooled::id(&c);
        assert!(
            id != lent_id && !old_ids.contains(&id),
            "an old connection was lent"
        );
    }
}

/// A connect that began before `retire_all` (with credentials rotated
/// since, say) belongs to the old generation however late it finishes:
/// the caller waiting for it gets it, and it is closed when it comes back,
/// never lent again.
#[tokio::test(start_paused = true)]
async fn a_connect_begun_before_retire_all_is_of_the_old_generation() {
    let fake = Fake::new();
    fake.script.set_connect_delay(Duration::from_millis(50));
    let pool = Pool::builder(fake.clone()).max_size(1).build().unwrap();
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(pool.state().connecting, 1, "mid-connect");
    pool.retire_all();
    waiting
        .await
        .unwrap()
        .expect("the waiting caller gets its connection");
    settle().await;
    let s = pool.state();
    assert_eq!(
        (s.open, s.closed.get(Reason::Closed)),
        (0, 1),
        "closed on its return, not kept: {s:?}"
    );
}
