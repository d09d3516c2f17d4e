//! diesel-async over vigil's backends: [`DieselPgManager`] lends
//! `AsyncPgConnection` over the watched tokio-postgres session (a session
//! the server ended is seen without a round trip), [`DieselMysqlManager`]
//! lends `AsyncMysqlConnection` over mysql_async (a session that failed is
//! seen after the borrower's failed I/O, as with `MySqlManager`).
//!
//! A borrower that leaves a diesel transaction open, or drops its future
//! midway (`BEGIN` sent, `COMMIT` never), hands back a connection whose
//! server session and diesel bookkeeping both say "in a transaction": the
//! pool rolls the session back and resets diesel's transaction manager
//! before anyone else gets it. A statement left running is cancelled
//! (PostgreSQL's cancel request; `KILL QUERY` on MySQL).
//!
//! | | liveness without a round trip | full reset (`reset_on_return`) |
//! |---|---|---|
//! | PostgreSQL | a `FATAL`, a closed socket, the transaction status | `ROLLBACK`, diesel's statement cache replaced, `DISCARD ALL`, diesel's `SET TIME ZONE 'UTC'` again |
//! | MySQL / MariaDB | a socket the driver gave up (after failed I/O) | `ROLLBACK` only: diesel gives no way to send `COM_RESET_CONNECTION`, so session variables survive (as with sqlx's MySQL backend) |
//!
//! Both read the server's idle timeout when the session opens, before
//! `after_connect` hooks run (diesel hides the driver's connection after).

use std::fmt;
use std::ops::{Deref, DerefMut};

use diesel::connection::CacheSize;
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection,
    TransactionManager,
};
use mysql_async::{Opts, OptsBuilder};

pub use super::tokio_postgres::diesel::{DieselPg, DieselPgManager};
use crate::backend::mysql::{kill_query, MySqlManager};
use crate::manager::{Cleaned, Cleanup, ErrorClass, Manager, ServerTimeouts, Session};

/// What a diesel manager's operations fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DieselError<D: std::error::Error + 'static> {
    /// The driver's connect (or its first questions to the server).
    #[error(transparent)]
    Driver(D),
    /// diesel's set-up of the new session.
    #[error(transparent)]
    Connection(#[from] diesel::ConnectionError),
    /// A query (a ping, a rollback, a reset, a hook's).
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

/// A [`Manager`] lending diesel-async's [`AsyncMysqlConnection`] over a
/// mysql_async session opened as [`MySqlManager`] opens it (its URL, TLS,
/// credentials, hosts and role), with what diesel's own `establish` sets
/// (no client-side statement cache, `CLIENT_FOUND_ROWS`).
#[derive(Clone)]
pub struct DieselMysqlManager {
    inner: MySqlManager,
}

impl fmt::Debug for DieselMysqlManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DieselMysqlManager")
            .field(&self.inner)
            .finish()
    }
}

impl DieselMysqlManager {
    /// Over sessions opened with `opts`.
    pub fn new(opts: Opts) -> Self {
        DieselMysqlManager {
            inner: MySqlManager::new(diesel_opts(opts)),
        }
    }

    /// [`MySqlManager::from_url`]'s URL.
    ///
    /// # Errors
    /// The driver's error for a URL it cannot read.
    pub fn from_url(url: &str) -> Result<Self, mysql_async::UrlError> {
        Ok(Self::new(Opts::from_url(url)?))
    }
}

/// What `AsyncMysqlConnection::establish` sets and `try_from` does not.
fn diesel_opts(opts: Opts) -> Opts {
    OptsBuilder::from_opts(opts)
        .stmt_cache_size(0)
        .client_found_rows(true)
        .into()
}

/// A pooled diesel connection: derefs to [`AsyncMysqlConnection`] (pass
/// `&mut **conn` to diesel's query methods).
pub struct DieselMysql {
    conn: AsyncMysqlConnection,
    /// The session's id on the server, for `KILL QUERY`.
    id: u32,
    server: ServerTimeouts,
}

impl Deref for DieselMysql {
    type Target = AsyncMysqlConnection;

    fn deref(&self) -> &AsyncMysqlConnection {
        &self.conn
    }
}

