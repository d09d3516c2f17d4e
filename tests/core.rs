//! Pool-core behaviour with a fake in-process manager and paused time:
//! deterministic, no sleeps standing in for synchronisation.

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::fake::{Fake, FakeError};
use tokio::time::{advance, Instant};
use vigil::{BuildError, Error, Pool, Reason, TimeoutPhase, Validation};

const MS: Duration = Duration::from_millis(1);

fn pool(fake: &Fake, max: usize) -> Pool<Fake> {
    Pool::builder(fake.clone())
        .max_size(max)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings")
}

/// Lets spawned tasks (returns being cleaned, the housekeeper) run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool<Fake>>();
    assert_send_sync::<vigil::Pooled<Fake>>();
    assert_send_sync::<Error<FakeError>>();
    assert_send_sync::<vigil::State>();
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Pool::builder(Fake::new()).build().unwrap_err();
    assert!(matches!(err, BuildError::NoRuntime), "{err}");
}

#[tokio::test]
async fn invalid_settings_name_the_setting() {
    let cases: Vec<(&str, vigil::Builder<Fake>)> = vec![
        ("max_size", Pool::builder(Fake::new()).max_size(0)),
        (
            "min_idle",
            Pool::builder(Fake::new()).max_size(2).min_idle(3),
        ),
        (
            "acquire_timeout",
            Pool::builder(Fake::new()).acquire_timeout(Duration::ZERO),
        ),
        (
            "connect_timeout",
            Pool::builder(Fake::new()).connect_timeout(Duration::ZERO),
        ),
        (
            "validation_timeout",
            Pool::builder(Fake::new()).validation_timeout(Duration::ZERO),
        ),
        (
            "max_lifetime",
            Pool::builder(Fake::new()).max_lifetime(Some(Duration::ZERO)),
        ),
        (
            "idle_timeout",
            Pool::builder(Fake::new()).idle_timeout(Some(Duration::ZERO)),
        ),
        (
            "keepalive_interval",
            Pool::builder(Fake::new()).keepalive_interval(Some(Duration::ZERO)),
        ),
        (
            "validation",
            Pool::builder(Fake::new()).validation(Validation::IdleFor(Duration::ZERO)),
        ),
        (
            "max_concurrent_connects",
            Pool::builder(Fake::new()).max_concurrent_connects(0),
        ),
    ];
    for (setting, builder) in cases {
        match builder.build() {
            Err(BuildError::Config(e)) => {
                assert_eq!(e.setting, setting);
                assert!(e.to_string().contains(setting), "{e}");
            }
            other => panic!("{setting}: expected a config error, got {other:?}"),
        }
    }
}

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
async fn broken_connection_is_retired_on_return() {
    let fake = Fake::new();
    let pool = pool(&fake, 4);
    let mut c = pool.get().await.unwrap();
    c.broken = true;
    drop(c);
    let s = pool.state();
    assert_eq!((s.open, s.closed.get(Reason::Broken)), (0, 1));
    let c = pool.get().await.unwrap();
    assert_eq!(vigil::Pooled::id(&c), 2);
}

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

#[tokio::test(start_paused = true)]
async fn wrong_credentials_read_as_wrong_credentials_not_as_timed_out() {
    let fake = Fake::new();
    fake.script.fail_connects("access denied for user 'app'");
    let pool = pool(&fake, 4);
    let err = pool.get().await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::Connecting,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(text.contains("access denied for user 'app'"), "{text}");
    assert!(err.last_connect_error().is_some());
    // Retried with backoff, not in a hot loop and not just once.
    let attempts = fake.script.connects.load(SeqCst);
    assert!((5..=40).contains(&attempts), "{attempts} attempts in 5 s");
}

#[tokio::test(start_paused = true)]
async fn eager_connect_fails_with_the_real_error() {
    let fake = Fake::new();
    fake.script.fail_connects("unknown database 'nope'");
    let started = Instant::now();
    let err = Pool::builder(fake.clone())
        .acquire_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(err.to_string().contains("unknown database 'nope'"), "{err}");
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "one attempt, no retry loop"
    );
    assert_eq!(fake.script.connects.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn eager_connect_keeps_its_connection_idle() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone()).connect().await.unwrap();
    let s = pool.state();
    assert_eq!((s.open, s.idle, s.active), (1, 1, 0), "{s:?}");
    drop(pool.get().await.unwrap());
    assert_eq!(fake.script.connects.load(SeqCst), 1);
}

