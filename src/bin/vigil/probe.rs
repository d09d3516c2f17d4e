//! `vigil probe`: one connection (no pool), the server's idle timeouts and
//! connection limit, and pool settings that fit them, with the reasons.

use std::collections::BTreeMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use crate::backend::Target;
use crate::backend::{error_chain, tokio_pg};
use crate::between::Between;
use crate::{human_secs, Driver, Fail, ProbeArgs};

/// vigil's defaults, restated here so the advice names real numbers.
const MARGIN: f64 = 5.0;
const KEEPALIVE: f64 = 120.0;
const IDLE_TIMEOUT: f64 = 600.0;
const MAX_LIFETIME: f64 = 1800.0;
const DEFAULT_MAX_SIZE: u64 = 10;

/// Shortest idle timeout among the common NATs and load balancers
/// (Azure LB 4 min; AWS NLB 350 s): a keepalive must come before it.
const NETWORK_IDLE_DROP: f64 = 240.0;

/// MySQL `ER_UNKNOWN_SYSTEM_VARIABLE`.
const ER_UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;

/// What a probe found and advises. Field names are the JSON keys.
#[derive(Debug, Serialize)]
struct Probe {
    backend: &'static str,
    /// The driver the probe connected with: `tokio-postgres`, `sqlx` or `mysql_async`.
    driver: &'static str,
    target: String,
    /// `MariaDB`, `MySQL`, `PostgreSQL` or `SQLite`.
    server: String,
    version: String,
    max_connections: Option<u64>,
    /// Connections only superusers may use (PostgreSQL), out of `max_connections`.
    reserved_connections: u64,
    /// Each timeout setting in seconds as the server reports it for this
    /// session (0 = disabled; `null` = this server lacks the setting).
    timeouts: BTreeMap<&'static str, Value>,
    /// The idle timeout vigil will read from each pool session, in seconds.
    session_idle_timeout_seconds: Option<f64>,
    /// Whether the probe's session is encrypted, as the server reports it.
    tls: Tls,
    /// PostgreSQL: what forwards the connection, if anything (pgbouncer).
    between: Option<Between>,
    notes: Vec<String>,
    recommended: Recommended,
    reasoning: Vec<String>,
}

/// The probe session's encryption, as the server reports it, and how the
/// client checked the server's certificate (from the URL's TLS settings).
#[derive(Debug, Default, Serialize)]
struct Tls {
    encrypted: bool,
    /// `TLSv1.3` and the like.
    protocol: Option<String>,
    cipher: Option<String>,
    /// `ca and host name`, `ca only`, `not checked`, or `plain text`.
    certificate: &'static str,
}

impl Tls {
    fn plain() -> Tls {
        Tls {
            certificate: "plain text",
            ..Tls::default()
        }
    }
}

/// How libpq's `sslmode` in `url` has the server's certificate checked.
fn pg_certificate_check(url: &str) -> &'static str {
    let mode = url
        .split(['?', '&', ' '])
        .find_map(|pair| pair.strip_prefix("sslmode="))
        .and_then(vigil::backend::tokio_postgres::SslMode::parse);
    match mode {
        Some(vigil::backend::tokio_postgres::SslMode::VerifyFull) => "ca and host name",
        Some(vigil::backend::tokio_postgres::SslMode::VerifyCa) => "ca only",
        _ if url.contains("sslrootcert=") => "ca only",
        _ => "not checked",
    }
}

/// Pool settings for this server.
#[derive(Debug, Default, Serialize)]
struct Recommended {
    /// Connections all pools together should stay under.
    max_connections_budget: Option<u64>,
    max_size: u64,
    server_timeout_margin_seconds: f64,
    /// When vigil will retire an idle connection for the server's timeout.
    retires_idle_after_seconds: Option<f64>,
    keepalive_interval_seconds: f64,
    /// The idle timeout to tell vigil, when something between cuts idle
    /// connections that the server cannot report (pgbouncer's
    /// `client_idle_timeout` in transaction mode).
    server_idle_timeout_override_seconds: Option<f64>,
    idle_timeout_seconds: f64,
    max_lifetime_seconds: f64,
    validation: &'static str,
}

