//! A remote-controlled in-process manager: deterministic, instant unless told
//! otherwise, and counting everything the pool asks of it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vigil::{Capabilities, Cleaned, Cleanup, ErrorClass, Manager, ServerTimeouts, Session};

#[derive(Debug, thiserror::Error)]
#[error("fake: {0}")]
pub struct FakeError(pub String);

/// What the fake "server" does; shared between the test and the manager.
#[derive(Debug, Default)]
pub struct Script {
    pub connects: AtomicUsize,
    pub connects_in_flight: AtomicUsize,
    pub max_connects_in_flight: AtomicUsize,
    pub pings: AtomicUsize,
    pub resets: AtomicUsize,
    pub closes: AtomicUsize,
    /// `Some(message)`: connects fail with it.
    pub connect_error: Mutex<Option<String>>,
    pub connect_delay: Mutex<Duration>,
    pub ping_delay: Mutex<Duration>,
    /// Pings fail (the server closed the session).
    pub ping_fails: AtomicBool,
    /// Pings never answer (a black-holed socket).
    pub ping_hangs: AtomicBool,
    pub reset_fails: AtomicBool,
    /// Connects are declined (`ErrorClass::Declined`), not failed.
    pub connect_declined: AtomicBool,
    pub reset_hangs: AtomicBool,
    /// Reported by `server_timeouts`.
    pub server_idle_ms: AtomicU64,
    /// A middlebox's idle cutoff (ms; 0 = none): a ping on a connection
    /// silent this long (since its connect, last answered ping or
    /// [`FakeConn::touch`]) never answers, like a black-holed flow.
    pub idle_cut_ms: AtomicU64,
    /// Pings that met the idle cutoff.
    pub cut_pings: AtomicUsize,
    /// The manager requires a role (`Capabilities::checks_role`).
    pub role_required: AtomicBool,
    /// The "server" no longer has it: `has_role` answers `false`.
    pub role_lost: AtomicBool,
    /// `has_role` calls.
    pub role_checks: AtomicUsize,
    /// Resets asked to stop a statement left running (`Cleanup::stop_query`).
    pub stops: AtomicUsize,
    /// Such a reset cannot stop it (`Cleaned::Unusable`), as a manager
    /// without a cancel path.
    pub cannot_stop: AtomicBool,
    next_id: AtomicU64,
}

impl Script {
    pub fn fail_connects(&self, message: &str) {
        *self.connect_error.lock().unwrap() = Some(message.to_owned());
    }

    pub fn heal_connects(&self) {
        *self.connect_error.lock().unwrap() = None;
    }

    pub fn set_connect_delay(&self, d: Duration) {
        *self.connect_delay.lock().unwrap() = d;
    }
}

#[derive(Debug)]
pub struct FakeConn {
    pub id: u64,
    /// Set by the test to simulate a session the driver knows is dead.
    pub broken: bool,
    /// Set by the test to simulate an open transaction.
    pub in_transaction: bool,
    /// Session state a borrower left behind; a full reset clears it.
    pub session_var: Option<String>,
    /// Last traffic on the connection, for `Script::idle_cut_ms`.
    pub last_seen: tokio::time::Instant,
    /// Black-holed by the idle cutoff: never answers again.
    pub cut: bool,
    /// Set by the test to simulate a borrower that left a statement
    /// running (its query future dropped mid-flight).
    pub query_running: bool,
}

impl FakeConn {
    /// A borrower's query: traffic the middlebox sees.
    pub fn touch(&mut self) {
        self.last_seen = tokio::time::Instant::now();
    }
}

#[derive(Debug, Clone, Default)]
pub struct Fake {
    pub script: Arc<Script>,
}

impl Fake {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_server_idle(ms: u64) -> Self {
        let f = Self::default();
        f.script.server_idle_ms.store(ms, SeqCst);
        f
    }
}

struct InFlight<'a>(&'a Script);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.connects_in_flight.fetch_sub(1, SeqCst);
    }
}

