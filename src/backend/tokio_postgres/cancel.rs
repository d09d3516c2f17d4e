//! Stopping a statement a borrower left running: PostgreSQL's cancel
//! request.
//!
//! A request handler that gives up (a `tokio::time::timeout`, a client
//! that went away) drops its query's future mid-flight. The statement
//! keeps running on the server and its reply stays queued on the session,
//! so a rollback or a ping sent after it would wait behind it. PostgreSQL
//! stops a statement only on a cancel request: a new connection to the
//! same server that sends the session's process id and secret key (from
//! the `BackendKeyData` the watch read at startup). The statement then
//! answers `57014 query_canceled` and `ReadyForQuery`, which the session's
//! connection task reads and discards; once that has passed, the session
//! is clean and may be lent again.
//!
//! A cancel can arrive after the statement finished and hit the next one.
//! Two things keep it from doing so: the request is sent only while a
//! reply is still pending, and the pool sends nothing on the session until
//! the server has closed the cancel connection (it does so once it has
//! signalled the session's process) and the pending reply has passed.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;

use super::{PgClient, Seen, TokioPgManager, TARGET};
use crate::manager::Cleaned;

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cancelled {
    /// Nothing was sent (no key, no address, or the request failed).
    Unsupported,
    /// Nothing needed stopping: the pending reply arrived by itself.
    Settled,
    /// The statement was stopped and its reply has been drained.
    Drained,
    /// The statement was stopped, but the session ended with it.
    Stopped,
}

impl Cancelled {
    /// Whether a reset goes on with the session (`Ok`: whether a
    /// statement was stopped), or what it reports instead (`Err`).
    pub(super) fn go_on(self) -> Result<bool, Cleaned> {
        match self {
            Cancelled::Settled => Ok(false),
            Cancelled::Drained => Ok(true),
            Cancelled::Stopped => Err(Cleaned::Unusable {
                query_stopped: true,
            }),
            Cancelled::Unsupported => Err(Cleaned::Unusable {
                query_stopped: false,
            }),
        }
    }
}

/// What a reset that went on to the end reports.
pub(super) fn cleaned(stopped: bool) -> Cleaned {
    if stopped {
        Cleaned::QueryStopped
    } else {
        Cleaned::Ready
    }
}

/// Where a session's socket went.
#[derive(Debug, Clone)]
pub(super) enum Endpoint {
    /// The host name (for TLS) and the address it resolved to.
    Tcp { host: String, addr: SocketAddr },
    /// A Unix-domain socket.
    #[cfg_attr(not(unix), allow(dead_code))]
    Unix(PathBuf),
}

/// The CancelRequest message: length 16, code 80877102, process id, key.
fn request(key: u64) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&16u32.to_be_bytes());
    m[4..8].copy_from_slice(&80_877_102u32.to_be_bytes());
    m[8..].copy_from_slice(&key.to_be_bytes());
    m
}

/// How long a pending reply gets to arrive by itself before a cancel is
/// sent: a borrower that stopped reading a finished statement's reply (a
/// `query_one` whose last message is still on its way) needs no cancel.
const GRACE: Duration = Duration::from_millis(5);

/// Writes the request, then waits until the server has closed the cancel
/// connection (it does so once it has signalled the session's process, so
/// the signal can no longer reach a later statement) and the session has
/// no reply pending. Both, whichever comes first: pgbouncer closed the
/// *session* now and then (1 run in 3 in `tests/network/pgbouncer.rs`)
/// when the cancel connection was dropped before it had answered it.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    key: u64,
    seen: &Seen,
) -> io::Result<()> {
    stream.write_all(&request(key)).await?;
    stream.flush().await?;
    let mut rest = [0u8; 64];
    let closed = async {
        while stream.read(&mut rest).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let (closed, ()) = tokio::join!(closed, seen.settled());
    closed
}

impl TokioPgManager {
    /// Sends the cancel request for `conn`'s session and waits until its
    /// pending reply has passed. Bounded by the pool.
    pub(super) async fn cancel(&self, conn: &mut PgClient) -> Cancelled {
        let client = &conn.client;
        self.cancel_session(&conn.seen, conn.endpoint.clone(), || client.is_closed())
            .await
    }

    /// [`cancel`](Self::cancel) for a session known by its watch and its
    /// address (`closed`: whether the driver has seen it end), whoever
    /// holds its client (the diesel backend hands it to diesel).
    pub(super) async fn cancel_session(
        &self,
        seen: &Seen,
        endpoint: Option<Endpoint>,
        closed: impl Fn() -> bool,
    ) -> Cancelled {
        if tokio::time::timeout(GRACE, seen.settled()).await.is_ok() {
            return Cancelled::Settled;
        }
        let key = seen.key.load(Ordering::Acquire);
        let (Some(endpoint), true) = (endpoint, key != 0) else {
            return Cancelled::Unsupported;
        };
        let sent = match endpoint {
            Endpoint::Tcp { host, addr } => match self.within(TcpStream::connect(addr)).await {
                // As the session itself: inside TLS when it is.
                // No Nagle: the 16 bytes go out at once, behind the TLS
                // negotiation's own (measured: 40 ms later without).
                Ok(socket) => match socket
                    .set_nodelay(true)
                    .map(|()| self.within(self.tls.negotiate(&host, socket)))
                {
                    Err(e) => Err(e),
                    Ok(negotiated) => match negotiated.await {
                        Ok(stream) => send(stream, key, seen).await,
                        Err(e) => Err(e),
                    },
                },
                Err(e) => Err(e),
            },
            #[cfg(unix)]
            Endpoint::Unix(path) => match self.within(UnixStream::connect(path)).await {
                Ok(socket) => send(socket, key, seen).await,
                Err(e) => Err(e),
            },
            #[cfg(not(unix))]
            Endpoint::Unix(_) => return Cancelled::Unsupported,
        };
        if let Err(error) = sent {
            // debug: the pool retires the session instead, and says so.
            tracing::debug!(target: TARGET, %error, "cancel request not sent");
            return Cancelled::Unsupported;
        }
        // The session ended (a `FATAL`, the socket closed).
        if closed() || seen.fatal.load(Ordering::Acquire) || seen.ended.load(Ordering::Acquire) {
            Cancelled::Stopped
        } else {
            Cancelled::Drained
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cancel_request_is_laid_out_as_the_protocol_says() {
        let m = super::request(0x0000_1234_dead_beef);
        assert_eq!(
            m,
            [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef]
        );
    }
}