/// Seconds as a JSON number: an integer when whole, else a fraction.
fn seconds(value: f64) -> Value {
    if value.fract() == 0.0 && value >= 0.0 && value < u64::MAX as f64 {
        json!(value as u64)
    } else {
        json!(value)
    }
}

pub(crate) async fn run(args: ProbeArgs) -> Result<(), Fail> {
    let target = Target::from_arg(args.url.as_deref())?;
    let within = args.connect_timeout;
    let mut probe = match &target {
        Target::MySql(opts) => mysql(opts.clone(), within).await?,
        Target::Postgres(opts) => {
            let url = args.url.as_deref().unwrap_or_default();
            let facts = match args.driver {
                Driver::TokioPostgres => pg_facts_tokio_postgres(url, &target, within).await?,
                Driver::Sqlx => pg_facts_sqlx(opts, &target, within).await?,
            };
            let between = Between::look(url, opts.get_port(), facts.server_port, within).await;
            let mut probe = postgres(facts, url);
            probe.between = Some(between);
            probe
        }
        Target::Sqlite(opts) => sqlite(opts).await?,
    };
    probe.driver = match (&target, args.driver) {
        (Target::MySql(_), _) => "mysql_async",
        (Target::Postgres(_), Driver::TokioPostgres) => "tokio-postgres",
        _ => "sqlx",
    };
    probe.backend = target.kind();
    probe.target = target.describe();
    advise(&mut probe);
    if let Some(between) = &probe.between {
        let r = &mut probe.recommended;
        between.advise(
            &mut probe.notes,
            &mut probe.reasoning,
            &mut r.server_idle_timeout_override_seconds,
        );
    }
    if args.json {
        let text = serde_json::to_string_pretty(&probe)
            .map_err(|e| Fail::internal(format!("cannot encode the probe as JSON: {e}")))?;
        out!("{text}\n");
    } else {
        out!("{}", human(&probe));
    }
    Ok(())
}

fn connect_failed(kind: &str, target: &Target, e: impl std::fmt::Display) -> Fail {
    Fail::input(format!(
        "cannot connect to {kind} at {}: {e}",
        target.describe()
    ))
}

