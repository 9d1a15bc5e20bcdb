//! The real client behind a load balancer: reads a [PROXY protocol] header (version 1 or
//! 2) from trusted balancers and makes the client's address the connection's peer
//! address, so that every keyed layer below (per-peer cap, rates, bans, sessions) and
//! every handler (axum's `ConnectInfo`, tonic's `remote_addr`) sees the client, not the
//! balancer.
//!
//! # Trust
//!
//! A header is honoured only from the [trusted](ProxyProtocolBuilder::trusted)
//! networks, and a layer cannot be built without one. From them a header is required
//! by default: a trusted source that sends none is refused, as nginx and HAProxy's
//! `accept-proxy` refuse it; [`optional_from_trusted`](ProxyProtocolBuilder::optional_from_trusted)
//! lets their connections come without one, the first bytes then reaching the protocol
//! as sent. From any other source nothing is read, and a header is protocol data like
//! any other byte, unless [`refuse_untrusted_headers`](ProxyProtocolBuilder::refuse_untrusted_headers)
//! has such connections refused.
//!
//! # Bounds
//!
//! The header must be complete within the [timeout](ProxyProtocolBuilder::timeout) (5 s
//! by default, from the first read that finds it incomplete: the connection's first
//! poll, at once under the accept loop; a header whole in that read reads no clock)
//! and within its size: the spec's 107 bytes for version 1, and for version 2, 16 bytes
//! and a payload of at most [`max_v2_len`](ProxyProtocolBuilder::max_v2_len) (4096 by
//! default), refused as soon as its length is read. TLVs are skipped. Bytes read past
//! the header are given back to the protocol first by the [`Rewind`] stream it reads
//! from: nothing is lost and nothing is read twice.
//!
//! At most [`max_reading`](ProxyProtocolBuilder::max_reading) connections read their
//! header at once (1024 by default): at that cap, a new connection closes the one that
//! has waited longest for its header. The layer goes before any cap counts a
//! connection (below), so this is what bounds the descriptors that slow headers hold.
//! Connections from other sources read to refuse a header are capped apart, at the same
//! number, so that a crowd of them never closes a balancer's.
//!
//! # What the protocol sees
//!
//! After a header naming a TCP client, [`Conn::peer_addr`](crate::Conn::peer_addr) is
//! the client and [`Conn::local_addr`](crate::Conn::local_addr) the address the client
//! connected to (the balancer's front end), as HAProxy takes both; [`Conn::info`](crate::Conn::info),
//! and so the HTTP adapter, report the same. A [`ProxiedBy`] extension keeps the
//! socket's own addresses. A header that names no client (version 2 `LOCAL`, as in
//! health checks, version 1 `UNKNOWN`, UNIX sockets, UDP or unspecified families) keeps
//! the socket's addresses, and still leaves a [`ProxiedBy`]. The accept loop's tracing
//! span, made before any layer runs, names the balancer.
//!
//! A refused connection is closed without a message, and its future fails with a
//! [`ProxyProtocolError`]; refusals are counted in [`stats`](ProxyProtocolLayer::stats)
//! and logged at most once a second.
//!
//! # Where it goes
//!
//! On a listener behind a balancer the client is known only once the header is read, so
//! this layer goes first, and everything keyed on the peer after it: bans, rates, caps,
//! then TLS, timeouts, the login session and the application. The inner service is
//! called only once the header is read, with the rewritten connection, so a banned
//! client is refused even though its balancer is not. The connections still sending
//! their header are bounded by [`max_reading`](ProxyProtocolBuilder::max_reading).
//!
//! A connection cap in backpressure mode below this layer holds the accept loop while
//! it is full, but it counts a connection only once its header is read: a burst
//! through the balancer larger than the room left is accepted whole, and what does not
//! fit once read is refused, not left in the backlog. Holding a slot from accept
//! instead would let connections that send no header fill the cap and stop the loop
//! (where `max_reading` has a newcomer close the oldest of them).
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_bouncer::{
//!     limit::ConnectionLimitLayer, login::Login, peer_limit::PeerLimitLayer,
//!     proxy_protocol::ProxyProtocolLayer, rate_limit::{Rate, RateLimitLayer},
//!     timeout::TimeoutLayer,
//! };
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let app = tower::service_fn(|_: tower_bouncer::Conn<_>| async { Ok::<_, std::io::Error>(()) });
//! let login = Login::builder().build()?;
//! let behind_a_balancer = ServiceBuilder::new()
//!     .layer(ProxyProtocolLayer::builder().trusted(["10.0.0.0/24".parse()?]).build()?)
//!     .layer(login.ban_layer())
//!     .layer(RateLimitLayer::builder().per_peer(Rate::per_second(20)).build()?)
//!     .layer(PeerLimitLayer::builder(32).build()?)
//!     .layer(ConnectionLimitLayer::builder(4096).build()?)
//!     .layer(TimeoutLayer::builder().first_byte(Duration::from_secs(10)).build()?)
//!     .layer(login.session_layer())
//!     .service(app);
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # tower_bouncer::serve::Server::new(listener).serve(behind_a_balancer).await?;
//! # Ok(())
//! # }
//! ```
//!
//! With the kernel ban filter (Linux, `Bans::kernel_filter`), tell it the trusted
//! networks, `kernel.set_balancers(proxy.trusted().iter().copied())`: it drops a
//! key's whole network, and one that holds a balancer (a banned neighbour in its /64)
//! would cut off every client behind it. The [`Bouncer`](crate::bouncer::Bouncer) does.
//!
//! A listener the clients reach directly has no PROXY layer, and its bans go first.
//!
//! # Example
//!
//! ```
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tower::{Service, ServiceExt};
//! use tower_bouncer::{Conn, proxy_protocol::{ProxiedBy, ProxyProtocolLayer, Rewind}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let proxy = ProxyProtocolLayer::builder()
//!     .trusted(["10.0.0.0/24".parse().unwrap()])
//!     .build()
//!     .unwrap();
//! let protocol = tower::service_fn(|mut conn: Conn<Rewind<tokio::io::DuplexStream>>| async move {
//!     let balancer = conn.extensions().get::<ProxiedBy>().unwrap().balancer;
//!     let mut request = String::new();
//!     conn.io_mut().read_to_string(&mut request).await?;
//!     assert_eq!(conn.peer_addr().to_string(), "192.0.2.7:40000");
//!     assert_eq!(balancer.to_string(), "10.0.0.2:50000");
//!     assert_eq!(request, "hello");
//!     Ok::<_, std::io::Error>(())
//! });
//! let mut service = tower::Layer::layer(&proxy, protocol);
//!
//! let (server_side, mut balancer_side) = tokio::io::duplex(256);
//! balancer_side
//!     .write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nhello")
//!     .await
//!     .unwrap();
//! drop(balancer_side);
//! let conn = Conn::new(
//!     server_side,
//!     "10.0.0.2:50000".parse().unwrap(),
//!     "10.0.0.9:8443".parse().unwrap(),
//! );
//! service.ready().await.unwrap().call(conn).await.unwrap();
//! assert_eq!(proxy.stats().proxied, 1);
//! # }
//! ```
//!
//! # Differences from other implementations
//!
//! - HAProxy's `accept-proxy` (on a `bind` line) requires a header on every connection
//!   of the listener; accepting it from some sources only takes a
//!   `tcp-request connection expect-proxy layer4 if <acl>` rule. Here the trusted
//!   networks are part of the configuration.
//! - nginx's `listen ... proxy_protocol` requires a header on every connection; which
//!   sources' addresses are believed is the realip module's `set_real_ip_from`.
//! - rama's `HaProxyLayer` honours a header from any source, decides in its `peek` mode
//!   from one read of at most 12 bytes, and keeps the socket's peer, recording the
//!   client in a `Forwarded` extension.
//!
//! [PROXY protocol]: https://www.haproxy.org/download/1.8/doc/proxy-protocol.txt

mod header;
mod io;
mod layer;
mod readers;
mod service;

use std::{error::Error, fmt, net::SocketAddr, time::Duration};

pub use io::Rewind;
pub use layer::{ProxyProtocolBuilder, ProxyProtocolLayer, ProxyProtocolStats};
pub use service::{ProxyProtocol, ResponseFuture};

/// Left in a connection's extensions when a trusted balancer's header was read: the
/// socket's own addresses, which the header replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ProxiedBy {
    /// The socket's peer: the balancer that sent the header.
    pub balancer: SocketAddr,
    /// The socket's local address: where the balancer's connection was accepted.
    pub accepted_on: SocketAddr,
}

