//! MySQL / MariaDB through `mysql_async`.
//!
//! [`MySqlManager`] lends plain [`mysql_async::Conn`]s (not connections of
//! mysql_async's own pool). What it adds to the driver:
//!
//! | Pool question | How it is answered | Round trip |
//! |---|---|---|
//! | broken? (`Session::broken`) | `Conn::is_disconnected` | no |
//! | dirty? (`Session::needs_cleanup`) | `SERVER_STATUS_IN_TRANS` in the last OK packet | no |
//! | alive? (`is_valid`) | `COM_PING` | yes |
//! | clean (`reset`) | `ROLLBACK`; with `reset_on_return`, `COM_RESET_CONNECTION` | yes |
//! | server timeouts | session `wait_timeout`, with `max_allowed_packet`; the next connects reuse them (and hand mysql_async the two it would query) for 60 s | once a minute, not per connection |
//!
//! # What a plain return cleans
//!
//! Without `reset_on_return`, a returned connection is only rolled back, and
//! only when the last reply said a transaction was open (or the last reply
//! was an error, which carries no status). Session variables, temporary
//! tables, `LOCK TABLES` and `GET_LOCK` locks stay for the next borrower;
//! turn `reset_on_return` on if borrowers leave such state behind.
//!
//! # Session settings and `reset_on_return`
//!
//! `COM_RESET_CONNECTION` sets every session variable back to its global
//! value. mysql_async runs [`Opts::setup`] commands again after a reset but
//! not [`Opts::init`] commands, so with `reset_on_return(true)` put session
//! settings that must last (say `SET SESSION wait_timeout = …`) in `setup`.
//! The pool reads the server's idle timeout once, when the connection opens,
//! so a borrower should not change `wait_timeout` on a lent session either
//! (a lower value is caught only by the checkout ping).
//!
//! # What bounds a borrower's wait on a dead network
//!
//! mysql_async gives no way to set `TCP_USER_TIMEOUT` (it opens the socket
//! itself and keeps it private), so a query already sent on a black-holed
//! connection waits for the kernel's retransmission timeout (about 15
//! minutes with Linux's default `net.ipv4.tcp_retries2 = 15`). vigil sets
//! TCP keepalive ([`DEFAULT_TCP_KEEPALIVE`], unless `opts` or the URL's
//! `tcp_keepalive` set one), which finds a dead peer of an *idle*
//! connection; its own pings are bounded by `validation_timeout`. Bound a
//! borrower's query with `tokio::time::timeout` (drop the connection with
//! `Pooled::retire` when it fires), or lower `tcp_retries2` on the host.
//!
//! # Unix socket
//!
//! With mysql_async's default `prefer_socket`, each connect first opens a
//! TCP session, asks the server for `@@socket`, and if that path exists on
//! this machine reopens the session over it and quits the TCP one. So the
//! server briefly sees one extra session per connect in flight, `init`
//! commands run twice on the session kept (make them idempotent), and a
//! client that runs next to *another* server with the same socket path would
//! reach that one. Set `OptsBuilder::prefer_socket(false)` (or `?prefer_socket=false`
//! in the URL) to keep to the address you gave.

use std::fmt;
use std::sync::Arc;

use super::credentials::{provider_failed, Credentials};
pub use super::TargetRole;
use super::{split_hosts, HostSearch};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use mysql_async::consts::StatusFlags;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};

use crate::manager::{
    Capabilities, Cleaned, Cleanup, ErrorClass, Manager, ServerTimeouts, Session,
};

/// Tracing target of this backend.
const TARGET: &str = "vigil::mysql";

