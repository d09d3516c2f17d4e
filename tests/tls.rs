//! TLS to PostgreSQL through the tokio-postgres backend, against private
//! servers with `ssl = on` and a CA and server certificate made for the test
//! (`openssl`): libpq's `sslmode`s mean what they mean there, failures name
//! the TLS problem within `connect_timeout` without the password, and the
//! zero-round-trip liveness works inside TLS (the watch reads the
//! plaintext): sessions killed from outside are never lent, no ping spent.

#[path = "faults/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use servers::{PrivateMaria, PrivatePg};
use tokio_postgres::NoTls;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::PgManager;
use vigil::backend::tokio_postgres::TokioPgManager;
use vigil::{Manager, Pool, Reason};

const SECRET: &str = "tls-secret-pw";

/// Runs `openssl` with `args` in `dir`, failing loudly.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (Debian package `openssl`)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`{name}.crt`) and, signed by it, a server certificate for the DNS
/// name `localhost` only (`{name}-server.crt`, `.key`), in `dir`.
fn make_ca_and_server(dir: &Path, name: &str) {
    let (ca_key, ca_crt) = (format!("{name}.key"), format!("{name}.crt"));
    let (key, csr, crt) = (
        format!("{name}-server.key"),
        format!("{name}-server.csr"),
        format!("{name}-server.crt"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=vigil test CA {name}"),
            "-keyout",
            &ca_key,
            "-out",
            &ca_crt,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").expect("write san.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &crt,
        ],
    );
}

/// A private PostgreSQL with `ssl = on` and the server certificate of CA
/// `good`; `bad.crt` is a second CA that signed nothing the server uses.
/// Returns the server and the directory of the CA files.
fn tls_server(extra: &[&str]) -> (PrivatePg, PathBuf) {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let pg = PrivatePg::start_with(|dir| {
        make_ca_and_server(dir, "good");
        make_ca_and_server(dir, "bad");
        // The server reads its key as the `postgres` user, 0600.
        for file in ["good-server.key", "good-server.crt"] {
            let path = dir.join(file);
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {}", path.display());
        }
        let key = dir.join("good-server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the key");
        let mut settings = vec![
            "ssl=on".to_string(),
            format!("ssl_cert_file={}", dir.join("good-server.crt").display()),
            format!("ssl_key_file={}", key.display()),
        ];
        settings.extend(extra);
        settings
    });
    let dir = pg.dir().to_path_buf();
    (pg, dir)
}

fn url(host: &str, port: u16, params: &str) -> String {
    format!("postgres://postgres:{SECRET}@{host}:{port}/postgres?connect_timeout=3&{params}")
}

fn manager(url: &str) -> TokioPgManager {
    TokioPgManager::from_url(url).expect("a well-formed URL")
}

/// `Builder::connect` must fail within `connect_timeout` (+ slack), with an
/// error saying `expect`, without the password.
async fn fails_clearly(url: &str, expect: &str) {
    fails_clearly_with(manager(url), expect).await;
}

