//! PostgreSQL through `tokio-postgres`: liveness without a round trip.
//!
//! [`TokioPgManager`] lends [`PgClient`]s: a [`tokio_postgres::Client`]
//! (reached through `Deref`, so `conn.query(…)` works as on a client) with
//! the task that runs its connection. Each client's
//! [`Connection`](tokio_postgres::Connection) runs in a task of its own on
//! the runtime that opened it; that task reads everything the server sends
//! the moment it arrives, including the `FATAL` of an idle timeout, a
//! `pg_terminate_backend` or a shutdown, and the EOF after it. From then on
//! [`Client::is_closed`] is `true`, with no round trip. That is what the
//! pool's `has_broken` asks at every checkout and return.
//!
//! | Pool question | How it is answered | Round trip |
//! |---|---|---|
//! | broken? (`has_broken`) | [`Client::is_closed`]: the connection task saw EOF, an I/O error or a fatal error | no |
//! | dirty? (`needs_cleanup`) | never: a dropped [`Transaction`](tokio_postgres::Transaction) queues its own `ROLLBACK` before any later query | no |
//! | alive? (`is_valid`) | an empty simple query | yes |
//! | clean (`reset`, with `reset_on_return`) | `DISCARD ALL` (after a `ROLLBACK` if a raw `BEGIN` left a transaction open) | yes |
//! | server timeouts | `idle_session_timeout`, `idle_in_transaction_session_timeout` from `pg_settings`, one simple query; the next sessions reuse the answer for 60 s | once a minute, not per connection |
//!
//! # What is seen without a round trip, and what is not
//!
//! Seen: a session the server ended while it sat idle in the pool or while
//! it was lent (idle timeout, `pg_terminate_backend`, restart, crash with
//! a reset or FIN), and one whose query failed on a broken socket. The pool
//! then retires it as `broken` at the next checkout or return, so the
//! default [`VerifyOnReturn::Auto`](crate::VerifyOnReturn) sends nothing.
//!
//! Not seen: a socket black-holed by a NAT or firewall (nothing arrives, so
//! nothing is learned; the keepalive ping, TCP keepalives and
//! `tcp_user_timeout` below find it), a kill that lands between the check
//! and the borrower's next query (that one query fails; the connection is
//! then closed and never lent again), and a transaction opened with a raw
//! `BEGIN` and never ended (tokio-postgres does not expose the session's
//! transaction status). Use [`Client::transaction`], or set
//! `reset_on_return` (or `Pooled::reset_on_return` for one borrow), which
//! rolls it back.
//!
//! # Connect options vigil sets
//!
//! Unless the [`Config`] says otherwise: a `connect_timeout` of 10 s per
//! host; TCP keepalives after 60 s idle, every 10 s, 3 probes (a dead peer
//! of an idle connection is found within about 90 s by the kernel); and on
//! Linux a `tcp_user_timeout` of 30 s, so a query on a black-holed lent
//! connection fails after 30 s of unacknowledged data instead of the
//! kernel's ~15 minutes of retransmissions. Multiple hosts
//! (`host=a,b` or `postgres://a:5432,b:5433/db`) and
//! `target_session_attrs=read-write` are the driver's own and work as
//! documented there. TLS is not wired in yet: connections are plain TCP or
//! a Unix socket, and `sslmode=require` fails to connect.
//!
//! `Debug` prints hosts, ports, user, database and application name, never
//! the password.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

use super::{pg_duration, redact_password, InvalidUrl};
use crate::manager::{BrokenDetection, Manager, ServerTimeouts};

/// Tracing target of this backend.
const TARGET: &str = "vigil::tokio_postgres";

