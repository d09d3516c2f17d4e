//! The public pool handle and its builder.

mod backoff;
mod conn;
mod cutoff;
mod deadlines;
mod evidence;
mod guard;
mod hedge;
mod hooks;
mod housekeeping;
mod inner;
mod line;
mod owners;
mod returns;
mod run;
mod slots;

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::runtime::Handle;

pub use guard::Pooled;
pub(crate) use hooks::Hooks;
pub use hooks::{ConnectionMetadata, HookFuture, SetUpHook, VetHook};
use inner::{Shared, Stop};
pub use run::Work;

use crate::config::{Config, Validation};
use crate::error::{BlockingError, BuildError, ConnectError, Error, TimeoutPhase};
use crate::liveness::Reason;
use crate::manager::Manager;
use crate::stats::{ConnectionInfo, ConnectionState, State, Stats};
use slots::Activity;

/// Tracing target for every event of the pool.
pub(crate) const TARGET: &str = "vigil::pool";

/// An async connection pool that never lends a dead connection.
///
/// Cheap to clone (an `Arc`); clones share one pool. When the last clone is
/// dropped the pool closes: the housekeeper stops, idle connections are
/// closed, and connections still lent are closed when they come back.
pub struct Pool<M: Manager> {
    handle: Arc<Owner<M>>,
}

/// Owned by the `Pool` clones only (guards hold `Shared`), so dropping the
/// last `Pool` is seen even while connections are lent out.
struct Owner<M: Manager> {
    shared: Arc<Shared<M>>,
}

