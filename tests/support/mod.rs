//! Test support shared by the test binaries.
#![allow(dead_code, unreachable_pub, unused_imports, unused_macros)]

pub mod db;
pub mod fake;

/// Polls `cond` (an expression that may `.await`) every 10 ms until it
/// holds; fails the test after `within`.
macro_rules! eventually {
    ($what:expr, $within:expr, $cond:expr) => {{
        let within: std::time::Duration = $within;
        let deadline = std::time::Instant::now() + within;
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}

pub(crate) use eventually;