/// Symptom: with the server down, every caller holding a slot retried on
/// its own schedule (8 slots: ~60 attempts a second, in lockstep after a
/// restart). Attempts are now paced pool-wide, and the first success wakes
/// everyone who was waiting out the backoff.
#[tokio::test(start_paused = true)]
async fn server_down_sees_paced_connect_attempts_not_one_stream_per_caller() {
    let fake = Fake::new();
    fake.script.fail_connects("connection refused");
    let pool = Pool::builder(fake.clone())
        .max_size(8)
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // 10 ms doubling to 500 ms, each pause drawn from its upper half: at
    // most about 20 attempts in 5 s; one stream per slot would be ~100.
    let attempts = fake.script.connects.load(SeqCst);
    assert!((5..=25).contains(&attempts), "{attempts} attempts in 5 s");
    assert!(fake.script.max_connects_in_flight.load(SeqCst) <= 2);
    fake.script.heal_connects();
    let healed = Instant::now();
    for c in callers {
        c.await.unwrap().expect("served once the server is back");
    }
    assert!(
        healed.elapsed() <= Duration::from_millis(600),
        "all 64 served {:?} after the server came back",
        healed.elapsed()
    );
}

/// Symptom (keyed pools under a full global cap): each background connect
/// the cap declined counted as a connect error, logged a warning and
/// pushed the pool into backoff, so the key's next caller waited for
/// nothing. A declined connect is now none of those.
#[tokio::test(start_paused = true)]
async fn connects_declined_by_the_manager_are_not_failures() {
    let fake = Fake::new();
    fake.script.fail_connects("access denied for user 'app'");
    let pool = Pool::builder(fake.clone())
        .max_size(2)
        .min_idle(1)
        .acquire_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(err.to_string().contains("access denied"), "{err}");
    let errors = pool.state().connect_errors;
    fake.script.heal_connects();
    fake.script.connect_declined.store(true, SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await; // min_idle keeps asking
    let s = pool.state();
    assert!(
        fake.script.connects.load(SeqCst) > 5,
        "the housekeeper tried: {s:?}"
    );
    assert_eq!(
        s.connect_errors, errors,
        "declines are not connect errors: {s:?}"
    );
    let err = pool.get().await.unwrap_err();
    assert!(
        err.to_string().contains("access denied"),
        "the last real error is kept: {err}"
    );
    fake.script.connect_declined.store(false, SeqCst);
    let asked = Instant::now();
    drop(pool.get().await.unwrap());
    assert!(
        asked.elapsed() < Duration::from_millis(20),
        "no backoff left over from declines: {:?}",
        asked.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn pool_recovers_when_the_server_comes_back() {
    let fake = Fake::new();
    fake.script.fail_connects("connection refused");
    let pool = pool(&fake, 2);
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| vigil::Pooled::id(&c)) }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.script.heal_connects();
    let started = Instant::now();
    assert!(waiter.await.unwrap().is_ok());
    assert!(
        started.elapsed() <= Duration::from_millis(500),
        "backoff is capped at 500 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn connects_are_bounded_after_a_restart() {
    let fake = Fake::new();
    fake.script.set_connect_delay(50 * MS);
    let pool = Pool::builder(fake.clone()).max_size(50).build().unwrap();
    let all: Vec<_> = futures::future::join_all((0..50).map(|_| pool.get())).await;
    assert!(all.iter().all(|r| r.is_ok()));
    assert_eq!(fake.script.max_connects_in_flight.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn open_transaction_is_rolled_back_before_reuse() {
    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let mut c = pool.get().await.unwrap();
    c.in_transaction = true;
    c.session_var = Some("x".into());
    drop(c);
    let c = pool.get().await.unwrap();
    assert!(!c.in_transaction);
    assert_eq!(
        c.session_var.as_deref(),
        Some("x"),
        "no full reset unless asked"
    );
    assert_eq!(fake.script.resets.load(SeqCst), 1);
    drop(c);
    drop(pool.get().await.unwrap());
    assert_eq!(
        fake.script.resets.load(SeqCst),
        1,
        "a clean return costs no round trip"
    );
}

#[tokio::test(start_paused = true)]
async fn reset_on_return_clears_session_state() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .reset_on_return(true)
        .build()
        .unwrap();
    let mut c = pool.get().await.unwrap();
    c.session_var = Some("x".into());
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(c.session_var, None);
}

/// One borrower changed session state and says so: only that borrow pays
/// for a full reset; the others keep the cheap path.
#[tokio::test(start_paused = true)]
async fn borrower_marked_reset_is_reset_once_without_reset_on_return() {
    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let mut c = pool.get().await.unwrap();
    c.session_var = Some("search_path=tenant_a".into());
    vigil::Pooled::reset_on_return(&mut c);
    drop(c);
    let mut c = pool.get().await.unwrap();
    assert_eq!(
        c.session_var, None,
        "the next borrower sees a clean session"
    );
    assert_eq!(fake.script.resets.load(SeqCst), 1);
    c.session_var = Some("unmarked".into());
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(
        c.session_var.as_deref(),
        Some("unmarked"),
        "no reset unasked"
    );
    assert_eq!(fake.script.resets.load(SeqCst), 1);
    assert_eq!(vigil::Pooled::id(&c), 1, "the same connection throughout");
}

#[tokio::test(start_paused = true)]
async fn failed_or_hanging_reset_retires_the_connection_and_frees_the_slot() {
    for hang in [false, true] {
        let fake = Fake::new();
        let pool = Pool::builder(fake.clone())
            .max_size(1)
            .validation_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        fake.script.reset_fails.store(!hang, SeqCst);
        fake.script.reset_hangs.store(hang, SeqCst);
        let mut c = pool.get().await.unwrap();
        c.in_transaction = true;
        drop(c);
        let c = pool.get().await.unwrap();
        assert_eq!(vigil::Pooled::id(&c), 2, "hang={hang}: never lent again");
        assert_eq!(pool.state().closed.get(Reason::ResetFailed), 1);
    }
}

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
async fn detach_and_retire_free_the_slot() {
    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let c = pool.get().await.unwrap();
    let raw = vigil::Pooled::detach(c);
    assert_eq!(raw.id, 1);
    let c = pool.get().await.unwrap();
    vigil::Pooled::retire(c);
    let c = pool.get().await.unwrap();
    assert_eq!(vigil::Pooled::id(&c), 3);
    assert_eq!(pool.state().closed.get(Reason::Closed), 2);
}

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

/// Collects formatted log lines of the current thread's default subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn leak_is_reported_once_with_the_call_site_of_get() {
    let logs = Logs::default();
    let _guard = logs.install();
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .leak_threshold(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let line = line!() + 1;
    let held = pool.get().await.unwrap();
    let quick = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(quick); // held 1 s: under the threshold, never reported
    let info = pool.connections();
    let lent: Vec<_> = info
        .iter()
        .filter(|c| c.state == vigil::ConnectionState::Lent)
        .collect();
    assert_eq!(lent.len(), 1);
    let site = lent[0]
        .borrowed_at
        .expect("a lent connection knows its borrower");
    assert_eq!((site.file(), site.line()), (file!(), line));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        pool.state().leaks_suspected,
        1,
        "once, however long it is held"
    );
    let text = logs.text();
    assert_eq!(text.matches("possible leak").count(), 1, "{text}");
    assert!(text.contains(&format!("{}:{line}", file!())), "{text}");
    drop(held);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(pool.state().leaks_suspected, 1);
}

#[tokio::test(start_paused = true)]
async fn histograms_record_acquire_usage_and_connect() {
    let fake = Fake::new();
    fake.script.set_connect_delay(20 * MS);
    let pool = pool(&fake, 2);
    let c = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    let s = pool.state();
    assert_eq!(
        (
            s.acquire_duration.count,
            s.usage_duration.count,
            s.connect_duration.count
        ),
        (1, 1, 1)
    );
    assert_eq!(s.connect_duration.sum, 20 * MS);
    assert_eq!(s.usage_duration.sum, 300 * MS);
    let le_05: u64 = s
        .usage_duration
        .buckets()
        .filter(|(le, _)| *le <= 0.5)
        .map(|(_, n)| n)
        .sum();
    let le_025: u64 = s
        .usage_duration
        .buckets()
        .filter(|(le, _)| *le <= 0.25)
        .map(|(_, n)| n)
        .sum();
    assert_eq!((le_025, le_05), (0, 1));
}

/// Callers that give up sooner than a connect takes must not keep the pool
/// from growing: the connect they started finishes and parks its connection.
#[tokio::test(start_paused = true)]
async fn impatient_callers_do_not_throw_away_connects() {
    let fake = Fake::new();
    fake.script.set_connect_delay(50 * MS);
    let pool = pool(&fake, 4);
    for _ in 0..4 {
        let _ = tokio::time::timeout(10 * MS, pool.get()).await;
    }
    tokio::time::sleep(100 * MS).await;
    let s = pool.state();
    assert_eq!((s.idle, s.active, s.connecting), (4, 0, 0), "{s:?}");
    // The next caller is served at once, from the parked connections.
    let started = Instant::now();
    drop(pool.get().await.unwrap());
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(fake.script.connects.load(SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn connect_that_never_answers_is_named_in_the_timeout_error() {
    let fake = Fake::new();
    fake.script.set_connect_delay(Duration::from_secs(3600));
    let pool = Pool::builder(fake.clone())
        .connect_timeout(Duration::from_millis(500))
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("the last connect attempt got no answer within 500ms"),
        "{text}"
    );
    assert!(matches!(
        err,
        Error::Timeout {
            phase: TimeoutPhase::Connecting,
            last_connect_timeout: Some(_),
            ..
        }
    ));
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
    assert!(matches!(err, Error::BlockingInRuntime), "{err:?}");
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
