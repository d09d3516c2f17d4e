//! Logins on the real PostgreSQL: one role per key, sessions counted by
//! `application_name` (and user) in `pg_stat_activity`.

use sqlx::postgres::PgConnection;
use vigil::backend::sqlx::PgManager;

use super::*;
// Options for the shared server, user `postgres`; each key's manager
// replaces the user and adds the password.
use crate::support::db::pg_options as options;

/// A connection outside any pool, for looking at and acting on the server.
async fn admin() -> PgConnection {
    crate::support::db::pg_admin("vigil_keyed_admin").await
}

/// Roles created for one test, dropped by `drop_all`.
struct Roles(Vec<String>);

impl Roles {
    async fn create(admin: &mut PgConnection, n: usize) -> Self {
        let mut names = Vec::new();
        for _ in 0..n {
            let name = unique("pg");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE \"{name}\" LOGIN PASSWORD '{PASSWORD}'"
            )))
            .execute(&mut *admin)
            .await
            .expect("create a login role");
            names.push(name);
        }
        Roles(names)
    }

    async fn drop_all(self, admin: &mut PgConnection) {
        for name in self.0 {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP ROLE IF EXISTS \"{name}\""
            )))
            .execute(&mut *admin)
            .await
            .expect("drop the test role");
        }
    }
}

fn pool(app: &str, max_open: usize, per_key: usize) -> KeyedPool<Credentials, PgManager> {
    let app = app.to_owned();
    KeyedPool::builder(move |key: &Credentials| {
        PgManager::new(options(&app).username(key.user()).password(key.password()))
    })
    .max_open(max_open)
    .max_size_per_key(per_key)
    .acquire_timeout(3 * SEC)
    .build()
    .expect("valid settings")
}

async fn sessions(admin: &mut PgConnection, app: &str, user: Option<&str>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = $1 AND ($2::text IS NULL OR usename = $2)",
    )
    .bind(app)
    .bind(user)
    .fetch_one(admin)
    .await
    .expect("pg_stat_activity is readable")
}

/// The end of a test: closes `pool`, waits (at most 5 s) until the server
/// lists none of its sessions, then drops the test's roles.
async fn close_and_clean_up(
    pool: &KeyedPool<Credentials, PgManager>,
    admin: &mut PgConnection,
    app: &str,
    roles: Roles,
) {
    pool.close().await;
    eventually!(
        "the pool's sessions to end",
        5 * SEC,
        sessions(admin, app, None).await == 0
    );
    roles.drop_all(admin).await;
}

