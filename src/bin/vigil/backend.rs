//! From a URL to a backend: which manager, with which session settings, and
//! how one request runs on its connection.

use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::{PgManager, SqliteManager};
use vigil::backend::tokio_postgres::TokioPgManager;
use vigil::Manager;

use crate::Fail;

/// The database a URL names, with the options to open sessions with.
#[derive(Clone)]
pub(crate) enum Target {
    MySql(Opts),
    Postgres(PgConnectOptions),
    Sqlite(SqliteConnectOptions),
}

/// What a run without `--url` uses: an in-memory SQLite database.
pub(crate) const DEFAULT_URL: &str = "sqlite::memory:";

impl Target {
    /// Parses `url` by its scheme. The error names the problem, never the password.
    pub(crate) fn parse(url: &str) -> Result<Target, Fail> {
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        match scheme.to_ascii_lowercase().as_str() {
            "mysql" | "mariadb" => {
                // mysql_async knows only `mysql://`; MariaDB speaks the same protocol.
                let url = format!("mysql{}", &url[scheme.len()..]);
                let manager = MySqlManager::from_url(&url)
                    .map_err(|e| Fail::input(format!("invalid MySQL/MariaDB URL: {e}")))?;
                // TCP only, to the address given: see the `prefer_socket`
                // section of vigil's `backend::mysql` docs.
                let opts = OptsBuilder::from_opts(manager.opts().clone()).prefer_socket(false);
                Ok(Target::MySql(opts.into()))
            }
            "postgres" | "postgresql" => {
                let manager = PgManager::from_url(url).map_err(|e| Fail::input(e.to_string()))?;
                Ok(Target::Postgres(manager.options().clone()))
            }
            "sqlite" => {
                let manager =
                    SqliteManager::from_url(url).map_err(|e| Fail::input(e.to_string()))?;
                Ok(Target::Sqlite(manager.options().clone()))
            }
            "" => Err(Fail::input(
                "invalid URL: no scheme (expected mysql://, mariadb://, postgres://, postgresql:// or sqlite:)",
            )),
            other => Err(Fail::input(format!(
                "unsupported URL scheme `{other}` (expected mysql, mariadb, postgres, postgresql or sqlite)"
            ))),
        }
    }

    /// The URL given, or the in-memory SQLite default.
    pub(crate) fn from_arg(url: Option<&str>) -> Result<Target, Fail> {
        Target::parse(url.unwrap_or(DEFAULT_URL))
    }

    /// `mysql`, `postgres` or `sqlite`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Target::MySql(_) => "mysql",
            Target::Postgres(_) => "postgres",
            Target::Sqlite(_) => "sqlite",
        }
    }

    /// Where it points, without credentials: `host:port/db`, or the file.
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::MySql(o) => format!(
                "{}:{}/{}",
                o.ip_or_hostname(),
                o.tcp_port(),
                o.db_name().unwrap_or("")
            ),
            Target::Postgres(o) => format!(
                "{}:{}/{}",
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("")
            ),
            Target::Sqlite(o) => {
                let file = o.get_filename().display().to_string();
                // sqlx names each in-memory database `file:sqlx-in-memory-N`.
                if file.starts_with("file:sqlx-in-memory") {
                    "in-memory".to_owned()
                } else {
                    file
                }
            }
        }
    }

    /// The same target with the server's idle timeout set for its sessions
    /// only. MySQL takes whole seconds; SQLite has no server to time out.
    pub(crate) fn with_session_idle_timeout(self, timeout: Duration) -> Result<Target, Fail> {
        match self {
            Target::MySql(opts) => {
                if timeout.subsec_nanos() != 0 {
                    return Err(Fail::input(
                        "--session-idle-timeout: MySQL/MariaDB wait_timeout takes whole seconds",
                    ));
                }
                // `init`, not `setup`: it runs once when the session opens,
                // which is all a pool without reset_on_return needs. Kept
                // after the URL's own init commands.
                let mut init = opts.init().to_vec();
                init.push(format!("SET SESSION wait_timeout = {}", timeout.as_secs()));
                Ok(Target::MySql(OptsBuilder::from_opts(opts).init(init).into()))
            }
            Target::Postgres(opts) => {
                let ms = timeout.as_millis().max(1);
                Ok(Target::Postgres(
                    opts.options([("idle_session_timeout", format!("{ms}ms"))]),
                ))
            }
            Target::Sqlite(_) => Err(Fail::input(
                "--session-idle-timeout needs a server (MySQL/MariaDB or PostgreSQL); SQLite has none",
            )),
        }
    }
}

