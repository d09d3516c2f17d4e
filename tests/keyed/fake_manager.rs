//! The cap and key logic with the fake manager and paused time, and
//! `Pool::close_oldest_idle`, which the cap relies on.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use vigil::keyed::KeyedPooled;
use vigil::{BuildError, Pool};

use super::*;
use crate::support::fake::{Fake, FakeError};

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
