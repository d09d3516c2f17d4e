//! The `vigil` command-line tool, run as a process against the real servers:
//! MariaDB at 127.0.0.1:3306 (root, no password, database `test`),
//! PostgreSQL at 127.0.0.1:5432 (postgres, trust auth, database `test`),
//! and in-memory SQLite.
//!
//! These tests fail (never skip) when a server is down. They change no
//! global server setting: idle timeouts are set per session by the tool,
//! and the tool kills only its own pool's sessions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use serde_json::Value;

#[path = "faults/proxy.rs"]
#[allow(dead_code)] // the fault suite uses more of it
mod proxy;

const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const SECRET: &str = "secret-pw-123";

fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the vigil binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A report path no other test uses.
fn report_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "vigil-cli-{name}-{}-{}.json",
        std::process::id(),
        NEXT.fetch_add(1, SeqCst)
    ))
}

/// Runs `vigil load ARGS --json PATH`, expects exit 0, returns the JSON report.
fn load(name: &str, args: &[&str]) -> Value {
    let path = report_path(name);
    let path_arg = path.to_str().expect("a UTF-8 temp path");
    let mut all = vec!["load"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", path_arg]);
    let out = vigil(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "vigil {all:?} failed\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("requests"),
        "no human report on stdout: {}",
        text(&out.stdout)
    );
    let json = std::fs::read_to_string(&path).expect("the JSON report was written");
    let _ = std::fs::remove_file(&path);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("invalid JSON ({e}): {json}"))
}

/// The fields the report promises, with plausible values.
fn assert_report_shape(r: &Value, backend: &str) {
    assert_eq!(r["backend"], backend, "{r:#}");
    for key in [
        "requests",
        "errors",
        "connections_created",
        "killed_idle",
        "pool_size",
        "concurrency",
    ] {
        assert!(r[key].is_u64(), "`{key}` missing or not a count: {r:#}");
    }
    assert!(r["error_samples"].is_array(), "{r:#}");
    assert!(
        r["throughput_per_s"].as_f64().is_some_and(|t| t > 0.0),
        "{r:#}"
    );
    for key in ["p50", "p90", "p99", "max"] {
        assert!(r["latency_seconds"][key].is_f64(), "latency {key}: {r:#}");
    }
    for key in ["p50", "p99", "max"] {
        assert!(r["acquire_seconds"][key].is_f64(), "acquire {key}: {r:#}");
    }
    let l = &r["latency_seconds"];
    assert!(l["p50"].as_f64() <= l["p99"].as_f64() && l["p99"].as_f64() <= l["max"].as_f64());
    let closed = r["connections_closed"]
        .as_object()
        .expect("connections_closed");
    for reason in [
        "broken",
        "validation_failed",
        "max_lifetime",
        "idle_timeout",
        "server_timeout",
        "reset_failed",
        "closed",
    ] {
        assert!(closed[reason].is_u64(), "closed.{reason}: {r:#}");
    }
}

fn assert_clean(r: &Value) {
    assert_eq!(r["errors"], 0, "requests failed: {:#}", r["error_samples"]);
    assert_eq!(
        r["error_samples"].as_array().map(Vec::len),
        Some(0),
        "{r:#}"
    );
}

// ---------------------------------------------------------------- plain runs

#[test]
fn sqlite_without_url_needs_no_server_and_writes_the_report() {
    let r = load("sqlite", &["--requests", "2000"]);
    assert_report_shape(&r, "sqlite");
    assert_clean(&r);
    assert_eq!(r["requests"], 2000, "{r:#}");
    assert_eq!(r["pool_size"], 8);
    assert_eq!(r["concurrency"], 16);
    assert!(r["connections_created"].as_u64() <= Some(8), "{r:#}");
}

