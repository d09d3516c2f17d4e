//! `vigil probe` through pgbouncer: it says pgbouncer is there, reads the
//! idle cutoff the server cannot report (`client_idle_timeout`) from its
//! admin console, and says what to set instead.

use serde_json::Value;

use crate::bouncer::{Bouncer, Mode};

fn probe(bouncer: &Bouncer, driver: &str) -> Value {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/test?sslmode=disable",
        bouncer.port()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["probe", "--url", &url, "--json", "--driver", driver])
        .output()
        .expect("run vigil probe");
    assert!(
        out.status.success(),
        "vigil probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the probe's JSON")
}

fn reasons(p: &Value) -> String {
    p["reasoning"]
        .as_array()
        .expect("reasoning")
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn probe_recognises_pgbouncer_in_transaction_mode_and_its_idle_cutoff() {
    let bouncer = Bouncer::start(Mode::Transaction, &["client_idle_timeout = 2"]);
    for driver in ["tokio-postgres", "sqlx"] {
        let p = probe(&bouncer, driver);
        let b = &p["between"];
        assert_eq!(b["proxied"], true, "{driver}: {p:#}");
        assert!(
            b["pgbouncer"]
                .as_str()
                .is_some_and(|v| v.starts_with("PgBouncer 1.")),
            "{driver}: {p:#}"
        );
        assert_eq!(b["pgbouncer_settings"]["pool_mode"], "transaction", "{p:#}");
        assert_eq!(
            p["recommended"]["server_idle_timeout_override_seconds"], 1.5,
            "{driver}: {p:#}"
        );
        let why = reasons(&p);
        assert!(why.contains("client_idle_timeout"), "{why}");
        assert!(why.contains("server_check_delay = 0"), "{why}");
        assert!(why.contains("prepared statements"), "{why}");
    }
}

#[test]
fn probe_recognises_pgbouncer_in_session_mode() {
    let bouncer = Bouncer::start(Mode::Session, &[]);
    let p = probe(&bouncer, "tokio-postgres");
    assert_eq!(
        p["between"]["pgbouncer_settings"]["pool_mode"], "session",
        "{p:#}"
    );
    assert_eq!(p["between"]["server_port"], bouncer.pg_port(), "{p:#}");
    assert!(
        p["recommended"]["server_idle_timeout_override_seconds"].is_null(),
        "{p:#}"
    );
    assert!(reasons(&p).contains("session mode"), "{p:#}");
}
