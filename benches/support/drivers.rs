//! What `benches/realdb.rs` and `benches/liveness.rs` share: the driver
//! connections every pool lends, seen one way ([`Driver`]), and the small
//! manager a bb8 or deadpool user writes over them ([`PeerManager`]).
//! Included by `#[path]`, so each bench stays one binary.

// Each bench includes this file and uses a part of it.
#![allow(dead_code)]

use std::future::Future;

use mysql_async::prelude::Queryable;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

/// One driver connection type, seen the same way by every pool.
pub trait Driver: Sized + Send + 'static {
    type Opts: Clone + Send + Sync + 'static;
    type Error: std::error::Error + Send + Sync + 'static;
    fn connect(opts: &Self::Opts) -> impl Future<Output = Result<Self, Self::Error>> + Send;
    fn ping(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// `SELECT 1`, reading the row back.
    fn select1(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The driver's own cheap "this connection is finished" flag, no I/O.
    fn has_broken(&mut self) -> bool;
}

impl Driver for PgConnection {
    type Opts = PgConnectOptions;
    type Error = sqlx::Error;

    fn connect(opts: &PgConnectOptions) -> impl Future<Output = Result<Self, sqlx::Error>> + Send {
        opts.connect()
    }

    fn ping(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        Connection::ping(self)
    }

    async fn select1(&mut self) -> Result<(), sqlx::Error> {
        // Prepared once per connection, then cached by sqlx: one round trip.
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(self).await?;
        assert_eq!(one, 1);
        Ok(())
    }

    fn has_broken(&mut self) -> bool {
        false // sqlx 0.9 exposes no such flag
    }
}

impl Driver for MySqlConnection {
    type Opts = MySqlConnectOptions;
    type Error = sqlx::Error;

    fn connect(
        opts: &MySqlConnectOptions,
    ) -> impl Future<Output = Result<Self, sqlx::Error>> + Send {
        opts.connect()
    }

    fn ping(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        Connection::ping(self)
    }

    async fn select1(&mut self) -> Result<(), sqlx::Error> {
        let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(self).await?;
        assert_eq!(one, 1);
        Ok(())
    }

    fn has_broken(&mut self) -> bool {
        false
    }
}

impl Driver for mysql_async::Conn {
    type Opts = mysql_async::Opts;
    type Error = mysql_async::Error;

    fn connect(
        opts: &mysql_async::Opts,
    ) -> impl Future<Output = Result<Self, mysql_async::Error>> + Send {
        mysql_async::Conn::new(opts.clone())
    }

    fn ping(&mut self) -> impl Future<Output = Result<(), mysql_async::Error>> + Send {
        Queryable::ping(self)
    }

    async fn select1(&mut self) -> Result<(), mysql_async::Error> {
        // Text protocol (COM_QUERY): one round trip.
        let one: Option<i64> = self.query_first("SELECT 1").await?;
        assert_eq!(one, Some(1));
        Ok(())
    }

    fn has_broken(&mut self) -> bool {
        self.is_disconnected()
    }
}

impl Driver for vigil::backend::tokio_postgres::PgClient {
    type Opts = tokio_postgres::Config;
    type Error = tokio_postgres::Error;

    async fn connect(opts: &tokio_postgres::Config) -> Result<Self, tokio_postgres::Error> {
        // Only vigil's own rows lend `PgClient`, through its manager.
        use vigil::Manager;
        vigil::backend::tokio_postgres::TokioPgManager::new(opts.clone())
            .connect()
            .await
    }

    async fn ping(&mut self) -> Result<(), tokio_postgres::Error> {
        self.simple_query("").await.map(drop)
    }

    async fn select1(&mut self) -> Result<(), tokio_postgres::Error> {
        // Unnamed statement, Parse/Bind/Execute in one flight: one round trip.
        let rows = self.query_typed("SELECT 1", &[]).await?;
        let one: i32 = rows[0].get(0);
        assert_eq!(one, 1);
        Ok(())
    }

    fn has_broken(&mut self) -> bool {
        self.is_closed()
    }
}

/// A plain tokio-postgres session as the driver opens it, its connection
/// task spawned: what bb8-postgres, deadpool-postgres and a hand-written
/// manager lend. Nothing of vigil's (no socket watch, no TCP settings).
pub struct RawTp(tokio_postgres::Client);

impl Driver for RawTp {
    type Opts = tokio_postgres::Config;
    type Error = tokio_postgres::Error;

    async fn connect(opts: &tokio_postgres::Config) -> Result<Self, tokio_postgres::Error> {
        let (client, connection) = opts.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(RawTp(client))
    }

    async fn ping(&mut self) -> Result<(), tokio_postgres::Error> {
        self.0.simple_query("").await.map(drop)
    }

    async fn select1(&mut self) -> Result<(), tokio_postgres::Error> {
        let rows = self.0.query_typed("SELECT 1", &[]).await?;
        assert_eq!(rows[0].get::<_, i32>(0), 1);
        Ok(())
    }

    fn has_broken(&mut self) -> bool {
        self.0.is_closed()
    }
}

pub type TpConn = RawTp;

// ------------------------------------------------------------------ bb8 and deadpool managers

/// The small manager a bb8 or deadpool user writes over a driver connection.
/// bb8: `is_valid` is a ping (called only with `test_on_check_out(true)`),
/// `has_broken` the driver's flag. deadpool: `recycle` rejects what the
/// driver flags and, when `ping`, pings (deadpool-postgres' `Verified`;
/// without, its `Fast`).
pub struct PeerManager<D: Driver> {
    pub opts: D::Opts,
    pub ping: bool,
}

impl<D: Driver> bb8::ManageConnection for PeerManager<D> {
    type Connection = D;
    type Error = D::Error;

    fn connect(&self) -> impl Future<Output = Result<D, D::Error>> + Send {
        D::connect(&self.opts)
    }

    fn is_valid(&self, conn: &mut D) -> impl Future<Output = Result<(), D::Error>> + Send {
        conn.ping()
    }

    fn has_broken(&self, conn: &mut D) -> bool {
        conn.has_broken()
    }
}

impl<D: Driver> deadpool::managed::Manager for PeerManager<D> {
    type Type = D;
    type Error = D::Error;

    fn create(&self) -> impl Future<Output = Result<D, D::Error>> + Send {
        D::connect(&self.opts)
    }

    async fn recycle(
        &self,
        conn: &mut D,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<D::Error> {
        if conn.has_broken() {
            return Err(deadpool::managed::RecycleError::message("broken"));
        }
        if self.ping {
            conn.ping()
                .await
                .map_err(deadpool::managed::RecycleError::Backend)?;
        }
        Ok(())
    }
}
