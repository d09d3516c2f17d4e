//! The network between vigil and the server: black holes on lent
//! connections (a kernel-level drop, made with iptables on a test proxy's
//! port), idle cutoffs nobody announces (the proxy cuts flows idle past a
//! set time), and pgbouncer in front of a private PostgreSQL.
//!
//! Needs root (iptables), the shared PostgreSQL at 127.0.0.1:5432 and
//! MariaDB at 127.0.0.1:3306, and the
//! `pgbouncer` binary; `scripts/test` installs what is missing. Each test
//! fails loudly when something it needs is not there.

#[path = "../faults/proxy.rs"]
#[allow(dead_code)]
mod proxy;
#[path = "../faults/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use vigil::backend::tokio_postgres::TokioPgManager;

mod backends;
mod bouncer;
mod idle;
mod lent;
mod pgbouncer;
mod probe;

pub(crate) const SEC: Duration = Duration::from_secs(1);
const SHARED_PG: &str = "127.0.0.1:5432";
const SHARED_MARIA: &str = "127.0.0.1:3306";

pub(crate) fn shared_pg() -> SocketAddr {
    SHARED_PG.parse().expect("an address")
}

pub(crate) fn shared_maria() -> SocketAddr {
    SHARED_MARIA.parse().expect("an address")
}

/// Drops every packet sent to `port` on loopback while it lives: what the
/// sender sees of a black hole (nothing is acknowledged, so the kernel
/// retransmits until `TCP_USER_TIMEOUT` or its own limit). Removed on drop,
/// also when the test panics.
pub(crate) struct Dropped {
    port: u16,
}

impl Dropped {
    fn rule(port: u16, op: &str) -> Vec<String> {
        [
            op,
            "INPUT",
            "-i",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "DROP",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    pub(crate) fn start(port: u16) -> Dropped {
        let out = Command::new("iptables")
            .args(Self::rule(port, "-I"))
            .output()
            .unwrap_or_else(|e| {
                panic!("these tests need iptables (run as root; scripts/test installs it): {e}")
            });
        assert!(
            out.status.success(),
            "iptables refused the rule (root and CAP_NET_ADMIN are needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Dropped { port }
    }
}

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(Self::rule(self.port, "-D"))
            .status();
    }
}

/// Prints `NETWORK|scenario|backend|requests|errors|what was measured`,
/// the line RELIABILITY.md's table is made from (before the test's final
/// assertions, so a failing run still reports).
pub(crate) fn report(scenario: &str, backend: &str, requests: usize, errors: usize, detail: &str) {
    println!("NETWORK|{scenario}|{backend}|{requests}|{errors}|{detail}");
}

pub(crate) fn tp_manager(addr: SocketAddr, extra: &str) -> TokioPgManager {
    TokioPgManager::from_url(&format!(
        "postgres://postgres@{addr}/test?sslmode=disable&application_name=vigil_network{extra}"
    ))
    .expect("a well-formed URL")
}
