//! `vigil load --report` and `vigil report --html`: one self-contained HTML
//! file from a load report's JSON. The charts are inline SVG drawn here (a
//! few polylines and rectangles need no plotting crate, and no script runs
//! in the page); a Content-Security-Policy of `default-src 'none'` keeps the
//! page from fetching anything, so it opens the same offline, in a mail
//! attachment or in print.

use std::fmt::Write as _;

use serde_json::Value;

// The terminal report's formatting, so both say the same thing.
use crate::human_secs as secs;

const W: f64 = 960.0;
const H: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 30.0;

/// Colours of the closure reasons, by `Reason::ALL` index: the names come
/// from the crate, so a new reason cannot go missing from the chart (the
/// array length is checked against `Reason::ALL` at compile time).
const REASON_COLORS: [&str; vigil::Reason::ALL.len()] = [
    "#dc2626", // broken
    "#f97316", // validation_failed
    "#8b5cf6", // max_lifetime
    "#64748b", // idle_timeout
    "#0ea5e9", // server_timeout
    "#db2777", // reset_failed
    "#94a3b8", // closed
    "#eab308", // role_changed
    "#14b8a6", // refused
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// A tick value: no more digits than the step has.
fn tick_text(v: f64, step: f64) -> f64 {
    let digits = (-step.log10().floor()).max(0.0) as i32;
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

/// A round step for about `n` ticks up to `max`.
fn step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// One series of a chart: its name, colour and a value per sample.
struct Series {
    name: String,
    color: &'static str,
    values: Vec<Option<f64>>,
}

enum Shape {
    Lines,
    /// Stacked areas, the first series at the bottom.
    Stacked,
    /// Stacked bars, one per sample.
    Bars,
}

struct Frame<'a> {
    ts: &'a [f64],
    t_max: f64,
    events: &'a [Value],
}

impl Frame<'_> {
    fn x(&self, t: f64) -> f64 {
        LEFT + t / self.t_max * (W - LEFT - RIGHT)
    }
}

fn y(v: f64, max: f64) -> f64 {
    H - BOTTOM - v / max * (H - TOP - BOTTOM)
}

/// An SVG chart with axes, the idle gaps shaded and the event markers.
fn chart(
    id: &str,
    frame: &Frame,
    series: &[Series],
    shape: Shape,
    fmt: fn(f64) -> String,
) -> String {
    let n = frame.ts.len();
    // The top of the scale: the largest value, or the largest stack.
    let top = (0..n)
        .map(|i| {
            let vals = series.iter().map(|s| s.values[i].unwrap_or(0.0));
            match shape {
                Shape::Lines => vals.fold(0.0, f64::max),
                Shape::Stacked | Shape::Bars => vals.sum(),
            }
        })
        .fold(0.0, f64::max);
    let y_step = step(if top > 0.0 { top } else { 1.0 }, 4.0);
    let y_max = (top / y_step).ceil().max(1.0) * y_step;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" id="{id}" data-points="{n}" viewBox="0 0 {W} {H}" role="img" aria-label="{id}">"#
    );
    shade_gaps(&mut svg, frame);
    // Axes and grid.
    let ticks = (y_max / y_step).round() as usize;
    for i in 0..=ticks {
        let v = tick_text(i as f64 * y_step, y_step);
        let yy = y(v, y_max);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            esc(&fmt(v))
        );
    }
    let t_step = step(frame.t_max, 8.0);
    let mut t = 0.0;
    while t <= frame.t_max + 1e-9 {
        let xx = frame.x(t);
        let _ = write!(
            svg,
            r#"<text class="tick" x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - BOTTOM + 18.0,
            esc(&format!("{t:.0} s"))
        );
        t += t_step;
    }
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" x2="{}" y1="{b}" y2="{b}"/>"#,
        W - RIGHT,
        b = H - BOTTOM
    );
    match shape {
        Shape::Lines => lines(&mut svg, frame, series, y_max),
        Shape::Stacked => stacked(&mut svg, frame, series, y_max),
        Shape::Bars => bars(&mut svg, frame, series, y_max),
    }
    markers(&mut svg, frame);
    svg.push_str("</svg>");
    svg.push_str(r#"<ul class="legend">"#);
    for s in series {
        let _ = write!(
            svg,
            r#"<li><span class="swatch" style="background:{}"></span>{}</li>"#,
            s.color,
            esc(&s.name)
        );
    }
    svg.push_str("</ul>");
    svg
}