async fn mysql(opts: Opts, within: Duration) -> Result<Probe, Fail> {
    let target = Target::MySql(opts.clone());
    let mut conn = match tokio::time::timeout(within, Conn::new(opts.clone())).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(connect_failed("mysql", &target, e)),
        Err(_) => {
            return Err(connect_failed(
                "mysql",
                &target,
                format!("no answer within {within:?}"),
            ))
        }
    };
    let failed = |e: mysql_async::Error| Fail::input(format!("probe query failed: {e}"));
    type Row = (String, u64, u64, u64, u64);
    let row: Option<Row> = conn
        .query_first(
            "SELECT VERSION(), @@SESSION.wait_timeout, @@GLOBAL.wait_timeout, \
             @@SESSION.interactive_timeout, @@GLOBAL.max_connections",
        )
        .await
        .map_err(failed)?;
    let (version, wait, global_wait, interactive, max_conn) =
        row.ok_or_else(|| Fail::internal("the server answered no row for its variables"))?;
    let mariadb = version.contains("MariaDB");
    let mut timeouts = BTreeMap::from([
        ("wait_timeout", json!(wait)),
        ("global_wait_timeout", json!(global_wait)),
        ("interactive_timeout", json!(interactive)),
    ]);
    let mut notes = vec![format!(
        "pool sessions get wait_timeout ({wait} s): a pool's connections do not set \
         CLIENT_INTERACTIVE, so the server starts them with the global wait_timeout; \
         interactive_timeout ({interactive} s) applies only to interactive clients such as \
         the mysql command-line tool"
    )];
    if mariadb {
        let tx: Result<Option<(u64, u64, u64)>, _> = conn
            .query_first(
                "SELECT @@SESSION.idle_transaction_timeout, \
                 @@SESSION.idle_readonly_transaction_timeout, \
                 @@SESSION.idle_write_transaction_timeout",
            )
            .await;
        match tx {
            Ok(Some((any, ro, rw))) => {
                timeouts.insert("idle_transaction_timeout", json!(any));
                timeouts.insert("idle_readonly_transaction_timeout", json!(ro));
                timeouts.insert("idle_write_transaction_timeout", json!(rw));
                notes.push(format!(
                    "idle_transaction_timeout = {any} s (0 = none): the server ends a session \
                     idle inside a transaction; vigil rolls back open transactions on return, \
                     so this only bounds how long a borrower may sit in one"
                ));
            }
            Ok(None) => {}
            Err(mysql_async::Error::Server(e)) if e.code == ER_UNKNOWN_SYSTEM_VARIABLE => {
                timeouts.insert("idle_transaction_timeout", Value::Null);
            }
            Err(e) => return Err(failed(e)),
        }
    }
    let ssl: Vec<(String, String)> = conn
        .query("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
        .await
        .map_err(failed)?;
    let _ = conn.disconnect().await;
    let status = |name: &str| {
        ssl.iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let tls = match status("Ssl_cipher") {
        Some(cipher) => Tls {
            encrypted: true,
            protocol: status("Ssl_version"),
            cipher: Some(cipher),
            certificate: match opts.ssl_opts() {
                Some(o) if o.accept_invalid_certs() => "not checked",
                Some(o) if o.skip_domain_validation() => "ca only",
                _ => "ca and host name",
            },
        },
        None => Tls::plain(),
    };
    Ok(Probe {
        tls,
        server: if mariadb { "MariaDB" } else { "MySQL" }.to_owned(),
        version,
        max_connections: Some(max_conn),
        timeouts,
        session_idle_timeout_seconds: (wait > 0).then_some(wait as f64),
        notes,
        ..Probe::empty()
    })
}

/// PostgreSQL time settings in seconds, from `pg_settings`' value and unit.
fn pg_seconds(setting: &str, unit: Option<&str>) -> Option<f64> {
    let value: f64 = setting.trim().parse().ok()?;
    let scale = match unit.unwrap_or("s") {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return None,
    };
    Some(value * scale)
}

/// What the PostgreSQL probe reads, through either driver: the version and
/// `pg_settings`' name, setting and unit for [`PG_SETTINGS`].
struct PgFacts {
    version: String,
    settings: Vec<(String, String, Option<String>)>,
    /// `pg_stat_ssl` for the probe's own session: ssl, version, cipher.
    ssl: (bool, Option<String>, Option<String>),
    /// `inet_server_port()`: NULL when the session came over a Unix socket.
    server_port: Option<u16>,
}

/// The probe session's row of `pg_stat_ssl`.
const PG_SSL: &str =
    "SELECT ssl::text, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// `pg_settings` has no row for a setting the server lacks (say
/// idle_session_timeout before v14); such keys are reported as null.
const PG_SETTINGS: &str = "SELECT name, setting, unit FROM pg_settings WHERE name IN \
     ('idle_session_timeout', 'idle_in_transaction_session_timeout', 'tcp_keepalives_idle', \
      'max_connections', 'superuser_reserved_connections')";

fn no_answer(target: &Target, within: Duration) -> Fail {
    connect_failed("postgres", target, format!("no answer within {within:?}"))
}

async fn pg_facts_sqlx(
    opts: &PgConnectOptions,
    target: &Target,
    within: Duration,
) -> Result<PgFacts, Fail> {
    let opts = opts.clone().application_name("vigil-probe");
    let mut conn = match tokio::time::timeout(within, opts.connect()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(connect_failed("postgres", target, e)),
        Err(_) => return Err(no_answer(target, within)),
    };
    let failed = |e: sqlx::Error| Fail::input(format!("probe query failed: {e}"));
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(&mut conn)
        .await
        .map_err(failed)?;
    let rows = sqlx::query(PG_SETTINGS)
        .fetch_all(&mut conn)
        .await
        .map_err(failed)?;
    let ssl: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(PG_SSL)
        .fetch_optional(&mut conn)
        .await
        .map_err(failed)?;
    let server_port: Option<String> = sqlx::query_scalar("SELECT inet_server_port()::text")
        .fetch_one(&mut conn)
        .await
        .map_err(failed)?;
    let _ = conn.close().await;
    let ssl = ssl.map_or((false, None, None), |(on, v, c)| (on == "true", v, c));
    let mut settings = Vec::with_capacity(rows.len());
    for row in rows {
        settings.push((
            row.try_get(0).map_err(failed)?,
            row.try_get(1).map_err(failed)?,
            row.try_get(2).map_err(failed)?,
        ));
    }
    Ok(PgFacts {
        version,
        settings,
        ssl,
        server_port: server_port.and_then(|p| p.parse().ok()),
    })
}

async fn pg_facts_tokio_postgres(
    url: &str,
    target: &Target,
    within: Duration,
) -> Result<PgFacts, Fail> {
    use vigil::Manager;
    let manager = tokio_pg(url, "vigil-probe", None)?;
    let conn = match tokio::time::timeout(within, manager.connect()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(connect_failed("postgres", target, error_chain(&e))),
        Err(_) => return Err(no_answer(target, within)),
    };
    let failed =
        |e: tokio_postgres::Error| Fail::input(format!("probe query failed: {}", error_chain(&e)));
    // Simple protocol, the statements in one round trip.
    let messages = conn
        .simple_query(&format!(
            "SELECT current_setting('server_version'), inet_server_port()::text; {PG_SETTINGS}"
        ))
        .await
        .map_err(failed)?;
    let ssl = conn.simple_query(PG_SSL).await.map_err(failed)?;
    manager.close(conn).await;
    let ssl = ssl
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                row.get(0) == Some("true"),
                row.get(1).map(str::to_owned),
                row.get(2).map(str::to_owned),
            )),
            _ => None,
        })
        .unwrap_or((false, None, None));
    let mut rows = messages.iter().filter_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let first = rows
        .next()
        .ok_or_else(|| Fail::internal("the server answered no row for its version"))?;
    let version = first
        .get(0)
        .ok_or_else(|| Fail::internal("the server answered no version"))?
        .to_owned();
    let server_port = first.get(1).and_then(|p| p.parse().ok());
    let settings = rows
        .filter_map(|row| {
            let name = row.get(0)?.to_owned();
            let setting = row.get(1)?.to_owned();
            Some((name, setting, row.get(2).map(str::to_owned)))
        })
        .collect();
    Ok(PgFacts {
        version,
        settings,
        ssl,
        server_port,
    })
}

