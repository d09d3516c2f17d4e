//! The per-session statement cache behind [`PgClient::prepare_cached`].
//!
//! tokio-postgres prepares a statement on every `query(&str, …)`: a Parse
//! and Describe round trip before the query's own. A service that prepares
//! once per session and reuses the statement makes one round trip per
//! query instead; deadpool-postgres gives its users such a cache, and this
//! is vigil's. It lives in the [`PgClient`], so it is gone with the
//! session; it is bounded (least recently used out: dropping a
//! [`Statement`] makes the driver close it on the server), and a full
//! reset (`DISCARD ALL`, `reset_on_return`) empties it, since the server
//! has dropped every prepared statement then.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;
use tokio_postgres::types::Type;
use tokio_postgres::{Error, Statement};

use super::PgClient;

/// How many statements each session keeps by default (as sqlx).
pub const DEFAULT_STATEMENT_CACHE: usize = 100;

/// A session's prepared statements by query text (and parameter types,
/// for the typed variant); `None`: the cache is off.
pub(super) struct StatementCache(Option<Mutex<LruCache<String, Statement>>>);

impl StatementCache {
    pub(super) fn new(capacity: usize) -> Self {
        StatementCache(NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))))
    }

    fn get(&self, key: &str) -> Option<Statement> {
        self.0.as_ref()?.lock().get(key).cloned()
    }

    fn put(&self, key: String, statement: &Statement) {
        if let Some(cache) = &self.0 {
            // An evicted statement is dropped here, outside nothing the
            // driver needs: it queues its Close for the next request.
            drop(cache.lock().put(key, statement.clone()));
        }
    }

    /// Forgets every statement (the server dropped them: `DISCARD ALL`).
    pub(super) fn clear(&self) {
        if let Some(cache) = &self.0 {
            cache.lock().clear();
        }
    }

    /// Statements held.
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |c| c.lock().len())
    }
}

/// The cache key of a typed statement: a query cannot contain NUL, so the
/// types after one never make two different pairs equal.
fn typed_key(query: &str, types: &[Type]) -> String {
    let mut key = String::with_capacity(query.len() + 1 + types.len() * 6);
    key.push_str(query);
    key.push('\0');
    for t in types {
        key.push_str(&t.oid().to_string());
        key.push(',');
    }
    key
}

impl PgClient {
    /// Prepares `query` once per session and returns the same statement
    /// every time after, without a round trip; see the module docs. With
    /// the cache off ([`TokioPgManager::with_statement_cache`]`(0)`),
    /// prepares anew each time.
    ///
    /// ```no_run
    /// # async fn demo(pool: vigil::Pool<vigil::backend::tokio_postgres::TokioPgManager>)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = pool.get().await?;
    /// let statement = conn.prepare_cached("SELECT $1::int4").await?;
    /// let row = conn.query_one(&statement, &[&7i32]).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// [`TokioPgManager::with_statement_cache`]: super::TokioPgManager::with_statement_cache
    ///
    /// # Errors
    /// The driver's, when the server refuses to prepare the statement.
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.statements.get(query) {
            return Ok(statement);
        }
        let statement = self.client.prepare(query).await?;
        self.statements.put(query.to_owned(), &statement);
        Ok(statement)
    }

    /// [`prepare_cached`](Self::prepare_cached) with the parameter types
    /// given, as [`Client::prepare_typed`](tokio_postgres::Client::prepare_typed).
    ///
    /// # Errors
    /// The driver's, when the server refuses to prepare the statement.
    pub async fn prepare_typed_cached(
        &self,
        query: &str,
        types: &[Type],
    ) -> Result<Statement, Error> {
        let key = typed_key(query, types);
        if let Some(statement) = self.statements.get(&key) {
            return Ok(statement);
        }
        let statement = self.client.prepare_typed(query, types).await?;
        self.statements.put(key, &statement);
        Ok(statement)
    }

    /// How many prepared statements this session's cache holds.
    pub fn cached_statements(&self) -> usize {
        self.statements.len()
    }
}

#[cfg(test)]
mod tests {
    use tokio_postgres::types::Type;

    #[test]
    fn typed_keys_differ_from_untyped_ones_and_by_type() {
        let q = "SELECT $1";
        assert_ne!(super::typed_key(q, &[]), q);
        assert_ne!(
            super::typed_key(q, &[Type::INT4]),
            super::typed_key(q, &[Type::INT8])
        );
    }
}
