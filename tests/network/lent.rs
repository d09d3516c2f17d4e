//! Black holes on lent connections: a query already sent when the network
//! starts dropping packets. Only the kernel can bound it (`TCP_USER_TIMEOUT`);
//! vigil's tokio-postgres backend sets it by default.

use std::time::{Duration, Instant};

use vigil::{Pool, Reason};

use crate::proxy::Proxy;
use crate::{shared_pg, tp_manager, Dropped, SEC};

/// A lent connection black-holed mid-query: with `tcp_user_timeout` the
/// borrower's query fails within the bound instead of the kernel's ~15
/// minutes of retransmissions; the connection is retired, not lent again,
/// and the pool serves the next caller on a new one.
#[tokio::test]
async fn a_query_on_a_black_holed_lent_connection_fails_within_tcp_user_timeout() {
    let proxy = Proxy::start(shared_pg()).await;
    let bound = 2 * SEC;
    let pool = Pool::builder(tp_manager(proxy.addr(), "&tcp_user_timeout=2"))
        .max_size(2)
        .acquire_timeout(10 * SEC)
        .build()
        .expect("valid settings");
    let conn = pool.get().await.expect("a connection");
    conn.simple_query("SELECT 1").await.expect("a query");

    let hole = Dropped::start(proxy.addr().port());
    let started = Instant::now();
    let outcome = tokio::time::timeout(bound + 10 * SEC, conn.simple_query("SELECT 1")).await;
    let took = started.elapsed();
    crate::report(
        "black_hole_while_lent",
        "tokio-postgres",
        1,
        1,
        &format!(
            "the borrower's query fails, as it must; tcp_user_timeout 2 s: after {took:.2?} \
             (without it: still waiting at 4 s); the connection retired broken, the next get() served"
        ),
    );
    let err = outcome
        .expect("the query must fail within the bound, not hang")
        .expect_err("nothing can answer through the black hole");
    assert!(
        took >= bound - Duration::from_millis(200) && took <= bound + 3 * SEC,
        "the query failed after {took:?}, not after about {bound:?}: {err}"
    );
    drop(conn);
    assert_eq!(
        pool.state().closed.get(Reason::Broken),
        1,
        "{:?}",
        pool.state()
    );
    assert_eq!(pool.state().idle, 0, "the dead connection went back idle");

    drop(hole);
    let conn = pool.get().await.expect("the pool keeps serving");
    conn.simple_query("SELECT 1")
        .await
        .expect("a query on a new connection");
    assert_eq!(pool.state().created, 2, "{:?}", pool.state());
}

/// The control: without `tcp_user_timeout` the same query is still
/// waiting well past that bound (the kernel retransmits for ~15 minutes),
/// so it is the setting that ends it above, not the proxy or the server.
#[tokio::test]
async fn without_tcp_user_timeout_a_black_holed_query_hangs() {
    let proxy = Proxy::start(shared_pg()).await;
    let pool = Pool::builder(tp_manager(proxy.addr(), "&tcp_user_timeout=0"))
        .max_size(1)
        .build()
        .expect("valid settings");
    let conn = pool.get().await.expect("a connection");
    conn.simple_query("SELECT 1").await.expect("a query");
    let _hole = Dropped::start(proxy.addr().port());
    let outcome = tokio::time::timeout(4 * SEC, conn.simple_query("SELECT 1")).await;
    assert!(outcome.is_err(), "the query ended: {outcome:?}");
    vigil::Pooled::retire(conn);
}

/// The default bound is 30 s, and `0` turns it off: read back from the
/// options vigil opens sockets with.
#[test]
fn tcp_user_timeout_is_30_s_unless_the_url_says_otherwise() {
    let addr = shared_pg();
    assert_eq!(
        tp_manager(addr, "").config().get_tcp_user_timeout(),
        Some(&(30 * SEC))
    );
    assert_eq!(
        tp_manager(addr, "&tcp_user_timeout=5")
            .config()
            .get_tcp_user_timeout(),
        Some(&(5 * SEC))
    );
    assert_eq!(
        tp_manager(addr, "&tcp_user_timeout=0")
            .config()
            .get_tcp_user_timeout(),
        Some(&Duration::ZERO)
    );
}
