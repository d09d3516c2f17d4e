//! `vigil::keyed::KeyedPool`: the cap and key logic with the fake manager
//! and paused time, then logins on the real PostgreSQL (127.0.0.1:5432,
//! trust auth, user `postgres`, database `test`) and MariaDB (127.0.0.1:3306,
//! user `root`, no password, database `test`).
//!
//! The server tests fail loudly when a server is missing. They change no
//! global server setting: each creates its own users (unique names, dropped
//! at the end), and counts only sessions of those users / of its own
//! `application_name`.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::fake::{Fake, FakeError};
use vigil::keyed::{Credentials, KeyedPool, KeyedPooled};
use vigil::{BuildError, Error, Pool, TimeoutPhase};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const PASSWORD: &str = "pw-Secret-7731";

/// Lets spawned tasks (evictions, returns, closes) run.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// The fakes a keyed pool made, by user.
type Fakes = Arc<Mutex<HashMap<String, Fake>>>;

/// A keyed pool of fakes, one `Fake` per user, kept in the returned map.
fn fake_pool(max_open: usize, per_key: usize) -> (KeyedPool<Credentials, Fake>, Fakes) {
    let fakes = Arc::new(Mutex::new(HashMap::new()));
    let made = Arc::clone(&fakes);
    let pool = KeyedPool::builder(move |key: &Credentials| {
        made.lock()
            .unwrap()
            .entry(key.user().to_owned())
            .or_insert_with(Fake::new)
            .clone()
    })
    .max_open(max_open)
    .max_size_per_key(per_key)
    .acquire_timeout(5 * SEC)
    .key_idle_timeout(60 * SEC)
    .build()
    .expect("valid settings");
    (pool, fakes)
}

fn key(user: &str) -> Credentials {
    Credentials::new(user, PASSWORD).with_tenant(format!("t-{user}"))
}

fn closes(fakes: &Mutex<HashMap<String, Fake>>, user: &str) -> usize {
    fakes.lock().unwrap()[user].script.closes.load(SeqCst)
}

fn connects(fakes: &Mutex<HashMap<String, Fake>>, user: &str) -> usize {
    fakes
        .lock()
        .unwrap()
        .get(user)
        .map_or(0, |f| f.script.connects.load(SeqCst))
}

// ---------------------------------------------------------------- core: Pool::close_oldest_idle

#[tokio::test(start_paused = true)]
async fn close_oldest_idle_closes_the_least_recently_used_idle_connection_only() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(3)
        .build()
        .expect("valid settings");
    assert_eq!(pool.oldest_idle_for(), None);
    assert!(
        !pool.close_oldest_idle().await,
        "nothing idle, nothing closed"
    );

    let (a, b, c) = (pool.get().await, pool.get().await, pool.get().await);
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let (a_id, b_id) = (vigil::Pooled::id(&a), vigil::Pooled::id(&b));
    drop(a);
    tokio::time::advance(3 * SEC).await;
    drop(b);
    tokio::time::advance(SEC).await;
    let idle_for = pool.oldest_idle_for().expect("two idle");
    assert!(idle_for >= 4 * SEC, "the oldest is a's: {idle_for:?}");

    assert!(pool.close_oldest_idle().await);
    assert_eq!(
        fake.script.closes.load(SeqCst),
        1,
        "closed before returning"
    );
    let idle: Vec<u64> = pool
        .connections()
        .into_iter()
        .filter(|c| c.state == vigil::ConnectionState::Idle)
        .map(|c| c.id)
        .collect();
    assert_eq!(idle, vec![b_id], "a ({a_id}) went, b stayed");
    let state = pool.state();
    assert_eq!((state.open, state.active), (2, 1), "c is still lent");
    assert_eq!(state.closed.get(vigil::Reason::Closed), 1);
    drop(c);
}

// ---------------------------------------------------------------- cap and keys, fake manager

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KeyedPool<Credentials, Fake>>();
    assert_send_sync::<KeyedPooled<Fake>>();
    assert_send_sync::<Credentials>();
}

