//! Round trips: a checkout within the bypass window costs no validation.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use sqlx::postgres::PgConnection;
use vigil::backend::sqlx::PgManager;
use vigil::{Manager, Pool, ServerTimeouts, Session, Validation};

use crate::{pg_options, trace, unique, MS};

/// Wraps [`PgManager`] and counts validation round trips.
#[derive(Debug, Clone)]
struct Counting {
    inner: PgManager,
    pings: Arc<AtomicUsize>,
}

impl Manager for Counting {
    type Connection = PgConnection;
    type Error = sqlx::Error;

    fn connect(&self) -> impl Future<Output = Result<PgConnection, sqlx::Error>> + Send {
        self.inner.connect()
    }

    fn is_valid(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.pings.fetch_add(1, SeqCst);
        self.inner.is_valid(conn)
    }

    fn session(&self, conn: &mut PgConnection) -> Session {
        self.inner.session(conn)
    }

    fn classify(&self, error: &sqlx::Error) -> vigil::ErrorClass {
        self.inner.classify(error)
    }

    fn reset(
        &self,
        conn: &mut PgConnection,
        cleanup: vigil::Cleanup,
    ) -> impl Future<Output = Result<vigil::Cleaned, sqlx::Error>> + Send {
        self.inner.reset(conn, cleanup)
    }

    fn server_timeouts(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<ServerTimeouts, sqlx::Error>> + Send {
        self.inner.server_timeouts(conn)
    }

    fn close(&self, conn: PgConnection) -> impl Future<Output = ()> + Send {
        self.inner.close(conn)
    }
}

async fn checkouts(pool: &Pool<Counting>, n: usize) {
    for _ in 0..n {
        let mut conn = pool.get().await.expect("get");
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *conn)
            .await
            .expect("SELECT 1");
        assert_eq!(one, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_within_bypass_window_adds_no_round_trip() {
    trace();
    let pings = Arc::new(AtomicUsize::new(0));
    let manager = Counting {
        inner: PgManager::new(pg_options(&unique("bypass"))),
        pings: Arc::clone(&pings),
    };
    let pool = Pool::builder(manager.clone())
        .max_size(1)
        .build()
        .expect("valid settings");
    let started = Instant::now();
    checkouts(&pool, 100).await;
    let quick = started.elapsed();
    assert_eq!(pings.load(SeqCst), 0, "100 checkouts in {quick:?}");
    assert_eq!(pool.state().validations_skipped, 99, "the first one opened");

    tokio::time::sleep(600 * MS).await;
    checkouts(&pool, 1).await;
    assert_eq!(
        pings.load(SeqCst),
        1,
        "a checkout after 600 ms idle pings once"
    );
    checkouts(&pool, 10).await;
    assert_eq!(pings.load(SeqCst), 1, "and the ones right after it do not");

    let always = Pool::builder(manager)
        .max_size(1)
        .validation(Validation::Always)
        .build()
        .expect("valid settings");
    checkouts(&always, 1).await; // opens: nothing to validate
    pings.store(0, SeqCst);
    checkouts(&always, 50).await;
    assert_eq!(
        pings.load(SeqCst),
        50,
        "Validation::Always pings every checkout"
    );
    assert_eq!(always.state().validations_ok, 50);
}
