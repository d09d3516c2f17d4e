//! The backend contract: how to open, check, clean and close one connection.

use std::future::Future;
use std::time::Duration;

/// The idle timeouts a server applies to one session, as read from that
/// session right after it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// The server closes the session after it has been idle (outside a
    /// transaction) this long: MySQL/MariaDB session `wait_timeout`,
    /// PostgreSQL `idle_session_timeout`. `None` when the server never does.
    pub idle: Option<Duration>,
}

/// What the driver already knows about one session, read without any I/O
/// ([`Manager::session`]). The pool reads it at every checkout and return,
/// and when work run by [`Pool::run`](crate::Pool::run) fails.
///
/// `#[non_exhaustive]`: start from `Session::default()` (a healthy, clean
/// session) and set what the driver knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// The session is finished (closed socket, fatal error seen): it is
    /// never lent again. What this can see is the manager's
    /// [`BrokenDetection`].
    pub broken: bool,
    /// The session carries state the next borrower must not see, such as
    /// an open transaction: the pool calls [`reset`](Manager::reset)
    /// before it is lent again.
    pub needs_cleanup: bool,
    /// The session's last word said a transaction the borrower opened is
    /// still open: [`Pool::run_idempotent`](crate::Pool::run_idempotent)
    /// never reruns work whose session died inside one. Narrower than
    /// `needs_cleanup`, which may also be `true` because a reply is still
    /// on its way (a query written just before the session died has no
    /// answer, and never gets one).
    pub in_transaction: bool,
    /// The borrower gave the connection back with a command still running,
    /// its reply never read (a query future dropped mid-flight: a request
    /// timeout, a client that went away): the pool asks
    /// [`reset`](Manager::reset) to stop it ([`Cleanup::stop_query`])
    /// instead of queueing a rollback or a ping behind it.
    pub query_in_flight: bool,
    /// A reply on this session, whoever asked for it, suggested the server
    /// no longer has the required role (PostgreSQL SQLSTATE 25006 read as
    /// it passed): the pool asks [`has_role`](Manager::has_role) before the
    /// connection is reused, and moves the whole pool if the role is gone.
    /// Only read when [`Capabilities::checks_role`].
    pub role_in_doubt: bool,
}

/// What an error says beyond its message ([`Manager::classify`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// One command failed; the session and the server are as they were.
    #[default]
    Other,
    /// The session is finished (socket closed, server gone, session
    /// terminated) rather than one command failed. Returned by
    /// [`reset`](Manager::reset) or [`is_valid`](Manager::is_valid), the
    /// retirement counts as `broken`, which is what happened, instead of
    /// `reset_failed`; seen by [`Pool::run_idempotent`](crate::Pool::run_idempotent),
    /// the work runs once more on another session.
    EndsSession,
    /// The server's role changed: it refused to write (PostgreSQL SQLSTATE
    /// 25006 `read_only_sql_transaction`, MySQL/MariaDB 1290 / 1836). Seen
    /// by [`Pool::run`](crate::Pool::run), the pool retires every
    /// connection at once, as after a failed role check.
    RoleChanged,
    /// A `connect` refused before any server was asked (a quota or a cap,
    /// as [`KeyedPool`](crate::keyed::KeyedPool)'s global cap declining a
    /// background connect). No sign of trouble: the pool does not count it
    /// as a connect error, does not back off, does not log it as a warning
    /// and keeps the last real connect error for its timeout messages.
    Declined,
}

/// What a manager can tell, asked once ([`Manager::capabilities`]).
///
/// `#[non_exhaustive]`: start from `Capabilities::default()` and set what
/// the manager can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// What [`Session::broken`] can see without a round trip. The pool
    /// decides from it (and
    /// [`Config::verify_on_return`](crate::Config::verify_on_return))
    /// whether a returned connection is pinged before it goes back idle:
    /// a manager whose driver cannot tell should say
    /// [`BrokenDetection::Blind`]. Default
    /// [`BrokenDetection::AfterFailedIo`].
    pub detection: BrokenDetection,
    /// The manager requires its sessions to have a role (a writable
    /// primary, a standby): only then does the pool ask
    /// [`has_role`](Manager::has_role) (every `role_check_interval`, and
    /// before reusing a session whose [`Session::role_in_doubt`]).
    /// Default `false`.
    pub checks_role: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            detection: BrokenDetection::AfterFailedIo,
            checks_role: false,
        }
    }
}

/// What a manager's [`Session::broken`] can see without a round trip
/// ([`Capabilities::detection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokenDetection {
    /// The driver watches its socket: a session the server ended, idle or
    /// lent, turns `broken` true without any I/O (tokio-postgres).
    Watched,
    /// `broken` turns true after an I/O error on the connection: a
    /// borrower whose query failed on a dead session is seen, a session
    /// that ended quietly while idle is not (mysql_async). The default.
    AfterFailedIo,
    /// `broken` sees nothing: a session that died while lent comes back
    /// looking healthy (sqlx 0.9 over a network).
    Blind,
}

