//! Lifecycle hooks with the fake manager: when each runs, what its answer
//! does to the connection, and that capacity survives hooks that refuse,
//! fail, hang or are cancelled.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use vigil::{ConnectError, Error, Pool, Pooled, Reason};

use crate::settle;
use crate::support::fake::{Fake, FakeError};

const MS: Duration = Duration::from_millis(1);

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

#[tokio::test(start_paused = true)]
async fn after_connect_sets_up_every_new_session_and_again_after_a_full_reset() {
    let fake = Fake::new();
    let runs = counter();
    let seen = Arc::clone(&runs);
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .after_connect(move |conn, _meta| {
            seen.fetch_add(1, SeqCst);
            conn.session_var = Some("set up".into());
            Box::pin(async { Ok(()) })
        })
        .build()
        .unwrap();
    let mut c = pool.get().await.unwrap();
    assert_eq!(c.session_var.as_deref(), Some("set up"));
    // A borrower changes session state and asks for a full reset, which
    // wipes it (and what the hook set with it).
    c.session_var = Some("left behind".into());
    Pooled::reset_on_return(&mut c);
    drop(c);
    settle().await;
    let c = pool.get().await.unwrap();
    assert_eq!(
        c.session_var.as_deref(),
        Some("set up"),
        "the hook ran again after the full reset"
    );
    assert_eq!(
        (runs.load(SeqCst), fake.script.connects.load(SeqCst)),
        (2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_after_connect_is_a_connect_error_that_names_the_hook() {
    let fake = Fake::new();
    let builder = || {
        Pool::builder(fake.clone())
            .max_size(2)
            .acquire_timeout(300 * MS)
            .after_connect(|_conn, _meta| {
                Box::pin(async { Err(FakeError("permission denied for schema app".into())) })
            })
    };
    let err = builder().connect().await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Hook {
                hook: "after_connect",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("after_connect hook failed"),
        "{err}"
    );
    assert!(err.to_string().contains("permission denied"), "{err}");

    let pool = builder().build().unwrap();
    let err = pool.get().await.unwrap_err();
    match &err {
        Error::Timeout {
            failed_hook: Some("after_connect"),
            last_error: Some(_),
            ..
        } => {}
        other => panic!("expected a timeout naming the hook, got {other:?}"),
    }
    assert!(
        err.to_string().contains("in the after_connect hook"),
        "{err}"
    );
    let s = pool.state();
    assert!(s.connect_errors >= 1, "{s:?}");
    assert_eq!((s.open, s.active), (0, 0), "no session kept: {s:?}");
}

#[tokio::test(start_paused = true)]
async fn before_acquire_refuses_an_idle_connection_and_the_checkout_goes_on() {
    let fake = Fake::new();
    let asked = counter();
    let seen = Arc::clone(&asked);
    let pool = Pool::builder(fake.clone())
        .max_size(2)
        .before_acquire(move |conn, meta| {
            seen.fetch_add(1, SeqCst);
            // Refuse the first connection once it has been lent once.
            let keep = !(conn.id == 1 && meta.uses == 1);
            Box::pin(async move { Ok(keep) })
        })
        .build()
        .unwrap();
    let c = pool.get().await.unwrap();
    assert_eq!(asked.load(SeqCst), 0, "a new connection is not asked");
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(c.id, 2, "the refused connection was replaced");
    assert_eq!(asked.load(SeqCst), 1);
    let s = pool.state();
    assert_eq!((s.closed.get(Reason::Refused), s.open, s.active), (1, 1, 1));
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(
        (c.id, asked.load(SeqCst)),
        (2, 2),
        "a kept connection is lent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_before_acquire_retires_the_connection_and_the_caller_is_served() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .before_acquire(|conn, _meta| {
            let fail = conn.id == 1;
            Box::pin(async move {
                match fail {
                    true => Err(FakeError("hook says no".into())),
                    false => Ok(true),
                }
            })
        })
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    let c = pool.get().await.unwrap();
    assert_eq!(c.id, 2);
    assert_eq!(pool.state().closed.get(Reason::Refused), 1);
}

#[tokio::test(start_paused = true)]
async fn a_get_cancelled_inside_before_acquire_loses_no_capacity() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(Duration::from_secs(60))
        .before_acquire(|_conn, _meta| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(true)
            })
        })
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    let cut_short = tokio::time::timeout(Duration::from_secs(1), pool.get()).await;
    assert!(cut_short.is_err(), "the hook was still running");
    settle().await;
    let s = pool.state();
    assert_eq!((s.active, s.max_size), (0, 1), "the slot came back: {s:?}");
    // The connection the hook had is not lent half-vetted: it came back
    // through the return path and is still usable, or was closed.
    let c = tokio::time::timeout(Duration::from_secs(30), pool.get())
        .await
        .expect("served within the hook's 10 s")
        .unwrap();
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn a_before_acquire_that_outlasts_acquire_timeout_times_out_and_closes_the_connection() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(500 * MS)
        .before_acquire(|_conn, _meta| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(true)
            })
        })
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    settle().await;
    let s = pool.state();
    assert_eq!(
        (s.closed.get(Reason::Refused), s.active, s.open),
        (1, 0, 0),
        "{s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn after_release_runs_on_every_return_and_false_or_an_error_retires() {
    let fake = Fake::new();
    let asked = counter();
    let seen = Arc::clone(&asked);
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .after_release(move |conn, meta| {
            seen.fetch_add(1, SeqCst);
            let answer = match conn.session_var.as_deref() {
                Some("refuse") => Ok(false),
                Some("fail") => Err(FakeError("after_release failed".into())),
                _ => Ok(true),
            };
            assert!(meta.uses >= 1, "counted as used by then");
            Box::pin(async move { answer })
        })
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    settle().await;
    let c = pool.get().await.unwrap();
    assert_eq!((c.id, asked.load(SeqCst)), (1, 1), "kept");
    let mut c = c;
    c.session_var = Some("refuse".into());
    drop(c);
    settle().await;
    let mut c = pool.get().await.unwrap();
    assert_eq!(c.id, 2, "refused, replaced");
    c.session_var = Some("fail".into());
    drop(c);
    settle().await;
    let c = pool.get().await.unwrap();
    assert_eq!(c.id, 3, "failed, replaced");
    let s = pool.state();
    assert_eq!((s.closed.get(Reason::Refused), asked.load(SeqCst)), (2, 3));
    assert_eq!(
        fake.script.pings.load(SeqCst),
        0,
        "a hooked return costs no ping of its own"
    );
}

#[tokio::test(start_paused = true)]
async fn a_broken_return_is_retired_without_asking_after_release() {
    let fake = Fake::new();
    let asked = counter();
    let seen = Arc::clone(&asked);
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .after_release(move |_conn, _meta| {
            seen.fetch_add(1, SeqCst);
            Box::pin(async { Ok(true) })
        })
        .build()
        .unwrap();
    let mut c = pool.get().await.unwrap();
    c.broken = true;
    drop(c);
    settle().await;
    assert_eq!(asked.load(SeqCst), 0);
    assert_eq!(pool.state().closed.get(Reason::Broken), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_after_release_holds_its_slot_and_is_not_presumed_dead() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(Duration::from_secs(30))
        .after_release(|_conn, _meta| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(true)
            })
        })
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    let c = pool.get().await.unwrap();
    assert_eq!(c.id, 1, "the same connection, after the hook kept it");
    let s = pool.state();
    assert_eq!((s.presumed_dead, s.validations_hedged), (0, 0), "{s:?}");
}
