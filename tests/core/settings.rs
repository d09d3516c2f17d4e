//! Building a pool: invalid settings are named errors, never panics, and
//! the public types can cross threads.

use std::time::Duration;

use proptest::prelude::*;
use vigil::{BuildError, Config, Error, Pool, Validation};

use crate::support::fake::{Fake, FakeError};

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool<Fake>>();
    assert_send_sync::<vigil::Pooled<Fake>>();
    assert_send_sync::<Error<FakeError>>();
    assert_send_sync::<vigil::State>();
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Pool::builder(Fake::new()).build().unwrap_err();
    assert!(matches!(err, BuildError::NoRuntime), "{err}");
}

#[tokio::test]
async fn invalid_settings_name_the_setting() {
    let cases: Vec<(&str, vigil::Builder<Fake>)> = vec![
        ("max_size", Pool::builder(Fake::new()).max_size(0)),
        (
            "min_idle",
            Pool::builder(Fake::new()).max_size(2).min_idle(3),
        ),
        (
            "acquire_timeout",
            Pool::builder(Fake::new()).acquire_timeout(Duration::ZERO),
        ),
        (
            "connect_timeout",
            Pool::builder(Fake::new()).connect_timeout(Duration::ZERO),
        ),
        (
            "validation_timeout",
            Pool::builder(Fake::new()).validation_timeout(Duration::ZERO),
        ),
        (
            "max_lifetime",
            Pool::builder(Fake::new()).max_lifetime(Some(Duration::ZERO)),
        ),
        (
            "idle_timeout",
            Pool::builder(Fake::new()).idle_timeout(Some(Duration::ZERO)),
        ),
        (
            "keepalive_interval",
            Pool::builder(Fake::new()).keepalive_interval(Some(Duration::ZERO)),
        ),
        (
            "validation",
            Pool::builder(Fake::new()).validation(Validation::IdleFor(Duration::ZERO)),
        ),
        (
            "max_concurrent_connects",
            Pool::builder(Fake::new()).max_concurrent_connects(0),
        ),
    ];
    for (setting, builder) in cases {
        match builder.build() {
            Err(BuildError::Config(e)) => {
                assert_eq!(e.setting, setting);
                assert!(e.to_string().contains(setting), "{e}");
            }
            other => panic!("{setting}: expected a config error, got {other:?}"),
        }
    }
}

/// Every `usize` setting the pool turns into semaphore permits or memory:
/// beyond tokio's limit it is an error naming the setting, never a panic
/// (tokio's `Semaphore::new` panics there) or an allocation of that size.
#[tokio::test]
async fn sizes_beyond_what_a_pool_can_serve_name_the_setting() {
    for huge in [usize::MAX, Config::MAX_SIZE + 1, 1 << 62] {
        let cases: Vec<(&str, vigil::Builder<Fake>)> = vec![
            ("max_size", Pool::builder(Fake::new()).max_size(huge)),
            (
                "max_concurrent_connects",
                Pool::builder(Fake::new()).max_concurrent_connects(huge),
            ),
            ("min_idle", Pool::builder(Fake::new()).min_idle(huge)),
        ];
        for (setting, builder) in cases {
            assert_config_error(builder.build(), setting);
        }
    }
}

/// The largest size is served: nothing is allocated per slot up front
/// (this test would abort allocating ~2^61 slots otherwise).
#[tokio::test(start_paused = true)]
async fn the_largest_max_size_allocates_nothing_up_front() {
    let fake = Fake::new();
    let pool = Pool::builder(fake.clone())
        .max_size(Config::MAX_SIZE)
        .max_concurrent_connects(Config::MAX_SIZE)
        .build()
        .expect("MAX_SIZE is a valid max_size");
    let conn = pool.get().await.expect("a connection");
    assert_eq!(pool.state().max_size, Config::MAX_SIZE);
    drop(conn);
    pool.close().await;
}

