//! Sessions the server ends, by `idle_session_timeout` or
//! `pg_terminate_backend`, are never lent.

use std::collections::HashSet;
use std::time::Instant;

use sqlx::postgres::PgConnection;
use sqlx::Connection;
use tokio::task::JoinSet;
use vigil::backend::sqlx::PgManager;
use vigil::{Pool, Reason};

use crate::{
    admin, backend_pid, backends, builder, eventually, pg_options, select_one, trace, unique, MS,
    SEC,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conn_killed_by_idle_session_timeout_is_never_lent() {
    trace();
    let app = unique("idlekill");
    let session = [("idle_session_timeout", "2s")];
    // Control: the server really ends a session idle for longer than its
    // session timeout, so the pool below has something to dodge.
    let control = tokio::spawn({
        let opts = pg_options(&unique("idlectl")).options(session);
        async move {
            let mut conn = PgConnection::connect_with(&opts).await.expect("connect");
            tokio::time::sleep(3 * SEC).await;
            conn.ping().await
        }
    });

    let pool = Pool::builder(PgManager::new(pg_options(&app).options(session)))
        .max_size(8)
        .acquire_timeout(10 * SEC)
        .build()
        .expect("valid settings");
    let mut errors = Vec::new();
    for burst in 0..5 {
        if burst > 0 {
            // Longer than the server's 2 s: every connection idle through
            // the gap would be dead if the pool kept it.
            tokio::time::sleep(3 * SEC).await;
        }
        let mut tasks = JoinSet::new();
        for _ in 0..8 {
            let pool = pool.clone();
            tasks.spawn(async move {
                let mut errors = Vec::new();
                for _ in 0..25 {
                    if let Err(e) = select_one(&pool).await {
                        errors.push(e);
                    }
                }
                errors
            });
        }
        while let Some(r) = tasks.join_next().await {
            errors.extend(r.expect("burst task"));
        }
    }

    let control = control.await.expect("control task");
    assert!(
        control.is_err(),
        "the server did not end a session idle past idle_session_timeout; the test proves nothing"
    );
    let s = pool.state();
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(s.server_idle_timeout, Some(Some(2 * SEC)), "{s:?}");
    assert!(s.closed.get(Reason::ServerTimeout) > 0, "{s:?}");
    assert_eq!(
        s.validations_failed, 0,
        "a server-killed session reached validation: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_idle_connections_are_never_lent() {
    trace();
    let app = unique("killed");
    let mut admin = admin().await;
    let pool = builder(&app).build().expect("valid settings");

    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(pool.get().await.expect("get"));
    }
    let mut killed = HashSet::new();
    for conn in &mut held {
        killed.insert(backend_pid(conn).await);
    }
    assert_eq!(killed.len(), 8, "eight distinct backends");
    drop(held);
    // Each return is verified with a ping in the background first
    // (`verify_on_return`), so the connections reach the idle set shortly.
    eventually!(
        "the returns to be verified",
        5 * SEC,
        pool.state().idle == 8
    );
    let returned = Instant::now();

    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app)
    .fetch_all(&mut admin)
    .await
    .expect("pg_terminate_backend");
    assert_eq!(terminated, vec![true; 8]);
    eventually!(
        "the killed backends to go",
        5 * SEC,
        backends(&mut admin, &app).await == 0
    );
    // Past the 500 ms bypass window: a checkout must validate, else it
    // would lend a dead connection and this test would prove nothing.
    tokio::time::sleep((600 * MS).saturating_sub(returned.elapsed())).await;

    let before = pool.state();
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        });
    }
    let mut pids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        pids.push(
            r.expect("task")
                .expect("a checkout after the kill succeeds"),
        );
    }
    assert!(
        pids.iter().all(|p| !killed.contains(p)),
        "lent a killed backend"
    );
    let after = pool.state();
    assert_eq!(
        after.validations_failed - before.validations_failed,
        8,
        "{after:?}"
    );
    assert_eq!(after.closed.get(Reason::ValidationFailed), 8, "{after:?}");
}

/// A session terminated while lent is counted `broken` when it comes back
/// (the return ping fails with `57P01` or an I/O error), not `reset_failed`:
/// the metric tells the operator what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_killed_while_lent_is_retired_as_broken_not_reset_failed() {
    trace();
    let app = unique("lentkill");
    let pool = builder(&app).build().expect("valid settings");
    let mut admin = admin().await;
    let mut conn = pool.get().await.expect("a connection");
    let pid = backend_pid(&mut conn).await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .expect("pg_terminate_backend");
    assert!(killed);
    drop(conn);
    eventually!(
        "the returned connection to be retired",
        5 * SEC,
        pool.state().open == 0
    );
    let closed = pool.state().closed;
    assert_eq!(
        (closed.get(Reason::Broken), closed.get(Reason::ResetFailed)),
        (1, 0),
        "{closed:?}"
    );
    assert_eq!(
        select_one(&pool).await,
        Ok(1),
        "a fresh session after the kill"
    );
    pool.close().await;
}
