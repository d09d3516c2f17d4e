//! The two servers behind one trait: a manager that connects through the
//! proxy, the queries the scenarios run, and an admin side that talks to
//! the server directly. Each scenario's sessions are told apart from
//! everyone else's on the shared servers: PostgreSQL by a unique
//! `application_name`, MariaDB by a database of their own.

use std::net::SocketAddr;

use futures::future::BoxFuture;
use futures::FutureExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgTransactionManager};
// sqlx 0.9 no longer re-exports it; vigil depends on sqlx-core for it.
use sqlx_core::transaction::TransactionManager;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::backend::tokio_postgres::{PgClient as Client, TokioPgManager};
use vigil::Manager;

use crate::support::db::{maria_connect, maria_tcp, pg_connect, pg_options};

/// A name no other test or run uses (PostgreSQL keeps 63 bytes of an
/// `application_name`, MariaDB 64 of a database name).
pub fn unique(tag: &str) -> String {
    crate::support::db::unique(&format!("vf_{tag}"))
}

pub type ConnOf<D> = <<D as Db>::M as Manager>::Connection;

/// One database server as the scenarios use it: a manager that connects
/// through the proxy, the queries the load runs, and an admin side that
/// talks to the server directly (never through the proxy).
pub trait Db: Send + Sync + Sized + 'static {
    type M: Manager;
    /// `mariadb`, `postgres` or `postgres-tokio`, for the report.
    const SERVER: &'static str;
    /// The manager's `Session::broken` sees a session the server ended without
    /// a round trip (tokio-postgres): no dead session is ever lent.
    const WATCHED: bool = false;
    /// The real server's address.
    fn server(&self) -> SocketAddr;
    /// A manager whose connections go to `via` (the proxy).
    fn manager(&self, via: SocketAddr) -> Self::M;
    fn select_one(conn: &mut ConnOf<Self>) -> BoxFuture<'_, Result<(), String>>;
    /// A query that runs for `secs` seconds on the server.
    fn sleep(conn: &mut ConnOf<Self>, secs: u32) -> BoxFuture<'_, Result<(), String>>;
    /// The server's id for the session (for killing it); asks the server.
    fn session_id(conn: &mut ConnOf<Self>) -> BoxFuture<'_, Result<u64, String>>;
    /// The client port the server sees for the session: the local port of
    /// the proxy's upstream socket.
    fn client_port(conn: &mut ConnOf<Self>) -> BoxFuture<'_, u16>;
    /// Opens a transaction the pool can see (so it cleans it on return).
    fn begin(conn: &mut ConnOf<Self>) -> BoxFuture<'_, ()>;
    /// Ends a session from an admin connection.
    fn kill(&self, id: u64) -> BoxFuture<'_, ()>;
    /// How many sessions of this scenario's pools the server has.
    fn sessions(&self) -> BoxFuture<'_, i64>;
}

// ---------------------------------------------------------------- PostgreSQL

/// PostgreSQL: the shared server (database `test`) or a private one
/// (database `postgres`); this scenario's sessions carry a unique
/// `application_name`.
pub struct Pg {
    port: u16,
    database: &'static str,
    app: String,
}

impl Pg {
    pub fn shared(tag: &str) -> Pg {
        Pg {
            port: 5432,
            database: "test",
            app: unique(tag),
        }
    }

    pub fn private(port: u16, tag: &str) -> Pg {
        Pg {
            port,
            database: "postgres",
            app: unique(tag),
        }
    }

    fn options(&self, port: u16, app: &str) -> PgConnectOptions {
        pg_options(app).port(port).database(self.database)
    }

    async fn admin(&self) -> PgConnection {
        let needed = format!(
            "the fault suite needs PostgreSQL at 127.0.0.1:{} (trust auth, user postgres, \
             database `{}`), and it is not usable",
            self.port, self.database
        );
        pg_connect(&self.options(self.port, "vigil_faults_admin"), &needed).await
    }
}

impl Db for Pg {
    type M = PgManager;
    const SERVER: &'static str = "postgres";

