//! The liveness policy is one pure function; these tables and properties pin it.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use vigil::liveness::{
    assess, at_checkout, may_retire_at_return, Checkout, Facts, Policy, Verdict,
};
use vigil::{Reason, Validation};

const S: fn(u64) -> Duration = Duration::from_secs;

fn policy() -> Policy {
    Policy {
        idle_timeout: Some(S(600)),
        server_timeout_margin: S(5),
        keepalive_interval: Some(S(120)),
        validation: Validation::IdleFor(Duration::from_millis(500)),
    }
}

/// Facts for a connection created at `t0`, last seen by the server `io`
/// seconds later and last borrowed `borrowed` seconds later.
fn facts(t0: Instant, io: u64, borrowed: u64) -> Facts {
    Facts {
        created: t0,
        lifetime: Some(S(1800)),
        last_io: t0 + S(io),
        last_borrowed: t0 + S(borrowed),
        broken: false,
        server_idle_timeout: Some(S(28_800)),
        may_shrink: true,
        stale: false,
    }
}

#[test]
fn verdict_table() {
    let t0 = Instant::now();
    let p = policy();
    let short_server = |f: Facts| Facts {
        server_idle_timeout: Some(S(60)),
        ..f
    };
    #[rustfmt::skip]
    let table: Vec<(&str, Facts, u64, Verdict)> = vec![
        ("fresh",                               facts(t0, 0, 0), 1, Verdict::Keep),
        ("broken beats everything",             Facts { broken: true, ..facts(t0, 0, 0) }, 0, Verdict::Retire(Reason::Broken)),
        ("made before retire_all",              Facts { stale: true, ..facts(t0, 0, 0) }, 1, Verdict::Retire(Reason::Closed)),
        ("lifetime reached",                    facts(t0, 1799, 1799), 1800, Verdict::Retire(Reason::MaxLifetime)),
        ("lifetime beats idle rules",           short_server(facts(t0, 0, 0)), 1800, Verdict::Retire(Reason::MaxLifetime)),
        ("no lifetime: kept",                   Facts { lifetime: None, ..facts(t0, 3000, 3000) }, 3001, Verdict::Keep),
        ("server deadline = 60 - 5",            short_server(facts(t0, 0, 0)), 54, Verdict::Keep),
        ("server deadline reached",             short_server(facts(t0, 0, 0)), 55, Verdict::Retire(Reason::ServerTimeout)),
        ("server timer runs from last io",      short_server(facts(t0, 30, 0)), 84, Verdict::Keep),
        ("idle timeout from last borrow",       Facts { lifetime: None, ..facts(t0, 0, 0) }, 600, Verdict::Retire(Reason::IdleTimeout)),
        ("idle timeout but at min_idle",        Facts { lifetime: None, may_shrink: false, ..facts(t0, 0, 0) }, 600, Verdict::Keep),
        ("server first when it fired first",    Facts { lifetime: None, ..short_server(facts(t0, 0, 0)) }, 700, Verdict::Retire(Reason::ServerTimeout)),
        ("idle first when it fired first",      Facts { lifetime: None, ..short_server(facts(t0, 590, 0)) }, 646, Verdict::Retire(Reason::IdleTimeout)),
        ("no server timeout: never server",     Facts { server_idle_timeout: None, lifetime: None, may_shrink: false, ..facts(t0, 0, 0) }, 100_000, Verdict::Keep),
    ];
    for (name, f, at, want) in table {
        assert_eq!(assess(&f, &p, t0 + S(at)), want, "{name}");
    }
}

#[test]
fn margin_is_capped_at_half_a_short_server_timeout() {
    let p = policy();
    assert_eq!(p.server_deadline(S(28_800)), S(28_795));
    assert_eq!(p.server_deadline(S(2)), S(1), "5 s margin on a 2 s timeout");
    assert_eq!(p.server_deadline(S(10)), S(5));
}

#[test]
fn ping_is_skipped_inside_the_bypass_window_only() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let p = policy();
    assert!(!p.needs_ping(t0, t0 + ms(500)));
    assert!(p.needs_ping(t0, t0 + ms(501)));
    let always = Policy {
        validation: Validation::Always,
        ..p
    };
    assert!(always.needs_ping(t0, t0));
    let never = Policy {
        validation: Validation::Never,
        ..p
    };
    assert!(!never.needs_ping(t0, t0 + S(86_400)));
}

