//! `vigil`: drive a vigil pool against a real database (`vigil load`), or
//! read a server's idle timeouts and get pool settings for it (`vigil probe`).
//!
//! Exit codes: 0 success; 1 some request failed (`load` without
//! `--allow-errors`) or an internal failure; 2 bad input: an unparsable URL
//! or flag, an unreachable server, refused credentials, a query the server
//! rejects. Errors are one line on stderr and never contain the URL's password.

#![forbid(unsafe_code)]

/// `eprintln!` that never panics: a closed stderr (`2>&-`, a reader that
/// went away) must not turn a message into a crash.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `print!` that never panics, for the same reason (`vigil load | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod backend;
mod between;
mod html;
mod kill;
mod live;
mod load;
mod probe;
mod progress;
mod report;
mod sampler;
mod timeline;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Load-test a vigil pool against a database, or probe a server's idle timeouts.
///
/// The database URL comes from --url, else from the DATABASE_URL environment
/// variable (which keeps the password out of `ps`), else an in-memory SQLite
/// database is used. Logs go to stderr: RUST_LOG (e.g. `vigil=debug`) or
/// -v / -vv choose what is shown; the default is warnings.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, long_about)]
struct Cli {
    /// More log output on stderr: -v shows vigil's debug events (connects,
    /// retirements with their reason), -vv adds trace events of every crate.
    /// RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a fleet of workers through one pool and report throughput,
    /// latency, errors and why connections were closed.
    Load(Box<LoadArgs>),
    /// Connect once and report the server's version, idle timeouts and
    /// max_connections, with recommended pool settings.
    Probe(ProbeArgs),
    /// Render a saved `vigil load --json` report as a self-contained HTML
    /// page: the same page `vigil load --report` writes.
    Report(ReportArgs),
}

/// Flags of `vigil report`.
#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// A JSON report written by `vigil load --json`.
    pub(crate) json: std::path::PathBuf,
    /// Where to write the HTML page.
    #[arg(long)]
    pub(crate) html: std::path::PathBuf,
}

/// Flags of `vigil load`.
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// Database URL: mysql:// or mariadb:// (mysql_async), postgres:// or
    /// postgresql:// (sqlx), sqlite: (sqlx). Without --url, DATABASE_URL is
    /// read; without either, an in-memory SQLite database (no server) is used.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) url: Option<String>,
    /// The driver for postgres:// URLs: `tokio-postgres` (the default: it
    /// sees a dead session without a round trip) or `sqlx` (pings every
    /// returned connection, since sqlx cannot tell).
    #[arg(long, value_enum, default_value_t = Driver::TokioPostgres)]
    pub(crate) driver: Driver,
    /// Worker tasks sharing the pool, each looping get → query → return
    /// (at most 10000; never more than the requests to run).
    #[arg(long, default_value_t = 16, value_parser = concurrency, allow_hyphen_values = true)]
    pub(crate) concurrency: usize,
    /// The pool's max_size.
    #[arg(long, default_value_t = 8, value_parser = pool_size, allow_hyphen_values = true)]
    pub(crate) pool_size: usize,
    /// Run for this long in all (split evenly across bursts), e.g. 30s, 500ms, 2m.
    /// The default when --requests is not given is 30s.
    #[arg(long, value_parser = positive_duration, conflicts_with = "requests", allow_hyphen_values = true)]
    pub(crate) duration: Option<Duration>,
    /// Run this many requests in all (split evenly across bursts).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub(crate) requests: Option<u64>,
    /// The statement each request runs (prepared once per connection).
    #[arg(long, default_value = "SELECT 1")]
    pub(crate) query: String,
    /// Split the run into this many bursts separated by --idle-gap, so the
    /// pool's connections sit idle between them (server idle timeouts, kills).
    /// At most 10000.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000), allow_hyphen_values = true)]
    pub(crate) bursts: u32,
    /// Idle time between bursts.
    #[arg(long, default_value = "3s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub(crate) idle_gap: Duration,
    /// Every this long, a separate admin connection kills this run's pool
    /// connections that have been idle on the server for more than 1 s
    /// (MySQL/MariaDB `KILL`, PostgreSQL `pg_terminate_backend`).
    #[arg(long, value_parser = positive_duration, allow_hyphen_values = true)]
    pub(crate) kill_idle_every: Option<Duration>,
    /// Serve /metrics and /status for the pool (named `load`) while running.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:9898")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
    /// Write a self-contained HTML report (charts over time, the summary) to this file.
    #[arg(long)]
    pub(crate) report: Option<std::path::PathBuf>,
    /// The timeline's interval: one sample of requests, errors, latency and
    /// the pool per interval (in --json and --report).
    #[arg(long, default_value = "1s", value_parser = positive_duration, allow_hyphen_values = true)]
    pub(crate) sample_every: Duration,
    /// Exit 0 even when requests failed.
    #[arg(long)]
    pub(crate) allow_errors: bool,
    /// Set the server's idle timeout for this run's sessions only: MySQL
    /// `SET SESSION wait_timeout` (whole seconds), PostgreSQL
    /// `idle_session_timeout`. Global server settings are not touched.
    #[arg(long, value_parser = positive_duration, allow_hyphen_values = true)]
    pub(crate) session_idle_timeout: Option<Duration>,
    /// The pool's acquire_timeout: also how long the first connect may take
    /// before the run gives up. The default, 15 s, is three validation
    /// timeouts: a caller whose checkout ping meets a black-holed connection
    /// still has time to open a new one.
    #[arg(long, default_value = "15s", value_parser = positive_duration, allow_hyphen_values = true)]
    pub(crate) acquire_timeout: Duration,
    #[command(flatten)]
    pub(crate) liveness: LivenessArgs,
}

