//! TLS for the tokio-postgres backend, negotiated by vigil itself so that
//! the session's watch ([`FatalWatch`](super::FatalWatch)) reads the
//! plaintext inside the TLS layer, not the ciphertext on the socket.
//!
//! libpq's words and meanings: `sslmode` is one of
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | if the server offers it, else plain | not checked |
//! | `require` | always | not checked, unless `sslrootcert` is given: then as `verify-ca` |
//! | `verify-ca` | always | signed by a CA in `sslrootcert` |
//! | `verify-full` | always | signed by a CA in `sslrootcert` and issued for the host name |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the
//! Mozilla root set (webpki-roots); without it the verify modes read
//! `~/.postgresql/root.crt`, as libpq does. `sslcert` and `sslkey` are a
//! client certificate and its key (PEM). The TLS stack is rustls with the
//! *ring* provider (feature `tls`): pure Rust plus *ring*'s C and assembly,
//! no OpenSSL and no cmake at build time; TLS 1.2 and 1.3.
//!
//! Without the feature, `disable` and `prefer` connect in plain text and
//! the other modes fail to connect, saying that the feature is missing.

use std::fmt;
use std::io;
#[cfg(feature = "tls")]
use std::path::{Path, PathBuf};
use std::pin::Pin;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
#[cfg(feature = "tls")]
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// libpq's `sslmode`; see [`TokioPgManager::from_url`](super::TokioPgManager::from_url)
/// and the backend's module docs for what each means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS if the server offers it, else plain text; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no session; the certificate is not checked (unless a root
    /// certificate is given: then as [`SslMode::VerifyCa`]).
    Require,
    /// TLS with a certificate signed by a trusted CA.
    VerifyCa,
    /// TLS with a certificate signed by a trusted CA and issued for the host.
    VerifyFull,
}

impl SslMode {
    /// Reads libpq's spelling (`disable`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`; `allow` is read as `prefer`).
    pub fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a session without TLS is refused.
    fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the backend speaks TLS: the mode, and (with the `tls` feature) the
/// rustls configuration it connects with.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    #[cfg(feature = "tls")]
    config: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("sslmode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PgTls {
    /// Plain text only (`sslmode=disable`).
    pub fn disabled() -> Self {
        PgTls {
            mode: SslMode::Disable,
            #[cfg(feature = "tls")]
            config: None,
        }
    }

    /// The mode in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Settings from libpq's parameters (`sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey`), as read from a connection string.
    ///
    /// # Errors
    /// A sentence naming what is wrong: a mode that needs the `tls`
    /// feature, a CA or client certificate file that cannot be read.
    pub(crate) fn from_params(
        mode: SslMode,
        rootcert: Option<&str>,
        cert: Option<&str>,
        key: Option<&str>,
    ) -> Result<Self, String> {
        #[cfg(feature = "tls")]
        {
            if mode == SslMode::Disable {
                return Ok(PgTls::disabled());
            }
            let roots = match rootcert {
                Some("system") => Some(Roots::System),
                Some(path) => Some(Roots::File(PathBuf::from(path))),
                None if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                    let default = home_root_cert().ok_or_else(|| {
                        format!(
                            "sslmode={mode} needs the CA to check the server's certificate \
                             against: sslrootcert=<PEM file> or sslrootcert=system \
                             (~/.postgresql/root.crt does not exist)"
                        )
                    })?;
                    Some(Roots::File(default))
                }
                None => None,
            };
            let client = match (cert, key) {
                (Some(cert), Some(key)) => Some((Path::new(cert), Path::new(key))),
                (None, None) => None,
                _ => return Err("sslcert and sslkey go together: give both or neither".into()),
            };
            let config = client_config(mode, roots.as_ref(), client)?;
            Ok(PgTls {
                mode,
                config: Some(Arc::new(config)),
            })
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (cert, key);
            if mode.requires_tls() || rootcert.is_some() {
                return Err(format!(
                    "sslmode={mode}{} needs TLS, and vigil was built without its `tls` feature",
                    rootcert.map_or(String::new(), |_| " with sslrootcert".into())
                ));
            }
            Ok(PgTls { mode })
        }
    }

    /// With a rustls configuration of the caller's (a custom root store, a
    /// client certificate, ...): TLS as `mode` says when to use it, the
    /// certificate checked as `config` says.
    #[cfg(feature = "tls")]
    pub fn with_config(mode: SslMode, config: Arc<rustls::ClientConfig>) -> Self {
        PgTls {
            mode,
            config: (mode != SslMode::Disable).then_some(config),
        }
    }