async fn fails_clearly_with<M: Manager>(manager: M, expect: &str) {
    let started = Instant::now();
    let err = Pool::builder(manager)
        .acquire_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect_err("the connect must fail");
    let took = started.elapsed();
    let shown = format!("{err} / {err:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}: {shown}");
    assert!(
        shown.to_lowercase().contains(&expect.to_lowercase()),
        "{shown:?} should say {expect:?}"
    );
    assert!(!shown.contains(SECRET), "the password leaked: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_mean_what_libpq_says_against_a_tls_server() {
    let (pg, dir) = tls_server(&[]);
    let port = pg.port();
    let good = dir.join("good.crt");
    let bad = dir.join("bad.crt");

    // verify-full with the right CA and the certificate's name: encrypted,
    // as the server confirms.
    let pool = Pool::builder(manager(&url(
        "localhost",
        port,
        &format!("sslmode=verify-full&sslrootcert={}", good.display()),
    )))
    .connect()
    .await
    .expect("verify-full with the right CA connects");
    let conn = pool.get().await.expect("get");
    assert!(conn.is_tls(), "the session is TLS");
    let row = conn
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    assert!(
        row.get::<_, bool>(0),
        "the server says the session is encrypted"
    );
    let version: String = row.get(1);
    assert!(version.starts_with("TLSv1."), "{version}");
    drop(conn);
    pool.close().await;

    // verify-ca checks the chain, not the name: 127.0.0.1 is not in the
    // certificate, and that is fine here ...
    let pool = Pool::builder(manager(&url(
        "127.0.0.1",
        port,
        &format!("sslmode=verify-ca&sslrootcert={}", good.display()),
    )))
    .connect()
    .await
    .expect("verify-ca ignores the name");
    assert!(pool.get().await.expect("get").is_tls());
    pool.close().await;
    // ... and what verify-full refuses.
    fails_clearly(
        &url(
            "127.0.0.1",
            port,
            &format!("sslmode=verify-full&sslrootcert={}", good.display()),
        ),
        "not valid for name",
    )
    .await;
    // A CA that did not sign the server's certificate.
    fails_clearly(
        &url(
            "localhost",
            port,
            &format!("sslmode=verify-full&sslrootcert={}", bad.display()),
        ),
        "UnknownIssuer",
    )
    .await;
    // require: encrypted, the certificate not checked; prefer (the
    // default) takes the TLS the server offers; disable stays plain.
    for (params, tls) in [
        ("sslmode=require", true),
        ("", true),
        ("sslmode=disable", false),
    ] {
        let pool = Pool::builder(manager(&url("127.0.0.1", port, params)))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{params:?}: {e}"));
        assert_eq!(pool.get().await.expect("get").is_tls(), tls, "{params:?}");
        pool.close().await;
    }
    // A verify mode needs a CA; a CA file that does not exist is named.
    let err = TokioPgManager::from_url(&url(
        "localhost",
        port,
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .expect_err("an unreadable CA file is refused");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    assert!(!err.to_string().contains(SECRET), "{err}");
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_fails_naming_tls() {
    let pg = PrivatePg::start();
    fails_clearly(
        &url("127.0.0.1", pg.port(), "sslmode=require"),
        "does not accept TLS",
    )
    .await;
    // prefer falls back to plain text.
    let pool = Pool::builder(manager(&url("127.0.0.1", pg.port(), "sslmode=prefer")))
        .connect()
        .await
        .expect("prefer connects without TLS");
    assert!(!pool.get().await.expect("get").is_tls());
    pool.close().await;
}

/// Every session of the pool terminated from outside while idle: over TLS
/// too, the watch inside the TLS layer sees each `FATAL`, so none is lent
/// although the pool never pings (`Validation::Never`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_killed_over_tls_are_never_lent_and_cost_no_ping() {
    let (pg, dir) = tls_server(&[]);
    let good = dir.join("good.crt");
    let pool = Pool::builder(manager(&url(
        "localhost",
        pg.port(),
        &format!(
            "sslmode=verify-full&sslrootcert={}&application_name=vigil-tls-kill",
            good.display()
        ),
    )))
    .max_size(4)
    .validation(vigil::Validation::Never)
    .build()
    .expect("valid settings");
    let held: Vec<_> = futures::future::join_all((0..4).map(|_| pool.get()))
        .await
        .into_iter()
        .map(|r| r.expect("get"))
        .collect();
    assert!(held.iter().all(|c| c.is_tls()));
    drop(held);
    let (admin, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg.port()
        ),
        NoTls,
    )
    .await
    .expect("admin connection");
    tokio::spawn(connection);
    let killed: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'vigil-tls-kill'",
            &[],
        )
        .await
        .expect("the pool's sessions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(killed.len(), 4, "the pool's four sessions");
    for pid in &killed {
        admin
            .query("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .expect("terminate");
    }
    // Gone by pid (the housekeeper may open replacements under the name);
    // each sent its FATAL to the client before it exited.
    let gone = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = admin
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&killed],
            )
            .await
            .expect("pg_stat_activity")
            .len();
        if alive == 0 {
            break;
        }
        assert!(Instant::now() < gone, "the killed backends did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Once the connection tasks read the FATALs, the pool retires all four
    // (at its sweep or a checkout), with no round trip.
    let retired = Instant::now() + Duration::from_secs(5);
    while pool.state().closed.get(Reason::Broken) < 4 {
        assert!(
            Instant::now() < retired,
            "the dead sessions were not seen: {:?}",
            pool.state()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..8 {
        let conn = pool.get().await.expect("a connection");
        conn.simple_query("SELECT 1")
            .await
            .expect("a live session, never a dead one");
    }
    let s = pool.state();
    assert_eq!(s.validations_ok + s.validations_failed, 0, "no ping: {s:?}");
    pool.close().await;
    drop(pg);
}

/// The watch parses the session's plaintext inside TLS, not the ciphertext:
/// it knows each return's transaction status exactly, so clean returns cost
/// no round trip and only the return that left a transaction open is
/// cleaned. Read from the server's statement log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_tls_the_watch_sees_each_transaction_status() {
    let (pg, dir) = tls_server(&["log_statement=all", "log_min_messages=warning"]);
    let good = dir.join("good.crt");
    let pool = Pool::builder(manager(&url(
        "localhost",
        pg.port(),
        &format!("sslmode=verify-full&sslrootcert={}", good.display()),
    )))
    .max_size(1)
    .connect()
    .await
    .expect("connect");
    for i in 0..20 {
        let conn = pool.get().await.expect("get");
        assert!(conn.is_tls());
        conn.simple_query(&format!("SELECT {i} AS clean_return"))
            .await
            .expect("query");
    }
    let conn = pool.get().await.expect("get");
    conn.simple_query("BEGIN").await.expect("begin");
    conn.simple_query("SELECT 'left open' AS dirty_return")
        .await
        .expect("query");
    drop(conn);
    let conn = pool.get().await.expect("get");
    let rows = conn
        .query_one("SELECT now() = statement_timestamp()", &[])
        .await
        .expect("query");
    assert!(
        !rows.get::<_, bool>(0),
        "the next borrower is outside any transaction"
    );
    drop(conn);
    pool.close().await;
    let log = std::fs::read_to_string(dir.join("log")).expect("the server's log");
    let statements: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("statement: ").map(|(_, s)| s))
        .collect();
    // After the timeout discovery: the borrowers' statements and nothing
    // else, but for the dirty return's clean-up (an empty query waits for
    // any rollback a dropped `Transaction` queued, then the `ROLLBACK`).
    let mut expected: Vec<String> = (0..20)
        .map(|i| format!("SELECT {i} AS clean_return"))
        .collect();
    expected.extend(
        [
            "BEGIN",
            "SELECT 'left open' AS dirty_return",
            "",
            "ROLLBACK",
        ]
        .map(String::from),
    );
    let seen: Vec<String> = statements
        .iter()
        .filter(|s| !s.contains("pg_settings"))
        .map(|s| s.trim().to_owned())
        .collect();
    assert_eq!(seen, expected, "the server's statement log");
}

/// The sqlx backend reads libpq's parameters itself (sqlx's own parser):
/// with the `tls` feature, the same URLs mean the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlx_backend_speaks_tls_with_the_same_url_parameters() {
    let (pg, dir) = tls_server(&[]);
    let good = dir.join("good.crt");
    let bad = dir.join("bad.crt");
    let sqlx_url = |host: &str, ca: &Path| {
        format!(
            "postgres://postgres:{SECRET}@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg.port(),
            ca.display()
        )
    };
    let m = PgManager::from_url(&sqlx_url("localhost", &good)).expect("a well-formed URL");
    let pool = Pool::builder(m)
        .connect()
        .await
        .expect("verify-full connects");
    let mut conn = pool.get().await.expect("get");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "the server says the session is encrypted");
    drop(conn);
    pool.close().await;
    fails_clearly_with(
        PgManager::from_url(&sqlx_url("localhost", &bad)).expect("a well-formed URL"),
        "UnknownIssuer",
    )
    .await;
    fails_clearly_with(
        PgManager::from_url(&sqlx_url("127.0.0.1", &good)).expect("a well-formed URL"),
        "not valid for name",
    )
    .await;
}

