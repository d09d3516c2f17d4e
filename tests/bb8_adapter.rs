//! A bb8 pool with vigil's adapter survives the server's idle timeout with
//! zero errors, over mysql_async, sqlx and tokio-postgres, pinging only
//! connections silent longer than the bypass window (and, for a manager
//! blind to sessions that die while lent, returned ones).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::backend::tokio_postgres::TokioPgManager;
use vigil::bb8::{Bb8Error, Bb8Manager};
use vigil::{Manager, Reason, ServerTimeouts, Session};

/// Counts the round trips the adapter asks for.
#[derive(Debug)]
struct Counting<M> {
    inner: M,
    pings: Arc<AtomicUsize>,
}

impl<M: Manager> Manager for Counting<M> {
    type Connection = M::Connection;
    type Error = M::Error;

    async fn connect(&self) -> Result<M::Connection, M::Error> {
        self.inner.connect().await
    }
    async fn is_valid(&self, conn: &mut M::Connection) -> Result<(), M::Error> {
        self.pings.fetch_add(1, SeqCst);
        self.inner.is_valid(conn).await
    }
    fn session(&self, conn: &mut M::Connection) -> Session {
        self.inner.session(conn)
    }
    fn capabilities(&self) -> vigil::Capabilities {
        self.inner.capabilities()
    }
    fn classify(&self, error: &M::Error) -> vigil::ErrorClass {
        self.inner.classify(error)
    }
    async fn reset(
        &self,
        conn: &mut M::Connection,
        cleanup: vigil::Cleanup,
    ) -> Result<vigil::Cleaned, M::Error> {
        self.inner.reset(conn, cleanup).await
    }
    async fn server_timeouts(&self, conn: &mut M::Connection) -> Result<ServerTimeouts, M::Error> {
        self.inner.server_timeouts(conn).await
    }
}

/// Records what bb8 forwards to its error sink (the adapter's retirements).
#[derive(Debug, Clone, Default)]
struct Sink(Arc<std::sync::Mutex<Vec<String>>>);

impl<E: std::fmt::Display + Send + 'static> bb8::ErrorSink<E> for Sink {
    fn sink(&self, e: E) {
        self.0.lock().unwrap().push(e.to_string());
    }
    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<E>> {
        Box::new(self.clone())
    }
}

