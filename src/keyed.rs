//! Keyed pools: one sub-pool per key (a tenant, a database, a login), under
//! one global cap on open connections.
//!
//! A web API that logs into its backend with each user's own credentials
//! keeps one [`Pool`] per key. [`KeyedPool::get`] creates the key's sub-pool
//! on first use, with a manager made by your factory and the settings of a
//! template [`Config`] (`max_size` is then the per-key limit). Each sub-pool
//! is a full vigil pool: a connection is validated before it is lent again
//! and comes back when its guard is dropped.
//!
//! # The global cap
//!
//! The cap ([`KeyedBuilder::max_open`]) is a [`tokio::sync::Semaphore`]
//! with one permit per connection the server may see. The sub-pools do not
//! know about it: each gets a wrapping manager whose `connect` first takes a
//! permit, and whose connection type carries it. The permit is released
//! when the connection is dropped, after the polite goodbye, so a closed
//! session's slot is free only once the server was told. Lent, idle and
//! connecting connections of every key hold a permit each; nothing else
//! does. So the count of open connections can never exceed the cap, whatever
//! path a connection takes out of a sub-pool (retired, detached, evicted,
//! closed with its key).
//!
//! When no permit is free, a connect made for a waiting caller:
//! 1. queues for a permit (tokio's semaphore is FIFO: callers of every key
//!    are served in arrival order, and each key has at most
//!    `max_concurrent_connects` connects in the queue at once, so a busy key
//!    cannot crowd out the others);
//! 2. closes an idle connection to make room: the one idle longest among the
//!    other keys, or of its own key if only those are idle (a race: one came
//!    back after the checkout looked). Its permit goes to the head of the
//!    queue. At most one eviction is in flight per queued connect, and
//!    queued connects look again whenever a connection comes back;
//! 3. gives up when the caller does (its `acquire_timeout`, or the future is
//!    dropped): the caller gets vigil's [`Error::Timeout`] (phase
//!    [`WaitingForConnection`](crate::TimeoutPhase::WaitingForConnection)),
//!    and the abandoned connect leaves the queue instead of opening a
//!    connection nobody asked for.
//!
//! Background connects (`min_idle`, replacing a connection past its
//! lifetime) only take a free permit; under a full cap they are skipped.
//! The wait for a permit happens inside the sub-pool's connect phase, so the
//! sub-pools run with `connect_timeout + acquire_timeout` as their connect
//! bound, and the template's `connect_timeout` is applied to the backend's
//! own connect (and timeout discovery) inside the wrapper.
//!
//! # Idle keys
//!
//! A key with nothing lent, nobody waiting, and no checkout or return for
//! [`key_idle_timeout`](KeyedBuilder::key_idle_timeout) is dropped by a
//! background sweep: its idle connections are closed, its map entry and
//! manager freed. The next `get` for it starts afresh.
//!
//! # Keys and secrets
//!
//! A key is anything that implements [`PoolKey`]: a public label (may appear
//! in logs, `Debug` and metric labels) and secret identity (fed to a
//! SHA-256 digest, salted per keyed pool). The map holds the 32-byte digest,
//! never the key, so two keys share a sub-pool only if their whole identity
//! is equal (no 64-bit hash collision can lend user A's session to user B).
//! [`Credentials`] is a ready-made key. Logs name keys by a small number and
//! their label; `Debug` of a key, the pool, a guard or an error shows no
//! secret. The factory's manager does hold what it needs to log in (vigil's
//! managers keep the password out of their `Debug`).
//!
//! # Metrics
//!
//! With the `metrics` feature, [`KeyedBuilder::metrics`] exports sub-pools
//! as `pool="{name}/{label}"`, only for keys with a label and only for the
//! first `max_keys` of them alive at once. Keys beyond the bound, and keys
//! without a label, are not exported individually; [`KeyedPool::state`]
//! counts them. A dropped key frees its place.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use vigil::keyed::{Credentials, KeyedPool};
//! # use vigil::Manager;
//! # #[derive(Debug)] struct Login(String);
//! # impl Manager for Login { type Connection = String; type Error = std::io::Error;
//! #   async fn connect(&self) -> Result<String, std::io::Error> { Ok(self.0.clone()) }
//! #   async fn is_valid(&self, _: &mut String) -> Result<(), std::io::Error> { Ok(()) } }
//!
//! // In real code the factory returns, say, a `PgManager` for the key's login.
//! let pool = KeyedPool::builder(|key: &Credentials| Login(key.user().to_owned()))
//!     .max_size_per_key(4)
//!     .max_open(2) // at most 2 sessions on the server, all keys together
//!     .acquire_timeout(Duration::from_secs(5))
//!     .build()
//!     .unwrap();
//!
//! let alice = Credentials::new("alice", "s3cret").with_tenant("acme");
//! let bob = Credentials::new("bob", "hunter2");
//! let a = pool.get(&alice).await.unwrap();
//! let b = pool.get(&bob).await.unwrap();
//! assert_eq!((a.as_str(), b.as_str()), ("alice", "bob"));
//! drop(b); // back to bob's sub-pool, idle
//!
//! // The cap is reached: alice's second connection closes bob's idle one.
//! let a2 = pool.get(&alice).await.unwrap();
//! assert_eq!(pool.state().open, 2);
//! assert!(!format!("{alice:?} {pool:?}").contains("s3cret"));
//! # drop((a, a2)); }
//! ```
//!
//! With PostgreSQL, one login per key (`no_run`: needs a server):
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sqlx::postgres::PgConnectOptions;
//! use vigil::backend::sqlx::PgManager;
//! use vigil::keyed::{Credentials, KeyedPool};
//!
//! let pool = KeyedPool::builder(|key: &Credentials| {
//!     PgManager::new(
//!         PgConnectOptions::new()
//!             .host("127.0.0.1")
//!             .username(key.user())
//!             .password(key.password())
//!             .database(key.database().unwrap_or("app")),
//!     )
//! })
//! .max_open(50)
//! .build()?;
//! let login = Credentials::new("alice", "from-the-request").with_database("app");
//! let mut conn = pool.get(&login).await?;
//! let me: String = sqlx::query_scalar("SELECT current_user").fetch_one(&mut *conn).await?;
//! assert_eq!(me, "alice");
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use tokio::runtime::Handle;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{timeout, Instant};

