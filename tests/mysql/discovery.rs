//! Server timeout discovery: the session's `wait_timeout` is read at
//! connect.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use vigil::{Manager, Pool, ServerTimeouts};

use crate::{admin, manager, manager_with_init, trace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timeout_discovery_reads_session_wait_timeout() {
    trace();
    let pool = Pool::builder(manager_with_init(&["SET SESSION wait_timeout = 7"]))
        .build()
        .expect("valid settings");
    assert_eq!(pool.state().server_idle_timeout, None, "nothing opened yet");
    let conn = pool.get().await.expect("get");
    drop(conn);
    assert_eq!(
        pool.state().server_idle_timeout,
        Some(Some(Duration::from_secs(7)))
    );

    let m = manager_with_init(&[
        "SET SESSION wait_timeout = 7",
        "SET SESSION idle_transaction_timeout = 9",
    ]);
    let mut conn = m.connect().await.expect("connect");
    let found = m.server_timeouts(&mut conn).await.expect("discover");
    assert_eq!(
        found,
        ServerTimeouts {
            idle: Some(Duration::from_secs(7)),
        }
    );
    m.close(conn).await;

    // Untouched session: the server's default (28800 s unless configured).
    let global: Option<u64> = admin()
        .await
        .query_first("SELECT @@GLOBAL.wait_timeout")
        .await
        .expect("read the global default");
    let global = Duration::from_secs(global.expect("a value"));
    let m = manager();
    let mut conn = m.connect().await.expect("connect");
    let found = m.server_timeouts(&mut conn).await.expect("discover");
    assert_eq!(found, ServerTimeouts { idle: Some(global) });
    m.close(conn).await;
    let pool = Pool::builder(manager()).build().expect("valid settings");
    drop(pool.get().await.expect("get"));
    assert_eq!(pool.state().server_idle_timeout, Some(Some(global)));
}
