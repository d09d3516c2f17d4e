//! Server timeout discovery: the session's idle timeouts are read at
//! connect.

use sqlx::postgres::PgConnectOptions;
use vigil::backend::sqlx::PgManager;
use vigil::{Manager, Pool, ServerTimeouts};

use crate::{pg_options, trace, unique, MS, SEC};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeouts_are_read_from_the_session() {
    trace();
    let app = unique("discover");
    let read = |opts: PgConnectOptions| async move {
        let m = PgManager::new(opts);
        let mut conn = m.connect().await.expect("connect");
        m.server_timeouts(&mut conn).await.expect("server_timeouts")
    };
    assert_eq!(
        read(pg_options(&app).options([
            ("idle_session_timeout", "3500ms"),
            // Not a timeout the pool acts on (it rolls back on return).
            ("idle_in_transaction_session_timeout", "7s"),
        ]))
        .await,
        ServerTimeouts {
            idle: Some(3500 * MS),
        }
    );
    assert_eq!(
        read(pg_options(&app).options([("idle_session_timeout", "1min")])).await,
        ServerTimeouts {
            idle: Some(60 * SEC),
        },
        "units other than ms"
    );
    assert_eq!(
        read(pg_options(&app)).await,
        ServerTimeouts::default(),
        "the server's defaults are 0 (disabled)"
    );

    let pool = Pool::builder(PgManager::new(
        pg_options(&app).options([("idle_session_timeout", "7s")]),
    ))
    .connect()
    .await
    .expect("connect");
    assert_eq!(pool.state().server_idle_timeout, Some(Some(7 * SEC)));
    let pool = Pool::builder(PgManager::new(pg_options(&app)))
        .connect()
        .await
        .expect("connect");
    assert_eq!(pool.state().server_idle_timeout, Some(None));
}