/// A [`Manager`] for MySQL and MariaDB connections through
/// [`mysql_async::Conn`].
///
/// Its [`Debug`](fmt::Debug) output shows host, port, user and database,
/// never the password.
///
/// # Example
///
/// ```no_run
/// use mysql_async::prelude::Queryable;
/// use vigil::backend::mysql::MySqlManager;
/// use vigil::Pool;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = MySqlManager::from_url("mysql://app:secret@127.0.0.1:3306/app")?;
/// let pool = Pool::builder(manager).max_size(8).connect().await?;
/// let mut conn = pool.get().await?;
/// let one: Option<u8> = conn.query_first("SELECT 1").await?;
/// assert_eq!(one, Some(1));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MySqlManager {
    opts: Opts,
    /// Hosts tried after `opts`' own, in order, each with its options.
    more_hosts: Vec<Opts>,
    /// The role every session must have.
    role: TargetRole,
    /// Asked for the password of each new connection, if set.
    credentials: Option<Arc<dyn Credentials>>,
    /// What a connection learned about the server, shared by clones.
    learned: Arc<Mutex<Option<Learned>>>,
}

/// How long what one connection learned about the server stands in for
/// asking again: a `SET GLOBAL` of `wait_timeout` or `max_allowed_packet`
/// reaches the pool's new connections within this time.
const RELEARN_AFTER: Duration = Duration::from_secs(60);

/// The server's settings as one session found them, reused for the next
/// connects: mysql_async is handed `max_allowed_packet` and `wait_timeout`
/// (so it does not query them at connect) and the pool the idle timeouts
/// (so `server_timeouts` asks nothing). Two round trips fewer per connect.
#[derive(Clone)]
struct Learned {
    at: Instant,
    opts: Opts,
    timeouts: ServerTimeouts,
}

/// TCP keepalive idle time vigil sets when `opts` set none (mysql_async
/// sets none by default); the kernel's interval and probe count apply.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// `opts` with [`DEFAULT_TCP_KEEPALIVE`] where they leave keepalive off.
fn default_keepalive(opts: Opts) -> Opts {
    if opts.tcp_keepalive().is_some() {
        return opts;
    }
    OptsBuilder::from_opts(opts)
        .tcp_keepalive(Some(DEFAULT_TCP_KEEPALIVE))
        .into()
}

impl MySqlManager {
    /// A manager that opens every connection with `opts`, plus TCP
    /// keepalives ([`DEFAULT_TCP_KEEPALIVE`]) where `opts` set none.
    ///
    /// Build `opts` with [`mysql_async::OptsBuilder`]; its `init` commands
    /// run once per connection, its `setup` commands also after each full
    /// reset (see the [module docs](self)). mysql_async's own pool settings
    /// in `opts` are ignored: vigil is the pool.
    ///
    /// # Example
    ///
    /// ```
    /// use mysql_async::OptsBuilder;
    /// use vigil::backend::mysql::MySqlManager;
    ///
    /// let opts = OptsBuilder::default()
    ///     .ip_or_hostname("127.0.0.1")
    ///     .user(Some("app"))
    ///     .pass(Some("secret"))
    ///     .db_name(Some("app"))
    ///     .setup(vec!["SET SESSION time_zone = '+00:00'"]);
    /// let manager = MySqlManager::new(opts.into());
    /// ```
    pub fn new(opts: Opts) -> Self {
        MySqlManager {
            opts: default_keepalive(opts),
            more_hosts: Vec::new(),
            role: TargetRole::Any,
            credentials: None,
            learned: Arc::default(),
        }
    }

    /// Tries `hosts` (each with its own options) after the first, in order,
    /// until one gives a session of the required role (see
    /// [`with_target_role`](Self::with_target_role)). In a URL:
    /// `mysql://user@host1:3306,host2:3306/db`.
    pub fn with_more_hosts(mut self, hosts: Vec<Opts>) -> Self {
        self.more_hosts = hosts.into_iter().map(default_keepalive).collect();
        self
    }

    /// Every session must have `role`: each new one is checked
    /// (`@@global.read_only`, and `@@global.super_read_only` on MySQL) and
    /// closed if it has the wrong one, the next host tried; the pool
    /// re-checks idle sessions every `role_check_interval`. In a URL:
    /// `?target_session_attrs=read-write` (or `read-only`, `any`), libpq's name.
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

    /// What a recent connection learned, if it is recent enough to reuse.
    fn learned(&self) -> Option<Learned> {
        self.learned
            .lock()
            .as_ref()
            .filter(|l| l.at.elapsed() < RELEARN_AFTER)
            .cloned()
    }

