//! diesel-async's `AsyncPgConnection` over a session opened and watched as
//! [`TokioPgManager`] opens it: the client goes to diesel, the watch (and
//! the task that runs the connection) stay with vigil, so a session the
//! server ended is seen without a round trip, as with `PgClient`.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use diesel::connection::CacheSize;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, SimpleAsyncConnection,
};
use tokio::task::JoinHandle;

use super::cancel::Endpoint;
use super::{AbortOnDrop, PgClient, Seen, TokioPgManager};
use crate::backend::diesel::{closed_connection, transaction_open, DieselError};
use crate::backend::InvalidUrl;
use crate::manager::{
    BrokenDetection, Capabilities, Cleaned, Cleanup, ErrorClass, Manager, ServerTimeouts, Session,
};

/// What diesel's `AsyncPgConnection::try_from` sets on a new session, and
/// what a full reset (`DISCARD ALL`) takes back to the server's defaults
/// (`client_encoding` is a startup parameter, which `DISCARD ALL` keeps).
const DIESEL_SETUP: &str = "SET TIME ZONE 'UTC'";

/// A [`Manager`] lending diesel-async's [`AsyncPgConnection`], each over a
/// session that [`TokioPgManager`] opens and watches: zero-round-trip
/// liveness (a `FATAL`, a closed socket, an open transaction are seen in
/// the server's own messages), abandoned statements cancelled, dirty
/// returns (an open diesel transaction, one whose future was dropped)
/// rolled back before the next borrower.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel_async::RunQueryDsl;
/// use vigil::backend::diesel::DieselPgManager;
/// use vigil::Pool;
///
/// let pool = Pool::builder(DieselPgManager::from_url("postgres://postgres@127.0.0.1/test")?).build()?;
/// let mut conn = pool.get().await?;
/// // `&mut **conn`: the guard, then vigil's wrapper, to diesel's connection.
/// diesel::sql_query("SELECT 1").execute(&mut **conn).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DieselPgManager {
    inner: TokioPgManager,
}

impl fmt::Debug for DieselPgManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DieselPgManager").field(&self.inner).finish()
    }
}

impl DieselPgManager {
    /// Over `inner`'s sessions (its URL, TLS, credentials, statement cache
    /// setting aside: diesel keeps its own).
    pub fn new(inner: TokioPgManager) -> Self {
        DieselPgManager { inner }
    }

    /// [`TokioPgManager::from_url`]'s URL (libpq's defaults included).
    ///
    /// # Errors
    /// [`InvalidUrl`] naming what is wrong, never quoting the password.
    pub fn from_url(url: &str) -> Result<Self, InvalidUrl> {
        TokioPgManager::from_url(url).map(Self::new)
    }
}

/// A pooled diesel connection: derefs to [`AsyncPgConnection`] (pass
/// `&mut **conn` to diesel's query methods).
pub struct DieselPg {
    conn: AsyncPgConnection,
    connection: JoinHandle<()>,
    seen: Arc<Seen>,
    endpoint: Option<Endpoint>,
    server: ServerTimeouts,
}

impl Deref for DieselPg {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        &self.conn
    }
}

impl DerefMut for DieselPg {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        &mut self.conn
    }
}

impl fmt::Debug for DieselPg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DieselPg")
            .field("ended", &self.ended())
            .finish_non_exhaustive()
    }
}

impl DieselPg {
    /// The session is over: a `FATAL` read, the socket closed, the task gone.
    fn ended(&self) -> bool {
        self.connection.is_finished()
            || self.seen.fatal.load(Ordering::Acquire)
            || self.seen.ended.load(Ordering::Acquire)
    }
}

type Error = DieselError<tokio_postgres::Error>;

impl Manager for DieselPgManager {
    type Connection = DieselPg;
    type Error = Error;

