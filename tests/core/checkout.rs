//! Checkout: reuse without a round trip, when a ping is due, the waiters'
//! queue and its bounds, and `get_blocking`.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{advance, Instant};
use vigil::{BlockingError, Error, Pool, Reason, TimeoutPhase, Validation};

use crate::support::fake::Fake;
use crate::{pool, settle, MS};

#[tokio::test(start_paused = true)]
async fn returned_connection_is_reused_without_reconnect_or_ping() {
    let fake = Fake::new();
    let pool = pool(&fake, 4);
    let first = vigil::Pooled::id(&pool.get().await.unwrap());
    for _ in 0..100 {
        let c = pool.get().await.unwrap();
        assert_eq!(vigil::Pooled::id(&c), first);
    }
    assert_eq!(fake.script.connects.load(SeqCst), 1);
    assert_eq!(
        fake.script.pings.load(SeqCst),
        0,
        "used within the window: no ping"
    );
    let s = pool.state();
    assert_eq!((s.open, s.idle, s.active), (1, 1, 0));
    assert_eq!(s.validations_skipped, 100);
}

#[tokio::test(start_paused = true)]
async fn connection_silent_longer_than_window_is_pinged_once() {
    let fake = Fake::new();
    let pool = pool(&fake, 4);
    drop(pool.get().await.unwrap());
    advance(600 * MS).await;
    drop(pool.get().await.unwrap());
    assert_eq!(fake.script.pings.load(SeqCst), 1);
    drop(pool.get().await.unwrap());
    assert_eq!(
        fake.script.pings.load(SeqCst),
        1,
        "the ping counts as activity"
    );
}

#[tokio::test(start_paused = true)]
async fn validation_always_pings_every_checkout_and_never_pings_none() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .validation(Validation::Always)
        .build()
        .unwrap();
    for _ in 0..5 {
        drop(pool.get().await.unwrap());
    }
    assert_eq!(
        fake.script.pings.load(SeqCst),
        4,
        "the first checkout is a fresh connect"
    );
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .validation(Validation::Never)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    advance(Duration::from_secs(60)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(fake.script.pings.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn dead_idle_connection_is_never_lent() {
    let fake = Fake::new();
    let pool = pool(&fake, 4);
    drop(pool.get().await.unwrap());
    advance(Duration::from_secs(2)).await;
    fake.script.ping_fails.store(true, SeqCst);
    let c = pool.get().await.unwrap();
    assert_eq!(
        vigil::Pooled::id(&c),
        2,
        "the dead one was replaced by a new one"
    );
    assert_eq!(pool.state().closed.get(Reason::ValidationFailed), 1);
    assert_eq!(pool.state().validations_failed, 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let first = pool.get().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (pool, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let c = pool.get().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::task::yield_now().await;
            drop(c);
        }));
        settle().await; // task i is queued before task i+1 starts
    }
    assert_eq!(pool.state().pending, 10);
    drop(first);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn timeout_while_all_lent_names_the_phase() {
    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let _held = pool.get().await.unwrap();
    let err = pool.get().await.unwrap_err();
    match &err {
        Error::Timeout { phase, waited, .. } => {
            assert_eq!(*phase, TimeoutPhase::WaitingForConnection);
            assert_eq!(*waited, Duration::from_secs(5));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.state().acquire_timeouts, 1);
}

/// A pool of one connection whose callers wait at most 1 s.
fn one_slot_waiting_1s(fake: &Fake) -> Pool<Fake> {
    Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Queued waiters' deadlines are kept by one pool-wide watchdog, not a
/// timer each: every waiter still times out at exactly its own
/// `acquire_timeout`, a waiter that gives up early delays nobody, and one
/// served just before its deadline is served, not timed out.
#[tokio::test(start_paused = true)]
async fn queued_waiters_time_out_each_at_its_own_deadline() {
    let pool = one_slot_waiting_1s(&Fake::new());
    let held = pool.get().await.unwrap();
    let start = Instant::now();
    let mut waiters = Vec::new();
    for i in 0..5u64 {
        let pool = pool.clone();
        waiters.push(tokio::spawn(async move {
            let asked = Instant::now();
            let got = pool.get().await;
            (i, asked, Instant::now(), got.map(drop))
        }));
        tokio::time::sleep(100 * MS).await;
    }
    // The third waiter gives up early; the others are not held up by it.
    waiters.remove(2).abort();
    for w in waiters {
        let (i, asked, ended, got) = w.await.unwrap();
        let err = got.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    phase: TimeoutPhase::WaitingForConnection,
                    ..
                }
            ),
            "waiter {i}: {err:?}"
        );
        assert_eq!(
            ended - asked,
            Duration::from_secs(1),
            "waiter {i} timed out on time"
        );
        assert_eq!(asked - start, Duration::from_millis(100 * i));
    }
    // A waiter served 1 ms before its deadline is served.
    let late = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| vigil::Pooled::id(&c)) }
    });
    tokio::time::sleep(999 * MS).await;
    drop(held);
    assert_eq!(late.await.unwrap().unwrap(), 1);
    let s = pool.state();
    assert_eq!((s.pending, s.acquire_timeouts), (0, 4), "{s:?}");
}

