//! TLS termination with a deadline on the whole handshake, ALPN, and certificates that
//! reload without a restart: [`TlsLayer`] turns each `Conn<IO>` into a
//! `Conn<TlsStream<IO>>` for the layers and the protocol below it.
//!
//! - **Handshake deadline**: a client has [10 s](TlsBuilder::handshake_timeout) from
//!   the connection's start to finish its handshake, not merely to begin it, so half a
//!   ClientHello followed by silence, or a ClientHello trickled a byte a second, is cut
//!   then. A handshake that fails or runs out of time fails the connection with a
//!   [`TlsError`] (downcast it from the `BoxError`), is counted in
//!   [`stats`](TlsLayer::stats), and is logged at most once a second. A connection
//!   asked to close while its handshake is still under way (the server's drain) is
//!   closed at once ([`TlsError::CloseRequested`], no offence): it has sent no request.
//! - **ALPN**: `h2` and `http/1.1` are [offered](TlsBuilder::alpn); the
//!   [HTTP adapter](crate::http) serves HTTP/2 to a client that agreed on `h2` without
//!   detecting it. The server name the client asked for (SNI) and the agreed protocol
//!   are in the connection's [`TlsInfo`] extension, and so in every HTTP request's.
//! - **Certificates** come from PEM files or memory as a [`ServerCertificate`], whose
//!   clones reload it: new handshakes present the new certificate, established
//!   connections keep theirs. A hand-built rustls `ServerConfig`
//!   ([`builder_with_config`](TlsLayer::builder_with_config)) serves whatever it is
//!   built for.
//! - **Crypto**: rustls with the `ring` provider, set explicitly on the `ServerConfig`
//!   it builds (a process-wide default is neither needed nor touched). `ring` builds
//!   with a C compiler alone; rustls' default, aws-lc-rs, also needs cmake.
//!
//! # Where it goes in the stack
//!
//! Outermost first: PROXY protocol, bans, rates, caps, **TLS**, timeouts, login
//! session, HTTP adapter.
//!
//! - Below the admission layers, so that a banned or rate-limited peer is refused
//!   before the server pays for a handshake (a signature and a key exchange each).
//! - Above the [timeouts](crate::timeout), so that they count decrypted bytes: the
//!   first-byte timeout waits for the first byte of a request, not of a ClientHello;
//!   a request's timer starts and stops on request bytes, not on TLS records; and the
//!   HTTP adapter, which declares when a connection is idle (no request open) and
//!   follows HTTP/2's frames for the request timeout and slow readers, reads the very
//!   bytes the timer counts. The handshake is then outside the timeouts, which is why
//!   it has a deadline of its own.
//!
//! Set `TCP_NODELAY` on the sockets, as the example's first layer does: rustls writes
//! its session tickets once the handshake is done, and with Nagle's algorithm the first
//! response then waits until the client acknowledges them, up to 40 ms on Linux.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tokio::{
//!     net::{TcpListener, TcpStream},
//!     signal::unix::{SignalKind, signal},
//! };
//! use tower::ServiceBuilder;
//! use tower_bouncer::{
//!     Conn,
//!     http::HttpService,
//!     limit::ConnectionLimitLayer,
//!     serve::Server,
//!     timeout::TimeoutLayer,
//!     tls::{ServerCertificate, TlsLayer},
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! const CHAIN: &str = "/etc/tls/fullchain.pem";
//! const KEY: &str = "/etc/tls/privkey.pem";
//! let certificate = ServerCertificate::from_pem_files(CHAIN, KEY)?;
//!
//! // Renewed files are presented to new connections after a SIGHUP.
//! let mut hangups = signal(SignalKind::hangup())?;
//! let reloaded = certificate.clone();
//! tokio::spawn(async move {
//!     while hangups.recv().await.is_some() {
//!         if let Err(error) = reloaded.reload_from_pem_files(CHAIN, KEY) {
//!             eprintln!("certificate not reloaded: {error}");
//!         }
//!     }
//! });
//!
//! let app = Router::new().route("/", get(|| async { "hello over TLS\n" }));
//! let connections = ServiceBuilder::new()
//!     .map_request(|conn: Conn<TcpStream>| {
//!         conn.io().set_nodelay(true).ok();
//!         conn
//!     })
//!     .layer(ConnectionLimitLayer::builder(4096).build()?)
//!     .layer(TlsLayer::builder(certificate).build()?)
//!     .layer(
//!         TimeoutLayer::builder()
//!             .first_byte(Duration::from_secs(10))
//!             .idle(Duration::from_secs(60))
//!             .request(Duration::from_secs(10))
//!             .build()?,
//!     )
//!     .service(HttpService::new(app));
//!
//! let listener = TcpListener::bind("0.0.0.0:443").await?;
//! Server::new(listener).serve(connections).await?;
//! # Ok(())
//! # }
//! ```

