//! Credentials fetched for every new connection: an IAM auth token, a
//! Vault lease, a password read from a rotated secret. The built-in
//! managers take one with `with_credentials`; each connect awaits it (within
//! the pool's `connect_timeout`, so a provider that hangs fails the connect
//! in bounded time), and the answer is used for that one connect and then
//! dropped: never stored, never in `Debug`, errors, logs or metrics.
//!
//! After a rotation, `Pool::retire_all` moves every session to the new
//! credentials: idle ones close at once, lent ones as they come back, and
//! each replacement asks the provider again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// A password or token. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a provider gave no credentials.
pub type CredentialsError = Box<dyn std::error::Error + Send + Sync>;

/// The future a provider returns.
pub type Fetch<'a> = Pin<Box<dyn Future<Output = Result<Secret, CredentialsError>> + Send + 'a>>;

/// Supplies the password for each new connection. Implemented for any
/// `Fn() -> impl Future<Output = Result<Secret, CredentialsError>>`:
///
/// ```
/// use vigil::backend::credentials::{Credentials, Secret};
///
/// let provider = || async { Ok(Secret::new("token-from-iam")) };
/// fn takes(_: impl Credentials) {}
/// takes(provider);
/// ```
pub trait Credentials: Send + Sync + 'static {
    /// The password for the next connection.
    fn password(&self) -> Fetch<'_>;
}

impl<F, Fut> Credentials for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Secret, CredentialsError>> + Send + 'static,
{
    fn password(&self) -> Fetch<'_> {
        Box::pin(self())
    }
}

/// The message a connect fails with when the provider failed: it names the
/// provider, and says nothing of any secret (the provider's error is the
/// provider's; it should not carry one either).
pub(crate) fn provider_failed(error: &CredentialsError) -> String {
    format!("the credentials provider failed: {error}")
}
