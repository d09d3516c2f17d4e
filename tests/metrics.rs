//! The Prometheus export: format checked by promtool, scraped by a real
//! Prometheus server, and the numbers it shows are the pool's.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::fake::Fake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil::metrics::Metrics;
use vigil::{server, Pool};

/// A bare HTTP/1.0 GET: returns (status line + headers, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    http_get_accepting(addr, path, "*/*").await
}

async fn http_get_accepting(addr: SocketAddr, path: &str, accept: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to HTTP server");
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    (head.to_owned(), body.to_owned())
}

/// Two pools with some history, exported together.
async fn two_pools() -> (Pool<Fake>, Pool<Fake>, Metrics) {
    let orders = Pool::builder(Fake::with_server_idle(28_800_000))
        .name("orders")
        .max_size(4)
        .build()
        .unwrap();
    let users = Pool::builder(Fake::new())
        .name("users")
        .max_size(2)
        .build()
        .unwrap();
    let held = orders.get().await.unwrap();
    drop(orders.get().await.unwrap()); // opens a second connection
    drop(orders.get().await.unwrap()); // reuses it, inside the bypass window
    drop(users.get().await.unwrap());
    std::mem::forget(held); // keep one lent for the gauges (the pool counts it active)
    let metrics = Metrics::new();
    metrics.add(&orders);
    metrics.add(&users);
    (orders, users, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_openmetrics_that_promtool_accepts() {
    let (_orders, _users, metrics) = two_pools().await;
    let srv = server::serve(metrics, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert!(srv.local_addr().ip().is_loopback());
    let (head, body) = http_get_accepting(
        srv.local_addr(),
        "/metrics",
        "application/openmetrics-text; version=1.0.0",
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    for series in [
        r#"vigil_connections{pool="orders",state="idle"} 1"#,
        r#"vigil_connections{pool="orders",state="active"} 1"#,
        r#"vigil_connections{pool="users",state="idle"} 1"#,
        r#"vigil_connections_max{pool="orders"} 4"#,
        r#"vigil_connections_created_total{pool="orders"} 2"#,
        r#"vigil_connections_closed_total{pool="orders",reason="server_timeout"} 0"#,
        r#"vigil_validations_total{pool="orders",result="skipped"} 1"#,
        r#"vigil_server_idle_timeout_seconds{pool="orders"} 28800"#,
        r#"vigil_acquire_duration_seconds_count{pool="orders"} 3"#,
        r#"vigil_connection_usage_seconds_bucket{le="+Inf",pool="users"} 1"#,
        r#"vigil_connect_duration_seconds_count{pool="users"} 1"#,
        r#"vigil_leaks_suspected_total{pool="users"} 0"#,
        r#"vigil_pending_acquires{pool="users"} 0"#,
    ] {
        assert!(body.contains(series), "missing {series} in\n{body}");
    }
    assert_eq!(
        body.matches("# TYPE vigil_connections gauge").count(),
        1,
        "one family for both pools"
    );

    // promtool lints the classic text format, which is what a scraper that
    // does not ask for OpenMetrics gets.
    let (head, body) = http_get(srv.local_addr(), "/metrics").await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("# TYPE vigil_connections_created_total counter"),
        "{body}"
    );

    let file = std::env::temp_dir().join(format!("vigil-metrics-{}.txt", std::process::id()));
    std::fs::write(&file, &body).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool must be installed (Debian package `prometheus`); .ci/run installs it");
    std::fs::remove_file(&file).ok();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool rejected the output:\n{report}\n{body}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoint_lists_pools_and_connections_with_call_sites() {
    let (_orders, _users, metrics) = two_pools().await;
    let srv = server::serve(metrics, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (head, body) = http_get(srv.local_addr(), "/status").await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let orders = &doc["pools"][0];
    assert_eq!(orders["pool"], "orders");
    assert_eq!(orders["state"]["open"], 2);
    let conns = orders["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    let lent = conns
        .iter()
        .find(|c| c["state"] == "lent")
        .expect("one lent connection");
    let site = lent["borrowed_at"].as_str().unwrap();
    assert!(site.starts_with("tests/metrics.rs:"), "{site}");
    assert!(lent["held_seconds"].as_f64().unwrap() >= 0.0);
    let idle = conns.iter().find(|c| c["state"] == "idle").unwrap();
    assert_eq!(idle["uses"], 2);
    assert!(idle["idle_seconds"].as_f64().is_some());
}

/// Kills the child process when the test ends, however it ends.
struct Reaper(Child, std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_the_pool_gauges() {
    let (_orders, _users, metrics) = two_pools().await;
    let srv = server::serve(metrics, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("vigil-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vigil\n    static_configs:\n      - targets: ['{}']\n",
        srv.local_addr()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus must be installed (Debian package `prometheus`); .ci/run installs it");
    let _reaper = Reaper(child, dir.clone());
    let prom: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = "/api/v1/query?query=vigil_connections%7Bpool%3D%22orders%22%7D";
    let started = std::time::Instant::now();
    let result = loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Prometheus never reported the series"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        if TcpStream::connect(prom).await.is_err() {
            continue;
        }
        let (_, body) = http_get(prom, query).await;
        let doc: serde_json::Value = match serde_json::from_str(&body) {
            Ok(doc) => doc,
            Err(_) => continue,
        };
        let result = doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if result.len() == 2 {
            break result;
        }
    };
    for sample in &result {
        let m = &sample["metric"];
        assert_eq!(m["__name__"], "vigil_connections");
        assert_eq!(m["job"], "vigil");
        let value = sample["value"][1].as_str().unwrap();
        match m["state"].as_str().unwrap() {
            "idle" | "active" => assert_eq!(value, "1", "{sample}"),
            other => panic!("unexpected state label {other}"),
        }
    }
    assert!(Path::new(&dir).exists());
}
