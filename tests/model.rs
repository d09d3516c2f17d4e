//! Random operation sequences against the pool core (fake manager, paused
//! time), checking after every step what must always hold: capacity is
//! conserved, nobody waits while a connection is idle, counts add up, and
//! close wakes everyone. The operations move a capacity permit through
//! every owner that carries one: a checkout, a lent guard (returned,
//! retired, detached), a `Returning` task (dirty or failed rollback), a
//! detached ping or connect, a keepalive.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use support::fake::Fake;
use tokio::task::JoinHandle;
use vigil::{Error, Pool, Pooled, Validation};

const MAX: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// A caller that holds what it gets for `hold` ms, giving up after `patience` ms.
    Get { hold: u64, patience: u64 },
    /// Drop the oldest guard held by the test itself.
    Release,
    /// Retire the oldest guard held by the test.
    Retire,
    /// Take a guard and keep it in the test.
    Keep,
    /// Take the oldest guard held by the test out of the pool for good: its
    /// permit must come back although the connection never does.
    Detach,
    /// Return the oldest guard held by the test with a transaction open: a
    /// `Returning` task owns connection and permit while it rolls back.
    ReturnDirty,
    /// Return the oldest guard held by the test with its session broken.
    ReturnBroken,
    /// Rollbacks on return fail / succeed.
    Resets(bool),
    /// `retire_all`: a new generation; what is lent now is closed on return.
    RetireAll,
    /// The next connects fail / succeed again.
    Connects(bool),
    /// Pings fail / succeed.
    Pings(bool),
    /// `Pool::resize` to this size (1..=MAX).
    Resize(usize),
    /// Let time pass.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..30, 0u64..40).prop_map(|(hold, patience)| Op::Get { hold, patience }),
        2 => Just(Op::Release),
        1 => Just(Op::Retire),
        2 => Just(Op::Keep),
        1 => Just(Op::Detach),
        1 => Just(Op::ReturnDirty),
        1 => Just(Op::ReturnBroken),
        1 => any::<bool>().prop_map(Op::Resets),
        1 => Just(Op::RetireAll),
        1 => any::<bool>().prop_map(Op::Connects),
        1 => any::<bool>().prop_map(Op::Pings),
        1 => (1..=MAX).prop_map(Op::Resize),
        3 => (0u64..1_500).prop_map(Op::Advance),
    ]
}

/// What must hold whenever the pool is observed between steps.
fn check_invariants(pool: &Pool<Fake>, kept: usize) {
    let s = pool.state();
    assert_eq!(s.idle + s.active, s.open, "{s:?}");
    assert!(s.open + s.connecting <= MAX, "capacity exceeded: {s:?}");
    assert!(
        s.active >= kept,
        "a guard the test holds is counted active: {s:?}"
    );
    assert!(
        s.pending == 0 || s.idle == 0,
        "a waiter sleeps while a connection is idle: {s:?}"
    );
}

/// Capacity against the test's own ledger: every guard the test and its
/// callers hold is a unit of `max_size` the pool must not count available
/// (after a shrink the test may hold more than the new size: then none is).
fn check_ledger(pool: &Pool<Fake>, guards: usize) {
    let s = pool.state();
    assert!(
        s.available + guards.min(s.max_size) <= s.max_size,
        "{guards} guards held by the test, yet {} units available of {}: {s:?}",
        s.available,
        s.max_size
    );
}

