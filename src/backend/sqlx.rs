//! PostgreSQL, SQLite and MySQL through sqlx, written once over sqlx connection types.
//!
//! [`SqlxManager<DB>`] is one [`Manager`] for every sqlx database; what differs
//! between databases (how to read the server's idle timeouts, what a full
//! session reset is, which connect options are safe to print) lives in the
//! small sealed trait [`SqlxDatabase`], implemented for `sqlx::Postgres`
//! (feature `postgres`), `sqlx::Sqlite` (feature `sqlite`) and
//! `sqlx::MySql` (feature `sqlx-mysql`). Use the aliases `PgManager`,
//! `SqliteManager` and `MySqlSqlxManager`.
//!
//! | | idle timeouts read on connect | cleanup of an open transaction | full reset (`reset_on_return`) |
//! |---|---|---|---|
//! | PostgreSQL | `idle_session_timeout` (the session value, from `pg_settings`) | `ROLLBACK` | `ROLLBACK`, `DISCARD ALL`, clear sqlx's statement cache |
//! | SQLite | none | `ROLLBACK` | `ROLLBACK` |
//! | MySQL | session `wait_timeout` | `ROLLBACK` | `ROLLBACK`, clear sqlx's statement cache (no `COM_RESET_CONNECTION`: session variables survive) |
//!
//! # What counts as "in a transaction"
//! The cheap return-path check ([`Session::needs_cleanup`](crate::Session::needs_cleanup)) sees transactions
//! opened through sqlx ([`Connection::begin`], [`Connection::transaction`]),
//! including one whose [`Transaction`](sqlx::Transaction) guard was dropped
//! without commit (sqlx then queues a `ROLLBACK` that would otherwise only be
//! sent with the next borrower's first query, holding the transaction's locks
//! while the connection sits idle; the pool sends it at once). A raw `BEGIN`
//! sent as a query is invisible to sqlx's bookkeeping: it is cleaned only when
//! the pool is built with `reset_on_return(true)`, whose full reset always
//! starts with a `ROLLBACK`.
//!
//! # Example
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use vigil::backend::sqlx::SqliteManager;
//! use vigil::Pool;
//!
//! let manager = SqliteManager::from_url("sqlite::memory:")?;
//! let pool = Pool::builder(manager).max_size(4).build()?;
//! let mut conn = pool.get().await?;
//! let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?;
//! assert_eq!(one, 1);
//! // sqlx 0.9: SQL built at run time says so (`AssertSqlSafe`).
//! let table = "notes";
//! sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE {table} (body TEXT)")))
//!     .execute(&mut *conn)
//!     .await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::{ConnectOptions, Connection, Database};
// Not re-exported by sqlx since 0.9 (semver-exempt, `#[doc(hidden)]` before).
use sqlx_core::transaction::TransactionManager;

use crate::manager::{
    BrokenDetection, Capabilities, Cleaned, Cleanup, ErrorClass, Manager, ServerTimeouts, Session,
};

/// The connect options type of the sqlx database `DB`
/// (`PgConnectOptions`, `SqliteConnectOptions`, `MySqlConnectOptions`).
pub type Options<DB> = <<DB as Database>::Connection as Connection>::Options;

mod sealed {
    pub trait Sealed {}
}