fn postgres(facts: PgFacts, url: &str) -> Probe {
    let PgFacts {
        version,
        settings,
        ssl,
        server_port: _,
    } = facts;
    let tls = match ssl {
        (true, protocol, cipher) => Tls {
            encrypted: true,
            protocol,
            cipher,
            certificate: pg_certificate_check(url),
        },
        _ => Tls::plain(),
    };
    let mut timeouts = BTreeMap::from([
        ("idle_session_timeout", Value::Null),
        ("idle_in_transaction_session_timeout", Value::Null),
        ("tcp_keepalives_idle", Value::Null),
    ]);
    let (mut max_conn, mut reserved) = (None, 0_u64);
    for (name, setting, unit) in settings {
        match name.as_str() {
            "max_connections" => max_conn = setting.parse().ok(),
            "superuser_reserved_connections" => reserved = setting.parse().unwrap_or(0),
            _ => {
                if let Some(key) = timeouts.keys().find(|k| **k == name).copied() {
                    let value = pg_seconds(&setting, unit.as_deref()).map_or(Value::Null, seconds);
                    timeouts.insert(key, value);
                }
            }
        }
    }
    let idle = timeouts["idle_session_timeout"]
        .as_f64()
        .filter(|s| *s > 0.0);
    let mut notes = vec![
        "idle_session_timeout (0 = none) is what ends an idle pool session on the server; \
         vigil reads it from every new session"
            .to_owned(),
        "idle_in_transaction_session_timeout ends a session idle inside a transaction; vigil \
         rolls back open transactions on return, so it only bounds a borrower's transaction"
            .to_owned(),
    ];
    if let Some(keep) = timeouts["tcp_keepalives_idle"].as_f64() {
        notes.push(format!(
            "tcp_keepalives_idle = {keep} s: the server's TCP keepalive (0 = the OS default, \
             7200 s on Linux). Longer than a NAT/LB idle drop, it does not keep the path open; \
             vigil's keepalive_interval does"
        ));
    }
    Probe {
        server: "PostgreSQL".to_owned(),
        version,
        max_connections: max_conn,
        reserved_connections: reserved,
        timeouts,
        session_idle_timeout_seconds: idle,
        notes,
        tls,
        ..Probe::empty()
    }
}

