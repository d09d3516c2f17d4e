//! The pools of `benches/liveness.rs`: the options every one connects
//! with (through the counting proxy), the one interface the workload sees
//! ([`Target`]), and the builders its cases name. Included by `#[path]`
//! from that bench only; the pool size and timeouts are its constants.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::Executor;

use crate::drivers::{Driver, PeerManager};
use crate::servers::{mysql_url, pg_url};
use crate::{MYSQL_SESSION_TIMEOUT, POOL_SIZE, SERVER_IDLE_TIMEOUT_S};

// ------------------------------------------------------------------ options, through the proxy

/// PostgreSQL through the proxy, with a 2 s `idle_session_timeout` for this
/// session only.
pub fn pg_options(proxy: SocketAddr) -> PgConnectOptions {
    PgConnectOptions::from_str(&pg_url())
        .expect("VIGIL_BENCH_PG_URL parses")
        .host(&proxy.ip().to_string())
        .port(proxy.port())
        .ssl_mode(PgSslMode::Disable)
        .options([("idle_session_timeout", format!("{SERVER_IDLE_TIMEOUT_S}s"))])
}

/// mysql_async options through the proxy (TCP only). The session timeout
/// is added by the caller, as `init` or `setup`.
pub fn mysql_async_opts(proxy: SocketAddr) -> mysql_async::OptsBuilder {
    let opts = mysql_async::Opts::from_url(&mysql_url()).expect("VIGIL_BENCH_MYSQL_URL parses");
    mysql_async::OptsBuilder::from_opts(opts)
        .ip_or_hostname(proxy.ip().to_string())
        .tcp_port(proxy.port())
        .prefer_socket(false)
}

pub fn sqlx_mysql_options(proxy: SocketAddr) -> MySqlConnectOptions {
    MySqlConnectOptions::from_str(&mysql_url())
        .expect("VIGIL_BENCH_MYSQL_URL parses")
        .host(&proxy.ip().to_string())
        .port(proxy.port())
        .ssl_mode(MySqlSslMode::Disabled)
}

/// tokio-postgres options through the proxy, with the same 2 s
/// `idle_session_timeout` for this session only.
pub fn tp_config(proxy: SocketAddr) -> tokio_postgres::Config {
    let url: tokio_postgres::Config = pg_url().parse().expect("VIGIL_BENCH_PG_URL parses");
    // A fresh config: `Config::host` adds a host, it does not replace the URL's.
    let mut config = tokio_postgres::Config::new();
    config
        .host(proxy.ip().to_string())
        .port(proxy.port())
        .user(url.get_user().unwrap_or("postgres"))
        .dbname(url.get_dbname().unwrap_or("postgres"))
        .options(format!("-c idle_session_timeout={SERVER_IDLE_TIMEOUT_S}s"));
    if let Some(password) = url.get_password() {
        config.password(password);
    }
    config
}

// ------------------------------------------------------------------ the pools, one interface

/// An error with its sources: tokio-postgres says only "db error" at the top.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = e.source();
    }
    text
}

/// A pool as the workload sees it.
pub trait Target: Send + Sync + 'static {
    /// Borrow a connection, `SELECT 1`, give it back.
    fn query(&self) -> BoxFuture<'_, Result<(), String>>;
    fn close(&self) -> BoxFuture<'_, ()>;
}

impl<M> Target for vigil::Pool<M>
where
    M: vigil::Manager,
    M::Connection: Driver,
{
    fn query(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.get().await.map_err(|e| chain(&e))?;
            conn.select1().await.map_err(|e| chain(&e))
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
    fn query(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.acquire().await.map_err(|e| chain(&e))?;
            conn.select1().await.map_err(|e| chain(&e))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(sqlx::Pool::close(self))
    }
}

impl Target for mysql_async::Pool {
    fn query(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.get_conn().await.map_err(|e| chain(&e))?;
            conn.select1().await.map_err(|e| chain(&e))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.clone().disconnect().await;
        })
    }
}