/// What differs between the databases [`SqlxManager`] supports. Sealed:
/// implemented for `sqlx::Postgres`, `sqlx::Sqlite` and `sqlx::MySql`
/// behind their features.
pub trait SqlxDatabase: Database + sealed::Sealed {
    /// Reads the idle timeouts the server applies to this session.
    fn server_timeouts(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<ServerTimeouts, sqlx::Error>> + Send;

    /// Resets all session state. Called after any sqlx-managed transaction
    /// has been rolled back; must itself roll back a transaction opened by a
    /// raw `BEGIN`.
    fn full_reset(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// What `Session::broken` (always `false` with sqlx) can see: nothing over a
    /// network; for SQLite, in-process, no session can die while lent.
    const DETECTION: BrokenDetection;

    /// The URL schemes this database answers to (sqlx itself would read a
    /// `mysql://` URL as a SQLite file name, or as PostgreSQL options).
    const SCHEMES: &'static [&'static str];

    /// Adds the connect options that are safe to print (never a password).
    fn describe(options: &Options<Self>, f: &mut fmt::DebugStruct<'_, '_>);

    /// `options` with `password` (SQLite has none: unchanged).
    fn with_password(options: &Options<Self>, password: &str) -> Options<Self>;

    /// Is the server read-only for this session (PostgreSQL
    /// `transaction_read_only`; MySQL `@@global.read_only`)? SQLite: no.
    fn read_only(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Where `options` connect to, for error messages (never a password).
    fn host(options: &Options<Self>) -> String;
}

/// A [`Manager`] for any sqlx database: PostgreSQL, SQLite or MySQL.
/// Use the aliases `PgManager`, `SqliteManager`, `MySqlSqlxManager`.
///
/// - `connect`: [`ConnectOptions::connect`].
/// - `is_valid`: [`Connection::ping`] (PostgreSQL: a `Sync` message; MySQL:
///   `COM_PING`; SQLite: a round trip to the connection's worker thread).
/// - `Session::broken`: always `false`; sqlx 0.9 exposes no cheap "this
///   connection is finished" flag. A session that died while idle is found
///   by the pool's server-timeout rule, its keepalive and the checkout
///   validation; one that died while lent, by the ping on return: the
///   manager says [`BrokenDetection::Blind`] for PostgreSQL and MySQL, so
///   the pool's default [`VerifyOnReturn::Auto`](crate::VerifyOnReturn)
///   pings every returned connection (one round trip per return, off the
///   caller's path; measured in BENCHMARKS.md). The tokio-postgres backend
///   needs no such ping.
/// - `Session::needs_cleanup`: a sqlx-managed transaction is open, or a `ROLLBACK`
///   queued by a dropped [`Transaction`](sqlx::Transaction) has not been sent yet.
/// - `reset`: sends what sqlx queued, rolls back sqlx-managed transactions,
///   and when `full` performs the database's full reset (see the
///   [module docs](self)).
/// - `close`: [`Connection::close`] (a polite goodbye to the server).
///
/// What bounds a borrower's wait on a dead network: sqlx 0.9 opens its
/// sockets itself and offers no TCP option (no keepalive, no
/// `TCP_USER_TIMEOUT`), so a query already sent on a black-holed
/// connection waits for the kernel's retransmission timeout (about 15
/// minutes on Linux); the pool's own pings and resets are bounded by
/// `validation_timeout`. Bound the borrower's query with
/// `tokio::time::timeout` (and `Pooled::retire` the connection when it
/// fires), or use the tokio-postgres backend, which sets a 30 s
/// `tcp_user_timeout` by default.
///
/// `Debug` prints the backend, host, port, user and database name, never
/// the password (sqlx's own options `Debug` would print it).
pub struct SqlxManager<DB: SqlxDatabase> {
    options: Options<DB>,
    /// Hosts tried after `options`' own, in order.
    more_hosts: Vec<Options<DB>>,
    /// The role every session must have.
    role: TargetRole,
    /// Asked for the password of each new connection, if set.
    credentials: Option<Arc<dyn Credentials>>,
    _db: PhantomData<fn() -> DB>,
}

impl<DB: SqlxDatabase> SqlxManager<DB> {
    /// A manager that opens connections with `options`.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// use sqlx::sqlite::SqliteConnectOptions;
    /// use vigil::backend::sqlx::SqliteManager;
    ///
    /// let manager = SqliteManager::new(SqliteConnectOptions::new().in_memory(true));
    /// # let _ = manager; }
    /// ```
    pub fn new(options: Options<DB>) -> Self {
        SqlxManager {
            options,
            more_hosts: Vec::new(),
            role: TargetRole::Any,
            credentials: None,
            _db: PhantomData,
        }
    }

    /// Tries `hosts` after the first, in order, until one gives a session
    /// of the required role. In a URL: `postgres://h1:5432,h2:5432/db`.
    pub fn with_more_hosts(mut self, hosts: Vec<Options<DB>>) -> Self {
        self.more_hosts = hosts;
        self
    }

    /// Every session must have `role`: checked on each new one (the wrong
    /// role is closed, the next host tried) and re-checked by the pool
    /// every `role_check_interval`. In a URL: `?target_session_attrs=read-write`.
    pub fn with_target_role(mut self, role: TargetRole) -> Self {
        self.role = role;
        self
    }

    /// Asks `provider` for the password of every new connection (an IAM
    /// token, a Vault lease), instead of the one in the options; see
    /// [`credentials`](super::credentials).
    pub fn with_credentials(mut self, provider: impl Credentials) -> Self {
        self.credentials = Some(Arc::new(provider));
        self
    }

    /// A manager for the connection URL `url`
    /// (`postgres://user:pw@host/db`, `sqlite::memory:`, `mysql://…`).
    ///
    /// # Errors
    /// [`InvalidUrl`] saying what is wrong with the URL. The message never
    /// contains the URL's password.
    ///
    /// ```
    /// # #[cfg(feature = "postgres")] {
    /// use vigil::backend::sqlx::PgManager;
    ///
    /// let err = PgManager::from_url("postgres://user:secret@host:notaport/db").unwrap_err();
    /// assert!(err.to_string().contains("invalid port"), "{err}");
    /// assert!(!err.to_string().contains("secret"));
    /// # }
    /// ```
    pub fn from_url(url: &str) -> Result<Self, InvalidUrl> {
        let invalid = |reason: String| InvalidUrl {
            database: <DB as Database>::NAME,
            reason,
        };
        // Only what precedes the first `:` and holds no `@` or `/` can be a
        // scheme; the rest of the URL (with its password) is never quoted.
        let scheme = url
            .split_once(':')
            .map(|(s, _)| s)
            .filter(|s| !s.is_empty() && !s.contains(['@', '/']));
        let expected = DB::SCHEMES.join(", ");
        match scheme {
            None => return Err(invalid(format!("no scheme (expected {expected})"))),
            Some(s) if !DB::SCHEMES.iter().any(|e| e.eq_ignore_ascii_case(s)) => {
                return Err(invalid(format!("scheme `{s}` (expected {expected})")))
            }
            Some(_) => {}
        }
        let (rest, role) = take_target_role(url);
        let role = match role.as_deref().map(|r| (r, TargetRole::parse(r))) {
            None => TargetRole::Any,
            Some((_, Some(role))) => role,
            Some((other, None)) => {
                return Err(invalid(format!(
                    "target_session_attrs `{other}` (expected any, read-write, read-only)"
                )))
            }
        };
        let mut all = Vec::new();
        for one in split_hosts(&rest) {
            match Options::<DB>::from_str(&one) {
                Ok(options) => all.push(options),
                Err(error) => {
                    return Err(InvalidUrl {
                        database: <DB as Database>::NAME,
                        reason: redact(&error.to_string(), url),
                    })
                }
            }
        }
        let first = all.remove(0);
        Ok(SqlxManager::new(first)
            .with_more_hosts(all)
            .with_target_role(role))
    }

    /// The options connections are opened with.
    pub fn options(&self) -> &Options<DB> {
        &self.options
    }
}

impl<DB: SqlxDatabase> SqlxManager<DB> {
    /// One connect with `options`, and the provider's password if any.
    async fn connect_to(&self, options: &Options<DB>) -> Result<DB::Connection, sqlx::Error> {
        match &self.credentials {
            None => options.connect().await,
            Some(provider) => {
                let password = provider
                    .password()
                    .await
                    .map_err(|e| sqlx::Error::Configuration(provider_failed(&e).into()))?;
                DB::with_password(options, password.expose())
                    .connect()
                    .await
            }
        }
    }
}

/// Takes `target_session_attrs` out of a URL's query (sqlx does not know it).
fn take_target_role(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut role = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                role = Some(value.to_ascii_lowercase());
                false
            }
            _ => true,
        })
        .collect();
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, role)
}