fn lines(svg: &mut String, frame: &Frame, series: &[Series], y_max: f64) {
    for s in series {
        let points: Vec<String> = frame
            .ts
            .iter()
            .zip(&s.values)
            .filter_map(|(t, v)| v.map(|v| format!("{:.1},{:.1}", frame.x(*t), y(v, y_max))))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="series" data-name="{}" fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            esc(&s.name),
            s.color,
            points.join(" ")
        );
    }
}

fn stacked(svg: &mut String, frame: &Frame, series: &[Series], y_max: f64) {
    let mut base = vec![0.0; frame.ts.len()];
    for s in series {
        let top: Vec<f64> = base
            .iter()
            .zip(&s.values)
            .map(|(b, v)| b + v.unwrap_or(0.0))
            .collect();
        let mut points: Vec<String> = frame
            .ts
            .iter()
            .zip(&top)
            .map(|(t, v)| format!("{:.1},{:.1}", frame.x(*t), y(*v, y_max)))
            .collect();
        points.extend(
            frame
                .ts
                .iter()
                .zip(&base)
                .rev()
                .map(|(t, v)| format!("{:.1},{:.1}", frame.x(*t), y(*v, y_max))),
        );
        let _ = write!(
            svg,
            r#"<polygon class="series" data-name="{}" fill="{}" fill-opacity="0.75" points="{}"/>"#,
            esc(&s.name),
            s.color,
            points.join(" ")
        );
        base = top;
    }
}

fn bars(svg: &mut String, frame: &Frame, series: &[Series], y_max: f64) {
    let width = ((W - LEFT - RIGHT) / frame.ts.len().max(1) as f64 * 0.7).max(1.0);
    let mut base = vec![0.0; frame.ts.len()];
    for s in series {
        let _ = write!(
            svg,
            r#"<g class="series" data-name="{}" fill="{}">"#,
            esc(&s.name),
            s.color
        );
        for (i, v) in s.values.iter().enumerate() {
            let v = v.unwrap_or(0.0);
            if v <= 0.0 {
                continue;
            }
            let (y0, y1) = (y(base[i], y_max), y(base[i] + v, y_max));
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{y1:.1}" width="{width:.1}" height="{:.1}"><title>{}: {v}</title></rect>"#,
                frame.x(frame.ts[i]) - width,
                y0 - y1,
                esc(&s.name)
            );
            base[i] += v;
        }
        svg.push_str("</g>");
    }
}

/// Idle gaps: from an `idle_gap` event to the next `burst`.
fn shade_gaps(svg: &mut String, frame: &Frame) {
    let mut open: Option<f64> = None;
    for e in frame.events {
        match e["kind"].as_str() {
            Some("idle_gap") => open = Some(num(&e["t"])),
            Some("burst") => {
                if let Some(start) = open.take() {
                    let (x0, x1) = (frame.x(start), frame.x(num(&e["t"])));
                    let _ = write!(
                        svg,
                        r#"<rect class="gap" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{}"/>"#,
                        x1 - x0,
                        H - TOP - BOTTOM
                    );
                }
            }
            _ => {}
        }
    }
}

fn markers(svg: &mut String, frame: &Frame) {
    for e in frame.events {
        let x = frame.x(num(&e["t"]));
        match e["kind"].as_str() {
            Some("kill") => {
                // A round that found no idle session to kill is drawn faint
                // and unlabelled: the pool was busy.
                let count = e["count"].as_u64().unwrap_or(0);
                let none = if count == 0 { " none" } else { "" };
                let _ = write!(
                    svg,
                    r#"<line class="marker kill{none}" data-count="{count}" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}"/>"#,
                    H - BOTTOM,
                );
                if count > 0 {
                    let _ = write!(
                        svg,
                        r#"<text class="marker-label" x="{:.1}" y="{}">killed {count}</text>"#,
                        x + 3.0,
                        TOP + 10.0
                    );
                }
            }
            Some("burst") => {
                let _ = write!(
                    svg,
                    r#"<line class="marker burst" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}"/>"#,
                    H - BOTTOM
                );
            }
            _ => {}
        }
    }
}

