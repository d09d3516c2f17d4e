//! A fault-injecting TCP proxy on loopback, between a pool and a real server.
//!
//! Each accepted connection (a *link*) is forwarded to the upstream server
//! byte for byte until the test says otherwise. On command the proxy can:
//!
//! - **reset** every link: `SO_LINGER 0` on both sockets, then close them, so
//!   both the pool and the server see a TCP RST (a load balancer or NAT that
//!   drops the flow and answers the next packet with a reset);
//! - **black-hole** links: bytes are read and thrown away in both directions,
//!   nothing is answered and nothing is closed (a NAT or firewall that forgot
//!   the flow and drops its packets silently). A black-holed link never
//!   heals, like a forgotten NAT entry; when the pool finally closes its
//!   socket, the proxy closes the upstream one so the server ends the session
//!   (a real black hole would leave it to the server's own timeouts; the
//!   tests count server sessions and should not have to wait for those);
//! - **black-hole new links**: accepted, never connected upstream (a host
//!   that completes the TCP handshake and then answers nothing);
//! - **refuse** new links: accepted and reset at once (the closest a
//!   listening socket can come to "connection refused");
//! - add **latency**: every chunk is held back this long before it is
//!   forwarded, in both directions (a request and its answer pay it twice);
//! - **cut idle links**: a link silent in both directions for a set time is
//!   black-holed (or reset) at its next byte, as a NAT or load balancer
//!   that expires idle flows does, on its own schedule and unannounced.
//!
//! It counts accepted links, i.e. the pool's connect attempts.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One forwarded connection, as the test can reach it.
struct Link {
    /// Throw bytes away in both directions from now on.
    holed: AtomicBool,
    /// Tells the link's task to reset both sockets.
    reset: Notify,
    /// Local port of the upstream socket: the client port the server sees
    /// for this session (`inet_client_port()`, the processlist `HOST`).
    upstream_port: AtomicU16,
    /// When a byte last passed either way, in ms since `Control::epoch`.
    last_active_ms: AtomicU64,
}

/// What the proxy does to a link that was idle past its cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // the fault suite does not cut idle links; tests/network does
pub enum IdleCut {
    /// Drop its packets silently from then on (AWS NLB, Azure LB by default).
    BlackHole,
    /// Reset both ends (a middlebox that answers a forgotten flow with RST).
    Reset,
}

