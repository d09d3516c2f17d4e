//! Keys: the [`PoolKey`] trait, the [`Identity`] digest a key is stored
//! under, and [`Credentials`], a ready-made key.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A key of a [`KeyedPool`]: a public label and a secret identity.
///
/// Two keys share a sub-pool exactly when their labels and every field
/// they feed to [`identify`](PoolKey::identify) are equal.
///
/// [`KeyedPool`]: super::KeyedPool
pub trait PoolKey: Send + Sync {
    /// A name that may appear in logs, `Debug` output and metric labels
    /// (say, a tenant). `None` (the default) keeps the key anonymous: logs
    /// then name it by a number only, and it is never exported as metrics.
    fn label(&self) -> Option<&str> {
        None
    }

    /// Feeds everything that tells this key apart (user, password,
    /// database, host…) to `id`, one [`field`](Identity::field) each.
    fn identify(&self, id: &mut Identity);
}

/// The digest a [`PoolKey`] is stored under: SHA-256 over a per-pool random
/// salt, the label and each field, every field length-prefixed (so
/// `("ab", "c")` and `("a", "bc")` differ). Its `Debug` shows nothing.
pub struct Identity(Sha256);

impl Identity {
    /// Adds one field of the key's identity.
    pub fn field(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        let bytes = bytes.as_ref();
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// Adds an optional field; `None` and `Some("")` differ.
    pub fn optional(&mut self, bytes: Option<impl AsRef<[u8]>>) -> &mut Self {
        match bytes {
            Some(b) => self.field([1]).field(b),
            None => self.field([0]),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity { .. }")
    }
}

/// What the key map holds: never the key itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Digest([u8; 32]);

impl Digest {
    /// The digest of `key` under the keyed pool's `salt`: see [`Identity`].
    pub(super) fn of<K: PoolKey>(salt: [u8; 32], key: &K) -> Self {
        let mut id = Identity(Sha256::new());
        id.0.update(salt);
        id.optional(key.label());
        key.identify(&mut id);
        Digest(id.0.finalize().into())
    }
}

/// A login as a [`PoolKey`]: user, password, optional database, and an
/// optional tenant name used as the public label.
///
/// `Debug` shows tenant, user and database; the password never.
#[derive(Clone)]
pub struct Credentials {
    tenant: Option<String>,
    user: String,
    password: String,
    database: Option<String>,
}

impl Credentials {
    /// A login with `user` and `password`, no database, no tenant.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            tenant: None,
            user: user.into(),
            password: password.into(),
            database: None,
        }
    }

    /// The public name of this key (logs, metric labels). Default: none.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The database to log into. Default: none (the server's default).
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// The tenant name, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password, for the factory that builds the key's manager.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The database, if any.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl PoolKey for Credentials {
    fn label(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    fn identify(&self, id: &mut Identity) {
        id.field(&self.user)
            .field(&self.password)
            .optional(self.database.as_deref());
    }
}
