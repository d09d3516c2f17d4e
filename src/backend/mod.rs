//! Managers for real databases, each behind its feature.

#[cfg(any(
    feature = "mysql",
    feature = "sqlx-backend",
    feature = "tokio-postgres"
))]
pub mod credentials;
#[cfg(feature = "diesel-async")]
#[cfg_attr(docsrs, doc(cfg(feature = "diesel-async")))]
pub mod diesel;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub mod mysql;
#[cfg(feature = "sqlx-backend")]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "sqlite", feature = "sqlx-mysql")))
)]
pub mod sqlx;
#[cfg(feature = "tokio-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio-postgres")))]
pub mod tokio_postgres;

/// A connection URL given to a manager's `from_url` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {database} connection URL: {reason}")]
pub struct InvalidUrl {
    /// The database the URL was meant for (`"PostgreSQL"`, `"SQLite"`, `"MySQL"`).
    pub database: &'static str,
    /// What is wrong with it (the driver's parse error, with any password removed).
    pub reason: String,
}

/// Replaces the URL's password, if `message` quotes it, with `***`.
#[cfg_attr(
    not(any(feature = "sqlx-backend", feature = "tokio-postgres")),
    allow(dead_code)
)]
pub(crate) fn redact_password(message: &str, url: &str) -> String {
    let authority = url.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    let password = authority
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map_or("", |(_, pw)| pw);
    if password.is_empty() {
        message.to_owned()
    } else {
        message.replace(password, "***")
    }
}

/// Reads `setting` in `unit` as PostgreSQL reports it in `pg_settings`
/// (time settings are integers in their base unit, `ms` for the idle
/// timeouts). `0` means disabled.
#[cfg(any(feature = "postgres", feature = "tokio-postgres"))]
pub(crate) fn pg_duration(
    setting: &str,
    unit: Option<&str>,
) -> Result<Option<std::time::Duration>, String> {
    use std::time::Duration;
    let value: u64 = setting
        .trim()
        .parse()
        .map_err(|_| format!("not a non-negative integer: {setting:?}"))?;
    if value == 0 {
        return Ok(None);
    }
    let d = match unit.unwrap_or("ms") {
        "us" => Duration::from_micros(value),
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "min" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        "d" => Duration::from_secs(value.saturating_mul(86_400)),
        other => return Err(format!("unknown time unit {other:?}")),
    };
    Ok(Some(d))
}

#[cfg(any(feature = "mysql", feature = "sqlx-backend"))]
/// `scheme://u:p@h1:3306,h2:3307/db?x` → one URL per host, the rest shared.
pub(crate) fn split_hosts(url: &str) -> Vec<String> {
    let Some((scheme, after)) = url.split_once("://") else {
        return vec![url.to_owned()];
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    if !hosts.contains(',') {
        return vec![url.to_owned()];
    }
    hosts
        .split(',')
        .map(|host| format!("{scheme}://{userinfo}{host}{rest}"))
        .collect()
}

/// The role a session must have (libpq's `target_session_attrs` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TargetRole {
    /// Any session will do.
    #[default]
    Any,
    /// A writable primary (PostgreSQL: `transaction_read_only` off;
    /// MySQL/MariaDB: `@@global.read_only`, and MySQL's
    /// `@@global.super_read_only`, off).
    ReadWrite,
    /// A read-only server (a replica).
    ReadOnly,
}

/// The search for a session of the required role across a host list:
/// what each host answered, for the error when none will do.
#[cfg(any(feature = "mysql", feature = "sqlx-backend"))]
pub(crate) struct HostSearch<E> {
    role: TargetRole,
    seen: Vec<String>,
    last: Option<E>,
    /// Some host gave a session, of the wrong role.
    refused: bool,
}

#[cfg(any(feature = "mysql", feature = "sqlx-backend"))]
impl<E: std::fmt::Display> HostSearch<E> {
    pub(crate) fn new(role: TargetRole) -> Self {
        HostSearch {
            role,
            seen: Vec::new(),
            last: None,
            refused: false,
        }
    }

    /// `host` failed (the connect or the role query).
    pub(crate) fn failed(&mut self, host: &str, error: E) {
        self.seen.push(format!("{host}: {error}"));
        self.last = Some(error);
    }

    /// Whether a session of `host`, whose server is read-only or not, has
    /// the role; noted when it has not (the caller closes it).
    pub(crate) fn accepts(&mut self, host: &str, read_only: bool) -> bool {
        if self.role.accepts(read_only) {
            return true;
        }
        self.refused = true;
        let state = if read_only { "read-only" } else { "writable" };
        self.seen.push(format!("{host} is {state}"));
        false
    }

    /// The error once every host was tried: when none was refused for its
    /// role, the last failure as the driver said it; else `other` of a
    /// sentence naming what each host is.
    pub(crate) fn finish(self, other: impl FnOnce(String) -> E) -> E {
        if let (false, Some(e)) = (self.refused, self.last) {
            return e;
        }
        let wanted = match self.role {
            TargetRole::ReadOnly => "read-only",
            _ => "writable",
        };
        other(format!("no host is {wanted}: {}", self.seen.join("; ")))
    }
}

#[cfg_attr(
    not(any(feature = "mysql", feature = "sqlx-backend")),
    allow(dead_code)
)]
impl TargetRole {
    /// libpq's spelling: `any`, `read-write`, `read-only`.
    pub(crate) fn parse(value: &str) -> Option<TargetRole> {
        Some(match value {
            "any" => TargetRole::Any,
            "read-write" => TargetRole::ReadWrite,
            "read-only" => TargetRole::ReadOnly,
            _ => return None,
        })
    }

    pub(crate) fn accepts(self, read_only: bool) -> bool {
        match self {
            TargetRole::Any => true,
            TargetRole::ReadWrite => !read_only,
            TargetRole::ReadOnly => read_only,
        }
    }
}

#[cfg(any(feature = "tokio-postgres", feature = "mysql"))]
/// `%2F` and friends, as a URL's query carries a path.
pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(any(feature = "postgres", feature = "tokio-postgres"))]
    use std::time::Duration;

    #[test]
    #[cfg(any(feature = "postgres", feature = "tokio-postgres"))]
    fn pg_durations_are_read_in_their_unit() {
        let ms = Duration::from_millis;
        assert_eq!(pg_duration("0", Some("ms")), Ok(None));
        assert_eq!(pg_duration("2000", Some("ms")), Ok(Some(ms(2000))));
        assert_eq!(pg_duration("2500", Some("ms")), Ok(Some(ms(2500))));
        assert_eq!(pg_duration("7", Some("s")), Ok(Some(ms(7000))));
        assert_eq!(pg_duration("2", Some("min")), Ok(Some(ms(120_000))));
        assert_eq!(pg_duration("1500", None), Ok(Some(ms(1500))));
        assert!(pg_duration("2s", Some("ms")).is_err());
        assert!(pg_duration("-1", Some("ms")).is_err());
        assert!(pg_duration("5", Some("8kB")).is_err());
    }

    #[test]
    fn redact_removes_the_password() {
        let url = "postgres://bob:hunter2@db:x/app";
        assert_eq!(redact_password("bad hunter2 here", url), "bad *** here");
        assert_eq!(
            redact_password("nothing", "postgres://bob@db/app"),
            "nothing"
        );
        assert_eq!(redact_password("x", "not a url"), "x");
    }
}
