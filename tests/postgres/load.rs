//! Load: many tasks on a small pool, and storms of cancelled `get()`s that
//! must not leak capacity.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use vigil::backend::sqlx::PgManager;
use vigil::Pool;

use crate::{admin, backends, builder, eventually, select_one, trace, unique, MS, SEC};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_1000_tasks_pool_of_8_all_finish() {
    trace();
    let app = unique("contention");
    let pool = builder(&app)
        .acquire_timeout(30 * SEC)
        .build()
        .expect("valid settings");
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (pool, done, app) = (pool.clone(), Arc::clone(&done), app.clone());
        async move {
            let mut admin = admin().await;
            let (mut server, mut open, mut samples) = (0, 0, 0);
            while !done.load(SeqCst) {
                server = server.max(backends(&mut admin, &app).await);
                open = open.max(pool.state().open);
                samples += 1;
                tokio::time::sleep(5 * MS).await;
            }
            (server, open, samples)
        }
    });

    let mut tasks = JoinSet::new();
    for _ in 0..1000 {
        let pool = pool.clone();
        tasks.spawn(async move { select_one(&pool).await });
    }
    let mut errors = Vec::new();
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(1) => ok += 1,
            Ok(n) => errors.push(format!("SELECT 1 returned {n}")),
            Err(e) => errors.push(e),
        }
    }
    done.store(true, SeqCst);
    let (server, open, samples) = sampler.await.expect("sampler");
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(ok, 1000);
    assert!(samples > 0);
    assert!(server <= 8, "{server} server backends for a pool of 8");
    assert!(open <= 8, "{open} open for a pool of 8");
    assert!(server > 0, "the sampler saw the pool's backends");
}

/// One `get()` given a random, mostly tiny, time to succeed (by `timeout`
/// or by losing a `select!`), then a random use of what it got; in the
/// second wave some borrowers retire their connection.
async fn storm_task(
    wave: u8,
    pool: Pool<PgManager>,
    errors: Arc<AtomicUsize>,
    acquired: Arc<AtomicUsize>,
) {
    // One in five waits long enough for a connect to finish.
    let wait = if rand::random_bool(0.8) {
        Duration::from_micros(rand::random_range(0..=2000))
    } else {
        Duration::from_micros(rand::random_range(0..=20_000))
    };
    let got = if rand::random_bool(0.5) {
        tokio::select! {
            r = pool.get() => Some(r),
            _ = tokio::time::sleep(wait) => None,
        }
    } else {
        tokio::time::timeout(wait, pool.get()).await.ok()
    };
    let mut conn = match got {
        None => return,
        Some(Ok(conn)) => conn,
        Some(Err(_)) => {
            errors.fetch_add(1, SeqCst);
            return;
        }
    };
    acquired.fetch_add(1, SeqCst);
    match rand::random_range(0..4 + wave) {
        0 => {}
        1 => tokio::time::sleep(Duration::from_micros(500)).await,
        2 => {
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_err() {
                errors.fetch_add(1, SeqCst);
            }
        }
        // A query abandoned mid-flight: the next borrower must still get a
        // usable session.
        3 => {
            let q = sqlx::query("SELECT pg_sleep(0.001)").execute(&mut *conn);
            let _ = tokio::time::timeout(wait, q).await;
        }
        _ => vigil::Pooled::retire(conn),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_gets_never_leak_capacity() {
    trace();
    let app = unique("cancel");
    let mut admin = admin().await;
    let pool = builder(&app)
        .acquire_timeout(3 * SEC)
        .build()
        .expect("valid settings");
    // Start with eight idle connections, so gets within the tiny waits
    // can succeed too.
    let warm: Vec<_> = futures::future::try_join_all((0..8).map(|_| pool.get()))
        .await
        .expect("warm up");
    drop(warm);
    let errors = Arc::new(AtomicUsize::new(0));
    let acquired = Arc::new(AtomicUsize::new(0));
    // Two waves of 1,500: the first meets fresh idle connections (no ping);
    // the second starts after the 500 ms bypass window, so its gets are cut
    // off mid-validation too, and mid-connect where earlier borrowers
    // retired their connections.
    for wave in 0..2 {
        if wave == 1 {
            tokio::time::sleep(600 * MS).await;
        }
        let mut tasks = JoinSet::new();
        for _ in 0..1500 {
            tasks.spawn(storm_task(
                wave,
                pool.clone(),
                Arc::clone(&errors),
                Arc::clone(&acquired),
            ));
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task");
        }
    }
    assert_eq!(errors.load(SeqCst), 0, "a get or a query failed outright");
    // Both outcomes happened, else the storm proves nothing.
    let acquired = acquired.load(SeqCst);
    let s = pool.state();
    eprintln!("storm: {acquired} of 3000 gets acquired; {s:?}");
    assert!(
        (1..3000).contains(&acquired),
        "{acquired} of 3000 gets got a connection"
    );

    eventually!("returns and abandoned connects to settle", 5 * SEC, {
        let s = pool.state();
        s.connecting == 0 && s.active == 0
    });
    let s = pool.state();
    assert_eq!(s.idle + s.active, s.open, "{s:?}");
    assert!(s.open <= 8, "{s:?}");

    let mut held = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let mut conn = pool
            .get()
            .await
            .expect("all 8 slots are free after the storm");
        assert!(started.elapsed() < 3 * SEC);
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *conn)
            .await
            .expect("a lent session works");
        assert_eq!(one, 1);
        held.push(conn);
    }
    assert_eq!(pool.state().open, 8);
    drop(held);
    // No server session outlives the pool's count (abandoned connects are
    // closed, not leaked).
    eventually!(
        "server backends to match the pool's count",
        5 * SEC,
        backends(&mut admin, &app).await == pool.state().open as i64
    );
}
