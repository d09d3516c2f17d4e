//! Contention and close: many tasks on a small pool, and no sessions left
//! on the server after `close`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use vigil::backend::mysql::MySqlManager;
use vigil::{Pool, Reason};

use crate::{admin, base, listed, manager, trace, unique, wait_until_gone};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_1000_tasks_pool_of_8_all_finish() {
    trace();
    let mut admin = admin().await;
    // The pool's sessions are marked by a database of their own, so the
    // server's count of them does not depend on our bookkeeping. TCP only:
    // by default (`prefer_socket`) mysql_async opens each connection over
    // TCP, then reopens it over the server's Unix socket and quits the TCP
    // session, which the server lists for a moment longer; that transient
    // second session is the driver's, not the pool's.
    let db = unique("vigil_contention");
    admin
        .query_drop(format!("CREATE DATABASE {db}"))
        .await
        .expect("create database");
    let pool = Pool::builder(MySqlManager::new(
        base().db_name(Some(&db)).prefer_socket(false).into(),
    ))
    .max_size(8)
    .acquire_timeout(Duration::from_secs(30))
    .build()
    .expect("valid settings");

    let done = Arc::new(AtomicBool::new(false));
    let gauge = {
        let (pool, done) = (pool.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(SeqCst) {
                let s = pool.state();
                max = max.max(s.open + s.connecting);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max
        })
    };
    let server = {
        let (db, done) = (db.clone(), Arc::clone(&done));
        let mut admin = self::admin().await;
        tokio::spawn(async move {
            let (mut max, mut samples) = (0, 0);
            while !done.load(SeqCst) {
                let rows: Vec<u64> = admin
                    .exec(
                        "SELECT ID FROM information_schema.processlist WHERE DB = ?",
                        (&db,),
                    )
                    .await
                    .expect("count sessions");
                max = max.max(rows.len() as u64);
                samples += 1;
            }
            (max, samples)
        })
    };

    let ids = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (pool, ids) = (pool.clone(), Arc::clone(&ids));
        tasks.spawn(async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            conn.query_drop("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            ids.lock().unwrap().insert(conn.id());
            Ok::<(), String>(())
        });
    }
    let mut errors = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result.expect("a task panicked") {
            errors.push(e);
        }
    }
    done.store(true, SeqCst);
    let max_open = gauge.await.expect("gauge task");
    let (max_server, samples) = server.await.expect("server sampler");
    let state = pool.state();
    let ids = ids.lock().unwrap().clone();
    admin
        .query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();

    assert!(
        errors.is_empty(),
        "{} of 1000 failed: {errors:?}",
        errors.len()
    );
    assert!(ids.len() <= 8, "{} distinct sessions: {ids:?}", ids.len());
    assert!(max_open <= 8, "the pool counted {max_open} connections");
    assert!(
        samples > 0 && max_server >= 1,
        "the server sampler saw nothing"
    );
    assert!(
        max_server <= 8,
        "the server saw {max_server} sessions of this pool"
    );
    assert!(state.created <= 8, "the pool churned: {state:#?}");
    assert_eq!(state.acquire_timeouts, 0, "{state:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pool_leaves_no_server_sessions() {
    trace();
    let mut admin = admin().await;
    let pool = Pool::builder(manager())
        .max_size(4)
        .build()
        .expect("valid settings");
    let held: Vec<_> = futures::future::try_join_all((0..4).map(|_| pool.get()))
        .await
        .expect("get four");
    let ids: Vec<u32> = held.iter().map(|c| c.id()).collect();
    drop(held);
    assert_eq!(listed(&mut admin, &ids).await.len(), 4);
    pool.close().await;
    wait_until_gone(&mut admin, &ids, Duration::from_secs(5)).await;
    assert_eq!(pool.state().closed.get(Reason::Closed), 4);
}
