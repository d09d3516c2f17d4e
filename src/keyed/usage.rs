//! One key's counters, and the caller counted as waiting on it: shared by
//! the key's entry, its wrapped manager, its guards and the cap's queue.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

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
    pub(super) fn new(id: u64, label: Option<String>, epoch: Instant) -> Self {
        let usage = Usage {
            id,
            label,
            demand: AtomicUsize::new(0),
            lent: AtomicUsize::new(0),
            cap_waiting: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch,
            no_demand: Notify::new(),
        };
        usage.touch();
        usage
    }

    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.store(ms, Relaxed);
    }

    /// Nothing lent, nobody waiting, unused for `timeout`. Read under the
    /// key map's lock, where `demand` is raised, so a caller cannot slip in.
    pub(super) fn is_unused_for(&self, timeout: Duration, now: Instant) -> bool {
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
