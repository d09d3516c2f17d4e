//! The state every handle, sub-pool manager and guard of a keyed pool
//! shares: the key map, each key's counters, and the key sweep.

use std::collections::HashMap;
#[cfg(feature = "metrics")]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::time::Instant;

use super::cap::{Cap, Victim, Victims};
use super::capped::{Capped, CappedConn, CappedError};
use super::key::{Digest, PoolKey};
use super::usage::{Demand, Usage};
use super::{KeyedState, TARGET};
use crate::config::Config;
use crate::error::Error;
use crate::manager::Manager;
use crate::pool::{Hooks, Pool};

pub(super) struct Shared<M: Manager> {
    pub(super) name: String,
    pub(super) template: Config,
    pub(super) max_open: usize,
    pub(super) key_idle_timeout: Duration,
    /// The builder's hooks, over the sub-pools' wrapped types.
    pub(super) hooks: Hooks<CappedConn<M::Connection>, CappedError<M::Error>>,
    pub(super) salt: [u8; 32],
    pub(super) keys: Mutex<HashMap<Digest, Arc<Entry<M>>>>,
    /// The global cap: one unit per open connection; see the module docs.
    pub(super) cap: Arc<Cap>,
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
        let usage = Arc::new(Usage::new(id, label.map(str::to_owned), self.epoch));
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
        let victims: Weak<dyn Victims> = Arc::downgrade(self) as Weak<Self>;
        let capped = Capped {
            inner: manager,
            cap: Arc::clone(&self.cap),
            victims,
            usage: Arc::clone(&usage),
            connect_timeout: self.template.connect_timeout,
        };
        let pool = Pool::builder(capped)
            .config(config)
            .hooks(self.hooks.clone())
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
            self.cap.open()
        };
        KeyedState {
            keys: keys.len(),
            open,
            max_open: self.max_open,
            waiting: self.cap.waiting(),
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

/// The cap closes idle connections of the sub-pools to make room for a
/// queued connect of another key.
impl<M: Manager> Victims for Shared<M> {
    /// The sub-pool whose least recently used idle connection has been idle
    /// longest, preferring other keys to `own`.
    fn pick(&self, own: u64) -> Option<Victim> {
        let keys = self.keys.lock();
        // Ranked by (another key's?, idle for): the greatest wins.
        let mut best: Option<((bool, Duration), &Entry<M>)> = None;
        for entry in keys.values() {
            let Some(idle_for) = entry.pool.oldest_idle_for() else {
                continue;
            };
            let rank = (entry.usage.id != own, idle_for);
            if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                best = Some((rank, entry));
            }
        }
        let (_, entry) = best?;
        let pool = entry.pool.clone();
        Some(Victim {
            key: entry.usage.id,
            close: Box::pin(async move {
                pool.close_oldest_idle().await;
            }),
        })
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
