//! One session per request: every call in a request shares it, requests
//! that never touch the database take none, and what a request leaves in
//! its session is gone for the next. Each test runs on both servers.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;

use crate::backends::Backend;
use crate::http::{get_ok, request_bytes, serve};
use crate::routes::{
    app, assert_next_request_clean, assert_one_reused_connection, parse_ids, settled, Probe,
};
use crate::trace;

async fn every_call_in_a_request_gets_the_same_session<B: Backend>() {
    trace();
    let table = B::create_table().await;
    let pool = B::pool(4);
    let addr = serve(app(pool.clone(), &table, Probe::default())).await;

    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request_bytes(addr, "/ids").as_bytes())
        .await
        .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{raw}");
    let middleware: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("x-middleware-session: "))
        .expect("the middleware's header")
        .parse()
        .expect("an id");
    let ids = parse_ids(body);
    assert_eq!(ids.len(), 4, "{body}");
    assert!(
        ids.iter().all(|&id| id == middleware),
        "middleware saw session {middleware}, the handler's calls saw {ids:?}"
    );
    let s = settled(&pool).await;
    assert_eq!(s.created, 1, "one connection for the whole request: {s:?}");
    B::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_in_a_request_gets_the_same_session_pg() {
    every_call_in_a_request_gets_the_same_session::<PgManager>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_in_a_request_gets_the_same_session_mariadb() {
    every_call_in_a_request_gets_the_same_session::<MySqlManager>().await;
}

async fn requests_that_never_touch_the_db_take_no_connection<B: Backend>() {
    trace();
    let table = B::create_table().await;
    let pool = B::pool(4);
    let addr = serve(app(pool.clone(), &table, Probe::default())).await;

    get_ok(addr, "/plain").await;
    get_ok(addr, "/unused").await;
    let s = pool.state();
    assert_eq!(
        (s.created, s.open, s.connecting, s.pending),
        (0, 0, 0, 0),
        "a request that never asked for a connection took one: {s:?}"
    );
    // Control: the same app does take one when asked.
    get_ok(addr, "/check").await;
    assert_eq!(settled(&pool).await.created, 1);
    B::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_never_touch_the_db_take_no_connection_pg() {
    requests_that_never_touch_the_db_take_no_connection::<PgManager>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_never_touch_the_db_take_no_connection_mariadb() {
    requests_that_never_touch_the_db_take_no_connection::<MySqlManager>().await;
}

async fn state_left_by_a_request_is_gone_for_the_next<B: Backend>() {
    trace();
    let table = B::create_table().await;
    // One connection: the next request is served by the same session.
    let pool = B::pool(1);
    let addr = serve(app(pool.clone(), &table, Probe::default())).await;

    let dirty: u64 = get_ok(addr, "/dirty").await.parse().expect("an id");
    assert_next_request_clean(addr, dirty).await;
    assert_eq!(
        B::committed_rows(&table).await,
        0,
        "the row of the transaction left open was committed"
    );
    assert_one_reused_connection(&settled(&pool).await);
    B::drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_left_by_a_request_is_gone_for_the_next_pg() {
    state_left_by_a_request_is_gone_for_the_next::<PgManager>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_left_by_a_request_is_gone_for_the_next_mariadb() {
    state_left_by_a_request_is_gone_for_the_next::<MySqlManager>().await;
}