impl<M: Manager> Drop for Owner<M> {
    fn drop(&mut self) {
        shut_down(&self.shared);
    }
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Pool {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<M: Manager> fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Stops lending, wakes every waiter with `Closed`, and closes the idle set.
/// Returns nothing to wait for; `Pool::close` waits for the lent connections.
fn shut_down<M: Manager>(shared: &Arc<Shared<M>>) {
    // Every caller in line is told `Closed`, and no one joins after.
    let (idle, waiters) = shared.slots.lock().close();
    for waiter in waiters {
        waiter.wake();
    }
    shared.watchdog.close();
    for conn in idle {
        shared.retire(conn, Reason::Closed);
    }
    shared.changed.notify_waiters();
    // Callers waiting out a connect backoff hold permits, not a place in
    // line: wake them to see the pool closed.
    shared.backoff_over.notify_waiters();
}

impl<M: Manager> Pool<M> {
    /// Starts a [`Builder`] with default settings.
    pub fn builder(manager: M) -> Builder<M> {
        Builder {
            manager,
            config: Config::default(),
            hooks: Hooks::default(),
        }
    }

    fn shared(&self) -> &Arc<Shared<M>> {
        &self.handle.shared
    }

    /// Lends a live connection: an idle one that passes the liveness policy
    /// (and a validation round trip if it has been silent longer than the
    /// bypass window), or a new one.
    ///
    /// Waiters are served first come, first served.
    ///
    /// # Errors
    /// - [`Error::Timeout`] when `acquire_timeout` runs out; it names the
    ///   phase and carries the last connect error.
    /// - [`Error::Closed`] when the pool is closed before or while waiting.
    ///
    /// # Cancel safety
    /// Cancel-safe at every await: dropping the future gives back its place
    /// in line and its slot. A connect or a validation ping it started runs
    /// to completion in its own task (each bounded by its timeout), and a
    /// live connection goes to the idle set for the next caller; a
    /// connection that failed is closed. Capacity is never lost.
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<Pooled<M>, Error<M::Error>>> + Send + '_ {
        // Taken here, outside the future: `#[track_caller]` does not reach
        // into an async body. Leak reports and /status name this line.
        let site = Location::caller();
        self.get_at(site, None)
    }

    /// A checkout that ends at `deadline` (`None`: `acquire_timeout` from now).
    async fn get_at(
        &self,
        site: &'static Location<'static>,
        deadline: Option<Instant>,
    ) -> Result<Pooled<M>, Error<M::Error>> {
        let started = Instant::now();
        if deadline.is_none() && self.shared().hooks.before_acquire.is_some() {
            // Boxed: the hooked path's state stays out of every `get()`'s
            // future (and its call back here needs the indirection).
            return Box::pin(self.get_vetted(site, started)).await;
        }
        let shared = self.shared();
        let held = match shared.try_checkout_now(started, site) {
            Ok(conn) => {
                // Served without waiting: one counter, read as a skipped
                // validation and as a wait in the lowest bucket (the true
                // figure is well under 10 µs), without a second clock read.
                Stats::bump(&shared.stats.lent_at_once);
                return Ok(conn);
            }
            Err(held) => held,
        };
        let mut phase = TimeoutPhase::WaitingForConnection;
        let deadline = deadline.unwrap_or(started + shared.config.acquire_timeout);
        // The slow path; in a `vigil.acquire` span when a subscriber wants
        // one (`Shared::acquire`). The fast path above records nothing.
        let result = shared.acquire(held, &mut phase, site, deadline).await;
        match result {
            // The guard's `lent_at` is the checkout's last clock reading.
            Ok(conn) => {
                let waited = Pooled::lent_at(&conn).saturating_duration_since(started);
                shared.stats.acquire.observe(waited);
                Ok(conn)
            }
            Err(stop) => {
                shared.stats.acquire.observe(started.elapsed());
                Err(self.explain(stop, phase, started))
            }
        }
    }

    /// A checkout with a `before_acquire` hook: each connection that has
    /// been lent before is shown to it, and one it refuses is closed and
    /// the checkout goes on, all within one `acquire_timeout`.
    async fn get_vetted(
        &self,
        site: &'static Location<'static>,
        started: Instant,
    ) -> Result<Pooled<M>, Error<M::Error>> {
        let shared = self.shared();
        let hook = shared
            .hooks
            .before_acquire
            .as_ref()
            .expect("called with a hook");
        let deadline = started + shared.config.acquire_timeout;
        loop {
            let mut conn = self.get_at(site, Some(deadline)).await?;
            let Some(meta) = Pooled::metadata(&conn) else {
                // Never lent: `after_connect` has just had it.
                return Ok(conn);
            };
            let answer = tokio::time::timeout_at(deadline, hook(&mut conn, meta)).await;
            let conn_id = meta.id;
            match answer {
                Ok(Ok(true)) => return Ok(conn),
                // debug: the user's own rule, doing its job.
                Ok(Ok(false)) => {
                    tracing::debug!(target: TARGET, conn_id, "before_acquire refused an idle connection")
                }
                // warn: the user's code failed; they will want to know why.
                Ok(Err(error)) => {
                    tracing::warn!(target: TARGET, conn_id, %error, "before_acquire hook failed")
                }
                Err(_) => {
                    // The hook may have left a query half-done: closed, not returned.
                    Pooled::retire_as(conn, Reason::Refused);
                    return Err(self.explain(Stop::TimedOut, TimeoutPhase::Validating, started));
                }
            }
            Pooled::retire_as(conn, Reason::Refused);
        }
    }

    /// The caller's error for why the slow path stopped.
    fn explain(&self, stop: Stop, phase: TimeoutPhase, started: Instant) -> Error<M::Error> {
        let shared = self.shared();
        match stop {
            Stop::Closed => Error::Closed,
            Stop::Busy => Error::Busy {
                max_waiters: shared.config.max_waiters.unwrap_or_default(),
            },
            Stop::TimedOut => {
                shared.stats.acquire_timeouts.fetch_add(1, Relaxed);
                let (last_error, failed_hook, last_connect_timeout) = shared.last_connect_failure();
                let waited = started.elapsed();
                tracing::warn!(
                    target: TARGET,
                    ?waited,
                    %phase,
                    last_error = last_error.as_ref().map(tracing::field::display),
                    failed_hook,
                    ?last_connect_timeout,
                    "acquire timed out"
                );
                Error::Timeout {
                    phase,
                    waited,
                    last_error,
                    failed_hook,
                    last_connect_timeout,
                }
            }
        }
    }

    /// A snapshot of the pool's gauges and counters.
    pub fn state(&self) -> State {
        state_of(self.shared())
    }

    /// A handle for exporters: reads the pool's state without keeping the
    /// pool alive (`None` once it is gone).
    #[cfg(any(feature = "metrics", feature = "otel"))]
    pub(crate) fn observer(&self) -> Observer {
        let weak = Arc::downgrade(self.shared());
        let weak2 = weak.clone();
        Observer {
            name: self.shared().config.name.clone(),
            state: Box::new(move || weak.upgrade().map(|s| state_of(&s))),
            connections: Box::new(move || weak2.upgrade().map(|s| connections_of(&s))),
        }
    }

    /// Every connection of the pool: idle ones (most recently used last),
    /// then active ones. Takes the pool's lock briefly; meant for status
    /// pages, not for hot paths.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        connections_of(self.shared())
    }