use crate::config::Config;
use crate::error::{BuildError, ConfigError, Error, TimeoutPhase};
use crate::manager::{Manager, ServerTimeouts};
use crate::pool::{Pool, Pooled};
use crate::stats::State;

/// Tracing target for every event of keyed pools.
const TARGET: &str = "vigil::keyed";

/// A connect queued for the cap looks for something to evict at least this
/// often, besides each time a connection comes back: a return that needs a
/// cleaning round trip reaches the idle set a little after its guard drops.
const CAP_RECHECK: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------- keys

/// A key of a [`KeyedPool`]: a public label and a secret identity.
///
/// Two keys share a sub-pool exactly when their labels and every field
/// they feed to [`identify`](PoolKey::identify) are equal.
pub trait PoolKey: Send + Sync {
    /// A name that may appear in logs, `Debug` output and metric labels
    /// (say, a tenant). `None` (the default) keeps the key anonymous: logs
    /// then name it by a number only, and it is never exported as metrics.
    fn label(&self) -> Option<&str> {
        None
    }

    /// Feeds everything that tells this key apart (user, password,
    /// database, host…) to `id`, one [`field`](Identity::field) each.
    fn identify(&self, id: &mut Identity);
}

/// The digest a [`PoolKey`] is stored under: SHA-256 over a per-pool random
/// salt, the label and each field, every field length-prefixed (so
/// `("ab", "c")` and `("a", "bc")` differ). Its `Debug` shows nothing.
pub struct Identity(Sha256);

impl Identity {
    /// Adds one field of the key's identity.
    pub fn field(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        let bytes = bytes.as_ref();
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// Adds an optional field; `None` and `Some("")` differ.
    pub fn optional(&mut self, bytes: Option<impl AsRef<[u8]>>) -> &mut Self {
        match bytes {
            Some(b) => self.field([1]).field(b),
            None => self.field([0]),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity { .. }")
    }
}

/// What the key map holds: never the key itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Digest([u8; 32]);

/// A login as a [`PoolKey`]: user, password, optional database, and an
/// optional tenant name used as the public label.
///
/// `Debug` shows tenant, user and database; the password never.
#[derive(Clone)]
pub struct Credentials {
    tenant: Option<String>,
    user: String,
    password: String,
    database: Option<String>,
}

impl Credentials {
    /// A login with `user` and `password`, no database, no tenant.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            tenant: None,
            user: user.into(),
            password: password.into(),
            database: None,
        }
    }

    /// The public name of this key (logs, metric labels). Default: none.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The database to log into. Default: none (the server's default).
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// The tenant name, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password, for the factory that builds the key's manager.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The database, if any.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl PoolKey for Credentials {
    fn label(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    fn identify(&self, id: &mut Identity) {
        id.field(&self.user)
            .field(&self.password)
            .optional(self.database.as_deref());
    }
}

// ---------------------------------------------------------------- builder

type Factory<K, M> = Box<dyn Fn(&K) -> M + Send + Sync>;

/// Builds a [`KeyedPool`]. Setters never panic; [`build`](KeyedBuilder::build)
/// checks every setting and names the bad one.
#[must_use]
pub struct KeyedBuilder<K, M: Manager> {
    factory: Factory<K, M>,
    template: Config,
    name: String,
    max_open: usize,
    key_idle_timeout: Duration,
    #[cfg(feature = "metrics")]
    metrics: Option<(crate::metrics::Metrics, usize)>,
}

impl<K, M: Manager> fmt::Debug for KeyedBuilder<K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("name", &self.name)
            .field("max_open", &self.max_open)
            .field("key_idle_timeout", &self.key_idle_timeout)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl<K: PoolKey, M: Manager> KeyedBuilder<K, M> {
    /// The settings of every sub-pool (its `name` is replaced by
    /// `{name}/{label}`, or `{name}/key{n}` for a key without a label).
    /// Default: [`Config::default`].
    pub fn template(mut self, config: Config) -> Self {
        self.template = config;
        self
    }

    /// Most connections of one key: the template's `max_size`. Default 10.
    pub fn max_size_per_key(mut self, max_size: usize) -> Self {
        self.template.max_size = max_size;
        self
    }

    /// The template's `acquire_timeout`: the longest a `get` waits, for its
    /// key's slot and for the global cap together. Default 30 s.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.template.acquire_timeout = timeout;
        self
    }