    /// Keeps what `conn` found: the timeouts, and the options that spare
    /// the next connects mysql_async's own settings query.
    fn learn(
        &self,
        timeouts: ServerTimeouts,
        max_allowed_packet: Option<usize>,
        wait_timeout: u64,
    ) {
        // Only when the user set neither (then mysql_async would not ask)
        // and `prefer_socket` is off (else mysql_async queries `@@socket`
        // anyway, and the saving is one query, not two).
        let user_set =
            self.opts.max_allowed_packet().is_some() || self.opts.wait_timeout().is_some();
        let opts = match max_allowed_packet {
            Some(packet) if !user_set && !self.opts.prefer_socket() => {
                OptsBuilder::from_opts(self.opts.clone())
                    .max_allowed_packet(Some(packet))
                    .wait_timeout(Some(usize::try_from(wait_timeout).unwrap_or(usize::MAX)))
                    .into()
            }
            _ => self.opts.clone(),
        };
        *self.learned.lock() = Some(Learned {
            at: Instant::now(),
            opts,
            timeouts,
        });
    }

    /// A manager for a `mysql://user:password@host:port/database?params` URL.
    ///
    /// # Errors
    /// [`mysql_async::UrlError`] when the URL cannot be parsed or names an
    /// unknown or invalid parameter. The error says what is wrong and never
    /// contains the password (nor the URL).
    ///
    /// # Example
    ///
    /// ```
    /// use vigil::backend::mysql::MySqlManager;
    ///
    /// let manager = MySqlManager::from_url("mysql://root@127.0.0.1:3306/test")?;
    /// assert!(MySqlManager::from_url("mysql://root@:notaport/test").is_err());
    /// # Ok::<(), mysql_async::UrlError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, mysql_async::UrlError> {
        let (rest, params) = take_vigil_params(url);
        let role = match params.role.as_deref().map(|r| (r, TargetRole::parse(r))) {
            None => TargetRole::Any,
            Some((_, Some(role))) => role,
            Some((other, None)) => {
                return Err(mysql_async::UrlError::InvalidParamValue {
                    param: "target_session_attrs".into(),
                    value: format!("{other} (expected any, read-write or read-only)"),
                })
            }
        };
        let mut all = Vec::new();
        for one in split_hosts(&rest) {
            let opts = Opts::from_url(&one)?;
            let opts = match &params.ssl_mode {
                None if params.ssl_ca.is_none() => opts,
                mode => with_ssl_mode(opts, mode.as_deref(), params.ssl_ca.clone())?,
            };
            all.push(opts);
        }
        let first = all.remove(0);
        Ok(MySqlManager::new(first)
            .with_more_hosts(all)
            .with_target_role(role))
    }

    /// The options every connection is opened with.
    ///
    /// Careful: `Opts`' own `Debug` output includes the password.
    ///
    /// # Example
    ///
    /// ```
    /// use vigil::backend::mysql::MySqlManager;
    ///
    /// let manager = MySqlManager::from_url("mysql://root@127.0.0.1:3306/test")?;
    /// assert_eq!(manager.opts().db_name(), Some("test"));
    /// # Ok::<(), mysql_async::UrlError>(())
    /// ```
    pub fn opts(&self) -> &Opts {
        &self.opts
    }
}

impl fmt::Debug for MySqlManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.opts;
        let mut d = f.debug_struct("MySqlManager");
        match o.socket() {
            Some(socket) => d.field("socket", &socket),
            None => d
                .field("host", &o.ip_or_hostname())
                .field("port", &o.tcp_port()),
        };
        d.field("more_hosts", &self.more_hosts.len())
            .field("role", &self.role)
            .field("user", &o.user())
            .field("db", &o.db_name())
            .field("password", &o.pass().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Takes the MySQL client's TLS options out of a URL's query (`ssl-mode`
/// and `ssl-ca`, also spelled with `_`), leaving the rest to mysql_async,
/// which reads its own (`require_ssl`, `verify_ca`, `verify_identity`,
/// `built_in_roots`).
/// The parameters vigil reads itself, before mysql_async reads the rest.
#[derive(Debug, Default)]
struct VigilParams {
    ssl_mode: Option<String>,
    ssl_ca: Option<String>,
    role: Option<String>,
}

fn take_vigil_params(url: &str) -> (String, VigilParams) {
    let mut params = VigilParams::default();
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), params);
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "ssl-mode" | "ssl_mode" => params.ssl_mode = Some(value.to_ascii_uppercase()),
                "ssl-ca" | "ssl_ca" => params.ssl_ca = Some(super::percent_decode(value)),
                "target_session_attrs" => params.role = Some(value.to_ascii_lowercase()),
                _ => return true,
            }
            false
        })
        .collect();
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, params)
}