    async fn connect(&self) -> Result<DieselPg, Error> {
        let mut client = self.inner.connect().await.map_err(DieselError::Driver)?;
        // Read while vigil still holds the client: diesel's hides it.
        let server = self
            .inner
            .server_timeouts(&mut client)
            .await
            .map_err(DieselError::Driver)?;
        let PgClient {
            client,
            connection,
            seen,
            endpoint,
            ..
        } = client;
        // Two `SET`s (time zone, encoding), pipelined.
        let conn = AsyncPgConnection::try_from(client).await?;
        Ok(DieselPg {
            conn,
            connection,
            seen,
            endpoint,
            server,
        })
    }

    async fn is_valid(&self, conn: &mut DieselPg) -> Result<(), Error> {
        // An empty query: one round trip, no parse, no plan.
        Ok(conn.conn.batch_execute("").await?)
    }

    /// As with `TokioPgManager`, plus diesel's own transaction state: an
    /// open or cut-off diesel transaction needs cleaning too.
    fn session(&self, conn: &mut DieselPg) -> Session {
        let broken = conn.ended();
        Session {
            broken,
            needs_cleanup: !conn.seen.settled_clean() || transaction_open(&mut conn.conn),
            in_transaction: conn.seen.in_transaction(),
            query_in_flight: !broken && conn.seen.reply_pending(),
            role_in_doubt: false,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            detection: BrokenDetection::Watched,
            checks_role: false,
        }
    }

    fn classify(&self, error: &Error) -> ErrorClass {
        match error {
            DieselError::Driver(e) => self.inner.classify(e),
            DieselError::Query(e) if closed_connection(e) => ErrorClass::EndsSession,
            DieselError::Query(_) | DieselError::Connection(_) => ErrorClass::Other,
        }
    }

    /// A statement left running is stopped first, as by
    /// `TokioPgManager::reset`.
    async fn reset(&self, conn: &mut DieselPg, cleanup: Cleanup) -> Result<Cleaned, Error> {
        let mut stopped = false;
        if cleanup.stop_query {
            let connection = &conn.connection;
            let cancelled = self
                .inner
                .cancel_session(&conn.seen, conn.endpoint.clone(), || {
                    connection.is_finished()
                })
                .await;
            match cancelled.go_on() {
                Ok(s) => stopped = s,
                Err(unusable) => return Ok(unusable),
            }
        }
        let full = cleanup.full;
        if !conn.seen.settled_clean() {
            // A reply still on its way, or a dropped transaction's: an
            // empty query waits for it (see `TokioPgManager::reset`).
            conn.conn.batch_execute("").await?;
        }
        if conn.seen.in_transaction() {
            conn.conn.batch_execute("ROLLBACK").await?;
        }
        // The server is out of any transaction: diesel's bookkeeping (a
        // depth, a `BEGIN` or `COMMIT` cut off midway) is reset to match.
        if transaction_open(&mut conn.conn) {
            *conn.conn.transaction_state() = AnsiTransactionManager::default();
        }
        if !full {
            return Ok(super::cancel::cleaned(stopped));
        }
        // `DISCARD ALL` deallocates the server's prepared statements:
        // diesel's cache is replaced first (so it prepares again), and
        // what diesel set at connect is set again after.
        conn.conn
            .set_prepared_statement_cache_size(CacheSize::Disabled);
        conn.conn
            .set_prepared_statement_cache_size(CacheSize::Unbounded);
        // Two queries: `DISCARD ALL` cannot run in the implicit transaction
        // of a multi-statement one.
        conn.conn.batch_execute("DISCARD ALL").await?;
        conn.conn.batch_execute(DIESEL_SETUP).await?;
        Ok(super::cancel::cleaned(stopped))
    }

    async fn server_timeouts(&self, conn: &mut DieselPg) -> Result<ServerTimeouts, Error> {
        Ok(conn.server)
    }

    async fn close(&self, conn: DieselPg) {
        let DieselPg {
            conn, connection, ..
        } = conn;
        // If the pool's timeout drops this future, the task is aborted.
        let _abort = AbortOnDrop(connection.abort_handle());
        // Dropping diesel's connection drops the client: the task sends
        // `Terminate` and ends.
        drop(conn);
        let _ = connection.await;
    }
}
