//! The liveness policy: pure functions decide whether a connection may be
//! kept or must be retired, and why, and what a checkout does with it.
//!
//! Return and the housekeeper ask [`assess`]; a checkout asks
//! [`at_checkout`] (which is `assess` plus the ping rules). On the fast
//! path the pool compares against the precomputed bound
//! [`Policy::lend_before`] (with the driver's `broken`, the generation and
//! the last sign of trouble) and asks `at_checkout` only when that does not
//! say "lend". Every rule about a connection's own state is here; what is
//! decided elsewhere is not about that state: the pool's size (a shrink
//! closes connections above it), the user's hooks (`before_acquire` and
//! `after_release` refuse connections, as `refused`), and the outcome of
//! I/O (a ping, a reset or a role check that fails or goes silent).
//! Nothing here does I/O or reads a clock: the caller passes `now`, so the
//! whole policy is table-testable.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, Validation};

/// Why a connection was closed. A closed set: logs and metrics use
/// [`as_str`](Reason::as_str) as a bounded label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The driver reported the connection finished (`Session::broken`).
    Broken,
    /// A validation round trip failed or timed out.
    ValidationFailed,
    /// The connection reached its (jittered) `max_lifetime`.
    MaxLifetime,
    /// Nobody borrowed the connection for `idle_timeout` and the pool is above `min_idle`.
    IdleTimeout,
    /// The connection was idle long enough that the server would soon close it.
    ServerTimeout,
    /// Cleaning the connection on return (rollback / session reset) failed.
    ResetFailed,
    /// The pool was closed, or the connection was retired by the caller.
    Closed,
    /// The session no longer has the role the manager requires (a primary
    /// turned read-only, a failover): seen by the role re-check or by an
    /// error that proves it; the whole pool moved to a new generation.
    RoleChanged,
    /// A hook refused it: [`before_acquire`](crate::Builder::before_acquire)
    /// at checkout or [`after_release`](crate::Builder::after_release) on
    /// its way back answered `false` or failed.
    Refused,
}

impl Reason {
    /// Every reason, in a fixed order (index = `self as usize`).
    pub const ALL: [Reason; 9] = [
        Reason::Broken,
        Reason::ValidationFailed,
        Reason::MaxLifetime,
        Reason::IdleTimeout,
        Reason::ServerTimeout,
        Reason::ResetFailed,
        Reason::Closed,
        Reason::RoleChanged,
        Reason::Refused,
    ];

    /// The label value used in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Broken => "broken",
            Reason::ValidationFailed => "validation_failed",
            Reason::MaxLifetime => "max_lifetime",
            Reason::IdleTimeout => "idle_timeout",
            Reason::ServerTimeout => "server_timeout",
            Reason::ResetFailed => "reset_failed",
            Reason::Closed => "closed",
            Reason::RoleChanged => "role_changed",
            Reason::Refused => "refused",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the pool knows about one connection, without asking it anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// When the connection was opened.
    pub created: Instant,
    /// This connection's own lifetime: `max_lifetime` minus its jitter.
    pub lifetime: Option<Duration>,
    /// Last time the server saw this session do anything (connect, a
    /// borrower's return, a ping): the server's idle clock starts here.
    pub last_io: Instant,
    /// Last time a borrower gave the slot back (inherited by a replacement),
    /// for `idle_timeout`.
    pub last_borrowed: Instant,
    /// The driver's cheap `Session::broken` answer.
    pub broken: bool,
    /// The server's idle timeout for this session, if it has one.
    pub server_idle_timeout: Option<Duration>,
    /// Whether the pool may shrink by this connection (it is above `min_idle`).
    pub may_shrink: bool,
    /// The connection was opened before the last
    /// [`Pool::retire_all`](crate::Pool::retire_all): never lend it again.
    pub stale: bool,
}

/// The settings [`assess`] reads; a copy of the relevant part of [`Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// See [`Config::idle_timeout`].
    pub idle_timeout: Option<Duration>,
    /// See [`Config::server_timeout_margin`].
    pub server_timeout_margin: Duration,
    /// See [`Config::keepalive_interval`].
    pub keepalive_interval: Option<Duration>,
    /// See [`Config::validation`].
    pub validation: Validation,
}

