//! One connection as the pool holds it: the driver's connection and what
//! the pool remembers about it. Shared by the idle set and the line
//! (`slots.rs`, `line.rs`), the guard and the return path.

use std::time::Duration;

use tokio::time::Instant;

use crate::liveness::Facts;

/// What the pool remembers about one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) id: u64,
    pub(crate) created: Instant,
    /// `created` + this connection's (jittered) lifetime: when it expires.
    pub(crate) expires: Option<Instant>,
    pub(crate) last_io: Instant,
    pub(crate) last_borrowed: Instant,
    /// The server's idle timeout for this session (`ServerTimeouts::idle`).
    pub(crate) server_idle: Option<Duration>,
    /// How long after its last I/O it may be lent without a ping
    /// ([`Policy::lend_allowance`](crate::liveness::Policy::lend_allowance)
    /// of `server_idle`, worked out at connect).
    pub(crate) lend_allowance: Option<Duration>,
    pub(crate) uses: u64,
    /// Index in the active registry while active; meaningless while idle.
    pub(crate) slot: usize,
    /// The pool's generation when this connection was opened.
    pub(crate) generation: u64,
    /// While idle: the checkout decision, precomputed when it went idle
    /// ([`Policy::lend_before`](crate::liveness::Policy::lend_before)).
    pub(crate) lend_before: Option<Instant>,
}

impl Meta {
    pub(crate) fn facts(&self, broken: bool, may_shrink: bool, generation: u64) -> Facts {
        Facts {
            created: self.created,
            lifetime: self
                .expires
                .map(|e| e.saturating_duration_since(self.created)),
            last_io: self.last_io,
            last_borrowed: self.last_borrowed,
            broken,
            server_idle_timeout: self.server_idle,
            may_shrink,
            stale: self.generation < generation,
        }
    }
}

/// A connection with the pool's bookkeeping, boxed: it moves on every
/// checkout and return (into the idle set, out of it, into the guard, into
/// a `Returning` task), and a pointer is cheaper to move than the
/// ~140-byte record (measured: a quarter of a contended cycle's
/// instructions went to `memcpy` before). One allocation per connection,
/// at connect.
pub(crate) struct Conn<C>(Box<Record<C>>);

/// What a [`Conn`] points to.
pub(crate) struct Record<C> {
    pub(crate) raw: C,
    pub(crate) meta: Meta,
}

impl<C> Conn<C> {
    pub(crate) fn new(raw: C, meta: Meta) -> Self {
        Conn(Box::new(Record { raw, meta }))
    }

    /// The driver's connection, for good.
    pub(crate) fn into_raw(self) -> C {
        self.0.raw
    }
}

impl<C> std::ops::Deref for Conn<C> {
    type Target = Record<C>;

    fn deref(&self) -> &Record<C> {
        &self.0
    }
}

impl<C> std::ops::DerefMut for Conn<C> {
    fn deref_mut(&mut self) -> &mut Record<C> {
        &mut self.0
    }
}