    /// Most connections open at once over all keys (lent, idle and being
    /// opened). Default 50: half of PostgreSQL's default `max_connections`,
    /// leaving room for other clients and for administrators.
    pub fn max_open(mut self, max_open: usize) -> Self {
        self.max_open = max_open;
        self
    }

    /// Drop a key (close its idle connections, forget its manager) after
    /// this long with nothing lent, nobody waiting and no use. Default
    /// 10 min, the template's default `idle_timeout`.
    pub fn key_idle_timeout(mut self, timeout: Duration) -> Self {
        self.key_idle_timeout = timeout;
        self
    }

    /// The keyed pool's name: the prefix of its sub-pools' names (their
    /// `pool` metric label). Default `"keyed"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Exports the sub-pools of labelled keys through `metrics`, as
    /// `pool="{name}/{label}"`, at most `max_keys` at once (the rest are
    /// not exported; see the [module docs](self)). Default: none exported.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: &crate::metrics::Metrics, max_keys: usize) -> Self {
        self.metrics = Some((metrics.clone(), max_keys));
        self
    }

    /// Checks the settings and starts the key sweep. Opens no connection.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`BuildError::Config`] naming the first invalid setting (of the
    /// template, or `max_open`, `key_idle_timeout`, `name`);
    /// [`BuildError::NoRuntime`] outside a tokio runtime.
    pub fn build(self) -> Result<KeyedPool<K, M>, BuildError> {
        self.template.validate()?;
        let invalid = |setting, reason: &str| ConfigError {
            setting,
            reason: reason.to_owned(),
        };
        if self.max_open == 0 {
            return Err(invalid("max_open", "must be at least 1").into());
        }
        if self.key_idle_timeout.is_zero() {
            return Err(invalid("key_idle_timeout", "must be greater than zero").into());
        }
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty").into());
        }
        let runtime = Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let shared = Arc::new(Shared {
            name: self.name,
            template: self.template,
            max_open: self.max_open,
            key_idle_timeout: self.key_idle_timeout,
            salt: rand::random(),
            keys: Mutex::new(HashMap::new()),
            cap: Arc::new(Semaphore::new(self.max_open)),
            changed: Notify::new(),
            eviction: Mutex::new(Eviction::default()),
            next_key_id: AtomicU64::new(1),
            epoch: Instant::now(),
            closed: AtomicBool::new(false),
            runtime: runtime.clone(),
            #[cfg(feature = "metrics")]
            metrics: self.metrics.map(|(metrics, max)| Exported {
                metrics,
                max,
                used: AtomicUsize::new(0),
            }),
        });
        let every =
            (self.key_idle_timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
        runtime.spawn(sweeper(Arc::downgrade(&shared), every));
        Ok(KeyedPool {
            handle: Arc::new(Owner {
                shared,
                factory: self.factory,
            }),
        })
    }
}

// ---------------------------------------------------------------- the pool

/// One [`Pool`] per key, under a global cap on open connections. See the
/// [module docs](self).
///
/// Cheap to clone; clones share the pools. When the last clone is dropped
/// every sub-pool closes.
pub struct KeyedPool<K, M: Manager> {
    handle: Arc<Owner<K, M>>,
}

struct Owner<K, M: Manager> {
    shared: Arc<Shared<M>>,
    factory: Factory<K, M>,
}

