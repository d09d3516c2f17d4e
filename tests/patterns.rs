//! The operational patterns of issue #6 against the real servers, on both
//! PostgreSQL (sqlx) and MariaDB (mysql_async): `retire_all`, the blocking
//! facade `get_blocking`, and load shedding with `max_waiters`. (Keyed
//! pools, request scopes and the bb8 adapter have their own test files.)
//!
//! Fails loudly when a server is missing; changes no server setting; looks
//! only at sessions its own pools opened (by session id).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use mysql_async::prelude::Queryable;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::{BlockingError, Error, Manager, Pool, Reason};

use support::db::{maria_connect, maria_opts, pg_connect, pg_options, MARIA_URL};

const MS: Duration = Duration::from_millis(1);
/// The `application_name` of every PostgreSQL session these tests open.
const APP: &str = "vigil_patterns";

/// What the tests need from a server.
trait Server: Manager {
    fn make() -> Self;
    /// The server's id for the session.
    fn session_id(conn: &mut Self::Connection) -> BoxFuture<'_, u64>;
    /// Which of `ids` the server still lists, asked on an admin connection.
    fn alive(ids: Vec<u64>) -> BoxFuture<'static, HashSet<u64>>;
}

impl Server for PgManager {
    fn make() -> Self {
        PgManager::new(pg_options(APP))
    }

    fn session_id(conn: &mut PgConnection) -> BoxFuture<'_, u64> {
        async move {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(conn)
                .await
                .expect("a lent PostgreSQL connection answers");
            u64::try_from(pid).expect("pids are positive")
        }
        .boxed()
    }

    fn alive(ids: Vec<u64>) -> BoxFuture<'static, HashSet<u64>> {
        async move {
            let mut admin = pg_connect(
                &pg_options(APP),
                "these tests need PostgreSQL at 127.0.0.1:5432 (user postgres, database test)",
            )
            .await;
            let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity")
                .fetch_all(&mut admin)
                .await
                .expect("read pg_stat_activity");
            let _ = admin.close().await;
            pids.into_iter()
                .filter_map(|p| u64::try_from(p).ok())
                .filter(|p| ids.contains(p))
                .collect()
        }
        .boxed()
    }
}

impl Server for MySqlManager {
    fn make() -> Self {
        MySqlManager::from_url(MARIA_URL).expect("the test URL parses")
    }

    fn session_id(conn: &mut mysql_async::Conn) -> BoxFuture<'_, u64> {
        async move {
            conn.query_first::<u64, _>("SELECT CONNECTION_ID()")
                .await
                .expect("a lent MariaDB connection answers")
                .expect("one row")
        }
        .boxed()
    }

    fn alive(ids: Vec<u64>) -> BoxFuture<'static, HashSet<u64>> {
        async move {
            let mut admin = maria_connect(
                maria_opts(),
                "these tests need MariaDB at 127.0.0.1:3306 (user root, no password)",
            )
            .await;
            let listed: Vec<u64> = admin
                .query("SELECT ID FROM information_schema.PROCESSLIST")
                .await
                .expect("read the process list");
            let _ = admin.disconnect().await;
            listed.into_iter().filter(|i| ids.contains(i)).collect()
        }
        .boxed()
    }
}

/// Polls the server until none of `ids` is listed (at most 3 s).
async fn gone<S: Server>(ids: &[u64]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if S::alive(ids.to_vec()).await.is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(20 * MS).await;
    }
}

// ---------------------------------------------------------------- retire_all

/// After a failover or a credential rotation: idle sessions end now, a lent
/// one keeps working until it is returned and then ends, and no session
/// opened before the call is lent again.
async fn retire_all_ends_old_sessions_and_never_lends_them<S: Server>() {
    let pool = Pool::builder(S::make()).max_size(3).build().unwrap();
    let mut a = pool.get().await.unwrap();
    let mut b = pool.get().await.unwrap();
    let mut lent = pool.get().await.unwrap();
    let idle_ids = vec![S::session_id(&mut a).await, S::session_id(&mut b).await];
    let lent_id = S::session_id(&mut lent).await;
    drop((a, b));
    pool.retire_all();
    assert!(gone::<S>(&idle_ids).await, "idle sessions end at once");
    assert_eq!(
        S::session_id(&mut lent).await,
        lent_id,
        "the lent connection still works for its borrower"
    );
    assert!(!S::alive(vec![lent_id]).await.is_empty());
    drop(lent);
    assert!(gone::<S>(&[lent_id]).await, "it ends when it comes back");
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(pool.get().await.unwrap());
    }
    for c in &mut fresh {
        let id = S::session_id(c).await;
        assert!(
            id != lent_id && !idle_ids.contains(&id),
            "session {id} was opened before retire_all"
        );
    }
    assert_eq!(pool.state().closed.get(Reason::Closed), 3);
    drop(fresh);
    pool.close().await;
}