#[tokio::test]
async fn invalid_settings_name_the_setting() {
    let cases = [
        (
            "max_open",
            KeyedPool::builder(|_: &Credentials| Fake::new()).max_open(0),
        ),
        (
            "key_idle_timeout",
            KeyedPool::builder(|_: &Credentials| Fake::new()).key_idle_timeout(Duration::ZERO),
        ),
        (
            "max_size",
            KeyedPool::builder(|_: &Credentials| Fake::new()).max_size_per_key(0),
        ),
    ];
    for (setting, builder) in cases {
        match builder.build() {
            Err(BuildError::Config(e)) => assert_eq!(e.setting, setting, "{e}"),
            other => panic!("{setting}: expected a config error, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn equal_identities_share_a_sub_pool_and_any_difference_splits_them() {
    let (pool, _fakes) = fake_pool(10, 2);
    drop(pool.get(&key("ann")).await.unwrap());
    drop(pool.get(&key("ann")).await.unwrap());
    assert_eq!(pool.state().keys, 1);
    let other_password = Credentials::new("ann", "another").with_tenant("t-ann");
    drop(pool.get(&other_password).await.unwrap());
    let other_db = key("ann").with_database("db2");
    drop(pool.get(&other_db).await.unwrap());
    // Field boundaries count: ("an", "npw…") is not ("ann", "pw…").
    let shifted = Credentials::new("an", format!("n{PASSWORD}")).with_tenant("t-ann");
    drop(pool.get(&shifted).await.unwrap());
    assert_eq!(pool.state().keys, 4);
}

#[tokio::test(start_paused = true)]
async fn a_key_at_the_cap_closes_the_least_recently_used_idle_connection_of_another_key() {
    let (pool, fakes) = fake_pool(2, 2);
    drop(pool.get(&key("a")).await.unwrap());
    tokio::time::advance(10 * SEC).await;
    drop(pool.get(&key("b")).await.unwrap());
    assert_eq!(pool.state().open, 2);

    let c = pool.get(&key("c")).await.expect("room made by an eviction");
    settle().await;
    assert_eq!(closes(&fakes, "a"), 1, "a was idle longest");
    assert_eq!(closes(&fakes, "b"), 0);
    assert_eq!(pool.key_state(&key("a")).unwrap().open, 0);
    assert_eq!(pool.key_state(&key("b")).unwrap().idle, 1);
    assert_eq!(pool.state().open, 2);
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn with_nothing_idle_a_caller_waits_and_gets_vigils_timeout() {
    let (pool, fakes) = fake_pool(2, 2);
    let held = (
        pool.get(&key("a")).await.unwrap(),
        pool.get(&key("a")).await.unwrap(),
    );
    let started = tokio::time::Instant::now();
    let err = pool.get(&key("b")).await.unwrap_err();
    match &err {
        Error::Timeout { phase, .. } => {
            assert_eq!(*phase, TimeoutPhase::WaitingForConnection, "{err}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= 5 * SEC, "waited its acquire_timeout");
    assert!(!err.to_string().contains(PASSWORD));
    settle().await;
    assert_eq!(
        connects(&fakes, "b"),
        0,
        "the abandoned connect left the queue"
    );
    assert_eq!(pool.state().waiting, 0);
    assert_eq!(pool.state().open, 2);

    // The place b gave up is not taken by a ghost: c gets the first free unit.
    drop(held);
    let c = pool
        .get(&key("c"))
        .await
        .expect("a's idle connection is evicted");
    assert_eq!(pool.key_state(&key("b")).unwrap().open, 0);
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn waiters_of_different_keys_are_served_in_arrival_order() {
    let (pool, _fakes) = fake_pool(1, 1);
    let a = pool.get(&key("a")).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for user in ["b", "c", "d"] {
        let (pool, order) = (pool.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let conn = pool.get(&key(user)).await.expect("served within 5 s");
            order.lock().unwrap().push(user);
            tokio::time::sleep(100 * MS).await;
            drop(conn);
        }));
        settle().await;
    }
    assert_eq!(pool.state().waiting, 3);
    drop(a);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["b", "c", "d"]);
    assert_eq!(pool.state().open, 1, "never more than the cap");
}

#[tokio::test(start_paused = true)]
async fn the_cap_holds_under_load() {
    let (pool, fakes) = fake_pool(3, 2);
    for f in ["k0", "k1", "k2", "k3"] {
        let fake = Fake::new();
        fake.script.set_connect_delay(5 * MS);
        fakes.lock().unwrap().insert(f.to_owned(), fake);
    }
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (pool, peak) = (pool.clone(), Arc::clone(&peak));
        tasks.push(tokio::spawn(async move {
            let conn = pool.get(&key(&format!("k{}", i % 4))).await.unwrap();
            peak.fetch_max(pool.state().open, SeqCst);
            tokio::time::sleep(Duration::from_millis(10 + i % 7)).await;
            drop(conn);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    settle().await;
    let opened: usize = (0..4).map(|i| connects(&fakes, &format!("k{i}"))).sum();
    let closed: usize = (0..4).map(|i| closes(&fakes, &format!("k{i}"))).sum();
    assert!(opened - closed <= 3, "{opened} opened, {closed} closed");
    assert!(peak.load(SeqCst) <= 3);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_dropped_and_busy_ones_kept() {
    let fakes = Arc::new(Mutex::new(HashMap::<String, Fake>::new()));
    let made = Arc::clone(&fakes);
    let pool = KeyedPool::builder(move |key: &Credentials| {
        let f = Fake::new();
        made.lock()
            .unwrap()
            .insert(key.user().to_owned(), f.clone());
        f
    })
    .key_idle_timeout(SEC)
    .build()
    .unwrap();
    drop(pool.get(&key("idle")).await.unwrap());
    let busy = pool.get(&key("busy")).await.unwrap();
    assert_eq!(pool.state().keys, 2);

    tokio::time::sleep(3 * SEC).await;
    settle().await;
    assert_eq!(
        pool.state().keys,
        1,
        "only the key with a lent connection is left"
    );
    assert!(pool.key_state(&key("idle")).is_none());
    assert_eq!(closes(&fakes, "idle"), 1, "its idle connection was closed");
    assert_eq!(pool.state().open, 1);

    // The guard still works and returns into its key; then that key goes too.
    drop(busy);
    tokio::time::sleep(3 * SEC).await;
    settle().await;
    assert_eq!(pool.state().keys, 0);
    assert_eq!(pool.state().open, 0);
    // A dropped key comes back fresh on next use.
    drop(pool.get(&key("idle")).await.unwrap());
    assert_eq!(pool.state().keys, 1);
}

#[tokio::test(start_paused = true)]
async fn debug_and_errors_never_show_the_password() {
    let (pool, fakes) = fake_pool(2, 2);
    let k = key("dora");
    let conn = pool.get(&k).await.unwrap();
    let shown = format!("{k:?} {pool:?} {conn:?} {:?}", pool.state());
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(
        shown.contains("t-dora"),
        "the public label is shown: {shown}"
    );
    drop(conn);

    fakes.lock().unwrap()["dora"]
        .script
        .fail_connects("access denied for user dora");
    pool.remove(&k);
    let err = pool.get(&k).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("access denied"), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    let _: Option<&FakeError> = err.last_connect_error();
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_export_labelled_keys_up_to_the_bound() {
    let metrics = vigil::metrics::Metrics::new();
    let pool = KeyedPool::builder(|_: &Credentials| Fake::new())
        .name("api")
        .metrics(&metrics, 2)
        .build()
        .unwrap();
    drop(pool.get(&Credentials::new("anon", PASSWORD)).await.unwrap());
    for user in ["a", "b", "c"] {
        drop(pool.get(&key(user)).await.unwrap());
    }
    let mut names: Vec<String> = metrics.states().into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["api/t-a", "api/t-b"]);
    assert_eq!(pool.state().exported_keys, 2);
    assert_eq!(pool.state().keys, 4);

    // A dropped key frees its place for the next labelled key.
    assert!(pool.remove(&key("a")));
    drop(pool.get(&key("d")).await.unwrap());
    assert_eq!(pool.state().exported_keys, 2);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains(r#"pool="api/t-d""#), "{text}");
    assert!(!text.contains(PASSWORD) && !text.contains("anon"));
}

// ---------------------------------------------------------------- real servers: shared helpers

/// A name no other test or run uses (MariaDB user names: at most 80 chars).
fn unique(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "vk_{tag}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000,
        NEXT.fetch_add(1, SeqCst)
    )
}

/// Samples `count` every 5 ms until stopped. Keeps the highest count
/// seen in two samples in a row: the pool releases a unit of the cap once it
/// has said goodbye to the server, and the server takes a moment (longer on
/// a loaded 2-core machine) to take the session off its list, so a single
/// sample may still show a session the pool already closed. A session the
/// pool really holds shows in every sample.
struct Sampler {
    peak: Arc<AtomicI64>,
    raw_peak: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start<F, Fut>(mut count: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = i64> + Send,
    {
        let peak = Arc::new(AtomicI64::new(0));
        let raw_peak = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, r, s) = (Arc::clone(&peak), Arc::clone(&raw_peak), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut previous = 0;
            while !s.load(SeqCst) {
                let now = count().await;
                r.fetch_max(now, SeqCst);
                p.fetch_max(now.min(previous), SeqCst);
                previous = now;
                tokio::time::sleep(5 * MS).await;
            }
        });
        Sampler {
            peak,
            raw_peak,
            stop,
            task,
        }
    }

    /// (highest count seen twice in a row, highest single sample).
    async fn peak(self) -> (i64, i64) {
        self.stop.store(true, SeqCst);
        self.task.await.expect("the sampler does not panic");
        (self.peak.load(SeqCst), self.raw_peak.load(SeqCst))
    }
}

/// Polls `cond` (an expression that may `.await`) every 20 ms until it
/// holds; fails the test after `within`.
macro_rules! eventually {
    ($what:expr, $within:expr, $cond:expr) => {{
        let within: Duration = $within;
        let deadline = std::time::Instant::now() + within;
        while !$cond {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for {}",
                $what
            );
            tokio::time::sleep(20 * MS).await;
        }
    }};
}

// ---------------------------------------------------------------- PostgreSQL

mod pg {
    use super::*;
    use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
    use sqlx::Connection;
    use vigil::backend::sqlx::PgManager;

    fn options(app: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(5432)
            .database("test")
            .ssl_mode(PgSslMode::Disable)
            .application_name(app)
    }

    async fn admin() -> PgConnection {
        PgConnection::connect_with(&options("vigil_keyed_admin").username("postgres"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "these tests need PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres, \
                     database `test`), and it is not usable: {e}"
                )
            })
    }

    /// Roles created for one test, dropped by `drop_all`.
    struct Roles(Vec<String>);

    impl Roles {
        async fn create(admin: &mut PgConnection, n: usize) -> Self {
            let mut names = Vec::new();
            for _ in 0..n {
                let name = unique("pg");
                sqlx::raw_sql(&format!(
                    "CREATE ROLE \"{name}\" LOGIN PASSWORD '{PASSWORD}'"
                ))
                .execute(&mut *admin)
                .await
                .expect("create a login role");
                names.push(name);
            }
            Roles(names)
        }

        async fn drop_all(self, admin: &mut PgConnection) {
            for name in self.0 {
                sqlx::raw_sql(&format!("DROP ROLE IF EXISTS \"{name}\""))
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
        pool.close().await;
        eventually!(
            "the pool's sessions to end",
            5 * SEC,
            sessions(&mut admin, &app, None).await == 0
        );
        roles.drop_all(&mut admin).await;
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
        pool.close().await;
        eventually!(
            "the pool's sessions to end",
            5 * SEC,
            sessions(&mut admin, &app, None).await == 0
        );
        roles.drop_all(&mut admin).await;
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
}

// ---------------------------------------------------------------- MariaDB

mod mysql {
    use super::*;
    use mysql_async::prelude::Queryable;
    use mysql_async::{Conn, Opts, OptsBuilder};
    use vigil::backend::mysql::MySqlManager;

    const ADMIN_URL: &str = "mysql://root@127.0.0.1:3306/test";

    async fn admin() -> Conn {
        Conn::new(Opts::from_url(ADMIN_URL).expect("the admin URL parses"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "these tests need MariaDB at 127.0.0.1:3306 (user root, no password, \
                     database `test`), and it is not usable: {e}"
                )
            })
    }

    /// Users created for one test (`'name'@'%'`, SELECT on `test`).
    struct Users(Vec<String>);

    impl Users {
        async fn create(admin: &mut Conn, n: usize) -> Self {
            let mut names = Vec::new();
            for _ in 0..n {
                let name = unique("my");
                admin
                    .query_drop(format!(
                        "CREATE USER IF NOT EXISTS '{name}'@'%' IDENTIFIED BY '{PASSWORD}'"
                    ))
                    .await
                    .expect("create a user");
                admin
                    .query_drop(format!("GRANT SELECT ON test.* TO '{name}'@'%'"))
                    .await
                    .expect("grant it the test database");
                names.push(name);
            }
            Users(names)
        }

        async fn drop_all(self, admin: &mut Conn) {
            for name in self.0 {
                admin
                    .query_drop(format!("DROP USER IF EXISTS '{name}'@'%'"))
                    .await
                    .expect("drop the test user");
            }
        }
    }

    fn pool(max_open: usize, per_key: usize) -> KeyedPool<Credentials, MySqlManager> {
        KeyedPool::builder(|key: &Credentials| {
            let opts = OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(3306)
                .prefer_socket(false)
                .user(Some(key.user()))
                .pass(Some(key.password()))
                .db_name(key.database());
            MySqlManager::new(opts.into())
        })
        .max_open(max_open)
        .max_size_per_key(per_key)
        .acquire_timeout(3 * SEC)
        .build()
        .expect("valid settings")
    }

    async fn sessions(admin: &mut Conn, users: &[String]) -> i64 {
        let list = users
            .iter()
            .map(|u| format!("'{u}'"))
            .collect::<Vec<_>>()
            .join(",");
        let n: Option<i64> = admin
            .query_first(format!(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE USER IN ({list})"
            ))
            .await
            .expect("read the process list");
        n.unwrap_or_default()
    }

    async fn current_user(conn: &mut Conn) -> String {
        let me: Option<String> = conn
            .query_first("SELECT CURRENT_USER()")
            .await
            .expect("SELECT CURRENT_USER()");
        me.expect("one row")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_borrower_sees_its_own_user_and_a_wrong_password_fails_clearly() {
        let mut admin = admin().await;
        let users = Users::create(&mut admin, 2).await;
        let pool = pool(3, 2);
        let mut tasks = Vec::new();
        for i in 0..24 {
            let (pool, user) = (pool.clone(), users.0[i % 2].clone());
            tasks.push(tokio::spawn(async move {
                let key = Credentials::new(&user, PASSWORD).with_database("test");
                let mut conn = pool.get(&key).await.expect("a connection");
                assert_eq!(current_user(&mut conn).await, format!("{user}@%"));
                tokio::time::sleep(Duration::from_millis(5 + (i as u64 % 4) * 5)).await;
                assert_eq!(current_user(&mut conn).await, format!("{user}@%"));
            }));
        }
        for t in tasks {
            t.await.expect("every borrower saw its own user");
        }

        // The same user with a wrong password is another key, and fails.
        const WRONG: &str = "Wrong-Pw-5521";
        let bad = Credentials::new(&users.0[0], WRONG).with_database("test");
        let err = pool.get(&bad).await.unwrap_err();
        let shown = format!("{err} | {err:?} | {bad:?} | {pool:?}");
        assert!(shown.contains("Access denied"), "{shown}");
        assert!(
            !shown.contains(WRONG) && !shown.contains(PASSWORD),
            "{shown}"
        );
        match err.last_connect_error() {
            Some(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045, "{e}"),
            other => panic!("expected the server's access denied, got {other:?}"),
        }
        assert_eq!(pool.state().keys, 3);

        pool.close().await;
        eventually!(
            "the pool's sessions to end",
            5 * SEC,
            sessions(&mut admin, &users.0).await == 0
        );
        users.drop_all(&mut admin).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cap_holds_on_the_server_and_a_key_at_cap_evicts_another_keys_idle_session() {
        const CAP: usize = 2;
        let mut admin = admin().await;
        let users = Users::create(&mut admin, 2).await;
        let pool = pool(CAP, CAP);
        let sampler = {
            let names = users.0.clone();
            let watcher = Arc::new(tokio::sync::Mutex::new(super::mysql::admin().await));
            Sampler::start(move || {
                let (names, watcher) = (names.clone(), Arc::clone(&watcher));
                async move { sessions(&mut *watcher.lock().await, &names).await }
            })
        };
        let (a, b) = (
            Credentials::new(&users.0[0], PASSWORD),
            Credentials::new(&users.0[1], PASSWORD),
        );

        // Key a opens the whole cap, then lets both sessions go idle.
        let (a1, a2) = (pool.get(&a).await.unwrap(), pool.get(&a).await.unwrap());
        drop((a1, a2));
        assert_eq!(sessions(&mut admin, &users.0[..1]).await, CAP as i64);

        // Key b needs a session: one of a's idle sessions is closed for it.
        let mut b1 = pool.get(&b).await.expect("room made by an eviction");
        assert_eq!(current_user(&mut b1).await, format!("{}@%", users.0[1]));
        eventually!(
            "a to be down to one session",
            5 * SEC,
            sessions(&mut admin, &users.0[..1]).await == 1
        );
        assert_eq!(pool.key_state(&a).unwrap().open, 1);

        // A burst over both keys stays under the cap on the server.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (pool, key) = (pool.clone(), if i % 2 == 0 { a.clone() } else { b.clone() });
            tasks.push(tokio::spawn(async move {
                let mut conn = pool.get(&key).await.expect("served within 3 s");
                assert!(pool.state().open <= CAP, "the pool's own count");
                assert_eq!(current_user(&mut conn).await, format!("{}@%", key.user()));
            }));
        }
        drop(b1);
        for t in tasks {
            t.await.expect("every borrower was served");
        }
        let (peak, raw_peak) = sampler.peak().await;
        assert!(
            peak <= CAP as i64,
            "the server listed {peak} sessions (single-sample peak {raw_peak}); cap {CAP}"
        );

        pool.close().await;
        eventually!(
            "the pool's sessions to end",
            5 * SEC,
            sessions(&mut admin, &users.0).await == 0
        );
        users.drop_all(&mut admin).await;
    }
}