    fn server(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn manager(&self, via: SocketAddr) -> PgManager {
        PgManager::new(self.options(via.port(), &self.app))
    }

    fn select_one(conn: &mut PgConnection) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let one: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(conn)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(one, 1);
            Ok(())
        }
        .boxed()
    }

    fn sleep(conn: &mut PgConnection, secs: u32) -> BoxFuture<'_, Result<(), String>> {
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT pg_sleep({secs})")))
                .execute(conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn session_id(conn: &mut PgConnection) -> BoxFuture<'_, Result<u64, String>> {
        async move {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(pid as u64)
        }
        .boxed()
    }

    fn client_port(conn: &mut PgConnection) -> BoxFuture<'_, u16> {
        async move {
            let port: i32 = sqlx::query_scalar("SELECT inet_client_port()")
                .fetch_one(conn)
                .await
                .expect("SELECT inet_client_port()");
            port as u16
        }
        .boxed()
    }

    fn begin(conn: &mut PgConnection) -> BoxFuture<'_, ()> {
        async move {
            // Through sqlx's transaction manager, so `is_in_transaction`
            // (what the pool's return path looks at) sees it.
            PgTransactionManager::begin(conn, None)
                .await
                .expect("BEGIN");
        }
        .boxed()
    }

    fn kill(&self, id: u64) -> BoxFuture<'_, ()> {
        async move {
            let mut admin = self.admin().await;
            let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(id as i32)
                .fetch_one(&mut admin)
                .await
                .expect("pg_terminate_backend");
            assert!(done, "pg_terminate_backend({id}) found no such backend");
        }
        .boxed()
    }

    fn sessions(&self) -> BoxFuture<'_, i64> {
        async move {
            let mut admin = self.admin().await;
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&self.app)
                .fetch_one(&mut admin)
                .await
                .expect("read pg_stat_activity")
        }
        .boxed()
    }
}

// ---------------------------------------------------------------- PostgreSQL through tokio-postgres

/// The same PostgreSQL server and admin side as [`Pg`], with the pool over
/// tokio-postgres (`TokioPgManager`) instead of sqlx.
pub struct TokioPg(pub Pg);

impl TokioPg {
    pub fn shared(tag: &str) -> TokioPg {
        TokioPg(Pg::shared(tag))
    }

    pub fn private(port: u16, tag: &str) -> TokioPg {
        TokioPg(Pg::private(port, tag))
    }
}

fn tp_err(e: tokio_postgres::Error) -> String {
    e.to_string()
}

impl Db for TokioPg {
    type M = TokioPgManager;
    const SERVER: &'static str = "postgres-tokio";
    const WATCHED: bool = true;

    fn server(&self) -> SocketAddr {
        self.0.server()
    }

    fn manager(&self, via: SocketAddr) -> TokioPgManager {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(via.port())
            .user("postgres")
            .dbname(self.0.database)
            .application_name(&self.0.app);
        TokioPgManager::new(config)
    }

    fn select_one(conn: &mut Client) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let one: i32 = conn.query_typed("SELECT 1", &[]).await.map_err(tp_err)?[0].get(0);
            assert_eq!(one, 1);
            Ok(())
        }
        .boxed()
    }

    fn sleep(conn: &mut Client, secs: u32) -> BoxFuture<'_, Result<(), String>> {
        async move {
            conn.batch_execute(&format!("SELECT pg_sleep({secs})"))
                .await
                .map_err(tp_err)
        }
        .boxed()
    }

    fn session_id(conn: &mut Client) -> BoxFuture<'_, Result<u64, String>> {
        async move {
            let pid: i32 = conn
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map_err(tp_err)?
                .get(0);
            Ok(pid as u64)
        }
        .boxed()
    }

    fn client_port(conn: &mut Client) -> BoxFuture<'_, u16> {
        async move {
            let port: i32 = conn
                .query_one("SELECT inet_client_port()", &[])
                .await
                .expect("SELECT inet_client_port()")
                .get(0);
            port as u16
        }
        .boxed()
    }

    fn begin(_conn: &mut Client) -> BoxFuture<'_, ()> {
        // tokio-postgres shows the pool no transaction status, so there is
        // no transaction the pool could see: the scenario that needs one
        // (`hanging_reset`) does not run for this backend.
        unimplemented!("no pool-visible transaction over tokio-postgres")
    }

    fn kill(&self, id: u64) -> BoxFuture<'_, ()> {
        self.0.kill(id)
    }

    fn sessions(&self) -> BoxFuture<'_, i64> {
        self.0.sessions()
    }
}

