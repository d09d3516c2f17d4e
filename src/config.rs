//! Pool settings: a plain struct for files, a builder for code.

use std::time::Duration;

use crate::error::ConfigError;

/// When a connection taken from the idle set is checked with a round trip
/// ([`Manager::is_valid`](crate::Manager::is_valid)) before it is lent.
///
/// The cheap checks (the manager's `Session::broken`, max lifetime, the server's
/// idle timeout) run on every checkout whatever this says; this only decides
/// when to pay for a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Ping before every checkout. Costs a round trip each time.
    Always,
    /// Ping only when the connection has been silent for longer than the
    /// window. A connection used moments ago is known alive; pinging it is
    /// pure cost (HikariCP uses 500 ms, pgx 1 s).
    IdleFor(Duration),
    /// Never ping at checkout; rely on the cheap checks and the housekeeper.
    Never,
}

impl Default for Validation {
    fn default() -> Self {
        Validation::IdleFor(Duration::from_millis(500))
    }
}

/// Whether a returned connection is pinged before it goes back idle (in the
/// background, bounded by `validation_timeout`; never on the caller's path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyOnReturn {
    /// Ping only when the manager's `Session::broken` cannot see a session that
    /// died while lent ([`BrokenDetection::Blind`](crate::BrokenDetection::Blind):
    /// the sqlx backends over a network). tokio-postgres and mysql_async
    /// need no ping. The default.
    #[default]
    Auto,
    /// Ping every returned connection.
    Always,
    /// Never ping on return. With a blind manager, a session killed while
    /// lent is then lent again, once, to a borrower whose first query fails.
    Never,
}

impl VerifyOnReturn {
    /// Whether returned connections are pinged, for a manager whose
    /// `Session::broken` sees what `detection` says.
    pub(crate) fn pings(self, detection: crate::manager::BrokenDetection) -> bool {
        match self {
            VerifyOnReturn::Auto => detection == crate::manager::BrokenDetection::Blind,
            VerifyOnReturn::Always => true,
            VerifyOnReturn::Never => false,
        }
    }
}

/// Idle cutoffs that nothing announces: a NAT, firewall or load balancer
/// that drops flows idle past a time of its own (AWS NLB 350 s, Azure LB
/// 4 min), pgbouncer's `client_idle_timeout`. The server cannot report
/// them; the pool can learn one from the connections it finds dead after
/// idling, and then pings idle connections at 75 % of it (a keepalive,
/// which restarts the middlebox's idle clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleCutoff {
    /// Learn it from evidence: at least 3 of the last 8 connections found
    /// dead after idling 2 s or more (a failed or unanswered ping, a broken
    /// flag), seen in at least two separate episodes (a restart kills many
    /// at once; a cutoff kills after every idle period), none of them
    /// contradicted by a connection that survived a longer idle since. The
    /// cutoff is the shortest of their idles; a later death after a shorter
    /// idle lowers it, and a connection that survives an idle as long as the
    /// cutoff unlearns it. The finding is logged once at info and exported
    /// as `vigil_learned_idle_cutoff_seconds`. The default.
    #[default]
    Learn,
    /// The cutoff is known (say a load balancer's documented 350 s): idle
    /// connections are pinged at 75 % of it from the start. At least 1 s.
    Known(Duration),
    /// Neither learn nor assume one; only `keepalive_interval` pings.
    Off,
}

/// What a checkout does while its validation ping goes unanswered: with a
/// hedge, after the delay the caller is served by a warm idle connection
/// or a new connect started alongside, whichever is ready first, instead of
/// waiting out `validation_timeout` on a black-holed connection. The silent
/// connection keeps its slot until its ping answers (it goes back idle) or
/// times out (it is retired), so the pool never holds more than `max_size`.
/// A hedge needs a free slot: in a pool whose every slot is taken the
/// caller waits for the ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hedge {
    /// After 4 × the slowest recent ping (a decaying maximum; before the
    /// first ping, the last connect's duration), at least 50 ms and at most
    /// `validation_timeout`. The default.
    #[default]
    Auto,
    /// After this delay (greater than zero).
    After(Duration),
    /// Never: the caller waits for the ping, up to `validation_timeout`.
    Off,
}