    /// The settings this pool was built with.
    pub fn config(&self) -> &Config {
        &self.shared().config
    }

    /// Closes the pool: stops lending (waiters and later callers get
    /// [`Error::Closed`]), closes idle connections, waits up to
    /// `close_timeout` for lent connections to come back (each is closed on
    /// return), and returns once every connection is closed or the time is up.
    ///
    /// # Cancel safety
    /// Cancel-safe: the pool is closed by the time the first poll returns;
    /// only the waiting is abandoned.
    pub async fn close(&self) {
        let shared = self.shared();
        shut_down(shared);
        let deadline = Instant::now() + shared.config.close_timeout;
        loop {
            // Register before checking, so a return between the check and
            // the wait is not missed.
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let counts = shared.slots.lock().counts();
            if counts.active == 0
                && counts.connecting == 0
                && counts.silent == 0
                && shared.goodbyes() == 0
            {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(
                    target: TARGET,
                    still_lent = counts.active,
                    "close timed out waiting for lent connections"
                );
                return;
            }
        }
    }

    /// Retires every connection: idle ones are closed now, lent ones when
    /// they come back, and none opened before this call is lent again. For
    /// after a failover or a credential rotation (give the manager the new
    /// settings first, if it reads them from shared state). The pool stays
    /// open; the housekeeper refills `min_idle` with fresh connections.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use vigil::{backend::sqlx::SqliteManager, Pool, Pooled};
    ///
    /// let pool = Pool::builder(SqliteManager::from_url("sqlite::memory:").unwrap())
    ///     .build()
    ///     .unwrap();
    /// let before = Pooled::id(&pool.get().await.unwrap());
    /// // The primary failed over (or the password was rotated):
    /// pool.retire_all();
    /// let after = Pooled::id(&pool.get().await.unwrap());
    /// assert_ne!(before, after, "nothing opened before retire_all is lent again");
    /// # });
    /// ```
    pub fn retire_all(&self) {
        self.shared().retire_all();
    }

    /// How long the least recently used idle connection has been idle;
    /// `None` when no connection is idle. Takes the pool's lock briefly.
    /// Lets a caller that manages several pools (such as
    /// [`KeyedPool`](crate::keyed::KeyedPool)) pick which pool to shrink.
    pub fn oldest_idle_for(&self) -> Option<Duration> {
        let last_io = self.shared().slots.lock().oldest_idle()?;
        Some(Instant::now().saturating_duration_since(last_io))
    }

    /// Closes the least recently used idle connection now (counted with
    /// reason `closed`) and returns once it is closed, so that whatever it
    /// held outside the pool (a slot under a global cap, a server session)
    /// is free. Returns `false` when no connection was idle. Lent
    /// connections and the pool's settings are untouched; the pool may open
    /// a new connection later on demand.
    ///
    /// # Cancel safety
    /// Cancel-safe: the connection leaves the idle set before the first
    /// await; dropping the future mid-goodbye drops the connection without
    /// the goodbye (it is still closed, never lent again).
    pub async fn close_oldest_idle(&self) -> bool {
        let shared = self.shared();
        // Popped under the lock in one step: no checkout can take it after this.
        let Some(conn) = shared.slots.lock().pop_oldest() else {
            return false;
        };
        shared.note_retired(&conn.meta, Reason::Closed);
        shared.close_raw(conn.into_raw()).await;
        true
    }

