//! Private PostgreSQL and MariaDB instances for the destructive scenarios
//! (restarts), so the shared servers on 5432/3306 that other tests use are
//! never touched.
//!
//! Each instance lives in a fresh directory under the system temp dir, on a
//! free loopback port, and is stopped (hard) and deleted when its guard is
//! dropped, also when the test panics. A missing binary fails the test with
//! a message naming it: these scenarios never skip.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const MARIADB_INSTALL: &str = "mariadb-install-db";
const MARIADBD: &str = "/usr/sbin/mariadbd";

/// A free loopback port (bound, then released: a small race we accept).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

pub fn scratch_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "vigil-faults-{tag}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Runs `cmd`, failing the test with its output when it fails.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn wait_for_port(port: u16, within: Duration, what: &str, log: &Path) {
    let deadline = Instant::now() + within;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} did not listen on {port} within {within:?}; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Gives `path` to the `postgres` OS user (PostgreSQL and pgbouncer refuse
/// to run as root).
pub fn chown_to_postgres(path: &Path) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run `id`");
        assert!(
            out.status.success(),
            "the private PostgreSQL needs the `postgres` OS user (initdb refuses root)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    std::os::unix::fs::chown(path, Some(id("-u")), Some(id("-g")))
        .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
}

// ---------------------------------------------------------------- PostgreSQL

/// A private PostgreSQL 15 cluster: trust auth, user `postgres`, database
/// `postgres`. initdb refuses to run as root, so the cluster belongs to the
/// `postgres` OS user and every server command runs through `runuser`.
pub struct PrivatePg {
    dir: PathBuf,
    port: u16,
    /// Server settings beyond the defaults, as `-c name=value` options.
    settings: Vec<String>,
}

impl PrivatePg {
    /// initdb + start; blocking (about a second).
    pub fn start() -> PrivatePg {
        Self::start_with(|_| Vec::new())
    }

    /// As [`start`](Self::start), with server settings (`name=value`) that
    /// `settings` returns given the cluster's directory (owned by the
    /// `postgres` OS user, for files the server must read, such as a TLS key).
    #[allow(dead_code)] // the TLS tests' (this file is shared with them)
    pub fn start_with(settings: impl FnOnce(&Path) -> Vec<String>) -> PrivatePg {
        let dir = scratch_dir("pg");
        let mut pg = PrivatePg {
            dir,
            port: free_port(),
            settings: Vec::new(),
        };
        pg.chown_to_postgres();
        run(
            pg.as_postgres(&format!("{PG_BIN}/initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "-D",
                ])
                .arg(pg.data()),
            "initdb of the private PostgreSQL",
        );
        pg.settings = settings(&pg.dir);
        pg.start_again();
        pg
    }

    /// The cluster's directory.
    #[allow(dead_code)] // the TLS tests'
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn chown_to_postgres(&self) {
        chown_to_postgres(&self.dir);
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", program]);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = self.as_postgres(&format!("{PG_BIN}/pg_ctl"));
        cmd.arg("-D").arg(self.data()).args(args);
        cmd
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        for setting in &self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        run(
            self.pg_ctl(&["-w", "-t", "30", "-o", &options, "-l"])
                .arg(self.dir.join("log"))
                .arg("start"),
            "starting the private PostgreSQL",
        );
        wait_for_port(
            self.port,
            Duration::from_secs(10),
            "the private PostgreSQL",
            &self.dir.join("log"),
        );
    }

    /// `pg_ctl stop -m fast`: backends are told to end their sessions (clients
    /// get FATAL 57P01), then the server exits. Blocks until it is down.
    pub fn stop_fast(&self) {
        run(
            &mut self.pg_ctl(&["-w", "-m", "fast", "stop"]),
            "stopping the private PostgreSQL",
        );
    }

    /// `pg_ctl stop -m immediate`: every process quits at once, as in a crash.
    pub fn stop_immediate(&self) {
        run(
            &mut self.pg_ctl(&["-w", "-m", "immediate", "stop"]),
            "crashing the private PostgreSQL",
        );
    }

    /// A streaming-replication standby of `primary` (`pg_basebackup -R`),
    /// started on a port of its own; blocking (a few seconds).
    #[allow(dead_code)] // the role tests'
    pub fn standby_of(primary: &PrivatePg) -> PrivatePg {
        let standby = PrivatePg {
            dir: scratch_dir("pg-standby"),
            port: free_port(),
            settings: Vec::new(),
        };
        standby.chown_to_postgres();
        run(
            standby
                .as_postgres(&format!("{PG_BIN}/pg_basebackup"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "-p",
                ])
                .arg(primary.port.to_string())
                .arg("-D")
                .arg(standby.data()),
            "pg_basebackup for the standby",
        );
        standby.start_again();
        standby
    }

    /// `pg_ctl promote`: the standby becomes a primary; blocks until it is.
    #[allow(dead_code)] // the role tests'
    pub fn promote(&self) {
        run(
            &mut self.pg_ctl(&["-w", "promote"]),
            "promoting the private PostgreSQL standby",
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let stopped = self
            .pg_ctl(&["-w", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            // Already down, or pg_ctl failed: kill what the pid file names.
            if let Ok(pidfile) = std::fs::read_to_string(self.data().join("postmaster.pid")) {
                if let Some(pid) = pidfile.lines().next() {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- MariaDB

/// A private MariaDB: `root` with an empty password over TCP, no grant
/// tables skipped, binary log off.
pub struct PrivateMaria {
    dir: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
    /// Server options beyond the defaults (`--name=value`).
    options: Vec<String>,
}

impl PrivateMaria {
    /// mariadb-install-db + start; blocking (a few seconds).
    pub fn start() -> PrivateMaria {
        Self::start_with(|_| Vec::new())
    }

    /// As [`start`](Self::start), with server options (`--name=value`) that
    /// `options` returns given the instance's directory (for files the
    /// server must read, such as a TLS key).
    #[allow(dead_code)] // the TLS tests' (this file is shared with them)
    pub fn start_with(options: impl FnOnce(&Path) -> Vec<String>) -> PrivateMaria {
        let dir = scratch_dir("maria");
        // A temporary directory of its own: the bootstrap and the server
        // otherwise share the machine's /tmp with every other instance
        // (and their `#sql-temptable-*` files), and a bootstrap once failed
        // there on a temporary table that vanished under it.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        run(
            Command::new(MARIADB_INSTALL)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .args([
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .stdin(Stdio::null()),
            "mariadb-install-db for the private MariaDB",
        );
        let options = options(&dir);
        let maria = PrivateMaria {
            dir,
            port: free_port(),
            child: Mutex::new(None),
            options,
        };
        maria.start_again();
        maria
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The instance's directory.
    #[allow(dead_code)] // the TLS tests'
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) {
        let d = &self.dir;
        let child = Command::new(MARIADBD)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("err.log").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--max-connections=300",
            ])
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {MARIADBD}: {e}"));
        *self.child.lock() = Some(child);
        wait_for_port(
            self.port,
            Duration::from_secs(30),
            "the private MariaDB",
            &d.join("err.log"),
        );
    }

    /// SIGTERM: a normal shutdown (client connections are closed). Blocks
    /// until the process has exited.
    pub fn stop(&self) {
        let mut child = self.child.lock().take().expect("the private MariaDB runs");
        run(
            Command::new("kill").args(["-TERM", &child.id().to_string()]),
            "stopping the private MariaDB",
        );
        child.wait().expect("wait for the private MariaDB to exit");
    }

    /// SIGKILL: a crash.
    pub fn kill(&self) {
        let mut child = self.child.lock().take().expect("the private MariaDB runs");
        child.kill().expect("kill the private MariaDB");
        child.wait().expect("wait for the private MariaDB to exit");
    }
}

impl Drop for PrivateMaria {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- restarts

/// How a private server is stopped and started again (blocking calls).
pub trait Restartable: Send + Sync + 'static {
    fn stop(&self);
    fn crash(&self);
    fn start(&self);
}

impl Restartable for PrivatePg {
    fn stop(&self) {
        self.stop_fast();
    }
    fn crash(&self) {
        self.stop_immediate();
    }
    fn start(&self) {
        self.start_again();
    }
}

impl Restartable for PrivateMaria {
    fn stop(&self) {
        PrivateMaria::stop(self);
    }
    fn crash(&self) {
        self.kill();
    }
    fn start(&self) {
        self.start_again();
    }
}

/// Runs a blocking server command (`Restartable::stop` and the like) off
/// the runtime's threads.
pub async fn blocking<S: Restartable>(server: &Arc<S>, f: fn(&S)) {
    let server = Arc::clone(server);
    tokio::task::spawn_blocking(move || f(&server))
        .await
        .expect("the server command panicked");
}
