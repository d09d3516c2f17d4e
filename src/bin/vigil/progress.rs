//! The progress bar of `vigil load`, on stderr.

use std::io::IsTerminal;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;
use vigil::Pool;

use crate::backend::Backend;
use crate::live::{micros, Amount, Live};

/// The bar on screen, if any, for [`LogWriter`] to step around.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Log lines to stderr, written with the progress bar lifted off the
/// screen and redrawn below them, so neither garbles the other.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shown = SHOWN.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut stderr = std::io::stderr().lock();
        // A closed stderr loses the line, nothing else: never an error that
        // the subscriber would report (on stderr) or a reason to stop.
        let _ = match shown {
            Some(bar) if !bar.is_finished() => bar.suspend(|| stderr.write_all(buf)),
            _ => stderr.write_all(buf),
        };
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// A bar on stderr, hidden when stderr is not a terminal (CI, pipes).
pub(crate) fn progress_bar(amount: Amount) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let len = match amount {
        Amount::Requests(n) => n,
        Amount::Duration(d) => micros(d) / 1000,
    };
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}%\n  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar =
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style);
    *SHOWN.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
    bar
}

/// Refreshes the bar four times a second: throughput over the last tick,
/// errors, kills and the pool's gauges.
pub(crate) async fn tick<B: Backend>(
    bar: ProgressBar,
    pool: Pool<B>,
    live: Arc<Live>,
    amount: Amount,
) {
    const EVERY: Duration = Duration::from_millis(250);
    if bar.is_hidden() {
        return;
    }
    let mut last = (Instant::now(), 0_u64);
    let mut busy_ms = 0_u64;
    loop {
        tokio::time::sleep(EVERY).await;
        let (now, done) = (Instant::now(), live.done.load(Relaxed));
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let in_gap = live.in_gap.load(Relaxed);
        if !in_gap {
            busy_ms += micros(now.duration_since(last.0)) / 1000;
        }
        last = (now, done);
        bar.set_position(match amount {
            Amount::Requests(_) => live.started.load(Relaxed),
            Amount::Duration(_) => busy_ms,
        });
        let s = pool.state();
        let phase = if in_gap {
            format!("  idle gap after burst {}", live.burst.load(Relaxed))
        } else {
            String::new()
        };
        bar.set_message(format!(
            "{rate:.0} req/s  errors {}  killed {}  pool: open {} idle {} active {} pending {}{phase}",
            live.errors.load(Relaxed),
            live.killed.load(Relaxed),
            s.open,
            s.idle,
            s.active,
            s.pending,
        ));
    }
}
