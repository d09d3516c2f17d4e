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
//! pool's `session` asks at every checkout and return.
//!
//! | Pool question | How it is answered | Round trip |
//! |---|---|---|
//! | broken? (`Session::broken`) | [`Client::is_closed`]: the connection task saw EOF, an I/O error or a fatal error | no |
//! | dirty? (`Session::needs_cleanup`) | the transaction status of the server's last `ReadyForQuery`, read as it passed: a transaction block is open or failed | no |
//! | alive? (`is_valid`) | an empty simple query | yes |
//! | clean (`reset`) | dirty: an empty query (behind the `ROLLBACK` a dropped [`Transaction`](tokio_postgres::Transaction) queued), then `ROLLBACK` if a raw `BEGIN` is still open; with `reset_on_return`, `DISCARD ALL` | only when dirty or `reset_on_return` |
//! | server timeouts | `idle_session_timeout` from `pg_settings`, one simple query; the next sessions reuse the answer for 60 s | once a minute, not per connection |
//!
//! # What is seen without a round trip, and what is not
//!
//! Seen: a session the server ended while it sat idle in the pool or while
//! it was lent (idle timeout, `pg_terminate_backend`, restart, crash with
//! a reset or FIN), and one whose query failed on a broken socket. The pool
//! then retires it as `broken` at the next checkout or return, so the
//! default [`VerifyOnReturn::Auto`](crate::VerifyOnReturn) sends nothing.
//! The server's `FATAL` is seen the moment it is read, not only at the EOF
//! behind it: vigil opens the socket itself and watches the messages that
//! pass (`FatalWatch`), so a borrower whose query got the `FATAL` cannot
//! give the session back to be lent again before the driver has read the
//! EOF. (With `hostaddr` or `load_balance_hosts=random` the driver opens
//! the socket and only the EOF is seen.)
//!
//! Not seen: a socket black-holed by a NAT or firewall (nothing arrives, so
//! nothing is learned; the keepalive ping, TCP keepalives and
//! `tcp_user_timeout`, if set, find it), a kill that lands between the check
//! and the borrower's next query (that one query fails; the connection is
//! then closed and never lent again), and session state other than a
//! transaction (`SET`, temporary tables, prepared statements, advisory
//! locks): set `reset_on_return` (or `Pooled::reset_on_return` for one
//! borrow) for `DISCARD ALL`. A transaction left open is seen: the watch
//! reads the status byte of every `ReadyForQuery`, and a connection
//! returned inside a transaction block is rolled back before it is lent
//! again, whether it was a dropped [`Transaction`](tokio_postgres::Transaction)
//! or a raw `BEGIN`. (Sessions the driver opens itself, with `hostaddr` or
//! `load_balance_hosts=random`, are not watched: there only the EOF is
//! seen, and only a dropped `Transaction` is rolled back, by the driver.)
//!
//! # Connect options vigil sets
//!
//! Unless the [`Config`] says otherwise: a `connect_timeout` of 10 s per
//! host; TCP keepalives after 60 s idle, every 10 s, 3 probes (a dead peer
//! of an idle connection is found within about 90 s by the kernel); and
//! `tcp_user_timeout` 30 s ([`DEFAULT_TCP_USER_TIMEOUT`]), so a query sent
//! on a black-holed lent connection fails after 30 s of unacknowledged data
//! instead of the kernel's ~15 minutes of retransmissions, and the
//! connection is retired as `broken`. `tcp_user_timeout=N` in the URL (or
//! [`Config::tcp_user_timeout`]) changes the bound; `0` turns it off (the
//! kernel's retransmission timeout again). Its cost is within the
//! machine's noise: the `vigil-no-user-timeout` row of BENCHMARKS.md
//! measures vigil without it, beside the default.
//! vigil's own pings are bounded by `validation_timeout` either way.
//!
//! Multiple hosts
//! (`host=a,b` or `postgres://a:5432,b:5433/db`) and
//! `target_session_attrs=read-write` are the driver's own and work as
//! documented there.
//!
//! TLS (feature `tls`): vigil asks for it and does the handshake itself, so
//! the watch reads the session inside TLS and detects everything above
//! over an encrypted session too. [`TokioPgManager::from_url`] reads libpq's
//! `sslmode` (default `prefer`), `sslrootcert`, `sslcert` and `sslkey`; see
//! [`SslMode`] for what each mode checks. Not over a Unix socket (as with
//! libpq), and not yet with `hostaddr` or `load_balance_hosts=random`.
//!
//! `Debug` prints hosts, ports, user, database and application name, never
//! the password.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::time::Duration;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

use super::credentials::{provider_failed, Credentials};
use super::{percent_decode, pg_duration, redact_password, InvalidUrl};

mod cancel;
#[cfg(feature = "diesel-async")]
pub(super) mod diesel;
mod statements;
mod tls;
use crate::manager::{
    BrokenDetection, Capabilities, Cleaned, Cleanup, ErrorClass, Manager, ServerTimeouts, Session,
};
use statements::StatementCache;
pub use statements::DEFAULT_STATEMENT_CACHE;
use tls::MaybeTls;
pub use tls::{PgTls, SslMode};

/// Tracing target of this backend.
const TARGET: &str = "vigil::tokio_postgres";

/// How long sent data may go unacknowledged before the kernel fails the
/// connection (`TCP_USER_TIMEOUT`), unless the config sets it: a borrower's
/// query on a black-holed connection fails within this, plus the time it
/// takes the driver to see the error.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Does this URL or `key=value` string set `tcp_user_timeout` to 0 (or less)?
fn turns_user_timeout_off(conn: &str) -> bool {
    conn.split(['?', '&', ' '])
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| key.trim() == "tcp_user_timeout")
        .any(|(_, value)| value.trim().parse::<i64>().is_ok_and(|t| t <= 0))
}

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
    /// The driver's options, its `ssl_mode` always `disable`: vigil
    /// negotiates TLS itself (`tls`), so the watch sits inside it.
    config: Config,
    tls: PgTls,
    /// Asked for the password of each new connection, if set.
    credentials: Option<Arc<dyn Credentials>>,
    /// The server timeouts a recent session found, shared by clones.
    learned: Arc<Mutex<Option<(Instant, ServerTimeouts)>>>,
    /// Statements each session keeps for `PgClient::prepare_cached`; 0: off.
    statement_cache: usize,
}

