//! `--kill-idle-every`: an admin session, outside the pool, that kills the
//! pool's idle sessions on the server, the way a DBA, a failover or a proxy
//! restart would.
//!
//! # Which sessions, and why that keeps the run error-free
//!
//! Only sessions of *this* pool (MySQL: the connection ids the workers saw;
//! PostgreSQL: this run's `application_name`) that the server has seen idle
//! for more than [`IDLE_FOR`]. That is twice the pool's validation bypass
//! window (500 ms), so the pool pings each of them before lending it again,
//! finds it dead and opens a replacement: no caller sees the kill.
//!
//! A connection lent to a worker is never idle that long on the server: it
//! was validated or used less than the bypass window ago, and the worker
//! queries it at once. The one race left is a `get()` that pings a session
//! between the killer's look at the server and its `KILL`: the ping passes,
//! the session dies, the worker's query fails. The killer therefore holds
//! the load's *gate* for writing while it looks and kills, and workers hold
//! it for reading around `get()` (only when killing is on), so no checkout
//! is in flight at that moment.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use tokio::sync::watch;

use crate::backend::Target;
use crate::live::{Live, SessionIds};

/// Kill only sessions the server has seen idle longer than this.
pub(crate) const IDLE_FOR: Duration = Duration::from_secs(1);

/// MySQL `ER_NO_SUCH_THREAD`: the session ended before the `KILL` came.
const ER_NO_SUCH_THREAD: u16 = 1094;
/// MySQL `ER_BAD_FIELD_ERROR`: MySQL lacks MariaDB's `TIME_MS` column.
const ER_BAD_FIELD_ERROR: u16 = 1054;

/// Kills idle sessions of one pool through its own admin connection.
pub(crate) enum Killer {
    MySql {
        opts: Opts,
        admin: Option<Conn>,
        ids: SessionIds,
        /// MySQL (not MariaDB): only whole seconds in the process list.
        seconds_only: bool,
    },
    Postgres {
        /// Boxed: the options are several times the size of the MySQL variant.
        opts: Box<PgConnectOptions>,
        admin: Option<PgConnection>,
        application_name: String,
    },
}

impl Killer {
    /// A killer for `admin_target`: the run's target *without* its session
    /// idle timeout (the admin session idles between rounds and must not
    /// time out itself). `None` for SQLite, which has no sessions to kill.
    pub(crate) fn new(
        admin_target: &Target,
        ids: SessionIds,
        application_name: &str,
    ) -> Option<Self> {
        match admin_target {
            Target::MySql(opts) => Some(Killer::MySql {
                opts: opts.clone(),
                admin: None,
                ids,
                seconds_only: false,
            }),
            Target::Postgres(opts) => Some(Killer::Postgres {
                opts: Box::new(
                    opts.clone()
                        .application_name(&format!("{application_name}-admin")),
                ),
                admin: None,
                application_name: application_name.to_owned(),
            }),
            Target::Sqlite(_) => None,
        }
    }

    /// One round: kills every eligible session and says how many died.
    /// On error the admin session is dropped and reopened next round.
    pub(crate) async fn round(&mut self) -> Result<u64, String> {
        let result = match self {
            Killer::MySql {
                opts,
                admin,
                ids,
                seconds_only,
            } => {
                let conn = match admin {
                    Some(c) => c,
                    None => admin.insert(Conn::new(opts.clone()).await.map_err(|e| e.to_string())?),
                };
                mysql_round(conn, ids, seconds_only).await
            }
            Killer::Postgres {
                opts,
                admin,
                application_name,
            } => {
                let conn = match admin {
                    Some(c) => c,
                    None => admin.insert(opts.connect().await.map_err(|e| e.to_string())?),
                };
                pg_round(conn, application_name).await
            }
        };
        if result.is_err() {
            self.drop_admin().await;
        }
        result
    }

    async fn drop_admin(&mut self) {
        match self {
            Killer::MySql { admin, .. } => {
                if let Some(c) = admin.take() {
                    let _ = c.disconnect().await;
                }
            }
            Killer::Postgres { admin, .. } => {
                if let Some(c) = admin.take() {
                    let _ = c.close().await;
                }
            }
        }
    }

    /// Says goodbye to the server.
    pub(crate) async fn close(mut self) {
        self.drop_admin().await;
    }
}

async fn mysql_round(
    admin: &mut Conn,
    ids: &SessionIds,
    seconds_only: &mut bool,
) -> Result<u64, String> {
    let idle_ms = IDLE_FOR.as_millis();
    let listed: Vec<u32> = loop {
        // `Sleep` is the process list's word for "between commands".
        let sql = if *seconds_only {
            format!(
                "SELECT ID FROM information_schema.processlist \
                 WHERE COMMAND = 'Sleep' AND TIME > {} AND ID <> CONNECTION_ID()",
                IDLE_FOR.as_secs()
            )
        } else {
            format!(
                "SELECT ID FROM information_schema.processlist \
                 WHERE COMMAND = 'Sleep' AND TIME_MS > {idle_ms} AND ID <> CONNECTION_ID()"
            )
        };
        match admin.query(sql).await {
            Ok(rows) => break rows,
            Err(mysql_async::Error::Server(e))
                if e.code == ER_BAD_FIELD_ERROR && !*seconds_only =>
            {
                *seconds_only = true;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let ours: Vec<u32> = {
        let ids = ids.lock().unwrap_or_else(|p| p.into_inner());
        listed.into_iter().filter(|id| ids.contains(id)).collect()
    };
    let mut killed = 0;
    for id in ours {
        match admin.query_drop(format!("KILL {id}")).await {
            Ok(()) => killed += 1,
            Err(mysql_async::Error::Server(e)) if e.code == ER_NO_SUCH_THREAD => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(killed)
}

async fn pg_round(admin: &mut PgConnection, application_name: &str) -> Result<u64, String> {
    // `clock_timestamp()`, not `now()`: the latter is the start of this
    // statement's transaction, fine here, but wrong in any longer one.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND state = 'idle' \
           AND clock_timestamp() - state_change > make_interval(secs => $2) AND pid <> pg_backend_pid()",
    )
    .bind(application_name)
    .bind(IDLE_FOR.as_secs_f64())
    .fetch_all(admin)
    .await
    .map_err(|e| e.to_string())?;
    Ok(terminated.into_iter().filter(|t| *t).count() as u64)
}

/// Kill rounds that failed, for the report.
#[derive(Default)]
pub(crate) struct KillTally {
    pub(crate) failures: u64,
    pub(crate) first_error: Option<String>,
}

/// Every `every`, one kill round under the gate, until the run halts.
pub(crate) async fn kill_loop(
    mut killer: Killer,
    every: Duration,
    live: Arc<Live>,
    mut halted: watch::Receiver<bool>,
) -> KillTally {
    let mut tally = KillTally::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = halted.wait_for(|h| *h) => break,
        }
        let Some(gate) = &live.gate else { break };
        let _exclusive = gate.write().await;
        let outcome = tokio::time::timeout(Duration::from_secs(5), killer.round()).await;
        let error = match outcome {
            Ok(Ok(n)) => {
                live.killed.fetch_add(n, Relaxed);
                live.timeline.mark("kill", Some(n));
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => {
                // Cancelled mid-query: the admin session's state is unknown.
                killer.drop_admin().await;
                "a kill round got no answer within 5 s".to_owned()
            }
        };
        tally.failures += 1;
        tally.first_error.get_or_insert(error);
    }
    killer.close().await;
    tally
}