impl<K, M: Manager> Drop for Owner<K, M> {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

impl<K, M: Manager> Clone for KeyedPool<K, M> {
    fn clone(&self) -> Self {
        KeyedPool {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<K, M: Manager> fmt::Debug for KeyedPool<K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedPool")
            .field("name", &self.handle.shared.name)
            .field("state", &self.handle.shared.state())
            .finish_non_exhaustive()
    }
}

/// A snapshot of a [`KeyedPool`] as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedState {
    /// Keys with a sub-pool.
    pub keys: usize,
    /// Connections open over all keys (each holds a unit of the cap).
    pub open: usize,
    /// The global cap (`max_open`).
    pub max_open: usize,
    /// Connects queued for a unit of the cap.
    pub waiting: usize,
    /// Keys whose sub-pool is exported as metrics.
    pub exported_keys: usize,
}

impl<K: PoolKey, M: Manager> KeyedPool<K, M> {
    /// Starts a [`KeyedBuilder`]; `factory` makes the manager of a key the
    /// first time it is used (and again after the key was dropped as idle).
    /// It runs outside every lock but should be cheap: it is called on the
    /// checkout path.
    pub fn builder(factory: impl Fn(&K) -> M + Send + Sync + 'static) -> KeyedBuilder<K, M> {
        KeyedBuilder {
            factory: Box::new(factory),
            template: Config::default(),
            name: "keyed".to_owned(),
            max_open: 50,
            key_idle_timeout: Duration::from_secs(10 * 60),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Lends a live connection of `key`'s sub-pool, creating the sub-pool on
    /// first use. Within the key, as [`Pool::get`]; when the key needs a new
    /// connection and the global cap is reached, closes the idle connection
    /// of another key idle longest, or waits (first come, first served over
    /// all keys) for one to close.
    ///
    /// # Errors
    /// - [`Error::Timeout`] when the template's `acquire_timeout` runs out;
    ///   phase `WaitingForConnection` when waiting for the global cap. It
    ///   carries the key's last connect error (wrong password: the server's
    ///   "access denied", which names the user, never the password).
    /// - [`Error::Closed`] when the keyed pool is closed before or while waiting.
    /// - [`Error::Busy`] as with [`Pool::get`] (the template's `max_waiters`).
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`Pool::get`]: dropping the future gives back its
    /// place in both queues; a connect it queued for the cap gives up too.
    pub async fn get(&self, key: &K) -> Result<KeyedPooled<M>, Error<M::Error>> {
        let shared = &self.handle.shared;
        // Holds the key alive (the sweep skips keys with demand) and lets a
        // connect queued for the cap see when nobody waits any more. Dropped
        // after the guard counts as lent, so the key is never unused between.
        let (entry, demand) = self.entry(key)?;
        match entry.pool.get().await {
            Ok(pooled) => {
                let conn = KeyedPooled::new(pooled, &entry.usage, shared);
                drop(demand);
                Ok(conn)
            }
            Err(e) => Err(map_error(e, &entry.usage)),
        }
    }

    /// The state of `key`'s sub-pool, or `None` when it has none.
    pub fn key_state(&self, key: &K) -> Option<State> {
        let digest = self.handle.shared.digest(key);
        let keys = self.handle.shared.keys.lock();
        keys.get(&digest).map(|e| e.pool.state())
    }

    /// Drops `key` now (after a logout or a password change): its idle
    /// connections are closed, lent ones when they come back. Returns
    /// whether it had a sub-pool.
    pub fn remove(&self, key: &K) -> bool {
        let shared = &self.handle.shared;
        let digest = shared.digest(key);
        let removed = shared.keys.lock().remove(&digest);
        match removed {
            Some(entry) => {
                shared.forget(&entry, "removed");
                true
            }
            None => false,
        }
    }

    /// A snapshot of the whole keyed pool.
    pub fn state(&self) -> KeyedState {
        self.handle.shared.state()
    }

    /// Closes every sub-pool: stops lending (waiters and later callers get
    /// [`Error::Closed`]), closes idle connections, and waits up to the
    /// template's `close_timeout` for lent ones to come back.
    ///
    /// # Cancel safety
    /// Cancel-safe: everything is closed by the time the first poll
    /// returns; only the waiting is abandoned.
    pub async fn close(&self) {
        let entries = self.handle.shared.shut_down();
        let mut closing = tokio::task::JoinSet::new();
        for entry in entries {
            closing.spawn(async move { entry.pool.close().await });
        }
        while closing.join_next().await.is_some() {}
    }

    /// Finds or creates `key`'s entry and counts the caller as waiting on it.
    fn entry(&self, key: &K) -> Result<Claimed<M>, Error<M::Error>> {
        let shared = &self.handle.shared;
        let digest = shared.digest(key);
        if let Some(found) = shared.find(&digest)? {
            return Ok(found);
        }
        // The factory runs outside the lock; a racing caller may insert
        // first, and then this manager is dropped unused.
        let manager = (self.handle.factory)(key);
        let mut keys = shared.keys.lock();
        if shared.closed.load(SeqCst) {
            return Err(Error::Closed);
        }
        if let Some(entry) = keys.get(&digest) {
            let demand = Demand::new(&entry.usage);
            return Ok((Arc::clone(entry), demand));
        }
        let entry = Arc::new(shared.new_entry(manager, key.label())?);
        let demand = Demand::new(&entry.usage);
        keys.insert(digest, Arc::clone(&entry));
        Ok((entry, demand))
    }
}

// ---------------------------------------------------------------- shared state

struct Shared<M: Manager> {
    name: String,
    template: Config,
    max_open: usize,
    key_idle_timeout: Duration,
    salt: [u8; 32],
    keys: Mutex<HashMap<Digest, Arc<Entry<M>>>>,
    /// The global cap: one permit per open connection; see the module docs.
    cap: Arc<Semaphore>,
    /// Wakes connects queued for the cap: a connection came back or an
    /// eviction finished, so there may be something (else) to evict.
    changed: Notify,
    eviction: Mutex<Eviction>,
    next_key_id: AtomicU64,
    epoch: Instant,
    closed: AtomicBool,
    runtime: Handle,
    #[cfg(feature = "metrics")]
    metrics: Option<Exported>,
}

#[cfg(feature = "metrics")]
struct Exported {
    metrics: crate::metrics::Metrics,
    max: usize,
    used: AtomicUsize,
}

/// Connects queued for the cap, and evictions started for them. An
/// eviction is started only while `evicting < waiting`, so a crowd of
/// waiters woken together does not close more connections than it needs.
#[derive(Default)]
struct Eviction {
    waiting: usize,
    evicting: usize,
}

/// A key's entry, and the caller counted as waiting on it.
type Claimed<M> = (Arc<Entry<M>>, Demand);

struct Entry<M: Manager> {
    pool: Pool<Capped<M>>,
    usage: Arc<Usage>,
    exported: bool,
}

/// One key's counters, shared by its entry, its manager and its guards.
struct Usage {
    id: u64,
    label: Option<String>,
    /// Callers inside `KeyedPool::get` for this key.
    demand: AtomicUsize,
    /// Guards alive.
    lent: AtomicUsize,
    /// Connects of this key queued for the cap.
    cap_waiting: AtomicUsize,
    /// Last checkout or return, in ms since `epoch`.
    last_used_ms: AtomicU64,
    epoch: Instant,
    /// Notified when `demand` drops to zero.
    no_demand: Notify,
}

impl Usage {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.store(ms, Relaxed);
    }

