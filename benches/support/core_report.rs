//! The report of `benches/core.rs`: the contended table, criterion's
//! estimates read back for the uncontended and metrics groups, and the
//! JSON rows `scripts/bench-report` reads. Included by `#[path]` from that
//! bench only.

use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::common::{target_dir, WORKERS};
use crate::paired::Paired;
use crate::{Cell, POOL_SIZE, TASK_COUNTS};

// ------------------------------------------------------------------ the contended table

pub fn print_contended(cells: &[Cell], cycles: u64, runs: usize) -> Vec<Value> {
    println!();
    println!(
        "contended: {WORKERS} workers, pool {POOL_SIZE}, get / yield_now / drop, \
         {cycles} cycles x {runs} runs; cycles/s = median run, waits over all runs"
    );
    println!(
        "{:<9} {:>6} {:>13} {:>10} {:>10} {:>10} {:>13} {:>12}",
        "pool", "tasks", "cycles/s", "p50 us", "p99 us", "max us", "vigil x thru", "p99/vigil"
    );
    let mut out = Vec::new();
    for cell in cells {
        let vigil = cells
            .iter()
            .find(|c| c.pool == "vigil" && c.tasks == cell.tasks);
        let thru = cell.median();
        let (p50, p99, max) = (cell.micros(0.5), cell.micros(0.99), cell.micros(1.0));
        // NaN (printed and written as such / null) when vigil was filtered out.
        let vigil_x = vigil.map_or(f64::NAN, |v| v.median() / thru);
        let p99_ratio = vigil.map_or(f64::NAN, |v| p99 / v.micros(0.99));
        println!(
            "{:<9} {:>6} {:>13.0} {:>10.1} {:>10.1} {:>10.1} {:>13.2} {:>12.2}",
            cell.pool, cell.tasks, thru, p50, p99, max, vigil_x, p99_ratio
        );
        // Judged per run, as the real-database targets are: the runs are
        // interleaved, and this machine flips between a fast and a slow
        // mode from run to run (about 3x apart), so a ratio of medians can
        // compare one pool's fast runs with another's slow ones.
        let per_run = vigil
            .filter(|v| v.pool != cell.pool)
            .map(|v| Paired::of(&v.runs, &cell.runs, "runs", 1).json());
        out.push(json!({
            "pool": cell.pool,
            "tasks": cell.tasks,
            "cycles_per_sec": thru,
            "runs_cycles_per_sec": cell.runs,
            "vigil_over_pool_per_run": per_run,
            "wait_p50_us": p50,
            "wait_p99_us": p99,
            "wait_max_us": max,
            "vigil_throughput_over_pool": vigil_x,
            "pool_p99_over_vigil_p99": p99_ratio,
        }));
    }
    println!("(vigil x thru = vigil cycles/s / this pool's; p99/vigil = this pool's p99 / vigil's: > 1 favours vigil)");
    for &tasks in &TASK_COUNTS {
        let row = |name: &str| cells.iter().find(|c| c.pool == name && c.tasks == tasks);
        let (Some(vigil), Some(deadpool)) = (row("vigil"), row("deadpool")) else {
            continue;
        };
        let Some(best) = cells
            .iter()
            .filter(|c| c.tasks == tasks && c.pool != "vigil")
            .max_by(|a, b| a.median().total_cmp(&b.median()))
        else {
            continue;
        };
        println!(
            "{tasks:>5} tasks: vigil {:.2}x the best peer ({}) [target >= 1.5]; \
             p99 {:.1} us vs deadpool {:.1} us [target <=]",
            vigil.median() / best.median(),
            best.pool,
            vigil.micros(0.99),
            deadpool.micros(0.99),
        );
    }
    out
}

// ------------------------------------------------------------------ reading criterion's results

pub fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("criterion"))
}

/// The ns per cycle criterion reported (slope when it fitted one, as it
/// prints), if the bench ran in this process.
fn estimate(group: &str, bench: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let v: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| v["mean"]["point_estimate"].as_f64())
}

pub fn print_uncontended(since: SystemTime) -> Vec<Value> {
    let names = ["vigil", "bb8", "deadpool", "mobc", "r2d2"];
    let Some(vigil) = estimate("uncontended", "vigil", since) else {
        return Vec::new();
    };
    println!();
    println!("uncontended: 1 task, get + drop, pool {POOL_SIZE}, pre-warmed");
    println!("{:<9} {:>10} {:>15}", "pool", "ns/cycle", "pool / vigil");
    let mut out = Vec::new();
    for name in names {
        let Some(ns) = estimate("uncontended", name, since) else {
            continue;
        };
        println!("{name:<9} {ns:>10.1} {:>15.2}", ns / vigil);
        out.push(json!({ "pool": name, "ns_per_cycle": ns, "pool_over_vigil": ns / vigil }));
    }
    let fastest_peer = out
        .iter()
        .filter(|v| v["pool"] != "vigil")
        .filter_map(|v| v["ns_per_cycle"].as_f64())
        .fold(f64::INFINITY, f64::min);
    println!(
        "vigil / fastest peer: {:.2} [target <= 0.5]",
        vigil / fastest_peer
    );
    out
}

pub fn print_metrics(since: SystemTime, scrapes: u64) -> Value {
    let (Some(plain), Some(scraped)) = (
        estimate("metrics_overhead", "plain", since),
        estimate("metrics_overhead", "scraped_every_10ms", since),
    ) else {
        return Value::Null;
    };
    println!();
    println!(
        "metrics_overhead: plain {plain:.1} ns, scraped every 10 ms {scraped:.1} ns, \
         ratio {:.3} ({scrapes} scrapes)",
        scraped / plain
    );
    json!({
        "plain_ns_per_cycle": plain,
        "scraped_ns_per_cycle": scraped,
        "scraped_over_plain": scraped / plain,
        "scrapes": scrapes,
    })
}
