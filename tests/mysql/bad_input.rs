//! Bad input: unreachable or black-holed hosts, wrong credentials or
//! database, malformed URLs and invalid settings fail clearly and in time.

use std::time::{Duration, Instant};

use vigil::backend::mysql::MySqlManager;
use vigil::{BuildError, ConnectError, Error, Pool, TimeoutPhase};

use crate::{base, error_code, manager, trace};

const SECRET: &str = "secret-pw-123";

/// What either way of starting reported: the eager `connect()` has its own
/// error type, `get()` the pool's.
#[derive(Debug)]
enum PoolError {
    Eager(ConnectError<mysql_async::Error>),
    Lazy(Error<mysql_async::Error>),
}

impl PoolError {
    fn last_connect_error(&self) -> Option<&mysql_async::Error> {
        match self {
            PoolError::Eager(e) => e.last_connect_error(),
            PoolError::Lazy(e) => e.last_connect_error(),
        }
    }
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Eager(e) => e.fmt(f),
            PoolError::Lazy(e) => e.fmt(f),
        }
    }
}

/// Runs `get` through an eager `connect()` and a lazy `build()` + `get()`,
/// checks both fail within `acquire_timeout` plus slack, and returns the errors.
async fn both_ways(manager: MySqlManager, connect_timeout: Duration) -> Vec<PoolError> {
    let acquire = Duration::from_secs(2);
    let builder = || {
        Pool::builder(manager.clone())
            .acquire_timeout(acquire)
            .connect_timeout(connect_timeout)
    };
    let started = Instant::now();
    let eager = builder()
        .connect()
        .await
        .expect_err("connect() should fail");
    let eager_took = started.elapsed();
    let pool = builder().build().expect("build() opens nothing");
    let started = Instant::now();
    let lazy = pool.get().await.expect_err("get() should fail");
    let lazy_took = started.elapsed();
    for took in [eager_took, lazy_took] {
        assert!(
            took < acquire + Duration::from_secs(1),
            "failing took {took:?} with acquire_timeout {acquire:?}"
        );
    }
    assert_eq!(pool.state().open, 0);
    vec![PoolError::Eager(eager), PoolError::Lazy(lazy)]
}

/// The eager `connect()` reports the driver's error itself (`Connect`), or
/// `NoAnswer` when the server never answered; the lazy `get()` always a
/// `Connecting` timeout carrying the last connect error.
fn assert_connecting_timeout(e: &PoolError) {
    assert!(
        matches!(
            e,
            PoolError::Eager(ConnectError::Connect(_) | ConnectError::NoAnswer { .. })
                | PoolError::Lazy(Error::Timeout {
                    phase: TimeoutPhase::Connecting,
                    ..
                })
        ),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_host_fails_with_connection_refused_not_a_hang() {
    trace();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let m = MySqlManager::new(base().tcp_port(port).into());
    for e in both_ways(m, Duration::from_secs(1)).await {
        assert_connecting_timeout(&e);
        let text = e.to_string();
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(e.last_connect_error().is_some(), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_host_fails_within_acquire_timeout() {
    trace();
    // A listener that never accepts: the kernel completes the TCP handshake
    // into its backlog, and the server's greeting never comes (traffic stays
    // on 127.0.0.1).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let m = MySqlManager::new(base().tcp_port(port).into());
    for e in both_ways(m, Duration::from_millis(500)).await {
        assert_connecting_timeout(&e);
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_reads_as_access_denied_and_hides_the_password() {
    trace();
    let m = MySqlManager::from_url(&format!("mysql://root:{SECRET}@127.0.0.1:3306/test"))
        .expect("a well-formed URL");
    let shown = format!("{m:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(
        shown.contains("127.0.0.1") && shown.contains("root"),
        "{shown}"
    );
    for e in both_ways(m, Duration::from_secs(1)).await {
        assert_connecting_timeout(&e);
        let (text, debug) = (e.to_string(), format!("{e:?}"));
        assert!(text.contains("Access denied"), "{text}");
        assert!(
            !text.contains(SECRET) && !debug.contains(SECRET),
            "{text}\n{debug}"
        );
        assert_eq!(
            e.last_connect_error().and_then(error_code),
            Some(1045),
            "{e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_database_reads_as_unknown_database() {
    trace();
    let m = MySqlManager::from_url("mysql://root@127.0.0.1:3306/no_such_db_vigil")
        .expect("a well-formed URL");
    for e in both_ways(m, Duration::from_secs(1)).await {
        assert_connecting_timeout(&e);
        let text = e.to_string();
        assert!(text.contains("Unknown database"), "{text}");
        assert_eq!(
            e.last_connect_error().and_then(error_code),
            Some(1049),
            "{e:?}"
        );
    }
}

#[test]
fn malformed_url_is_a_clear_error_not_a_panic() {
    let cases = [
        ("mysql://root@:notaport/test", "host"),
        (
            &*format!("mysql://root:{SECRET}@host:notaport/test"),
            "port",
        ),
        (
            &*format!("postgres://root:{SECRET}@127.0.0.1/test"),
            "scheme",
        ),
        ("not a url", "URL"),
        (
            &*format!("mysql://root:{SECRET}@127.0.0.1/test?pool_min=many"),
            "pool_min",
        ),
        (
            &*format!("mysql://root:{SECRET}@127.0.0.1/test?no_such_param=1"),
            "no_such_param",
        ),
    ];
    for (url, names) in cases {
        let e = MySqlManager::from_url(url).expect_err(url);
        let (text, debug) = (e.to_string(), format!("{e:?}"));
        assert!(text.contains(names), "{url}: {text}");
        assert!(
            !text.contains(SECRET) && !debug.contains(SECRET),
            "{text}\n{debug}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_setting_is_named_not_a_panic() {
    trace();
    match Pool::builder(manager()).max_size(0).build() {
        Err(BuildError::Config(c)) => assert_eq!(c.setting, "max_size", "{c}"),
        other => panic!("expected a max_size error, got {other:?}"),
    }
    match Pool::builder(manager()).max_size(0).connect().await {
        Err(ConnectError::Build(BuildError::Config(c))) => {
            assert_eq!(c.setting, "max_size");
            assert!(c.to_string().contains("max_size"), "{c}");
        }
        other => panic!("expected a max_size error, got {other:?}"),
    }
    match Pool::builder(manager()).max_size(2).min_idle(3).build() {
        Err(BuildError::Config(c)) => assert_eq!(c.setting, "min_idle", "{c}"),
        other => panic!("expected a min_idle error, got {other:?}"),
    }
}