impl DerefMut for DieselMysql {
    fn deref_mut(&mut self) -> &mut AsyncMysqlConnection {
        &mut self.conn
    }
}

impl fmt::Debug for DieselMysql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DieselMysql")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DieselMysql {
    /// mysql_async gave the session up (a socket that failed, a fatal
    /// error, a command dropped midway). diesel only shows this through
    /// `PoolableConnection::is_broken`, which also reports any open
    /// transaction: asked with diesel's transaction state set aside.
    fn disconnected(&mut self) -> bool {
        let kept = std::mem::take(self.conn.transaction_state());
        let gone = PoolableConnection::is_broken(&mut self.conn);
        *self.conn.transaction_state() = kept;
        gone
    }
}

/// diesel's own idea of the transaction is not "none": a transaction
/// open, failed, or cut off mid-`BEGIN`/`COMMIT` (its future dropped).
pub(crate) fn transaction_open<C>(conn: &mut C) -> bool
where
    C: AsyncConnection<TransactionManager = AnsiTransactionManager>,
{
    AnsiTransactionManager::is_broken_transaction_manager(conn)
        || !matches!(
            AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth(),
            Ok(None)
        )
}

/// diesel's error for a session that is gone.
pub(crate) fn closed_connection(error: &diesel::result::Error) -> bool {
    matches!(
        error,
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ClosedConnection,
            _
        )
    )
}

type MyError = DieselError<mysql_async::Error>;

impl Manager for DieselMysqlManager {
    type Connection = DieselMysql;
    type Error = MyError;

    async fn connect(&self) -> Result<DieselMysql, MyError> {
        let mut raw = self.inner.connect().await.map_err(DieselError::Driver)?;
        let server = self
            .inner
            .server_timeouts(&mut raw)
            .await
            .map_err(DieselError::Driver)?;
        let id = raw.id();
        // Four `SET`s (time zone, character sets).
        let conn = AsyncMysqlConnection::try_from(raw).await?;
        Ok(DieselMysql { conn, id, server })
    }

    /// A `SELECT 1` (diesel has no `COM_PING`).
    async fn is_valid(&self, conn: &mut DieselMysql) -> Result<(), MyError> {
        Ok(conn.conn.batch_execute("SELECT 1").await?)
    }

    /// As with `MySqlManager`, except that a transaction is diesel's to
    /// report; a session the driver gave up may have a statement still
    /// running on the server.
    fn session(&self, conn: &mut DieselMysql) -> Session {
        crate::backend::mysql::session(conn.disconnected(), transaction_open(&mut conn.conn))
    }

    fn classify(&self, error: &MyError) -> ErrorClass {
        match error {
            DieselError::Driver(e) => self.inner.classify(e),
            DieselError::Query(e) if closed_connection(e) => ErrorClass::EndsSession,
            DieselError::Query(_) | DieselError::Connection(_) => ErrorClass::Other,
        }
    }

    /// diesel's bookkeeping is all there is to read (the server's status
    /// flags are behind diesel): a transaction diesel opened, or cut off.
    /// A statement left running (the session is broken: diesel gave it up
    /// with mysql_async) is stopped with `KILL QUERY` from a new
    /// connection; the session itself is not lent again.
    async fn reset(&self, conn: &mut DieselMysql, cleanup: Cleanup) -> Result<Cleaned, MyError> {
        if cleanup.stop_query {
            let admin = self.inner.connect().await.map_err(DieselError::Driver)?;
            return kill_query(admin, conn.id)
                .await
                .map_err(DieselError::Driver);
        }
        let full = cleanup.full;
        if full || transaction_open(&mut conn.conn) {
            conn.conn.batch_execute("ROLLBACK").await?;
            *conn.conn.transaction_state() = AnsiTransactionManager::default();
        }
        if full {
            // Prepared statements survive without COM_RESET_CONNECTION;
            // diesel's cache is replaced all the same, as on PostgreSQL.
            conn.conn
                .set_prepared_statement_cache_size(CacheSize::Disabled);
            conn.conn
                .set_prepared_statement_cache_size(CacheSize::Unbounded);
        }
        Ok(Cleaned::Ready)
    }

    async fn server_timeouts(&self, conn: &mut DieselMysql) -> Result<ServerTimeouts, MyError> {
        Ok(conn.server)
    }
}