/// `key` per second of each sample's interval (the last one may be short).
fn rates(samples: &[Value], key: &str) -> Vec<Option<f64>> {
    let mut before = 0.0;
    samples
        .iter()
        .map(|s| {
            let t = num(&s["t"]);
            let dt = t - before;
            before = t;
            s[key].as_f64().map(|c| c / dt.max(1e-3))
        })
        .collect()
}

/// `vigil report results.json --html out.html`.
pub(crate) fn from_file(args: &crate::ReportArgs) -> Result<(), crate::Fail> {
    use crate::Fail;
    let text = std::fs::read_to_string(&args.json)
        .map_err(|e| Fail::input(format!("{}: {e}", args.json.display())))?;
    let report: Value = serde_json::from_str(&text)
        .map_err(|e| Fail::input(format!("{}: not a JSON report: {e}", args.json.display())))?;
    if !report["requests"].is_u64() || !report["timeline"].is_array() {
        return Err(Fail::input(format!(
            "{}: not a report of `vigil load --json` (no requests or timeline; a report \
             from before the timeline existed cannot be drawn)",
            args.json.display()
        )));
    }
    std::fs::write(&args.html, render(&report))
        .map_err(|e| Fail::input(format!("--html {}: {e}", args.html.display())))
}

/// The whole page from a load report's JSON.
pub(crate) fn render(r: &Value) -> String {
    let empty = Vec::new();
    let samples = r["timeline"].as_array().unwrap_or(&empty);
    let events = r["events"].as_array().unwrap_or(&empty);
    let every = num(&r["sample_every_seconds"]).max(1e-3);
    let ts: Vec<f64> = samples.iter().map(|s| num(&s["t"])).collect();
    let t_max = ts
        .iter()
        .copied()
        .chain(events.iter().map(|e| num(&e["t"])))
        .fold(every, f64::max);
    let frame = Frame {
        ts: &ts,
        t_max,
        events,
    };
    let col = |key: &str, scale: f64| -> Vec<Option<f64>> {
        samples
            .iter()
            .map(|s| s[key].as_f64().map(|v| v * scale))
            .collect()
    };
    let throughput = chart(
        "chart-throughput",
        &frame,
        &[
            Series {
                name: "requests/s".into(),
                color: "#2563eb",
                values: rates(samples, "requests"),
            },
            Series {
                name: "errors/s".into(),
                color: "#dc2626",
                values: rates(samples, "errors"),
            },
        ],
        Shape::Lines,
        |v| format!("{v:.0}"),
    );
    let latency = chart(
        "chart-latency",
        &frame,
        &[
            Series {
                name: "latency p50".into(),
                color: "#2563eb",
                values: col("latency_p50", 1e3),
            },
            Series {
                name: "latency p99".into(),
                color: "#7c3aed",
                values: col("latency_p99", 1e3),
            },
            Series {
                name: "acquire wait p99".into(),
                color: "#f59e0b",
                values: col("acquire_p99", 1e3),
            },
        ],
        Shape::Lines,
        |v| format!("{v} ms"),
    );
    let pool = chart(
        "chart-pool",
        &frame,
        &[
            Series {
                name: "active".into(),
                color: "#2563eb",
                values: col("active", 1.0),
            },
            Series {
                name: "idle".into(),
                color: "#10b981",
                values: col("idle", 1.0),
            },
            Series {
                name: "pending (callers waiting)".into(),
                color: "#f59e0b",
                values: col("pending", 1.0),
            },
        ],
        Shape::Stacked,
        |v| format!("{v:.0}"),
    );
    let mut closures: Vec<Series> = vigil::Reason::ALL
        .iter()
        .zip(REASON_COLORS)
        .map(|(reason, color)| Series {
            name: format!("closed: {reason}"),
            color,
            values: samples
                .iter()
                .map(|s| s["closed"][reason.as_str()].as_f64())
                .collect(),
        })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect();
    closures.push(Series {
        name: "opened".into(),
        color: "#0f766e",
        values: col("created", 1.0),
    });
    let closed = chart("chart-closed", &frame, &closures, Shape::Bars, |v| {
        format!("{v:.0}")
    });

    let mut page = String::with_capacity(64 * 1024);
    let title = format!(
        "vigil load: {} ({})",
        r["target"].as_str().unwrap_or("?"),
        r["backend"].as_str().unwrap_or("?")
    );
    let _ = write!(
        page,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{}</title>
<style>{STYLE}</style></head><body>
<header><h1>vigil load</h1><p class="target">{}</p>{}</header>
<section><h2>Throughput and errors</h2>{throughput}</section>
<section><h2>Latency</h2>{latency}</section>
<section><h2>The pool</h2>{pool}</section>
<section><h2>Connections opened and closed, by reason</h2>{closed}</section>
<section><h2>Summary</h2>{}</section>
<footer>Generated by vigil {}. Shaded: idle gaps; grey lines: bursts start; red dashed lines: kill rounds, with the sessions they killed (faint: the round found no idle session).</footer>
</body></html>
"#,
        esc(&title),
        esc(&format!(
            "{} ({}) at {}",
            r["backend"].as_str().unwrap_or("?"),
            r["driver"].as_str().unwrap_or("?"),
            r["target"].as_str().unwrap_or("?")
        )),
        header(r),
        summary(r),
        env!("CARGO_PKG_VERSION"),
    );
    page
}