impl Manager for Fake {
    type Connection = FakeConn;
    type Error = FakeError;

    async fn connect(&self) -> Result<FakeConn, FakeError> {
        let s = &self.script;
        let now = s.connects_in_flight.fetch_add(1, SeqCst) + 1;
        let _guard = InFlight(s);
        s.max_connects_in_flight.fetch_max(now, SeqCst);
        let delay = *s.connect_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        s.connects.fetch_add(1, SeqCst);
        if s.connect_declined.load(SeqCst) {
            return Err(FakeError("declined: quota".into()));
        }
        if let Some(msg) = s.connect_error.lock().unwrap().clone() {
            return Err(FakeError(msg));
        }
        Ok(FakeConn {
            id: s.next_id.fetch_add(1, SeqCst) + 1,
            broken: false,
            in_transaction: false,
            session_var: None,
            last_seen: tokio::time::Instant::now(),
            cut: false,
            query_running: false,
        })
    }

    async fn is_valid(&self, conn: &mut FakeConn) -> Result<(), FakeError> {
        let s = &self.script;
        s.pings.fetch_add(1, SeqCst);
        let cut = s.idle_cut_ms.load(SeqCst);
        if cut > 0 && conn.last_seen.elapsed() >= Duration::from_millis(cut) {
            conn.cut = true;
        }
        if conn.cut {
            s.cut_pings.fetch_add(1, SeqCst);
            std::future::pending::<()>().await;
        }
        conn.touch();
        let delay = *s.ping_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if s.ping_hangs.load(SeqCst) {
            std::future::pending::<()>().await;
        }
        if s.ping_fails.load(SeqCst) {
            return Err(FakeError("server has gone away".into()));
        }
        Ok(())
    }

    fn classify(&self, error: &FakeError) -> ErrorClass {
        if error.0.starts_with("declined") {
            ErrorClass::Declined
        } else {
            ErrorClass::Other
        }
    }

    fn session(&self, conn: &mut FakeConn) -> Session {
        let mut session = Session::default();
        session.broken = conn.broken;
        session.needs_cleanup = conn.in_transaction || conn.query_running;
        session.in_transaction = conn.in_transaction;
        session.query_in_flight = conn.query_running;
        session
    }

    fn capabilities(&self) -> Capabilities {
        let mut can = Capabilities::default();
        can.checks_role = self.script.role_required.load(SeqCst);
        can
    }

    async fn has_role(&self, _conn: &mut FakeConn) -> Result<bool, FakeError> {
        self.script.role_checks.fetch_add(1, SeqCst);
        Ok(!self.script.role_lost.load(SeqCst))
    }

    async fn reset(&self, conn: &mut FakeConn, cleanup: Cleanup) -> Result<Cleaned, FakeError> {
        let s = &self.script;
        s.resets.fetch_add(1, SeqCst);
        if s.reset_hangs.load(SeqCst) {
            std::future::pending::<()>().await;
        }
        if s.reset_fails.load(SeqCst) {
            return Err(FakeError("reset failed".into()));
        }
        let stopped = cleanup.stop_query;
        if stopped {
            s.stops.fetch_add(1, SeqCst);
            if s.cannot_stop.load(SeqCst) {
                return Ok(Cleaned::Unusable {
                    query_stopped: false,
                });
            }
            conn.query_running = false;
        }
        conn.in_transaction = false;
        if cleanup.full {
            conn.session_var = None;
        }
        Ok(if stopped {
            Cleaned::QueryStopped
        } else {
            Cleaned::Ready
        })
    }

    async fn server_timeouts(&self, _conn: &mut FakeConn) -> Result<ServerTimeouts, FakeError> {
        let ms = self.script.server_idle_ms.load(SeqCst);
        Ok(ServerTimeouts {
            idle: (ms > 0).then(|| Duration::from_millis(ms)),
        })
    }

    async fn close(&self, conn: FakeConn) {
        drop(conn);
        self.script.closes.fetch_add(1, SeqCst);
    }
}
