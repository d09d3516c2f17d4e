//! The way back: broken connections retired on return, session reset and
//! rollback before reuse, `detach` and `retire`.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use vigil::{Pool, Reason};

use crate::pool;
use crate::support::fake::Fake;

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
        let started = tokio::time::Instant::now();
        let c = pool.get().await.unwrap();
        assert_eq!(vigil::Pooled::id(&c), 2, "hang={hang}: never lent again");
        if hang {
            // The hanging reset gives its slot up at the hedge delay (the
            // connection is presumed dead), not after validation_timeout.
            assert_eq!(started.elapsed(), Duration::from_millis(50));
            assert_eq!(pool.state().presumed_dead, 1);
            tokio::time::sleep(Duration::from_secs(1)).await;
            crate::settle().await;
            assert_eq!(pool.state().presumed_dead, 0);
        }
        assert_eq!(pool.state().closed.get(Reason::ResetFailed), 1);
    }
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

/// A borrower that left a statement running (its query future dropped
/// mid-flight): the return asks the manager's `reset` to stop it before
/// anything else, counts the stop, and lends the same session again once
/// it is clean. A manager that cannot stop it gets the session closed: it
/// is never lent with a reply pending.
#[tokio::test(start_paused = true)]
async fn a_statement_left_running_is_stopped_by_the_reset_or_the_session_closed() {
    let fake = Fake::new();
    let pool = pool(&fake, 1);
    let mut c = pool.get().await.unwrap();
    c.query_running = true;
    c.in_transaction = true;
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(
        vigil::Pooled::id(&c),
        1,
        "the same session, stopped and cleaned"
    );
    assert!(!c.query_running && !c.in_transaction);
    assert_eq!(fake.script.stops.load(SeqCst), 1);
    assert_eq!(pool.state().queries_cancelled, 1);
    let mut c = c;
    fake.script.cannot_stop.store(true, SeqCst);
    c.query_running = true;
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(
        vigil::Pooled::id(&c),
        2,
        "closed, not lent with a reply pending"
    );
    assert_eq!(fake.script.stops.load(SeqCst), 2);
    let s = pool.state();
    assert_eq!(
        s.queries_cancelled, 1,
        "nothing was stopped the second time"
    );
    assert_eq!(s.closed.get(Reason::ResetFailed), 1);
}