/// How long the timeouts one session found stand in for asking again.
/// Every session of one manager opens with the same options, so they see
/// the same values; an `ALTER SYSTEM … ; SELECT pg_reload_conf()` reaches
/// the pool's new sessions within this time.
const RELEARN_AFTER: Duration = Duration::from_secs(60);

impl TokioPgManager {
    /// A manager that opens connections with `config`, plus the connect
    /// timeout and TCP keepalives of the [module docs](self) where `config`
    /// leaves them at the driver's defaults.
    ///
    /// TLS as the driver does it without a TLS connector: its default
    /// `ssl_mode` (`prefer`) connects in plain text, `require` gets TLS
    /// without a certificate check (with the `tls` feature; without it the
    /// connect fails saying so). [`with_tls`](Self::with_tls) says more;
    /// [`from_url`](Self::from_url) reads libpq's parameters.
    pub fn new(mut config: Config) -> Self {
        let tls = PgTls::from_driver(config.get_ssl_mode());
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
        if config.get_keepalives() && config.get_keepalives_idle() == DRIVER_KEEPALIVES_IDLE {
            config.keepalives_idle(Duration::from_secs(60));
            config.keepalives_interval(Duration::from_secs(10));
            config.keepalives_retries(3);
        }
        TokioPgManager {
            config,
            tls,
            credentials: None,
            learned: Arc::default(),
            statement_cache: DEFAULT_STATEMENT_CACHE,
        }
    }

    /// How many prepared statements each session keeps for
    /// [`PgClient::prepare_cached`] (least recently used out). Default
    /// [`DEFAULT_STATEMENT_CACHE`] (100). `0` turns the cache off: behind
    /// pgbouncer in transaction mode before 1.21 (no
    /// `max_prepared_statements`), where a named statement prepared in one
    /// transaction is not there in the next.
    pub fn with_statement_cache(mut self, capacity: usize) -> Self {
        self.statement_cache = capacity;
        self
    }

    /// Asks `provider` for the password of every new connection (an IAM
    /// token, a Vault lease), instead of the one in the config; see
    /// [`credentials`](super::credentials).
    pub fn with_credentials(mut self, provider: impl Credentials) -> Self {
        self.credentials = Some(Arc::new(provider));
        self
    }

    /// Connects with these TLS settings (from [`PgTls::with_config`], for a
    /// root store or client certificate of your own).
    pub fn with_tls(mut self, tls: PgTls) -> Self {
        self.tls = tls;
        self
    }

    /// The TLS settings in force.
    pub fn tls(&self) -> &PgTls {
        &self.tls
    }

    /// A manager for a connection string: a URL
    /// (`postgres://user:pw@host:5432/db?application_name=app`, several
    /// hosts as `host1:5432,host2:5433`) or libpq's `key=value` form.
    ///
    /// What the string leaves out is filled in as libpq does: from
    /// `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`
    /// and `PGSSLMODE`, then libpq's defaults (no host: the Unix socket
    /// directory that holds the server's socket, `/var/run/postgresql` or
    /// `/tmp`; no user: the OS user). A host starting with `/` is a socket
    /// directory (`postgres://%2Fvar%2Frun%2Fpostgresql/db`, `?host=/tmp`).
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
        let (rest, mut params) = take_tls_params(url);
        if params.mode.is_none() {
            params.mode = std::env::var("PGSSLMODE").ok().filter(|m| !m.is_empty());
        }
        let mode = match params.mode.as_deref() {
            None => SslMode::Prefer,
            Some(m) => SslMode::parse(m).ok_or_else(|| {
                invalid(format!(
                    "sslmode `{m}` (expected disable, allow, prefer, require, verify-ca, verify-full)"
                ))
            })?,
        };
        let tls = PgTls::from_params(
            mode,
            params.rootcert.as_deref(),
            params.cert.as_deref(),
            params.key.as_deref(),
        )
        .map_err(invalid)?;
        let config = Config::from_str(&rest).map_err(|e| {
            // The driver's message is "invalid connection string"; what is
            // wrong (`invalid value for option `port``) is its source.
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason = format!("{reason}: {cause}");
                source = cause.source();
            }
            invalid(reason)
        })?;
        let mut config = config;
        libpq_defaults(&mut config, &|name| std::env::var(name).ok());
        let mut manager = TokioPgManager::new(config).with_tls(tls);
        // The driver reads `tcp_user_timeout=0` as "not set", which would
        // give vigil's default; libpq reads it as "the system's", i.e. off.
        if turns_user_timeout_off(&rest) {
            manager.config.tcp_user_timeout(Duration::ZERO);
        }
        Ok(manager)
    }

    /// The options connections are opened with. Its `ssl_mode` is always
    /// `disable` (vigil negotiates TLS itself): the TLS settings are
    /// [`tls`](Self::tls), to carry over with [`with_tls`](Self::with_tls)
    /// when building a manager from a modified copy.
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
    /// What the socket under the session saw: a `FATAL` (or `PANIC`) error
    /// the moment it arrives, before the driver hands it to the query that
    /// gets it, and the transaction status; see [`FatalWatch`].
    seen: Arc<Seen>,
    /// The session runs over TLS.
    tls: bool,
    /// Where the session's socket went, for a cancel request; `None` for
    /// sessions the driver opened itself.
    endpoint: Option<cancel::Endpoint>,
    /// `prepare_cached`'s statements, this session's.
    statements: StatementCache,
}

