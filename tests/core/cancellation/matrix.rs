//! The cancellation matrix: a `get()` dropped at each of its await points,
//! alone and racing `close()`, with the fake manager and paused time.
//!
//! The core is a mutex-guarded state machine (the idle set, capacity and
//! the line of waiters under the pool's one lock: `src/pool/line.rs`,
//! `slots.rs`), not a lock-free structure, so instead of loom this matrix
//! forces each interleaving that matters by hand, and `tests/model.rs`
//! drives random operation sequences through proptest.
//!
//! After each cell: the pool is quiet (no phantom active, connecting or
//! pending), `created - closed == open`, every slot can be taken at once,
//! and `close()` ends with every connection closed politely.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use crate::support::fake::Fake;
use vigil::{Error, Pool, Pooled, Validation};

const MS: Duration = Duration::from_millis(1);
const MAX: usize = 2;

/// Where a checkout is when it is dropped.
#[derive(Debug, Clone, Copy)]
enum Point {
    /// Queued for a slot while every connection is lent.
    Queued,
    /// Opening a new connection (the connect takes 50 ms).
    Connecting,
    /// Waiting out the pool's backoff after failed connects.
    BackingOff,
    /// Pinging an idle connection silent past the bypass window.
    Validating,
    /// Holding the guard (the task is aborted).
    Holding,
}

const POINTS: [Point; 5] = [
    Point::Queued,
    Point::Connecting,
    Point::BackingOff,
    Point::Validating,
    Point::Holding,
];

fn pool(fake: &Fake) -> Pool<Fake> {
    Pool::builder(fake.clone())
        .max_size(MAX)
        .validation(Validation::IdleFor(100 * MS))
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings")
}

/// Sets the stage for `point`; returns guards the test must hold meanwhile.
async fn prepare(point: Point, fake: &Fake, pool: &Pool<Fake>) -> Vec<Pooled<Fake>> {
    match point {
        Point::Queued => {
            let a = pool.get().await.unwrap();
            let b = pool.get().await.unwrap();
            vec![a, b]
        }
        Point::Connecting => {
            fake.script.set_connect_delay(50 * MS);
            Vec::new()
        }
        Point::BackingOff => {
            fake.script.fail_connects("connection refused");
            Vec::new()
        }
        Point::Validating => {
            drop(pool.get().await.unwrap());
            tokio::time::sleep(Duration::from_secs(1)).await; // past the window
            *fake.script.ping_delay.lock().unwrap() = 50 * MS;
            Vec::new()
        }
        Point::Holding => Vec::new(),
    }
}

/// Starts a `get()` in a task and lets it reach `point`.
async fn reach(point: Point, pool: &Pool<Fake>) -> tokio::task::JoinHandle<Result<(), String>> {
    let task = tokio::spawn({
        let pool = pool.clone();
        async move {
            let conn = pool.get().await.map_err(|e| e.to_string())?;
            // `Holding`: keep the guard until aborted.
            std::future::pending::<()>().await;
            drop(conn);
            Ok(())
        }
    });
    // 20 ms: inside the 50 ms connect or ping, after the first failed
    // connect (the backoff is at least 5 ms, then 10 ms, ...).
    tokio::time::sleep(20 * MS).await;
    let s = pool.state();
    match point {
        Point::Queued => assert_eq!(s.pending, 1, "queued: {s:?}"),
        Point::Connecting => assert_eq!(s.connecting, 1, "connecting: {s:?}"),
        Point::BackingOff => assert!(s.connect_errors >= 1 && s.open == 0, "{s:?}"),
        Point::Validating => assert_eq!((s.active, s.idle), (1, 0), "validating: {s:?}"),
        Point::Holding => assert_eq!(s.active, 1, "holding: {s:?}"),
    }
    task
}

/// Heals the fake, waits for the pool to go quiet and checks what must hold.
async fn check_clean(point: Point, fake: &Fake, pool: &Pool<Fake>) {
    fake.script.heal_connects();
    fake.script.set_connect_delay(Duration::ZERO);
    *fake.script.ping_delay.lock().unwrap() = Duration::ZERO;
    // Detached connects and pings finish; the backoff (<= 500 ms) runs out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = pool.state();
    assert_eq!(
        (s.active, s.connecting, s.pending),
        (0, 0, 0),
        "{point:?}: quiet afterwards: {s:?}"
    );
    assert_eq!(
        s.created - s.closed.total(),
        s.open as u64,
        "{point:?}: {s:?}"
    );
    let all = tokio::time::timeout(Duration::from_secs(1), async {
        futures::future::join_all((0..MAX).map(|_| pool.get())).await
    })
    .await
    .unwrap_or_else(|_| panic!("{point:?}: every slot can be taken at once"));
    assert!(
        all.iter().all(Result::is_ok),
        "{point:?}: {:?}",
        pool.state()
    );
    drop(all);
    pool.close().await;
    tokio::time::sleep(10 * MS).await; // the goodbyes run in their own tasks
    let s = pool.state();
    assert_eq!(s.open, 0, "{point:?}: closed: {s:?}");
    assert_eq!(
        fake.script.closes.load(SeqCst) as u64,
        s.created,
        "{point:?}: every connection said goodbye"
    );
}