impl<D: Driver> Target for bb8::Pool<PeerManager<D>> {
    fn query(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.get().await.map_err(|e| chain(&e))?;
            conn.select1().await.map_err(|e| chain(&e))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl<D: Driver> Target for deadpool::managed::Pool<PeerManager<D>> {
    fn query(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.get().await.map_err(|e| chain(&e))?;
            conn.select1().await.map_err(|e| chain(&e))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        deadpool::managed::Pool::close(self);
        Box::pin(async {})
    }
}

impl Target for deadpool_postgres::Pool {
    fn query(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let client = self.get().await.map_err(|e| chain(&e))?;
            // The same one-round-trip query as the other tokio-postgres rows.
            let rows = client
                .query_typed("SELECT 1", &[])
                .await
                .map_err(|e| chain(&e))?;
            assert_eq!(rows[0].get::<_, i32>(0), 1);
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        deadpool_postgres::Pool::close(self);
        Box::pin(async {})
    }
}

/// diesel's `SELECT $1` with 1 bound: a statement diesel caches, so one
/// round trip per query once prepared (a raw `sql_query` is prepared on
/// every call).
async fn diesel_select1<C>(conn: &mut C) -> Result<(), String>
where
    C: diesel_async::AsyncConnection,
    diesel::dsl::select<diesel::dsl::AsExprOf<i32, diesel::sql_types::Integer>>:
        diesel_async::methods::LoadQuery<'static, C, i32>,
{
    use diesel::IntoSql;
    use diesel_async::RunQueryDsl;
    let one: i32 = diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
        .get_result(conn)
        .await
        .map_err(|e| chain(&e))?;
    assert_eq!(one, 1);
    Ok(())
}

/// vigil's diesel managers: the same query on the connection inside the wrapper.
macro_rules! diesel_vigil_target {
    ($manager:ty) => {
        impl Target for VigilDiesel<$manager> {
            fn query(&self) -> BoxFuture<'_, Result<(), String>> {
                Box::pin(async move {
                    let mut conn = self.0.get().await.map_err(|e| chain(&e))?;
                    diesel_select1(&mut **conn).await
                })
            }

            fn close(&self) -> BoxFuture<'_, ()> {
                Box::pin(self.0.close())
            }
        }
    };
}

/// A vigil pool lending diesel connections (the generic `Target` for
/// `vigil::Pool` is for the bench's plain drivers).
pub struct VigilDiesel<M: vigil::Manager>(vigil::Pool<M>);

diesel_vigil_target!(vigil::backend::diesel::DieselPgManager);
diesel_vigil_target!(vigil::backend::diesel::DieselMysqlManager);

/// diesel-async's own pools.
macro_rules! diesel_peer_target {
    ($pool:ty) => {
        impl Target for $pool {
            fn query(&self) -> BoxFuture<'_, Result<(), String>> {
                Box::pin(async move {
                    let mut conn = self.get().await.map_err(|e| chain(&e))?;
                    diesel_select1(&mut *conn).await
                })
            }

            fn close(&self) -> BoxFuture<'_, ()> {
                Box::pin(async {})
            }
        }
    };
}

use diesel_async::pooled_connection::{bb8 as diesel_bb8, deadpool as diesel_deadpool};
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};
diesel_peer_target!(diesel_bb8::Pool<AsyncPgConnection>);
diesel_peer_target!(diesel_bb8::Pool<AsyncMysqlConnection>);
diesel_peer_target!(diesel_deadpool::Pool<AsyncPgConnection>);
diesel_peer_target!(diesel_deadpool::Pool<AsyncMysqlConnection>);

// ------------------------------------------------------------------ the builders

pub fn vigil_diesel_pg(proxy: SocketAddr) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let manager = vigil::backend::diesel::DieselPgManager::new(
            vigil::backend::tokio_postgres::TokioPgManager::new(tp_config(proxy)),
        );
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(VigilDiesel(pool)) as Arc<dyn Target>
    })
}