impl PgClient {
    /// Whether the session is encrypted (TLS); see [`SslMode`].
    pub fn is_tls(&self) -> bool {
        self.tls
    }

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

/// Spawns a session's connection task on the current runtime.
fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>) -> JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The connection task: it owns the socket, answers the client's
    // requests and notices the server's goodbye, which flips `is_closed`.
    // It ends when the client is dropped (after sending `Terminate`) or
    // the session does.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            // debug: the pool reports the retirement that follows.
            tracing::debug!(target: TARGET, %error, "session ended");
        }
    })
}

impl TokioPgManager {
    /// The driver's own connect: it opens the socket, so only the EOF of a
    /// session that ends is seen, not the `FATAL` before it.
    async fn connect_unwatched(&self) -> Result<PgClient, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        Ok(PgClient {
            client,
            connection: spawn_connection(connection),
            seen: Arc::new(Seen::unwatched()),
            tls: false,
            endpoint: None,
            statements: StatementCache::new(self.statement_cache),
        })
    }

    /// Opens a session over a socket wrapped in [`FatalWatch`], trying the
    /// hosts in order as the driver does; the last failure if none gave a
    /// usable session. `None` when this path does not apply (`hostaddr`,
    /// `load_balance_hosts=random`).
    async fn connect_watched(&self) -> Option<Result<PgClient, Failure>> {
        let c = &self.config;
        if !c.get_hostaddrs().is_empty() || c.get_load_balance_hosts() != LoadBalanceHosts::Disable
        {
            return None;
        }
        let ports = c.get_ports();
        let mut last = Failure::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no host to connect to",
        ));
        for (i, host) in c.get_hosts().iter().enumerate() {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            let opened = match host {
                Host::Tcp(name) => self.tcp(name, port).await,
                #[cfg(unix)]
                Host::Unix(dir) => {
                    let path = dir.join(format!(".s.PGSQL.{port}"));
                    // As libpq: no TLS over a Unix-domain socket.
                    let endpoint = cancel::Endpoint::Unix(path.clone());
                    match self.within(UnixStream::connect(path)).await {
                        Ok(socket) => self.start(MaybeTls::Plain(socket), endpoint).await,
                        Err(e) => Err(Failure::Io(e)),
                    }
                }
            };
            match opened {
                Ok(client) => return Some(Ok(client)),
                Err(e) => last = e,
            }
        }
        Some(Err(last))
    }

    async fn tcp(&self, name: &str, port: u16) -> Result<PgClient, Failure> {
        let addrs = tokio::net::lookup_host((name, port))
            .await
            .map_err(Failure::Io)?;
        let mut last = Failure::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} resolves to no address"),
        ));
        for addr in addrs {
            let attempt = match self.within(TcpStream::connect(addr)).await {
                Ok(socket) => match self.tune(&socket) {
                    Ok(()) => self.secure(name, socket, addr).await,
                    Err(e) => Err(Failure::Io(e)),
                },
                Err(e) => Err(Failure::Io(e)),
            };
            match attempt {
                Ok(client) => return Ok(client),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `connect_timeout`, as the driver applies it to each socket.
    async fn within<T>(
        &self,
        f: impl std::future::Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        match self.config.get_connect_timeout() {
            Some(t) => tokio::time::timeout(*t, f).await.unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {t:?}"),
                ))
            }),
            None => f.await,
        }
    }

    /// `TCP_NODELAY`, keepalives and `tcp_user_timeout`, as the driver sets them.
    fn tune(&self, socket: &TcpStream) -> io::Result<()> {
        socket.set_nodelay(true)?;
        let sock = socket2::SockRef::from(socket);
        let c = &self.config;
        if c.get_keepalives() {
            let mut keepalive = socket2::TcpKeepalive::new().with_time(c.get_keepalives_idle());
            if let Some(every) = c.get_keepalives_interval() {
                keepalive = keepalive.with_interval(every);
            }
            #[cfg(not(windows))]
            if let Some(n) = c.get_keepalives_retries() {
                keepalive = keepalive.with_retries(n);
            }
            sock.set_tcp_keepalive(&keepalive)?;
        }
        #[cfg(target_os = "linux")]
        if let Some(t) = c.get_tcp_user_timeout() {
            sock.set_tcp_user_timeout(Some(*t))?;
        }
        Ok(())
    }

    /// TLS on a TCP socket as `sslmode` says (within `connect_timeout`),
    /// then [`start`](Self::start) inside it.
    async fn secure(
        &self,
        host: &str,
        socket: TcpStream,
        addr: std::net::SocketAddr,
    ) -> Result<PgClient, Failure> {
        let stream = self
            .within(self.tls.negotiate(host, socket))
            .await
            .map_err(Failure::Io)?;
        let endpoint = cancel::Endpoint::Tcp {
            host: host.to_owned(),
            addr,
        };
        self.start(stream, endpoint).await
    }

    /// Startup and authentication on `stream` (watched, inside TLS if
    /// any), then the role check of `target_session_attrs`.
    async fn start<S>(
        &self,
        stream: MaybeTls<S>,
        endpoint: cancel::Endpoint,
    ) -> Result<PgClient, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let seen = Arc::new(Seen::default());
        let tls = stream.is_tls();
        let stream = FatalWatch::new(stream, &seen);
        let (client, connection) = match self.config.get_connect_timeout() {
            Some(t) => tokio::time::timeout(*t, self.config.connect_raw(stream, NoTls))
                .await
                .map_err(|_| {
                    Failure::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {t:?}"),
                    ))
                })?,
            None => self.config.connect_raw(stream, NoTls).await,
        }
        .map_err(Failure::Pg)?;
        let client = PgClient {
            client,
            connection: spawn_connection(connection),
            seen,
            tls,
            endpoint: Some(endpoint),
            statements: StatementCache::new(self.statement_cache),
        };
        let wanted = self.config.get_target_session_attrs();
        if wanted != TargetSessionAttrs::Any {
            let read_only = is_read_only(&client).await.map_err(Failure::Pg)?;
            // The driver's own words for the same refusals. Dropping the
            // client ends the session.
            match wanted {
                TargetSessionAttrs::ReadWrite if read_only => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "database does not allow writes",
                    )))
                }
                TargetSessionAttrs::ReadOnly if !read_only => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "database is not read only",
                    )))
                }
                _ => {}
            }
        }
        Ok(client)
    }
}

