//! `vigil::keyed::KeyedPool`: the cap and key logic with the fake manager
//! and paused time, then logins on the real PostgreSQL (127.0.0.1:5432,
//! trust auth, user `postgres`, database `test`) and MariaDB (127.0.0.1:3306,
//! user `root`, no password, database `test`).
//!
//! The server tests fail loudly when a server is missing. They change no
//! global server setting: each creates its own users (unique names, dropped
//! at the end), and counts only sessions of those users / of its own
//! `application_name`.
//!
//! The tests are split by topic: [`fake_manager`] (the cap and key logic,
//! and `Pool::close_oldest_idle` beneath it), [`pg`] and [`mysql`]; the
//! helpers the server tests share are here.

mod fake_manager;
mod mysql;
mod pg;
#[path = "../support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use vigil::keyed::{Credentials, KeyedPool};
use vigil::{Error, TimeoutPhase};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const PASSWORD: &str = "pw-Secret-7731";

// ---------------------------------------------------------------- real servers: shared helpers

/// A name no other test or run uses (MariaDB user names: at most 80 chars).
fn unique(tag: &str) -> String {
    support::db::unique(&format!("vk_{tag}"))
}

/// Samples `count` every 5 ms until stopped. Keeps the highest count
/// seen in two samples in a row: the pool releases a unit of the cap once it
/// has said goodbye to the server, and the server takes a moment (longer on
/// a loaded 2-core machine) to take the session off its list, so a single
/// sample may still show a session the pool already closed. A session the
/// pool really holds shows in every sample.
struct Sampler {
    peak: Arc<AtomicI64>,
    raw_peak: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start<F, Fut>(mut count: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = i64> + Send,
    {
        let peak = Arc::new(AtomicI64::new(0));
        let raw_peak = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, r, s) = (Arc::clone(&peak), Arc::clone(&raw_peak), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut previous = 0;
            while !s.load(SeqCst) {
                let now = count().await;
                r.fetch_max(now, SeqCst);
                p.fetch_max(now.min(previous), SeqCst);
                previous = now;
                tokio::time::sleep(5 * MS).await;
            }
        });
        Sampler {
            peak,
            raw_peak,
            stop,
            task,
        }
    }

    /// (highest count seen twice in a row, highest single sample).
    async fn peak(self) -> (i64, i64) {
        self.stop.store(true, SeqCst);
        self.task.await.expect("the sampler does not panic");
        (self.peak.load(SeqCst), self.raw_peak.load(SeqCst))
    }
}

/// Polls `cond` (an expression that may `.await`) every 20 ms until it
/// holds; fails the test after `within`.
macro_rules! eventually {
    ($what:expr, $within:expr, $cond:expr) => {{
        let within: Duration = $within;
        let deadline = std::time::Instant::now() + within;
        while !$cond {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for {}",
                $what
            );
            tokio::time::sleep(20 * MS).await;
        }
    }};
}

pub(crate) use eventually;
