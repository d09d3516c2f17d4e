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
//! [`Pool`]: crate::Pool
//! [`Config`]: crate::Config
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
//! #   async fn is_valid(&self, _: &mut String) -> Result<(), std::io::Error> { Ok(()) }
//! #   fn session(&self, _: &mut String) -> vigil::Session { vigil::Session::default() }
//! #   fn classify(&self, _: &std::io::Error) -> vigil::ErrorClass { vigil::ErrorClass::Other } }
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

mod builder;
mod cap;
mod capped;
mod guard;
mod key;
mod shared;
mod usage;

pub use builder::KeyedBuilder;
pub use guard::KeyedPooled;
pub use key::{Credentials, Identity, PoolKey};

use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use crate::error::Error;
use crate::manager::Manager;
use crate::stats::State;

use builder::Factory;
use capped::map_error;
use shared::{Claimed, Shared};
use usage::Demand;

/// Tracing target for every event of keyed pools.
const TARGET: &str = "vigil::keyed";

// ---------------------------------------------------------------- the pool

/// One [`Pool`] per key, under a global cap on open connections. See the
/// [module docs](self).
///
/// Cheap to clone; clones share the pools. When the last clone is dropped
/// every sub-pool closes.
///
/// [`Pool`]: crate::Pool
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
        KeyedBuilder::new(Box::new(factory))
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
    ///
    /// [`Pool::get`]: crate::Pool::get
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
        let entry = Arc::new(shared.new_entry(manager, key.label()));
        let demand = Demand::new(&entry.usage);
        keys.insert(digest, Arc::clone(&entry));
        Ok((entry, demand))
    }
}