    /// [`get`](Pool::get) for threads outside the async runtime (a blocking
    /// library, a thread pool): blocks the calling thread until a connection
    /// is lent. The returned guard may be dropped on any thread.
    ///
    /// # Errors
    /// [`BlockingError::Get`] with what [`get`](Pool::get) says, and
    /// [`BlockingError::InRuntime`] when called
    /// on a thread inside a tokio runtime, where blocking would stall the
    /// runtime (from `spawn_blocking`, use
    /// `tokio::runtime::Handle::current().block_on(pool.get())`).
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// use vigil::{backend::sqlx::SqliteManager, BlockingError, Pool, Pooled};
    ///
    /// let rt = tokio::runtime::Runtime::new().unwrap();
    /// let manager = SqliteManager::from_url("sqlite::memory:").unwrap();
    /// let pool = rt.block_on(async { Pool::builder(manager).build() }).unwrap();
    /// // A plain thread, such as a blocking library's worker:
    /// let worker = std::thread::spawn({
    ///     let pool = pool.clone();
    ///     move || Pooled::id(&pool.get_blocking().expect("a connection"))
    /// });
    /// assert!(worker.join().unwrap() > 0);
    /// // On a runtime thread it refuses instead of stalling the runtime:
    /// let refused = rt.block_on(async { pool.get_blocking().map(drop) });
    /// assert!(matches!(refused, Err(BlockingError::InRuntime)));
    /// # }
    /// ```
    #[track_caller]
    pub fn get_blocking(&self) -> Result<Pooled<M>, BlockingError<M::Error>> {
        if Handle::try_current().is_ok() {
            return Err(BlockingError::InRuntime);
        }
        let site = Location::caller();
        Ok(self.shared().runtime().block_on(self.get_at(site, None))?)
    }

    /// Changes `max_size` while the pool runs (HikariCP's and deadpool's
    /// `resize`): to follow a database's `max_connections` as instances
    /// come and go, or to shed load. Growing serves callers waiting in line
    /// at once. Shrinking closes idle connections above the new size now
    /// (least recently used first, counted `closed`) and lent ones as they
    /// come back, until the pool is within it; no caller is served beyond
    /// the new size meanwhile. [`State::max_size`] (and the metrics) follow
    /// at once; [`Pool::config`] keeps the size the pool was built with.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use vigil::{backend::sqlx::SqliteManager, Pool};
    ///
    /// let pool = Pool::builder(SqliteManager::from_url("sqlite::memory:").unwrap())
    ///     .max_size(2)
    ///     .build()
    ///     .unwrap();
    /// let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    /// pool.resize(3).unwrap();
    /// let c = pool.get().await.unwrap(); // would have waited at 2
    /// pool.resize(1).unwrap();
    /// drop((a, b, c)); // two are closed on the way back, one kept
    /// assert_eq!((pool.state().max_size, pool.state().open), (1, 1));
    /// # });
    /// ```
    ///
    /// # Errors
    /// A [`ConfigError`](crate::ConfigError) naming `max_size` when it is 0,
    /// above [`Config::MAX_SIZE`], or below `min_idle`; the pool is unchanged.
    pub fn resize(&self, max_size: usize) -> Result<(), crate::ConfigError> {
        let shared = self.shared();
        crate::config::count("max_size", max_size)?;
        if max_size < shared.config.min_idle {
            return Err(crate::config::invalid(
                "max_size",
                format!(
                    "{max_size} is smaller than min_idle ({})",
                    shared.config.min_idle
                ),
            ));
        }
        let mut wake = Vec::new();
        let (surplus, old) = {
            let mut slots = shared.slots.lock();
            let old = slots.counts().capacity;
            (slots.resize(max_size, &mut wake), old)
        };
        // Outside the lock: a woken caller takes it at once.
        for waker in wake {
            waker.wake();
        }
        for conn in surplus {
            shared.retire(conn, Reason::Closed);
        }
        // info: an operator's decision, rare, and worth seeing in the log.
        tracing::info!(target: TARGET, from = old, to = max_size, "pool resized");
        shared.changed.notify_waiters();
        Ok(())
    }