impl<DB: SqlxDatabase> Clone for SqlxManager<DB> {
    fn clone(&self) -> Self {
        SqlxManager {
            options: self.options.clone(),
            more_hosts: self.more_hosts.clone(),
            role: self.role,
            credentials: self.credentials.clone(),
            _db: PhantomData,
        }
    }
}

impl<DB: SqlxDatabase> fmt::Debug for SqlxManager<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SqlxManager");
        s.field("backend", &<DB as Database>::NAME);
        DB::describe(&self.options, &mut s);
        s.finish_non_exhaustive()
    }
}

use super::credentials::{provider_failed, Credentials};
#[cfg(feature = "postgres")]
use super::pg_duration;
use super::redact_password as redact;
pub use super::InvalidUrl;
use super::{split_hosts, HostSearch, TargetRole};

impl<DB> Manager for SqlxManager<DB>
where
    DB: SqlxDatabase,
{
    type Connection = DB::Connection;
    type Error = sqlx::Error;

    async fn connect(&self) -> Result<DB::Connection, sqlx::Error> {
        if self.more_hosts.is_empty() && self.role == TargetRole::Any {
            return self.connect_to(&self.options).await;
        }
        // The hosts in order until one gives a session of the role.
        let mut search = HostSearch::new(self.role);
        for options in std::iter::once(&self.options).chain(&self.more_hosts) {
            let host = DB::host(options);
            let mut conn = match self.connect_to(options).await {
                Ok(conn) => conn,
                Err(e) => {
                    search.failed(&host, e);
                    continue;
                }
            };
            match DB::read_only(&mut conn).await {
                Ok(ro) if search.accepts(&host, ro) => return Ok(conn),
                Ok(_) => {
                    let _ = conn.close().await;
                }
                Err(e) => search.failed(&host, e),
            }
        }
        Err(search.finish(|why| sqlx::Error::Configuration(why.into())))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            detection: DB::DETECTION,
            checks_role: self.role != TargetRole::Any,
        }
    }

    async fn has_role(&self, conn: &mut DB::Connection) -> Result<bool, sqlx::Error> {
        Ok(self.role.accepts(DB::read_only(conn).await?))
    }

    fn is_valid(
        &self,
        conn: &mut DB::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        conn.ping()
    }

    /// sqlx shows no sign of a dead session without a round trip (hence
    /// `Blind` below), nor of a query dropped mid-flight: only whether a
    /// transaction is open.
    fn session(&self, conn: &mut DB::Connection) -> Session {
        // `should_flush`: a dropped `Transaction` queues its ROLLBACK in the
        // write buffer and lowers sqlx's depth at once (PostgreSQL, MySQL);
        // until it is sent the server still holds the transaction and its
        // locks. It is `#[doc(hidden)]` but public on `Connection`, and the
        // only synchronous way to see that queued work.
        let open = conn.is_in_transaction() || conn.should_flush();
        Session {
            needs_cleanup: open,
            in_transaction: open,
            ..Session::default()
        }
    }

    /// A closed or terminated session ends it; PostgreSQL SQLSTATE 25006
    /// (`read_only_sql_transaction`) says the server turned read-only
    /// (MySQL's read-only errors carry the generic SQLSTATE HY000 and are
    /// not seen).
    fn classify(&self, error: &sqlx::Error) -> ErrorClass {
        if session_gone(error) {
            return ErrorClass::EndsSession;
        }
        let code = error.as_database_error().and_then(|e| e.code());
        if code.is_some_and(|code| code == "25006") {
            ErrorClass::RoleChanged
        } else {
            ErrorClass::Other
        }
    }

    /// sqlx cannot tell a statement left running ([`Session::query_in_flight`]
    /// is never set), so there is none to stop.
    async fn reset(
        &self,
        conn: &mut DB::Connection,
        cleanup: Cleanup,
    ) -> Result<Cleaned, sqlx::Error> {
        // Send what sqlx queued (a dropped transaction's ROLLBACK) and
        // wait for it: a ping goes out after it and is answered after it.
        // SQLite runs that ROLLBACK on its worker thread; the ping, which
        // queues behind it, waits for it the same way.
        // The same ping proves the session survived its borrower; a failure
        // retires it (`broken` when the session is gone).
        if conn.should_flush() || conn.is_in_transaction() {
            conn.ping().await?;
        }
        // Still in a sqlx-managed transaction (a leaked `Transaction`):
        // roll back through sqlx so its depth counter stays true, else
        // the next `begin()` would open a SAVEPOINT instead of BEGIN.
        let depth = <DB::TransactionManager as TransactionManager>::get_transaction_depth(conn);
        for _ in 0..depth {
            <DB::TransactionManager as TransactionManager>::rollback(conn).await?;
        }
        if cleanup.full {
            DB::full_reset(conn).await?;
        }
        Ok(Cleaned::Ready)
    }

    fn server_timeouts(
        &self,
        conn: &mut DB::Connection,
    ) -> impl Future<Output = Result<ServerTimeouts, sqlx::Error>> + Send {
        DB::server_timeouts(conn)
    }

    fn close(&self, conn: DB::Connection) -> impl Future<Output = ()> + Send {
        let closing = conn.close();
        async move {
            // The goodbye is a courtesy; a failure leaves nothing to do.
            let _ = closing.await;
        }
    }
}