/// tokio-postgres's own default for `keepalives_idle`: left at it, vigil's applies.
const DRIVER_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// A [`Manager`] for PostgreSQL through [`tokio_postgres::Client`]; see the
/// [module docs](self) for what it detects without a round trip.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use vigil::backend::tokio_postgres::TokioPgManager;
/// use vigil::Pool;
///
/// let manager = TokioPgManager::from_url("postgres://app:secret@127.0.0.1/app")?;
/// let pool = Pool::builder(manager).max_size(8).connect().await?;
/// let client = pool.get().await?;
/// let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
/// assert_eq!(one, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokioPgManager {
    config: Config,
    /// The server timeouts a recent session found, shared by clones.
    learned: Arc<Mutex<Option<(Instant, ServerTimeouts)>>>,
}

/// How long the timeouts one session found stand in for asking again.
/// Every session of one manager opens with the same options, so they see
/// the same values; an `ALTER SYSTEM … ; SELECT pg_reload_conf()` reaches
/// the pool's new sessions within this time.
const RELEARN_AFTER: Duration = Duration::from_secs(60);

impl TokioPgManager {
    /// A manager that opens connections with `config`, plus the connect
    /// timeout and TCP settings of the [module docs](self) where `config`
    /// leaves them at the driver's defaults.
    pub fn new(mut config: Config) -> Self {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_keepalives() && config.get_keepalives_idle() == DRIVER_KEEPALIVES_IDLE {
            config.keepalives_idle(Duration::from_secs(60));
            config.keepalives_interval(Duration::from_secs(10));
            config.keepalives_retries(3);
        }
        #[cfg(target_os = "linux")]
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        TokioPgManager {
            config,
            learned: Arc::default(),
        }
    }

    /// A manager for a connection string: a URL
    /// (`postgres://user:pw@host:5432/db?application_name=app`, several
    /// hosts as `host1:5432,host2:5433`) or libpq's `key=value` form.
    ///
    /// # Errors
    /// [`InvalidUrl`] saying what is wrong; never containing the password.
    ///
    /// ```
    /// use vigil::backend::tokio_postgres::TokioPgManager;
    ///
    /// let err = TokioPgManager::from_url("postgres://u:secret@h:notaport/db").unwrap_err();
    /// assert!(err.to_string().contains("port"), "{err}");
    /// assert!(!err.to_string().contains("secret"));
    /// ```
    pub fn from_url(url: &str) -> Result<Self, InvalidUrl> {
        let invalid = |reason: String| InvalidUrl {
            database: "PostgreSQL",
            reason: redact_password(&reason, url),
        };
        // The driver reads a URL by its scheme and anything else as
        // `key=value` pairs; a URL of another database must not pass as
        // a mistyped key.
        if let Some((scheme, _)) = url.split_once("://") {
            if !["postgres", "postgresql"].contains(&scheme.to_ascii_lowercase().as_str()) {
                return Err(invalid(format!(
                    "scheme `{scheme}` (expected postgres, postgresql)"
                )));
            }
        }
        Config::from_str(url).map(TokioPgManager::new).map_err(|e| {
            // The driver's message is "invalid connection string"; what is
            // wrong (`invalid value for option `port``) is its source.
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason = format!("{reason}: {cause}");
                source = cause.source();
            }
            invalid(reason)
        })
    }

    /// The options connections are opened with.
    ///
    /// Careful: the password is in there (`Config::get_password`).
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl fmt::Debug for TokioPgManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        f.debug_struct("TokioPgManager")
            .field("hosts", &hosts)
            .field("ports", &self.config.get_ports())
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("application_name", &self.config.get_application_name())
            .finish_non_exhaustive()
    }
}

/// A pooled PostgreSQL session: the [`Client`] (through `Deref`) and the
/// task that runs its connection.
///
/// The pool closes a retired session by dropping the client, which lets
/// the task send `Terminate` and end, and aborts the task if that does not
/// happen within `validation_timeout`: a task still waiting for the reply
/// to a ping that a black hole swallowed would otherwise keep the socket,
/// and the server's session, open for good.
pub struct PgClient {
    client: Client,
    connection: JoinHandle<()>,
}