/// A duration that would overflow `Instant` when the pool adds it to
/// "now" is an error naming the setting, for every duration setting.
#[tokio::test]
async fn durations_beyond_instant_range_name_the_setting() {
    let too_long = [
        Duration::MAX,
        Config::MAX_DURATION + Duration::from_nanos(1),
    ];
    for d in too_long {
        let b = || Pool::builder(Fake::new());
        let cases: Vec<(&str, vigil::Builder<Fake>)> = vec![
            ("acquire_timeout", b().acquire_timeout(d)),
            ("connect_timeout", b().connect_timeout(d)),
            ("validation_timeout", b().validation_timeout(d)),
            ("max_lifetime", b().max_lifetime(Some(d))),
            ("idle_timeout", b().idle_timeout(Some(d))),
            ("keepalive_interval", b().keepalive_interval(Some(d))),
            ("validation", b().validation(Validation::IdleFor(d))),
            ("server_timeout_margin", b().server_timeout_margin(d)),
            (
                "server_idle_timeout_override",
                b().server_idle_timeout_override(Some(Some(d))),
            ),
            ("close_timeout", b().close_timeout(d)),
            ("leak_threshold", b().leak_threshold(Some(d))),
        ];
        for (setting, builder) in cases {
            let e = assert_config_error(builder.build(), setting);
            assert!(e.reason.contains("100 years"), "{e}");
        }
    }
    // The limit itself is accepted.
    let pool = Pool::builder(Fake::new())
        .acquire_timeout(Config::MAX_DURATION)
        .max_lifetime(Some(Config::MAX_DURATION))
        .build()
        .expect("MAX_DURATION is valid");
    pool.close().await;
}

#[tokio::test]
async fn keyed_pool_settings_are_bounded_too() {
    struct Tenant;
    impl vigil::keyed::PoolKey for Tenant {
        fn identify(&self, id: &mut vigil::keyed::Identity) {
            id.field(b"tenant");
        }
    }
    let keyed = || vigil::keyed::KeyedPool::builder(|_: &Tenant| Fake::new());
    assert_config_error(keyed().max_open(usize::MAX).build(), "max_open");
    assert_config_error(keyed().max_open(0).build(), "max_open");
    assert_config_error(
        keyed().key_idle_timeout(Duration::MAX).build(),
        "key_idle_timeout",
    );
    assert_config_error(keyed().max_size_per_key(usize::MAX).build(), "max_size");
    assert_config_error(
        keyed().acquire_timeout(Duration::MAX).build(),
        "acquire_timeout",
    );
}

fn assert_config_error<T: std::fmt::Debug>(
    built: Result<T, BuildError>,
    setting: &str,
) -> vigil::ConfigError {
    match built {
        Err(BuildError::Config(e)) => {
            assert_eq!(e.setting, setting, "{e}");
            assert!(e.to_string().contains(setting), "{e}");
            e
        }
        other => panic!("{setting}: expected a config error, got {other:?}"),
    }
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Config::MAX_DURATION),
        Just(Config::MAX_DURATION + Duration::from_nanos(1)),
        (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..100_000).prop_map(Duration::from_millis),
    ]
}

fn any_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(usize::MAX),
        Just(Config::MAX_SIZE),
        Just(Config::MAX_SIZE + 1),
        any::<usize>(),
        0usize..64,
    ]
}

prop_compose! {
    fn any_config()(
        max_size in any_size(),
        min_idle in any_size(),
        max_concurrent_connects in any_size(),
        max_waiters in proptest::option::of(any_size()),
        durations in proptest::collection::vec(any_duration(), 11),
        some in proptest::collection::vec(any::<bool>(), 6),
        validation in 0u8..3,
        reset_on_return in any::<bool>(),
        name in "[a-z]{0,3}",
    ) -> Config {
        let opt = |i: usize, d: Duration| some[i].then_some(d);
        let mut c = Config::default();
        c.name = name;
        c.max_size = max_size;
        c.min_idle = min_idle;
        c.max_concurrent_connects = max_concurrent_connects;
        c.max_waiters = max_waiters;
        c.acquire_timeout = durations[0];
        c.connect_timeout = durations[1];
        c.validation_timeout = durations[2];
        c.max_lifetime = opt(0, durations[3]);
        c.idle_timeout = opt(1, durations[4]);
        c.keepalive_interval = opt(2, durations[5]);
        c.validation = match validation {
            0 => Validation::Always,
            1 => Validation::Never,
            _ => Validation::IdleFor(durations[6]),
        };
        c.server_timeout_margin = durations[7];
        c.server_idle_timeout_override = some[3].then(|| opt(4, durations[8]));
        c.close_timeout = durations[9];
        c.leak_threshold = opt(5, durations[10]);
        c.reset_on_return = reset_on_return;
        c
    }
}

