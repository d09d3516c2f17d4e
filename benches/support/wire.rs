//! The counting proxy of `benches/liveness.rs`: every pool connects through
//! it, and it counts the round trips on the wire (see that file's docs).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::servers::Server;
// The bench's own setup statement, whose exchanges are counted apart.
use crate::MYSQL_SESSION_TIMEOUT;

/// What the proxy saw, over every connection of one case.
#[derive(Debug, Default)]
pub struct Wire {
    /// TCP sessions opened (each is one connect of the pool).
    pub connections: AtomicU64,
    /// Request/response exchanges carrying a command after the handshake,
    /// pings and resets included, the bench's own setup statement excluded.
    pub commands: AtomicU64,
    /// Of `commands`: pings (MySQL `COM_PING`; PostgreSQL a lone `Sync`,
    /// which is sqlx's ping).
    pub pings: AtomicU64,
    /// Of `commands`: MySQL `COM_RESET_CONNECTION`.
    pub resets: AtomicU64,
    /// Exchanges during connect and authentication.
    pub handshake: AtomicU64,
    /// The bench's own `SET SESSION wait_timeout` exchanges.
    pub setup: AtomicU64,
    /// Local ports of the proxy's open upstream sessions: how the server
    /// knows the pool's sessions (PostgreSQL `client_port`, MariaDB's
    /// `host:port`), so the hot-kill workload ends only this pool's.
    pub ports: std::sync::Mutex<Vec<u16>>,
}

impl Wire {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Handshake,
    Quit,
    Ping,
    Reset,
    Setup,
    Command,
    /// Has no reply (`COM_STMT_CLOSE`): the next message decides what the
    /// exchange was.
    NoReply,
}

/// Frames the client's side of one session, enough to classify each
/// exchange by its first message. Headers are gathered byte by byte (at most
/// 8 bytes, or 29 for a MySQL `COM_QUERY`); bodies are skipped in bulk.
struct Framer {
    server: Server,
    head: Vec<u8>,
    skip: usize,
    /// PostgreSQL: the untyped startup message has been seen.
    started: bool,
    /// The client spoke after the server: its next message opens an exchange.
    fresh: bool,
}

impl Framer {
    fn new(server: Server) -> Self {
        Framer {
            server,
            head: Vec::with_capacity(32),
            skip: 0,
            started: false,
            fresh: false,
        }
    }

    fn feed(&mut self, mut data: &[u8], wire: &Wire) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            let parsed = match self.server {
                Server::Maria => self.mysql_head(),
                Server::Pg => self.pg_head(),
            };
            if let Some((msg, rest)) = parsed {
                self.head.clear();
                self.skip = rest;
                if self.fresh && msg != Msg::NoReply {
                    self.fresh = false;
                    match msg {
                        Msg::Handshake => Wire::bump(&wire.handshake),
                        Msg::Setup => Wire::bump(&wire.setup),
                        Msg::Quit | Msg::NoReply => {}
                        Msg::Ping | Msg::Reset | Msg::Command => {
                            Wire::bump(&wire.commands);
                            if msg == Msg::Ping {
                                Wire::bump(&wire.pings);
                            }
                            if msg == Msg::Reset {
                                Wire::bump(&wire.resets);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A MySQL packet: 3-byte length, sequence id, then (sequence 0 only: a
    /// command) the command byte. `(message, body bytes left to skip)`.
    fn mysql_head(&self) -> Option<(Msg, usize)> {
        let h = &self.head;
        if h.len() < 4 {
            return None;
        }
        let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
        if h[3] != 0 {
            // Handshake response, auth switch: commands always start at 0.
            return Some((Msg::Handshake, len));
        }
        if len == 0 {
            return Some((Msg::Command, 0));
        }
        if h.len() < 5 {
            return None;
        }
        const COM_QUIT: u8 = 0x01;
        const COM_QUERY: u8 = 0x03;
        const COM_PING: u8 = 0x0e;
        const COM_STMT_CLOSE: u8 = 0x19;
        const COM_RESET_CONNECTION: u8 = 0x1f;
        let msg = match h[4] {
            COM_QUERY => {
                // Enough of the text to recognise the bench's own setup.
                let want = 5 + (len - 1).min(MYSQL_SESSION_TIMEOUT.len());
                if h.len() < want {
                    return None;
                }
                let text = &h[5..want];
                let setup = text.eq_ignore_ascii_case(MYSQL_SESSION_TIMEOUT.as_bytes());
                let msg = if setup { Msg::Setup } else { Msg::Command };
                return Some((msg, len - (want - 4)));
            }
            COM_QUIT => Msg::Quit,
            COM_PING => Msg::Ping,
            COM_RESET_CONNECTION => Msg::Reset,
            COM_STMT_CLOSE => Msg::NoReply,
            _ => Msg::Command,
        };
        Some((msg, len - 1))
    }

    /// A PostgreSQL message: untyped (length, code) until the startup
    /// message, then tag + length.
    fn pg_head(&mut self) -> Option<(Msg, usize)> {
        let h = &self.head;
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if !self.started {
            if h.len() < 8 {
                return None;
            }
            const PROTOCOL_3: usize = 196_608;
            if be(&h[4..8]) == PROTOCOL_3 {
                self.started = true;
            }
            return Some((Msg::Handshake, be(&h[0..4]).saturating_sub(8)));
        }
        if h.len() < 5 {
            return None;
        }
        let msg = match h[0] {
            b'p' => Msg::Handshake,
            b'X' => Msg::Quit,
            b'S' => Msg::Ping,
            _ => Msg::Command,
        };
        Some((msg, be(&h[1..5]).saturating_sub(4)))
    }
}

/// Listens on 127.0.0.1 and forwards every session to `upstream`, counting
/// into `wire`. Lives as long as the runtime it was started on.
pub async fn start_proxy(server: Server, upstream: String, wire: Arc<Wire>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let Ok(upstream) = TcpStream::connect(&upstream).await else {
                continue; // the client sees its connection closed
            };
            Wire::bump(&wire.connections);
            let port = upstream.local_addr().map(|a| a.port()).unwrap_or(0);
            wire.ports.lock().expect("ports").push(port);
            let wire = Arc::clone(&wire);
            tokio::spawn(async move {
                relay(server, client, upstream, Arc::clone(&wire)).await;
                wire.ports.lock().expect("ports").retain(|p| *p != port);
            });
        }
    });
    addr
}

/// Copies both ways. A close from either side is passed on at once (a
/// session the server ended reads as ended to the client, as it would
/// without the proxy), so checks like mysql_async's zero-round-trip socket
/// check still see it.
async fn relay(server: Server, client: TcpStream, upstream: TcpStream, wire: Arc<Wire>) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = upstream.into_split();
    // Set by the server side before it forwards anything, so the client's
    // next bytes are known to open a new exchange. The MySQL server speaks
    // first; a PostgreSQL client does: start at `true` for both.
    let server_spoke = AtomicBool::new(true);
    let up = async {
        let mut framer = Framer::new(server);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if server_spoke.swap(false, Ordering::AcqRel) {
                framer.fresh = true;
            }
            framer.feed(&buf[..n], &wire);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            server_spoke.store(true, Ordering::Release);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
