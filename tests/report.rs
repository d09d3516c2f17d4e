//! `vigil load --report`: the HTML report of a short run against the real
//! MariaDB with `--kill-idle-every`, opened in a real headless Chromium
//! (Debian's `chromium`, driven by playwright-core from
//! `tests/browser/check_report.mjs`; `scripts/test` installs both). The
//! DOM must hold every chart with data, the kill markers, the totals of the
//! JSON report; the page must make no request but its own; and
//! `vigil report r.json --html` must render the same page from the JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const MARIADB: &str = "mysql://root@127.0.0.1:3306/test?prefer_socket=false";

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn vigil(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .output()
        .expect("run vigil")
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The browser's view of `html`: what `check_report.mjs` prints.
fn open_in_chromium(html: &Path, png: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/check_report.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(html)
        .arg(png)
        .output()
        .expect("node must be installed; scripts/test installs chromium and playwright-core");
    ok(&out, "the headless Chromium check (scripts/test installs chromium and tests/browser's playwright-core)");
    serde_json::from_slice(&out.stdout).expect("the browser check's JSON line")
}

#[test]
fn the_html_report_shows_every_chart_the_kills_and_the_totals_in_a_real_browser() {
    let dir = scratch();
    let (json, html, again) = (
        dir.join("r.json"),
        dir.join("r.html"),
        dir.join("again.html"),
    );
    let out = vigil(&[
        "load",
        "--url",
        MARIADB,
        "--duration",
        "6s",
        "--bursts",
        "2",
        "--idle-gap",
        "2s",
        "--kill-idle-every",
        "1s",
        "--pool-size",
        "4",
        "--concurrency",
        "8",
        "--json",
        json.to_str().expect("a UTF-8 path"),
        "--report",
        html.to_str().expect("a UTF-8 path"),
    ]);
    ok(&out, "vigil load");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    let samples = report["timeline"].as_array().expect("a timeline").len();
    assert!(samples >= 7, "a sample a second over 8 s: {samples}");
    let killed = report["killed_idle"].as_u64().expect("killed_idle");
    assert!(killed > 0, "the run killed no session: {report:#}");

    // The same page from the saved JSON.
    ok(
        &vigil(&[
            "report",
            json.to_str().unwrap(),
            "--html",
            again.to_str().unwrap(),
        ]),
        "vigil report",
    );
    assert_eq!(
        std::fs::read_to_string(&html).unwrap(),
        std::fs::read_to_string(&again).unwrap(),
        "vigil report renders the page vigil load wrote"
    );

    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/report-test.png");
    let seen = open_in_chromium(&html, &png);
    let requests: Vec<&str> = seen["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        requests,
        [seen["url"].as_str().unwrap()],
        "the page fetched something"
    );
    let charts = seen["charts"].as_array().expect("charts");
    let ids: Vec<&str> = charts.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            "chart-throughput",
            "chart-latency",
            "chart-pool",
            "chart-closed"
        ]
    );
    for chart in charts {
        assert_eq!(chart["points"], samples, "{chart}");
        assert!(chart["width"].as_f64() > Some(500.0), "laid out: {chart}");
        let drawn: u64 = chart["series"]
            .as_array()
            .expect("series")
            .iter()
            .filter_map(|s| s["marks"].as_u64())
            .sum();
        assert!(drawn > 0, "an empty chart: {chart}");
    }
    // A mark for every sample that has the value: requests per second and
    // the pool's active connections always, latency p50 only for intervals
    // in which requests finished (not in the idle gap).
    let timeline = report["timeline"].as_array().unwrap();
    let with_latency = timeline
        .iter()
        .filter(|s| s["latency_p50"].is_number())
        .count();
    assert!(with_latency >= 4 && with_latency < samples, "{timeline:?}");
    for (chart, series, expected) in [
        (0, "requests/s", samples),
        (1, "latency p50", with_latency),
        (2, "active", samples),
    ] {
        let s = charts[chart]["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == series)
            .unwrap_or_else(|| panic!("no {series} series"));
        // A polygon (the stacked pool chart) has two points per sample.
        let per = if chart == 2 { 2 } else { 1 };
        assert_eq!(s["marks"], expected * per, "{s}");
    }
    let kills: u64 = seen["kills"]
        .as_array()
        .expect("kill markers")
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(
        kills, killed,
        "the kill markers add up to the sessions killed"
    );
    assert_eq!(seen["totals"]["requests"], report["requests"].to_string());
    assert_eq!(seen["totals"]["errors"], report["errors"].to_string());
    assert_eq!(seen["totals"]["killed"], killed.to_string());
    assert!(seen["summaryRows"].as_u64() >= Some(8), "{seen}");
    let shot = std::fs::metadata(&png).expect("the screenshot").len();
    assert!(shot > 20_000, "a screenshot of {shot} bytes");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn vigil_report_refuses_what_is_not_a_load_report() {
    let dir = scratch().join("refuse");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"server": "MariaDB"}"#).unwrap();
    let out = vigil(&[
        "report",
        bad.to_str().unwrap(),
        "--html",
        dir.join("x.html").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "bad input");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a report of `vigil load --json`"), "{err}");
}
