//! `get()` cancelled at any point: the connection and its slot are never
//! lost. The full matrix (each await point, alone and racing `close()`) is
//! in `matrix`.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use vigil::{Pool, Reason, Validation};

use crate::support::fake::Fake;
use crate::{pool, MS};

mod matrix;

/// Symptom (cancel storm): a `get()` cancelled during its validation ping
/// closed the connection (the session was mid-protocol), so callers with
/// tight timeouts made the pool reconnect over and over. The ping now runs
/// to completion in its own task and a live connection goes back idle.
#[tokio::test(start_paused = true)]
async fn checkout_cancelled_mid_validation_keeps_the_connection() {
    let fake = Fake::new();
    *fake.script.ping_delay.lock().unwrap() = 10 * MS;
    let pool = pool(&fake, 1);
    drop(pool.get().await.unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await; // past the bypass window
    let gave_up = tokio::time::timeout(2 * MS, pool.get()).await;
    assert!(gave_up.is_err(), "cancelled mid-ping");
    let s = pool.state();
    assert_eq!(s.connecting + s.pending, 0, "{s:?}");
    tokio::time::sleep(20 * MS).await; // the ping finishes on its own
    let s = pool.state();
    assert_eq!((s.idle, s.active, s.closed.total()), (1, 0, 0), "{s:?}");
    assert_eq!(s.validations_ok, 1, "{s:?}");
    let c = pool.get().await.unwrap();
    assert_eq!(
        vigil::Pooled::id(&c),
        1,
        "the same connection, not a new one"
    );
    assert_eq!(fake.script.connects.load(SeqCst), 1);
    assert_eq!(
        fake.script.pings.load(SeqCst),
        1,
        "proved alive moments ago"
    );
}

/// A ping that hangs (black-holed socket) still ends: the task retires the
/// connection at `validation_timeout` even though its caller is long gone.
#[tokio::test(start_paused = true)]
async fn cancelled_checkout_with_a_hanging_ping_frees_the_slot_at_validation_timeout() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .validation_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    fake.script.ping_hangs.store(true, SeqCst);
    let _ = tokio::time::timeout(10 * MS, pool.get()).await;
    assert_eq!(pool.state().active, 1, "the ping still holds the slot");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = pool.state();
    assert_eq!(s.active, 0, "{s:?}");
    assert_eq!(s.closed.get(Reason::ValidationFailed), 1, "{s:?}");
    fake.script.ping_hangs.store(false, SeqCst);
    let c = pool.get().await.unwrap();
    assert_eq!(vigil::Pooled::id(&c), 2);
}

/// Thousands of `get()`s dropped at random points (waiting for a slot,
/// mid-connect, mid-validation, holding the guard) never leak capacity.
#[tokio::test(start_paused = true)]
async fn cancelled_gets_never_leak_capacity_or_connections() {
    use rand::{Rng, SeedableRng};
    let fake = Fake::new();
    fake.script.set_connect_delay(3 * MS);
    *fake.script.ping_delay.lock().unwrap() = 2 * MS;
    let pool = Pool::builder(fake.clone())
        .max_size(8)
        .validation(Validation::IdleFor(MS))
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut tasks = Vec::new();
    for _ in 0..5_000 {
        let pool = pool.clone();
        let cancel_after = Duration::from_micros(rng.random_range(0..6_000));
        let hold = Duration::from_micros(rng.random_range(0..2_000));
        tasks.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(cancel_after, async {
                let c = pool.get().await;
                tokio::time::sleep(hold).await;
                drop(c);
            })
            .await;
        }));
        if rng.random_bool(0.1) {
            tokio::time::sleep(Duration::from_micros(rng.random_range(0..500))).await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = pool.state();
    assert_eq!((s.active, s.connecting, s.pending), (0, 0, 0), "{s:?}");
    assert!(s.open <= 8 && s.idle == s.open, "{s:?}");
    assert_eq!(s.created - s.closed.total(), s.open as u64, "{s:?}");
    assert!(s.validations_ok > 0, "some checkouts validated: {s:?}");
    assert_eq!(
        s.closed.total(),
        0,
        "a cancelled checkout costs the pool no connection: {s:?}"
    );
    // Every slot can still be acquired at once.
    let held: Vec<_> = futures::future::join_all((0..8).map(|_| pool.get())).await;
    assert!(held.iter().all(|r| r.is_ok()), "{:?}", pool.state());
}

/// A connection coming back goes straight to the first caller in line. If
/// that caller's `get()` is dropped before it runs to take it (a timeout
/// or `select!` around it firing in the same instant), the connection must
/// go on to the next in line, not sit with the dropped future or be closed.
#[tokio::test(start_paused = true)]
async fn a_connection_handed_to_a_waiter_dropped_before_taking_it_goes_to_the_next() {
    use std::future::Future;
    use std::task::{Context, Poll};

    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let held = pool.get().await.unwrap();
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut first = Box::pin(pool.get());
    let mut second = Box::pin(pool.get());
    assert!(first.as_mut().poll(&mut cx).is_pending());
    assert!(second.as_mut().poll(&mut cx).is_pending());
    assert_eq!(pool.state().pending, 2);
    drop(held); // handed to `first`, which never runs again
    drop(first);
    let Poll::Ready(Ok(conn)) = second.as_mut().poll(&mut cx) else {
        panic!("the second waiter was handed the connection");
    };
    assert_eq!(vigil::Pooled::id(&conn), 1, "the same connection");
    drop(conn);
    let s = pool.state();
    assert_eq!((s.idle, s.active, s.pending), (1, 0, 0), "{s:?}");
    assert_eq!(s.closed.total(), 0, "{s:?}");
    assert_eq!(fake.script.connects.load(SeqCst), 1);
}

/// Capacity alone (a connection retired while lent) granted to a waiter
/// dropped before it ran goes on to the next, who opens a new connection.
#[tokio::test(start_paused = true)]
async fn capacity_granted_to_a_waiter_dropped_before_taking_it_goes_to_the_next() {
    use std::future::Future;
    use std::task::Context;

    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let held = pool.get().await.unwrap();
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut first = Box::pin(pool.get());
    assert!(first.as_mut().poll(&mut cx).is_pending());
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { vigil::Pooled::id(&pool.get().await.unwrap()) }
    });
    tokio::task::yield_now().await; // `second` is in line behind `first`
    assert_eq!(pool.state().pending, 2);
    vigil::Pooled::retire(held); // capacity alone, to `first`
    drop(first);
    assert_eq!(second.await.unwrap(), 2, "a new connection for the second");
    let s = pool.state();
    assert_eq!((s.idle, s.active, s.pending), (1, 0, 0), "{s:?}");
}
