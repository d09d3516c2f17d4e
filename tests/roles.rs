//! When the database's role changes under the pool: a primary turned
//! read-only (`default_transaction_read_only`, reloaded without a restart)
//! behind `target_session_attrs=read-write` with a second writable host
//! listed. The housekeeper's role check finds it without any write failing;
//! a read-only error seen by `Pool::run` moves the pool at once; with no
//! writable host left, callers get an error naming the role problem.
//! Private PostgreSQL servers, so the shared one is never made read-only.

#[path = "faults/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::time::{Duration, Instant};

use servers::PrivatePg;
use tokio_postgres::{Client, NoTls};
use vigil::backend::tokio_postgres::{PgClient, TokioPgManager};
use vigil::{Pool, Reason, RunError, Work};

async fn admin(pg: &PrivatePg) -> Client {
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg.port()
        ),
        NoTls,
    )
    .await
    .expect("admin connection");
    tokio::spawn(connection);
    client
}

/// Two writable servers, each with table `w`.
async fn two_primaries() -> (PrivatePg, PrivatePg) {
    let (a, b) = (PrivatePg::start(), PrivatePg::start());
    for pg in [&a, &b] {
        admin(pg)
            .await
            .batch_execute("CREATE TABLE w (port int)")
            .await
            .expect("create table");
    }
    (a, b)
}

/// Makes `pg` read-only for every session, without a restart.
async fn demote(pg: &PrivatePg) {
    // Two statements, two round trips: ALTER SYSTEM refuses to run in the
    // implicit transaction of a multi-statement query.
    let admin = admin(pg).await;
    admin
        .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .expect("demote");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
}

fn manager(hosts: &[&PrivatePg]) -> TokioPgManager {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|pg| format!("127.0.0.1:{}", pg.port()))
        .collect();
    TokioPgManager::from_url(&format!(
        "postgres://postgres@{}/postgres?target_session_attrs=read-write&sslmode=disable",
        hosts.join(",")
    ))
    .expect("a well-formed URL")
}

/// A write; the port of the server that took it.
fn write(conn: &mut PgClient) -> Work<'_, i32, tokio_postgres::Error> {
    Box::pin(async move {
        let row = conn
            .query_one(
                "INSERT INTO w SELECT inet_server_port() RETURNING port",
                &[],
            )
            .await?;
        Ok(row.get(0))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_check_finds_a_demoted_primary_before_any_write_fails() {
    let (a, b) = two_primaries().await;
    let pool = Pool::builder(manager(&[&a, &b]))
        .max_size(2)
        .role_check_interval(Duration::from_millis(500))
        .build()
        .expect("valid settings");
    let port = pool.run(write).await.expect("a write");
    assert_eq!(
        port,
        i32::from(a.port()),
        "the first host listed takes writes"
    );
    demote(&a).await;
    let deadline = Instant::now() + Duration::from_millis(500 + 1_500);
    while pool.state().closed.get(Reason::RoleChanged) == 0 {
        assert!(
            Instant::now() < deadline,
            "within the check period plus 1 s: {:?}",
            pool.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let port = pool.run(write).await.expect("writes go on");
    assert_eq!(
        port,
        i32::from(b.port()),
        "to the host that is writable now"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_error_moves_the_pool_at_once() {
    let (a, b) = two_primaries().await;
    let pool = Pool::builder(manager(&[&a, &b]))
        // One session: the one that sees the reload is the one that writes.
        .max_size(1)
        // Not in this test's time: only the error can tell.
        .role_check_interval(Duration::from_secs(600))
        .build()
        .expect("valid settings");
    assert_eq!(pool.run(write).await.expect("a write"), i32::from(a.port()));
    demote(&a).await;
    // The reload reaches each session a moment after `pg_reload_conf`:
    // wait until the pool's one session has it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = pool
            .run(|conn| {
                Box::pin(async move {
                    let row = conn
                        .query_one("SHOW default_transaction_read_only", &[])
                        .await?;
                    Ok(row.get::<_, String>(0))
                })
            })
            .await
            .expect("show");
        if shown == "on" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never reached the session"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match pool.run(write).await {
        Err(RunError::Work(e)) => assert!(
            e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            "{e}"
        ),
        other => panic!("the write on the demoted primary fails: {other:?}"),
    }
    let s = pool.state();
    assert!(s.closed.get(Reason::RoleChanged) >= 1, "{s:?}");
    assert_eq!(
        pool.run(write).await.expect("the next write"),
        i32::from(b.port()),
        "the next write goes to the writable host, with no second failure"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_writable_host_the_error_names_the_role_problem() {
    let a = PrivatePg::start();
    demote(&a).await;
    let started = Instant::now();
    let err = Pool::builder(manager(&[&a]))
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .expect("valid settings")
        .get()
        .await
        .expect_err("no host allows writes");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("does not allow writes"), "{err}");
}