impl PgClient {
    /// The client, for APIs that want a `&Client` rather than a deref.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Deref for PgClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgClient {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl fmt::Debug for PgClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgClient")
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

/// Aborts the connection task when dropped: the pool's timeout on `close`.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The error means the session is over: the connection is closed, or the
/// server ended it (SQLSTATE class `08`, `57P01`–`57P03`).
fn session_gone(error: &tokio_postgres::Error) -> bool {
    error.is_closed()
        || error.code().is_some_and(|c| {
            c.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(c)
        })
}

impl Manager for TokioPgManager {
    type Connection = PgClient;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PgClient, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        // The connection task: it owns the socket, answers the client's
        // requests and notices the server's goodbye, which flips
        // `is_closed`. It ends when the client is dropped (after sending
        // `Terminate`) or the session does.
        let connection = tokio::spawn(async move {
            if let Err(error) = connection.await {
                // debug: the pool reports the retirement that follows.
                tracing::debug!(target: TARGET, %error, "session ended");
            }
        });
        Ok(PgClient { client, connection })
    }

    async fn is_valid(&self, conn: &mut PgClient) -> Result<(), tokio_postgres::Error> {
        // An empty query: one round trip, no parse, no plan.
        conn.simple_query("").await.map(drop)
    }

    fn has_broken(&self, conn: &mut PgClient) -> bool {
        conn.is_closed()
    }

    fn broken_detection(&self) -> BrokenDetection {
        BrokenDetection::Watched
    }

    fn error_ends_session(&self, error: &tokio_postgres::Error) -> bool {
        session_gone(error)
    }

    async fn reset(&self, conn: &mut PgClient, full: bool) -> Result<(), tokio_postgres::Error> {
        if !full {
            return Ok(());
        }
        match conn.batch_execute("DISCARD ALL").await {
            // A raw `BEGIN` left a transaction open, where `DISCARD ALL`
            // cannot run: roll it back first (only then, so a clean
            // session pays no `ROLLBACK` warning in the server log).
            Err(e) if e.code() == Some(&SqlState::ACTIVE_SQL_TRANSACTION) => {
                conn.batch_execute("ROLLBACK").await?;
                conn.batch_execute("DISCARD ALL").await
            }
            other => other,
        }
    }

    async fn server_timeouts(
        &self,
        conn: &mut PgClient,
    ) -> Result<ServerTimeouts, tokio_postgres::Error> {
        if let Some((at, timeouts)) = *self.learned.lock() {
            if at.elapsed() < RELEARN_AFTER {
                return Ok(timeouts);
            }
        }
        // `pg_settings` has no row for a setting the server lacks
        // (`idle_session_timeout` before v14), where `SHOW` would fail.
        // Simple protocol: one round trip, nothing prepared.
        let messages = conn
            .simple_query(
                "SELECT name, setting, unit FROM pg_settings \
                 WHERE name IN ('idle_session_timeout', 'idle_in_transaction_session_timeout')",
            )
            .await?;
        let mut timeouts = ServerTimeouts::default();
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let (Some(name), Some(setting)) = (row.get(0), row.get(1)) else {
                continue;
            };
            match pg_duration(setting, row.get(2)) {
                Ok(value) if name == "idle_session_timeout" => timeouts.idle = value,
                Ok(value) => timeouts.idle_in_transaction = value,
                // A unit this code does not know: better no timeout than a
                // failed connect; warn so it is noticed.
                Err(error) => {
                    tracing::warn!(target: TARGET, name, %error, "cannot read a server timeout")
                }
            }
        }
        *self.learned.lock() = Some((Instant::now(), timeouts));
        Ok(timeouts)
    }

    async fn close(&self, conn: PgClient) {
        let PgClient { client, connection } = conn;
        // If the pool's timeout drops this future, the task is aborted.
        let _abort = AbortOnDrop(connection.abort_handle());
        // Dropping the client lets the task send `Terminate` and end, once
        // every reply it still waits for has come.
        drop(client);
        let _ = connection.await;
    }
}
