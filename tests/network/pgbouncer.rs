//! Behind a real pgbouncer, in session and transaction mode, for each of
//! vigil's PostgreSQL backends: what pgbouncer does to vigil's sessions
//! (its `client_idle_timeout`, `KILL`, `RECONNECT`, a restart, server
//! sessions killed behind it) reaches no caller as an error.
//!
//! The queries are what works in transaction mode on pgbouncer 1.18 (no
//! `max_prepared_statements`): the simple protocol (tokio-postgres
//! `simple_query`, sqlx `raw_sql`) and unnamed statements (tokio-postgres
//! `query_typed`). vigil's own round trips (its ping, timeout discovery,
//! rollback) are simple-protocol, so they work in both modes.

use std::sync::Arc;
use std::time::Duration;

use vigil::{Manager, Pool, Reason};

use crate::backends::{clean_burst, Backend, Sqlx, TokioPg};
use crate::bouncer::{Bouncer, Mode};
use crate::SEC;

fn pool<B: Backend>(bouncer: &Bouncer) -> Pool<B::M> {
    Pool::builder(B::manager(bouncer.port()))
        .max_size(4)
        .acquire_timeout(10 * SEC)
        .build()
        .expect("valid settings")
}

/// Connections the pool closed because it found them finished (broken flag
/// or a failed ping): what pgbouncer cut.
fn found_dead<M: Manager>(pool: &Pool<M>) -> u64 {
    let s = pool.state();
    s.closed.get(Reason::Broken) + s.closed.get(Reason::ValidationFailed)
}

/// Stops pgbouncer (its immediate shutdown) and starts it again.
async fn restart(bouncer: &Arc<Bouncer>) {
    let bouncer = Arc::clone(bouncer);
    tokio::task::spawn_blocking(move || {
        bouncer.stop();
        bouncer.start_again();
    })
    .await
    .expect("restart pgbouncer");
}

/// Lets the pool's connections sit idle past the validation bypass window
/// (500 ms), as after any pause in traffic.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

/// Session mode: server sessions killed behind pgbouncer (it drops the
/// clients linked to them), `KILL` + `RESUME`, `RECONNECT`, a restart.
async fn session_mode<B: Backend>() {
    let bouncer = tokio::task::spawn_blocking(|| Bouncer::start(Mode::Session, &[]))
        .await
        .map(Arc::new)
        .expect("start pgbouncer");
    let pool = pool::<B>(&bouncer);
    clean_burst::<B>(&pool, "after the start").await;

    pause().await;
    let killed = bouncer.kill_server_sessions().await;
    assert!(killed >= 1, "no server session behind pgbouncer to kill");
    pause().await;
    clean_burst::<B>(&pool, "after server sessions killed behind pgbouncer").await;
    let dead = found_dead(&pool);
    assert!(dead >= 1, "the pool never noticed: {:?}", pool.state());

    pause().await;
    bouncer.admin("KILL test").await;
    bouncer.admin("RESUME test").await;
    pause().await;
    clean_burst::<B>(&pool, "after pgbouncer's KILL").await;
    assert!(found_dead(&pool) > dead, "{:?}", pool.state());

    bouncer.admin("RECONNECT test").await;
    clean_burst::<B>(&pool, "after pgbouncer's RECONNECT").await;

    pause().await;
    let dead = found_dead(&pool);
    restart(&bouncer).await;
    pause().await;
    clean_burst::<B>(&pool, "after a pgbouncer restart").await;
    assert!(found_dead(&pool) > dead, "{:?}", pool.state());
    crate::report(
        "pgbouncer_session",
        B::NAME,
        500,
        0,
        &format!(
            "server sessions killed behind it, KILL + RESUME, RECONNECT, a restart: \
             {} connections found dead by the pool",
            found_dead(&pool)
        ),
    );
    pool.close().await;
}