/// Is the server read-only for this session: `@@global.read_only`, or
/// MySQL's `@@global.super_read_only` (MariaDB has no such variable).
async fn read_only(conn: &mut Conn) -> Result<bool, mysql_async::Error> {
    let both: Result<Option<(u8, u8)>, _> = conn
        .query_first("SELECT @@global.read_only, @@global.super_read_only")
        .await;
    match both {
        Ok(row) => Ok(row.is_some_and(|(ro, sro)| ro != 0 || sro != 0)),
        Err(mysql_async::Error::Server(e)) if e.code == ER_UNKNOWN_SYSTEM_VARIABLE => {
            let ro: Option<u8> = conn.query_first("SELECT @@global.read_only").await?;
            Ok(ro.is_some_and(|ro| ro != 0))
        }
        Err(e) => Err(e),
    }
}

/// MySQL `ER_UNKNOWN_SYSTEM_VARIABLE`.
const ER_UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;

/// `ssl-mode` as the MySQL client means it: `DISABLED`, `REQUIRED`
/// (encrypted, the certificate not checked) and `VERIFY_IDENTITY` (signed
/// by the CA in `ssl-ca` and issued for the host). `PREFERRED` is refused:
/// mysql_async either requires TLS or does not use it; so is `VERIFY_CA`
/// (and `REQUIRED` with `ssl-ca`, which means the same to the MySQL
/// client), which mysql_async 0.37 cannot do with rustls 0.23.
fn with_ssl_mode(
    opts: Opts,
    mode: Option<&str>,
    ca: Option<String>,
) -> Result<Opts, mysql_async::UrlError> {
    let invalid = |value: &str| mysql_async::UrlError::InvalidParamValue {
        param: "ssl-mode".into(),
        value: format!(
            "{value} (expected DISABLED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY; \
             PREFERRED is not supported by mysql_async)"
        ),
    };
    let mode = mode.unwrap_or(if ca.is_some() {
        "VERIFY_CA"
    } else {
        "REQUIRED"
    });
    let (check_ca, check_name) = match mode {
        "DISABLED" => return Ok(OptsBuilder::from_opts(opts).ssl_opts(None).into()),
        "REQUIRED" if ca.is_none() => (false, false),
        // mysql_async 0.37 skips the name check by looking for
        // "NotValidForName" in rustls' error message, which rustls 0.23 no
        // longer writes: the CA cannot be checked without the name.
        "REQUIRED" | "VERIFY_CA" => {
            return Err(mysql_async::UrlError::InvalidParamValue {
                param: "ssl-mode".into(),
                value: format!(
                    "{mode} with ssl-ca: mysql_async cannot check the CA without also \
                     checking the host name; use ssl-mode=VERIFY_IDENTITY (the host as \
                     named in the server's certificate), or REQUIRED without ssl-ca"
                ),
            })
        }
        "VERIFY_IDENTITY" => (true, true),
        other => return Err(invalid(other)),
    };
    if !cfg!(feature = "tls") {
        return Err(mysql_async::UrlError::FeatureRequired {
            feature: "tls (vigil's)".into(),
            param: format!("ssl-mode={mode}"),
        });
    }
    let mut ssl = SslOpts::default()
        .with_danger_accept_invalid_certs(!check_ca)
        .with_danger_skip_domain_validation(!check_name);
    if let Some(ca) = ca {
        ssl = ssl
            .with_root_certs(vec![std::path::PathBuf::from(ca).into()])
            .with_disable_built_in_roots(true);
    } else if check_ca {
        return Err(mysql_async::UrlError::InvalidParamValue {
            param: "ssl-mode".into(),
            value: format!("{mode} needs ssl-ca=<PEM file of the CA>"),
        });
    }
    Ok(OptsBuilder::from_opts(opts).ssl_opts(ssl).into())
}

