//! The global cap: the semaphore every connect of every key takes a unit
//! of, the FIFO queue for it, and the eviction of idle connections to make
//! room (see the [module docs](super) for the order of attempts). It knows
//! the sub-pools only as [`Victims`], so it sits below them: the key map
//! (`shared.rs`) and the wrapped manager (`capped.rs`) use it, it uses
//! neither.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::usage::Usage;
use super::TARGET;

/// A connect queued for the cap looks for something to evict at least this
/// often, besides each time a connection comes back: a return that needs a
/// cleaning round trip reaches the idle set a little after its guard drops.
const CAP_RECHECK: Duration = Duration::from_millis(50);

/// The cap and its queue.
pub(super) struct Cap {
    units: Arc<Semaphore>,
    max_open: usize,
    /// Wakes connects queued for the cap: a connection came back or an
    /// eviction finished, so there may be something (else) to evict.
    changed: Notify,
    eviction: Mutex<Eviction>,
    runtime: Handle,
}

/// Connects queued for the cap, and evictions started for them. An
/// eviction is started only while `evicting < waiting`, so a crowd of
/// waiters woken together does not close more connections than it needs.
#[derive(Default)]
struct Eviction {
    waiting: usize,
    evicting: usize,
}

/// Why a connect got no unit of the cap.
#[derive(Debug, Clone, Copy)]
pub(super) enum CapError {
    Closed,
    Full,
    Abandoned,
}

/// Where the cap finds an idle connection to close for a queued connect.
pub(super) trait Victims: Send + Sync + 'static {
    /// The idle connection to close for a connect of the key `own`, if any
    /// is idle.
    fn pick(&self, own: u64) -> Option<Victim>;
}

/// An idle connection chosen to make room: its key, and the future that
/// closes it (politely, so it may take up to `validation_timeout`).
pub(super) struct Victim {
    pub(super) key: u64,
    pub(super) close: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Cap {
    pub(super) fn new(max_open: usize, runtime: Handle) -> Self {
        Cap {
            units: Arc::new(Semaphore::new(max_open)),
            max_open,
            changed: Notify::new(),
            eviction: Mutex::default(),
            runtime,
        }
    }

    /// A connection came back: queued connects look again for something
    /// to evict.
    pub(super) fn returned(&self) {
        self.changed.notify_waiters();
    }

    /// Fails queued and later connects.
    pub(super) fn close(&self) {
        self.units.close();
    }

    /// Connections open (or connecting) under the cap.
    pub(super) fn open(&self) -> usize {
        self.max_open.saturating_sub(self.units.available_permits())
    }

    /// Connects queued for the cap.
    pub(super) fn waiting(&self) -> usize {
        self.eviction.lock().waiting
    }

    /// One unit of the cap for a connect of the key `usage`, evicting from
    /// `victims` while it waits; see the module docs for the order of attempts.
    pub(super) async fn obtain(
        self: &Arc<Self>,
        usage: &Arc<Usage>,
        victims: &dyn Victims,
    ) -> Result<OwnedSemaphorePermit, CapError> {
        match Arc::clone(&self.units).try_acquire_owned() {
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
        let acquire = Arc::clone(&self.units).acquire_owned();
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
            self.evict_for(usage, victims);
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
    fn evict_for(self: &Arc<Self>, usage: &Usage, victims: &dyn Victims) {
        {
            let mut ev = self.eviction.lock();
            if ev.evicting >= ev.waiting {
                return;
            }
            ev.evicting += 1;
        }
        let Some(victim) = victims.pick(usage.id) else {
            self.eviction.lock().evicting -= 1;
            return;
        };
        tracing::debug!(target: TARGET, key = victim.key, for_key = usage.id, "closing an idle connection to make room");
        let done = EvictionDone(Arc::clone(self));
        // In a task of its own: the goodbye may take up to
        // `validation_timeout`, and the freed unit belongs to the head of the
        // queue, whoever started the eviction.
        self.runtime.spawn(async move {
            victim.close.await;
            drop(done);
        });
    }
}

/// A connect queued for the cap, for `Eviction::waiting` and `KeyedState`.
struct Queued<'a>(&'a Cap, &'a Usage);

impl<'a> Queued<'a> {
    fn enter(cap: &'a Cap, usage: &'a Usage) -> Self {
        cap.eviction.lock().waiting += 1;
        usage.cap_waiting.fetch_add(1, SeqCst);
        Queued(cap, usage)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.eviction.lock().waiting -= 1;
        self.1.cap_waiting.fetch_sub(1, SeqCst);
    }
}

/// An eviction in flight; when it ends (done or dropped), queued connects
/// may start another.
struct EvictionDone(Arc<Cap>);

impl Drop for EvictionDone {
    fn drop(&mut self) {
        self.0.eviction.lock().evicting -= 1;
        self.0.changed.notify_waiters();
    }
}
