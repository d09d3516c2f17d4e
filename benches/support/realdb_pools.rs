//! The pools of `benches/realdb.rs`: the options every one connects with,
//! the one interface the workload sees ([`Target`]; the dedicated
//! connections too), and the builders its cases name. Included by
//! `#[path]` from that bench only; the pool size is its constant.
//!
//! `benches/liveness.rs` has a `Target` of its own
//! (`support/liveness_pools.rs`): no task index, no warming, and errors with
//! their chain of sources.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::Connection;

use crate::drivers::{Driver, PeerManager};
use crate::servers::{mysql_url, pg_url};
use crate::POOL_SIZE;

// ------------------------------------------------------------------ options

pub fn pg_options() -> PgConnectOptions {
    PgConnectOptions::from_str(&pg_url())
        .expect("VIGIL_BENCH_PG_URL parses")
        .ssl_mode(PgSslMode::Disable)
}

/// mysql_async options: TCP only (no switch to the Unix socket).
pub fn mysql_async_opts() -> mysql_async::OptsBuilder {
    let opts = mysql_async::Opts::from_url(&mysql_url()).expect("VIGIL_BENCH_MYSQL_URL parses");
    mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false)
}

/// mysql_async options, built.
pub fn my_opts() -> mysql_async::Opts {
    mysql_async_opts().into()
}

pub fn sqlx_mysql_options() -> MySqlConnectOptions {
    MySqlConnectOptions::from_str(&mysql_url())
        .expect("VIGIL_BENCH_MYSQL_URL parses")
        .ssl_mode(MySqlSslMode::Disabled)
}

/// tokio-postgres options for the PostgreSQL server (plain TCP).
pub fn tp_config() -> tokio_postgres::Config {
    pg_url().parse().expect("VIGIL_BENCH_PG_URL parses")
}

// ------------------------------------------------------------------ the pools, one interface

/// A pool (or the dedicated connections) as the workload sees it.
pub trait Target: Send + Sync + 'static {
    /// Borrow a connection (task `task` asks), `SELECT 1`, give it back.
    fn query(&self, task: usize) -> BoxFuture<'_, Result<(), String>>;
    /// Hold `n` connections at once, so all are open, then give them back.
    fn warm(&self, n: usize) -> BoxFuture<'_, ()>;
    fn close(&self) -> BoxFuture<'_, ()>;
}

impl<M> Target for vigil::Pool<M>
where
    M: vigil::Manager,
    M::Connection: Driver,
{
    fn query(&self, _: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.get().await.map_err(|e| e.to_string())?;
            conn.select1().await.map_err(|e| e.to_string())
        })
    }

    fn warm(&self, n: usize) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(self.get().await.expect("vigil get"));
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(vigil::Pool::close(self))
    }
}

impl<DB> Target for sqlx::Pool<DB>
where
    DB: sqlx::Database,
    DB::Connection: Driver,
{
    fn query(&self, _: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.acquire().await.map_err(|e| e.to_string())?;
            conn.select1().await.map_err(|e| e.to_string())
        })
    }

    fn warm(&self, n: usize) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(self.acquire().await.expect("sqlx acquire"));
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(sqlx::Pool::close(self))
    }
}

impl Target for mysql_async::Pool {
    fn query(&self, _: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.get_conn().await.map_err(|e| e.to_string())?;
            conn.select1().await.map_err(|e| e.to_string())
        })
    }

    fn warm(&self, n: usize) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(self.get_conn().await.expect("mysql_async get_conn"));
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.clone().disconnect().await;
        })
    }
}

impl<D: Driver> Target for bb8::Pool<PeerManager<D>> {
    fn query(&self, _: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.get().await.map_err(|e| e.to_string())?;
            conn.select1().await.map_err(|e| e.to_string())
        })
    }

    fn warm(&self, n: usize) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(self.get().await.expect("bb8 get"));
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl<D: Driver> Target for deadpool::managed::Pool<PeerManager<D>> {
    fn query(&self, _: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.get().await.map_err(|e| e.to_string())?;
            conn.select1().await.map_err(|e| e.to_string())
        })
    }

    fn warm(&self, n: usize) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(self.get().await.expect("deadpool get"));
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        deadpool::managed::Pool::close(self);
        Box::pin(async {})
    }
}

impl Target for deadpool_postgres::Pool {
    fn query(&self, _: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let client = self.get().await.map_err(|e| e.to_string())?;
            // The same one-round-trip query as the other tokio-postgres rows.
            let rows = client
                .query_typed("SELECT 1", &[])
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(rows[0].get::<_, i32>(0), 1);
            Ok(())
        })
    }

    fn warm(&self, n: usize) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(self.get().await.expect("deadpool-postgres get"));
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        deadpool_postgres::Pool::close(self);
        Box::pin(async {})
    }
}

/// The limit: `POOL_SIZE` connections and no pool; task `i` always uses
/// connection `i % POOL_SIZE` (4 tasks per connection, behind a mutex).
struct Dedicated<D>(Vec<tokio::sync::Mutex<D>>);

impl<D: Driver> Target for Dedicated<D> {
    fn query(&self, task: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.0[task % self.0.len()].lock().await;
            conn.select1().await.map_err(|e| e.to_string())
        })
    }

    fn warm(&self, _: usize) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

// ------------------------------------------------------------------ the builders