/// The error means the session is over: the socket failed or closed, the
/// protocol broke, or the server ended the session — SQLSTATE class `08`
/// (connection exception), PostgreSQL `57P01`–`57P03` (administrator,
/// crash or startup shutdown: `pg_terminate_backend` and restarts), MySQL
/// `70100` (`KILL`).
fn session_gone(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "70100")
        }),
        _ => false,
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use sqlx::{Executor, Postgres, Row};

    impl sealed::Sealed for Postgres {}

    impl SqlxDatabase for Postgres {
        fn with_password(options: &PgConnectOptions, password: &str) -> PgConnectOptions {
            options.clone().password(password)
        }

        async fn read_only(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
            let row = conn
                .fetch_one(sqlx::raw_sql("SHOW transaction_read_only"))
                .await?;
            Ok(row.try_get::<String, _>(0)? == "on")
        }

        fn host(options: &PgConnectOptions) -> String {
            format!("{}:{}", options.get_host(), options.get_port())
        }

        const DETECTION: BrokenDetection = BrokenDetection::Blind;
        const SCHEMES: &'static [&'static str] = &["postgres", "postgresql"];

        async fn server_timeouts(conn: &mut PgConnection) -> Result<ServerTimeouts, sqlx::Error> {
            // `pg_settings` shows this session's values with their unit,
            // and simply has no row for a setting the server lacks
            // (`idle_session_timeout` before v14), where `SHOW` would fail.
            // Simple protocol: one round trip, nothing cached.
            let rows = conn
                .fetch_all(sqlx::raw_sql(
                    "SELECT name, setting, unit FROM pg_settings \
                     WHERE name = 'idle_session_timeout'",
                ))
                .await?;
            let mut timeouts = ServerTimeouts::default();
            for row in rows {
                let name: String = row.try_get(0)?;
                let setting: String = row.try_get(1)?;
                let unit: Option<String> = row.try_get(2)?;
                let value = pg_duration(&setting, unit.as_deref()).map_err(|e| {
                    sqlx::Error::Protocol(format!("cannot read PostgreSQL {name}: {e}"))
                })?;
                timeouts.idle = value;
            }
            Ok(timeouts)
        }

        async fn full_reset(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
            // A raw `BEGIN` is invisible to sqlx; `DISCARD ALL` refuses
            // to run in a transaction block. ROLLBACK outside a
            // transaction is only a warning. Separate messages: in one
            // multi-statement query `DISCARD ALL` is not top level and fails.
            conn.execute(sqlx::raw_sql("ROLLBACK")).await?;
            conn.execute(sqlx::raw_sql("DISCARD ALL")).await?;
            // `DISCARD ALL` deallocated the server-side prepared
            // statements; sqlx's client-side cache still names them and
            // the next cached query would fail with "prepared statement
            // does not exist". Closing an unknown statement is no error.
            conn.clear_cached_statements().await
        }

        fn describe(o: &PgConnectOptions, f: &mut fmt::DebugStruct<'_, '_>) {
            f.field("host", &o.get_host())
                .field("port", &o.get_port())
                .field("username", &o.get_username())
                .field("database", &o.get_database())
                .field("application_name", &o.get_application_name());
        }
    }

    /// A [`Manager`] for PostgreSQL through sqlx.
    ///
    /// Reads the session's `idle_session_timeout` on each new connection (the
    /// pool retires idle connections before it fires). A full reset is `ROLLBACK`, `DISCARD ALL` and
    /// clearing sqlx's prepared-statement cache.
    ///
    /// ```no_run
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use sqlx::postgres::PgConnectOptions;
    /// use vigil::backend::sqlx::PgManager;
    /// use vigil::Pool;
    ///
    /// let manager = PgManager::new(
    ///     PgConnectOptions::new()
    ///         .host("127.0.0.1")
    ///         .username("postgres")
    ///         .database("test")
    ///         .application_name("my-service"),
    /// );
    /// // `connect` opens one connection, so a wrong URL fails here.
    /// let pool = Pool::builder(manager).max_size(8).connect().await?;
    /// let mut conn = pool.get().await?;
    /// let n: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?;
    /// # let _ = n;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub type PgManager = SqlxManager<Postgres>;
}
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PgManager;

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    use sqlx::Sqlite;

    impl sealed::Sealed for Sqlite {}

    impl SqlxDatabase for Sqlite {
        fn with_password(options: &SqliteConnectOptions, _password: &str) -> SqliteConnectOptions {
            options.clone()
        }

        async fn read_only(_conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
            Ok(false)
        }

        fn host(options: &SqliteConnectOptions) -> String {
            options.get_filename().display().to_string()
        }

        const DETECTION: BrokenDetection = BrokenDetection::AfterFailedIo;
        const SCHEMES: &'static [&'static str] = &["sqlite"];

        async fn server_timeouts(
            _conn: &mut SqliteConnection,
        ) -> Result<ServerTimeouts, sqlx::Error> {
            // An embedded database has no server to time out.
            Ok(ServerTimeouts::default())
        }

        async fn full_reset(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
            // The session state worth resetting is the transaction. A
            // raw `BEGIN` is invisible to sqlx, and a bare ROLLBACK
            // outside a transaction is an error in SQLite; SAVEPOINT
            // opens a transaction when there is none (or nests in the
            // open one), so the ROLLBACK after it always has one to end.
            sqlx::Executor::execute(&mut *conn, sqlx::raw_sql("SAVEPOINT vigil_reset; ROLLBACK"))
                .await?;
            Ok(())
        }

        fn describe(o: &SqliteConnectOptions, f: &mut fmt::DebugStruct<'_, '_>) {
            f.field("filename", &o.get_filename());
        }
    }

    /// A [`Manager`] for SQLite through sqlx (no server: no idle timeouts;
    /// a full reset is a `ROLLBACK` of any open transaction).
    ///
    /// Each `sqlite::memory:` connection is its own empty database; to share
    /// one in-memory database between the pool's connections use
    /// `sqlite:file:NAME?mode=memory&cache=shared`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use vigil::backend::sqlx::SqliteManager;
    /// use vigil::Pool;
    ///
    /// let manager = SqliteManager::from_url("sqlite:file:doc_demo?mode=memory&cache=shared")?;
    /// let pool = Pool::builder(manager).max_size(4).build()?;
    /// let mut conn = pool.get().await?;
    /// sqlx::query("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    ///     .execute(&mut *conn)
    ///     .await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub type SqliteManager = SqlxManager<Sqlite>;
}
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteManager;