async fn run(ops: Vec<Op>) {
    let fake = Fake::new();
    fake.script.set_connect_delay(Duration::from_millis(5));
    *fake.script.ping_delay.lock().unwrap() = Duration::from_millis(2);
    let pool = Pool::builder(fake.clone())
        .max_size(MAX)
        .min_idle(1)
        .validation(Validation::IdleFor(Duration::from_millis(100)))
        .acquire_timeout(Duration::from_millis(200))
        .max_lifetime(Some(Duration::from_secs(3)))
        .keepalive_interval(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let mut kept: Vec<Pooled<Fake>> = Vec::new();
    let mut callers: Vec<JoinHandle<()>> = Vec::new();
    // The test's own ledger of the guards its callers hold right now.
    let held_by_callers = Arc::new(AtomicUsize::new(0));
    for op in ops {
        match op {
            Op::Get { hold, patience } => {
                let pool = pool.clone();
                let held = Arc::clone(&held_by_callers);
                callers.push(tokio::spawn(async move {
                    let got =
                        tokio::time::timeout(Duration::from_millis(patience), pool.get()).await;
                    if let Ok(Ok(conn)) = got {
                        held.fetch_add(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(hold)).await;
                        held.fetch_sub(1, SeqCst);
                        drop(conn);
                    }
                }));
            }
            Op::Release if !kept.is_empty() => drop(kept.remove(0)),
            Op::Retire if !kept.is_empty() => Pooled::retire(kept.remove(0)),
            Op::Keep => {
                if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(50), pool.get()).await
                {
                    kept.push(c);
                }
            }
            Op::Connects(ok) => {
                if ok {
                    fake.script.heal_connects()
                } else {
                    fake.script.fail_connects("refused")
                }
            }
            Op::Pings(ok) => fake.script.ping_fails.store(!ok, SeqCst),
            Op::Detach if !kept.is_empty() => drop(Pooled::detach(kept.remove(0))),
            Op::ReturnDirty if !kept.is_empty() => {
                let mut conn = kept.remove(0);
                conn.in_transaction = true;
                drop(conn);
            }
            Op::ReturnBroken if !kept.is_empty() => {
                let mut conn = kept.remove(0);
                conn.broken = true;
                drop(conn);
            }
            Op::Resets(ok) => fake.script.reset_fails.store(!ok, SeqCst),
            Op::RetireAll => pool.retire_all(),
            Op::Resize(n) => pool.resize(n).expect("1..=MAX is a valid size"),
            Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Release | Op::Retire | Op::Detach | Op::ReturnDirty | Op::ReturnBroken => {}
        }
        tokio::task::yield_now().await;
        check_invariants(&pool, kept.len());
        check_ledger(&pool, kept.len() + held_by_callers.load(SeqCst));
    }
    // Quiesce: every caller finishes (they all have a patience), then the
    // pool must hold no phantom activity and every slot must be available.
    for c in callers {
        c.await.unwrap();
    }
    fake.script.heal_connects();
    fake.script.ping_fails.store(false, SeqCst);
    fake.script.reset_fails.store(false, SeqCst);
    drop(kept);
    // The housekeeper may be replacing a retired connection at any instant;
    // a connect takes 5 ms, so activity must drain well within a second.
    let mut waited = 0;
    let s = loop {
        let s = pool.state();
        if (s.active, s.connecting, s.pending) == (0, 0, 0) {
            break s;
        }
        assert!(waited < 1_000, "activity never drained: {s:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += 1;
    };
    assert_eq!(s.created - s.closed.total(), s.open as u64, "{s:?}");
    // Once everything is back, a shrink has been carried out in full, and
    // every unit is back: none lost, none minted.
    assert!(s.open <= s.max_size, "open beyond the current size: {s:?}");
    assert_eq!(s.available, s.max_size, "units of capacity lost: {s:?}");
    pool.resize(MAX).unwrap();
    assert_eq!(pool.state().available, MAX);
    // After failed connects the pool waits up to 500 ms before its next
    // attempt (pool-wide backoff); let that pass so only lost slots fail.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all: Vec<_> = futures::future::join_all((0..MAX).map(|_| pool.get())).await;
    assert!(
        all.iter().all(|r| r.is_ok()),
        "a slot was lost: {:?}",
        pool.state()
    );
    // Close wakes a waiter at once and closes everything once returned.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    tokio::task::yield_now().await;
    let closing = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close().await }
    });
    assert!(matches!(waiter.await.unwrap(), Err(Error::Closed)));
    drop(all);
    closing.await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(pool.state().open, 0, "{:?}", pool.state());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn pool_invariants_hold_for_any_operation_sequence(ops in proptest::collection::vec(op(), 1..60)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