#[test]
fn mariadb_run_reports_every_request() {
    let r = load("mariadb", &["--url", MARIADB, "--requests", "2000"]);
    assert_report_shape(&r, "mysql");
    assert_clean(&r);
    assert_eq!(r["requests"], 2000, "{r:#}");
    assert_eq!(r["server_idle_timeout_seconds"], 28800.0, "{r:#}");
}

#[test]
fn postgres_run_reports_every_request() {
    let r = load("postgres", &["--url", POSTGRES, "--requests", "2000"]);
    assert_report_shape(&r, "postgres");
    assert_clean(&r);
    assert_eq!(r["requests"], 2000, "{r:#}");
}

// ---------------------------------------------------------------- idle sessions die

/// Between bursts the sessions sit idle longer than their 2 s server
/// timeout; the pool retires them first (reason `server_timeout`), so no
/// request meets a closed session.
fn session_timeout_is_dodged(name: &str, url: &str, backend: &str) {
    let r = load(
        name,
        &[
            "--url",
            url,
            "--requests",
            "2000",
            "--session-idle-timeout",
            "2s",
            "--bursts",
            "3",
            "--idle-gap",
            "3s",
        ],
    );
    assert_report_shape(&r, backend);
    assert_clean(&r);
    assert_eq!(r["requests"], 2000, "{r:#}");
    assert_eq!(r["server_idle_timeout_seconds"], 2.0, "{r:#}");
    assert!(
        r["connections_closed"]["server_timeout"].as_u64() > Some(0),
        "no connection was retired for the server's timeout: {r:#}"
    );
}

#[test]
fn mariadb_session_idle_timeout_across_bursts_causes_no_errors() {
    session_timeout_is_dodged("maria-idle", MARIADB, "mysql");
}

#[test]
fn postgres_session_idle_timeout_across_bursts_causes_no_errors() {
    session_timeout_is_dodged("pg-idle", POSTGRES, "postgres");
}

/// A light load (4 workers, pool of 8) in two bursts: during the 3 s gap
/// every session sits idle and the killer (a round per second) kills them;
/// the second burst's checkouts ping them, find them dead and reconnect.
/// With `pinged`, the killed sessions are found by the checkout ping (sqlx,
/// mysql_async); without, mostly by `Session::broken`, with no round trip (tokio-postgres).
fn killed_idle_sessions_are_caught(
    name: &str,
    url: &str,
    backend: &str,
    driver: &[&str],
    pinged: bool,
) -> Value {
    let mut args = driver.to_vec();
    args.extend_from_slice(&[
        "--url",
        url,
        "--duration",
        "4s",
        "--concurrency",
        "4",
        "--pool-size",
        "8",
        "--bursts",
        "2",
        "--idle-gap",
        "3s",
        "--kill-idle-every",
        "1s",
    ]);
    let r = load(name, &args);
    assert_report_shape(&r, backend);
    assert_clean(&r);
    assert_eq!(r["kill_failures"], 0, "{r:#}");
    assert!(
        r["killed_idle"].as_u64() > Some(0),
        "nothing was killed: {r:#}"
    );
    let failed = r["validations"]["failed"].as_u64().unwrap_or(0);
    let broken = r["connections_closed"]["broken"].as_u64().unwrap_or(0);
    if pinged {
        assert!(failed > 0, "no checkout ping found a killed session: {r:#}");
    } else {
        // A kill that lands just before a checkout can still meet its ping
        // (pg_terminate_backend returns before the backend exits), so the
        // count of pings is not asserted to be zero here; tests/tokio_postgres.rs
        // does that without the race.
        assert!(
            broken > failed,
            "killed sessions were found by pings, not seen: {r:#}"
        );
    }
    r
}

#[test]
fn mariadb_killed_idle_sessions_cause_no_errors() {
    killed_idle_sessions_are_caught("maria-kill", MARIADB, "mysql", &[], true);
}

#[test]
fn postgres_killed_idle_sessions_cause_no_errors_and_no_pings() {
    let r = killed_idle_sessions_are_caught("pg-kill", POSTGRES, "postgres", &[], false);
    assert_eq!(
        r["driver"], "tokio-postgres",
        "the default driver for postgres://"
    );
}