#[cfg(feature = "sqlx-mysql")]
mod mysql {
    use super::*;
    use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
    use sqlx::{Executor, MySql, Row};

    impl sealed::Sealed for MySql {}

    impl SqlxDatabase for MySql {
        fn with_password(options: &MySqlConnectOptions, password: &str) -> MySqlConnectOptions {
            options.clone().password(password)
        }

        async fn read_only(conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
            let row = conn
                .fetch_one(sqlx::raw_sql("SELECT CAST(@@global.read_only AS SIGNED)"))
                .await?;
            Ok(row.try_get::<i64, _>(0)? != 0)
        }

        fn host(options: &MySqlConnectOptions) -> String {
            format!("{}:{}", options.get_host(), options.get_port())
        }

        const DETECTION: BrokenDetection = BrokenDetection::Blind;
        const SCHEMES: &'static [&'static str] = &["mysql", "mariadb"];

        async fn server_timeouts(
            conn: &mut MySqlConnection,
        ) -> Result<ServerTimeouts, sqlx::Error> {
            // The session value is what kills this connection (it was
            // copied from the global, or from `interactive_timeout`, at
            // connect). Text protocol: one round trip, nothing prepared.
            let row = conn
                .fetch_one(sqlx::raw_sql("SELECT CAST(@@SESSION.wait_timeout AS CHAR)"))
                .await?;
            let secs: String = row.try_get(0)?;
            let secs: u64 = secs.trim().parse().map_err(|_| {
                sqlx::Error::Protocol(format!("cannot read MySQL wait_timeout {secs:?}"))
            })?;
            Ok(ServerTimeouts {
                idle: (secs > 0).then(|| std::time::Duration::from_secs(secs)),
            })
        }