/// A waiter that joins the queue just as the one before it expires (so the
/// queue never looks empty) still gets its own timeout: the watchdog must
/// not go to sleep for an empty queue while the newcomer waits.
#[tokio::test(start_paused = true)]
async fn a_waiter_joining_as_the_last_one_expires_still_times_out() {
    let pool = one_slot_waiting_1s(&Fake::new());
    let _held = pool.get().await.unwrap();
    for round in 0..20u64 {
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.get().await.map(drop) }
        });
        // Joins at the very instant the first one's deadline passes.
        let second = tokio::spawn({
            let pool = pool.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1) + Duration::from_micros(round)).await;
                let asked = Instant::now();
                let got = pool.get().await.map(drop);
                (asked.elapsed(), got)
            }
        });
        assert!(first.await.unwrap().is_err());
        let (waited, got) = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the second waiter never timed out"))
            .unwrap();
        assert!(got.is_err(), "round {round}");
        assert_eq!(waited, Duration::from_secs(1), "round {round}");
    }
}

#[tokio::test(start_paused = true)]
async fn beyond_max_waiters_get_fails_at_once_with_busy() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .max_waiters(Some(2))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    settle().await;
    assert_eq!(pool.state().pending, 2);
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::Busy { max_waiters: 2 }), "{err:?}");
    assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
    assert_eq!(pool.state().rejected, 1);
    drop(held);
    for w in waiters {
        assert!(
            w.await.unwrap().is_ok(),
            "the queued waiters are still served"
        );
    }
}

#[test]
fn get_blocking_serves_plain_threads_and_refuses_runtime_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = Fake::new();
    let pool = rt.block_on(async { Pool::builder(fake.clone()).max_size(2).build().unwrap() });
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let c = pool.get_blocking().expect("a plain thread may block");
                    drop(c); // returned from a non-runtime thread
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let err = rt
        .block_on(async { pool.get_blocking().map(drop) })
        .unwrap_err();
    assert!(matches!(err, BlockingError::InRuntime), "{err:?}");
    assert!(err.to_string().contains("get().await"), "{err}");
    // Every connection came back from the plain threads. Whether the threads
    // ever overlapped (and so opened the second slot) is up to the scheduler.
    let s = pool.state();
    assert_eq!(s.active, 0, "{s:?}");
    assert!((1..=2).contains(&s.open), "{s:?}");
    assert_eq!(s.created, s.open as u64, "nothing was closed: {s:?}");
}

/// A server that failed one session has often failed the others: after the
/// pool sees a failure, idle connections used moments ago are pinged too.
#[tokio::test(start_paused = true)]
async fn after_a_broken_return_recently_used_idle_connections_are_pinged() {
    let fake = Fake::new();
    let pool = pool(&fake, 3);
    let held: Vec<_> = futures::future::join_all((0..3).map(|_| pool.get())).await;
    let mut held: Vec<_> = held.into_iter().map(Result::unwrap).collect();
    let mut victim = held.pop().unwrap();
    drop(held); // two healthy connections, idle, used just now
    advance(MS).await;
    victim.broken = true;
    drop(victim); // the driver saw the session die
    assert_eq!(fake.script.pings.load(SeqCst), 0);
    drop(pool.get().await.unwrap());
    assert_eq!(
        fake.script.pings.load(SeqCst),
        1,
        "pinged despite the bypass window"
    );
    drop(pool.get().await.unwrap());
    assert_eq!(
        fake.script.pings.load(SeqCst),
        1,
        "once proven, back to no round trip"
    );
}