#[test]
fn checkout_table() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let p = policy();
    let idle = |io_ms: u64| Facts {
        last_io: t0 + ms(io_ms),
        may_shrink: false,
        ..facts(t0, 0, 0)
    };
    let at = |f: Facts, suspect: Option<u64>, now_ms: u64| {
        at_checkout(&f, &p, suspect.map(|s| t0 + ms(s)), t0 + ms(now_ms))
    };
    #[rustfmt::skip]
    let table: Vec<(&str, Checkout, Checkout)> = vec![
        ("heard from 500 ms ago: inside the window",   at(idle(1_000), None, 1_500), Checkout::Lend),
        ("501 ms: past the window",                    at(idle(1_000), None, 1_501), Checkout::Ping),
        ("trouble after its last io: ping",            at(idle(1_000), Some(1_200), 1_300), Checkout::Ping),
        ("trouble before its last io: lend",           at(idle(1_000), Some(900), 1_300), Checkout::Lend),
        ("broken: retire, not ping",                   at(Facts { broken: true, ..idle(1_000) }, None, 1_001), Checkout::Retire(Reason::Broken)),
        ("past the lifetime inside the window",        at(idle(1_799_900), None, 1_800_000), Checkout::Retire(Reason::MaxLifetime)),
        ("stale inside the window",                    at(Facts { stale: true, ..idle(1_000) }, None, 1_001), Checkout::Retire(Reason::Closed)),
    ];
    for (name, got, want) in table {
        assert_eq!(got, want, "{name}");
    }
    let always = Policy {
        validation: Validation::Always,
        ..p
    };
    assert_eq!(at_checkout(&idle(0), &always, None, t0), Checkout::Ping);
    let never = Policy {
        validation: Validation::Never,
        ..p
    };
    assert_eq!(
        at_checkout(&idle(0), &never, None, t0 + S(1_000)),
        Checkout::Lend
    );
    assert_eq!(
        at_checkout(&idle(0), &never, Some(t0 + ms(1)), t0 + ms(2)),
        Checkout::Ping,
        "trouble makes even `Never` ping: the pool has seen sessions die"
    );
}

fn arb_facts(t0: Instant) -> impl Strategy<Value = (Facts, Policy, u64)> {
    (
        (0u64..5_000, 0u64..5_000, 0u64..5_000),
        proptest::option::of(1u64..5_000),
        proptest::option::of(1u64..5_000),
        proptest::option::of(1u64..5_000),
        0u64..100,
        any::<(bool, bool)>(),
        0u64..20_000,
    )
        .prop_map(
            move |((io, borrowed, _), life, server, idle, margin, (broken, shrink), at)| {
                let f = Facts {
                    created: t0,
                    lifetime: life.map(S),
                    last_io: t0 + S(io),
                    last_borrowed: t0 + S(borrowed.min(io)),
                    broken,
                    server_idle_timeout: server.map(S),
                    may_shrink: shrink,
                    stale: false,
                };
                let p = Policy {
                    idle_timeout: idle.map(S),
                    server_timeout_margin: S(margin),
                    keepalive_interval: None,
                    validation: Validation::default(),
                };
                (f, p, io + at)
            },
        )
}