    /// Nothing lent, nobody waiting, unused for `timeout`. Read under the
    /// key map's lock, where `demand` is raised, so a caller cannot slip in.
    fn is_unused_for(&self, timeout: Duration, now: Instant) -> bool {
        let idle_since = self.epoch + Duration::from_millis(self.last_used_ms.load(Relaxed));
        self.demand.load(SeqCst) == 0
            && self.lent.load(SeqCst) == 0
            && now.saturating_duration_since(idle_since) >= timeout
    }
}

/// A caller inside `get` for a key; dropping it wakes a connect queued for
/// the cap when it was the last one.
struct Demand(Arc<Usage>);

impl Demand {
    fn new(usage: &Arc<Usage>) -> Self {
        usage.demand.fetch_add(1, SeqCst);
        usage.touch();
        Demand(Arc::clone(usage))
    }
}

impl Drop for Demand {
    fn drop(&mut self) {
        if self.0.demand.fetch_sub(1, SeqCst) == 1 {
            self.0.no_demand.notify_waiters();
        }
    }
}

impl<M: Manager> Shared<M> {
    fn digest<K: PoolKey>(&self, key: &K) -> Digest {
        let mut id = Identity(Sha256::new());
        id.0.update(self.salt);
        id.optional(key.label());
        key.identify(&mut id);
        Digest(id.0.finalize().into())
    }

    fn find(&self, digest: &Digest) -> Result<Option<Claimed<M>>, Error<M::Error>> {
        let keys = self.keys.lock();
        if self.closed.load(SeqCst) {
            return Err(Error::Closed);
        }
        Ok(keys
            .get(digest)
            .map(|e| (Arc::clone(e), Demand::new(&e.usage))))
    }

    /// Builds a key's sub-pool. Called under the key map's lock (build is
    /// synchronous: it spawns the housekeeper and opens nothing).
    fn new_entry(
        self: &Arc<Self>,
        manager: M,
        label: Option<&str>,
    ) -> Result<Entry<M>, Error<M::Error>> {
        let id = self.next_key_id.fetch_add(1, Relaxed);
        let usage = Arc::new(Usage {
            id,
            label: label.map(str::to_owned),
            demand: AtomicUsize::new(0),
            lent: AtomicUsize::new(0),
            cap_waiting: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch: self.epoch,
            no_demand: Notify::new(),
        });
        usage.touch();
        let mut config = self.template.clone();
        config.name = match label {
            Some(label) => format!("{}/{label}", self.name),
            None => format!("{}/key{id}", self.name),
        };
        // The wait for the cap happens inside the sub-pool's connect phase:
        // it must not be cut short before the caller's own deadline (a
        // timed-out connect is retried from the back of the queue).
        config.connect_timeout = config
            .connect_timeout
            .saturating_add(config.acquire_timeout);
        let capped = Capped {
            inner: manager,
            keyed: Arc::downgrade(self),
            usage: Arc::clone(&usage),
            connect_timeout: self.template.connect_timeout,
        };
        let pool = Pool::builder(capped).config(config).build()?;
        let exported = self.export(&pool, label);
        // debug: a new key is routine; the label is public by contract.
        tracing::debug!(target: TARGET, key = id, label, exported, "key created");
        Ok(Entry {
            pool,
            usage,
            exported,
        })
    }

