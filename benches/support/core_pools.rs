//! The pools of `benches/core.rs`: the no-op manager every pool runs over,
//! and the one interface the workloads see ([`BenchPool`]), with each
//! pool's settings at its builder. Included by `#[path]` from that bench
//! only; the pool size is its constant.

use std::future::Future;
use std::io;
use std::time::Duration;

use crate::POOL_SIZE;

// ------------------------------------------------------------------ no-op manager

/// The connection every pool lends: a word of memory, nothing behind it.
#[derive(Debug)]
pub struct Conn(pub u64);

/// Connect and validate are instant and never fail; implemented for every pool.
#[derive(Debug, Clone, Copy)]
pub struct Noop;

impl vigil::Manager for Noop {
    type Connection = Conn;
    type Error = io::Error;

    async fn connect(&self) -> Result<Conn, io::Error> {
        Ok(Conn(0))
    }

    async fn is_valid(&self, _: &mut Conn) -> Result<(), io::Error> {
        Ok(())
    }

    fn session(&self, _: &mut Conn) -> vigil::Session {
        vigil::Session::default()
    }

    fn classify(&self, _: &io::Error) -> vigil::ErrorClass {
        vigil::ErrorClass::Other
    }
}

impl bb8::ManageConnection for Noop {
    type Connection = Conn;
    type Error = io::Error;

    async fn connect(&self) -> Result<Conn, io::Error> {
        Ok(Conn(0))
    }

    async fn is_valid(&self, _: &mut Conn) -> Result<(), io::Error> {
        Ok(())
    }

    fn has_broken(&self, _: &mut Conn) -> bool {
        false
    }
}

impl deadpool::managed::Manager for Noop {
    type Type = Conn;
    type Error = io::Error;

    async fn create(&self) -> Result<Conn, io::Error> {
        Ok(Conn(0))
    }

    async fn recycle(
        &self,
        _: &mut Conn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<io::Error> {
        Ok(())
    }
}

#[mobc::async_trait]
impl mobc::Manager for Noop {
    type Connection = Conn;
    type Error = io::Error;

    async fn connect(&self) -> Result<Conn, io::Error> {
        Ok(Conn(0))
    }

    async fn check(&self, conn: Conn) -> Result<Conn, io::Error> {
        Ok(conn)
    }
}

impl r2d2::ManageConnection for Noop {
    type Connection = Conn;
    type Error = io::Error;

    fn connect(&self) -> Result<Conn, io::Error> {
        Ok(Conn(0))
    }

    fn is_valid(&self, _: &mut Conn) -> Result<(), io::Error> {
        Ok(())
    }

    fn has_broken(&self, _: &mut Conn) -> bool {
        false
    }
}

// ------------------------------------------------------------------ the async pools

/// One async pool, seen the same way by every workload.
pub trait BenchPool: Clone + Send + Sync + 'static {
    const NAME: &'static str;
    /// Derefs to the connection, as every pool's guard does.
    type Guard<'a>: Send + std::ops::Deref<Target = Conn>
    where
        Self: 'a;
    /// Builds the pool (size 8) and opens its 8 connections.
    fn warm() -> impl Future<Output = Self> + Send;
    fn checkout(&self) -> impl Future<Output = Self::Guard<'_>> + Send;
}

/// Holds `POOL_SIZE` guards at once, so the pool opens every connection now,
/// then gives them back and lets pools that return in a task settle.
async fn prewarm<P: BenchPool>(pool: &P) {
    let mut held = Vec::with_capacity(POOL_SIZE);
    for _ in 0..POOL_SIZE {
        held.push(pool.checkout().await);
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(20)).await;
}

impl BenchPool for vigil::Pool<Noop> {
    const NAME: &'static str = "vigil";
    type Guard<'a> = vigil::Pooled<Noop>;

    async fn warm() -> Self {
        // Defaults: validation `IdleFor(500 ms)` (a ping only for a connection
        // silent that long: never here), acquire_timeout 30 s, FIFO waiters,
        // histograms and counters always recorded.
        let pool = vigil::Pool::builder(Noop)
            .max_size(POOL_SIZE)
            .build()
            .expect("valid settings");
        prewarm(&pool).await;
        assert_eq!(pool.state().idle, POOL_SIZE, "vigil pre-warmed");
        pool
    }

    async fn checkout(&self) -> vigil::Pooled<Noop> {
        self.get().await.expect("vigil get")
    }
}

impl BenchPool for bb8::Pool<Noop> {
    const NAME: &'static str = "bb8";
    type Guard<'a> = bb8::PooledConnection<'a, Noop>;

    async fn warm() -> Self {
        // Defaults: test_on_check_out = true (one `is_valid` call per
        // checkout: an instant no-op here), FIFO queue, connection_timeout 30 s.
        let pool = bb8::Pool::builder()
            .max_size(POOL_SIZE as u32)
            .build(Noop)
            .await
            .expect("bb8 build");
        prewarm(&pool).await;
        pool
    }

    async fn checkout(&self) -> bb8::PooledConnection<'_, Noop> {
        self.get().await.expect("bb8 get")
    }
}

impl BenchPool for deadpool::managed::Pool<Noop> {
    const NAME: &'static str = "deadpool";
    type Guard<'a> = deadpool::managed::Object<Noop>;

    async fn warm() -> Self {
        // Defaults: no timeouts, FIFO queue; `recycle` (our no-op) runs on
        // every checkout of an existing object.
        let pool = deadpool::managed::Pool::builder(Noop)
            .max_size(POOL_SIZE)
            .build()
            .expect("deadpool build");
        prewarm(&pool).await;
        pool
    }

    async fn checkout(&self) -> deadpool::managed::Object<Noop> {
        self.get().await.expect("deadpool get")
    }
}

impl BenchPool for mobc::Pool<Noop> {
    const NAME: &'static str = "mobc";
    type Guard<'a> = mobc::Connection<Noop>;

    async fn warm() -> Self {
        // Defaults: test_on_check_out = true with no health_check_interval
        // (`check` on every checkout of a used connection: a no-op here),
        // get_timeout 30 s; a dropped connection goes back through a spawned
        // task. One change: max_idle 8 (default 2), or the pool could not
        // keep its 8 connections and would reconnect inside the measurement.
        let pool = mobc::Pool::builder()
            .max_open(POOL_SIZE as u64)
            .max_idle(POOL_SIZE as u64)
            .build(Noop);
        prewarm(&pool).await;
        pool
    }

    async fn checkout(&self) -> mobc::Connection<Noop> {
        self.get().await.expect("mobc get")
    }
}