pub fn vigil_tp() -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async {
        let manager = vigil::backend::tokio_postgres::TokioPgManager::new(tp_config());
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

/// vigil without its default `tcp_user_timeout`: what that safety costs
/// (the module docs of `backend::tokio_postgres` point here).
pub fn vigil_tp_no_user_timeout() -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async {
        let mut config = tp_config();
        config.tcp_user_timeout(Duration::ZERO);
        let manager = vigil::backend::tokio_postgres::TokioPgManager::new(config);
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn vigil_pg() -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async {
        // Defaults apart from the size (validation IdleFor(500 ms), and
        // whatever else the builder and the manager default to).
        let pool = vigil::Pool::builder(vigil::backend::sqlx::PgManager::new(pg_options()))
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

/// Not a default: vigil with the sqlx manager's ping on every return turned
/// off, to show what that default costs in the same run.
pub fn vigil_pg_no_return_ping() -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async {
        let manager = vigil::backend::sqlx::PgManager::new(pg_options());
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .verify_on_return(vigil::VerifyOnReturn::Never)
            .build()
            .expect("vigil build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn vigil_maria() -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async {
        let manager = vigil::backend::mysql::MySqlManager::new(mysql_async_opts().into());
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn vigil_sqlx_maria() -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async {
        let manager = vigil::backend::sqlx::MySqlSqlxManager::new(sqlx_mysql_options());
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn sqlx_pool<DB>(
    options: <DB::Connection as Connection>::Options,
    test: bool,
) -> BoxFuture<'static, Arc<dyn Target>>
where
    DB: sqlx::Database,
    DB::Connection: Driver,
{
    Box::pin(async move {
        // Defaults apart from size and test_before_acquire: acquire_timeout
        // 30 s, idle_timeout 10 min, max_lifetime 30 min; a ping on every
        // release (sqlx 0.9 still does that).
        let pool = sqlx::pool::PoolOptions::<DB>::new()
            .max_connections(POOL_SIZE as u32)
            .test_before_acquire(test)
            .connect_lazy_with(options);
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn mysql_async_pool(reset: bool) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        // min = max = 16: with the default inactive_connection_ttl (0) the
        // pool keeps at most `min` idle connections.
        let pool_opts = mysql_async::PoolOpts::default()
            .with_constraints(
                mysql_async::PoolConstraints::new(POOL_SIZE, POOL_SIZE).expect("constraints"),
            )
            .with_reset_connection(reset);
        let pool = mysql_async::Pool::new(mysql_async_opts().pool_opts(pool_opts));
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn bb8_pool<D: Driver>(opts: D::Opts, test: bool) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        // Defaults apart from size and test_on_check_out: connection_timeout
        // 30 s, idle_timeout 10 min, max_lifetime 30 min.
        let pool = bb8::Pool::builder()
            .max_size(POOL_SIZE as u32)
            .test_on_check_out(test)
            .build(PeerManager::<D> { opts, ping: test })
            .await
            .expect("bb8 build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn deadpool_pool<D: Driver>(opts: D::Opts, ping: bool) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        // Defaults apart from size: no timeouts, FIFO.
        let pool = deadpool::managed::Pool::builder(PeerManager::<D> { opts, ping })
            .max_size(POOL_SIZE)
            .build()
            .expect("deadpool build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

/// The deadpool-postgres crate itself, over the driver's own connect.
pub fn deadpool_postgres_pool(
    recycling_method: deadpool_postgres::RecyclingMethod,
) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let manager = deadpool_postgres::Manager::from_config(
            tp_config(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig { recycling_method },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("deadpool-postgres build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn dedicated<D: Driver>(opts: D::Opts) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let mut conns = Vec::with_capacity(POOL_SIZE);
        for _ in 0..POOL_SIZE {
            let conn = D::connect(&opts).await.expect("dedicated connect");
            conns.push(tokio::sync::Mutex::new(conn));
        }
        Arc::new(Dedicated(conns)) as Arc<dyn Target>
    })
}

// ------------------------------------------------- natural queries (issue 28)

/// A tokio-postgres pool queried the way services write it: a parameter,
/// the statement from the pool's per-session cache (`prepare_cached`),
/// so one round trip per query after the first on each session.
pub struct Natural<P>(P);

/// The natural query and its check.
const NATURAL: &str = "SELECT $1::int4";

impl Target for Natural<vigil::Pool<vigil::backend::tokio_postgres::TokioPgManager>> {
    fn query(&self, _: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let conn = self.0.get().await.map_err(|e| e.to_string())?;
            let statement = conn
                .prepare_cached(NATURAL)
                .await
                .map_err(|e| e.to_string())?;
            let row = conn
                .query_one(&statement, &[&7i32])
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(row.get::<_, i32>(0), 7);
            Ok(())
        })
    }

    fn warm(&self, n: usize) -> BoxFuture<'_, ()> {
        self.0.warm(n)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Target::close(&self.0)
    }
}

impl Target for Natural<deadpool_postgres::Pool> {
    fn query(&self, _: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let client = self.0.get().await.map_err(|e| e.to_string())?;
            let statement = client
                .prepare_cached(NATURAL)
                .await
                .map_err(|e| e.to_string())?;
            let row = client
                .query_one(&statement, &[&7i32])
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(row.get::<_, i32>(0), 7);
            Ok(())
        })
    }

    fn warm(&self, n: usize) -> BoxFuture<'_, ()> {
        self.0.warm(n)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Target::close(&self.0)
    }
}

/// vigil over tokio-postgres, its defaults, queried naturally.
pub fn vigil_tp_natural() -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async {
        let manager = vigil::backend::tokio_postgres::TokioPgManager::new(tp_config());
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(Natural(pool)) as Arc<dyn Target>
    })
}

/// deadpool-postgres (`Fast`, its default), queried naturally.
pub fn deadpool_postgres_natural() -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async {
        let manager = deadpool_postgres::Manager::from_config(
            tp_config(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("deadpool-postgres build");
        Arc::new(Natural(pool)) as Arc<dyn Target>
    })
}
