//! Pool-core behaviour with a fake in-process manager and paused time:
//! deterministic, no sleeps standing in for synchronisation.

#[path = "../support/mod.rs"]
mod support;

mod cancellation;
mod checkout;
mod close;
mod connect;
mod hooks;
mod liveness;
mod network;
mod observability;
mod resize;
mod return_path;
mod roles;
mod settings;
mod spans;

use std::time::Duration;

use vigil::Pool;

use crate::support::fake::Fake;

const MS: Duration = Duration::from_millis(1);

fn pool(fake: &Fake, max: usize) -> Pool<Fake> {
    Pool::builder(fake.clone())
        .max_size(max)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings")
}

/// Lets spawned tasks (returns being cleaned, the housekeeper) run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}