/// The pool settings that decide liveness, with the library's names and defaults.
#[derive(Debug, Clone, Args)]
pub(crate) struct LivenessArgs {
    /// Bound on every round trip the pool makes on its own (validation,
    /// keepalive, reset, polite close); timeout discovery on a new
    /// connection is inside the connect.
    #[arg(long, default_value = "5s", value_parser = positive_duration, allow_hyphen_values = true)]
    pub(crate) validation_timeout: Duration,
    /// When a checkout pings: `always`, `never`, or a window such as `500ms`
    /// (ping only connections silent for longer).
    #[arg(long, default_value = "500ms", value_parser = parse_validation, allow_hyphen_values = true)]
    pub(crate) validation: vigil::Validation,
    /// Ping idle connections silent this long (`off` to disable; at least 1s).
    #[arg(long, default_value = "120s", value_parser = optional_duration, allow_hyphen_values = true)]
    pub(crate) keepalive_interval: OrOff,
    /// Retire connections this old, minus up to 2.5 % jitter (`off` keeps
    /// them forever; at least 1s).
    #[arg(long, default_value = "30m", value_parser = optional_duration, allow_hyphen_values = true)]
    pub(crate) max_lifetime: OrOff,
    /// Retire connections nobody borrowed for this long (`off` never shrinks).
    #[arg(long, default_value = "10m", value_parser = optional_duration, allow_hyphen_values = true)]
    pub(crate) idle_timeout: OrOff,
    /// Reset session state on every return (MySQL COM_RESET_CONNECTION,
    /// PostgreSQL DISCARD ALL): a round trip per request.
    #[arg(long)]
    pub(crate) reset_on_return: bool,
}

/// Which PostgreSQL driver `vigil load` and `vigil probe` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Driver {
    /// `vigil::backend::tokio_postgres::TokioPgManager`.
    TokioPostgres,
    /// `vigil::backend::sqlx::PgManager`.
    Sqlx,
}

/// Flags of `vigil probe`.
#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// Database URL (as for `vigil load`). Without --url, DATABASE_URL is
    /// read; without either, an in-memory SQLite database is used.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) url: Option<String>,
    /// The driver for postgres:// URLs, as for `vigil load`: `tokio-postgres`
    /// (the default) or `sqlx`.
    #[arg(long, value_enum, default_value_t = Driver::TokioPostgres)]
    pub(crate) driver: Driver,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// How long the connect may take.
    #[arg(long, default_value = "5s", value_parser = positive_duration, allow_hyphen_values = true)]
    pub(crate) connect_timeout: Duration,
}

