//! Opening connections: connect errors and timeouts, eager connect, pacing
//! while the server is down, and recovery when it comes back.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use tokio::time::Instant;
use vigil::{ConnectError, Error, Pool, Pooled, TimeoutPhase};

use crate::support::fake::Fake;
use crate::{pool, MS};

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
    assert!(matches!(err, ConnectError::Connect(_)), "{err:?}");
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

/// Symptom (found by the model test): a caller waiting out the connect
/// backoff holds capacity, so a connection returned meanwhile went to the
/// idle set rather than to it, and it slept on beside that connection to
/// the end of the backoff (up to 500 ms).
#[tokio::test(start_paused = true)]
async fn a_connection_returned_during_the_backoff_goes_to_the_caller_waiting_it_out() {
    let fake = Fake::new();
    let pool = pool(&fake, 2);
    let lent = pool.get().await.unwrap();
    let lent_id = Pooled::id(&lent);
    fake.script.fail_connects("connection refused");
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move {
            let conn = pool.get().await.expect("served by the returned connection");
            (Pooled::id(&conn), Instant::now())
        }
    });
    // Long enough for the backoff to reach its cap.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = fake.script.connects.load(SeqCst);
    let returned = Instant::now();
    drop(lent);
    let (id, served) = waiting.await.unwrap();
    assert_eq!(id, lent_id);
    assert!(
        served - returned < MS,
        "served {:?} after the connection came back",
        served - returned
    );
    assert_eq!(
        fake.script.connects.load(SeqCst),
        attempts,
        "no new attempt"
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