/// Transaction mode with `client_idle_timeout = 2` (and the
/// `server_check_delay = 0` a pool in transaction mode needs): pgbouncer closes
/// clients idle 2 s, which no server setting tells vigil; bursts with 3 s
/// gaps. Then `KILL` + `RESUME` and a restart.
async fn transaction_mode<B: Backend>() {
    let bouncer = tokio::task::spawn_blocking(|| {
        // `server_check_delay = 0`: pgbouncer checks a server connection
        // before it gives it to the next transaction. Without it, a server
        // session killed while idle in pgbouncer's pool is handed to a
        // client as it is, and that client's query gets the server's FATAL
        // (seen here, sqlx: "terminating connection due to administrator
        // command"): the client's own session is fine, so vigil has nothing
        // to notice. The README says so.
        Bouncer::start(
            Mode::Transaction,
            &["client_idle_timeout = 2", "server_check_delay = 0"],
        )
    })
    .await
    .map(Arc::new)
    .expect("start pgbouncer");
    let pool = pool::<B>(&bouncer);
    for gap in 0..3 {
        clean_burst::<B>(&pool, &format!("after idle gap {gap}")).await;
        tokio::time::sleep(3 * SEC).await;
    }
    clean_burst::<B>(&pool, "after the last idle gap").await;
    let dead = found_dead(&pool);
    assert!(
        dead >= 3,
        "pgbouncer's client_idle_timeout never cut a connection: {:?}",
        pool.state()
    );

    bouncer.admin("KILL test").await;
    bouncer.admin("RESUME test").await;
    pause().await;
    clean_burst::<B>(&pool, "after pgbouncer's KILL").await;

    let killed = bouncer.kill_server_sessions().await;
    assert!(killed >= 1, "no server session behind pgbouncer to kill");
    clean_burst::<B>(&pool, "after server sessions killed behind pgbouncer").await;

    pause().await;
    restart(&bouncer).await;
    pause().await;
    clean_burst::<B>(&pool, "after a pgbouncer restart").await;
    crate::report(
        "pgbouncer_transaction",
        B::NAME,
        700,
        0,
        &format!(
            "client_idle_timeout 2 s with 3 s gaps, KILL + RESUME, server sessions killed, \
             a restart (server_check_delay = 0): {} connections found dead by the pool",
            found_dead(&pool)
        ),
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_behind_pgbouncer_in_session_mode_loses_no_request() {
    session_mode::<TokioPg>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_behind_pgbouncer_in_session_mode_loses_no_request() {
    session_mode::<Sqlx>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_behind_pgbouncer_in_transaction_mode_loses_no_request() {
    transaction_mode::<TokioPg>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_behind_pgbouncer_in_transaction_mode_loses_no_request() {
    transaction_mode::<Sqlx>().await;
}

/// Whether the PostgreSQL behind `bouncer` still runs a `pg_sleep`.
async fn sleeping_behind(bouncer: &Bouncer) -> bool {
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            bouncer.pg_port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("the PostgreSQL behind pgbouncer");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%'",
            &[],
        )
        .await
        .expect("pg_stat_activity");
    row.get::<_, i64>(0) > 0
}

/// Issue 27 behind pgbouncer: a borrower gives up on `pg_sleep(10)` after
/// 200 ms and drops its guard (pool of 1). vigil's cancel request goes to
/// pgbouncer, which forwards it to the server session running the
/// statement, in either pool mode: the statement stops and the next caller
/// gets the same session back.
async fn abandoned_behind_pgbouncer(mode: Mode) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let bouncer = tokio::task::spawn_blocking(move || Bouncer::start(mode, &[]))
        .await
        .expect("start pgbouncer");
    let pool = Pool::builder(TokioPg::manager(bouncer.port()))
        .max_size(1)
        .acquire_timeout(10 * SEC)
        .build()
        .expect("valid settings");
    let conn = pool.get().await.expect("a connection");
    let id = vigil::Pooled::id(&conn);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        conn.simple_query("SELECT pg_sleep(10)"),
    )
    .await;
    assert!(gave_up.is_err(), "the statement was still running");
    assert!(
        sleeping_behind(&bouncer).await,
        "pg_sleep runs on the server"
    );
    drop(conn);
    let dropped = std::time::Instant::now();
    let next = pool.get().await.expect("the next caller");
    next.simple_query("SELECT 1").await.expect("SELECT 1");
    let served = dropped.elapsed();
    assert_eq!(vigil::Pooled::id(&next), id, "the same session, cleaned");
    drop(next);
    let gone = loop {
        let running = sleeping_behind(&bouncer).await;
        let gone = dropped.elapsed();
        if !running {
            break gone;
        }
        assert!(
            gone < 3 * SEC,
            "pg_sleep still runs behind pgbouncer after {gone:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    crate::report(
        match mode {
            Mode::Session => "abandoned_statement_pgbouncer_session",
            Mode::Transaction => "abandoned_statement_pgbouncer_transaction",
        },
        TokioPg::NAME,
        2,
        0,
        &format!(
            "pg_sleep(10) abandoned after 200 ms, pool of 1: next get() + SELECT 1 {served:.1?} \
             after the drop, the statement gone from the server by {gone:.1?}; {} cancelled",
            pool.state().queries_cancelled
        ),
    );
    assert!(served < 2 * SEC, "the next caller waited {served:?}");
    assert_eq!(pool.state().queries_cancelled, 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_abandoned_statement_is_cancelled_through_pgbouncer_in_session_mode() {
    abandoned_behind_pgbouncer(Mode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_abandoned_statement_is_cancelled_through_pgbouncer_in_transaction_mode() {
    abandoned_behind_pgbouncer(Mode::Transaction).await;
}
