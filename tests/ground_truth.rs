//! The metrics tell the truth: under a concurrent workload with connections
//! killed from outside, at every quiescent moment the exported gauges equal
//! the sessions the real server sees for the pool, and created − closed
//! equals open.

mod support;

use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::Connection;
use tokio::time::Instant;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::metrics::Metrics;
use vigil::{Manager, Pool, Reason};

/// A name no other run uses.
fn unique(tag: &str) -> String {
    support::db::unique(&format!("vigil_gt_{tag}"))
}

/// The exported `vigil_connections{pool=..,state=..}` value, read from the
/// text a scrape would return.
fn exported(metrics: &Metrics, pool: &str, state: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series = format!("vigil_connections{{pool=\"{pool}\",state=\"{state}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line[series.len()..].parse().unwrap()
}

/// Waits (bounded) for the pool to be quiescent and for the server's count
/// to agree with it, then checks every identity the metrics promise.
async fn check_quiescent<M, F, Fut>(pool: &Pool<M>, metrics: &Metrics, server_count: F)
where
    M: Manager,
    F: Fn() -> Fut,
    Fut: Future<Output = u64>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = pool.state();
        let server = server_count().await;
        let quiet = s.active == 0 && s.connecting == 0 && s.pending == 0;
        if quiet && server == s.open as u64 {
            let name = &pool.config().name;
            assert_eq!(
                exported(metrics, name, "idle") + exported(metrics, name, "active"),
                server
            );
            assert_eq!(s.created - s.closed.total(), s.open as u64, "{s:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never agreed: pool {s:?}, server sees {server} sessions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 32 tasks × 100 queries on a pool of 8.
async fn workload<M, F, Fut>(pool: &Pool<M>, query: F)
where
    M: Manager,
    F: Fn(vigil::Pooled<M>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (pool, query) = (pool.clone(), query.clone());
            tokio::spawn(async move {
                for _ in 0..100 {
                    query(pool.get().await.expect("no errors reach callers")).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gauges_match_the_server_and_closures_are_counted() {
    let app = unique("pg");
    let opts = |app: &str| {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .username("postgres")
            .database("test")
            .ssl_mode(PgSslMode::Disable)
            .application_name(app)
    };
    let pool = Pool::builder(PgManager::new(opts(&app)))
        .name("pg")
        .max_size(8)
        .build()
        .unwrap();
    let metrics = Metrics::new();
    metrics.add(&pool);
    let admin = tokio::sync::Mutex::new(
        sqlx::PgConnection::connect_with(&opts("vigil_gt_admin"))
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 must be up"),
    );
    let count = || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&app)
                .fetch_one(&mut *admin.lock().await)
                .await
                .unwrap();
        n as u64
    };
    let query = |mut c: vigil::Pooled<PgManager>| async move {
        sqlx::query("SELECT 1").execute(&mut *c).await.unwrap();
    };

    workload(&pool, query).await;
    check_quiescent(&pool, &metrics, count).await;

    // Kill every idle backend, let them sit past the bypass window, run again.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app)
    .execute(&mut *admin.lock().await)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    workload(&pool, query).await;
    check_quiescent(&pool, &metrics, count).await;
    let s = pool.state();
    assert!(s.closed.get(Reason::ValidationFailed) > 0, "{s:?}");
    assert_eq!(
        s.closed.total(),
        s.closed.get(Reason::ValidationFailed),
        "{s:?}"
    );

    pool.close().await;
    check_quiescent(&pool, &metrics, count).await;
    assert_eq!(pool.state().open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_gauges_match_the_server_and_closures_are_counted() {
    let base = || {
        OptsBuilder::from_opts(Opts::from_url("mysql://root@127.0.0.1:3306/test").unwrap())
            .prefer_socket(false)
    };
    let mut admin = mysql_async::Conn::new(base())
        .await
        .expect("MariaDB at 127.0.0.1:3306 must be up");
    // The pool's sessions are the ones using a database of their own.
    let db = unique("my");
    admin
        .query_drop(format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let pool = Pool::builder(MySqlManager::new(base().db_name(Some(&db)).into()))
        .name("maria")
        .max_size(8)
        .build()
        .unwrap();
    let metrics = Metrics::new();
    metrics.add(&pool);
    let admin = tokio::sync::Mutex::new(admin);
    let count = || async {
        let n: Option<u64> = admin
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
    let query = |mut c: vigil::Pooled<MySqlManager>| async move {
        c.query_drop("SELECT 1").await.unwrap();
    };

    workload(&pool, query).await;
    check_quiescent(&pool, &metrics, count).await;

    let ids: Vec<u64> = admin
        .lock()
        .await
        .exec(
            "SELECT ID FROM information_schema.processlist WHERE DB = ?",
            (&db,),
        )
        .await
        .unwrap();
    for id in &ids {
        admin
            .lock()
            .await
            .query_drop(format!("KILL {id}"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    workload(&pool, query).await;
    check_quiescent(&pool, &metrics, count).await;
    let s = pool.state();
    let discovered = s.closed.get(Reason::ValidationFailed) + s.closed.get(Reason::Broken);
    assert!(discovered >= ids.len() as u64, "{s:?}");
    assert_eq!(s.closed.total(), discovered, "{s:?}");

    pool.close().await;
    check_quiescent(&pool, &metrics, count).await;
    admin
        .lock()
        .await
        .query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();
}