/// What a returned session needs before it is lent again
/// ([`Manager::reset`]).
///
/// `#[non_exhaustive]`: start from `Cleanup::default()` (roll back what
/// the borrower left open, nothing more) and set what applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cleanup {
    /// Reset all session state (the pool's `reset_on_return`, or
    /// [`Pooled::reset_on_return`](crate::Pooled::reset_on_return)), not
    /// only roll back an open transaction.
    pub full: bool,
    /// The borrower left a statement running ([`Session::query_in_flight`]):
    /// ask the server to stop it, over a separate connection (PostgreSQL's
    /// cancel request, MySQL's `KILL QUERY`), and wait until the session
    /// has no reply pending, before anything else. Also asked of a session
    /// the pool is retiring (then the answer only counts the stop), whose
    /// statement would otherwise run on with nobody to read it.
    pub stop_query: bool,
}

/// What [`Manager::reset`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cleaned {
    /// The session is clean and may be lent again. A statement its
    /// borrower left running, if any, needed no stopping: its reply
    /// arrived by itself (the borrower had stopped reading a statement
    /// that was finishing).
    Ready,
    /// The statement the borrower left running was stopped and its reply
    /// drained; the session is clean and may be lent again.
    QueryStopped,
    /// The session must not be lent again: a statement left running could
    /// not be stopped (this manager cannot, or the request failed), or was
    /// stopped but the driver gave the session up. `query_stopped`: the
    /// server was asked to stop it. The pool closes the session.
    Unusable {
        /// The server was asked to stop the statement.
        query_stopped: bool,
    },
}

/// Opens, checks, cleans and closes connections of one kind.
///
/// Two tiers of liveness: [`session`](Manager::session) is a cheap
/// synchronous look at state the driver already has (run on every checkout
/// and return); [`is_valid`](Manager::is_valid) is a round trip (run only
/// when the [`Validation`](crate::Validation) mode asks for one).
///
/// A wrapper (a manager over another manager) forwards every method,
/// including those with a default: a default it does not override answers
/// for the wrapper, not for what it wraps.
///
/// The pool bounds every async method with a timeout and drops the future
/// when it runs out, so implementations need not add their own.
pub trait Manager: Send + Sync + 'static {
    /// The connection type lent out by the pool.
    type Connection: Send + 'static;
    /// The error type of `connect`, `is_valid` and `reset`.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection.
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Checks with a round trip that the connection still works.
    fn is_valid(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Cheap, synchronous, never does I/O: what the driver already knows
    /// about this session (see [`Session`]). No default: a manager that
    /// knows nothing says `Session::default()`.
    fn session(&self, conn: &mut Self::Connection) -> Session;

    /// Cheap, synchronous: what this error, returned by any of the methods
    /// here or seen by [`Pool::run`](crate::Pool::run), says about the
    /// session and the server (see [`ErrorClass`]). No default: a manager
    /// that cannot tell says [`ErrorClass::Other`].
    fn classify(&self, error: &Self::Error) -> ErrorClass;

    /// What this manager can tell (see [`Capabilities`]), asked once when
    /// a pool is built. Default: `broken` turns true after failed I/O
    /// ([`BrokenDetection::AfterFailedIo`]), and no role is required.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// One round trip: does this session still have the role the manager
    /// requires ([`Capabilities::checks_role`])? The housekeeper asks one idle connection every
    /// `role_check_interval`; `Ok(false)` retires every connection of the
    /// pool. Default `Ok(true)`, without I/O.
    fn has_role(
        &self,
        _conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send {
        async { Ok(true) }
    }

    /// Cleans the connection before reuse (see [`Cleanup`]): stops a
    /// statement its borrower left running, rolls back an open transaction
    /// and, when `full`, resets all session state. An error retires the
    /// connection with reason `broken` when [`classify`](Manager::classify)
    /// says [`ErrorClass::EndsSession`], else `reset_failed`.
    /// Default: nothing to do ([`Cleaned::Ready`]); a statement left
    /// running cannot be stopped ([`Cleaned::Unusable`]: the pool closes
    /// the session rather than wait for it).
    fn reset(
        &self,
        _conn: &mut Self::Connection,
        cleanup: Cleanup,
    ) -> impl Future<Output = Result<Cleaned, Self::Error>> + Send {
        async move {
            Ok(match cleanup.stop_query {
                false => Cleaned::Ready,
                true => Cleaned::Unusable {
                    query_stopped: false,
                },
            })
        }
    }

    /// Reads the server's idle timeouts from a freshly opened connection.
    /// Called once per connection. Default: the server has none.
    fn server_timeouts(
        &self,
        _conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<ServerTimeouts, Self::Error>> + Send {
        async { Ok(ServerTimeouts::default()) }
    }

    /// Closes the connection politely (a goodbye message to the server).
    /// Default: drop it.
    fn close(&self, conn: Self::Connection) -> impl Future<Output = ()> + Send {
        drop(conn);
        async {}
    }
}