// ---------------------------------------------------------------- MariaDB

/// MariaDB: the shared server or a private one; this scenario's sessions use
/// a database of their own, which is how the process list tells them apart.
pub struct Maria {
    port: u16,
    db: String,
}

impl Maria {
    pub async fn shared(tag: &str) -> Maria {
        Maria::on(3306, tag).await
    }

    pub async fn private(port: u16, tag: &str) -> Maria {
        Maria::on(port, tag).await
    }

    async fn on(port: u16, tag: &str) -> Maria {
        let maria = Maria {
            port,
            db: unique(tag),
        };
        let mut admin = maria.admin().await;
        admin
            .query_drop(format!("CREATE DATABASE `{}`", maria.db))
            .await
            .expect("create the scenario's database");
        maria
    }

    /// Over TCP only: else mysql_async reconnects over the server's unix
    /// socket, around the proxy.
    fn opts(&self, port: u16, db: Option<&str>) -> Opts {
        maria_tcp(port).db_name(db).into()
    }

    async fn admin(&self) -> Conn {
        let needed = format!(
            "the fault suite needs MariaDB at 127.0.0.1:{} (user root, no password), \
             and it is not usable",
            self.port
        );
        maria_connect(self.opts(self.port, None), &needed).await
    }
}

impl Drop for Maria {
    /// Drops the scenario's database, also after a failed test (best effort,
    /// through the `mariadb` client so it needs no runtime).
    fn drop(&mut self) {
        let _ = std::process::Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-u", "root", "--connect-timeout=2"])
            .arg(format!("-P{}", self.port))
            .arg("-e")
            .arg(format!("DROP DATABASE IF EXISTS `{}`", self.db))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Db for Maria {
    type M = MySqlManager;
    const SERVER: &'static str = "mariadb";

    fn server(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn manager(&self, via: SocketAddr) -> MySqlManager {
        MySqlManager::new(self.opts(via.port(), Some(&self.db)))
    }

    fn select_one(conn: &mut Conn) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let one: Option<u8> = conn
                .query_first("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(one, Some(1));
            Ok(())
        }
        .boxed()
    }

    fn sleep(conn: &mut Conn, secs: u32) -> BoxFuture<'_, Result<(), String>> {
        async move {
            conn.query_drop(format!("SELECT SLEEP({secs})"))
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn session_id(conn: &mut Conn) -> BoxFuture<'_, Result<u64, String>> {
        async move {
            let id: Option<u64> = conn
                .query_first("SELECT CONNECTION_ID()")
                .await
                .map_err(|e| e.to_string())?;
            Ok(id.expect("CONNECTION_ID() answers a row"))
        }
        .boxed()
    }

    fn client_port(conn: &mut Conn) -> BoxFuture<'_, u16> {
        async move {
            let host: Option<String> = conn
                .query_first(
                    "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()",
                )
                .await
                .expect("read the session's own HOST");
            let host = host.expect("the session lists itself");
            host.rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in processlist HOST {host:?}"))
        }
        .boxed()
    }

    fn begin(conn: &mut Conn) -> BoxFuture<'_, ()> {
        async move {
            // The OK packet carries SERVER_STATUS_IN_TRANS, which the pool's
            // return path reads.
            conn.query_drop("START TRANSACTION")
                .await
                .expect("START TRANSACTION");
        }
        .boxed()
    }

    fn kill(&self, id: u64) -> BoxFuture<'_, ()> {
        async move {
            let mut admin = self.admin().await;
            admin
                .query_drop(format!("KILL CONNECTION {id}"))
                .await
                .expect("KILL CONNECTION");
            let _ = admin.disconnect().await;
        }
        .boxed()
    }

    fn sessions(&self) -> BoxFuture<'_, i64> {
        async move {
            let mut admin = self.admin().await;
            let n: Option<i64> = admin
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ? \
                     AND COMMAND <> 'Killed'",
                    (self.db.as_str(),),
                )
                .await
                .expect("read the process list");
            let _ = admin.disconnect().await;
            n.unwrap_or(0)
        }
        .boxed()
    }
}