    /// Asks the server for TLS on `socket` (PostgreSQL's `SSLRequest`) and
    /// does the handshake, as the mode says; `host` is the name the
    /// certificate must be issued for (`verify-full`).
    #[cfg(feature = "tls")]
    pub(crate) async fn negotiate<S>(&self, host: &str, mut socket: S) -> io::Result<MaybeTls<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(config) = self.config.clone() else {
            if self.mode.requires_tls() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("TLS: sslmode={} without a TLS configuration", self.mode),
                ));
            }
            return Ok(MaybeTls::Plain(socket));
        };
        // Length 8, then the request code 80877103.
        socket
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await?;
        socket.flush().await?;
        match socket.read_u8().await? {
            b'S' => {}
            b'N' if !self.mode.requires_tls() => return Ok(MaybeTls::Plain(socket)),
            b'N' => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "TLS: the server does not accept TLS connections (sslmode={})",
                        self.mode
                    ),
                ))
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "TLS: unexpected answer {other:#04x} to the TLS request: \
                         not a PostgreSQL server?"
                    ),
                ))
            }
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TLS: `{host}` is not a valid server name: {e}"),
            )
        })?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, socket)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        Ok(MaybeTls::Tls(Box::new(stream)))
    }

    /// Without the `tls` feature: plain text, or a clear refusal for a mode
    /// that needs TLS.
    #[cfg(not(feature = "tls"))]
    pub(crate) async fn negotiate<S>(&self, _host: &str, socket: S) -> io::Result<MaybeTls<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.mode.requires_tls() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "TLS: sslmode={} needs TLS, and vigil was built without its `tls` feature",
                    self.mode
                ),
            ));
        }
        Ok(MaybeTls::Plain(socket))
    }

    /// For a manager built from tokio-postgres's own `Config`, whose
    /// `ssl_mode` means what it means to the driver: TLS only where a TLS
    /// connector is given, so `prefer` (its default) is plain text and
    /// `require` is TLS without a certificate check (or, without the `tls`
    /// feature, a connect that fails saying so). `with_tls` gives more.
    pub(crate) fn from_driver(mode: tokio_postgres::config::SslMode) -> Self {
        match mode {
            tokio_postgres::config::SslMode::Disable => PgTls::disabled(),
            tokio_postgres::config::SslMode::Require => {
                PgTls::from_params(SslMode::Require, None, None, None).unwrap_or(PgTls {
                    mode: SslMode::Require,
                    #[cfg(feature = "tls")]
                    config: None,
                })
            }
            _ => PgTls {
                mode: SslMode::Prefer,
                #[cfg(feature = "tls")]
                config: None,
            },
        }
    }
}

impl Default for PgTls {
    /// libpq's default, `sslmode=prefer`: TLS when the server offers it
    /// (with the `tls` feature), the certificate not checked.
    fn default() -> Self {
        PgTls::from_params(SslMode::Prefer, None, None, None)
            .expect("prefer without files needs nothing that can fail")
    }
}

/// A session's stream: the socket itself, or TLS over it.
pub(crate) enum MaybeTls<S> {
    Plain(S),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

impl<S> MaybeTls<S> {
    /// Whether the session is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        !matches!(self, MaybeTls::Plain(_))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

// ---------------------------------------------------------------- rustls

/// Where the CA certificates come from.
#[cfg(feature = "tls")]
enum Roots {
    File(PathBuf),
    /// Mozilla's root set, as webpki-roots ships it.
    System,
}

#[cfg(feature = "tls")]
fn home_root_cert() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
    path.exists().then_some(path)
}

#[cfg(feature = "tls")]
fn root_store(roots: &Roots) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Roots::System => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {}: no usable CA certificate in it",
                    path.display()
                ));
            }
        }
    }
    Ok(store)
}

#[cfg(feature = "tls")]
fn client_config(
    mode: SslMode,
    roots: Option<&Roots>,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match roots {
        // `prefer`, or `require` without a CA: encrypted, not authenticated.
        None => Arc::new(verify::Unchecked(provider)),
        Some(roots) => {
            let store = Arc::new(root_store(roots)?);
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                store,
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| format!("TLS: {e}"))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(verify::AnyName(webpki))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
    }
}

/// The two certificate checks libpq has and rustls does not spell out.
#[cfg(feature = "tls")]
mod verify {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    /// `prefer` / `require`: any certificate. The handshake's signatures
    /// are still checked, so the session is encrypted to whoever holds
    /// the certificate's key; who that is, is not checked.
    #[derive(Debug)]
    pub(super) struct Unchecked(pub(super) Arc<CryptoProvider>);

    impl ServerCertVerifier for Unchecked {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `verify-ca`: the chain must lead to a trusted CA; the name in the
    /// certificate is not compared with the host.
    #[derive(Debug)]
    pub(super) struct AnyName(pub(super) Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self.0.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}