/// Why a [`ProxyProtocolLayer`] closed a connection. The connection's future fails with
/// it, inside the [`BoxError`](crate::BoxError): downcast to read it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyProtocolError {
    /// A trusted source sent something other than a PROXY header, where one is required.
    Missing,
    /// An untrusted source sent a PROXY signature, with
    /// [`refuse_untrusted_headers`](ProxyProtocolBuilder::refuse_untrusted_headers).
    UntrustedHeader,
    /// The header is not valid PROXY protocol.
    Malformed {
        /// 1 or 2.
        version: u8,
        /// What is wrong with it.
        reason: String,
    },
    /// A version 2 signature followed by a version other than 2.
    UnsupportedVersion(u8),
    /// The header is longer than allowed: a version 1 line without its CRLF in 107
    /// bytes, or a version 2 payload longer than
    /// [`max_v2_len`](ProxyProtocolBuilder::max_v2_len).
    TooLong {
        /// 1 or 2.
        version: u8,
        /// The limit: the whole line for version 1, the payload for version 2.
        max: usize,
    },
    /// The header was not complete within this timeout.
    TimedOut(Duration),
    /// The source closed the connection after sending this many bytes, before a header
    /// was complete.
    Incomplete {
        /// The bytes received.
        received: usize,
    },
    /// Closed to make room for a newer connection: [`max_reading`](ProxyProtocolBuilder::max_reading)
    /// connections were reading their header, and this one had waited longest.
    Evicted {
        /// The cap on connections reading their header.
        max: usize,
    },
    /// The connection was asked to close (the server drains) before its header was
    /// complete.
    CloseRequested,
    /// Reading the header failed.
    Io(std::io::Error),
}

