//! Requests that end badly, by a panicking handler or a client hanging up
//! mid-query, still give back a clean connection. Each test runs on both
//! servers.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;

use axum::middleware::from_fn;
use mysql_async::prelude::Queryable;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::Reason;

use crate::backends::Backend;
use crate::http::{catch_panic, get_ok, request_bytes, serve, try_get};
use crate::routes::{
    app, assert_next_request_clean, assert_one_reused_connection, parse_ids, settled, Probe,
};
use crate::support::db::maria_admin;
use crate::{eventually, trace, MS, SEC};

async fn a_panicking_handler_gives_back_a_clean_connection<B: Backend>() {
    trace();
    let table = B::create_table().await;
    let pool = B::pool(1);
    let probe = Probe::default();

    // Nothing catches the panic: hyper's connection task dies with it and
    // tokio drops the request's future while unwinding.
    let addr = serve(app(pool.clone(), &table, probe.clone())).await;
    let first = get_ok(addr, "/check").await;
    let id = parse_ids(first.split_whitespace().next().expect("an id"))[0];
    let outcome = try_get(addr, "/panic").await;
    assert!(
        outcome.is_err(),
        "an uncaught panic sends no response: {outcome:?}"
    );
    assert_one_reused_connection(&settled(&pool).await);
    assert_next_request_clean(addr, id).await;

    // A catch-panic layer outside the scope answers 500; the scope's future
    // is dropped after the panic was caught.
    let caught = serve(app(pool.clone(), &table, probe).layer(from_fn(catch_panic))).await;
    let reply = try_get(caught, "/panic").await.expect("a response");
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_one_reused_connection(&settled(&pool).await);
    assert_next_request_clean(caught, id).await;

    assert_eq!(B::committed_rows(&table).await, 0);
    B::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gives_back_a_clean_connection_pg() {
    a_panicking_handler_gives_back_a_clean_connection::<PgManager>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gives_back_a_clean_connection_mariadb() {
    a_panicking_handler_gives_back_a_clean_connection::<MySqlManager>().await;
}

/// Sends `/slow`, waits until the handler is inside its slow query, and
/// hangs up. Returns once the server has dropped the handler's future.
async fn hang_up_mid_query(addr: SocketAddr, probe: &Probe) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request_bytes(addr, "/slow").as_bytes())
        .await
        .expect("write");
    tokio::time::timeout(5 * SEC, probe.started.notified())
        .await
        .expect("the handler reached its slow query");
    // Let the statement reach the server before hanging up.
    tokio::time::sleep(200 * MS).await;
    drop(s);
    eventually!(
        "the server to drop the request's future",
        SEC,
        probe.dropped_early.load(SeqCst)
    );
    assert!(
        !probe.finished.load(SeqCst),
        "the handler finished: it was not cancelled, the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_gives_back_a_clean_connection_pg() {
    trace();
    let table = PgManager::create_table().await;
    let pool = PgManager::pool(1);
    let probe = Probe::default();
    let addr = serve(app(pool.clone(), &table, probe.clone())).await;
    let first = get_ok(addr, "/check").await;
    let id = parse_ids(first.split_whitespace().next().expect("an id"))[0];

    hang_up_mid_query(addr, &probe).await;
    // sqlx waits for the cancelled statement's reply on return (the
    // pool's ping queues behind it; past the hedge delay the connection is
    // presumed dead and its slot goes on), then rolls back and DISCARDs
    // ALL: the same session comes back, clean, taken back when it answers.
    assert_one_reused_connection(&settled(&pool).await);
    assert_next_request_clean(addr, id).await;
    assert_eq!(PgManager::committed_rows(&table).await, 0);
    PgManager::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_gives_back_a_clean_connection_mariadb() {
    trace();
    let table = MySqlManager::create_table().await;
    let pool = MySqlManager::pool(1);
    let probe = Probe::default();
    let addr = serve(app(pool.clone(), &table, probe.clone())).await;
    let first = get_ok(addr, "/check").await;
    let id = parse_ids(first.split_whitespace().next().expect("an id"))[0];

    hang_up_mid_query(addr, &probe).await;
    // mysql_async marks a connection whose command was cancelled midway as
    // disconnected and closes its socket; the pool sees `Session::broken` on
    // return and retires it rather than lending a session in doubt.
    let s = settled(&pool).await;
    assert_eq!(
        (s.open, s.active, s.pending, s.created),
        (0, 0, 0, 1),
        "the slot is free, the connection closed: {s:?}"
    );
    assert_eq!(
        (s.closed.get(Reason::Broken), s.closed.total()),
        (1, 1),
        "{s:?}"
    );
    // The server ends that session (and its open transaction) once the
    // slow statement notices the closed socket.
    let mut admin = maria_admin().await;
    eventually!("the server to end the cancelled session", 10 * SEC, {
        let listed: Option<u64> = admin
            .exec_first(
                "SELECT ID FROM information_schema.processlist WHERE ID = ?",
                (id,),
            )
            .await
            .expect("read the processlist");
        listed.is_none()
    });
    admin.disconnect().await.expect("disconnect");
    let body = get_ok(addr, "/check").await;
    let (next, leftovers) = body.split_once(' ').expect("`<id> <leftovers>`");
    assert_ne!(next.parse::<u64>().expect("an id"), id, "a new session");
    assert_eq!(leftovers, "", "state leaked into the next request");
    assert_eq!(MySqlManager::committed_rows(&table).await, 0);
    MySqlManager::drop_table(&table).await;
}