/// A private MariaDB with `ssl_cert`/`ssl_key`/`ssl_ca`: the MySQL
/// client's `ssl-mode` and `ssl-ca` mean what they mean there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_ssl_modes_against_a_tls_server() {
    let maria = PrivateMaria::start_with(|dir| {
        make_ca_and_server(dir, "good");
        make_ca_and_server(dir, "bad");
        vec![
            format!("--ssl-cert={}", dir.join("good-server.crt").display()),
            format!("--ssl-key={}", dir.join("good-server.key").display()),
            format!("--ssl-ca={}", dir.join("good.crt").display()),
        ]
    });
    let dir = maria.dir().to_path_buf();
    let port = maria.port();
    let my_url = |host: &str, params: &str| {
        format!("mysql://root:{SECRET}@{host}:{port}/mysql?prefer_socket=false&{params}")
    };
    // The private server's root has no password: connect as root without one.
    let my_url =
        |host: &str, params: &str| my_url(host, params).replace(&format!(":{SECRET}@"), "@");
    let good = dir.join("good.crt");
    let bad = dir.join("bad.crt");
    let m = MySqlManager::from_url(&my_url(
        "localhost",
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", good.display()),
    ))
    .expect("a well-formed URL");
    let pool = Pool::builder(m)
        .connect()
        .await
        .expect("VERIFY_IDENTITY connects");
    let mut conn = pool.get().await.expect("get");
    let cipher: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .expect("Ssl_cipher");
    let cipher = cipher.expect("a row").1;
    assert!(
        !cipher.is_empty(),
        "the server says the session is encrypted"
    );
    drop(conn);
    pool.close().await;
    // VERIFY_CA is refused with the reason (mysql_async cannot check the
    // CA without the name), naming what to use instead.
    let err = MySqlManager::from_url(&my_url(
        "127.0.0.1",
        &format!("ssl-mode=VERIFY_CA&ssl-ca={}", good.display()),
    ))
    .expect_err("VERIFY_CA is refused");
    assert!(err.to_string().contains("VERIFY_IDENTITY"), "{err}");
    // VERIFY_IDENTITY checks the name: 127.0.0.1 is not in the certificate.
    fails_clearly_with(
        MySqlManager::from_url(&my_url(
            "127.0.0.1",
            &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", good.display()),
        ))
        .expect("a well-formed URL"),
        "not valid for name",
    )
    .await;
    fails_clearly_with(
        MySqlManager::from_url(&my_url(
            "localhost",
            &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", bad.display()),
        ))
        .expect("a well-formed URL"),
        "UnknownIssuer",
    )
    .await;
    // REQUIRED against the shared server, which has TLS off.
    fails_clearly_with(
        MySqlManager::from_url(&format!(
            "mysql://root:{SECRET}@127.0.0.1:3306/test?prefer_socket=false&ssl-mode=REQUIRED"
        ))
        .expect("a well-formed URL"),
        "server does not have this capability",
    )
    .await;
    // PREFERRED is refused with a reason, the password not in it.
    let err = MySqlManager::from_url(&format!(
        "mysql://root:{SECRET}@127.0.0.1:3306/test?ssl-mode=PREFERRED"
    ))
    .expect_err("PREFERRED is not supported");
    assert!(err.to_string().contains("PREFERRED"), "{err}");
    assert!(!err.to_string().contains(SECRET), "{err}");
}