/// Settings and totals.
fn header(r: &Value) -> String {
    let mut settings = vec![
        ("pool size", r["pool_size"].to_string()),
        ("workers", r["concurrency"].to_string()),
        ("query", r["query"].as_str().unwrap_or("").to_owned()),
        ("duration", secs(num(&r["elapsed_seconds"]))),
        ("sampled every", secs(num(&r["sample_every_seconds"]))),
    ];
    if r["bursts"].as_u64() > Some(1) {
        settings.push((
            "bursts",
            format!(
                "{} with {} idle gaps",
                r["bursts"],
                secs(num(&r["idle_gap_seconds"]))
            ),
        ));
    }
    if let Some(k) = r["kill_idle_every_seconds"].as_f64() {
        settings.push(("kill idle sessions every", secs(k)));
    }
    if let Some(t) = r["session_idle_timeout_seconds"].as_f64() {
        settings.push(("session idle timeout", secs(t)));
    }
    let l = &r["latency_seconds"];
    let totals = [
        ("total-requests", "requests", r["requests"].to_string()),
        ("total-errors", "errors", r["errors"].to_string()),
        (
            "total-throughput",
            "requests/s (busy time)",
            format!("{:.0}", num(&r["throughput_per_s"])),
        ),
        (
            "total-latency",
            "latency p50 / p99",
            format!("{} / {}", secs(num(&l["p50"])), secs(num(&l["p99"]))),
        ),
        (
            "total-killed",
            "sessions killed",
            r["killed_idle"].to_string(),
        ),
    ];
    let mut out = String::from(r#"<dl class="settings">"#);
    for (k, v) in settings {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&v));
    }
    out.push_str(r#"</dl><dl class="totals">"#);
    for (id, k, v) in totals {
        let _ = write!(
            out,
            r#"<div><dt>{}</dt><dd id="{id}">{}</dd></div>"#,
            esc(k),
            esc(&v)
        );
    }
    out.push_str("</dl>");
    out
}