#[tokio::test]
async fn postgres_retire_all_ends_old_sessions_and_never_lends_them() {
    retire_all_ends_old_sessions_and_never_lends_them::<PgManager>().await;
}

#[tokio::test]
async fn mariadb_retire_all_ends_old_sessions_and_never_lends_them() {
    retire_all_ends_old_sessions_and_never_lends_them::<MySqlManager>().await;
}

// ---------------------------------------------------------------- get_blocking

/// Plain threads (a blocking library, a thread pool) borrow from the same
/// pool as async tasks; a runtime thread is refused instead of stalled.
fn get_blocking_serves_plain_threads_and_refuses_runtime_threads<S: Server>() {
    const MAX: usize = 3;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async { Pool::builder(S::make()).max_size(MAX).build().unwrap() });
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let pool = pool.clone();
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                let mut seen = HashSet::new();
                for _ in 0..10 {
                    let mut conn = pool.get_blocking().expect("a plain thread may block");
                    // The driver is async: a sync caller drives it through
                    // the runtime's handle, as it would any async client.
                    seen.insert(handle.block_on(S::session_id(&mut conn)));
                }
                seen
            })
        })
        .collect();
    let mut sessions = HashSet::new();
    for t in threads {
        sessions.extend(t.join().expect("a borrowing thread panicked"));
    }
    assert!(
        (1..=MAX).contains(&sessions.len()),
        "60 borrows from 6 threads used {} sessions (max {MAX})",
        sessions.len()
    );
    let refused = rt.block_on(async { pool.get_blocking().map(drop) });
    match refused {
        Err(err @ BlockingError::InRuntime) => {
            assert!(err.to_string().contains("get().await"), "{err}");
        }
        other => panic!("a runtime thread must be refused: {other:?}"),
    }
    // The last returns may still be verified in the background (the sqlx
    // backend pings each returned connection); then every one is idle.
    let quiet = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(2);
        while pool.state().active > 0 && Instant::now() < deadline {
            tokio::time::sleep(MS).await;
        }
        pool.state()
    });
    assert_eq!((quiet.active, quiet.pending), (0, 0), "{quiet:?}");
    rt.block_on(pool.close());
}

#[test]
fn postgres_get_blocking_serves_plain_threads_and_refuses_runtime_threads() {
    get_blocking_serves_plain_threads_and_refuses_runtime_threads::<PgManager>();
}

#[test]
fn mariadb_get_blocking_serves_plain_threads_and_refuses_runtime_threads() {
    get_blocking_serves_plain_threads_and_refuses_runtime_threads::<MySqlManager>();
}

// ---------------------------------------------------------------- max_waiters

/// Under overload a caller beyond `max_waiters` gets `Error::Busy` at once
/// (not after `acquire_timeout`), it is counted, and the callers in line
/// are still served.
async fn beyond_max_waiters_get_is_refused_at_once<S: Server>() {
    let pool = Pool::builder(S::make())
        .max_size(1)
        .max_waiters(Some(2))
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut held = pool.get().await.unwrap();
    let held_id = S::session_id(&mut held).await;
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut c = pool.get().await.expect("a caller in line is served");
                S::session_id(&mut c).await
            })
        })
        .collect();
    support::eventually!(
        "both callers queued",
        Duration::from_secs(5),
        pool.state().pending == 2
    );
    let asked = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "refused at once, not after acquire_timeout (10 s): {:?}",
        asked.elapsed()
    );
    assert!(matches!(err, Error::Busy { max_waiters: 2 }), "{err:?}");
    assert!(err.to_string().contains('2'), "{err}");
    assert_eq!(pool.state().rejected, 1);
    drop(held);
    for w in waiters {
        assert_eq!(w.await.unwrap(), held_id, "served by the one session");
    }
    pool.close().await;
}

#[tokio::test]
async fn postgres_beyond_max_waiters_get_is_refused_at_once() {
    beyond_max_waiters_get_is_refused_at_once::<PgManager>().await;
}

#[tokio::test]
async fn mariadb_beyond_max_waiters_get_is_refused_at_once() {
    beyond_max_waiters_get_is_refused_at_once::<MySqlManager>().await;
}