    /// Whether [`close`](Pool::close) was called (or every handle dropped).
    pub fn is_closed(&self) -> bool {
        self.shared().slots.lock().is_closed()
    }
}

/// The `vigil.acquire` span's `last_step`: how far the checkout went.
pub(super) fn step(phase: TimeoutPhase) -> &'static str {
    match phase {
        TimeoutPhase::WaitingForConnection => "waiting",
        TimeoutPhase::Validating => "validating",
        TimeoutPhase::Connecting => "connecting",
    }
}

/// The `vigil.acquire` span's `outcome`.
pub(super) fn outcome<T>(result: &Result<T, Stop>) -> &'static str {
    match result {
        Ok(_) => "lent",
        Err(Stop::TimedOut) => "timed_out",
        Err(Stop::Closed) => "closed",
        Err(Stop::Busy) => "busy",
    }
}

/// Reads a pool's state through a weak reference, type-erased so pools with
/// different managers can share one exporter.
#[cfg(any(feature = "metrics", feature = "otel"))]
pub(crate) struct Observer {
    pub(crate) name: String,
    pub(crate) state: Box<dyn Fn() -> Option<State> + Send + Sync>,
    #[cfg_attr(not(feature = "metrics-server"), allow(dead_code))]
    pub(crate) connections: Box<dyn Fn() -> Option<Vec<ConnectionInfo>> + Send + Sync>,
}

fn connections_of<M: Manager>(shared: &Shared<M>) -> Vec<ConnectionInfo> {
    let (idle, active) = shared.slots.lock().snapshot();
    let now = Instant::now();
    let idle = idle.into_iter().map(|m| ConnectionInfo {
        id: m.id,
        state: ConnectionState::Idle,
        age: now.saturating_duration_since(m.created),
        idle_for: Some(now.saturating_duration_since(m.last_io)),
        uses: m.uses,
        held_for: None,
        borrowed_at: None,
        server_idle_timeout: m.server_idle,
    });
    let active = active.into_iter().map(|a| {
        let (state, site) = match a.activity {
            Activity::Lent(site) => (ConnectionState::Lent, Some(site)),
            Activity::Opening => (ConnectionState::Opening, None),
            Activity::Keepalive => (ConnectionState::Keepalive, None),
            Activity::Returning => (ConnectionState::Returning, None),
        };
        ConnectionInfo {
            id: a.id,
            state,
            age: now.saturating_duration_since(a.created),
            idle_for: None,
            uses: a.uses,
            held_for: Some(now.saturating_duration_since(a.since)),
            borrowed_at: site,
            server_idle_timeout: a.server_idle,
        }
    });
    idle.chain(active).collect()
}

fn state_of<M: Manager>(shared: &Shared<M>) -> State {
    let (counts, free) = {
        let slots = shared.slots.lock();
        (slots.counts(), slots.free())
    };
    let s = &shared.stats;
    let server_ms = s.server_idle_timeout_ms.load(Relaxed);
    State {
        max_size: counts.capacity,
        available: free,
        min_idle: shared.config.min_idle,
        open: counts.idle + counts.active,
        idle: counts.idle,
        active: counts.active,
        connecting: counts.connecting,
        pending: s.pending.load(Relaxed),
        created: s.created.load(Relaxed),
        connect_errors: s.connect_errors.load(Relaxed),
        closed: s.closed_counts(),
        acquire_timeouts: s.acquire_timeouts.load(Relaxed),
        validations_ok: s.validations_ok.load(Relaxed),
        validations_failed: s.validations_failed.load(Relaxed),
        validations_skipped: s.validations_skipped(),
        validations_hedged: s.validations_hedged.load(Relaxed),
        presumed_dead: counts.silent,
        queries_cancelled: s.queries_cancelled.load(Relaxed),
        idle_cutoff: shared.evidence.idle_cutoff(&shared.config),
        server_idle_timeout: match server_ms {
            u64::MAX => None,
            0 => Some(None),
            ms => Some(Some(Duration::from_millis(ms))),
        },
        leaks_suspected: s.leaks_suspected.load(Relaxed),
        rejected: s.rejected.load(Relaxed),
        retries: s.retries.load(Relaxed),
        retries_role_changed: s.retries_role_changed.load(Relaxed),
        acquire_duration: s.acquire_snapshot(),
        usage_duration: s.usage.snapshot(),
        connect_duration: s.connect.snapshot(),
    }
}

