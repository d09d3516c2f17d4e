//! vigil's liveness for bb8 pools (feature `bb8`): wrap a vigil [`Manager`]
//! in [`Bb8Manager`] and a bb8 pool gains server-timeout awareness and the
//! ping bypass window with one line changed.
//!
//! ```no_run
//! # #[cfg(feature = "mysql")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vigil::{backend::mysql::MySqlManager, bb8::Bb8Manager};
//!
//! let manager = Bb8Manager::new(MySqlManager::from_url("mysql://app@db/app")?);
//! let pool = bb8::Pool::builder().max_size(16).build(manager).await?;
//! let conn = pool.get().await?; // derefs to mysql_async::Conn
//! # Ok(()) }
//! ```
//!
//! How it maps onto bb8: bb8 calls `is_valid` at checkout (with its default
//! `test_on_check_out(true)`) and `has_broken` at return. At checkout the
//! adapter asks [`liveness::assess`](crate::liveness::assess) first (an
//! obsolete connection is refused without a round trip, and bb8 takes the
//! next one), and pings only when the connection has been silent longer than
//! the bypass window. At return it notes the time, refuses a connection the
//! driver knows is broken, and marks one that needs cleaning (an open
//! transaction; for sqlx, any borrow, see `Config::verify_on_return`):
//! bb8's return path is synchronous, so the cleaning — rollback, ping — runs
//! at the next checkout, inside `is_valid`, before the connection is lent.
//!
//! What bb8 keeps doing its own way: its reaper knows nothing of the server's
//! timeout (checkout still catches it), and it has no keepalive pings.

use std::fmt;
use std::ops::{Deref, DerefMut};

use tokio::time::{timeout, Instant};

use crate::config::Config;
use crate::liveness::{assess, Facts, Policy, Reason, Verdict};
use crate::manager::{Cleaned, Cleanup, Manager, ServerTimeouts};

/// A vigil [`Manager`] as a [`bb8::ManageConnection`].
#[derive(Debug)]
pub struct Bb8Manager<M> {
    manager: M,
    policy: Policy,
    config: Config,
    /// Returned connections are pinged before their next lend
    /// (`verify_on_return`, resolved against the manager).
    verify_returns: bool,
}

impl<M: Manager> Bb8Manager<M> {
    /// With vigil's default settings (bypass window 500 ms, margin 5 s,
    /// lifetime 30 min with jitter, validation timeout 5 s).
    pub fn new(manager: M) -> Self {
        Self::with_config(manager, Config::default())
    }

    /// With the liveness settings of `config`: `validation`,
    /// `server_timeout_margin`, `server_idle_timeout_override`,
    /// `max_lifetime`, `validation_timeout`, `verify_on_return`. (Sizing stays bb8's.)
    pub fn with_config(manager: M, config: Config) -> Self {
        Bb8Manager {
            verify_returns: config
                .verify_on_return
                .pings(manager.capabilities().detection),
            manager,
            policy: Policy {
                // bb8 shrinks by its own idle_timeout; only obsolescence here.
                idle_timeout: None,
                ..Policy::from(&config)
            },
            config,
        }
    }
}

/// A connection with the facts the liveness policy needs. Derefs to the
/// driver's connection.
pub struct Tracked<C> {
    conn: C,
    created: Instant,
    lifetime: Option<std::time::Duration>,
    last_io: Instant,
    server: ServerTimeouts,
    /// Returned needing `Manager::reset` before it may be lent again.
    dirty: bool,
    /// Returned, and to be pinged before it is lent again (`verify_on_return`).
    unverified: bool,
}

impl<C> Tracked<C> {
    fn facts(&self, broken: bool) -> Facts {
        Facts {
            created: self.created,
            lifetime: self.lifetime,
            last_io: self.last_io,
            last_borrowed: self.last_io,
            broken,
            server_idle_timeout: self.server.idle,
            may_shrink: false,
            stale: false,
        }
    }

    /// The server idle timeouts read when the connection was opened.
    pub fn server_timeouts(&self) -> ServerTimeouts {
        self.server
    }
}

impl<C> Deref for Tracked<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.conn
    }
}

impl<C> DerefMut for Tracked<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.conn
    }
}

impl<C> fmt::Debug for Tracked<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("age", &self.created.elapsed())
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Errors the adapter reports to bb8 (and to its error sink).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Bb8Error<E: std::error::Error + 'static> {
    /// The driver failed (connect, ping).
    #[error(transparent)]
    Driver(E),
    /// The liveness policy refused the connection at checkout; bb8 closes it
    /// and takes another. Not a failure, but bb8 only has the error channel.
    #[error("connection retired by the liveness policy: {0}")]
    Retired(Reason),
    /// A ping or the timeout discovery got no answer within `validation_timeout`.
    #[error("no answer within {0:?}")]
    TimedOut(std::time::Duration),
}

impl<M: Manager> ::bb8::ManageConnection for Bb8Manager<M> {
    type Connection = Tracked<M::Connection>;
    type Error = Bb8Error<M::Error>;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let mut conn = self.manager.connect().await.map_err(Bb8Error::Driver)?;
        let server = match self.config.server_idle_timeout_override {
            Some(idle) => ServerTimeouts { idle },
            None => timeout(
                self.config.validation_timeout,
                self.manager.server_timeouts(&mut conn),
            )
            .await
            .map_err(|_| Bb8Error::TimedOut(self.config.validation_timeout))?
            .map_err(Bb8Error::Driver)?,
        };
        let now = Instant::now();
        Ok(Tracked {
            conn,
            created: now,
            lifetime: self
                .config
                .max_lifetime
                .map(|l| l.mul_f64(1.0 - rand::random::<f64>() * 0.025)),
            last_io: now,
            server,
            dirty: false,
            unverified: false,
        })
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        let now = Instant::now();
        let broken = self.manager.session(&mut conn.conn).broken;
        if let Verdict::Retire(reason) = assess(&conn.facts(broken), &self.policy, now) {
            return Err(Bb8Error::Retired(reason));
        }
        if conn.dirty {
            // The round trip that cleans also proves the session alive.
            let cleaned = timeout(
                self.config.validation_timeout,
                self.manager.reset(&mut conn.conn, Cleanup::default()),
            )
            .await
            .map_err(|_| Bb8Error::TimedOut(self.config.validation_timeout))?
            .map_err(Bb8Error::Driver)?;
            if let Cleaned::Unusable { .. } = cleaned {
                return Err(Bb8Error::Retired(Reason::ResetFailed));
            }
            conn.dirty = false;
            conn.unverified = false;
            conn.last_io = Instant::now();
            return Ok(());
        }
        if !conn.unverified && !self.policy.needs_ping(conn.last_io, now) {
            return Ok(());
        }
        conn.unverified = false;
        timeout(
            self.config.validation_timeout,
            self.manager.is_valid(&mut conn.conn),
        )
        .await
        .map_err(|_| Bb8Error::TimedOut(self.config.validation_timeout))?
        .map_err(Bb8Error::Driver)?;
        conn.last_io = Instant::now();
        Ok(())
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        // Called by bb8 when a connection comes back: the session was just used.
        let now = Instant::now();
        conn.last_io = now;
        let session = self.manager.session(&mut conn.conn);
        // Cleaning needs a round trip, which this synchronous path cannot
        // make: it is left to the next checkout (`is_valid`).
        conn.dirty = session.needs_cleanup;
        conn.unverified = self.verify_returns;
        session.broken || assess(&conn.facts(false), &self.policy, now) != Verdict::Keep
    }
}
