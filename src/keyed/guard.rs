//! [`KeyedPooled`]: the guard of a connection lent by a `KeyedPool`.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use super::capped::{Capped, CappedConn};
use super::shared::Shared;
use super::usage::Usage;
use crate::manager::Manager;
use crate::pool::Pooled;

/// A connection lent by a [`KeyedPool`]. Derefs to the backend's connection;
/// dropping it hands the connection back to its key's sub-pool.
///
/// [`KeyedPool`]: super::KeyedPool
#[must_use = "dropping the guard returns the connection at once"]
pub struct KeyedPooled<M: Manager> {
    pooled: Option<Pooled<Capped<M>>>,
    usage: Arc<Usage>,
    shared: Arc<Shared<M>>,
}

impl<M: Manager> KeyedPooled<M> {
    pub(super) fn new(
        pooled: Pooled<Capped<M>>,
        usage: &Arc<Usage>,
        shared: &Arc<Shared<M>>,
    ) -> Self {
        usage.lent.fetch_add(1, SeqCst);
        KeyedPooled {
            pooled: Some(pooled),
            usage: Arc::clone(usage),
            shared: Arc::clone(shared),
        }
    }

    fn pooled(&self) -> &Pooled<Capped<M>> {
        self.pooled
            .as_ref()
            .expect("KeyedPooled holds its connection until dropped")
    }

    fn pooled_mut(&mut self) -> &mut Pooled<Capped<M>> {
        self.pooled
            .as_mut()
            .expect("KeyedPooled holds its connection until dropped")
    }

    /// Takes the connection out of the pool for good, as [`Pooled::detach`].
    /// It no longer counts toward the global cap.
    pub fn detach(mut this: Self) -> M::Connection {
        let pooled = this
            .pooled
            .take()
            .expect("KeyedPooled holds its connection until dropped");
        let CappedConn { raw, permit } = Pooled::detach(pooled);
        drop(permit);
        raw
    }

    /// Closes the connection instead of returning it, as [`Pooled::retire`].
    pub fn retire(mut this: Self) {
        if let Some(pooled) = this.pooled.take() {
            Pooled::retire(pooled);
        }
    }

    /// Asks for a full session reset when this connection comes back, as
    /// [`Pooled::reset_on_return`].
    pub fn reset_on_return(this: &mut Self) {
        Pooled::reset_on_return(this.pooled_mut());
    }

    /// The key's public label, if it has one.
    pub fn label(this: &Self) -> Option<&str> {
        this.usage.label.as_deref()
    }

    /// The sub-pool's id for this connection (as in its log lines).
    pub fn id(this: &Self) -> u64 {
        Pooled::id(this.pooled())
    }
}

impl<M: Manager> Deref for KeyedPooled<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.pooled().raw
    }
}

impl<M: Manager> DerefMut for KeyedPooled<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.pooled_mut().raw
    }
}

impl<M: Manager> Drop for KeyedPooled<M> {
    fn drop(&mut self) {
        // The check-in first, so the connects woken below find it idle.
        drop(self.pooled.take());
        self.usage.touch();
        self.usage.lent.fetch_sub(1, SeqCst);
        self.shared.cap.returned();
    }
}

impl<M: Manager> fmt::Debug for KeyedPooled<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedPooled")
            .field("key", &self.usage.id)
            .field("label", &self.usage.label)
            .field("conn", &self.pooled)
            .finish()
    }
}