/// Is the session inside a transaction, as far as the last reply tells?
///
/// Every OK packet (including the one ending a result set) carries the
/// server's status flags, and mysql_async keeps the last one. An error reply
/// clears it; after an error the answer is unknown, so this says `true` and
/// the pool pays one `ROLLBACK` rather than risk lending an open transaction
/// (`BEGIN; INSERT …; <failing statement>` leaves one open).
fn in_transaction(conn: &Conn) -> bool {
    conn.last_ok_packet().is_none_or(|ok| {
        ok.status_flags()
            .contains(StatusFlags::SERVER_STATUS_IN_TRANS)
    })
}

/// A mysql_async session as the pool sees it, from whether the driver gave
/// it up (`broken`, and then possibly a query in flight) and whether a
/// transaction is `open`. Shared with the diesel manager over the same driver.
/// `KILL QUERY <id>` over `admin`, a new connection to the session's
/// server, then a goodbye to it: what `reset` does with a statement left
/// running (the session itself the driver has given up; the pool closes it).
pub(crate) async fn kill_query(mut admin: Conn, id: u32) -> Result<Cleaned, mysql_async::Error> {
    let killed = admin.query_drop(format!("KILL QUERY {id}")).await;
    let _ = admin.disconnect().await;
    killed.map(|()| Cleaned::Unusable {
        query_stopped: true,
    })
}

pub(crate) fn session(broken: bool, open: bool) -> Session {
    Session {
        broken,
        needs_cleanup: open,
        in_transaction: open,
        query_in_flight: broken,
        role_in_doubt: false,
    }
}

/// `0` means "no timeout" for every MySQL/MariaDB timeout variable.
fn seconds(value: u64) -> Option<Duration> {
    (value > 0).then(|| Duration::from_secs(value))
}

impl MySqlManager {
    /// One connect to the host of `opts`, with the provider's password if
    /// there is a provider.
    async fn connect_to(&self, opts: Opts) -> Result<Conn, mysql_async::Error> {
        let opts = match &self.credentials {
            None => opts,
            Some(provider) => {
                let password = provider
                    .password()
                    .await
                    .map_err(|e| mysql_async::Error::Other(provider_failed(&e).into()))?;
                OptsBuilder::from_opts(opts)
                    .pass(Some(password.expose()))
                    .into()
            }
        };
        Conn::new(opts).await
    }

    /// The hosts in order until one gives a session of the required role;
    /// a session of the wrong role is closed. When none does, an error
    /// saying what each host answered.
    async fn connect_with_role(&self) -> Result<Conn, mysql_async::Error> {
        let mut search = HostSearch::new(self.role);
        for opts in std::iter::once(&self.opts).chain(&self.more_hosts) {
            let host = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
            let mut conn = match self.connect_to(opts.clone()).await {
                Ok(conn) => conn,
                Err(e) => {
                    search.failed(&host, e);
                    continue;
                }
            };
            match read_only(&mut conn).await {
                Ok(ro) if search.accepts(&host, ro) => return Ok(conn),
                Ok(_) => {
                    let _ = conn.disconnect().await;
                }
                Err(e) => search.failed(&host, e),
            }
        }
        Err(search.finish(|why| mysql_async::Error::Other(why.into())))
    }
}

impl Manager for MySqlManager {
    type Connection = Conn;
    type Error = mysql_async::Error;