/// Fills in what a connection string leaves out the way libpq does: the
/// `PG*` environment variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
/// `PGDATABASE`, `PGAPPNAME`), then libpq's own defaults: the Unix socket
/// directory for the host, the OS user for the user (the server then takes
/// the user's name for the database). `env` reads a variable.
fn libpq_defaults(config: &mut Config, env: &dyn Fn(&str) -> Option<String>) {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if config.get_ports().is_empty() {
        if let Some(ports) = var("PGPORT") {
            for port in ports.split(',').filter_map(|p| p.trim().parse().ok()) {
                config.port(port);
            }
        }
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        match var("PGHOST") {
            // A host starting with `/` is a socket directory, as in libpq.
            Some(hosts) => {
                for host in hosts.split(',') {
                    config.host(host.trim());
                }
            }
            None => {
                let port = config.get_ports().first().copied().unwrap_or(5432);
                config.host(default_host(port));
            }
        }
    }
    if config.get_user().is_none() {
        let user = var("PGUSER").unwrap_or_else(whoami::username);
        config.user(&user);
    }
    if config.get_password().is_none() {
        if let Some(password) = var("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_dbname().is_none() {
        if let Some(dbname) = var("PGDATABASE") {
            config.dbname(&dbname);
        }
    }
    if config.get_application_name().is_none() {
        if let Some(name) = var("PGAPPNAME") {
            config.application_name(&name);
        }
    }
}

/// libpq's host when none is given: its Unix socket directory. Builds
/// differ (upstream `/tmp`, Debian and others `/var/run/postgresql`), so
/// the first directory holding the server's socket for `port` is taken.
#[cfg(unix)]
fn default_host(port: u16) -> String {
    const DIRS: [&str; 3] = ["/var/run/postgresql", "/run/postgresql", "/tmp"];
    DIRS.iter()
        .find(|dir| {
            std::path::Path::new(dir)
                .join(format!(".s.PGSQL.{port}"))
                .exists()
        })
        .unwrap_or(&DIRS[0])
        .to_string()
}

/// libpq's host when none is given, where there are no Unix sockets.
#[cfg(not(unix))]
fn default_host(_port: u16) -> String {
    "localhost".to_owned()
}

/// `SHOW transaction_read_only` is `on`: a standby, or a primary whose
/// `default_transaction_read_only` is on.
async fn is_read_only(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let rows = client.simple_query("SHOW transaction_read_only").await?;
    Ok(rows
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("on"))))
}

/// libpq's TLS parameters, taken out of a connection string before the
/// driver reads the rest (it knows only three of the five `sslmode`s and
/// none of the files).
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    mode: Option<String>,
    rootcert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsParams {
    /// Keeps `value` if `key` is one of ours; `false` if it is not.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.rootcert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Splits a URL (`postgres://…?sslmode=verify-full&sslrootcert=/ca.pem`)
/// or a `key=value` string into the rest, for the driver, and the TLS
/// parameters.
fn take_tls_params(conn: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    if conn.contains("://") {
        let Some((base, query)) = conn.split_once('?') else {
            return (conn.to_owned(), params);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !params.take(key, percent_decode(value))
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, params);
    }
    let kept: Vec<&str> = conn
        .split_whitespace()
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = value.trim_matches('\'');
            !params.take(key.trim(), value.to_owned())
        })
        .collect();
    (kept.join(" "), params)
}

/// Why one host gave no session.
enum Failure {
    /// The socket (or the role check) failed; replayed through the driver
    /// by [`Failed`] for a `tokio_postgres::Error`.
    Io(io::Error),
    /// The driver failed (startup, authentication, the role query).
    Pg(tokio_postgres::Error),
}

/// A stream that fails at once with the error it holds: through
/// `Config::connect_raw` it turns a socket's failure into the driver's own
/// error type (`error communicating with the server: …`).
struct Failed(Option<io::Error>);

impl Failed {
    fn take(&mut self) -> io::Error {
        self.0
            .take()
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not connected"))
    }
}

impl AsyncRead for Failed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.take()))
    }
}

impl AsyncWrite for Failed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(self.take()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.take()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What the watch on a session's socket saw, shared with its [`PgClient`].
#[derive(Debug)]
struct Seen {
    /// A `FATAL` or `PANIC` error arrived: the session is over.
    fatal: AtomicBool,
    /// The transaction status of the last `ReadyForQuery`: `I` idle, `T`
    /// in a transaction block, `E` in a failed one.
    status: AtomicU8,
    /// Requests written that each end in a `ReadyForQuery` (`Query`,
    /// `Sync`, and the startup message), and the `ReadyForQuery`s read:
    /// while they differ, a reply is still on its way and `status` may be
    /// stale (the server flushes an error before the `ReadyForQuery`
    /// behind it, and a borrower can drop a query mid-flight).
    sent: AtomicU32,
    answered: AtomicU32,
    /// An `ErrorResponse` with SQLSTATE 25006 (`read_only_sql_transaction`)
    /// passed: the server may have turned read-only. Cleared by `has_role`.
    read_only_error: AtomicBool,
    /// The session's `BackendKeyData` (process id, secret key), for a
    /// cancel request; 0 before it arrives.
    key: AtomicU64,
    /// The server closed the socket (EOF or a read error).
    ended: AtomicBool,
    /// Someone waits in [`Seen::settled`]: a `ReadyForQuery` or the end
    /// of the stream wakes `changed`. Checked, not locked, per message.
    waiting: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            fatal: AtomicBool::new(false),
            status: AtomicU8::new(IDLE),
            // The startup message: answered by the `ReadyForQuery` after
            // authentication.
            sent: AtomicU32::new(1),
            answered: AtomicU32::new(0),
            read_only_error: AtomicBool::new(false),
            key: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        }
    }
}