/// `vigil probe` says whether its session is encrypted, with which protocol
/// and cipher, and how the certificate was checked, through either driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_the_encryption_and_how_the_certificate_was_checked() {
    let (pg, dir) = tls_server(&[]);
    let good = dir.join("good.crt");
    let probe = |url: String, driver: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["probe", "--json", "--driver", driver, "--url", &url])
            .output()
            .expect("run vigil probe");
        assert!(
            out.status.success(),
            "{driver}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("probe --json prints JSON");
        json["tls"].clone()
    };
    for driver in ["tokio-postgres", "sqlx"] {
        let tls = probe(
            url(
                "localhost",
                pg.port(),
                &format!("sslmode=verify-full&sslrootcert={}", good.display()),
            ),
            driver,
        );
        assert_eq!(tls["encrypted"], true, "{driver}: {tls}");
        assert_eq!(tls["certificate"], "ca and host name", "{driver}: {tls}");
        assert!(
            tls["protocol"]
                .as_str()
                .is_some_and(|p| p.starts_with("TLSv1.")),
            "{driver}: {tls}"
        );
        assert!(
            tls["cipher"].as_str().is_some_and(|c| !c.is_empty()),
            "{driver}: {tls}"
        );
        let tls = probe(url("127.0.0.1", pg.port(), "sslmode=require"), driver);
        assert_eq!(
            (&tls["encrypted"], &tls["certificate"]),
            (&serde_json::json!(true), &serde_json::json!("not checked")),
            "{driver}: {tls}"
        );
        let tls = probe(url("127.0.0.1", pg.port(), "sslmode=disable"), driver);
        assert_eq!(tls["encrypted"], false, "{driver}: {tls}");
    }
}

