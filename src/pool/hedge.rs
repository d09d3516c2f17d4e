//! A checkout's validation ping that goes unanswered: after the hedge
//! delay (`Shared::hedge_delay`) the caller stops depending on it. The
//! silent connection is presumed dead (`Io::silence`): it leaves the
//! pool's count and its unit of capacity comes back to the caller, who is
//! served by a warm idle connection if one came back meanwhile, or by a
//! new connect on that unit.
//!
//! Slots stay exact because every party owns its unit: the ping's task
//! keeps the silent connection outside `max_size` (it is filed idle on a
//! free unit if the ping answers late, closed if there is none, retired
//! when the ping fails or times out), and the caller's unit moves into
//! the connection it is lent. At most `max_size` connections are presumed
//! dead at once; past that a silent ping keeps its unit and the caller
//! waits for it, up to `validation_timeout`, as it would unhedged.

use std::panic::Location;
use std::sync::Arc;

use tokio::time::Instant;

use super::conn::Conn;
use super::inner::{Connected, Shared, Validated};
use super::owners::Permit;
use super::TARGET;
use crate::manager::Manager;
use crate::stats::Stats;

impl<M: Manager> Shared<M> {
    /// Validates `conn` for a checkout on `permit`, hedged as the module
    /// docs say. Cancel safe: the ping and any connect run in tasks of
    /// their own, which keep what they get if the caller is gone.
    pub(super) async fn validate_hedged(
        self: &Arc<Self>,
        conn: Conn<M::Connection>,
        permit: Permit<M>,
        site: &'static Location<'static>,
    ) -> Validated<M> {
        let conn_id = conn.meta.id;
        let permit = match self.validate_detached(conn, permit).await {
            Validated::Silent(permit) => permit,
            done => return done,
        };
        // debug, not warn: the ping's own outcome is logged when it comes.
        tracing::debug!(target: TARGET, conn_id, "ping silent; serving the caller another way");
        let now = Instant::now();
        if let Ok(warm) = self.warm(None, now, site) {
            Stats::bump(&self.stats.validations_skipped);
            return Validated::Lent(permit.lend(warm, now));
        }
        match self.connect_detached(permit, site).await {
            Connected::Lent(pooled) => Validated::Lent(pooled),
            // The caller's loop backs off if it comes to connecting again.
            Connected::Retry(permit, _) => Validated::Failed(permit),
            Connected::Closed => Validated::Gone,
        }
    }
}