/// A failure that ends the program: the exit code and a message for stderr.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Fail {
    /// Bad input (exit code 2): URL, flags, credentials, an unreachable server.
    pub(crate) fn input(message: impl Into<String>) -> Self {
        Fail {
            code: 2,
            message: message.into(),
        }
    }

    /// Something went wrong that is not the user's input (exit code 1).
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Fail {
            code: 1,
            message: message.into(),
        }
    }
}

/// Strings never to print: the URL's password, raw and percent-decoded.
static SECRETS: OnceLock<Vec<String>> = OnceLock::new();

/// Removes the URL's password from `text` and folds it onto one line.
///
/// Drivers' messages do not quote the password today; this is the belt to
/// their braces, applied to everything the tool prints that came from outside.
pub(crate) fn redact(text: &str) -> String {
    redact_with(text, SECRETS.get().map_or(&[], Vec::as_slice))
}

fn redact_with(text: &str, secrets: &[String]) -> String {
    let mut out = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for secret in secrets {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// The passwords of every URL the process was given, wherever it was
/// given: a URL typed without `--url` is echoed by the parser's error.
fn secrets_of(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .chain(std::env::var("DATABASE_URL").ok())
        .flat_map(|a| passwords(&a))
        .collect()
}

/// The password of `url`, as written and percent-decoded (empty ones omitted).
fn passwords(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, raw)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    let decoded = percent_decode(raw);
    let mut out: Vec<String> = vec![raw.to_owned(), decoded];
    out.retain(|s| !s.is_empty());
    out.dedup();
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
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

/// Reads `30s`, `500ms`, `2m`, `1h`, `1.5s`; a bare number is seconds. At
/// most [`vigil::Config::MAX_DURATION`] (100 years), like every pool setting.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("`{text}` is negative; a duration is 0 or more"));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 500ms, 3s, 2m)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    match Duration::try_from_secs_f64(value * scale) {
        Ok(d) if d <= vigil::Config::MAX_DURATION => Ok(d),
        _ => Err(format!("`{text}` is longer than the limit of 100 years")),
    }
}

/// A duration setting that may be switched off (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrOff(pub(crate) Option<Duration>);

/// A duration, or `off` / `none` / `never` for "never".
fn optional_duration(text: &str) -> Result<OrOff, String> {
    match text.trim() {
        "off" | "none" | "never" => Ok(OrOff(None)),
        other => positive_duration(other)
            .map(|d| OrOff(Some(d)))
            .map_err(|e| format!("{e}; or `off`")),
    }
}

/// `always`, `never`, or the bypass window as a duration.
fn parse_validation(text: &str) -> Result<vigil::Validation, String> {
    match text.trim() {
        "always" => Ok(vigil::Validation::Always),
        "never" => Ok(vigil::Validation::Never),
        other => positive_duration(other)
            .map(vigil::Validation::IdleFor)
            .map_err(|e| format!("{e}; or `always` / `never`")),
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be greater than zero".to_owned()),
        d => Ok(d),
    }
}

/// The most workers `vigil load` runs: beyond this a run measures tokio's
/// scheduler, not the pool.
pub(crate) const MAX_CONCURRENCY: usize = 10_000;

/// A whole number from 1 to `max`.
fn count_up_to(text: &str, max: usize) -> Result<usize, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("`{text}` is negative; must be at least 1"));
    }
    match text.parse::<u128>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) if n <= max as u128 => Ok(n as usize),
        Ok(_) => Err(format!("`{text}` is larger than the limit of {max}")),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

fn concurrency(text: &str) -> Result<usize, String> {
    count_up_to(text, MAX_CONCURRENCY)
}

fn pool_size(text: &str) -> Result<usize, String> {
    count_up_to(text, vigil::Config::MAX_SIZE)
}

/// `1.5 s`, `2.31 ms`, `870 µs` for a duration in seconds.
pub(crate) fn human_secs(secs: f64) -> String {
    if secs >= 100.0 {
        format!("{secs:.0} s")
    } else if secs >= 1.0 {
        format!("{secs:.2} s")
    } else if secs >= 0.001 {
        format!("{:.2} ms", secs * 1e3)
    } else {
        format!("{:.0} µs", secs * 1e6)
    }
}

