//! The global cap: the semaphore every connect of every key takes a unit
//! of, the FIFO queue for it, and the eviction of idle connections to make
//! room (see the [module docs](super) for the order of attempts).

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};

use super::capped::Capped;
use super::shared::{Entry, Shared, Usage};
use super::TARGET;
use crate::manager::Manager;
use crate::pool::Pool;

/// A connect queued for the cap looks for something to evict at least this
/// often, besides each time a connection comes back: a return that needs a
/// cleaning round trip reaches the idle set a little after its guard drops.
const CAP_RECHECK: Duration = Duration::from_millis(50);

/// Connects queued for the cap, and evictions started for them. An
/// eviction is started only while `evicting < waiting`, so a crowd of
/// waiters woken together does not close more connections than it needs.
#[derive(Default)]
pub(super) struct Eviction {
    pub(super) waiting: usize,
    evicting: usize,
}

/// Why a connect got no unit of the cap.
#[derive(Debug, Clone, Copy)]
pub(super) enum CapError {
    Closed,
    Full,
    Abandoned,
}

impl<M: Manager> Shared<M> {
    /// One unit of the cap for a connect of the key `usage`; see the module
    /// docs for the order of attempts.
    pub(super) async fn obtain(
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
