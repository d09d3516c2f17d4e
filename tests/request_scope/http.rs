//! A plain HTTP/1.1 client and server for the tests: the app on an
//! ephemeral loopback port, raw GET requests, and a panic catcher.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `app` on an ephemeral loopback port in a background task.
pub(crate) async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("axum serve");
    });
    addr
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
}

pub(crate) fn request_bytes(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// A plain HTTP/1.1 GET; `Err` when the server closed the connection
/// without a response (a handler panic nobody caught).
pub(crate) async fn try_get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(request_bytes(addr, path).as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if buf.is_empty() {
        return Err("the server closed the connection without a response".into());
    }
    let text = String::from_utf8(buf).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(Reply {
        status,
        body: body.to_owned(),
    })
}

pub(crate) async fn get_ok(addr: SocketAddr, path: &str) -> String {
    let reply = try_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    reply.body
}

/// Answers a panic in the inner service with a 500, as tower-http's
/// `CatchPanicLayer` would: the panic unwinds through the scope's future,
/// which is dropped after `catch_unwind` returns.
pub(crate) async fn catch_panic(req: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "handler panicked").into_response(),
    }
}