/// Builds a [`Pool`]. Setters never panic; [`build`](Builder::build) checks
/// every setting and names the bad one.
#[must_use]
pub struct Builder<M: Manager> {
    manager: M,
    config: Config,
    hooks: Hooks<M::Connection, M::Error>,
}

impl<M: Manager> fmt::Debug for Builder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl<M: Manager> Builder<M> {
    /// Replaces every setting with `config` (say, read from a file).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    setter!(/// See [`Config::max_size`]. Default 10.
        max_size: usize);
    setter!(/// See [`Config::min_idle`]. Default 0.
        min_idle: usize);
    setter!(/// See [`Config::acquire_timeout`]. Default 30 s.
        acquire_timeout: Duration);
    setter!(/// See [`Config::connect_timeout`]. Default 10 s.
        connect_timeout: Duration);
    setter!(/// See [`Config::validation_timeout`]. Default 5 s.
        validation_timeout: Duration);
    setter!(/// See [`Config::max_lifetime`]. Default 30 min.
        max_lifetime: Option<Duration>);
    setter!(/// See [`Config::idle_timeout`]. Default 10 min.
        idle_timeout: Option<Duration>);
    setter!(/// See [`Config::keepalive_interval`]. Default 120 s.
        keepalive_interval: Option<Duration>);
    setter!(/// See [`Config::validation`]. Default `IdleFor(500 ms)`.
        validation: Validation);
    setter!(/// See [`Config::role_check_interval`]. Default 2 s.
        role_check_interval: Duration);
    setter!(/// See [`Config::server_timeout_margin`]. Default 5 s.
        server_timeout_margin: Duration);
    setter!(/// See [`Config::server_idle_timeout_override`]. Default `None` (ask the server).
        server_idle_timeout_override: Option<Option<Duration>>);
    setter!(/// See [`Config::reset_on_return`]. Default `false`.
        reset_on_return: bool);
    setter!(/// See [`Config::hedge`]. Default [`Hedge::Auto`](crate::Hedge::Auto).
        hedge: crate::config::Hedge);
    setter!(/// See [`Config::idle_cutoff`]. Default [`IdleCutoff::Learn`](crate::IdleCutoff::Learn).
        idle_cutoff: crate::config::IdleCutoff);
    setter!(/// See [`Config::verify_on_return`]. Default [`VerifyOnReturn::Auto`](crate::VerifyOnReturn::Auto).
        verify_on_return: crate::config::VerifyOnReturn);
    setter!(/// See [`Config::max_concurrent_connects`]. Default 2.
        max_concurrent_connects: usize);
    setter!(/// See [`Config::close_timeout`]. Default 30 s.
        close_timeout: Duration);
    setter!(/// See [`Config::leak_threshold`]. Default `None`.
        leak_threshold: Option<Duration>);
    setter!(/// See [`Config::max_waiters`]. Default `None` (no limit).
        max_waiters: Option<usize>);

    /// See [`Config::name`]. Default `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Runs `hook` on every new session before it is first lent, and again
    /// after each full reset (`reset_on_return`,
    /// [`Pooled::reset_on_return`]), which undoes what it set: the place
    /// for `SET search_path`, `SET application_name`, `SET statement_timeout`
    /// or registering types. The pool reads the server's idle timeout after
    /// it, so a hook that changes it is obeyed.
    ///
    /// An error fails that connect: it is counted and backed off like the
    /// driver's own connect errors, and reported as the last connect error
    /// with the hook named ([`Error::Timeout`], [`ConnectError::Hook`]).
    /// It runs within `connect_timeout`. Default: none.
    ///
    /// ```no_run
    /// # #[cfg(feature = "tokio-postgres")]
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use vigil::{backend::tokio_postgres::TokioPgManager, Pool};
    ///
    /// let pool = Pool::builder(TokioPgManager::from_url("postgres://postgres@127.0.0.1/test")?)
    ///     .after_connect(|conn, _meta| {
    ///         Box::pin(async move { conn.batch_execute("SET search_path TO app, public").await })
    ///     })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn after_connect(mut self, hook: impl SetUpHook<M::Connection, M::Error>) -> Self {
        self.hooks.after_connect = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` on a connection that has been lent before, just before it
    /// is lent again (after the pool's own liveness checks): `Ok(false)` or
    /// an error refuses it, and it is closed (reason
    /// [`Refused`](Reason::Refused)) and the checkout goes on to the next
    /// idle connection or a new one. A connection opened for this very
    /// checkout (or never lent yet) is not asked: [`after_connect`](Self::after_connect)
    /// has just run on it. It runs within `acquire_timeout`; cancelled with
    /// the `get()`, the connection it was given is closed. Default: none.
    pub fn before_acquire(mut self, hook: impl VetHook<M::Connection, M::Error>) -> Self {
        self.hooks.before_acquire = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` on every connection its borrower gave back, after the
    /// pool's own cleaning (rollback, reset, ping) and before it is filed
    /// idle: `Ok(false)` or an error closes it (reason
    /// [`Refused`](Reason::Refused)). It runs in the return's own task,
    /// within `validation_timeout`, holding the connection's slot. A
    /// connection the pool retires on its way back (broken, expired) is
    /// not asked. Default: none.
    pub fn after_release(mut self, hook: impl VetHook<M::Connection, M::Error>) -> Self {
        self.hooks.after_release = Some(Arc::new(hook));
        self
    }

    /// Every hook at once (a keyed pool's sub-pools share their builder's).
    pub(crate) fn hooks(mut self, hooks: Hooks<M::Connection, M::Error>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Checks the settings and starts the pool without opening a connection
    /// (the housekeeper opens `min_idle` in the background). Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// [`BuildError::Config`] naming the first invalid setting;
    /// [`BuildError::NoRuntime`] outside a tokio runtime.
    pub fn build(self) -> Result<Pool<M>, BuildError> {
        self.config.validate()?;
        let runtime = Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        Ok(self.build_in(runtime))
    }

    /// Starts the pool on `runtime`, with settings already validated (the
    /// keyed pool's sub-pools: their template was checked once, by its
    /// builder).
    pub(crate) fn build_in(self, runtime: Handle) -> Pool<M> {
        debug_assert!(
            self.config.validate().is_ok(),
            "build_in is given validated settings"
        );
        let shared = Arc::new(Shared::new(
            self.manager,
            self.config,
            self.hooks,
            runtime.clone(),
        ));
        runtime.spawn(housekeeping::housekeeper(Arc::clone(&shared)));
        runtime.spawn(deadlines::watch(Arc::clone(&shared)));
        Pool {
            handle: Arc::new(Owner { shared }),
        }
    }

    /// Like [`build`](Builder::build), then makes one connect attempt
    /// (bounded by `connect_timeout`) and keeps the connection idle, so a
    /// wrong URL, host or password fails here, at once, with the driver's
    /// error — not after retrying for `acquire_timeout`.
    ///
    /// # Errors
    /// [`ConnectError::Build`] for invalid settings; [`ConnectError::Connect`]
    /// with the driver's error; [`ConnectError::NoAnswer`] when the server did
    /// not answer within `connect_timeout`.
    ///
    /// # Cancel safety
    /// Dropping the future drops the new pool, which closes it.
    pub async fn connect(self) -> Result<Pool<M>, ConnectError<M::Error>> {
        let pool = self.build()?;
        pool.shared().open_first().await?;
        Ok(pool)
    }
}