/// `ReadyForQuery` status: not in a transaction block.
const IDLE: u8 = b'I';

impl Seen {
    /// For a session whose socket is not watched: nothing is ever seen,
    /// so it always looks settled and clean.
    fn unwatched() -> Self {
        Seen {
            sent: AtomicU32::new(0),
            ..Seen::default()
        }
    }

    /// A request written has no `ReadyForQuery` yet: a reply is on its way.
    fn reply_pending(&self) -> bool {
        let sent = self.sent.load(Ordering::SeqCst);
        self.answered.load(Ordering::SeqCst) != sent
    }

    /// Returns once no reply is pending, or the session ended.
    async fn settled(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // SeqCst, with the reader's increment and load: either it sees
            // `waiting` and wakes us, or we see its `ReadyForQuery`.
            self.waiting.store(true, Ordering::SeqCst);
            if !self.reply_pending()
                || self.ended.load(Ordering::SeqCst)
                || self.fatal.load(Ordering::Acquire)
            {
                self.waiting.store(false, Ordering::SeqCst);
                return;
            }
            changed.await;
        }
    }

    /// Wakes a [`settled`](Seen::settled) waiter, if there is one.
    fn wake_waiter(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            self.changed.notify_waiters();
        }
    }

    /// The last `ReadyForQuery` said a transaction block is open (or failed).
    fn in_transaction(&self) -> bool {
        self.status.load(Ordering::Acquire) != IDLE
    }

    /// Every request written has had its `ReadyForQuery`, and the last one
    /// said no transaction is open: nothing to clean.
    fn settled_clean(&self) -> bool {
        // `sent` first: `answered` never passes it, so equal means none
        // was outstanding when `sent` was read.
        let sent = self.sent.load(Ordering::Acquire);
        self.answered.load(Ordering::Acquire) == sent && !self.in_transaction()
    }
}

/// The socket under a session, reading the server's messages as they pass
/// for two things the driver does not expose:
///
/// - An `ErrorResponse` of severity `FATAL` or `PANIC`. The server sends
///   it and then closes the socket; the driver hands the error to the query
///   in flight at once, but learns of the close only when the EOF arrives,
///   and between the two `Client::is_closed` is still false. A borrower who
///   got the error and gave the connection back would see it lent again.
///   The flag is set while the driver reads the error, before any caller
///   sees it, so `Session::broken` is true from then on.
/// - The transaction status byte of each `ReadyForQuery`, so a transaction
///   a borrower opened with a raw `BEGIN` and left open is seen at return
///   without a round trip.
///
/// It frames the stream (a type byte, a 4-byte length, the body) and keeps
/// only the bodies of those two messages, at most [`KEPT`] bytes of each.
struct FatalWatch<S> {
    inner: S,
    seen: Arc<Seen>,
    scan: Scan,
    outgoing: Outgoing,
}

/// Bytes of a watched message's body kept: enough for an error's severity
/// fields, which come first.
const KEPT: usize = 256;

#[derive(Debug, Default)]
struct Scan {
    /// The header (type byte and length) of a message whose header is
    /// split across reads, and how much of it has come.
    header: [u8; 5],
    header_len: usize,
    /// Body bytes still to come of a message split across reads, and its
    /// type byte.
    remaining: usize,
    tag: u8,
    /// The body so far of a watched message split across reads (at most
    /// [`KEPT`] bytes; the buffer is reused).
    kept: Vec<u8>,
}

/// A message type whose body [`Scan`] reads: `ErrorResponse`,
/// `ReadyForQuery` and `BackendKeyData`.
fn watched(tag: u8) -> bool {
    matches!(tag, b'E' | b'Z' | b'K')
}

/// The length field of a message header (it counts itself, not the type byte).
fn body_len(len: [u8; 4]) -> usize {
    (u32::from_be_bytes(len) as usize).saturating_sub(4)
}

impl Scan {
    /// Feeds the next bytes from the server, recording in `seen` what they
    /// say. A message that arrives whole (the usual case: a reply fits in
    /// one read) is looked at where it lies; only one split across reads
    /// is assembled, and only if it is watched.
    fn feed(&mut self, mut bytes: &[u8], seen: &Seen) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(bytes.len());
                if watched(self.tag) {
                    let room = KEPT.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&bytes[..take.min(room)]);
                }
                bytes = &bytes[take..];
                self.remaining -= take;
                if self.remaining == 0 {
                    Self::message(self.tag, &self.kept, seen);
                    self.kept.clear();
                }
                continue;
            }
            if self.header_len == 0 && bytes.len() >= 5 {
                let tag = bytes[0];
                let len = body_len([bytes[1], bytes[2], bytes[3], bytes[4]]);
                let rest = &bytes[5..];
                if rest.len() >= len {
                    Self::message(tag, &rest[..len], seen);
                    bytes = &rest[len..];
                } else {
                    (self.tag, self.remaining) = (tag, len);
                    bytes = rest;
                }
                continue;
            }
            let take = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 5 {
                self.header_len = 0;
                let h = self.header;
                let len = body_len([h[1], h[2], h[3], h[4]]);
                if len == 0 {
                    Self::message(h[0], &[], seen);
                } else {
                    (self.tag, self.remaining) = (h[0], len);
                }
            }
        }
    }

    /// A whole message of type `tag` (its body, or the first [`KEPT`] bytes
    /// of it). An error's fields are a type byte and a NUL-terminated
    /// value; `V` (9.6+) is the severity in English, `S` the localized one.
    /// `ReadyForQuery`'s body is its status byte.
    fn message(tag: u8, body: &[u8], seen: &Seen) {
        match tag {
            b'E' => {
                let body = &body[..body.len().min(KEPT)];
                let fatal = body.split(|b| *b == 0).any(|field| {
                    matches!(field, [b'V' | b'S', rest @ ..] if rest == b"FATAL" || rest == b"PANIC")
                });
                if fatal {
                    // Release: whoever sees the flag also sees what came before.
                    seen.fatal.store(true, Ordering::Release);
                }
                if body.split(|b| *b == 0).any(|field| field == b"C25006") {
                    seen.read_only_error.store(true, Ordering::Release);
                }
            }
            b'Z' => {
                if let Some(&status) = body.first() {
                    seen.status.store(status, Ordering::Release);
                }
                // After the status: whoever sees the count sees the status.
                seen.answered.fetch_add(1, Ordering::SeqCst);
                seen.wake_waiter();
            }
            b'K' => {
                if let [a, b, c, d, e, f, g, h, ..] = *body {
                    let key = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
                    seen.key.store(key, Ordering::Release);
                }
            }
            _ => {}
        }
    }
}