async fn sqlite(opts: &SqliteConnectOptions) -> Result<Probe, Fail> {
    let mut conn = opts
        .connect()
        .await
        .map_err(|e| Fail::input(format!("cannot open SQLite database: {e}")))?;
    let version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| Fail::input(format!("probe query failed: {e}")))?;
    let _ = conn.close().await;
    Ok(Probe {
        server: "SQLite".to_owned(),
        version,
        notes: vec![
            "an embedded database: no server, no idle timeouts, no connection limit".to_owned(),
        ],
        ..Probe::empty()
    })
}

impl Probe {
    fn empty() -> Probe {
        Probe {
            backend: "",
            driver: "",
            target: String::new(),
            server: String::new(),
            version: String::new(),
            max_connections: None,
            reserved_connections: 0,
            timeouts: BTreeMap::new(),
            session_idle_timeout_seconds: None,
            tls: Tls::plain(),
            between: None,
            notes: Vec::new(),
            recommended: Recommended::default(),
            reasoning: Vec::new(),
        }
    }
}

/// Fills `recommended` and `reasoning` from what was found: timeouts and
/// keepalive here, the pool's size in [`advise_size`].
fn advise(p: &mut Probe) {
    let r = &mut p.recommended;
    let why = &mut p.reasoning;
    r.validation = "IdleFor(500ms)";
    r.idle_timeout_seconds = IDLE_TIMEOUT;
    r.max_lifetime_seconds = MAX_LIFETIME;
    r.keepalive_interval_seconds = KEEPALIVE;
    r.server_timeout_margin_seconds = MARGIN;
    match p.session_idle_timeout_seconds {
        Some(t) => {
            let margin = MARGIN.min(t / 2.0);
            r.server_timeout_margin_seconds = margin;
            r.retires_idle_after_seconds = Some(t - margin);
            why.push(format!(
                "the server ends sessions idle for {}; vigil reads that from every new session \
                 and retires an idle connection at timeout - margin = {} (margin = \
                 min(server_timeout_margin, timeout / 2) = {}), so keep discovery on \
                 (no server_idle_timeout_override)",
                human_secs(t),
                human_secs(t - margin),
                human_secs(margin)
            ));
            if KEEPALIVE < t - margin {
                why.push(format!(
                    "a keepalive ping every {} resets the server's idle clock before it \
                     fires, so idle connections live until idle_timeout ({}) rather than \
                     being retired for the server's timeout",
                    human_secs(KEEPALIVE),
                    human_secs(IDLE_TIMEOUT)
                ));
            }
        }
        None if p.backend == "sqlite" => why.push(
            "SQLite has no server: the server-timeout rule and keepalives never fire; \
             SQLite runs one writer at a time, so a large max_size only adds waiting on writes"
                .to_owned(),
        ),
        None => why.push(
            "the server never ends idle sessions itself; what kills them is the network \
             (NAT, firewall and load-balancer idle drops), which only traffic prevents"
                .to_owned(),
        ),
    }
    if p.backend != "sqlite" {
        why.push(format!(
            "keepalive_interval = {} (keep it at or under 200 s): a NAT or load balancer \
             drops silent connections after {} or more (Azure LB 4 min, AWS NLB 350 s), \
             and does so without telling either end",
            human_secs(KEEPALIVE),
            human_secs(NETWORK_IDLE_DROP)
        ));
        why.push(format!(
            "max_lifetime = {}: rotates sessions so server-side memory and a failover's \
             stale routes do not live forever; keep it under any proxy's own connection age limit",
            human_secs(MAX_LIFETIME)
        ));
    }
    advise_size(p);
}

