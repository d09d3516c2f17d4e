//! What the pool reports: leak warnings with the borrower's call site, and
//! the duration histograms.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vigil::Pool;

use crate::support::fake::Fake;
use crate::{pool, MS};

/// Collects formatted log lines of the current thread's default subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn leak_is_reported_once_with_the_call_site_of_get() {
    let logs = Logs::default();
    let _guard = logs.install();
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .leak_threshold(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let line = line!() + 1;
    let held = pool.get().await.unwrap();
    let quick = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(quick); // held 1 s: under the threshold, never reported
    let info = pool.connections();
    let lent: Vec<_> = info
        .iter()
        .filter(|c| c.state == vigil::ConnectionState::Lent)
        .collect();
    assert_eq!(lent.len(), 1);
    let site = lent[0]
        .borrowed_at
        .expect("a lent connection knows its borrower");
    assert_eq!((site.file(), site.line()), (file!(), line));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        pool.state().leaks_suspected,
        1,
        "once, however long it is held"
    );
    let text = logs.text();
    assert_eq!(text.matches("possible leak").count(), 1, "{text}");
    assert!(text.contains(&format!("{}:{line}", file!())), "{text}");
    drop(held);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(pool.state().leaks_suspected, 1);
}

#[tokio::test(start_paused = true)]
async fn histograms_record_acquire_usage_and_connect() {
    let fake = Fake::new();
    fake.script.set_connect_delay(20 * MS);
    let pool = pool(&fake, 2);
    let c = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    let s = pool.state();
    assert_eq!(
        (
            s.acquire_duration.count,
            s.usage_duration.count,
            s.connect_duration.count
        ),
        (1, 1, 1)
    );
    assert_eq!(s.connect_duration.sum, 20 * MS);
    assert_eq!(s.usage_duration.sum, 300 * MS);
    let le_05: u64 = s
        .usage_duration
        .buckets()
        .filter(|(le, _)| *le <= 0.5)
        .map(|(_, n)| n)
        .sum();
    let le_025: u64 = s
        .usage_duration
        .buckets()
        .filter(|(le, _)| *le <= 0.25)
        .map(|(_, n)| n)
        .sum();
    assert_eq!((le_025, le_05), (0, 1));
}