/// The client's side of the stream, framed to count the requests that end
/// in a `ReadyForQuery`. The first message (startup) has no type byte.
#[derive(Debug, Default)]
struct Outgoing {
    /// Past the startup message.
    started: bool,
    /// Header bytes of the message being written, and how many have come.
    header: [u8; 5],
    header_len: usize,
    /// Body bytes still to come.
    remaining: usize,
}

impl Outgoing {
    /// Feeds bytes the socket accepted, counting `Query` and `Sync` in `seen`.
    fn feed(&mut self, mut bytes: &[u8], seen: &Seen) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(bytes.len());
                bytes = &bytes[take..];
                self.remaining -= take;
                continue;
            }
            // The usual case: a whole header in hand (a write carries
            // several messages), read where it lies.
            if self.started && self.header_len == 0 && bytes.len() >= 5 {
                if matches!(bytes[0], b'Q' | b'S') {
                    seen.sent.fetch_add(1, Ordering::Release);
                }
                let len = body_len([bytes[1], bytes[2], bytes[3], bytes[4]]);
                let rest = &bytes[5..];
                let take = len.min(rest.len());
                self.remaining = len - take;
                bytes = &rest[take..];
                continue;
            }
            let header_len = if self.started { 5 } else { 4 };
            let take = (header_len - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len < header_len {
                continue;
            }
            let h = &self.header[header_len - 4..header_len];
            self.remaining = body_len([h[0], h[1], h[2], h[3]]);
            if self.started && matches!(self.header[0], b'Q' | b'S') {
                seen.sent.fetch_add(1, Ordering::Release);
            }
            self.started = true;
            self.header_len = 0;
        }
    }
}

impl<S> FatalWatch<S> {
    fn new(inner: S, seen: &Arc<Seen>) -> Self {
        FatalWatch {
            inner,
            seen: Arc::clone(seen),
            scan: Scan::default(),
            outgoing: Outgoing::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FatalWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let this = &mut *self;
                this.scan.feed(&buf.filled()[before..], &this.seen);
            }
            Poll::Ready(_) => {
                // EOF or a read error: no reply is coming any more.
                self.seen.ended.store(true, Ordering::SeqCst);
                self.seen.wake_waiter();
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FatalWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            let this = &mut *self;
            this.outgoing.feed(&buf[..n], &this.seen);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            let this = &mut *self;
            let mut left = n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(b.len());
                this.outgoing.feed(&b[..take], &this.seen);
                left -= take;
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl TokioPgManager {
    /// The connect itself, with the password the config holds.
    async fn connect_as_configured(&self) -> Result<PgClient, tokio_postgres::Error> {
        match self.connect_watched().await {
            Some(Ok(client)) => Ok(client),
            Some(Err(Failure::Pg(e))) => Err(e),
            // The driver's errors cannot be made outside it: replay the
            // socket's failure through it, without a second attempt.
            Some(Err(Failure::Io(e))) => {
                match self.config.connect_raw(Failed(Some(e)), NoTls).await {
                    Err(e) => Err(e),
                    // Cannot happen (no byte goes through `Failed`); if it
                    // did, the driver's own connect gives a session or error.
                    Ok(_) => self.connect_unwatched().await,
                }
            }
            // What the watched path leaves to the driver: `hostaddr`,
            // random host order. Such sessions are seen closed at EOF only,
            // and are plain text.
            None if self.tls.mode() == SslMode::Disable || self.tls.mode() == SslMode::Prefer => {
                self.connect_unwatched().await
            }
            None => {
                let refused = io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "TLS: sslmode={} with hostaddr or load_balance_hosts=random is not \
                         supported by vigil's tokio-postgres backend yet",
                        self.tls.mode()
                    ),
                );
                // Replayed through the driver for its error type; it
                // cannot give a session (no byte goes through `Failed`).
                let (client, connection) = self
                    .config
                    .connect_raw(Failed(Some(refused)), NoTls)
                    .await?;
                Ok(PgClient {
                    client,
                    connection: spawn_connection(connection),
                    seen: Arc::new(Seen::unwatched()),
                    tls: false,
                    endpoint: None,
                    statements: StatementCache::new(0),
                })
            }
        }
    }

    /// What the borrower left open is rolled back and, when `full`, all
    /// session state reset; the statement cache goes with `DISCARD ALL`.
    async fn clean(&self, conn: &mut PgClient, full: bool) -> Result<(), tokio_postgres::Error> {
        if !conn.seen.settled_clean() {
            // A reply is still on its way (an error is flushed before the
            // `ReadyForQuery` that says what it did to the transaction), or
            // a dropped `Transaction` has queued its own `ROLLBACK`, which
            // may not have run yet: an empty query waits for both. Only a
            // transaction still open after that (a raw `BEGIN`) is rolled
            // back here, so a clean session never earns the server's
            // "there is no transaction in progress" warning.
            conn.simple_query("").await?;
            if conn.seen.in_transaction() {
                conn.batch_execute("ROLLBACK").await?;
            }
        }
        if !full {
            return Ok(());
        }
        // `DISCARD ALL` drops every prepared statement on the server: the
        // cache's go first (their Close messages precede it).
        conn.statements.clear();
        match conn.batch_execute("DISCARD ALL").await {
            // A session the watch does not see (`hostaddr`, random host
            // order) can still be in a raw `BEGIN`, where `DISCARD ALL`
            // cannot run: roll it back first.
            Err(e) if e.code() == Some(&SqlState::ACTIVE_SQL_TRANSACTION) => {
                conn.batch_execute("ROLLBACK").await?;
                conn.batch_execute("DISCARD ALL").await
            }
            other => other,
        }
    }
}

impl Manager for TokioPgManager {
    type Connection = PgClient;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PgClient, tokio_postgres::Error> {
        if let Some(provider) = &self.credentials {
            let password = match provider.password().await {
                Ok(p) => p,
                Err(e) => {
                    let failed =
                        io::Error::new(io::ErrorKind::PermissionDenied, provider_failed(&e));
                    // Replayed through the driver for its error type.
                    let (client, connection) =
                        self.config.connect_raw(Failed(Some(failed)), NoTls).await?;
                    return Ok(PgClient {
                        client,
                        connection: spawn_connection(connection),
                        seen: Arc::new(Seen::unwatched()),
                        tls: false,
                        endpoint: None,
                        statements: StatementCache::new(0),
                    });
                }
            };
            let mut this = self.clone();
            this.config.password(password.expose());
            return this.connect_as_configured().await;
        }
        self.connect_as_configured().await
    }