mod certificate;
mod future;
mod layer;
mod service;

use std::{error::Error, fmt, io, sync::Arc, time::Duration};

pub use certificate::{CertificateError, ServerCertificate};
pub use future::ResponseFuture;
pub use layer::{TlsBuilder, TlsLayer, TlsStats};
pub use service::Tls;
/// The rustls this layer is built on, for a `ServerConfig` built by hand.
pub use tokio_rustls::rustls;
pub use tokio_rustls::server::TlsStream;

/// Why a connection's TLS handshake did not complete. The connection's `BoxError`
/// downcasts to it.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// The handshake was not complete this long after the connection started.
    Timeout(Duration),
    /// The client broke TLS's rules, sent something other than TLS, or had nothing in
    /// common with the server's settings (protocol versions, cipher suites, ALPN
    /// protocols).
    Protocol(rustls::Error),
    /// The connection closed or failed before the handshake was complete.
    Io(io::Error),
    /// The connection was asked to close (the server drains) before its handshake was
    /// complete. It had sent no request, so nothing is lost, and it is no offence.
    CloseRequested,
}

impl TlsError {
    /// Sorts tokio-rustls' error, which carries rustls' own inside an `io::Error`.
    fn from_handshake(error: io::Error) -> Self {
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(refused) => TlsError::Protocol(refused.clone()),
            None => TlsError::Io(error),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Timeout(limit) => {
                write!(f, "TLS handshake not complete within {limit:?}")
            }
            TlsError::Protocol(error) => write!(f, "TLS handshake refused: {error}"),
            TlsError::Io(error) => write!(f, "connection lost during the TLS handshake: {error}"),
            TlsError::CloseRequested => {
                f.write_str("asked to close before its TLS handshake was complete")
            }
        }
    }
}

impl Error for TlsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            TlsError::Timeout(_) | TlsError::CloseRequested => None,
            TlsError::Protocol(error) => Some(error),
            TlsError::Io(error) => Some(error),
        }
    }
}

/// What a connection's TLS handshake settled: the server name the client asked for
/// (SNI) and the application protocol agreed on (ALPN).
///
/// [`TlsLayer`] puts one in each connection's extensions, and the HTTP adapter hands it
/// to every request, where a handler reads it with `ConnExtensions::get::<TlsInfo>()`.
/// Cheap to clone: a connection's requests share one.
#[derive(Debug, Clone)]
pub struct TlsInfo(Arc<Negotiated>);

#[derive(Debug)]
struct Negotiated {
    server_name: Option<Box<str>>,
    alpn: Option<Box<[u8]>>,
}

impl TlsInfo {
    fn new(server_name: Option<&str>, alpn: Option<&[u8]>) -> Self {
        Self(Arc::new(Negotiated {
            server_name: server_name.map(Into::into),
            alpn: alpn.map(Into::into),
        }))
    }

    /// The host name the client asked for (SNI); `None` if it sent none, as clients
    /// that connect to an IP address do.
    pub fn server_name(&self) -> Option<&str> {
        self.0.server_name.as_deref()
    }

    /// The application protocol agreed on (`b"h2"`, `b"http/1.1"`); `None` if the
    /// client offered none.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.0.alpn.as_deref()
    }
}