    #[cfg(feature = "metrics")]
    fn export(&self, pool: &Pool<Capped<M>>, label: Option<&str>) -> bool {
        let (Some(exp), Some(_)) = (&self.metrics, label) else {
            return false;
        };
        let claimed = exp
            .used
            .fetch_update(SeqCst, SeqCst, |n| (n < exp.max).then_some(n + 1))
            .is_ok();
        if claimed {
            exp.metrics.add(pool);
        }
        claimed
    }

    #[cfg(not(feature = "metrics"))]
    fn export(&self, _pool: &Pool<Capped<M>>, _label: Option<&str>) -> bool {
        false
    }

    /// After an entry left the map: frees its metrics place; dropping it
    /// (here or when the last caller lets go) closes the sub-pool.
    fn forget(&self, entry: &Entry<M>, why: &'static str) {
        #[cfg(feature = "metrics")]
        if let (true, Some(exp)) = (entry.exported, &self.metrics) {
            exp.used.fetch_sub(1, SeqCst);
        }
        tracing::debug!(
            target: TARGET,
            key = entry.usage.id,
            label = entry.usage.label.as_deref(),
            why,
            "key dropped"
        );
    }

    /// Stops everything: fails queued and later connects, empties the map.
    /// Returns the entries for `close` to wait on; dropping them closes them.
    fn shut_down(&self) -> Vec<Arc<Entry<M>>> {
        let entries: Vec<_> = {
            let mut keys = self.keys.lock();
            self.closed.store(true, SeqCst);
            keys.drain().map(|(_, e)| e).collect()
        };
        self.cap.close();
        for entry in &entries {
            self.forget(entry, "closed");
        }
        entries
    }

    fn state(&self) -> KeyedState {
        let keys = self.keys.lock();
        let open = if self.closed.load(SeqCst) {
            0
        } else {
            self.max_open.saturating_sub(self.cap.available_permits())
        };
        KeyedState {
            keys: keys.len(),
            open,
            max_open: self.max_open,
            waiting: self.eviction.lock().waiting,
            exported_keys: keys.values().filter(|e| e.exported).count(),
        }
    }

    /// The sweep: drops every key unused for `key_idle_timeout`.
    fn drop_idle_keys(&self) {
        let now = Instant::now();
        let mut removed = Vec::new();
        self.keys.lock().retain(|_, e| {
            let keep = !e.usage.is_unused_for(self.key_idle_timeout, now);
            if !keep {
                removed.push(Arc::clone(e));
            }
            keep
        });
        // Outside the lock: dropping a pool spawns the closing of its idle set.
        for entry in removed {
            self.forget(&entry, "idle");
        }
    }

    // ------------------------------------------------------------ the cap

    /// One unit of the cap for a connect of the key `usage`; see the module
    /// docs for the order of attempts.
    async fn obtain(
        self: &Arc<Self>,
        usage: &Arc<Usage>,
    ) -> Result<OwnedSemaphorePermit, CapError> {
        match Arc::clone(&self.cap).try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(CapError::Closed),
            Err(TryAcquireError::NoPermits) => {}
        }
        if usage.demand.load(SeqCst) == 0 {
            // A background connect (min_idle, a replacement): not worth
            // closing another key's connection or queueing ahead of callers.
            return Err(CapError::Full);
        }
        // Made before the first await: undone however this future ends.
        let _queued = Queued::enter(self, usage);
        // Our place in the FIFO queue, kept across every wake-up below:
        // fairness between keys is the semaphore's.
        let acquire = Arc::clone(&self.cap).acquire_owned();
        tokio::pin!(acquire);
        loop {
            // Registered before the checks, so a return or a departure
            // between a check and the wait is not missed.
            let changed = self.changed.notified();
            let gone = usage.no_demand.notified();
            tokio::pin!(changed, gone);
            changed.as_mut().enable();
            gone.as_mut().enable();
            if usage.demand.load(SeqCst) == 0 {
                tracing::debug!(target: TARGET, key = usage.id, "caller gone; leaving the cap queue");
                return Err(CapError::Abandoned);
            }
            self.evict_for(usage);
            tokio::select! {
                biased;
                permit = &mut acquire => return permit.map_err(|_| CapError::Closed),
                () = &mut gone => {}
                () = &mut changed => {}
                () = tokio::time::sleep(CAP_RECHECK) => {}
            }
        }
    }

    /// Starts closing one idle connection for a queued connect of `usage`,
    /// unless enough evictions are already under way or nothing is idle.
    fn evict_for(self: &Arc<Self>, usage: &Usage) {
        {
            let mut ev = self.eviction.lock();
            if ev.evicting >= ev.waiting {
                return;
            }
            ev.evicting += 1;
        }
        let Some((victim, pool)) = self.pick_victim(usage.id) else {
            self.eviction.lock().evicting -= 1;
            return;
        };
        tracing::debug!(target: TARGET, key = victim, for_key = usage.id, "closing an idle connection to make room");
        let done = EvictionDone(Arc::clone(self));
        // In a task of its own: the goodbye may take up to
        // `validation_timeout`, and the freed unit belongs to the head of the
        // queue, whoever started the eviction.
        self.runtime.spawn(async move {
            pool.close_oldest_idle().await;
            drop(done);
        });
    }

