//! Connection URLs for every backend, hostile ones included: parsing never
//! panics, and neither an error nor a manager's `Debug` shows the password
//! of a server URL.
//! Parsing opens nothing, so no server is needed.

use proptest::prelude::*;
use vigil::backend::mysql::MySqlManager;
use vigil::backend::sqlx::{MySqlSqlxManager, PgManager, SqliteManager};

/// A password no other part of a generated URL can contain.
const MARK: &str = "Zq7Pw";

fn part(chars: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(chars.chars().collect::<Vec<_>>()),
        0..12,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn password() -> impl Strategy<Value = String> {
    // Raw reserved characters and percent escapes (valid and not).
    part("abc@#/?%:[]!$&'()*+,;= ~é%41%zz").prop_map(|tail| format!("{MARK}{tail}"))
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("127.0.0.1".to_owned()),
        Just("[::1]".to_owned()),
        Just("[::1".to_owned()),
        Just("[fe80::1%25eth0]".to_owned()),
        Just(String::new()),
        Just("h".repeat(300)),
        part("abcxyz.-_[]:%"),
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(":".to_owned()),
        Just(":0".to_owned()),
        Just(":65535".to_owned()),
        Just(":65536".to_owned()),
        Just(":-1".to_owned()),
        Just(":99999999999999999999999".to_owned()),
        any::<u64>().prop_map(|p| format!(":{p}")),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = proptest::sample::select(vec![
        "sslmode",
        "ssl-mode",
        "require_ssl",
        "statement-cache-capacity",
        "application_name",
        "options",
        "port",
        "host",
        "dbname",
        "user",
        "password",
        "pool_min",
        "pool_max",
        "conn_ttl",
        "wait_timeout",
        "socket",
        "compression",
        "stmt_cache_size",
        "mode",
        "cache",
        "immutable",
        "tcp_keepalive",
        "max_allowed_packet",
        "prefer_socket",
    ]);
    let value = prop_oneof![
        Just(String::new()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just("bogus".to_owned()),
        Just("%".to_owned()),
        any::<u64>().prop_map(|v| v.to_string()),
    ];
    proptest::collection::vec((key, value), 0..4).prop_map(|pairs| {
        if pairs.is_empty() {
            return String::new();
        }
        let joined: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("?{}", joined.join("&"))
    })
}

prop_compose! {
    fn url()(
        scheme in proptest::sample::select(vec!["mysql", "postgres", "postgresql", "sqlite", "MySQL"]),
        user in part("rootxy_%40"),
        pw in password(),
        host in host(),
        port in port(),
        db in part("testé/?#%"),
        q in query(),
    ) -> (String, String) {
        (format!("{scheme}://{user}:{pw}@{host}{port}/{db}{q}"), pw)
    }
}

/// The password as written and as a decoder would read it.
fn secrets(pw: &str) -> Vec<String> {
    let mut out = vec![pw.to_owned()];
    let decoded: String = percent_decode(pw);
    if decoded != pw {
        out.push(decoded);
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check<T: std::fmt::Debug, E: std::fmt::Display + std::fmt::Debug>(
    backend: &str,
    url: &str,
    pw: &str,
    parsed: Result<T, E>,
) -> Result<(), TestCaseError> {
    let shown = match &parsed {
        Ok(manager) => format!("{manager:?}"),
        Err(e) => format!("{e} / {e:?}"),
    };
    for secret in secrets(pw) {
        // Only a password long enough not to turn up by chance in a host
        // or message (the mark plus at least one character).
        if secret.len() > MARK.len() {
            prop_assert!(
                !shown.contains(&secret),
                "{} {:?}: the password {:?} shows in {}",
                backend,
                url,
                secret,
                shown
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_url_panics_or_shows_its_password((url, pw) in url()) {
        check("mysql_async", &url, &pw, MySqlManager::from_url(&url))?;
        check("sqlx postgres", &url, &pw, PgManager::from_url(&url))?;
        check("sqlx mysql", &url, &pw, MySqlSqlxManager::from_url(&url))?;
        // SQLite URLs carry no credentials: `sqlite://u:p@h/` names a file
        // of that name, and showing a file name is right. It must not panic.
        let _ = format!("{:?}", SqliteManager::from_url(&url));
    }
}