/// The server's idle timeout (2 s) over TLS, bursts with 3 s gaps: vigil
/// reads the timeout through the encrypted session and retires idle
/// sessions before the server ends them, on both PostgreSQL backends and
/// MariaDB. Zero errors reach callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeouts_over_tls_cause_no_errors() {
    let (pg, dir) = tls_server(&["idle_session_timeout=2000"]);
    let verify = format!(
        "sslmode=verify-full&sslrootcert={}",
        dir.join("good.crt").display()
    );
    let tp = Pool::builder(manager(&url("localhost", pg.port(), &verify)))
        .max_size(4)
        .build()
        .expect("valid settings");
    let sqlx_pool = Pool::builder(
        PgManager::from_url(&url("localhost", pg.port(), &verify)).expect("a well-formed URL"),
    )
    .max_size(4)
    .build()
    .expect("valid settings");
    let maria = tls_maria(&["--wait-timeout=2"]);
    let my = Pool::builder(maria_manager(&maria))
        .max_size(4)
        .build()
        .expect("valid settings");
    let mut errors = Vec::new();
    for burst in 0..3 {
        if burst > 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        for _ in 0..20 {
            match tp.get().await {
                Ok(conn) => {
                    assert!(conn.is_tls());
                    if let Err(e) = conn.simple_query("SELECT 1").await {
                        errors.push(format!("tokio-postgres: {e}"));
                    }
                }
                Err(e) => errors.push(format!("tokio-postgres get: {e}")),
            }
            match sqlx_pool.get().await {
                Ok(mut conn) => {
                    if let Err(e) = sqlx::query("SELECT 1").execute(&mut *conn).await {
                        errors.push(format!("sqlx: {e}"));
                    }
                }
                Err(e) => errors.push(format!("sqlx get: {e}")),
            }
            match my.get().await {
                Ok(mut conn) => {
                    if let Err(e) = conn.query_drop("SELECT 1").await {
                        errors.push(format!("mysql_async: {e}"));
                    }
                }
                Err(e) => errors.push(format!("mysql_async get: {e}")),
            }
        }
    }
    assert!(errors.is_empty(), "errors reached callers: {errors:?}");
    for (name, s) in [
        ("tokio-postgres", tp.state()),
        ("sqlx", sqlx_pool.state()),
        ("mysql_async", my.state()),
    ] {
        assert!(
            s.closed.get(Reason::ServerTimeout) >= 1,
            "{name}: idle sessions retired before the server's timeout: {s:?}"
        );
    }
    tp.close().await;
    sqlx_pool.close().await;
    my.close().await;
}