proptest! {
    /// The promise itself: a connection the policy keeps has been idle for
    /// less than the server's timeout, with at least half of it to spare
    /// or the full margin.
    #[test]
    fn kept_connection_is_never_past_the_server_deadline((f, p, at) in arb_facts(Instant::now())) {
        let now = f.created + S(at);
        if assess(&f, &p, now) == Verdict::Keep {
            prop_assert!(!f.broken);
            if let Some(t) = f.server_idle_timeout {
                let idle = now - f.last_io;
                prop_assert!(idle < t, "idle {idle:?} >= server timeout {t:?}");
                prop_assert!(idle < t - p.server_timeout_margin.min(t / 2));
            }
            if let Some(l) = f.lifetime {
                prop_assert!(now - f.created < l);
            }
        }
    }

    #[test]
    fn idle_timeout_never_retires_below_min_idle((f, p, at) in arb_facts(Instant::now())) {
        let f = Facts { may_shrink: false, ..f };
        prop_assert_ne!(assess(&f, &p, f.created + S(at)), Verdict::Retire(Reason::IdleTimeout));
    }

    /// The housekeeper sleeps until `next_deadline`: the verdict must not
    /// change before it, or an obsolete connection would sit unnoticed.
    #[test]
    fn verdict_does_not_change_before_next_deadline((f, p, at) in arb_facts(Instant::now())) {
        let f = Facts { broken: false, ..f };
        let now = f.last_io + S(at % 100);
        if assess(&f, &p, now) == Verdict::Keep {
            if let Some(d) = p.next_deadline(&f) {
                prop_assert!(d > now);
                let just_before = d - Duration::from_millis(1);
                prop_assert_eq!(assess(&f, &p, just_before), Verdict::Keep);
                prop_assert_ne!(assess(&f, &p, d), Verdict::Keep);
            } else {
                prop_assert_eq!(assess(&f, &p, now + S(1_000_000)), Verdict::Keep);
            }
        }
    }
}

fn arb_validation() -> impl Strategy<Value = Validation> {
    prop_oneof![
        Just(Validation::Always),
        Just(Validation::Never),
        (0u64..3_000).prop_map(|ms| Validation::IdleFor(Duration::from_millis(ms))),
    ]
}

proptest! {
    /// The fast path's one comparison is the checkout decision itself: a
    /// connection that is not broken, not stale and not suspect is lent
    /// without a ping exactly before `lend_before`.
    #[test]
    fn lend_before_is_at_checkout_precomputed(
        (f, p, at) in arb_facts(Instant::now()),
        validation in arb_validation(),
        step_ms in 0u64..5_000,
    ) {
        let f = Facts { broken: false, stale: false, may_shrink: false, ..f };
        let p = Policy { validation, ..p };
        let bound = p.lend_before(&f);
        // Around the bound, where an off-by-one would show, and elsewhere.
        let mut probes = vec![f.last_io + S(at % 100) + Duration::from_millis(step_ms)];
        if let Some(b) = bound {
            probes.extend([b, b - Duration::from_nanos(1), b + Duration::from_nanos(1)]);
        }
        for now in probes.into_iter().filter(|n| *n >= f.last_io) {
            let lend = at_checkout(&f, &p, None, now) == Checkout::Lend;
            prop_assert_eq!(bound.is_none_or(|b| now < b), lend, "now = last_io + {:?}", now - f.last_io);
        }
    }

    /// A checkout never lends what the policy would retire.
    #[test]
    fn checkout_lends_only_what_assess_keeps(
        (f, p, at) in arb_facts(Instant::now()),
        validation in arb_validation(),
    ) {
        let f = Facts { may_shrink: false, ..f };
        let p = Policy { validation, ..p };
        let now = f.created + S(at);
        match (at_checkout(&f, &p, None, now), assess(&f, &p, now)) {
            (Checkout::Retire(a), Verdict::Retire(b)) => prop_assert_eq!(a, b),
            (Checkout::Retire(_), Verdict::Keep) => prop_assert!(false, "retired what assess keeps"),
            (_, Verdict::Retire(_)) => prop_assert!(false, "lent or pinged what assess retires"),
            _ => {}
        }
    }
}

proptest! {
    /// The return path's shortcut never keeps what `assess` would retire.
    #[test]
    fn the_return_shortcut_never_keeps_what_assess_retires(
        (f, p, at) in arb_facts(Instant::now()),
        stale in any::<bool>(),
        zero_server in any::<bool>(),
    ) {
        let now = f.created + S(at);
        let f = Facts {
            last_io: now,
            last_borrowed: now,
            may_shrink: false,
            stale,
            server_idle_timeout: if zero_server { Some(Duration::ZERO) } else { f.server_idle_timeout },
            ..f
        };
        let expires = f.lifetime.and_then(|l| f.created.checked_add(l));
        if !may_retire_at_return(f.broken, f.stale, expires, f.server_idle_timeout, now) {
            prop_assert_eq!(assess(&f, &p, now), Verdict::Keep);
        }
    }
}
