//! Pool settings: a plain struct for files, a builder for code.

use std::time::Duration;

use crate::error::ConfigError;

/// When a connection taken from the idle set is checked with a round trip
/// ([`Manager::is_valid`](crate::Manager::is_valid)) before it is lent.
///
/// The cheap checks (the manager's `has_broken`, max lifetime, the server's
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
    /// Longest a single connect attempt may take. Default 10 s.
    pub connect_timeout: Duration,
    /// Bound on every round trip the pool makes on its own: validation,
    /// keepalive, reset on return, timeout discovery, polite close. A
    /// black-holed connection answers nothing; without a bound it would hold
    /// its slot forever. Default 5 s.
    pub validation_timeout: Duration,
    /// Retire a connection this long after it was opened, minus a random
    /// 0–2.5 % per connection so they do not expire together. `None` keeps
    /// connections forever. Default 30 min.
    pub max_lifetime: Option<Duration>,
    /// Retire a connection nobody borrowed for this long, down to `min_idle`.
    /// `None` never shrinks. Default 10 min.
    pub idle_timeout: Option<Duration>,
    /// Ping idle connections that have been silent this long, so a silent
    /// drop by a NAT or load balancer is found by the pool, not a caller.
    /// Keep it under ~200 s to beat AWS NLB (350 s) and Azure LB (240 s).
    /// `None` disables it. Default 120 s.
    pub keepalive_interval: Option<Duration>,
    /// When a checkout pings; see [`Validation`]. Default `IdleFor(500 ms)`.
    pub validation: Validation,
    /// Retire an idle connection this long before the server's own idle
    /// timeout would close it (at most half the server's timeout). Default 5 s.
    pub server_timeout_margin: Duration,
    /// Use this as the server's idle timeout instead of asking the server.
    /// `Some(None)` means "the server never times out"; `None` discovers it
    /// on each new connection. Default `None`.
    pub server_idle_timeout_override: Option<Option<Duration>>,
    /// Reset session state (MySQL `COM_RESET_CONNECTION`, PostgreSQL
    /// `DISCARD ALL`) on every return. Costs a round trip per checkout; an
    /// open transaction is rolled back on return whatever this says.
    /// Default `false`.
    pub reset_on_return: bool,
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
            server_timeout_margin: Duration::from_secs(5),
            server_idle_timeout_override: None,
            reset_on_return: false,
            max_concurrent_connects: 2,
            close_timeout: Duration::from_secs(30),
            leak_threshold: None,
            max_waiters: None,
        }
    }
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

fn positive(setting: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(setting, "must be greater than zero"));
    }
    Ok(())
}

impl Config {
    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_size == 0 {
            return Err(invalid("max_size", "must be at least 1"));
        }
        if self.min_idle > self.max_size {
            return Err(invalid(
                "min_idle",
                format!(
                    "{} is larger than max_size ({})",
                    self.min_idle, self.max_size
                ),
            ));
        }
        if self.max_concurrent_connects == 0 {
            return Err(invalid("max_concurrent_connects", "must be at least 1"));
        }
        positive("acquire_timeout", self.acquire_timeout)?;
        positive("connect_timeout", self.connect_timeout)?;
        positive("validation_timeout", self.validation_timeout)?;
        if let Some(d) = self.max_lifetime {
            positive("max_lifetime", d)?;
        }
        if let Some(d) = self.idle_timeout {
            positive("idle_timeout", d)?;
        }
        if let Some(d) = self.keepalive_interval {
            positive("keepalive_interval", d)?;
        }
        if let Validation::IdleFor(w) = self.validation {
            positive("validation", w)?;
        }
        if let Some(d) = self.leak_threshold {
            positive("leak_threshold", d)?;
        }
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if let Some(Some(d)) = self.server_idle_timeout_override {
            positive("server_idle_timeout_override", d)?;
        }
        Ok(())
    }
}
