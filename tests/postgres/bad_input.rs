//! Bad input: a wrong URL, port, database or user fails clearly, in time,
//! and without the password.

use std::time::{Duration, Instant};

use vigil::backend::sqlx::PgManager;
use vigil::{BuildError, ConnectError, Pool};

use crate::{builder, pg_options, trace, unique, SEC};

const SECRET: &str = "secret-pw-123";

/// Builds eagerly (`connect`) and lazily (`build` + `get`); both must fail
/// within the acquire timeout with the connect error, and say `expect`.
async fn fails_clearly(manager: PgManager, expect: &str) {
    const ACQUIRE: Duration = Duration::from_millis(1500);
    // `carried`: the error holds the driver's connect error.
    let check = |shown: String, carried: bool, started: Instant, how: &str| {
        let elapsed = started.elapsed();
        assert!(elapsed < ACQUIRE + SEC, "{how}: took {elapsed:?}");
        assert!(carried, "{how}: the connect error is carried: {shown}");
        assert!(
            shown.to_lowercase().contains(&expect.to_lowercase()),
            "{how}: {shown:?} should say {expect:?}"
        );
        assert!(
            !shown.contains(SECRET),
            "{how}: the password leaked: {shown}"
        );
    };
    let started = Instant::now();
    let err = Pool::builder(manager.clone())
        .acquire_timeout(ACQUIRE)
        .connect()
        .await
        .expect_err("eager connect must fail");
    let carried = err.last_connect_error().is_some();
    check(format!("{err} / {err:?}"), carried, started, "connect()");

    let pool = Pool::builder(manager)
        .acquire_timeout(ACQUIRE)
        .build()
        .expect("build opens nothing");
    let started = Instant::now();
    let err = pool.get().await.expect_err("get must fail");
    let carried = err.last_connect_error().is_some();
    check(format!("{err} / {err:?}"), carried, started, "get()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_url_port_database_or_user_fail_clearly_without_leaking_the_password() {
    trace();
    let free_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let app = unique("bad");
    let no_user = PgManager::new(
        pg_options(&app)
            .username("vigil_no_such_user")
            .password(SECRET),
    );
    assert!(
        !format!("{no_user:?}").contains(SECRET),
        "the manager's Debug shows the password"
    );
    tokio::join!(
        fails_clearly(
            PgManager::new(pg_options(&app).port(free_port)),
            "connection refused"
        ),
        fails_clearly(
            PgManager::new(pg_options(&app).database("no_such_db_vigil")),
            "database \"no_such_db_vigil\" does not exist"
        ),
        fails_clearly(no_user, "role \"vigil_no_such_user\" does not exist"),
        // sqlx reads this URL as user $USER on the default socket, database
        // ":x": not a parse error, so it must fail clearly at connect.
        async {
            let m = PgManager::from_url("postgres://:@/:x").expect("sqlx accepts this URL");
            fails_clearly(m, "error").await;
        },
    );

    for (url, expect) in [
        ("postgres://host:notaport/db", "invalid port"),
        (
            &*format!("postgres://u:{SECRET}@[::1/db"),
            "invalid IPv6 address",
        ),
        (
            &*format!("postgres://u:{SECRET}@h/db?sslmode=bogus"),
            "ssl_mode",
        ),
        ("not a url", "no scheme (expected postgres, postgresql)"),
    ] {
        let err = PgManager::from_url(url).expect_err(url);
        let shown = format!("{err} / {err:?}");
        assert!(
            shown.contains(expect),
            "{url}: {shown:?} should say {expect:?}"
        );
        assert!(
            shown.contains("invalid PostgreSQL connection URL"),
            "{shown}"
        );
        assert!(
            !shown.contains(SECRET),
            "{url}: the password leaked: {shown}"
        );
    }

    for (setting, builder) in [
        ("max_size", builder(&app).max_size(0)),
        ("min_idle", builder(&app).max_size(2).min_idle(3)),
        (
            "acquire_timeout",
            builder(&app).acquire_timeout(Duration::ZERO),
        ),
    ] {
        match builder.build() {
            Err(BuildError::Config(e)) => assert_eq!(e.setting, setting, "{e}"),
            other => panic!("{setting}: expected BuildError::Config, got {other:?}"),
        }
    }
    match builder(&app).max_size(0).connect().await {
        Err(ConnectError::Build(BuildError::Config(e))) => assert_eq!(e.setting, "max_size"),
        other => panic!("expected ConnectError::Build, got {other:?}"),
    }
}
