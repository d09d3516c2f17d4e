//! Retiring connections before the server or time does: server idle
//! timeouts, lifetime, idle shrinking, `min_idle` and keepalive pings.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use tokio::time::{advance, Instant};
use vigil::{Pool, Reason};

use crate::support::fake::Fake;
use crate::{pool, MS};

/// The policy's pure functions: tables and properties.
mod policy;

#[tokio::test(start_paused = true)]
async fn idle_conn_is_retired_before_server_idle_timeout_and_replaced() {
    // Server closes idle sessions after 2 s; margin 5 s is capped at half: retire at 1 s.
    let fake = Fake::with_server_idle(2_000);
    let pool = pool(&fake, 4);
    drop(pool.get().await.unwrap());
    assert_eq!(
        pool.state().server_idle_timeout,
        Some(Some(Duration::from_secs(2)))
    );
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let s = pool.state();
    assert_eq!(s.closed.get(Reason::ServerTimeout), 1, "{s:?}");
    assert_eq!(s.idle, 1, "the housekeeper replaced it: {s:?}");
    assert_eq!(fake.script.connects.load(SeqCst), 2);
    // The replacement is fresh: lent without a failed validation.
    let c = pool.get().await.unwrap();
    assert_eq!(vigil::Pooled::id(&c), 2);
    assert_eq!(pool.state().validations_failed, 0);
}

/// Symptom (liveness bench: 104 connects where the peers made 40): each
/// replacement aged out unused and was replaced again, so a pool idle
/// behind a 2 s server timeout reconnected every second until
/// `idle_timeout` (10 min). A connection is now replaced only if it was
/// lent since it opened: the pool stays warm for one server-timeout
/// period after its last use, then shrinks to `min_idle`.
#[tokio::test(start_paused = true)]
async fn idle_pool_replaces_aged_out_connections_once_not_forever() {
    let fake = Fake::with_server_idle(2_000);
    let pool = pool(&fake, 4);
    let held: Vec<_> = futures::future::join_all((0..4).map(|_| pool.get())).await;
    drop(held);
    tokio::time::sleep(Duration::from_secs(1) + 600 * MS).await;
    let s = pool.state();
    assert_eq!(
        (s.idle, s.closed.get(Reason::ServerTimeout)),
        (4, 4),
        "replaced once: {s:?}"
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let s = pool.state();
    assert_eq!(
        fake.script.connects.load(SeqCst),
        8,
        "4 + 4 replacements: {s:?}"
    );
    assert_eq!(
        s.open, 0,
        "then the idle pool shrinks to min_idle (0): {s:?}"
    );
    // min_idle is still a floor the housekeeper keeps.
    let fake = Fake::with_server_idle(2_000);
    let pool = Pool::builder(fake.clone())
        .max_size(4)
        .min_idle(2)
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(pool.state().idle, 2, "{:?}", pool.state());
}

#[tokio::test(start_paused = true)]
async fn server_timeout_is_enforced_at_checkout_even_if_housekeeper_is_late() {
    let fake = Fake::with_server_idle(2_000);
    let pool = Pool::builder(fake.clone())
        .server_timeout_margin(Duration::from_millis(500))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    // Jump the clock past the deadline (1.5 s) without letting tasks run.
    advance(Duration::from_millis(1_700)).await;
    let c = pool.get().await.unwrap();
    assert_ne!(
        vigil::Pooled::id(&c),
        1,
        "the obsolete connection was not lent"
    );
    assert_eq!(pool.state().closed.get(Reason::ServerTimeout), 1);
}

#[tokio::test(start_paused = true)]
async fn override_replaces_discovered_server_timeout() {
    let fake = Fake::with_server_idle(2_000);
    let pool = Pool::builder(fake.clone())
        .server_idle_timeout_override(Some(None))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    assert_eq!(pool.state().server_idle_timeout, Some(None));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pool.state().closed.get(Reason::ServerTimeout), 0);
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_retires_with_jitter_within_two_and_a_half_percent() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(8)
        .max_lifetime(Some(Duration::from_secs(100)))
        .keepalive_interval(None)
        .idle_timeout(None)
        .build()
        .unwrap();
    let held: Vec<_> = futures::future::join_all((0..8).map(|_| pool.get())).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(97_000)).await;
    assert_eq!(
        pool.state().closed.get(Reason::MaxLifetime),
        0,
        "none before 97.5 s"
    );
    tokio::time::sleep(Duration::from_millis(3_600)).await;
    let s = pool.state();
    assert_eq!(s.closed.get(Reason::MaxLifetime), 8, "{s:?}");
    assert_eq!(s.idle, 8, "replaced: {s:?}");
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_shrinks_the_pool_down_to_min_idle() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(6)
        .min_idle(2)
        .idle_timeout(Some(Duration::from_secs(30)))
        .keepalive_interval(None)
        .build()
        .unwrap();
    let held: Vec<_> = futures::future::join_all((0..6).map(|_| pool.get())).await;
    drop(held);
    assert_eq!(pool.state().idle, 6);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let s = pool.state();
    assert_eq!((s.idle, s.closed.get(Reason::IdleTimeout)), (2, 4), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn housekeeper_keeps_min_idle_ready() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(5)
        .min_idle(3)
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(pool.state().idle, 3);
}

#[tokio::test(start_paused = true)]
async fn keepalive_pings_idle_connections_and_black_holed_ones_are_retired_in_bounded_time() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(3)
        .keepalive_interval(Some(Duration::from_secs(10)))
        .validation_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let held: Vec<_> = futures::future::join_all((0..3).map(|_| pool.get())).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(10_600)).await;
    assert_eq!(fake.script.pings.load(SeqCst), 3);
    fake.script.ping_hangs.store(true, SeqCst);
    let started = Instant::now();
    while pool.state().closed.get(Reason::ValidationFailed) < 3 {
        tokio::time::sleep(100 * MS).await;
        assert!(
            started.elapsed() < Duration::from_secs(13),
            "{:?}",
            pool.state()
        );
    }
    // The slots came back: the pool can still lend three connections.
    fake.script.ping_hangs.store(false, SeqCst);
    let held: Vec<_> = futures::future::join_all((0..3).map(|_| pool.get())).await;
    assert!(held.iter().all(|r| r.is_ok()));
}

/// Keepalive pings take idle connections out for a moment; `min_idle`
/// counts them, so the pool does not open a replacement for each one
/// every round (it grew by `min_idle` per keepalive interval before).
#[tokio::test(start_paused = true)]
async fn keepalive_rounds_do_not_grow_the_pool_past_min_idle() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(100)
        .min_idle(2)
        .keepalive_interval(Some(Duration::from_secs(1)))
        .build()
        .expect("valid settings");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let s = pool.state();
    assert_eq!((s.open, s.created), (2, 2), "{s:?}");
    let pings = fake.script.pings.load(SeqCst);
    assert!(
        pings >= 100,
        "the keepalive pinged each connection about once a second: {pings}"
    );
    pool.close().await;
}