/// 5 bursts of 8 tasks × 25 queries, 3 s apart, on a pool of 8 whose
/// sessions the server closes after 2 s idle. Returns errors seen by callers.
async fn bursts<M, F, Fut>(pool: bb8::Pool<Bb8Manager<Counting<M>>>, query: F) -> usize
where
    M: Manager,
    F: Fn(bb8::PooledConnection<'static, Bb8Manager<Counting<M>>>) -> Fut
        + Copy
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let errors = Arc::new(AtomicUsize::new(0));
    for burst in 0..5 {
        if burst > 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (pool, errors) = (pool.clone(), errors.clone());
                tokio::spawn(async move {
                    for _ in 0..25 {
                        let ok = match pool.get_owned().await {
                            Ok(c) => query(c).await,
                            Err(_) => false,
                        };
                        if !ok {
                            errors.fetch_add(1, SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    errors.load(SeqCst)
}

/// Zero errors, retirements for `reason` only, and at most `max_pings`
/// pings for the 1,000 checkouts.
fn assert_outcome(errors: usize, pings: usize, max_pings: usize, sink: &Sink, reason: Reason) {
    assert_eq!(errors, 0, "errors reached callers");
    let sunk = sink.0.lock().unwrap().clone();
    let retired = sunk
        .iter()
        .filter(|e| e.ends_with(&format!(": {}", reason.as_str())))
        .count();
    assert!(
        retired > 0,
        "connections were retired as {reason:?}: {sunk:?}"
    );
    assert_eq!(retired, sunk.len(), "nothing else went wrong: {sunk:?}");
    assert!(
        pings <= max_pings,
        "{pings} pings for 1,000 checkouts (at most {max_pings})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_pool_with_adapter_survives_mariadb_wait_timeout() {
    let opts = OptsBuilder::from_opts(Opts::from_url("mysql://root@127.0.0.1:3306/test").unwrap())
        .prefer_socket(false)
        .init(vec!["SET SESSION wait_timeout = 2"]);
    let pings = Arc::new(AtomicUsize::new(0));
    let manager = Counting {
        inner: MySqlManager::new(opts.into()),
        pings: pings.clone(),
    };
    let sink = Sink::default();
    let pool = bb8::Pool::builder()
        .max_size(8)
        .error_sink(Box::new(sink.clone()))
        .build(Bb8Manager::new(manager))
        .await
        .unwrap();
    let errors = bursts(pool, |mut c| async move {
        c.query_drop("SELECT 1").await.is_ok()
    })
    .await;
    // A ping only for connections silent past the window: far fewer than
    // one per checkout.
    assert_outcome(
        errors,
        pings.load(SeqCst),
        200,
        &sink,
        Reason::ServerTimeout,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_pool_with_adapter_survives_postgres_idle_session_timeout() {
    let opts = PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .username("postgres")
        .database("test")
        .ssl_mode(PgSslMode::Disable)
        .options([("idle_session_timeout", "2s")]);
    let pings = Arc::new(AtomicUsize::new(0));
    let manager = Counting {
        inner: PgManager::new(opts),
        pings: pings.clone(),
    };
    let sink = Sink::default();
    let pool = bb8::Pool::builder()
        .max_size(8)
        .error_sink(Box::new(sink.clone()))
        .build(Bb8Manager::new(manager))
        .await
        .unwrap();
    let errors = bursts(pool, |mut c| async move {
        sqlx::query("SELECT 1").execute(&mut **c).await.is_ok()
    })
    .await;
    // sqlx cannot see a session that died while lent
    // (`BrokenDetection::Blind`), so a returned connection is pinged before
    // its next lend: about one ping per checkout, never more.
    assert_outcome(
        errors,
        pings.load(SeqCst),
        1_000,
        &sink,
        Reason::ServerTimeout,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_pool_over_tokio_postgres_survives_idle_session_timeout_without_return_pings() {
    let url = "postgres://postgres@127.0.0.1:5432/test?options=-c%20idle_session_timeout%3D2s";
    let pings = Arc::new(AtomicUsize::new(0));
    let manager = Counting {
        inner: TokioPgManager::from_url(url).expect("a valid URL"),
        pings: pings.clone(),
    };
    let sink = Sink::default();
    let pool = bb8::Pool::builder()
        .max_size(8)
        .error_sink(Box::new(sink.clone()))
        .build(Bb8Manager::new(manager))
        .await
        .unwrap();
    let errors = bursts(pool, |c| async move {
        c.query_one("SELECT 1", &[]).await.is_ok()
    })
    .await;
    // The driver sees the session the server closed without a round trip,
    // so the checkout retires it as `broken` (bb8 has no housekeeper to
    // retire it earlier for the timeout); no ping on return, only for
    // connections silent past the bypass window.
    assert_outcome(errors, pings.load(SeqCst), 200, &sink, Reason::Broken);
}

#[test]
fn retirement_reads_as_a_reason_not_a_failure() {
    let e: Bb8Error<std::io::Error> = Bb8Error::Retired(Reason::ServerTimeout);
    assert_eq!(
        e.to_string(),
        "connection retired by the liveness policy: server_timeout"
    );
}

/// The control: the same workload with the adapter's liveness switched off
/// (no server timeout, no ping) lends dead connections, so the tests above
/// prove something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_liveness_lends_dead_connections() {
    let opts = OptsBuilder::from_opts(Opts::from_url("mysql://root@127.0.0.1:3306/test").unwrap())
        .prefer_socket(false)
        .init(vec!["SET SESSION wait_timeout = 2"]);
    let pings = Arc::new(AtomicUsize::new(0));
    let manager = Counting {
        inner: MySqlManager::new(opts.into()),
        pings,
    };
    let mut config = vigil::Config::default();
    config.validation = vigil::Validation::Never;
    config.server_idle_timeout_override = Some(None);
    let pool = bb8::Pool::builder()
        .max_size(8)
        .build(Bb8Manager::with_config(manager, config))
        .await
        .unwrap();
    let errors = bursts(pool, |mut c| async move {
        c.query_drop("SELECT 1").await.is_ok()
    })
    .await;
    assert!(
        errors > 0,
        "the server never killed an idle connection: the setup is wrong"
    );
}