/// `max_size` against the server's connection limit.
fn advise_size(p: &mut Probe) {
    let (r, why) = (&mut p.recommended, &mut p.reasoning);
    r.max_size = DEFAULT_MAX_SIZE;
    if let Some(max) = p.max_connections {
        // Headroom for admin sessions, migrations and deploys that briefly
        // run old and new instances side by side.
        let budget = max.saturating_sub(p.reserved_connections) * 8 / 10;
        r.max_connections_budget = Some(budget);
        r.max_size = DEFAULT_MAX_SIZE.min(budget.max(1));
        let reserved = match p.reserved_connections {
            0 => String::new(),
            n => format!(" ({n} reserved for superusers)"),
        };
        why.push(format!(
            "max_connections = {max}{reserved}: keep max_size x app instances (x2 during a \
             rolling deploy) under {budget} (80 %), e.g. max_size {} for up to {} instances; \
             more connections than a few per database core rarely adds throughput",
            r.max_size,
            (budget / (2 * r.max_size.max(1))).max(1)
        ));
    }
}

/// The probe for people.
fn human(p: &Probe) -> String {
    let mut out = format!(
        "{} {} at {} ({}, {})\n",
        p.server, p.version, p.target, p.backend, p.driver
    );
    let t = &p.tls;
    let tls = if t.encrypted {
        format!(
            "{} {} (certificate: {})",
            t.protocol.as_deref().unwrap_or("TLS"),
            t.cipher.as_deref().unwrap_or(""),
            t.certificate
        )
    } else {
        "no: plain text".to_owned()
    };
    out += &format!("  {:<36} {tls}\n", "encrypted");
    if let Some(max) = p.max_connections {
        out += &format!("  {:<36} {max}\n", "max_connections");
    }
    for (name, value) in &p.timeouts {
        let shown = match value.as_f64() {
            Some(0.0) => "0 (disabled)".to_owned(),
            Some(s) if s >= 7200.0 => format!("{value} s ({:.1} h)", s / 3600.0),
            Some(s) if s >= 120.0 => format!("{value} s ({:.1} min)", s / 60.0),
            Some(_) => format!("{value} s"),
            None => "not supported by this server".to_owned(),
        };
        out += &format!("  {name:<36} {shown}\n");
    }
    out += "\nnotes\n";
    for note in &p.notes {
        out += &format!("  - {note}\n");
    }
    let r = &p.recommended;
    out += "\nrecommended pool settings\n";
    out += &format!("  max_size                       {}\n", r.max_size);
    if let Some(t) = r.retires_idle_after_seconds {
        out += &format!(
            "  server_timeout_margin          {} (idle connections retired after {})\n",
            human_secs(r.server_timeout_margin_seconds),
            human_secs(t)
        );
    }
    out += &format!(
        "  keepalive_interval             {}\n",
        human_secs(r.keepalive_interval_seconds)
    );
    if let Some(t) = r.server_idle_timeout_override_seconds {
        out += &format!("  server_idle_timeout_override   {}\n", human_secs(t));
    }
    out += &format!(
        "  idle_timeout                   {}\n",
        human_secs(r.idle_timeout_seconds)
    );
    out += &format!(
        "  max_lifetime                   {}\n",
        human_secs(r.max_lifetime_seconds)
    );
    out += &format!("  validation                     {}\n", r.validation);
    if !p.reasoning.is_empty() {
        out += "\nwhy\n";
    }
    for reason in &p.reasoning {
        out += &format!("  - {reason}\n");
    }
    out
}