pub fn vigil_diesel_maria(proxy: SocketAddr) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let manager = vigil::backend::diesel::DieselMysqlManager::new(my_opts(proxy));
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(VigilDiesel(pool)) as Arc<dyn Target>
    })
}

/// diesel-async's manager for `C`, its defaults (`RecyclingMethod::Verified`:
/// a `SELECT 1` before each checkout) unless `verified` is false (`Fast`),
/// connecting through the proxy with the bench's 2 s session timeout.
fn diesel_manager<C>(
    proxy: SocketAddr,
    verified: bool,
) -> diesel_async::pooled_connection::AsyncDieselConnectionManager<C>
where
    C: diesel_async::pooled_connection::PoolableConnection + 'static,
{
    use diesel_async::pooled_connection::{ManagerConfig, RecyclingMethod};
    let mut config = ManagerConfig::<C>::default();
    if !verified {
        config.recycling_method = RecyclingMethod::Fast;
    }
    diesel_async::pooled_connection::AsyncDieselConnectionManager::new_with_config(
        diesel_url::<C>(proxy),
        config,
    )
}

/// The URL diesel-async connects with for `C`'s server.
fn diesel_url<C: 'static>(proxy: SocketAddr) -> String {
    if std::any::TypeId::of::<C>() == std::any::TypeId::of::<AsyncPgConnection>() {
        let url: tokio_postgres::Config = pg_url().parse().expect("VIGIL_BENCH_PG_URL parses");
        let password = url
            .get_password()
            .map(|p| format!(":{}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        format!(
            "postgres://{}{password}@{proxy}/{}?options=-c%20idle_session_timeout%3D{SERVER_IDLE_TIMEOUT_S}s",
            url.get_user().unwrap_or("postgres"),
            url.get_dbname().unwrap_or("postgres"),
        )
    } else {
        let opts = mysql_async::Opts::from_url(&mysql_url()).expect("VIGIL_BENCH_MYSQL_URL parses");
        let password = opts.pass().map(|p| format!(":{p}")).unwrap_or_default();
        // TCP only: mysql_async would otherwise move to the server's Unix
        // socket, around the counting proxy.
        format!(
            "mysql://{}{password}@{proxy}/{}?prefer_socket=false",
            opts.user().unwrap_or("root"),
            opts.db_name().unwrap_or("test"),
        )
    }
}