#[test]
fn postgres_over_sqlx_killed_idle_sessions_cause_no_errors() {
    let r = killed_idle_sessions_are_caught(
        "pg-kill-sqlx",
        POSTGRES,
        "postgres",
        &["--driver", "sqlx"],
        true,
    );
    assert_eq!(r["driver"], "sqlx");
}

// ---------------------------------------------------------------- bad input

/// Exit 2, one line on stderr naming the problem, no panic, no password.
fn assert_bad_input(args: &[&str], mentions: &str) {
    let out = vigil(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(2),
        "vigil {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(
        stderr.contains(mentions),
        "{stderr:?} does not mention {mentions:?}"
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", SECRET] {
        assert!(!stderr.contains(bad), "stderr contains {bad:?}: {stderr:?}");
        assert!(!stdout.contains(bad), "stdout contains {bad:?}: {stdout:?}");
    }
}

#[test]
fn malformed_urls_exit_2_without_the_password() {
    assert_bad_input(
        &[
            "load",
            "--url",
            "mysql://root:secret-pw-123@127.0.0.1:notaport/test",
        ],
        "invalid port",
    );
    assert_bad_input(
        &[
            "load",
            "--url",
            "postgres://u:secret-pw-123@127.0.0.1:notaport/test",
        ],
        "invalid port",
    );
    assert_bad_input(&["load", "--url", "redis://127.0.0.1/"], "redis");
    assert_bad_input(
        &[
            "probe",
            "--url",
            "mysql://root:secret-pw-123@127.0.0.1:notaport/test",
        ],
        "invalid port",
    );
}

#[test]
fn unreachable_port_exits_2_naming_the_refusal() {
    for url in [
        "mysql://root:secret-pw-123@127.0.0.1:1/test",
        "postgres://postgres:secret-pw-123@127.0.0.1:1/test",
    ] {
        assert_bad_input(
            &["load", "--url", url, "--acquire-timeout", "2s"],
            "refused",
        );
        assert_bad_input(
            &["probe", "--url", url, "--connect-timeout", "2s"],
            "refused",
        );
    }
}

#[test]
fn wrong_password_exits_2_without_echoing_it() {
    let url = "mysql://root:secret-pw-123@127.0.0.1:3306/test";
    assert_bad_input(&["load", "--url", url], "Access denied");
    assert_bad_input(&["probe", "--url", url], "Access denied");
}

#[test]
fn invalid_flag_values_exit_2_in_one_line() {
    assert_bad_input(&["load", "--pool-size", "0"], "--pool-size");
    assert_bad_input(&["load", "--concurrency", "none"], "--concurrency");
    assert_bad_input(&["load", "--duration", "soon"], "--duration");
    assert_bad_input(
        &["load", "--requests", "5", "--duration", "1s"],
        "--duration",
    );
    assert_bad_input(&["load", "--kill-idle-every", "1s"], "--kill-idle-every");
    assert_bad_input(
        &["load", "--session-idle-timeout", "2s"],
        "--session-idle-timeout",
    );
    assert_bad_input(&["load", "--query", "SELEC", "--requests", "5"], "SELEC");
}

// ---------------------------------------------------------------- metrics and probe

#[test]
fn metrics_endpoint_serves_the_load_pool_while_running() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "load",
            "--duration",
            "3s",
            "--concurrency",
            "2",
            "--pool-size",
            "2",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the vigil binary");
    let (addr, _stderr) = announced_metrics_addr(&mut child);
    let body = http_get(&addr, "/metrics");
    let out = child.wait_with_output().expect("vigil finishes");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains(r#"vigil_connections{pool="load""#), "{body}");
}

fn probe(url: &str) -> Value {
    probe_with(url, &[])
}

