//! Waiting and cancellation against the real servers, for both backends:
//! waiters are served in arrival order, and a storm of cancelled `get()`s
//! leaves no leaked slot and no stray server session.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder};
use sqlx::Connection;
use support::db::pg_options;
use tokio::time::Instant;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::{Manager, Pool, Pooled};

/// A name no other run uses.
fn unique(tag: &str) -> String {
    support::db::unique(&format!("vigil_fair_{tag}"))
}

fn maria_options(db: Option<&str>) -> OptsBuilder {
    OptsBuilder::from_opts(Opts::from_url("mysql://root@127.0.0.1:3306/test").unwrap())
        .prefer_socket(false)
        .db_name(db)
}

async fn pg_query(mut c: Pooled<PgManager>) -> bool {
    sqlx::query("SELECT 1").execute(&mut *c).await.is_ok()
}

async fn maria_query(mut c: Pooled<MySqlManager>) -> bool {
    c.query_drop("SELECT 1").await.is_ok()
}

/// 20 waiters queue one after another on a pool of 1 whose only connection
/// is held; released, they are served in the order they arrived.
async fn waiters_served_in_order<M: Manager>(pool: Pool<M>) {
    let held = pool.get().await.expect("first connection");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (p, order) = (pool.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let c = p.get().await.expect("served");
            order.lock().unwrap().push(i);
            drop(c);
        }));
        // Task i is queued before task i+1 starts.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.state().pending != i + 1 {
            assert!(Instant::now() < deadline, "waiter {i} never queued");
            tokio::task::yield_now().await;
        }
    }
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
}

// A current-thread runtime: each waiter runs until it is queued in the
// pool before the test starts the next one. (On several threads the test
// could see the waiter counted a moment before it is queued.)
#[tokio::test]
async fn postgres_waiters_are_served_in_arrival_order() {
    let m = PgManager::new(pg_options(&unique("order")));
    waiters_served_in_order(Pool::builder(m).max_size(1).build().unwrap()).await;
}

#[tokio::test]
async fn mariadb_waiters_are_served_in_arrival_order() {
    let m = MySqlManager::new(maria_options(Some("test")).into());
    waiters_served_in_order(Pool::builder(m).max_size(1).build().unwrap()).await;
}

/// 3,000 gets cancelled at random points (queued, mid-connect, mid-ping,
/// mid-query): afterwards every slot can be had and the server sees exactly
/// the sessions the pool counts.
async fn cancel_storm<M, Q, QF, S, SF>(pool: Pool<M>, query: Q, server_sessions: S)
where
    M: Manager,
    Q: Fn(Pooled<M>) -> QF + Copy + Send + Sync + 'static,
    QF: Future<Output = bool> + Send,
    S: Fn() -> SF,
    SF: Future<Output = usize>,
{
    let warm: Vec<_> = futures::future::try_join_all((0..8).map(|_| pool.get()))
        .await
        .unwrap();
    drop(warm);
    let (acquired, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for wave in 0..2 {
        if wave == 1 {
            tokio::time::sleep(Duration::from_millis(600)).await; // past the bypass window
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..1500 {
            let (pool, acquired, errors) = (pool.clone(), acquired.clone(), errors.clone());
            tasks.spawn(async move {
                let wait = Duration::from_micros(rand::random_range(0..=8_000));
                let Ok(got) = tokio::time::timeout(wait, pool.get()).await else {
                    return;
                };
                let conn = match got {
                    Ok(c) => c,
                    Err(_) => {
                        errors.fetch_add(1, SeqCst);
                        return;
                    }
                };
                acquired.fetch_add(1, SeqCst);
                match rand::random_range(0..3) {
                    0 => drop(conn),
                    1 => {
                        if !query(conn).await {
                            errors.fetch_add(1, SeqCst);
                        }
                    }
                    // A query abandoned mid-flight.
                    _ => {
                        let _ = tokio::time::timeout(wait / 4, query(conn)).await;
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    }
    assert_eq!(errors.load(SeqCst), 0, "a get or a query failed outright");
    let acquired = acquired.load(SeqCst);
    assert!(
        (1..3000).contains(&acquired),
        "{acquired} of 3000: the storm proves nothing"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = pool.state();
        let server = server_sessions().await;
        if s.active == 0 && s.connecting == 0 && server == s.open {
            assert!(s.open <= 8 && s.idle == s.open, "{s:?}");
            assert_eq!(s.created - s.closed.total(), s.open as u64, "{s:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never settled: {s:?}, server sees {server}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = futures::future::try_join_all((0..8).map(|_| pool.get()))
        .await
        .expect("all 8 slots are free after the storm");
    for c in held {
        assert!(query(c).await, "a lent session works");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cancelled_gets_never_leak_capacity() {
    let app = unique("storm");
    let pool = Pool::builder(PgManager::new(pg_options(&app)))
        .max_size(8)
        .acquire_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let admin = tokio::sync::Mutex::new(
        sqlx::PgConnection::connect_with(&pg_options("vigil_fair_admin"))
            .await
            .unwrap(),
    );
    let count = || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&app)
                .fetch_one(&mut *admin.lock().await)
                .await
                .unwrap();
        n as usize
    };
    cancel_storm(pool, pg_query, count).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cancelled_gets_never_leak_capacity() {
    let mut admin = mysql_async::Conn::new(maria_options(Some("test")))
        .await
        .unwrap();
    let db = unique("storm");
    admin
        .query_drop(format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let pool = Pool::builder(MySqlManager::new(maria_options(Some(&db)).into()))
        .max_size(8)
        .acquire_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let admin = tokio::sync::Mutex::new(admin);
    let count = || async {
        let n: Option<usize> = admin
            .lock()
            .await
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE DB = ?",
                (&db,),
            )
            .await
            .unwrap();
        n.unwrap_or(0)
    };
    cancel_storm(pool, maria_query, count).await;
    admin
        .lock()
        .await
        .query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();
}
