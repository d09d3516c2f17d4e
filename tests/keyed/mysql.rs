//! Logins on the real MariaDB: one user per key, sessions counted by user
//! in the process list.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use vigil::backend::mysql::MySqlManager;

use super::*;
use crate::support::db::{maria_admin as admin, maria_tcp};

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
        let opts = maria_tcp(3306)
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

/// The end of a test: closes `pool`, waits (at most 5 s) until the server
/// lists none of its sessions, then drops the test's users.
async fn close_and_clean_up(
    pool: &KeyedPool<Credentials, MySqlManager>,
    admin: &mut Conn,
    users: Users,
) {
    pool.close().await;
    eventually!(
        "the pool's sessions to end",
        5 * SEC,
        sessions(admin, &users.0).await == 0
    );
    users.drop_all(admin).await;
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

    close_and_clean_up(&pool, &mut admin, users).await;
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

    close_and_clean_up(&pool, &mut admin, users).await;
}