fn probe_with(url: &str, flags: &[&str]) -> Value {
    let mut args = vec!["probe", "--url", url, "--json"];
    args.extend_from_slice(flags);
    let out = vigil(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "vigil probe failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", text(&out.stdout)))
}

#[test]
fn probe_reads_mariadb_timeouts() {
    let p = probe(MARIADB);
    assert_eq!(p["server"], "MariaDB", "{p:#}");
    // The server's default; pool sessions are non-interactive and get it.
    assert_eq!(p["timeouts"]["wait_timeout"], 28800, "{p:#}");
    assert!(p["timeouts"]["interactive_timeout"].is_u64(), "{p:#}");
    assert!(p["timeouts"]["idle_transaction_timeout"].is_u64(), "{p:#}");
    assert!(p["max_connections"].as_u64() > Some(0), "{p:#}");
    assert_eq!(p["session_idle_timeout_seconds"], 28800.0, "{p:#}");
    assert_eq!(
        p["recommended"]["retires_idle_after_seconds"], 28795.0,
        "{p:#}"
    );
    assert!(p["recommended"]["keepalive_interval_seconds"].as_f64() <= Some(200.0));
    assert!(!p["reasoning"].as_array().expect("reasoning").is_empty());
}

#[test]
fn probe_reads_postgres_timeouts() {
    let p = probe(POSTGRES);
    assert_eq!(p["server"], "PostgreSQL", "{p:#}");
    for key in [
        "idle_session_timeout",
        "idle_in_transaction_session_timeout",
        "tcp_keepalives_idle",
    ] {
        assert!(p["timeouts"][key].is_number(), "timeouts.{key}: {p:#}");
    }
    assert!(p["max_connections"].as_u64() > Some(0), "{p:#}");
    assert!(p["recommended"]["max_connections_budget"].is_u64(), "{p:#}");
    assert!(!p["reasoning"].as_array().expect("reasoning").is_empty());
    assert_eq!(p["driver"], "tokio-postgres", "the default driver: {p:#}");
    assert_eq!(p["between"]["proxied"], false, "nothing between: {p:#}");
    assert_eq!(p["between"]["server_port"], 5432, "{p:#}");
}

#[test]
fn probe_reads_the_same_from_postgres_through_either_driver() {
    let tokio_pg = probe_with(POSTGRES, &["--driver", "tokio-postgres"]);
    let sqlx = probe_with(POSTGRES, &["--driver", "sqlx"]);
    assert_eq!(sqlx["driver"], "sqlx", "{sqlx:#}");
    for key in ["version", "max_connections", "timeouts", "recommended"] {
        assert_eq!(tokio_pg[key], sqlx[key], "{key}");
    }
}

// ---------------------------------------------------------------- hostile input