pub fn diesel_bb8_pg(proxy: SocketAddr, verified: bool) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let pool = diesel_bb8::Pool::builder()
            .max_size(POOL_SIZE as u32)
            .test_on_check_out(verified)
            .build(diesel_manager::<AsyncPgConnection>(proxy, verified))
            .await
            .expect("bb8 build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn diesel_deadpool_pg(
    proxy: SocketAddr,
    verified: bool,
) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let pool =
            diesel_deadpool::Pool::builder(diesel_manager::<AsyncPgConnection>(proxy, verified))
                .max_size(POOL_SIZE)
                .build()
                .expect("deadpool build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

/// MariaDB: diesel-async's manager with a set-up that sets the bench's
/// 2 s session timeout after diesel's own connect.
fn diesel_maria_manager(
    proxy: SocketAddr,
    verified: bool,
) -> diesel_async::pooled_connection::AsyncDieselConnectionManager<AsyncMysqlConnection> {
    use diesel_async::pooled_connection::{ManagerConfig, RecyclingMethod};
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let mut config = ManagerConfig::<AsyncMysqlConnection>::default();
    if !verified {
        config.recycling_method = RecyclingMethod::Fast;
    }
    config.custom_setup = Box::new(|url| {
        Box::pin(async move {
            let mut conn = AsyncMysqlConnection::establish(url).await?;
            conn.batch_execute(MYSQL_SESSION_TIMEOUT)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    diesel_async::pooled_connection::AsyncDieselConnectionManager::new_with_config(
        diesel_url::<AsyncMysqlConnection>(proxy),
        config,
    )
}

pub fn diesel_bb8_maria(proxy: SocketAddr, verified: bool) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let pool = diesel_bb8::Pool::builder()
            .max_size(POOL_SIZE as u32)
            .test_on_check_out(verified)
            .build(diesel_maria_manager(proxy, verified))
            .await
            .expect("bb8 build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn diesel_deadpool_maria(
    proxy: SocketAddr,
    verified: bool,
) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let pool = diesel_deadpool::Pool::builder(diesel_maria_manager(proxy, verified))
            .max_size(POOL_SIZE)
            .build()
            .expect("deadpool build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn vigil_pg(proxy: SocketAddr) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        // Defaults apart from the size: validation IdleFor(500 ms), the
        // server's idle timeout read from each new session.
        let manager = vigil::backend::sqlx::PgManager::new(pg_options(proxy));
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn vigil_tp(proxy: SocketAddr) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let manager = vigil::backend::tokio_postgres::TokioPgManager::new(tp_config(proxy));
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn vigil_maria(proxy: SocketAddr) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let opts = mysql_async_opts(proxy).init(vec![MYSQL_SESSION_TIMEOUT]);
        let manager = vigil::backend::mysql::MySqlManager::new(opts.into());
        let pool = vigil::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .expect("vigil build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn sqlx_pg(proxy: SocketAddr, test: bool) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let pool = sqlx::pool::PoolOptions::<sqlx::Postgres>::new()
            .max_connections(POOL_SIZE as u32)
            .test_before_acquire(test)
            .connect_lazy_with(pg_options(proxy));
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn sqlx_maria(proxy: SocketAddr, test: bool) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let pool = sqlx::pool::PoolOptions::<sqlx::MySql>::new()
            .max_connections(POOL_SIZE as u32)
            .test_before_acquire(test)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(MYSQL_SESSION_TIMEOUT).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(sqlx_mysql_options(proxy));
        Arc::new(pool) as Arc<dyn Target>
    })
}

pub fn mysql_async_pool(proxy: SocketAddr, reset: bool) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        // `setup`, not `init`: mysql_async runs `setup` after each
        // COM_RESET_CONNECTION too, and the reset would otherwise restore the
        // global wait_timeout. min = max: with the default
        // inactive_connection_ttl (0) the pool keeps at most `min` idle.
        let pool_opts = mysql_async::PoolOpts::default()
            .with_constraints(
                mysql_async::PoolConstraints::new(POOL_SIZE, POOL_SIZE).expect("constraints"),
            )
            .with_reset_connection(reset);
        let opts = mysql_async_opts(proxy)
            .setup(vec![MYSQL_SESSION_TIMEOUT])
            .pool_opts(pool_opts);
        Arc::new(mysql_async::Pool::new(opts)) as Arc<dyn Target>
    })
}

pub fn bb8_pool<D: Driver>(opts: D::Opts, test: bool) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
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
        let pool = deadpool::managed::Pool::builder(PeerManager::<D> { opts, ping })
            .max_size(POOL_SIZE)
            .build()
            .expect("deadpool build");
        Arc::new(pool) as Arc<dyn Target>
    })
}

/// The deadpool-postgres crate itself, over the driver's own connect.
pub fn deadpool_postgres_pool(
    proxy: SocketAddr,
    recycling_method: deadpool_postgres::RecyclingMethod,
) -> BoxFuture<'static, Arc<dyn Target>> {
    Box::pin(async move {
        let manager = deadpool_postgres::Manager::from_config(
            tp_config(proxy),
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

pub fn my_opts(proxy: SocketAddr) -> mysql_async::Opts {
    mysql_async_opts(proxy)
        .init(vec![MYSQL_SESSION_TIMEOUT])
        .into()
}
