//! Round trips: a checkout within the bypass window costs no ping.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use vigil::backend::mysql::MySqlManager;
use vigil::{Manager, Pool, ServerTimeouts, Session, Validation};

use crate::{admin, manager, trace};

/// This session's own count of `COM_PING` and other admin commands.
async fn admin_commands(conn: &mut Conn) -> u64 {
    let row: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Com_admin_commands'")
        .await
        .expect("read session status");
    row.expect("Com_admin_commands exists")
        .1
        .parse()
        .expect("a counter is a number")
}

/// Wraps [`MySqlManager`] and counts validation pings.
struct Counting {
    inner: MySqlManager,
    pings: Arc<AtomicUsize>,
}

impl Manager for Counting {
    type Connection = Conn;
    type Error = mysql_async::Error;

    fn connect(&self) -> impl Future<Output = Result<Conn, mysql_async::Error>> + Send {
        self.inner.connect()
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), mysql_async::Error> {
        self.pings.fetch_add(1, SeqCst);
        self.inner.is_valid(conn).await
    }

    fn session(&self, conn: &mut Conn) -> Session {
        self.inner.session(conn)
    }

    fn classify(&self, error: &mysql_async::Error) -> vigil::ErrorClass {
        self.inner.classify(error)
    }

    fn reset(
        &self,
        conn: &mut Conn,
        cleanup: vigil::Cleanup,
    ) -> impl Future<Output = Result<vigil::Cleaned, mysql_async::Error>> + Send {
        self.inner.reset(conn, cleanup)
    }

    fn server_timeouts(
        &self,
        conn: &mut Conn,
    ) -> impl Future<Output = Result<ServerTimeouts, mysql_async::Error>> + Send {
        self.inner.server_timeouts(conn)
    }

    fn close(&self, conn: Conn) -> impl Future<Output = ()> + Send {
        self.inner.close(conn)
    }
}

fn counting_pool(validation: Validation) -> (Pool<Counting>, Arc<AtomicUsize>) {
    let pings = Arc::new(AtomicUsize::new(0));
    let manager = Counting {
        inner: manager(),
        pings: Arc::clone(&pings),
    };
    let pool = Pool::builder(manager)
        .max_size(1)
        .validation(validation)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    (pool, pings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_within_bypass_window_adds_no_round_trip() {
    trace();
    // Pool of one: every checkout lends the same session, so the session's
    // own `Com_admin_commands` (COM_PING counts there) is the server's
    // witness, next to the wrapper's count.
    let (pool, pings) = counting_pool(Validation::default());
    let (id, server_before) = {
        let mut conn = pool.get().await.expect("first get");
        (conn.id(), admin_commands(&mut conn).await)
    };
    // Calibrate the witness: one COM_PING is one admin command.
    {
        let mut bare = admin().await;
        let before = admin_commands(&mut bare).await;
        bare.ping().await.expect("ping");
        assert_eq!(
            admin_commands(&mut bare).await,
            before + 1,
            "COM_PING is not counted"
        );
    }
    let skipped_before = pool.state().validations_skipped;
    for _ in 0..100 {
        let mut conn = pool.get().await.expect("get");
        conn.query_drop("SELECT 1").await.expect("query");
    }
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(conn.id(), id, "the pool of one changed its connection");
        assert_eq!(
            admin_commands(&mut conn).await,
            server_before,
            "the server saw pings"
        );
    }
    assert_eq!(pings.load(SeqCst), 0, "checkouts within the window pinged");
    assert_eq!(pool.state().validations_skipped - skipped_before, 101);

    // Silent longer than the window: exactly one ping.
    tokio::time::sleep(Duration::from_millis(600)).await;
    {
        let mut conn = pool.get().await.expect("get after idling");
        assert_eq!(pings.load(SeqCst), 1);
        assert_eq!(admin_commands(&mut conn).await, server_before + 1);
    }
    assert_eq!(pool.state().validations_ok, 1);

    // `Always`: one ping per checkout of an idle connection.
    let (pool, pings) = counting_pool(Validation::Always);
    let server_before = {
        let mut conn = pool.get().await.expect("first get (opens, no ping)");
        admin_commands(&mut conn).await
    };
    for _ in 0..20 {
        let mut conn = pool.get().await.expect("get");
        conn.query_drop("SELECT 1").await.expect("query");
    }
    let mut conn = pool.get().await.expect("get");
    assert_eq!(pings.load(SeqCst), 21);
    assert_eq!(admin_commands(&mut conn).await, server_before + 21);
}

/// This session's count of statements it sent.
async fn questions(conn: &mut Conn) -> u64 {
    let row: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Questions'")
        .await
        .expect("read session status");
    row.expect("Questions exists").1.parse().expect("a number")
}

/// The first connection asks the server its settings (mysql_async's
/// `max_allowed_packet` / `wait_timeout` query and vigil's timeout
/// discovery); the connects after it reuse the answers and ask nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_after_the_first_ask_the_server_nothing() {
    trace();
    let opts = crate::support::db::maria_tcp(3306).db_name(Some("test"));
    let pool = Pool::builder(MySqlManager::new(opts.into()))
        .max_size(2)
        .build()
        .expect("valid settings");
    let mut first = pool.get().await.expect("the first connection");
    let mut second = pool.get().await.expect("the second connection");
    let (q1, q2) = (questions(&mut first).await, questions(&mut second).await);
    assert_eq!(
        q1,
        q2 + 2,
        "the second session skipped both settings queries"
    );
    let timeout = pool.state().server_idle_timeout;
    assert!(matches!(timeout, Some(Some(_))), "{timeout:?}");
    drop((first, second));
    pool.close().await;
}
