//! [`KeyedBuilder`]: the settings of a [`KeyedPool`], checked by `build`.

use std::collections::HashMap;
use std::fmt;
#[cfg(feature = "metrics")]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::time::Instant;

use super::cap::Cap;
use super::capped::CappedError;
#[cfg(feature = "metrics")]
use super::shared::Exported;
use super::shared::{sweeper, Shared};
use super::{KeyedPool, Owner, PoolKey};
use crate::config::Config;
use crate::error::BuildError;
use crate::manager::Manager;
use crate::pool::Hooks;
use crate::{SetUpHook, VetHook};

pub(super) type Factory<K, M> = Box<dyn Fn(&K) -> M + Send + Sync>;

/// Builds a [`KeyedPool`]. Setters never panic; [`build`](KeyedBuilder::build)
/// checks every setting and names the bad one.
#[must_use]
pub struct KeyedBuilder<K, M: Manager> {
    factory: Factory<K, M>,
    template: Config,
    name: String,
    max_open: usize,
    key_idle_timeout: Duration,
    hooks: Hooks<M::Connection, M::Error>,
    #[cfg(feature = "metrics")]
    metrics: Option<(crate::metrics::Metrics, usize)>,
}

impl<K, M: Manager> fmt::Debug for KeyedBuilder<K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("name", &self.name)
            .field("max_open", &self.max_open)
            .field("key_idle_timeout", &self.key_idle_timeout)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl<K: PoolKey, M: Manager> KeyedBuilder<K, M> {
    /// A builder with every setting at its documented default.
    pub(super) fn new(factory: Factory<K, M>) -> Self {
        KeyedBuilder {
            factory,
            template: Config::default(),
            name: "keyed".to_owned(),
            max_open: 50,
            key_idle_timeout: Duration::from_secs(10 * 60),
            hooks: Hooks::default(),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// The settings of every sub-pool (its `name` is replaced by
    /// `{name}/{label}`, or `{name}/key{n}` for a key without a label).
    /// Default: [`Config::default`].
    pub fn template(mut self, config: Config) -> Self {
        self.template = config;
        self
    }

    /// Most connections of one key: the template's `max_size`. Default 10.
    pub fn max_size_per_key(mut self, max_size: usize) -> Self {
        self.template.max_size = max_size;
        self
    }

    /// The template's `acquire_timeout`: the longest a `get` waits, for its
    /// key's slot and for the global cap together. Default 30 s.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.template.acquire_timeout = timeout;
        self
    }

    /// Most connections open at once over all keys (lent, idle and being
    /// opened). Default 50: half of PostgreSQL's default `max_connections`,
    /// leaving room for other clients and for administrators.
    pub fn max_open(mut self, max_open: usize) -> Self {
        self.max_open = max_open;
        self
    }

    /// Drop a key (close its idle connections, forget its manager) after
    /// this long with nothing lent, nobody waiting and no use. Default
    /// 10 min, the template's default `idle_timeout`.
    pub fn key_idle_timeout(mut self, timeout: Duration) -> Self {
        self.key_idle_timeout = timeout;
        self
    }

    /// The keyed pool's name: the prefix of its sub-pools' names (their
    /// `pool` metric label). Default `"keyed"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// [`Builder::after_connect`](crate::Builder::after_connect) for every
    /// key's sub-pool. Default: none.
    pub fn after_connect(mut self, hook: impl SetUpHook<M::Connection, M::Error>) -> Self {
        self.hooks.after_connect = Some(Arc::new(hook));
        self
    }

    /// [`Builder::before_acquire`](crate::Builder::before_acquire) for every
    /// key's sub-pool. Default: none.
    pub fn before_acquire(mut self, hook: impl VetHook<M::Connection, M::Error>) -> Self {
        self.hooks.before_acquire = Some(Arc::new(hook));
        self
    }

    /// [`Builder::after_release`](crate::Builder::after_release) for every
    /// key's sub-pool. Default: none.
    pub fn after_release(mut self, hook: impl VetHook<M::Connection, M::Error>) -> Self {
        self.hooks.after_release = Some(Arc::new(hook));
        self
    }

    /// Exports the sub-pools of labelled keys through `metrics`, as
    /// `pool="{name}/{label}"`, at most `max_keys` at once (the rest are
    /// not exported; see the [module docs](super)). Default: none exported.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: &crate::metrics::Metrics, max_keys: usize) -> Self {
        self.metrics = Some((metrics.clone(), max_keys));
        self
    }

    /// Checks the settings and starts the key sweep. Opens no connection.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`BuildError::Config`] naming the first invalid setting (of the
    /// template, or `max_open`, `key_idle_timeout`, `name`);
    /// [`BuildError::NoRuntime`] outside a tokio runtime.
    pub fn build(self) -> Result<KeyedPool<K, M>, BuildError> {
        self.template.validate()?;
        crate::config::count("max_open", self.max_open)?;
        crate::config::positive("key_idle_timeout", self.key_idle_timeout)?;
        if self.name.is_empty() {
            return Err(crate::config::invalid("name", "must not be empty").into());
        }
        let runtime = Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let shared = Arc::new(Shared {
            name: self.name,
            template: self.template,
            max_open: self.max_open,
            key_idle_timeout: self.key_idle_timeout,
            hooks: self
                .hooks
                .wrapped(|c| &mut c.raw, |e| CappedError::Backend(Arc::new(e))),
            salt: rand::random(),
            keys: Mutex::new(HashMap::new()),
            cap: Arc::new(Cap::new(self.max_open, runtime.clone())),
            next_key_id: AtomicU64::new(1),
            epoch: Instant::now(),
            closed: AtomicBool::new(false),
            runtime: runtime.clone(),
            #[cfg(feature = "metrics")]
            metrics: self.metrics.map(|(metrics, max)| Exported {
                metrics,
                max,
                used: AtomicUsize::new(0),
            }),
        });
        let every =
            (self.key_idle_timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
        runtime.spawn(sweeper(Arc::downgrade(&shared), every));
        Ok(KeyedPool {
            handle: Arc::new(Owner {
                shared,
                factory: self.factory,
            }),
        })
    }
}