impl fmt::Display for ProxyProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyProtocolError::Missing => f.write_str("a trusted source sent no PROXY header"),
            ProxyProtocolError::UntrustedHeader => {
                f.write_str("an untrusted source sent a PROXY header")
            }
            ProxyProtocolError::Malformed { version, reason } => {
                write!(f, "malformed PROXY v{version} header: {reason}")
            }
            ProxyProtocolError::UnsupportedVersion(version) => {
                write!(f, "unsupported PROXY protocol version {version}")
            }
            ProxyProtocolError::TooLong { version: 1, max } => {
                write!(f, "PROXY v1 header longer than {max} bytes")
            }
            ProxyProtocolError::TooLong { version, max } => {
                write!(f, "PROXY v{version} payload longer than {max} bytes")
            }
            ProxyProtocolError::TimedOut(limit) => {
                write!(f, "PROXY header not complete within {limit:?}")
            }
            ProxyProtocolError::Incomplete { received } => write!(
                f,
                "connection closed after {received} bytes, before a PROXY header was complete"
            ),
            ProxyProtocolError::Evicted { max } => write!(
                f,
                "closed for a newer connection: {max} connections were reading their PROXY header, and this one had waited longest"
            ),
            ProxyProtocolError::CloseRequested => {
                f.write_str("asked to close before its PROXY header was complete")
            }
            ProxyProtocolError::Io(error) => write!(f, "reading the PROXY header failed: {error}"),
        }
    }
}

impl Error for ProxyProtocolError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ProxyProtocolError::Io(error) => Some(error),
            _ => None,
        }
    }
}