/// What `validate` must answer, written independently of it.
fn should_be_valid(c: &Config) -> bool {
    let size = |n: usize| (1..=Config::MAX_SIZE).contains(&n);
    let long = |d: Duration| d <= Config::MAX_DURATION;
    let pos = |d: Duration| !d.is_zero() && long(d);
    let opt = |d: Option<Duration>| d.is_none_or(pos);
    let second = |d: Option<Duration>| d.is_none_or(|d| d >= Duration::from_secs(1));
    size(c.max_size)
        && c.min_idle <= c.max_size
        && size(c.max_concurrent_connects)
        && pos(c.acquire_timeout)
        && pos(c.connect_timeout)
        && pos(c.validation_timeout)
        && opt(c.max_lifetime)
        && second(c.max_lifetime)
        && opt(c.idle_timeout)
        && opt(c.keepalive_interval)
        && second(c.keepalive_interval)
        && match c.validation {
            Validation::IdleFor(w) => pos(w),
            _ => true,
        }
        && long(c.server_timeout_margin)
        && c.server_idle_timeout_override
            .is_none_or(|d| opt(d) && second(d))
        && long(c.close_timeout)
        && opt(c.leak_threshold)
        && !c.name.is_empty()
}

/// `c` moved to the nearest valid settings, its extremes kept (but a
/// `min_idle` of at most 2, so the housekeeper's connects stay few).
fn within_limits(mut c: Config) -> Config {
    let size = |n: usize| n.clamp(1, Config::MAX_SIZE);
    let long = |d: Duration| d.min(Config::MAX_DURATION);
    let pos = |d: Duration| long(d).max(Duration::from_nanos(1));
    c.max_size = size(c.max_size);
    c.min_idle = c.min_idle.min(2).min(c.max_size);
    c.max_concurrent_connects = size(c.max_concurrent_connects);
    c.acquire_timeout = pos(c.acquire_timeout);
    c.connect_timeout = pos(c.connect_timeout);
    c.validation_timeout = pos(c.validation_timeout);
    c.max_lifetime = c.max_lifetime.map(|d| long(d).max(Duration::from_secs(1)));
    c.idle_timeout = c.idle_timeout.map(pos);
    c.keepalive_interval = c
        .keepalive_interval
        .map(|d| long(d).max(Duration::from_secs(1)));
    if let Validation::IdleFor(w) = c.validation {
        c.validation = Validation::IdleFor(pos(w));
    }
    c.server_timeout_margin = long(c.server_timeout_margin);
    c.server_idle_timeout_override = c
        .server_idle_timeout_override
        .map(|o| o.map(|d| long(d).max(Duration::from_secs(1))));
    c.close_timeout = long(c.close_timeout);
    c.leak_threshold = c.leak_threshold.map(pos);
    if c.name.is_empty() {
        c.name.push('p');
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any `Config` is accepted or refused with a named setting, exactly as
    /// the limits say; never a panic.
    #[test]
    fn any_config_is_valid_exactly_when_within_the_limits(c in any_config()) {
        let verdict = c.validate();
        prop_assert_eq!(verdict.is_ok(), should_be_valid(&c), "{:?}: {:?}", c, verdict);
        if let Err(e) = verdict {
            prop_assert!(e.to_string().contains(e.setting));
        }
    }

    /// A pool built from any valid `Config` (pool-sized `min_idle`, so the
    /// housekeeper's connects stay few) lends, takes back and closes
    /// without a panic, whatever its durations.
    #[test]
    fn any_valid_config_serves_a_checkout(c in any_config()) {
        let c = within_limits(c);
        prop_assert!(c.validate().is_ok(), "{:?}", c);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let (c_acquire, c_connect) = (c.acquire_timeout, c.connect_timeout);
        rt.block_on(async move {
            let pool = Pool::builder(Fake::new()).config(c).build().expect("valid");
            // A nanosecond's acquire or connect timeout may fail a get; a
            // second's never does with an instant fake.
            let patient = c_acquire >= Duration::from_secs(1) && c_connect >= Duration::from_secs(1);
            let got = pool.get().await;
            prop_assert!(got.is_ok() || !patient, "{:?}", got.err());
            drop(got);
            tokio::time::sleep(Duration::from_secs(120)).await;
            let again = pool.get().await;
            prop_assert!(again.is_ok() || !patient, "{:?}", again.err());
            drop(again);
            pool.close().await;
            Ok(())
        })?;
    }
}
