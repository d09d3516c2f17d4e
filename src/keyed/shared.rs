//! The state every handle, sub-pool manager and guard of a keyed pool
//! shares: the key map, each key's counters, and the key sweep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::cap::Eviction;
use super::capped::Capped;
use super::key::{Digest, PoolKey};
use super::{KeyedState, TARGET};
use crate::config::Config;
use crate::error::Error;
use crate::manager::Manager;
use crate::pool::Pool;

pub(super) struct Shared<M: Manager> {
    pub(super) name: String,
    pub(super) template: Config,
    pub(super) max_open: usize,
    pub(super) key_idle_timeout: Duration,
    pub(super) salt: [u8; 32],
    pub(super) keys: Mutex<HashMap<Digest, Arc<Entry<M>>>>,
    /// The global cap: one permit per open connection; see the module docs.
    pub(super) cap: Arc<Semaphore>,
    /// Wakes connects queued for the cap: a connection came back or an
    /// eviction finished, so there may be something (else) to evict.
    pub(super) changed: Notify,
    pub(super) eviction: Mutex<Eviction>,
    pub(super) next_key_id: AtomicU64,
    pub(super) epoch: Instant,
    pub(super) closed: AtomicBool,
    pub(super) runtime: Handle,
    #[cfg(feature = "metrics")]
    pub(super) metrics: Option<Exported>,
}

#[cfg(feature = "metrics")]
pub(super) struct Exported {
    pub(super) metrics: crate::metrics::Metrics,
    pub(super) max: usize,
    pub(super) used: AtomicUsize,
}

/// A key's entry, and the caller counted as waiting on it.
pub(super) type Claimed<M> = (Arc<Entry<M>>, Demand);

pub(super) struct Entry<M: Manager> {
    pub(super) pool: Pool<Capped<M>>,
    pub(super) usage: Arc<Usage>,
    pub(super) exported: bool,
}

/// One key's counters, shared by its entry, its manager and its guards.
pub(super) struct Usage {
    pub(super) id: u64,
    pub(super) label: Option<String>,
    /// Callers inside `KeyedPool::get` for this key.
    pub(super) demand: AtomicUsize,
    /// Guards alive.
    pub(super) lent: AtomicUsize,
    /// Connects of this key queued for the cap.
    pub(super) cap_waiting: AtomicUsize,
    /// Last checkout or return, in ms since `epoch`.
    last_used_ms: AtomicU64,
    epoch: Instant,
    /// Notified when `demand` drops to zero.
    pub(super) no_demand: Notify,
}

impl Usage {
    pub(super) fn touch(&self) {
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
pub(super) struct Demand(Arc<Usage>);

impl Demand {
    pub(super) fn new(usage: &Arc<Usage>) -> Self {
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
    pub(super) fn digest<K: PoolKey>(&self, key: &K) -> Digest {
        Digest::of(self.salt, key)
    }

    pub(super) fn find(&self, digest: &Digest) -> Result<Option<Claimed<M>>, Error<M::Error>> {
        let keys = self.keys.lock();
        if self.closed.load(SeqCst) {
            return Err(Error::Closed);
        }
        Ok(keys
            .get(digest)
            .map(|e| (Arc::clone(e), Demand::new(&e.usage))))
    }

    /// Builds a key's sub-pool, from the template its builder validated.
    /// Called under the key map's lock (build is synchronous: it spawns the
    /// housekeeper and opens nothing).
    pub(super) fn new_entry(self: &Arc<Self>, manager: M, label: Option<&str>) -> Entry<M> {
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
        let pool = Pool::builder(capped)
            .config(config)
            .build_in(self.runtime.clone());
        let exported = self.export(&pool, label);
        // debug: a new key is routine; the label is public by contract.
        tracing::debug!(target: TARGET, key = id, label, exported, "key created");
        Entry {
            pool,
            usage,
            exported,
        }
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
    pub(super) fn forget(&self, entry: &Entry<M>, why: &'static str) {
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
    pub(super) fn shut_down(&self) -> Vec<Arc<Entry<M>>> {
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

    pub(super) fn state(&self) -> KeyedState {
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
}

/// Sweeps idle keys until the keyed pool is gone or closed.
pub(super) async fn sweeper<M: Manager>(shared: Weak<Shared<M>>, every: Duration) {
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
