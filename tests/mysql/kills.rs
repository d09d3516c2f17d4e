//! Sessions the server ends: killed by `wait_timeout` or `KILL`, or left
//! half-read by a cancelled query, never reach a borrower.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use vigil::{Pool, Reason};

use crate::{admin, base, manager, manager_with_init, trace, wait_until_gone};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conn_killed_by_wait_timeout_is_never_lent() {
    trace();
    const INIT: &str = "SET SESSION wait_timeout = 2";
    // Control: a bare connection with the same session timeout, left idle
    // over the first gap. It must be dead afterwards, or this test proves
    // nothing about the pool.
    let mut control = Conn::new(base().init(vec![INIT]))
        .await
        .expect("open the control connection");
    let pool = Pool::builder(manager_with_init(&[INIT]))
        .max_size(8)
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .expect("valid settings");
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    for burst in 0..5 {
        if burst > 0 {
            // Real idle time: the server's clock is what is under test.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if burst == 1 {
            let dead = control.query_drop("SELECT 1").await;
            assert!(
                dead.is_err(),
                "the server did not close a session idle for 3 s with wait_timeout = 2"
            );
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let pool = pool.clone();
            let errors = Arc::clone(&errors);
            tasks.spawn(async move {
                for _ in 0..25 {
                    let outcome = match pool.get().await {
                        Ok(mut conn) => {
                            conn.query_drop("SELECT 1").await.map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = outcome {
                        errors.lock().unwrap().push(format!("burst {burst}: {e}"));
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a burst task panicked");
        }
    }
    let errors = errors.lock().unwrap();
    let state = pool.state();
    assert!(
        errors.is_empty(),
        "callers saw errors: {errors:#?}\n{state:#?}"
    );
    assert_eq!(
        state.server_idle_timeout,
        Some(Some(Duration::from_secs(2))),
        "{state:#?}"
    );
    assert!(
        state.closed.get(Reason::ServerTimeout) > 0,
        "no connection was retired for the server's timeout: {state:#?}"
    );
    assert_eq!(
        state.validations_failed, 0,
        "connections were found dead instead of retired in time: {state:#?}"
    );
    assert_eq!(state.closed.get(Reason::Broken), 0, "{state:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_idle_connections_are_never_lent() {
    trace();
    let mut admin = admin().await;
    let pool = Pool::builder(manager())
        .max_size(8)
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .expect("valid settings");
    // Fill the pool: eight connections lent at once, then all returned.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(pool.get().await.expect("fill the pool"));
    }
    let ids: Vec<u32> = held.iter().map(|c| c.id()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 8, "{ids:?}");
    drop(held);
    let returned = Instant::now();
    assert_eq!(pool.state().idle, 8);

    for id in &ids {
        admin
            .query_drop(format!("KILL {id}"))
            .await
            .expect("kill a pool connection");
    }
    wait_until_gone(&mut admin, &ids, Duration::from_secs(10)).await;
    // Checkout pings only connections silent longer than the 500 ms window;
    // without this wait the dead connections would be lent unchecked.
    let window = Duration::from_millis(600);
    if let Some(rest) = window.checked_sub(returned.elapsed()) {
        tokio::time::sleep(rest).await;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            conn.query_drop("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u32, String>(conn.id())
        });
    }
    let mut errors = Vec::new();
    let mut new_ids = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done.expect("a task panicked") {
            Ok(id) => new_ids.push(id),
            Err(e) => errors.push(e),
        }
    }
    let state = pool.state();
    assert!(
        errors.is_empty(),
        "callers saw errors: {errors:#?}\n{state:#?}"
    );
    assert!(
        new_ids.iter().all(|id| !ids.contains(id)),
        "a killed session was lent: {new_ids:?} vs killed {ids:?}"
    );
    assert!(
        state.validations_failed > 0,
        "the dead connections were never checked: {state:#?}"
    );
    assert_eq!(
        state.closed.get(Reason::ValidationFailed),
        state.validations_failed,
        "{state:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_query_leaves_no_half_read_connection_in_the_pool() {
    trace();
    let pool = Pool::builder(manager())
        .max_size(1)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    let first_id = {
        let mut conn = pool.get().await.expect("get");
        let cancelled = tokio::time::timeout(
            Duration::from_millis(100),
            conn.query_drop("SELECT SLEEP(2)"),
        )
        .await;
        assert!(cancelled.is_err(), "the query should have been cut off");
        conn.id()
    };
    let mut conn = pool.get().await.expect("get after a cancelled query");
    let one: Option<u8> = conn.query_first("SELECT 1").await.expect("a clean session");
    assert_eq!(one, Some(1));
    assert_ne!(
        conn.id(),
        first_id,
        "the half-read connection was lent again"
    );
    assert_eq!(
        pool.state().closed.get(Reason::Broken),
        1,
        "{:#?}",
        pool.state()
    );
}