/// Every setting of a pool, with its default. Build one with [`Builder`](crate::Builder)
/// or fill it from a configuration file and hand it to
/// [`Builder::config`](crate::Builder::config).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The pool's name: the `pool` label of its metrics and a field of its
    /// log lines. Default `"default"`.
    pub name: String,
    /// Most connections open at once, lent and idle together. Default 10.
    pub max_size: usize,
    /// Idle connections the housekeeper keeps ready. Default 0: the pool
    /// grows on demand and shrinks after `idle_timeout`.
    pub min_idle: usize,
    /// Longest a `get()` waits in total: for a slot, a connect, a validation.
    /// Default 30 s.
    pub acquire_timeout: Duration,
    /// Longest a single connect attempt may take, the server's timeout
    /// discovery on the new connection included. Default 10 s.
    pub connect_timeout: Duration,
    /// Bound on every round trip the pool makes on its own on an open
    /// connection: validation, keepalive, reset on return, polite close. A
    /// black-holed connection answers nothing; without a bound it would hold
    /// its slot forever. Default 5 s.
    pub validation_timeout: Duration,
    /// Retire a connection this long after it was opened, minus a random
    /// 0–2.5 % per connection so they do not expire together. `None` keeps
    /// connections forever. At least 1 s. Default 30 min.
    pub max_lifetime: Option<Duration>,
    /// Retire a connection nobody borrowed for this long, down to `min_idle`.
    /// `None` never shrinks. Default 10 min.
    pub idle_timeout: Option<Duration>,
    /// Ping idle connections that have been silent this long, so a silent
    /// drop by a NAT or load balancer is found by the pool, not a caller.
    /// Keep it under ~200 s to beat AWS NLB (350 s) and Azure LB (240 s).
    /// `None` disables it. At least 1 s. Default 120 s.
    pub keepalive_interval: Option<Duration>,
    /// When a checkout pings; see [`Validation`]. Default `IdleFor(500 ms)`.
    pub validation: Validation,
    /// A checkout ping that does not answer in time; see [`Hedge`].
    /// Default [`Hedge::Auto`].
    pub hedge: Hedge,
    /// Idle cutoffs nobody announces; see [`IdleCutoff`]. Default
    /// [`IdleCutoff::Learn`].
    pub idle_cutoff: IdleCutoff,
    /// How often the pool asks one connection whether its session still
    /// has the role the manager requires
    /// ([`Manager::has_role`](crate::Manager::has_role), e.g. a writable
    /// primary for `target_session_attrs=read-write`): one round trip per
    /// period, not per checkout. An idle connection is asked when there is
    /// one; when every connection is lent, the next one that comes back is
    /// asked before it is reused, so a saturated pool is checked as often.
    /// When the role is gone, every connection is retired (a new
    /// generation) and new ones go where the role now is. Managers that
    /// require no role are never asked. At least 100 ms. Default 2 s: a
    /// backend that cannot see the server's read-only errors (mysql_async,
    /// sqlx) notices a demotion within it.
    pub role_check_interval: Duration,
    /// Retire an idle connection this long before the server's own idle
    /// timeout would close it (at most half the server's timeout). Default 5 s.
    pub server_timeout_margin: Duration,
    /// Use this as the server's idle timeout instead of asking the server.
    /// `Some(None)` means "the server never times out"; `None` discovers it
    /// on each new connection. At least 1 s (MySQL's own minimum). Default `None`.
    pub server_idle_timeout_override: Option<Option<Duration>>,
    /// Reset session state (MySQL `COM_RESET_CONNECTION`, PostgreSQL
    /// `DISCARD ALL`) on every return. Costs a round trip per return; an
    /// open transaction is rolled back on return whatever this says.
    /// Default `false`.
    pub reset_on_return: bool,
    /// Whether returned connections are pinged; see [`VerifyOnReturn`].
    /// Default [`VerifyOnReturn::Auto`].
    pub verify_on_return: VerifyOnReturn,
    /// Most connects in flight at once, so a restart does not cause a storm.
    /// After a failed connect the pool as a whole waits before the next
    /// attempt (10 ms doubling to 500 ms, jittered), whatever the number of
    /// waiting callers. Default 2.
    pub max_concurrent_connects: usize,
    /// How long [`Pool::close`](crate::Pool::close) waits for borrowed
    /// connections to come back before closing the rest. Default 30 s.
    pub close_timeout: Duration,
    /// Warn (once per borrow, naming the `get()` call site) and count when a
    /// connection is held longer than this. `None` disables it. Default `None`.
    pub leak_threshold: Option<Duration>,
    /// Load shedding: when this many callers are already waiting, `get()`
    /// fails at once with [`Error::Busy`](crate::Error::Busy) instead of
    /// queueing. `None` queues without limit (each waiter still bounded by
    /// `acquire_timeout`). Default `None`.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use vigil::{backend::sqlx::SqliteManager, Error, Pool};
    ///
    /// let pool = Pool::builder(SqliteManager::from_url("sqlite::memory:").unwrap())
    ///     .max_size(1)
    ///     .max_waiters(Some(0)) // nobody queues: busy means busy
    ///     .build()
    ///     .unwrap();
    /// let held = pool.get().await.unwrap();
    /// let refused = pool.get().await;
    /// assert!(matches!(refused, Err(Error::Busy { max_waiters: 0 })));
    /// assert_eq!(pool.state().rejected, 1);
    /// drop(held);
    /// # });
    /// ```
    pub max_waiters: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "default".to_owned(),
            max_size: 10,
            min_idle: 0,
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            validation_timeout: Duration::from_secs(5),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            keepalive_interval: Some(Duration::from_secs(120)),
            validation: Validation::default(),
            hedge: Hedge::Auto,
            idle_cutoff: IdleCutoff::Learn,
            role_check_interval: Duration::from_secs(2),
            server_timeout_margin: Duration::from_secs(5),
            server_idle_timeout_override: None,
            reset_on_return: false,
            verify_on_return: VerifyOnReturn::Auto,
            max_concurrent_connects: 2,
            close_timeout: Duration::from_secs(30),
            leak_threshold: None,
            max_waiters: None,
        }
    }
}

pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// `d` is greater than zero and at most [`Config::MAX_DURATION`].
pub(crate) fn positive(setting: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(setting, "must be greater than zero"));
    }
    at_most_max_duration(setting, d)
}

/// `d` is at most [`Config::MAX_DURATION`].
pub(crate) fn at_most_max_duration(setting: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d > Config::MAX_DURATION {
        return Err(invalid(
            setting,
            format!(
                "{d:?} is longer than the limit of 100 years ({} s)",
                Config::MAX_DURATION.as_secs()
            ),
        ));
    }
    Ok(())
}

/// An optional duration: when set, [`positive`]; the error says `None` means never.
fn optional(setting: &'static str, d: Option<Duration>) -> Result<(), ConfigError> {
    match d {
        None => Ok(()),
        Some(d) => positive(setting, d).map_err(|mut e| {
            e.reason.push_str(" (None means never)");
            e
        }),
    }
}

/// Below a second, a lifetime would replace every connection (and the
/// `min_idle` ones with no borrower at all) in a connect storm, and a
/// keepalive would ping each idle connection back to back.
fn at_least_a_second(setting: &'static str, d: Option<Duration>) -> Result<(), ConfigError> {
    match d {
        Some(d) if d < Duration::from_secs(1) => Err(invalid(
            setting,
            format!("{d:?} is shorter than 1 s, which would replace or ping connections back to back (None means never)"),
        )),
        _ => Ok(()),
    }
}

/// `n` is at least 1 and at most [`Config::MAX_SIZE`].
pub(crate) fn count(setting: &'static str, n: usize) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(invalid(setting, "must be at least 1"));
    }
    if n > Config::MAX_SIZE {
        return Err(invalid(
            setting,
            format!("{n} is larger than the limit of {}", Config::MAX_SIZE),
        ));
    }
    Ok(())
}

impl Config {
    /// The largest `max_size` (and `max_concurrent_connects`) a pool accepts:
    /// tokio's [`Semaphore::MAX_PERMITS`](tokio::sync::Semaphore::MAX_PERMITS),
    /// `usize::MAX >> 3`. Nothing is allocated per slot up front, so any size
    /// up to this is served; the server's `max_connections` is the real bound.
    pub const MAX_SIZE: usize = tokio::sync::Semaphore::MAX_PERMITS;

    /// The longest duration any setting accepts: 100 years. Every deadline
    /// the pool computes is `now + setting`, which must stay representable
    /// by [`Instant`](std::time::Instant) on every platform; for "never",
    /// the optional settings take `None`.
    pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

    /// Checks every setting; the error names the first bad one, its value
    /// and the limit it broke.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        count("max_size", self.max_size)?;
        if self.min_idle > self.max_size {
            return Err(invalid(
                "min_idle",
                format!(
                    "{} is larger than max_size ({})",
                    self.min_idle, self.max_size
                ),
            ));
        }
        count("max_concurrent_connects", self.max_concurrent_connects)?;
        positive("acquire_timeout", self.acquire_timeout)?;
        positive("connect_timeout", self.connect_timeout)?;
        positive("validation_timeout", self.validation_timeout)?;
        optional("max_lifetime", self.max_lifetime)?;
        at_least_a_second("max_lifetime", self.max_lifetime)?;
        optional("idle_timeout", self.idle_timeout)?;
        optional("keepalive_interval", self.keepalive_interval)?;
        at_least_a_second("keepalive_interval", self.keepalive_interval)?;
        if let Validation::IdleFor(w) = self.validation {
            positive("validation", w)?;
        }
        if let Hedge::After(d) = self.hedge {
            positive("hedge", d)?;
            at_most_max_duration("hedge", d)?;
        }
        if let IdleCutoff::Known(d) = self.idle_cutoff {
            at_least_a_second("idle_cutoff", Some(d))?;
            at_most_max_duration("idle_cutoff", d)?;
        }
        optional("leak_threshold", self.leak_threshold)?;
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if let Some(d) = self.server_idle_timeout_override {
            optional("server_idle_timeout_override", d)?;
            at_least_a_second("server_idle_timeout_override", d)?;
        }
        at_most_max_duration("server_timeout_margin", self.server_timeout_margin)?;
        if self.role_check_interval < Duration::from_millis(100) {
            return Err(invalid("role_check_interval", "must be at least 100 ms"));
        }
        at_most_max_duration("close_timeout", self.close_timeout)?;
        Ok(())
    }
}