#[derive(Default)]
struct Control {
    refuse: AtomicBool,
    hole_new: AtomicBool,
    latency_us: AtomicU64,
    /// Connections accepted (the pool's connect attempts), refused ones included.
    accepted: AtomicU64,
    /// Accepted connections whose upstream connect failed (server down).
    upstream_failures: AtomicU64,
    next_id: AtomicU64,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    /// Links idle this long are cut (ms; 0 = never), as `idle_reset` says.
    idle_cutoff_ms: AtomicU64,
    idle_reset: AtomicBool,
    /// Links cut for being idle.
    idle_cuts: AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl Control {
    fn now_ms(&self) -> u64 {
        let epoch = self.epoch.get_or_init(std::time::Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A running proxy; dropping it stops accepting and resets every link.
pub struct Proxy {
    addr: SocketAddr,
    ctl: Arc<Control>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let ctl = Arc::new(Control::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&ctl)));
        Proxy { addr, ctl, accept }
    }

    /// Where the pool should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far (every connect attempt the pool made).
    pub fn accepted(&self) -> u64 {
        self.ctl.accepted.load(SeqCst)
    }

    /// Accepted connections whose upstream connect failed.
    pub fn upstream_failures(&self) -> u64 {
        self.ctl.upstream_failures.load(SeqCst)
    }

    /// Resets every open link (RST to both ends) and returns once all are
    /// gone; returns how many there were.
    pub async fn reset_all(&self) -> usize {
        let links: Vec<(u64, Arc<Link>)> = self
            .ctl
            .links
            .lock()
            .iter()
            .map(|(id, l)| (*id, Arc::clone(l)))
            .collect();
        for (_, link) in &links {
            // `notify_one` stores a permit if the task is not waiting yet.
            link.reset.notify_one();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let remaining = {
                let open = self.ctl.links.lock();
                links.iter().filter(|(id, _)| open.contains_key(id)).count()
            };
            if remaining == 0 {
                return links.len();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "proxy: {remaining} links did not reset within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Black-holes every open link; returns how many.
    pub fn black_hole_all(&self) -> usize {
        let links = self.ctl.links.lock();
        for link in links.values() {
            link.holed.store(true, SeqCst);
        }
        links.len()
    }

    /// Black-holes the link whose upstream socket has local port `port`
    /// (the client port the server reports for the session).
    pub fn black_hole_port(&self, port: u16) {
        let links = self.ctl.links.lock();
        let link = links
            .values()
            .find(|l| l.upstream_port.load(SeqCst) == port)
            .unwrap_or_else(|| panic!("proxy: no open link with upstream port {port}"));
        link.holed.store(true, SeqCst);
    }

    /// New links are accepted and then answer nothing (until turned off).
    pub fn set_black_hole_new(&self, on: bool) {
        self.ctl.hole_new.store(on, SeqCst);
    }

    /// New links are accepted and reset at once (until turned off).
    pub fn set_refuse(&self, on: bool) {
        self.ctl.refuse.store(on, SeqCst);
    }

    /// From now on, a link silent in both directions for `after` is cut at
    /// its next byte, as `how` says; `None` stops cutting.
    #[allow(dead_code)] // see `IdleCut`
    pub fn set_idle_cutoff(&self, after: Option<Duration>, how: IdleCut) {
        let ms = after.map_or(0, |d| {
            u64::try_from(d.as_millis()).expect("a sane cutoff").max(1)
        });
        self.ctl.idle_reset.store(how == IdleCut::Reset, SeqCst);
        self.ctl.idle_cutoff_ms.store(ms, SeqCst);
    }

    /// Links cut so far for being idle past the cutoff.
    #[allow(dead_code)] // see `IdleCut`
    pub fn idle_cuts(&self) -> u64 {
        self.ctl.idle_cuts.load(SeqCst)
    }

    /// Holds every chunk back this long, in both directions, on every link.
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).expect("a sane latency");
        self.ctl.latency_us.store(us, SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.ctl.links.lock().values() {
            link.reset.notify_one();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, ctl: Arc<Control>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // EMFILE and the like: keep serving, the test will see failures.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        ctl.accepted.fetch_add(1, SeqCst);
        if ctl.refuse.load(SeqCst) {
            rst(client);
            continue;
        }
        tokio::spawn(serve(client, upstream, Arc::clone(&ctl)));
    }
}

/// Closes with a TCP RST instead of a FIN.
///
/// tokio deprecates `set_linger` because a *non-zero* linger makes `close`
/// block the thread; with a zero linger `close` never blocks: the kernel
/// drops the buffers and sends the RST at once, which is the point here.
#[allow(deprecated)]
fn rst(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Removes a link from the registry when its task ends, however it ends.
struct Registered<'a> {
    ctl: &'a Control,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.ctl.links.lock().remove(&self.id);
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, ctl: Arc<Control>) {
    let link = Arc::new(Link {
        holed: AtomicBool::new(ctl.hole_new.load(SeqCst)),
        reset: Notify::new(),
        upstream_port: AtomicU16::new(0),
        last_active_ms: AtomicU64::new(ctl.now_ms()),
    });
    let id = ctl.next_id.fetch_add(1, SeqCst);
    ctl.links.lock().insert(id, Arc::clone(&link));
    let _registered = Registered { ctl: &ctl, id };
    let _ = client.set_nodelay(true);

    if link.holed.load(SeqCst) {
        // Never connected upstream: swallow what the client sends until it
        // gives up (EOF) or the test resets the link.
        let mut buf = vec![0u8; 4096];
        let swallow = async {
            loop {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::select! {
            _ = swallow => {}
            _ = link.reset.notified() => rst(client),
        }
        return;
    }

    let mut server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => {
            // The server is down: the client sees its connect reset.
            ctl.upstream_failures.fetch_add(1, SeqCst);
            rst(client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    if let Ok(local) = server.local_addr() {
        link.upstream_port.store(local.port(), SeqCst);
    }

    let outcome = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = pump(&mut cr, &mut sw, &ctl, &link, true);
        let down = pump(&mut sr, &mut cw, &ctl, &link, false);
        tokio::select! {
            _ = link.reset.notified() => Outcome::Reset,
            r = async { tokio::try_join!(up, down) } => match r {
                Ok(_) => Outcome::Closed,
                Err(_) => Outcome::Failed,
            },
        }
    };
    match outcome {
        // Both directions ended with a FIN, already forwarded.
        Outcome::Closed => {}
        // A reset on command, or one side failed: reset both ends, as a
        // middlebox that lost the flow would.
        Outcome::Reset | Outcome::Failed => {
            rst(client);
            rst(server);
        }
    }
}

enum Outcome {
    Closed,
    Reset,
    Failed,
}

/// Copies one direction. `to_server`: the client → server direction, whose
/// EOF is always forwarded (so the server ends the session when the pool
/// closes a black-holed connection); the server's EOF is forwarded only on a
/// link that is not black-holed.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    ctl: &Control,
    link: &Link,
    to_server: bool,
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            if to_server || !link.holed.load(SeqCst) {
                to.shutdown().await?;
            }
            return Ok(());
        }
        let now = ctl.now_ms();
        let cutoff = ctl.idle_cutoff_ms.load(SeqCst);
        let last = link.last_active_ms.swap(now, SeqCst);
        if cutoff > 0 && now.saturating_sub(last) >= cutoff && !link.holed.load(SeqCst) {
            ctl.idle_cuts.fetch_add(1, SeqCst);
            if ctl.idle_reset.load(SeqCst) {
                link.reset.notify_one();
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "idle cut"));
            }
            link.holed.store(true, SeqCst);
        }
        let latency = ctl.latency_us.load(SeqCst);
        if latency > 0 && !link.holed.load(SeqCst) {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        if link.holed.load(SeqCst) {
            continue;
        }
        to.write_all(&buf[..n]).await?;
    }
}