#[tokio::test(start_paused = true)]
async fn get_dropped_at_each_await_point_leaks_nothing() {
    for point in POINTS {
        let fake = Fake::new();
        let pool = pool(&fake);
        let held = prepare(point, &fake, &pool).await;
        let task = reach(point, &pool).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        drop(held);
        check_clean(point, &fake, &pool).await;
    }
}

#[tokio::test(start_paused = true)]
async fn close_racing_a_get_at_each_await_point_ends_it_and_closes_everything() {
    for point in POINTS {
        let fake = Fake::new();
        let pool = pool(&fake);
        let held = prepare(point, &fake, &pool).await;
        let task = reach(point, &pool).await;
        let closing = tokio::spawn({
            let pool = pool.clone();
            async move { pool.close().await }
        });
        tokio::time::sleep(MS).await;
        drop(held);
        fake.script.heal_connects();
        match point {
            // Holding a guard: close waits for it (up to close_timeout);
            // the caller's guard is what ends it.
            Point::Holding => task.abort(),
            // Queued or backing off: woken with `Closed` at once.
            Point::Queued | Point::BackingOff => {
                let r = tokio::time::timeout(10 * MS, task)
                    .await
                    .unwrap_or_else(|_| panic!("{point:?}: close wakes the caller"))
                    .unwrap();
                let err = r.unwrap_err();
                assert!(err.contains("closed"), "{point:?}: {err}");
            }
            // Mid-connect or mid-ping: the I/O finishes (bounded), then the
            // caller learns the pool is closed or gets a connection it
            // returns into a closed pool; either way the task must end.
            Point::Connecting | Point::Validating => {
                tokio::time::sleep(100 * MS).await;
                if task.is_finished() {
                    let err = task.await.unwrap().unwrap_err();
                    assert!(err.contains("closed"), "{point:?}: {err}");
                } else {
                    // Lent after all: the caller holds it, close() waits.
                    assert_eq!(pool.state().active, 1, "{point:?}: {:?}", pool.state());
                    task.abort();
                }
            }
        }
        tokio::time::timeout(Duration::from_secs(31), closing)
            .await
            .unwrap_or_else(|_| panic!("{point:?}: close() finished"))
            .unwrap();
        tokio::time::sleep(10 * MS).await;
        let s = pool.state();
        assert_eq!(
            (s.open, s.active, s.connecting, s.pending),
            (0, 0, 0, 0),
            "{point:?}: {s:?}"
        );
        assert!(
            matches!(pool.get().await, Err(Error::Closed)),
            "{point:?}: a closed pool lends nothing"
        );
        assert_eq!(
            fake.script.closes.load(SeqCst) as u64,
            s.created,
            "{point:?}: every connection said goodbye"
        );
    }
}

/// What a pool-owned task is doing when its runtime goes away.
#[derive(Debug, Clone, Copy)]
enum MidIo {
    /// A `Returning` task rolling back a dirty return (the rollback hangs).
    Reset,
    /// A checkout's detached ping (`InFlight`).
    Ping,
    /// A checkout's detached connect (`Connecting`, and its permit).
    Connect,
}

/// The owner types give back counts and capacity even when their task is
/// dropped unfinished with the runtime: no phantom active or connecting
/// connection, `created - closed == open`, and the state stays readable.
#[test]
fn a_runtime_dropped_mid_io_leaves_exact_counts() {
    for mid in [MidIo::Reset, MidIo::Ping, MidIo::Connect] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let fake = Fake::new();
        let pool = rt.block_on(async {
            let pool = pool(&fake);
            match mid {
                MidIo::Reset => {
                    fake.script.reset_hangs.store(true, SeqCst);
                    let mut conn = pool.get().await.unwrap();
                    conn.in_transaction = true;
                    drop(conn);
                }
                MidIo::Ping => {
                    drop(pool.get().await.unwrap());
                    tokio::time::sleep(Duration::from_secs(1)).await; // past the window
                    *fake.script.ping_delay.lock().unwrap() = Duration::from_secs(1);
                    tokio::spawn({
                        let pool = pool.clone();
                        async move { drop(pool.get().await) }
                    });
                }
                MidIo::Connect => {
                    fake.script.set_connect_delay(Duration::from_secs(1));
                    tokio::spawn({
                        let pool = pool.clone();
                        async move { drop(pool.get().await) }
                    });
                }
            }
            tokio::time::sleep(20 * MS).await;
            let s = pool.state();
            assert_eq!(s.active + s.connecting, 1, "{mid:?}: mid-I/O: {s:?}");
            pool
        });
        drop(rt);
        let s = pool.state();
        assert_eq!(
            (s.active, s.connecting, s.pending),
            (0, 0, 0),
            "{mid:?}: nothing phantom after the runtime is gone: {s:?}"
        );
        assert_eq!(
            s.created - s.closed.total(),
            s.open as u64,
            "{mid:?}: {s:?}"
        );
        drop(pool);
    }
}