    /// The sub-pool to shrink: the one whose least recently used idle
    /// connection has been idle longest, preferring other keys to `own`.
    fn pick_victim(&self, own: u64) -> Option<(u64, Pool<Capped<M>>)> {
        let keys = self.keys.lock();
        // Ranked by (another key's?, idle for): the greatest wins.
        let mut best: Option<((bool, Duration), &Entry<M>)> = None;
        for entry in keys.values() {
            let Some(idle_for) = entry.pool.oldest_idle_for() else {
                continue;
            };
            let rank = (entry.usage.id != own, idle_for);
            if best.as_ref().map_or(true, |(b, _)| rank > *b) {
                best = Some((rank, entry));
            }
        }
        best.map(|(_, e)| (e.usage.id, e.pool.clone()))
    }
}

/// A connect queued for the cap, for `Eviction::waiting` and `KeyedState`.
struct Queued<'a, M: Manager>(&'a Shared<M>, &'a Usage);

impl<'a, M: Manager> Queued<'a, M> {
    fn enter(shared: &'a Shared<M>, usage: &'a Usage) -> Self {
        shared.eviction.lock().waiting += 1;
        usage.cap_waiting.fetch_add(1, SeqCst);
        Queued(shared, usage)
    }
}

impl<M: Manager> Drop for Queued<'_, M> {
    fn drop(&mut self) {
        self.0.eviction.lock().waiting -= 1;
        self.1.cap_waiting.fetch_sub(1, SeqCst);
    }
}

/// An eviction in flight; when it ends (done or dropped), queued connects
/// may start another.
struct EvictionDone<M: Manager>(Arc<Shared<M>>);

impl<M: Manager> Drop for EvictionDone<M> {
    fn drop(&mut self) {
        self.0.eviction.lock().evicting -= 1;
        self.0.changed.notify_waiters();
    }
}

/// Sweeps idle keys until the keyed pool is gone or closed.
async fn sweeper<M: Manager>(shared: Weak<Shared<M>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(SeqCst) {
            return;
        }
        shared.drop_idle_keys();
    }
}

// ---------------------------------------------------------------- the wrapping manager

/// Why a connect got no unit of the cap.
#[derive(Debug, Clone, Copy)]
enum CapError {
    Closed,
    Full,
    Abandoned,
}

/// The error type of the sub-pools: the backend's, or why the cap said no.
/// Never reaches a caller of `KeyedPool::get` (see `map_error`); it shows
/// in the sub-pools' `connect failed` log lines.
#[derive(Debug, thiserror::Error)]
enum CappedError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Backend(Arc<E>),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the keyed pool is closed")]
    Closed,
    #[error("the global cap is reached; background connect skipped")]
    Full,
    #[error("the caller stopped waiting for the global cap")]
    Abandoned,
}

impl<E: std::error::Error + 'static> From<CapError> for CappedError<E> {
    fn from(e: CapError) -> Self {
        match e {
            CapError::Closed => CappedError::Closed,
            CapError::Full => CappedError::Full,
            CapError::Abandoned => CappedError::Abandoned,
        }
    }
}

fn backend<E: std::error::Error + 'static>(e: E) -> CappedError<E> {
    CappedError::Backend(Arc::new(e))
}

/// A sub-pool's error as the caller of `KeyedPool::get` sees it: with the
/// backend's error type, and the wrapper's reasons turned into what they mean.
fn map_error<E: std::error::Error + 'static>(e: Error<CappedError<E>>, usage: &Usage) -> Error<E> {
    match e {
        Error::Timeout {
            phase,
            waited,
            last_error,
            last_connect_timeout,
        } => {
            let (last_error, last_connect_timeout) = match last_error.as_deref() {
                Some(CappedError::Backend(e)) => (Some(Arc::clone(e)), last_connect_timeout),
                Some(CappedError::TimedOut(d)) => (None, Some(*d)),
                _ => (None, last_connect_timeout),
            };
            // "Opening a new connection" would mislead: the connect never
            // started, it was queued for another key's connection to close.
            let phase = if phase == TimeoutPhase::Connecting
                && last_error.is_none()
                && usage.cap_waiting.load(SeqCst) > 0
            {
                TimeoutPhase::WaitingForConnection
            } else {
                phase
            };
            Error::Timeout {
                phase,
                waited,
                last_error,
                last_connect_timeout,
            }
        }
        // `Pool::get` never returns `Connect` (only `Builder::connect` does).
        Error::Connect(_) | Error::Closed => Error::Closed,
        Error::Busy { max_waiters } => Error::Busy { max_waiters },
        Error::BlockingInRuntime => Error::BlockingInRuntime,
        Error::Build(b) => Error::Build(b),
    }
}

/// The key's manager, wrapped: `connect` takes a unit of the cap first.
struct Capped<M: Manager> {
    inner: M,
    keyed: Weak<Shared<M>>,
    usage: Arc<Usage>,
    /// The template's `connect_timeout`, for the backend's own connect.
    connect_timeout: Duration,
}