/// A private MariaDB with TLS on, certificates as for PostgreSQL.
fn tls_maria(extra: &[&str]) -> PrivateMaria {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    PrivateMaria::start_with(|dir| {
        make_ca_and_server(dir, "good");
        let mut options = vec![
            format!("--ssl-cert={}", dir.join("good-server.crt").display()),
            format!("--ssl-key={}", dir.join("good-server.key").display()),
            format!("--ssl-ca={}", dir.join("good.crt").display()),
        ];
        options.extend(extra);
        options
    })
}

/// A manager for `maria` over TLS with the CA and host name checked.
fn maria_manager(maria: &PrivateMaria) -> MySqlManager {
    MySqlManager::from_url(&format!(
        "mysql://root@localhost:{}/mysql?prefer_socket=false&ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        maria.port(),
        maria.dir().join("good.crt").display()
    ))
    .expect("a well-formed URL")
}

/// MariaDB sessions killed from outside while idle, over TLS: found by the
/// checkout's ping (mysql_async sees no socket event) and never lent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_sessions_killed_over_tls_are_never_lent() {
    let maria = tls_maria(&[]);
    let pool = Pool::builder(maria_manager(&maria))
        .max_size(4)
        .build()
        .expect("valid settings");
    let held: Vec<_> = futures::future::join_all((0..4).map(|_| pool.get()))
        .await
        .into_iter()
        .map(|r| r.expect("get"))
        .collect();
    drop(held);
    let mut admin = mysql_async::Conn::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(maria.port())
            .user(Some("root"))
            .prefer_socket(false),
    )
    .await
    .expect("admin connection");
    let ids: Vec<u64> = admin
        .query("SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID() AND command = 'Sleep'")
        .await
        .expect("processlist");
    assert_eq!(ids.len(), 4, "the pool's four idle sessions");
    for id in ids {
        admin
            .query_drop(format!("KILL CONNECTION {id}"))
            .await
            .expect("kill");
    }
    // Past the bypass window (500 ms): each checkout pings first.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..8 {
        let mut conn = pool.get().await.expect("a connection");
        conn.query_drop("SELECT 1")
            .await
            .expect("a live session, never a dead one");
    }
    let s = pool.state();
    assert!(
        s.validations_failed >= 1,
        "the dead sessions were found: {s:?}"
    );
    pool.close().await;
    let _ = admin.disconnect().await;
}

/// A fast restart of the TLS PostgreSQL: every session gets the server's
/// `FATAL` (57P01) inside TLS before the server goes; the watch sees it, so
/// after the restart no dead session is lent, by either backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_tls_lends_no_dead_session() {
    let (pg, dir) = tls_server(&[]);
    let verify = format!(
        "sslmode=verify-full&sslrootcert={}",
        dir.join("good.crt").display()
    );
    let tp = Pool::builder(manager(&url("localhost", pg.port(), &verify)))
        .max_size(4)
        .validation(vigil::Validation::Never)
        .build()
        .expect("valid settings");
    let held: Vec<_> = futures::future::join_all((0..4).map(|_| tp.get()))
        .await
        .into_iter()
        .map(|r| r.expect("get"))
        .collect();
    drop(held);
    pg.stop_fast();
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tp.state().closed.get(Reason::Broken) < 4 {
        assert!(
            Instant::now() < deadline,
            "the restart's FATALs were not seen: {:?}",
            tp.state()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..8 {
        let conn = tp.get().await.expect("a connection");
        assert!(conn.is_tls());
        conn.simple_query("SELECT 1")
            .await
            .expect("a live session, never a dead one");
    }
    tp.close().await;
}