/// Logs to stderr, filtered by RUST_LOG or else by -v: warnings by default.
/// Lines are written around the progress bar, never through it.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(spec.trim()).unwrap_or_else(|e| {
                say!("vigil: RUST_LOG is not a valid filter ({e}); showing warnings");
                EnvFilter::new("warn")
            })
        }
        _ => EnvFilter::new(match verbose {
            0 => "warn",
            1 => "warn,vigil=debug",
            _ => "trace",
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter)
        // A failed write would be reported with `eprintln!`, which panics
        // when stderr is closed; a log line is not worth the run.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Collapses a prefix that a wrapped error repeats from its cause
/// (`Input/output error: Input/output error: reset` → `Input/output error: reset`).
pub(crate) fn without_repeats(message: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in message.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

fn main() -> ExitCode {
    let _ = SECRETS.set(secrets_of(
        std::env::args_os().map(|a| a.to_string_lossy().into_owned()),
    ));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print as clap formats them, exit 0.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's own rendering is several lines (usage, a hint); the
            // contract is one line naming the problem.
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            say!("vigil: {}", redact(first));
            return ExitCode::from(2);
        }
    };
    let Some(command) = cli.command else {
        say!("vigil: a subcommand is required: `vigil load` or `vigil probe` (see vigil --help)");
        return ExitCode::from(2);
    };
    init_logging(cli.verbose);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("vigil: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async move {
        match command {
            Command::Load(args) => load::run(*args).await,
            Command::Probe(args) => probe::run(args).await.map(|()| 0),
            Command::Report(args) => html::from_file(&args).map(|()| 0),
        }
    });
    // Leftover tasks (a killer mid-query, the metrics server) must not keep
    // the process alive once the report is out.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(fail) => {
            say!("vigil: {}", redact(&without_repeats(&fail.message)));
            ExitCode::from(fail.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_their_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(positive_duration("0s").is_err());
    }

    #[test]
    fn passwords_are_found_raw_and_decoded() {
        assert_eq!(
            passwords("mysql://root:p%40ss@h/db"),
            vec!["p%40ss".to_owned(), "p@ss".to_owned()]
        );
        assert_eq!(passwords("mysql://root:pw@h/db"), vec!["pw".to_owned()]);
        assert!(passwords("mysql://root@h/db").is_empty());
        assert!(passwords("sqlite::memory:").is_empty());
    }

    mod parser {
        use super::super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = String> {
            prop_oneof![
                proptest::sample::select(vec![
                    "load",
                    "probe",
                    "--url",
                    "--concurrency",
                    "--pool-size",
                    "--duration",
                    "--requests",
                    "--bursts",
                    "--idle-gap",
                    "--kill-idle-every",
                    "--json",
                    "--acquire-timeout",
                    "--validation-timeout",
                    "--validation",
                    "--keepalive-interval",
                    "--max-lifetime",
                    "--idle-timeout",
                    "--reset-on-return",
                    "--connect-timeout",
                    "-v",
                    "-vv",
                    "--",
                    "-",
                    "off",
                    "always",
                    "-1",
                    "-1s",
                    "0",
                    "1e400",
                    "NaN",
                    "2562047788015216h",
                    "18446744073709551616",
                    "mysql://root:Zq7Pw@h:99999/db",
                ])
                .prop_map(str::to_owned),
                "[ -~]{0,12}",
                "\\PC{0,6}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// Any argument list parses or is refused with a message; the
            /// flag checkers never panic, and the password never shows.
            #[test]
            fn any_arguments_parse_or_are_refused(args in proptest::collection::vec(token(), 0..8)) {
                let argv: Vec<String> = std::iter::once("vigil".to_owned()).chain(args).collect();
                let secrets = secrets_of(argv.clone());
                if let Err(e) = Cli::try_parse_from(argv) {
                    let shown = redact_with(&e.to_string(), &secrets);
                    prop_assert!(!shown.contains("Zq7Pw"), "{}", shown);
                }
            }
        }
    }
}