/// What the load generator needs of a manager beyond [`Manager`].
pub(crate) trait Backend: Manager {
    /// Runs `sql` on `conn`, reading and discarding any rows.
    fn execute<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
    ) -> impl Future<Output = Result<(), String>> + Send + 'c;

    /// The server's id for the session, where the tool needs it to find the
    /// pool's sessions on the server (MySQL's connection id).
    fn session_id(_conn: &Self::Connection) -> Option<u32> {
        None
    }
}

impl Backend for MySqlManager {
    async fn execute(conn: &mut mysql_async::Conn, sql: &str) -> Result<(), String> {
        // Binary protocol: prepared once per connection (mysql_async caches
        // statements), like an application's parameterised queries.
        conn.exec_drop(sql, ()).await.map_err(|e| e.to_string())
    }

    fn session_id(conn: &mysql_async::Conn) -> Option<u32> {
        Some(conn.id())
    }
}

impl Backend for PgManager {
    async fn execute(conn: &mut sqlx::PgConnection, sql: &str) -> Result<(), String> {
        // Prepared and cached per connection by sqlx. The SQL is the
        // operator's own (`--query`); sqlx 0.9 wants that said explicitly.
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

impl Backend for TokioPgManager {
    async fn execute(
        conn: &mut vigil::backend::tokio_postgres::PgClient,
        sql: &str,
    ) -> Result<(), String> {
        // Extended protocol with an unnamed statement, Parse/Bind/Execute in
        // one flight: one round trip, like sqlx's cached statements.
        conn.query_typed(sql, &[])
            .await
            .map(drop)
            .map_err(|e| error_chain(&e))
    }
}

/// `error` with its causes (tokio-postgres keeps the server's reason in them).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The tokio-postgres manager for `url`, its sessions named `application_name`
/// and, when asked, with the server's idle timeout set for them only.
pub(crate) fn tokio_pg(
    url: &str,
    application_name: &str,
    session_idle_timeout: Option<Duration>,
) -> Result<TokioPgManager, Fail> {
    let manager = TokioPgManager::from_url(url).map_err(|e| Fail::input(e.to_string()))?;
    let mut config = manager.config().clone();
    config.application_name(application_name);
    if let Some(timeout) = session_idle_timeout {
        let ms = timeout.as_millis().max(1);
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c idle_session_timeout={ms}"),
            _ => format!("-c idle_session_timeout={ms}"),
        };
        config.options(&options);
    }
    // `new` reads TLS from the driver's `ssl_mode` (always `disable` in a
    // manager's config): the URL's TLS settings come along separately.
    Ok(TokioPgManager::new(config).with_tls(manager.tls().clone()))
}

impl Backend for SqliteManager {
    async fn execute(conn: &mut sqlx::SqliteConnection, sql: &str) -> Result<(), String> {
        // Prepared and cached per connection by sqlx. The SQL is the
        // operator's own (`--query`); sqlx 0.9 wants that said explicitly.
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_backend() {
        let kind = |url| Target::parse(url).map(|t| t.kind()).map_err(|f| f.message);
        assert_eq!(kind("mysql://root@127.0.0.1:3306/test"), Ok("mysql"));
        assert_eq!(kind("mariadb://root@127.0.0.1/test"), Ok("mysql"));
        assert_eq!(kind("postgres://postgres@127.0.0.1/test"), Ok("postgres"));
        assert_eq!(kind("postgresql://postgres@127.0.0.1/test"), Ok("postgres"));
        assert_eq!(kind("sqlite::memory:"), Ok("sqlite"));
        assert!(kind("redis://h").is_err());
        assert!(kind("nothing").is_err());
    }

    #[test]
    fn a_bad_url_error_lacks_the_password() {
        for url in [
            "mysql://root:hunter2@h:notaport/db",
            "postgres://u:hunter2@h:notaport/db",
        ] {
            let fail = Target::parse(url).err().expect("an invalid URL");
            assert_eq!(fail.code, 2);
            assert!(!fail.message.contains("hunter2"), "{}", fail.message);
        }
    }
}
