//! The report of `benches/liveness.rs`: the tables it prints, the JSON
//! rows `scripts/bench-report` reads, and the targets. Included by
//! `#[path]` from that bench only.

use serde_json::{json, Value};

use crate::liveness_workload::Outcome;
use crate::{Case, KillShape, Shape, POOL_SIZE, SERVER_IDLE_TIMEOUT_S, TASKS};

/// The rows the targets judge: vigil with its defaults, over each driver
/// whose liveness needs no ping (vigil-sqlx pings every return, by design).
fn judged(case: &Case) -> bool {
    matches!(case.pool, "vigil" | "vigil-diesel")
}

fn validation_label(case: &Case) -> String {
    if case.pool.starts_with("vigil") {
        return case.detail.to_owned();
    }
    let onoff = if case.validation { "on" } else { "off" };
    let default = if case.default { ", default" } else { "" };
    format!("{onoff} ({}{default})", case.detail)
}

pub fn report(results: &[(Case, Outcome)], shape: Shape) -> (Vec<Value>, Vec<Value>) {
    println!();
    println!(
        "liveness: server idle timeout {SERVER_IDLE_TIMEOUT_S} s (per session), pool {POOL_SIZE}, \
         {TASKS} tasks, {} bursts x {} SELECT 1, {:.1} s gaps; round trips counted on the wire",
        shape.bursts,
        shape.queries_per_burst,
        shape.gap.as_secs_f64()
    );
    let width = results
        .iter()
        .map(|(c, _)| validation_label(c).len())
        .max()
        .unwrap_or(10);
    println!(
        "{:<18} {:<8} {:<width$} {:>7} {:>20} {:>9} {:>6} {:>7} {:>9}",
        "pool",
        "server",
        "validation",
        "errors",
        "per burst",
        "rt/query",
        "pings",
        "resets",
        "connects"
    );
    let mut rows = Vec::new();
    for (case, o) in results {
        let per_burst = o
            .errors_per_phase
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{:<18} {:<8} {:<width$} {:>7} {:>20} {:>9.2} {:>6} {:>7} {:>9}",
            case.pool,
            case.server.name(),
            validation_label(case),
            o.errors(),
            per_burst,
            o.round_trips_per_query(),
            o.pings,
            o.resets,
            o.connections,
        );
        rows.push(json!({
            "pool": case.pool,
            "server": case.server.name(),
            "validation": case.validation,
            "default": case.default,
            "detail": case.detail,
            "label": validation_label(case),
            "queries_ok": o.ok,
            "errors": o.errors(),
            "errors_per_burst": o.errors_per_phase,
            "error_samples": o.samples,
            "round_trips": o.commands,
            "round_trips_per_query": o.round_trips_per_query(),
            "pings": o.pings,
            "resets": o.resets,
            "connections": o.connections,
            "handshake_round_trips": o.handshake,
            "bench_setup_round_trips": o.setup,
            "seconds": o.seconds,
        }));
    }
    for (case, o) in results {
        if let Some(first) = o.samples.first() {
            println!(
                "  {}/{} ({}): first error: {first}",
                case.server.name(),
                case.pool,
                validation_label(case)
            );
        }
    }
    // Target: zero errors at about one round trip per query.
    let mut targets = Vec::new();
    for (case, o) in results.iter().filter(|(c, _)| judged(c)) {
        let rt = o.round_trips_per_query();
        let met = o.errors() == 0 && rt <= RT_TARGET;
        println!(
            "{}: {} {} errors, {rt:.2} round trips/query [target 0 errors at <= {RT_TARGET}: {}]",
            case.server.name(),
            case.pool,
            o.errors(),
            if met { "met" } else { "NOT met" }
        );
        targets.push(json!({
            "server": case.server.name(),
            "pool": case.pool,
            "errors": o.errors(),
            "round_trips_per_query": rt,
            "round_trips_target": RT_TARGET,
            "met": met,
        }));
    }
    (rows, targets)
}

/// The hot-kill table and its target: at most the queries in flight (one
/// per task) fail after a kill; none from a dead session lent later.
pub fn report_hot_kill(results: &[(Case, Outcome)], shape: KillShape) -> (Vec<Value>, Vec<Value>) {
    println!();
    println!(
        "hot kill: pool {POOL_SIZE}, {TASKS} tasks querying back to back for {:.0} s, every pool \
         session terminated from an admin connection every {:.1} s; round trips counted on the wire",
        shape.length.as_secs_f64(),
        shape.every.as_secs_f64()
    );
    let width = results
        .iter()
        .map(|(c, _)| validation_label(c).len())
        .max()
        .unwrap_or(10);
    println!(
        "{:<18} {:<8} {:<width$} {:>7} {:>9} {:>6} {:>7} {:>9} {:>9} {:>6} {:>9}",
        "pool",
        "server",
        "validation",
        "errors",
        "max/kill",
        "kills",
        "killed",
        "queries/s",
        "rt/query",
        "pings",
        "connects"
    );
    let mut rows = Vec::new();
    for (case, o) in results {
        let killed: u64 = o.killed.iter().sum();
        let qps = o.ok as f64 / o.busy.max(1e-9);
        println!(
            "{:<18} {:<8} {:<width$} {:>7} {:>9} {:>6} {:>7} {:>9.0} {:>9.2} {:>6} {:>9}",
            case.pool,
            case.server.name(),
            validation_label(case),
            o.errors(),
            o.max_errors_per_kill(),
            o.killed.len(),
            killed,
            qps,
            o.round_trips_per_query(),
            o.pings,
            o.connections,
        );
        rows.push(json!({
            "pool": case.pool,
            "server": case.server.name(),
            "validation": case.validation,
            "default": case.default,
            "detail": case.detail,
            "label": validation_label(case),
            "queries_ok": o.ok,
            "queries_per_sec": qps,
            "errors": o.errors(),
            "errors_before_first_kill": o.errors_per_phase.first().copied().unwrap_or(0),
            "errors_per_kill": &o.errors_per_phase[1.min(o.errors_per_phase.len())..],
            "max_errors_per_kill": o.max_errors_per_kill(),
            "kills": o.killed.len(),
            "sessions_killed": killed,
            "error_samples": o.samples,
            "round_trips": o.commands,
            "round_trips_per_query": o.round_trips_per_query(),
            "pings": o.pings,
            "resets": o.resets,
            "connections": o.connections,
            "seconds": o.seconds,
        }));
    }
    for (case, o) in results {
        if let Some(first) = o.samples.first() {
            println!(
                "  {}/{} ({}): first error: {first}",
                case.server.name(),
                case.pool,
                validation_label(case)
            );
        }
    }
    let mut targets = Vec::new();
    for (case, o) in results.iter().filter(|(c, _)| judged(c)) {
        let most = o.max_errors_per_kill();
        let met = most <= TASKS as u64;
        println!(
            "{}: {} at most {most} errors per kill [target <= {TASKS}, the queries in flight: {}]",
            case.server.name(),
            case.pool,
            if met { "met" } else { "NOT met" }
        );
        targets.push(json!({
            "server": case.server.name(),
            "pool": case.pool,
            "errors": o.errors(),
            "max_errors_per_kill": most,
            "max_errors_per_kill_target": TASKS,
            "met": met,
        }));
    }
    (rows, targets)
}

/// "≈ 1.0" round trips per query, made a number.
const RT_TARGET: f64 = 1.05;
