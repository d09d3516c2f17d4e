//! The state one `vigil load` run shares between its parts: the workers,
//! the progress bar, the killer and Ctrl-C read and bump it; none of them
//! needs the orchestrator (`load.rs`) for it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::RwLock;

use crate::redact;
use crate::timeline::Timeline;

/// MySQL connection ids the pool's sessions have had (from the workers),
/// for the killer.
pub(crate) type SessionIds = Arc<Mutex<HashSet<u32>>>;

/// Error messages kept for the report.
const SAMPLES: usize = 5;

/// How much work in all, before it is split across bursts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Amount {
    Requests(u64),
    Duration(Duration),
}

/// State shared by the workers, the progress bar, the killer and Ctrl-C.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) started: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) samples: Mutex<Vec<String>>,
    pub(crate) killed: AtomicU64,
    /// Ctrl-C was pressed: workers stop at their next request.
    pub(crate) interrupted: AtomicBool,
    /// The burst running (1-based), for the progress bar.
    pub(crate) burst: AtomicU32,
    pub(crate) in_gap: AtomicBool,
    /// MySQL connection ids of the pool's sessions, for the killer.
    pub(crate) ids: SessionIds,
    /// Held for reading around `get()` and by the killer for writing; see
    /// the `kill` module docs. `None` when nothing is killed.
    pub(crate) gate: Option<RwLock<()>>,
    /// Per-interval figures and event markers (`--sample-every`).
    pub(crate) timeline: Timeline,
}

impl Live {
    pub(crate) fn error(&self, message: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < SAMPLES {
            samples.push(redact(&message));
        }
    }
}

/// A duration in whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