/// The final summary table, as `vigil load` prints it.
fn summary(r: &Value) -> String {
    let l = &r["latency_seconds"];
    let a = &r["acquire_seconds"];
    let v = &r["validations"];
    let closed: Vec<String> = r["connections_closed"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64() > Some(0))
                .map(|(k, n)| format!("{k} {n}"))
                .collect()
        })
        .unwrap_or_default();
    let mut rows = vec![
        (
            "requests",
            format!("{} ({} errors)", r["requests"], r["errors"]),
        ),
        (
            "time",
            format!(
                "{} in all, {} busy",
                secs(num(&r["elapsed_seconds"])),
                secs(num(&r["busy_seconds"]))
            ),
        ),
        (
            "throughput",
            format!("{:.0} requests/s", num(&r["throughput_per_s"])),
        ),
        (
            "latency",
            format!(
                "p50 {}, p90 {}, p99 {}, max {}",
                secs(num(&l["p50"])),
                secs(num(&l["p90"])),
                secs(num(&l["p99"])),
                secs(num(&l["max"]))
            ),
        ),
        (
            "acquire wait",
            format!(
                "p50 {}, p99 {}, max {}",
                secs(num(&a["p50"])),
                secs(num(&a["p99"])),
                secs(num(&a["max"]))
            ),
        ),
        (
            "connections",
            format!(
                "created {}, open at end {}, closed {}",
                r["connections_created"],
                r["connections_open_at_end"],
                if closed.is_empty() {
                    "none".to_owned()
                } else {
                    closed.join(", ")
                }
            ),
        ),
        (
            "validations",
            format!(
                "{} ok, {} failed, {} skipped, {} hedged",
                v["ok"],
                v["failed"],
                v["skipped"],
                // Reports written before the field existed have none.
                v["hedged"].as_u64().unwrap_or(0)
            ),
        ),
        (
            "failures",
            format!(
                "{} connect errors, {} acquire timeouts",
                r["connect_errors"], r["acquire_timeouts"]
            ),
        ),
    ];
    if let Some(t) = r["server_idle_timeout_seconds"].as_f64() {
        rows.push(("server idle timeout", secs(t)));
    }
    if r["kill_idle_every_seconds"].is_number() {
        rows.push(("sessions killed", r["killed_idle"].to_string()));
    }
    for e in r["error_samples"].as_array().into_iter().flatten() {
        rows.push(("error", e.as_str().unwrap_or("").to_owned()));
    }
    let mut out = String::from(r#"<table id="summary">"#);
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    out.push_str("</table>");
    out
}

const STYLE: &str = "
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #0f172a;
       max-width: 1000px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 26px; margin: 0; } h2 { font-size: 17px; margin: 28px 0 6px; }
.target { color: #475569; margin: 2px 0 12px; font-family: ui-monospace, monospace; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0 0 14px; }
dl.settings dt { color: #64748b; } dl.settings dd { margin: 0; font-family: ui-monospace, monospace; }
dl.totals { display: flex; flex-wrap: wrap; gap: 10px; margin: 0; }
dl.totals div { border: 1px solid #e2e8f0; border-radius: 8px; padding: 8px 14px; min-width: 120px; }
dl.totals dt { color: #64748b; font-size: 13px; } dl.totals dd { margin: 0; font-size: 20px; font-weight: 600; }
svg.chart { width: 100%; height: auto; display: block; }
.grid { stroke: #e2e8f0; } .axis { stroke: #94a3b8; }
.tick { font-size: 11px; fill: #64748b; }
.gap { fill: #f1f5f9; }
.marker.burst { stroke: #cbd5e1; stroke-width: 1; }
.marker.kill { stroke: #dc2626; stroke-width: 1.5; stroke-dasharray: 4 3; }
.marker.kill.none { stroke: #fca5a5; stroke-width: 1; }
.marker-label { font-size: 10px; fill: #dc2626; }
ul.legend { list-style: none; padding: 0; margin: 4px 0 0 64px; display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 13px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
table#summary { border-collapse: collapse; width: 100%; font-size: 14px; }
table#summary th { text-align: left; color: #64748b; font-weight: normal; padding: 4px 16px 4px 0; white-space: nowrap; vertical-align: top; }
table#summary td { padding: 4px 0; font-family: ui-monospace, monospace; border-bottom: 1px solid #f1f5f9; }
footer { margin-top: 28px; color: #64748b; font-size: 12px; }
@media print { body { font-size: 11px; margin: 0; max-width: none; } section { break-inside: avoid; }
               dl.totals div { border-color: #94a3b8; } }
";
