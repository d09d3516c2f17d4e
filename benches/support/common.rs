//! What every bench shares: the runtime, where reports go, and how
//! settings are read from the environment.

// Each bench includes this file and uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tokio::runtime::Runtime;

/// tokio workers: the machine's two cores, shared with the servers.
pub const WORKERS: usize = 2;

/// The runtime every async workload runs on: multi-thread, 2 workers.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Cargo's target directory, where the benches write their JSON reports.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// A setting from the environment, or `default` when unset or unreadable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma list from the environment; `None` (everything) when unset.
pub fn env_list(name: &str) -> Option<Vec<String>> {
    let v = std::env::var(name).ok()?;
    Some(v.split(',').map(|s| s.trim().to_owned()).collect())
}

/// The span of a workload, from the moment its first task starts to the
/// moment its last one ends, as the tasks themselves see it.
///
/// Why not a clock read in the driving future: `Runtime::block_on` runs that
/// future on the calling thread, not on a worker, and with both workers busy
/// the OS may leave that thread unscheduled for milliseconds after the
/// barrier lets the tasks go (and again after the last one finishes). A
/// short run then looked several times faster or slower than it was.
pub struct Span {
    base: std::time::Instant,
    first_start: std::sync::atomic::AtomicU64,
    last_end: std::sync::atomic::AtomicU64,
}

impl Span {
    pub fn new() -> Self {
        Span {
            base: std::time::Instant::now(),
            first_start: std::sync::atomic::AtomicU64::new(u64::MAX),
            last_end: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// A task starts its share of the work.
    pub fn start(&self) {
        self.first_start
            .fetch_min(self.now(), std::sync::atomic::Ordering::Relaxed);
    }

    /// A task has done its share.
    pub fn end(&self) {
        self.last_end
            .fetch_max(self.now(), std::sync::atomic::Ordering::Relaxed);
    }

    /// From the first start to the last end (read after every task ended).
    pub fn elapsed(&self) -> std::time::Duration {
        let start = self.first_start.load(std::sync::atomic::Ordering::Relaxed);
        let end = self.last_end.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Duration::from_nanos(end.saturating_sub(start))
    }
}
