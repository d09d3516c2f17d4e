//! A private pgbouncer in front of a private PostgreSQL, on free loopback
//! ports, stopped and deleted when its guard is dropped (also on panic).
//! pgbouncer refuses to run as root, so it runs as the `postgres` OS user
//! (`-u postgres`), like the private PostgreSQL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::servers::{chown_to_postgres, free_port, scratch_dir, wait_for_port, PrivatePg};

const PGBOUNCER: &str = "pgbouncer";

/// pgbouncer's pool mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Session,
    Transaction,
}

pub struct Bouncer {
    dir: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
    /// The PostgreSQL behind it; dropped after pgbouncer.
    pg: PrivatePg,
}

impl Bouncer {
    /// A private PostgreSQL and pgbouncer in front of it, serving database
    /// `test` (the server's `postgres`) in `mode`, plus `extra` settings
    /// (`name = value` lines of the `[pgbouncer]` section). Blocking.
    pub fn start(mode: Mode, extra: &[&str]) -> Bouncer {
        let pg = PrivatePg::start();
        let dir = scratch_dir("pgbouncer");
        let port = free_port();
        let mode = match mode {
            Mode::Session => "session",
            Mode::Transaction => "transaction",
        };
        let ini = format!(
            "[databases]\n\
             test = host=127.0.0.1 port={pg_port} dbname=postgres\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             admin_users = postgres\n\
             pool_mode = {mode}\n\
             default_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/log\n\
             pidfile = {dir}/pid\n\
             {extra}\n",
            pg_port = pg.port(),
            dir = dir.display(),
            extra = extra.join("\n"),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("write pgbouncer.ini");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").expect("write users.txt");
        for file in ["", "pgbouncer.ini", "users.txt"] {
            chown_to_postgres(&dir.join(file));
        }
        let bouncer = Bouncer {
            dir,
            port,
            child: Mutex::new(None),
            pg,
        };
        bouncer.start_again();
        bouncer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the PostgreSQL behind it.
    pub fn pg_port(&self) -> u16 {
        self.pg.port()
    }

    /// Starts the (stopped) pgbouncer and waits until it listens.
    pub fn start_again(&self) {
        let child = Command::new(PGBOUNCER)
            .args(["-u", "postgres"])
            .arg(self.dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("these tests need pgbouncer (scripts/test installs it): {e}")
            });
        *self.child.lock() = Some(child);
        wait_for_port(
            self.port,
            Duration::from_secs(10),
            "pgbouncer",
            &self.dir.join("log"),
        );
    }

    /// `SIGTERM` (pgbouncer's immediate shutdown: every client is
    /// disconnected), then waits for it to exit. Blocking.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Runs `command` on pgbouncer's admin console (`SHOW POOLS`, `KILL
    /// test`, `RECONNECT test`, ...): the simple protocol only.
    pub async fn admin(&self, command: &str) -> Vec<SimpleQueryMessage> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=pgbouncer",
                self.port
            ),
            NoTls,
        )
        .await
        .expect("pgbouncer's admin console");
        tokio::spawn(connection);
        client
            .simple_query(command)
            .await
            .unwrap_or_else(|e| panic!("pgbouncer `{command}`: {e}"))
    }

    /// Terminates every client session on the PostgreSQL behind pgbouncer
    /// (pgbouncer's server connections); returns how many.
    pub async fn kill_server_sessions(&self) -> usize {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.pg.port()
            ),
            NoTls,
        )
        .await
        .expect("the PostgreSQL behind pgbouncer");
        tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("list the server sessions");
        for row in &rows {
            let pid: i32 = row.get(0);
            client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .expect("pg_terminate_backend");
        }
        rows.len()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