        async fn full_reset(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
            // sqlx's MySqlConnection cannot send COM_RESET_CONNECTION, so
            // session variables and temporary tables survive this reset;
            // use the `mysql` feature (mysql_async) when they must not.
            conn.execute(sqlx::raw_sql("ROLLBACK")).await?;
            conn.clear_cached_statements().await
        }

        fn describe(o: &MySqlConnectOptions, f: &mut fmt::DebugStruct<'_, '_>) {
            f.field("host", &o.get_host())
                .field("port", &o.get_port())
                .field("username", &o.get_username())
                .field("database", &o.get_database());
        }
    }

    /// A [`Manager`] for MySQL/MariaDB through sqlx.
    ///
    /// Reads the session `wait_timeout` on each new connection. A full reset
    /// is `ROLLBACK` and clearing sqlx's prepared-statement cache (closing
    /// the statements on the server); sqlx cannot send
    /// `COM_RESET_CONNECTION`, so session variables and temporary tables are
    /// *not* reset. The `mysql` feature's mysql_async manager can.
    ///
    /// ```no_run
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use vigil::backend::sqlx::MySqlSqlxManager;
    /// use vigil::Pool;
    ///
    /// let manager = MySqlSqlxManager::from_url("mysql://root@127.0.0.1:3306/test")?;
    /// let pool = Pool::builder(manager).max_size(8).connect().await?;
    /// # let _ = pool;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub type MySqlSqlxManager = SqlxManager<MySql>;
}
#[cfg(feature = "sqlx-mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx-mysql")))]
pub use mysql::MySqlSqlxManager;