impl From<&Config> for Policy {
    fn from(c: &Config) -> Self {
        Policy {
            idle_timeout: c.idle_timeout,
            server_timeout_margin: c.server_timeout_margin,
            keepalive_interval: c.keepalive_interval,
            validation: c.validation,
        }
    }
}

/// The answer of [`assess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The connection may be kept (or lent).
    Keep,
    /// The connection must be closed, for this reason.
    Retire(Reason),
}

impl Policy {
    /// How long a session may sit idle before the pool retires it for the
    /// server's sake: the server's timeout minus the margin, but never less
    /// than half the server's timeout (a margin larger than a short timeout
    /// would otherwise retire connections the moment they go idle).
    pub fn server_deadline(&self, server_idle_timeout: Duration) -> Duration {
        let margin = self.server_timeout_margin.min(server_idle_timeout / 2);
        server_idle_timeout - margin
    }

    /// When the verdict on an idle connection with these facts next changes
    /// (it becomes obsolete, or a keepalive ping falls due), if ever.
    pub fn next_deadline(&self, f: &Facts) -> Option<Instant> {
        // `checked_add`: a deadline past what `Instant` can hold (a server
        // reporting an absurd timeout) is "never".
        [
            f.lifetime.and_then(|l| f.created.checked_add(l)),
            f.server_idle_timeout
                .and_then(|t| f.last_io.checked_add(self.server_deadline(t))),
            self.idle_timeout
                .filter(|_| f.may_shrink)
                .and_then(|t| f.last_borrowed.checked_add(t)),
            self.keepalive_interval
                .and_then(|k| f.last_io.checked_add(k)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Does a checkout of a connection silent since `last_io` need a
    /// validation round trip at `now`?
    pub fn needs_ping(&self, last_io: Instant, now: Instant) -> bool {
        match self.validation {
            Validation::Always => true,
            Validation::Never => false,
            Validation::IdleFor(window) => now.saturating_duration_since(last_io) > window,
        }
    }

    /// Is a keepalive ping due for an idle connection silent since `last_io`?
    pub fn keepalive_due(&self, last_io: Instant, now: Instant) -> bool {
        self.keepalive_interval
            .is_some_and(|k| now.saturating_duration_since(last_io) >= k)
    }
}

/// What a checkout does with an idle connection: the answer of [`at_checkout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkout {
    /// Lend it as it is.
    Lend,
    /// Prove it alive with a validation round trip first.
    Ping,
    /// Close it, for this reason.
    Retire(Reason),
}

/// The checkout decision. Retire what [`assess`] retires; ping a connection
/// silent past the bypass window ([`Validation`]) or last heard from before
/// `suspect_since`, when the pool last saw a sign of trouble (a failed ping,
/// reset or connect, a broken return: a server that failed one session has
/// often failed the others, including idle ones used moments ago); lend the
/// rest. At checkout the pool never shrinks, so pass facts with
/// `may_shrink: false`.
pub fn at_checkout(
    f: &Facts,
    p: &Policy,
    suspect_since: Option<Instant>,
    now: Instant,
) -> Checkout {
    if let Verdict::Retire(reason) = assess(f, p, now) {
        return Checkout::Retire(reason);
    }
    let suspect = suspect_since.is_some_and(|s| f.last_io < s);
    if suspect || p.needs_ping(f.last_io, now) {
        Checkout::Ping
    } else {
        Checkout::Lend
    }
}

impl Policy {
    /// [`at_checkout`] precomputed, for the fast path: a connection with
    /// these facts that is not broken, not stale and not last heard from
    /// before a sign of trouble is lent as it is at any `now` before the
    /// instant returned (exclusive), and at no later one; `None`: at any
    /// time. Its facts change only when it does I/O, so the pool computes
    /// this when the connection goes idle and a checkout compares one
    /// instant. The tests hold it equal to `at_checkout(..) == Lend`.
    pub fn lend_before(&self, f: &Facts) -> Option<Instant> {
        let expires = f.lifetime.and_then(|l| f.created.checked_add(l));
        self.lend_before_parts(f.last_io, f.server_idle_timeout, expires)
    }

    /// [`lend_before`](Policy::lend_before) from the parts the pool keeps:
    /// `expires` is `created + lifetime`, fixed when the connection opens.
    pub(crate) fn lend_before_parts(
        &self,
        last_io: Instant,
        server_idle_timeout: Option<Duration>,
        expires: Option<Instant>,
    ) -> Option<Instant> {
        Self::lend_before_allowed(last_io, self.lend_allowance(server_idle_timeout), expires)
    }

    /// How long after its last I/O a connection whose server times idle
    /// sessions out after `server_idle_timeout` may be lent without a
    /// ping: the bypass window (`needs_ping` fires strictly after it) and
    /// the server's deadline, whichever is shorter; `None`: for ever. Fixed
    /// for a connection's life, so the pool works it out once, at connect.
    pub(crate) fn lend_allowance(&self, server_idle_timeout: Option<Duration>) -> Option<Duration> {
        let window = match self.validation {
            Validation::Always => Some(Duration::ZERO),
            Validation::Never => None,
            Validation::IdleFor(w) => w.checked_add(Duration::from_nanos(1)),
        };
        let server = server_idle_timeout.map(|t| self.server_deadline(t));
        match (window, server) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`lend_before_parts`](Policy::lend_before_parts) with the
    /// connection's [`lend_allowance`](Policy::lend_allowance) worked out.
    pub(crate) fn lend_before_allowed(
        last_io: Instant,
        allowance: Option<Duration>,
        expires: Option<Instant>,
    ) -> Option<Instant> {
        // `checked_add`: a bound `Instant` cannot hold never comes.
        match (allowance.and_then(|a| last_io.checked_add(a)), expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// [`assess`] at the moment a borrower returns a connection, cheaply: the
/// connection was just heard from (`last_io == now`) and the pool does not
/// shrink on a return, so only a broken or stale session, an expired
/// lifetime or a server timeout of zero can retire it. `false` means
/// `assess` keeps it; `true` means ask `assess` for the verdict and reason.
/// The tests hold this to `assess`.
pub fn may_retire_at_return(
    broken: bool,
    stale: bool,
    expires: Option<Instant>,
    server_idle_timeout: Option<Duration>,
    now: Instant,
) -> bool {
    broken
        || stale
        || expires.is_some_and(|e| now >= e)
        || server_idle_timeout.is_some_and(|t| t.is_zero())
}

/// Close-if-unusable-or-obsolete: keep the connection, or retire it with a
/// reason. Checked in order of certainty: a broken connection is retired
/// whatever its age; then lifetime; then whichever idle rule fires first.
pub fn assess(f: &Facts, p: &Policy, now: Instant) -> Verdict {
    if f.broken {
        return Verdict::Retire(Reason::Broken);
    }
    if f.stale {
        return Verdict::Retire(Reason::Closed);
    }
    if let Some(lifetime) = f.lifetime {
        if now.saturating_duration_since(f.created) >= lifetime {
            return Verdict::Retire(Reason::MaxLifetime);
        }
    }
    // A deadline `Instant` cannot hold never comes.
    let server = f
        .server_idle_timeout
        .and_then(|t| f.last_io.checked_add(p.server_deadline(t)));
    let idle = p
        .idle_timeout
        .filter(|_| f.may_shrink)
        .and_then(|t| f.last_borrowed.checked_add(t));
    // When both idle rules have fired, name the one that fired first: that
    // is the rule that made the connection obsolete.
    match (server.filter(|d| now >= *d), idle.filter(|d| now >= *d)) {
        (Some(s), Some(i)) if i < s => Verdict::Retire(Reason::IdleTimeout),
        (Some(_), _) => Verdict::Retire(Reason::ServerTimeout),
        (None, Some(_)) => Verdict::Retire(Reason::IdleTimeout),
        (None, None) => Verdict::Keep,
    }
}
