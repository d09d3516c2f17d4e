//! A checkout's validation ping that goes unanswered: after the hedge
//! delay (`Shared::hedge_delay`) the caller stops depending on it. A warm
//! idle connection, if one came back meanwhile, is lent at once; otherwise
//! a new connect starts beside the ping, and whichever is ready first
//! serves the caller.
//!
//! Slots stay exact because every party owns its permit: the ping's task
//! owns the silent connection's (it goes back idle if the ping answers
//! late, or is retired when the ping times out), the connect's task owns
//! the one the hedge took, and the loser's outcome lands in the idle set or
//! the retirements, never in a second caller. A hedge takes a free slot
//! only: in a pool whose every slot is taken, it waits for the ping.

use std::panic::Location;
use std::sync::Arc;

use tokio::time::Instant;

use super::inner::{Connected, Shared, Validated};
use super::owners::Permit;
use super::slots::Conn;
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
        let ping = self.validate_detached(conn, permit);
        let Some(delay) = self.hedge_delay() else {
            return ping.await;
        };
        tokio::pin!(ping);
        if let Ok(validated) = tokio::time::timeout(delay, &mut ping).await {
            return validated;
        }
        // The ping is silent past what this pool's pings take: a black
        // hole, most likely, which would hold the caller for the whole
        // `validation_timeout`.
        Stats::bump(&self.stats.validations_hedged);
        let Some(spare) = self.try_permit() else {
            // debug: the pool is full; the caller waits as it would unhedged.
            tracing::debug!(target: TARGET, conn_id, ?delay, "ping silent; no free slot to hedge with");
            return ping.await;
        };
        // debug, not warn: the ping's own outcome is logged when it comes.
        tracing::debug!(target: TARGET, conn_id, ?delay, "ping silent; hedging");
        let now = Instant::now();
        if let Some(warm) = self.pop_warm(now, site) {
            Stats::bump(&self.stats.validations_skipped);
            return Validated::Lent(spare.lend(warm, now));
        }
        let connect = self.connect_detached(spare, site);
        tokio::pin!(connect);
        tokio::select! {
            validated = &mut ping => match validated {
                // The connect's task puts its connection idle when it opens.
                Validated::Lent(pooled) => Validated::Lent(pooled),
                // The silent one was dead: the connect is the way now.
                Validated::Failed(permit) => {
                    drop(permit);
                    match connect.await {
                        Connected::Lent(pooled) => Validated::Lent(pooled),
                        Connected::Retry(permit, _) => Validated::Failed(permit),
                        Connected::Closed => Validated::Gone,
                    }
                }
                Validated::Gone => Validated::Gone,
            },
            connected = &mut connect => match connected {
                // The ping's task keeps what it finds: idle if it answers,
                // retired if it does not.
                Connected::Lent(pooled) => Validated::Lent(pooled),
                // The connect failed; the ping may yet answer. The caller's
                // loop backs off if it comes to connecting again.
                Connected::Retry(permit, _) => {
                    drop(permit);
                    ping.await
                }
                Connected::Closed => Validated::Gone,
            },
        }
    }
}
