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