    async fn is_valid(&self, conn: &mut PgClient) -> Result<(), tokio_postgres::Error> {
        // An empty query: one round trip, no parse, no plan.
        conn.simple_query("").await.map(drop)
    }

    /// From what the session's watch saw pass (see `Seen`): the socket
    /// closed or a fatal error, a request without its `ReadyForQuery` (a
    /// query dropped mid-flight), the status byte of the last one (a
    /// request still unanswered when the session died says nothing about a
    /// transaction), and a `read_only_sql_transaction` error on a session
    /// that must be writable (whoever got it, the pool asks the role
    /// before reuse).
    fn session(&self, conn: &mut PgClient) -> Session {
        let broken = conn.is_closed() || conn.seen.fatal.load(Ordering::Acquire);
        Session {
            broken,
            needs_cleanup: !conn.seen.settled_clean(),
            in_transaction: conn.seen.in_transaction(),
            query_in_flight: !broken && conn.seen.reply_pending(),
            role_in_doubt: conn.seen.read_only_error.load(Ordering::Acquire)
                && self.config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite,
        }
    }

    /// The session's socket is watched; a role is required with
    /// `target_session_attrs` `read-write` or `read-only`.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            detection: BrokenDetection::Watched,
            checks_role: self.config.get_target_session_attrs() != TargetSessionAttrs::Any,
        }
    }

    /// A closed or terminated session ends it; SQLSTATE 25006
    /// (`read_only_sql_transaction`) says the server turned read-only.
    fn classify(&self, error: &tokio_postgres::Error) -> ErrorClass {
        if session_gone(error) {
            ErrorClass::EndsSession
        } else if error.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) {
            ErrorClass::RoleChanged
        } else {
            ErrorClass::Other
        }
    }

    /// `SHOW transaction_read_only`: `on` on a standby and on a primary
    /// made read-only (`default_transaction_read_only`), the same check
    /// the connect makes.
    async fn has_role(&self, conn: &mut PgClient) -> Result<bool, tokio_postgres::Error> {
        // This answer settles the doubt a 25006 raised, either way.
        conn.seen.read_only_error.store(false, Ordering::Release);
        let read_only = is_read_only(conn).await?;
        Ok(match self.config.get_target_session_attrs() {
            TargetSessionAttrs::ReadWrite => !read_only,
            TargetSessionAttrs::ReadOnly => read_only,
            _ => true,
        })
    }

    /// A statement left running is stopped first: PostgreSQL's cancel
    /// request, over a new socket to the address (and inside TLS, as) the
    /// session's; then the statement's error and `ReadyForQuery` are
    /// waited for. See the `cancel` module.
    async fn reset(
        &self,
        conn: &mut PgClient,
        cleanup: Cleanup,
    ) -> Result<Cleaned, tokio_postgres::Error> {
        let mut stopped = false;
        if cleanup.stop_query {
            match self.cancel(conn).await.go_on() {
                Ok(s) => stopped = s,
                Err(unusable) => return Ok(unusable),
            }
        }
        self.clean(conn, cleanup.full).await?;
        Ok(cancel::cleaned(stopped))
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
                 WHERE name = 'idle_session_timeout'",
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
                Ok(value) => timeouts.idle = value,
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
        let PgClient {
            client, connection, ..
        } = conn;
        // If the pool's timeout drops this future, the task is aborted.
        let _abort = AbortOnDrop(connection.abort_handle());
        // Dropping the client lets the task send `Terminate` and end, once
        // every reply it still waits for has come.
        drop(client);
        let _ = connection.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::{Outgoing, Scan, Seen};

    /// A backend message: type byte, length (itself included), body.
    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn error(severity: &str) -> Vec<u8> {
        let body = format!("S{severity}\0V{severity}\0C57P01\0Mterminating connection\0\0");
        message(b'E', body.as_bytes())
    }

    /// What a fresh watch sees of `stream` fed in chunks of `chunk` bytes.
    fn watch(stream: &[u8], chunk: usize) -> Seen {
        let (mut scan, seen) = (Scan::default(), Seen::default());
        for c in stream.chunks(chunk) {
            scan.feed(c, &seen);
        }
        seen
    }

    fn fatal(seen: &Seen) -> bool {
        seen.fatal.load(Ordering::Acquire)
    }

    #[test]
    fn a_fatal_error_is_seen_however_the_bytes_are_split() {
        let mut stream = message(b'Z', b"I");
        stream.extend(message(b'D', b"\0\x01\0\0\0\x01E"));
        stream.extend(error("FATAL"));
        for chunk in [1, 2, 3, 5, 7, stream.len()] {
            assert!(fatal(&watch(&stream, chunk)), "chunks of {chunk}");
        }
    }

    #[test]
    fn other_messages_and_plain_errors_are_not_fatal() {
        for stream in [
            error("ERROR"),
            message(b'N', b"SWARNING\0VWARNING\0\0"),
            message(b'Z', b"I"),
            // A data row that happens to contain the word is no error message.
            message(b'D', b"\0\x01\0\0\0\x06VFATAL"),
        ] {
            assert!(!fatal(&watch(&stream, stream.len())));
        }
        assert!(fatal(&watch(&error("PANIC"), 4)));
    }

    /// A frontend message: type byte, length, body.
    fn request(tag: u8, body: &[u8]) -> Vec<u8> {
        message(tag, body)
    }

    #[test]
    fn a_session_is_settled_only_when_every_request_has_its_ready_for_query() {
        // Startup (no type byte), then a simple query and an extended one.
        let mut out = 12u32.to_be_bytes().to_vec();
        out.extend_from_slice(&[0, 3, 0, 0, b'u', 0, 0, 0]);
        out.extend(request(b'Q', b"SELECT 1\0"));
        out.extend(request(b'P', b"\0SELECT 2\0\0\0"));
        out.extend(request(b'S', b""));
        for chunk in [1, 2, 5, out.len()] {
            let (seen, mut outgoing, mut scan) =
                (Seen::default(), Outgoing::default(), Scan::default());
            for c in out.chunks(chunk) {
                outgoing.feed(c, &seen);
            }
            assert_eq!(seen.sent.load(Ordering::Acquire), 3, "chunks of {chunk}");
            // The startup's and the query's answers: one still to come.
            scan.feed(&[message(b'Z', b"I"), message(b'Z', b"I")].concat(), &seen);
            assert!(!seen.settled_clean());
            // An error before the `ReadyForQuery` that ends it: not settled.
            scan.feed(&error("ERROR"), &seen);
            assert!(!seen.settled_clean());
            scan.feed(&message(b'Z', b"I"), &seen);
            assert!(seen.settled_clean());
        }
        assert!(Seen::unwatched().settled_clean());
    }

    #[test]
    fn the_last_ready_for_query_gives_the_transaction_status() {
        let begin = [message(b'C', b"BEGIN\0"), message(b'Z', b"T")].concat();
        let failed = [error("ERROR"), message(b'Z', b"E")].concat();
        let commit = [message(b'C', b"COMMIT\0"), message(b'Z', b"I")].concat();
        for chunk in [1, 3, 6, 64] {
            assert!(!watch(&[], chunk).in_transaction());
            assert!(watch(&begin, chunk).in_transaction(), "chunks of {chunk}");
            assert!(watch(&[begin.clone(), failed.clone()].concat(), chunk).in_transaction());
            assert!(!watch(&[begin.clone(), commit.clone()].concat(), chunk).in_transaction());
            // A data row holding a `Z` message's bytes is only data.
            let row = message(b'D', &message(b'Z', b"T"));
            assert!(!watch(&row, chunk).in_transaction());
        }
    }

    #[test]
    fn libpq_defaults_fill_only_what_the_string_leaves_out() {
        use super::libpq_defaults;
        use std::str::FromStr;
        use tokio_postgres::config::{Config, Host};
        let env = |name: &str| {
            Some(
                match name {
                    "PGHOST" => "127.0.0.1,/var/run/postgresql",
                    "PGPORT" => "5433",
                    "PGUSER" => "envuser",
                    "PGPASSWORD" => "envpw",
                    "PGDATABASE" => "envdb",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let mut empty = Config::from_str("postgres://").unwrap();
        libpq_defaults(&mut empty, &env);
        assert_eq!(
            empty.get_hosts(),
            [
                Host::Tcp("127.0.0.1".into()),
                Host::Unix("/var/run/postgresql".into())
            ]
        );
        assert_eq!(empty.get_ports(), [5433]);
        assert_eq!(empty.get_user(), Some("envuser"));
        assert_eq!(empty.get_password(), Some(&b"envpw"[..]));
        assert_eq!(empty.get_dbname(), Some("envdb"));

        let mut given = Config::from_str("postgres://u:p@h:1/d").unwrap();
        libpq_defaults(&mut given, &env);
        assert_eq!(given.get_hosts(), [Host::Tcp("h".into())]);
        assert_eq!(given.get_ports(), [1]);
        assert_eq!(given.get_user(), Some("u"));
        assert_eq!(given.get_password(), Some(&b"p"[..]));
        assert_eq!(given.get_dbname(), Some("d"));

        // No environment: libpq's socket directory and the OS user.
        let mut bare = Config::from_str("postgres:///db").unwrap();
        libpq_defaults(&mut bare, &|_| None);
        assert!(
            matches!(bare.get_hosts(), [Host::Unix(dir)] if dir.is_absolute()),
            "{:?}",
            bare.get_hosts()
        );
        assert_eq!(bare.get_user(), Some(whoami::username().as_str()));
        assert_eq!(bare.get_dbname(), Some("db"));
    }

    #[test]
    fn tls_parameters_are_taken_out_of_urls_and_key_value_strings() {
        use super::{take_tls_params, TlsParams};
        let (rest, p) = take_tls_params(
            "postgres://u:pw@h:5432/db?sslmode=verify-full&application_name=app&sslrootcert=%2Ftmp%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:pw@h:5432/db?application_name=app");
        assert_eq!(
            p,
            TlsParams {
                mode: Some("verify-full".into()),
                rootcert: Some("/tmp/ca.pem".into()),
                ..TlsParams::default()
            }
        );
        let (rest, p) = take_tls_params("postgres://h/db?sslmode=require");
        assert_eq!(
            (rest.as_str(), p.mode.as_deref()),
            ("postgres://h/db", Some("require"))
        );
        let (rest, p) =
            take_tls_params("host=h dbname=db sslmode=verify-ca sslrootcert='/ca.pem' user=u");
        assert_eq!(rest, "host=h dbname=db user=u");
        assert_eq!(p.rootcert.as_deref(), Some("/ca.pem"));
        assert_eq!(take_tls_params("postgres://h/db").0, "postgres://h/db");
    }
}