/// Runs the binary under a 2 GiB address-space limit (an up-front
/// allocation sized by a flag would fail it) and a 10 s wall-clock bound.
fn vigil_bounded(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let started = std::time::Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"ulimit -v 2097152; exec timeout 10 "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the vigil binary under bash");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "vigil {args:?} took {:?}",
        started.elapsed()
    );
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Exit 2 (not timeout's 124, not an abort), one line naming `mentions`.
fn assert_refused(args: &[&str], env: &[(&str, &str)], mentions: &str) {
    let (code, stdout, stderr) = vigil_bounded(args, env);
    assert_eq!(
        code,
        Some(2),
        "vigil {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "vigil {args:?}: not one line: {stderr:?}"
    );
    assert!(
        stderr.contains(mentions),
        "vigil {args:?}: {stderr:?} does not mention {mentions:?}"
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", SECRET] {
        assert!(
            !stderr.contains(bad),
            "vigil {args:?}: stderr has {bad:?}: {stderr:?}"
        );
        assert!(
            !stdout.contains(bad),
            "vigil {args:?}: stdout has {bad:?}: {stdout:?}"
        );
    }
}

#[test]
fn absurd_numbers_and_durations_exit_2_naming_the_flag() {
    let huge_numbers = [
        "18446744073709551616",
        "99999999999999999999999999",
        "-1",
        "1e400",
        "NaN",
        "",
        "0x10",
    ];
    let numeric = ["--concurrency", "--pool-size", "--requests", "--bursts"];
    let huge_durations = [
        "2562047788015216h",
        "18446744073709551615s",
        "1e300s",
        "-1s",
        "-0.5ms",
        "inf",
        "NaN",
        "5 fortnights",
        "",
    ];
    let durations = [
        "--duration",
        "--idle-gap",
        "--kill-idle-every",
        "--session-idle-timeout",
        "--acquire-timeout",
        "--validation-timeout",
        "--validation",
        "--keepalive-interval",
        "--max-lifetime",
        "--idle-timeout",
    ];
    for flag in numeric {
        for value in huge_numbers {
            assert_refused(&["load", flag, value], &[], flag);
        }
    }
    // Past the tool's bounds, though they fit the integer type.
    assert_refused(
        &["load", "--pool-size", "18446744073709551615"],
        &[],
        "--pool-size",
    );
    assert_refused(
        &["load", "--pool-size", "4611686018427387904"],
        &[],
        "--pool-size",
    );
    assert_refused(
        &["load", "--concurrency", "18446744073709551615"],
        &[],
        "--concurrency",
    );
    assert_refused(&["load", "--bursts", "4294967295"], &[], "--bursts");
    for flag in durations {
        for value in huge_durations {
            assert_refused(&["load", flag, value], &[], flag);
        }
    }
    for value in huge_durations {
        assert_refused(
            &["probe", "--connect-timeout", value],
            &[],
            "--connect-timeout",
        );
    }
    // Below the pool's floors: named by the flag, not the library setting.
    assert_refused(&["load", "--max-lifetime", "10ms"], &[], "--max-lifetime");
    assert_refused(
        &["load", "--keepalive-interval", "1ms"],
        &[],
        "--keepalive-interval",
    );
}

/// Sizes the old code allocated up front, or spawned a worker each for:
/// now a cap (lazily filled) and no more workers than requests.
#[test]
fn huge_but_valid_sizes_run_in_bounded_memory() {
    for args in [
        ["load", "--pool-size", "100000000", "--requests", "20"],
        [
            "load",
            "--pool-size",
            "2305843009213693951",
            "--requests",
            "20",
        ],
        ["load", "--concurrency", "10000", "--requests", "3"],
    ] {
        let (code, stdout, stderr) = vigil_bounded(&args, &[]);
        assert_eq!(
            code,
            Some(0),
            "vigil {args:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(stdout.contains("requests"), "{stdout}");
    }
}

#[test]
fn malformed_urls_of_every_scheme_exit_2_naming_the_part() {
    let cases = [
        ("mysql://root:secret-pw-123@127.0.0.1:99999999/test", "port"),
        ("mariadb://root:secret-pw-123@[::1/test", "URL"),
        (
            "mysql://root:secret-pw-123@127.0.0.1/test?pool_min=x",
            "URL",
        ),
        ("postgres://u:secret-pw-123@127.0.0.1:65536/test", "port"),
        (
            "postgresql://u:secret-pw-123@127.0.0.1/test?sslmode=bogus",
            "ssl_mode",
        ),
        ("postgres://u:secret-pw-123@[::1/test", "URL"),
        ("sqlite://secret-pw-123/?mode=bogus", "mode"),
        ("nosuch://u:secret-pw-123@h/db", "nosuch"),
        ("127.0.0.1:5432", "scheme"),
    ];
    for (url, mentions) in cases {
        assert_refused(&["load", "--url", url], &[], mentions);
        assert_refused(&["probe", "--url", url], &[], mentions);
    }
}

#[test]
fn no_subcommand_says_one_is_required() {
    assert_refused(&[], &[], "subcommand is required");
}

#[test]
fn errors_do_not_repeat_their_prefix() {
    let (code, _, stderr) = vigil_bounded(
        &[
            "load",
            "--url",
            "mysql://root@127.0.0.1:1/test",
            "--acquire-timeout",
            "2s",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!stderr.contains("error: Input/output error:"), "{stderr}");
    assert_eq!(stderr.matches("Input/output error").count(), 1, "{stderr}");
    let (_, _, stderr) = vigil_bounded(&["load", "--url", "postgres://u@h/db?sslmode=bogus"], &[]);
    assert_eq!(
        stderr.matches("error with configuration").count(),
        1,
        "{stderr}"
    );
}

/// The URL can come from DATABASE_URL (out of `ps`), is used, and neither
/// `--help` nor an error echoes its password.
#[test]
fn database_url_is_used_and_never_echoed() {
    let unreachable = "postgres://postgres:secret-pw-123@127.0.0.1:1/test";
    assert_refused(
        &["load", "--acquire-timeout", "2s"],
        &[("DATABASE_URL", unreachable)],
        "postgres at 127.0.0.1:1/test",
    );
    let (code, stdout, stderr) =
        vigil_bounded(&["load", "--help"], &[("DATABASE_URL", unreachable)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("DATABASE_URL"), "{stdout}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stdout}{stderr}"
    );
    // A working URL from the environment drives the run.
    let path = report_path("dburl");
    let (code, stdout, stderr) = vigil_bounded(
        &[
            "load",
            "--requests",
            "20",
            "--json",
            path.to_str().expect("UTF-8"),
        ],
        &[("DATABASE_URL", POSTGRES)],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the report")).expect("JSON");
    let _ = std::fs::remove_file(&path);
    assert_eq!(report["backend"], "postgres");
}

/// `RUST_LOG` (and `-v`) show vigil's own events on stderr: here the
/// retirements of connections older than `--max-lifetime`, with their reason.
#[test]
fn rust_log_shows_the_pools_retirements() {
    let args = [
        "load",
        "--requests",
        "40",
        "--bursts",
        "2",
        "--idle-gap",
        "1200ms",
        "--max-lifetime",
        "1s",
    ];
    let (code, stdout, stderr) = vigil_bounded(&args, &[("RUST_LOG", "vigil=debug")]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("connection retired") && stderr.contains("max_lifetime"),
        "{stderr}"
    );
    let mut verbose = vec!["-v"];
    verbose.extend_from_slice(&args);
    let (code, _, stderr) = vigil_bounded(&verbose, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("connection retired"), "{stderr}");
    // Quiet by default: nothing at warn on a clean run.
    let (_, _, stderr) = vigil_bounded(&args, &[]);
    assert!(stderr.trim().is_empty(), "{stderr}");
}

/// With the tool's defaults (acquire 15 s, validation 5 s), a checkout
/// whose idle connection was black-holed waits out the ping, retires the
/// connection and opens another in time: no caller fails. (With the old
/// 5 s acquire default, equal to the validation timeout, every one did.)
#[test]
fn default_timeouts_survive_black_holed_idle_connections() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let proxy = rt.block_on(proxy::Proxy::start("127.0.0.1:5432".parse().expect("addr")));
    let url = format!("postgres://postgres@{}/test", proxy.addr());
    let path = report_path("blackhole");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["load", "--url", &url, "--requests", "8", "--bursts", "2"])
        .args(["--idle-gap", "4s", "--concurrency", "4", "--pool-size", "4"])
        .args(["--metrics-addr", "127.0.0.1:0", "--json"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the vigil binary");
    let (addr, _stderr) = announced_metrics_addr(&mut child);
    // The first burst (4 requests) follows the announcement at once; wait
    // until the pool is idle in the 4 s gap, then black-hole its sessions.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = http_get(&addr, "/status");
    assert!(
        status.contains(r#""active":0"#),
        "not idle in the gap: {status}"
    );
    let holed = proxy.black_hole_all();
    assert!(holed >= 1, "the pool had sessions to black-hole");
    let out = child.wait_with_output().expect("vigil finishes");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}): {}", text(&out.stdout)));
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(report["errors"], 0, "{report}");
    // A checkout ping met each black-holed session: it failed at the
    // validation timeout, or (the pool had a free slot) its caller was
    // served a new connection at the hedge delay and the run ended before
    // the ping did. Either way no caller saw the black hole.
    let failed = report["connections_closed"]["validation_failed"].as_u64();
    let hedged = report["validations"]["hedged"].as_u64();
    assert!(
        failed >= Some(1) || hedged >= Some(1),
        "the black-holed sessions were met by a checkout ping: {report}"
    );
    drop(proxy);
}

/// The `host:port` that `vigil load --metrics-addr 127.0.0.1:0` announces on
/// stderr (after any log lines before it), and the rest of stderr: keep it
/// open (and read it) while the child runs.
fn announced_metrics_addr(
    child: &mut std::process::Child,
) -> (String, BufReader<std::process::ChildStderr>) {
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    while !line.contains("serving http://") {
        line.clear();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "vigil ended without announcing its metrics address");
    }
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address announced: {line:?}"))
        .to_owned();
    (addr, stderr)
}

/// Output to a closed stderr (`2>&-`, a reader that went away) loses the
/// lines, not the run: no panic, exit 0, the report on stdout.
#[test]
fn a_closed_stderr_does_not_stop_the_run() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["-v", "load", "--requests", "40", "--bursts", "2"])
        .args(["--idle-gap", "1200ms", "--max-lifetime", "1s"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the vigil binary");
    drop(child.stderr.take());
    let out = child.wait_with_output().expect("vigil finishes");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("requests"),
        "{}",
        text(&out.stdout)
    );
}

fn http_get(addr: &str, path: &str) -> String {
    let mut http = TcpStream::connect(addr).expect("connect to the metrics server");
    write!(
        http,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut body = String::new();
    http.read_to_string(&mut body).expect("read the response");
    body
}

/// libpq's defaults over the default driver (tokio-postgres), as psql
/// reads them: the `PG*` variables fill what the URL leaves out, and with
/// nothing at all the Unix socket directory and the OS user are used.
/// Before, each of these failed with "no host to connect to" (the sqlx
/// driver connected). Socket hosts in URLs work in both spellings.
#[test]
fn postgres_urls_take_libpq_defaults_over_the_default_driver() {
    let run = |url: &str, env: &[(&str, &str)]| {
        let path = report_path("libpq");
        let (code, stdout, stderr) = vigil_bounded(
            &[
                "load",
                "--url",
                url,
                "--requests",
                "20",
                "--json",
                path.to_str().expect("UTF-8"),
            ],
            env,
        );
        assert_eq!(code, Some(0), "{url} with {env:?}: {stdout}{stderr}");
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("the report"))
                .expect("JSON");
        let _ = std::fs::remove_file(&path);
        assert_eq!(report["backend"], "postgres", "{report:#}");
        assert_eq!(report["errors"], 0, "{report:#}");
    };
    // Everything from the environment.
    run(
        "postgres://",
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGUSER", "postgres"),
            ("PGDATABASE", "test"),
        ],
    );
    // The database from the URL, host and user from the environment.
    run(
        "postgres:///test",
        &[("PGHOST", "127.0.0.1"), ("PGUSER", "postgres")],
    );
    // Nothing: the Unix socket directory and the OS user (a role this
    // machine's server has, with a database of its name).
    run("postgres://", &[]);
    // Socket directories in URLs: percent-encoded host, and `host=`.
    run("postgres://postgres@%2Fvar%2Frun%2Fpostgresql/test", &[]);
    run(
        "postgres:///test?host=/var/run/postgresql&user=postgres",
        &[],
    );
}
