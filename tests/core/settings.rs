//! Building a pool: invalid settings are named errors, never panics, and
//! the public types can cross threads.

use std::time::Duration;

use vigil::{BuildError, Error, Pool, Validation};

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
