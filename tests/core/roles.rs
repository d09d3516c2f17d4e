//! The role check on a saturated pool: with every connection lent (more
//! callers than connections, so a returned connection goes straight to the
//! next caller and none is ever idle), the housekeeper has nothing to ask.
//! Before issue 27 it skipped its turn ("all lent: try again at the next
//! pass") for as long as the load lasted, so a demoted primary was never
//! noticed; now the next connection that comes back is asked.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use vigil::{Pool, Reason};

use crate::support::fake::Fake;
use crate::MS;

#[tokio::test(start_paused = true)]
async fn a_pool_with_nothing_idle_still_checks_its_role_every_interval() {
    let fake = Fake::new();
    fake.script.role_required.store(true, SeqCst);
    let pool = Pool::builder(fake.clone())
        .max_size(2)
        .role_check_interval(Duration::from_secs(1))
        .build()
        .expect("valid settings");
    // 4 callers on 2 connections, back to back for 5 s.
    let load = (0..4).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::time::Instant::now() < until {
                let conn = pool.get().await.expect("a connection");
                tokio::time::sleep(10 * MS).await;
                drop(conn);
            }
        })
    });
    let load: Vec<_> = load.collect();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let checks = fake.script.role_checks.load(SeqCst);
    assert!(
        checks >= 2,
        "{checks} role checks in 2.5 s at a 1 s interval with nothing idle"
    );
    assert!(checks <= 3, "one per interval, not per return: {checks}");
    assert_eq!(pool.state().idle, 0, "the load keeps every connection lent");

    // The role goes: the next check (on a returning connection) moves the
    // whole pool, within one interval.
    fake.script.role_lost.store(true, SeqCst);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let s = pool.state();
    assert!(s.closed.get(Reason::RoleChanged) >= 1, "{s:?}");
    for task in load {
        task.await.expect("no caller saw an error");
    }
}