async fn current_user(conn: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(conn)
        .await
        .expect("SELECT current_user")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_borrower_sees_its_own_users_session() {
    let mut admin = admin().await;
    let roles = Roles::create(&mut admin, 2).await;
    let app = unique("pgapp");
    let pool = pool(&app, 3, 2);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (pool, user) = (pool.clone(), roles.0[i % 2].clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool
                .get(&Credentials::new(&user, PASSWORD).with_database("test"))
                .await
                .expect("a connection");
            assert_eq!(current_user(&mut conn).await, user);
            tokio::time::sleep(Duration::from_millis(5 + (i as u64 % 4) * 5)).await;
            assert_eq!(current_user(&mut conn).await, user, "still its own session");
        }));
    }
    for t in tasks {
        t.await.expect("every borrower saw its own user");
    }
    assert_eq!(pool.state().keys, 2);
    close_and_clean_up(&pool, &mut admin, &app, roles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_on_the_server_and_a_key_at_cap_evicts_another_keys_idle_session() {
    const CAP: usize = 3;
    let mut admin = admin().await;
    let roles = Roles::create(&mut admin, 3).await;
    let app = unique("pgcap");
    let pool = pool(&app, CAP, CAP);
    let sampler = {
        let app = app.clone();
        let watcher = Arc::new(tokio::sync::Mutex::new(super::pg::admin().await));
        Sampler::start(move || {
            let (app, watcher) = (app.clone(), Arc::clone(&watcher));
            async move { sessions(&mut *watcher.lock().await, &app, None).await }
        })
    };

    // Load over three keys, more borrowers than the cap.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (pool, user) = (pool.clone(), roles.0[i % 3].clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool
                .get(&Credentials::new(&user, PASSWORD))
                .await
                .expect("served within 3 s");
            assert!(pool.state().open <= CAP, "the pool's own count");
            assert_eq!(current_user(&mut conn).await, user);
            tokio::time::sleep(10 * MS).await;
        }));
    }
    for t in tasks {
        t.await.expect("every borrower was served");
    }

    // Now everything is idle. One key takes the whole cap: it must close
    // the other keys' idle sessions, not exceed the cap.
    let a = Credentials::new(&roles.0[0], PASSWORD);
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(pool.get(&a).await.expect("room made by evictions"));
    }
    assert_eq!(
        sessions(&mut admin, &app, Some(&roles.0[0])).await,
        CAP as i64
    );

    // Nothing idle: another key waits its acquire_timeout and times out.
    let err = pool
        .get(&Credentials::new(&roles.0[1], PASSWORD))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::WaitingForConnection,
                ..
            }
        ),
        "{err}"
    );
    let (peak, raw_peak) = sampler.peak().await;
    assert!(
        peak <= CAP as i64,
        "the server listed {peak} sessions (single-sample peak {raw_peak}); cap {CAP}"
    );
    assert_eq!(
        peak, CAP as i64,
        "the load reached the cap (else the test proves little)"
    );

    drop(held);
    close_and_clean_up(&pool, &mut admin, &app, roles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_key_is_dropped_and_its_sessions_closed() {
    let mut admin = admin().await;
    let roles = Roles::create(&mut admin, 1).await;
    let app = unique("pgidle");
    let user = roles.0[0].clone();
    let pool = KeyedPool::builder({
        let app = app.clone();
        move |key: &Credentials| {
            PgManager::new(options(&app).username(key.user()).password(key.password()))
        }
    })
    .key_idle_timeout(300 * MS)
    .build()
    .unwrap();
    let k = Credentials::new(&user, PASSWORD);
    let (c1, c2) = (pool.get(&k).await.unwrap(), pool.get(&k).await.unwrap());
    drop((c1, c2));
    assert_eq!(sessions(&mut admin, &app, Some(&user)).await, 2);
    eventually!(
        "the idle key to be dropped",
        5 * SEC,
        pool.state().keys == 0
    );
    eventually!(
        "its sessions to end",
        5 * SEC,
        sessions(&mut admin, &app, Some(&user)).await == 0
    );
    assert_eq!(pool.state().open, 0);
    roles.drop_all(&mut admin).await;
}

/// A session terminated while its guard is held comes back looking healthy
/// over sqlx (`BrokenDetection::Blind`): the key's sub-pool must ping it on
/// return, as a plain `Pool` over the same manager does, and never lend it
/// again. Fails when `Capped` stops forwarding `capabilities` (the
/// sub-pools then skip the return ping: 20 of 20 borrowers got the dead
/// session) or `ErrorClass::EndsSession` (the closures read `validation_failed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_killed_while_lent_is_never_lent_again_by_a_key() {
    const ROUNDS: usize = 20;
    let mut admin = admin().await;
    let roles = Roles::create(&mut admin, 1).await;
    let app = unique("pgkill");
    let pool = pool(&app, 2, 1);
    let key = Credentials::new(&roles.0[0], PASSWORD);
    let mut errors = Vec::new();
    for round in 0..ROUNDS {
        let mut conn = pool.get(&key).await.expect("a connection");
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .expect("the session answers while lent");
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .expect("terminate the lent session");
        assert!(killed, "round {round}: the session was terminated");
        eventually!(
            "the terminated session to leave pg_stat_activity",
            5 * SEC,
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_one(&mut admin)
                .await
                .unwrap()
                == 0
        );
        drop(conn);
        let mut next = pool.get(&key).await.expect("a connection after the kill");
        if let Err(e) = sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&mut *next)
            .await
        {
            errors.push(format!("round {round}: {e}"));
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {ROUNDS} borrowers got the dead session: {errors:?}",
        errors.len()
    );
    let state = pool.key_state(&key).expect("the key has a sub-pool");
    assert_eq!(
        state.closed.get(vigil::Reason::Broken),
        ROUNDS as u64,
        "each terminated session is counted broken: {:?}",
        state.closed
    );
    close_and_clean_up(&pool, &mut admin, &app, roles).await;
}