    async fn connect(&self) -> Result<Conn, mysql_async::Error> {
        if !self.more_hosts.is_empty() || self.role != TargetRole::Any {
            return self.connect_with_role().await;
        }
        let opts = self.learned().map_or_else(|| self.opts.clone(), |l| l.opts);
        self.connect_to(opts).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            checks_role: self.role != TargetRole::Any,
            ..Capabilities::default()
        }
    }

    async fn has_role(&self, conn: &mut Conn) -> Result<bool, mysql_async::Error> {
        Ok(self.role.accepts(read_only(conn).await?))
    }

    /// `COM_PING`.
    async fn is_valid(&self, conn: &mut Conn) -> Result<(), mysql_async::Error> {
        conn.ping().await
    }

    /// mysql_async marks a connection disconnected when its socket failed,
    /// a fatal error was read, or a command was cancelled midway: broken.
    /// The last OK packet's status flags say whether a transaction is
    /// open. A borrower that left mid-query looks like a failed socket
    /// (mysql_async gives the session up), and cannot be told from one, so
    /// every broken return counts as a query in flight and gets a `KILL
    /// QUERY` (answered "unknown thread" when the session is gone already).
    fn session(&self, conn: &mut Conn) -> Session {
        session(conn.is_disconnected(), in_transaction(conn))
    }

    fn classify(&self, error: &mysql_async::Error) -> ErrorClass {
        use mysql_async::{DriverError, Error};
        match error {
            Error::Io(_) | Error::Driver(DriverError::ConnectionClosed) => ErrorClass::EndsSession,
            // ER_SERVER_SHUTDOWN, ER_CONNECTION_KILLED, and MySQL 8.0.24+'s
            // ER_CLIENT_INTERACTION_TIMEOUT (the idle kill's farewell).
            Error::Server(e) if matches!(e.code, 1053 | 1927 | 4031) => ErrorClass::EndsSession,
            // ER_OPTION_PREVENTS_STATEMENT (1290, `--read-only`) and
            // ER_READ_ONLY_MODE (1836).
            Error::Server(e) if matches!(e.code, 1290 | 1836) => ErrorClass::RoleChanged,
            _ => ErrorClass::Other,
        }
    }

    /// A statement left running: `KILL QUERY <id>` from a new connection
    /// to the same server, so it stops at once instead of running on with
    /// nobody to read its reply. The session itself was given up by the
    /// driver, so the pool closes it ([`Cleaned::Unusable`]).
    async fn reset(
        &self,
        conn: &mut Conn,
        cleanup: Cleanup,
    ) -> Result<Cleaned, mysql_async::Error> {
        if cleanup.stop_query {
            let admin = self.connect_to(conn.opts().clone()).await?;
            return kill_query(admin, conn.id()).await;
        }
        if cleanup.full {
            // COM_RESET_CONNECTION also rolls back an open transaction, and
            // `Conn::reset` clears the client-side statement cache that the
            // server-side reset invalidates.
            if conn.reset().await? {
                return Ok(Cleaned::Ready);
            }
            tracing::debug!(
                target: TARGET,
                version = ?conn.server_version(),
                "server lacks COM_RESET_CONNECTION; rolling back only"
            );
        }
        if in_transaction(conn) {
            conn.query_drop("ROLLBACK").await?;
        }
        Ok(Cleaned::Ready)
    }

    /// One query a minute, not per connection: the session
    /// `wait_timeout` and `max_allowed_packet`. Every session of one manager
    /// opens with the same options (its `init` commands included), so what
    /// one found holds for the next (for 60 s).
    async fn server_timeouts(&self, conn: &mut Conn) -> Result<ServerTimeouts, mysql_async::Error> {
        // Learned from one server, true of that server only.
        if let Some(learned) = self.learned().filter(|_| self.more_hosts.is_empty()) {
            return Ok(learned.timeouts);
        }
        // A SELECT of variables always answers one row.
        let row: Option<(u64, u64)> = conn
            .query_first("SELECT @@SESSION.wait_timeout, @@max_allowed_packet")
            .await?;
        let (idle, packet) = row.unwrap_or_default();
        let timeouts = ServerTimeouts {
            idle: seconds(idle),
        };
        self.learn(timeouts, usize::try_from(packet).ok(), idle);
        Ok(timeouts)
    }

    /// `COM_QUIT`; errors are ignored (the connection is going away anyway).
    async fn close(&self, conn: Conn) {
        let _ = conn.disconnect().await;
    }
}