/// A connection and its unit of the cap, released when it is dropped.
struct CappedConn<C> {
    raw: C,
    permit: OwnedSemaphorePermit,
}

impl<M: Manager> Manager for Capped<M> {
    type Connection = CappedConn<M::Connection>;
    type Error = CappedError<M::Error>;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let keyed = self.keyed.upgrade().ok_or(CappedError::Closed)?;
        let permit = keyed.obtain(&self.usage).await?;
        drop(keyed);
        match timeout(self.connect_timeout, self.inner.connect()).await {
            Ok(Ok(raw)) => Ok(CappedConn { raw, permit }),
            Ok(Err(e)) => Err(backend(e)),
            Err(_) => Err(CappedError::TimedOut(self.connect_timeout)),
        }
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        self.inner.is_valid(&mut conn.raw).await.map_err(backend)
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        self.inner.has_broken(&mut conn.raw)
    }

    fn needs_cleanup(&self, conn: &mut Self::Connection) -> bool {
        self.inner.needs_cleanup(&mut conn.raw)
    }

    async fn reset(&self, conn: &mut Self::Connection, full: bool) -> Result<(), Self::Error> {
        self.inner.reset(&mut conn.raw, full).await.map_err(backend)
    }

    async fn server_timeouts(
        &self,
        conn: &mut Self::Connection,
    ) -> Result<ServerTimeouts, Self::Error> {
        match timeout(
            self.connect_timeout,
            self.inner.server_timeouts(&mut conn.raw),
        )
        .await
        {
            Ok(result) => result.map_err(backend),
            Err(_) => Err(CappedError::TimedOut(self.connect_timeout)),
        }
    }

    async fn close(&self, conn: Self::Connection) {
        let CappedConn { raw, permit } = conn;
        self.inner.close(raw).await;
        // Only now: the server was told before the unit goes to the next key.
        drop(permit);
    }
}

// ---------------------------------------------------------------- the guard

/// A connection lent by a [`KeyedPool`]. Derefs to the backend's connection;
/// dropping it hands the connection back to its key's sub-pool.
#[must_use = "dropping the guard returns the connection at once"]
pub struct KeyedPooled<M: Manager> {
    pooled: Option<Pooled<Capped<M>>>,
    usage: Arc<Usage>,
    shared: Arc<Shared<M>>,
}

impl<M: Manager> KeyedPooled<M> {
    fn new(pooled: Pooled<Capped<M>>, usage: &Arc<Usage>, shared: &Arc<Shared<M>>) -> Self {
        usage.lent.fetch_add(1, SeqCst);
        KeyedPooled {
            pooled: Some(pooled),
            usage: Arc::clone(usage),
            shared: Arc::clone(shared),
        }
    }

    fn pooled(&self) -> &Pooled<Capped<M>> {
        self.pooled
            .as_ref()
            .expect("KeyedPooled holds its connection until dropped")
    }

    fn pooled_mut(&mut self) -> &mut Pooled<Capped<M>> {
        self.pooled
            .as_mut()
            .expect("KeyedPooled holds its connection until dropped")
    }

    /// Takes the connection out of the pool for good, as [`Pooled::detach`].
    /// It no longer counts toward the global cap.
    pub fn detach(mut this: Self) -> M::Connection {
        let pooled = this
            .pooled
            .take()
            .expect("KeyedPooled holds its connection until dropped");
        let CappedConn { raw, permit } = Pooled::detach(pooled);
        drop(permit);
        raw
    }

    /// Closes the connection instead of returning it, as [`Pooled::retire`].
    pub fn retire(mut this: Self) {
        if let Some(pooled) = this.pooled.take() {
            Pooled::retire(pooled);
        }
    }

    /// Asks for a full session reset when this connection comes back, as
    /// [`Pooled::reset_on_return`].
    pub fn reset_on_return(this: &mut Self) {
        Pooled::reset_on_return(this.pooled_mut());
    }

    /// The key's public label, if it has one.
    pub fn label(this: &Self) -> Option<&str> {
        this.usage.label.as_deref()
    }

    /// The sub-pool's id for this connection (as in its log lines).
    pub fn id(this: &Self) -> u64 {
        Pooled::id(this.pooled())
    }
}

impl<M: Manager> Deref for KeyedPooled<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.pooled().raw
    }
}

impl<M: Manager> DerefMut for KeyedPooled<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.pooled_mut().raw
    }
}

impl<M: Manager> Drop for KeyedPooled<M> {
    fn drop(&mut self) {
        // The check-in first, so the connects woken below find it idle.
        drop(self.pooled.take());
        self.usage.touch();
        self.usage.lent.fetch_sub(1, SeqCst);
        self.shared.changed.notify_waiters();
    }
}

impl<M: Manager> fmt::Debug for KeyedPooled<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedPooled")
            .field("key", &self.usage.id)
            .field("label", &self.usage.label)
            .field("conn", &self.pooled)
            .finish()
    }
}
