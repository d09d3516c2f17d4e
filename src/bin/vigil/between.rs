//! `vigil probe`: what sits between vigil and PostgreSQL. The server says
//! which port it listens on (`inet_server_port()`, NULL over a Unix
//! socket); a different one than the probe connected to means a proxy or a
//! port forward. pgbouncer, the common one, is recognised by its admin
//! console (database `pgbouncer`, `SHOW VERSION`), and its idle cutoffs are
//! read there (`SHOW CONFIG`): the server cannot report them, so without
//! this vigil would not know them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::SimpleQueryMessage;
use vigil::Manager;

use crate::backend::{error_chain, tokio_pg};
use crate::human_secs;

/// pgbouncer settings that decide what it does to vigil's sessions.
const PGBOUNCER_SETTINGS: [&str; 8] = [
    "pool_mode",
    "client_idle_timeout",
    "server_check_delay",
    "server_idle_timeout",
    "server_lifetime",
    "idle_transaction_timeout",
    "query_wait_timeout",
    "max_prepared_statements",
];

/// What the probe found between itself and the server. JSON key `between`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Between {
    /// The port the probe connected to.
    pub(crate) connected_port: u16,
    /// The port the server says it listens on (`null`: a Unix socket).
    pub(crate) server_port: Option<u16>,
    /// Something forwards the connection: the two ports differ.
    pub(crate) proxied: bool,
    /// `PgBouncer 1.18.0`, when its admin console answered.
    pub(crate) pgbouncer: Option<String>,
    /// Its settings from `SHOW CONFIG` (of [`PGBOUNCER_SETTINGS`]), as it shows them.
    pub(crate) pgbouncer_settings: BTreeMap<String, String>,
    /// Why the admin console could not be read, when something is between.
    pub(crate) console_error: Option<String>,
}

impl Between {
    /// Looks at the path: `server_port` is what the server reported.
    pub(crate) async fn look(
        url: &str,
        connected_port: u16,
        server_port: Option<u16>,
        within: Duration,
    ) -> Between {
        let mut b = Between {
            connected_port,
            server_port,
            proxied: server_port != Some(connected_port),
            ..Between::default()
        };
        if b.proxied {
            match tokio::time::timeout(within, console(url)).await {
                Ok(Ok((version, settings))) => {
                    b.pgbouncer = Some(version);
                    b.pgbouncer_settings = settings;
                }
                Ok(Err(e)) => b.console_error = Some(e),
                Err(_) => b.console_error = Some(format!("no answer within {within:?}")),
            }
        }
        b
    }

    fn seconds(&self, key: &str) -> Option<f64> {
        self.pgbouncer_settings.get(key)?.trim().parse().ok()
    }

    /// Notes and advice for what is between; `idle_override` is the
    /// recommendation this may set (retiring before pgbouncer cuts costs
    /// nothing; a keepalive under its cutoff would ping every idle
    /// connection every second or two).
    pub(crate) fn advise(
        &self,
        notes: &mut Vec<String>,
        why: &mut Vec<String>,
        idle_override: &mut Option<f64>,
    ) {
        if !self.proxied {
            return;
        }
        let server = self
            .server_port
            .map_or("a Unix socket".to_owned(), |p| format!("port {p}"));
        let Some(version) = &self.pgbouncer else {
            notes.push(format!(
                "something forwards this connection: you connected to port {}, the server \
                 listens on {server} (a proxy, load balancer or port forward; not pgbouncer's \
                 admin console: {})",
                self.connected_port,
                self.console_error.as_deref().unwrap_or("unknown")
            ));
            why.push(
                "vigil cannot read a proxy's idle cutoff from the server: keep \
                 keepalive_interval under it, or set server_idle_timeout_override to it; \
                 vigil also learns a cutoff from connections it finds dead after idling"
                    .to_owned(),
            );
            return;
        };
        let mode = self
            .pgbouncer_settings
            .get("pool_mode")
            .map_or("unknown", String::as_str);
        notes.push(format!(
            "{version} is between vigil and PostgreSQL (pool_mode = {mode}; the server \
             listens on {server}); the server's timeouts above are those of pgbouncer's own \
             server connections"
        ));
        let client_idle = self.seconds("client_idle_timeout").filter(|t| *t > 0.0);
        match (mode, client_idle) {
            ("session", _) => why.push(
                "pgbouncer in session mode: each vigil session keeps one server session, so \
                 the server's idle_session_timeout reaches vigil's sessions (vigil reads it) \
                 and pgbouncer's client_idle_timeout never fires for them"
                    .to_owned(),
            ),
            (_, Some(t)) => {
                let retire_at = (t * 0.75).max(1.0);
                *idle_override = Some(retire_at);
                why.push(format!(
                    "pgbouncer closes client connections idle for {} (client_idle_timeout), \
                     which the server cannot tell vigil: set server_idle_timeout_override = \
                     {} so vigil retires them first (the server's idle_session_timeout does \
                     not reach vigil's sessions in {mode} mode)",
                    human_secs(t),
                    human_secs(retire_at)
                ));
            }
            _ => why.push(format!(
                "pgbouncer's client_idle_timeout is off, and in {mode} mode the server's \
                 idle_session_timeout does not reach vigil's sessions: set \
                 server_idle_timeout_override only if something else cuts idle connections"
            )),
        }
        if mode == "transaction" || mode == "statement" {
            if self.seconds("server_check_delay").is_some_and(|d| d > 0.0) {
                why.push(
                    "set pgbouncer's server_check_delay = 0: otherwise a server session \
                     killed while idle in pgbouncer's pool is handed to the next transaction \
                     as it is, and that query fails however healthy vigil's session is"
                        .to_owned(),
                );
            }
            let prepared = self
                .seconds("max_prepared_statements")
                .is_some_and(|n| n > 0.0);
            if !prepared {
                why.push(format!(
                    "{mode} mode without max_prepared_statements (pgbouncer >= 1.21): no \
                     named prepared statements and no session state; use tokio-postgres \
                     query_typed or simple_query, sqlx raw_sql (its statement cache names \
                     statements even when off), keep reset_on_return off (DISCARD ALL per \
                     return is pgbouncer's job) and no `options` startup parameter (vigil \
                     load --session-idle-timeout sends one)"
                ));
            }
        }
    }
}

/// `SHOW VERSION` and `SHOW CONFIG` on pgbouncer's admin console, with the
/// URL's user and password.
async fn console(url: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let manager = tokio_pg(url, "vigil-probe", None).map_err(|e| e.message)?;
    let mut config = manager.config().clone();
    config.dbname("pgbouncer");
    let manager =
        vigil::backend::tokio_postgres::TokioPgManager::new(config).with_tls(manager.tls().clone());
    let conn = manager.connect().await.map_err(|e| error_chain(&e))?;
    let rows = |messages: Vec<SimpleQueryMessage>| -> Vec<Vec<String>> {
        messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or_default().to_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    };
    let version = rows(
        conn.simple_query("SHOW VERSION")
            .await
            .map_err(|e| error_chain(&e))?,
    )
    .into_iter()
    .next()
    .and_then(|row| row.into_iter().next())
    .ok_or("SHOW VERSION answered no row")?;
    let settings = rows(
        conn.simple_query("SHOW CONFIG")
            .await
            .map_err(|e| error_chain(&e))?,
    )
    .into_iter()
    .filter_map(|row| {
        let mut row = row.into_iter();
        let (key, value) = (row.next()?, row.next()?);
        PGBOUNCER_SETTINGS
            .contains(&key.as_str())
            .then_some((key, value))
    })
    .collect();
    manager.close(conn).await;
    Ok((version, settings))
}
