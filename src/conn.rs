use std::{fmt, io, net::SocketAddr};

use http::Extensions;
use tokio::net::TcpStream;

use crate::GracefulClose;

/// One accepted connection: the request type of every connection-level service.
///
/// It carries the stream, the peer and local addresses, and typed [`Extensions`] in
/// which layers leave per-connection handles for the layers and handlers below them
/// (as `http::Request` carries its extensions). The HTTP adapter hands them to every
/// request it serves, in one `ConnExtensions`.
///
/// # Example
///
/// ```
/// use tower_bouncer::Conn;
///
/// let (server_side, _client_side) = tokio::io::duplex(64);
/// let conn = Conn::new(
///     server_side,
///     "192.0.2.7:40000".parse().unwrap(),
///     "127.0.0.1:8080".parse().unwrap(),
/// );
/// assert_eq!(conn.peer_addr().ip().to_string(), "192.0.2.7");
/// ```
pub struct Conn<IO> {
    io: IO,
    parts: Parts,
}

/// Everything in a [`Conn`] but its stream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Parts {
    /// The address of the remote end.
    pub peer_addr: SocketAddr,
    /// The local address the connection was accepted on.
    pub local_addr: SocketAddr,
    /// Per-connection handles left by layers.
    pub extensions: Extensions,
    /// The connection's close signal, shared by the accept loop, every layer and the
    /// protocol. A field, not an extension: every connection the accept loop serves has
    /// one, and an extension of its own would be allocations per connection.
    pub(crate) close: Option<GracefulClose>,
    /// The login session a `SessionLayer` opened. A field for the same reason, and the
    /// HTTP adapter reads it on every request.
    #[cfg(feature = "login")]
    pub(crate) login: Option<crate::login::LoginSession>,
    /// The activity a timeout layer watches, for the protocol to declare when it is
    /// busy and to add its own deadlines. A field, not an extension: it is on every
    /// connection's path.
    #[cfg(feature = "timeout")]
    pub(crate) timed: Option<std::sync::Arc<crate::timeout::Activity>>,
    /// The HTTP version the TLS handshake agreed on (ALPN), for the HTTP adapter to
    /// serve without detecting it. A field, not an extension: the adapter reads it on
    /// every connection.
    pub(crate) http_version: Option<http::Version>,
}

impl<IO> Conn<IO> {
    /// A connection over any stream, such as one half of [`tokio::io::duplex`] in tests.
    pub fn new(io: IO, peer_addr: SocketAddr, local_addr: SocketAddr) -> Self {
        Self::from_parts(
            io,
            Parts {
                peer_addr,
                local_addr,
                extensions: Extensions::new(),
                close: None,
                #[cfg(feature = "login")]
                login: None,
                #[cfg(feature = "timeout")]
                timed: None,
                http_version: None,
            },
        )
    }

    /// Reassembles a connection taken apart by [`Conn::into_parts`].
    pub fn from_parts(io: IO, parts: Parts) -> Self {
        Self { io, parts }
    }

    /// Takes the connection apart into its stream and everything else.
    pub fn into_parts(self) -> (IO, Parts) {
        (self.io, self.parts)
    }

    /// The address of the remote end.
    pub fn peer_addr(&self) -> SocketAddr {
        self.parts.peer_addr
    }

    /// The local address the connection was accepted on.
    pub fn local_addr(&self) -> SocketAddr {
        self.parts.local_addr
    }

    /// The connection's close signal, the one the accept loop's drain and every layer
    /// raise and the protocol watches; made the first time it is asked for when nothing
    /// above made one (a connection served without [`serve`](crate::serve)).
    pub fn graceful_close(&mut self) -> GracefulClose {
        self.parts.graceful_close()
    }

    /// The connection's login session, if a
    /// [`SessionLayer`](crate::login::SessionLayer) above opened one.
    #[cfg(feature = "login")]
    pub fn login_session(&self) -> Option<&crate::login::LoginSession> {
        self.parts.login_session()
    }

    #[cfg(feature = "login")]
    pub(crate) fn set_login_session(&mut self, session: crate::login::LoginSession) {
        self.parts.login = Some(session);
    }

    /// The activity a timeout layer watches on this connection, if one does.
    #[cfg(feature = "timeout")]
    pub(crate) fn timed(&self) -> Option<&std::sync::Arc<crate::timeout::Activity>> {
        self.parts.timed.as_ref()
    }

    /// Where the protocol says its requests end, for a
    /// [`TimeoutLayer`](crate::timeout::TimeoutLayer)'s request timeout; `None` without
    /// one. Clones mark the same connection.
    #[cfg(feature = "timeout")]
    pub fn request_timer(&self) -> Option<crate::timeout::RequestTimer> {
        self.parts
            .timed
            .as_ref()
            .and_then(crate::timeout::RequestTimer::of)
    }

    /// Marks the connection as watched by a timeout layer, through `activity`.
    #[cfg(feature = "timeout")]
    pub(crate) fn set_timed(&mut self, activity: std::sync::Arc<crate::timeout::Activity>) {
        self.parts.timed = Some(activity);
    }

    /// Both addresses, as the HTTP adapter hands them to request handlers.
    pub fn info(&self) -> ConnInfo {
        ConnInfo {
            peer_addr: self.parts.peer_addr,
            local_addr: self.parts.local_addr,
        }
    }

    /// The stream.
    pub fn io(&self) -> &IO {
        &self.io
    }

    /// The stream, mutably.
    pub fn io_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Consumes the connection and returns its stream.
    pub fn into_io(self) -> IO {
        self.io
    }

    /// The per-connection handles left by layers.
    pub fn extensions(&self) -> &Extensions {
        &self.parts.extensions
    }

    /// The per-connection handles left by layers, mutably.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.parts.extensions
    }

    /// Wraps the stream, keeping the addresses and extensions: how stream-level
    /// protections (timeouts, byte counters) put themselves between the socket and the
    /// protocol.
    pub fn map_io<F, IO2>(self, wrap: F) -> Conn<IO2>
    where
        F: FnOnce(IO) -> IO2,
    {
        Conn {
            io: wrap(self.io),
            parts: self.parts,
        }
    }
}

impl Parts {
    /// The connection's close signal: [`Conn::graceful_close`].
    pub fn graceful_close(&mut self) -> GracefulClose {
        self.close.get_or_insert_with(GracefulClose::new).clone()
    }

    /// The connection's login session: [`Conn::login_session`].
    #[cfg(feature = "login")]
    pub fn login_session(&self) -> Option<&crate::login::LoginSession> {
        self.login.as_ref()
    }
}

/// The addresses of a connection: [`Conn::info`], and for a request the HTTP adapter
/// serves, `ConnExtensions::info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ConnInfo {
    /// The address of the remote end.
    pub peer_addr: SocketAddr,
    /// The local address the connection was accepted on.
    pub local_addr: SocketAddr,
}

impl TryFrom<TcpStream> for Conn<TcpStream> {
    type Error = io::Error;

    /// Reads both addresses off the socket. This fails only if the socket is no
    /// longer connected (the peer reset it between accept and now).
    fn try_from(stream: TcpStream) -> io::Result<Self> {
        let peer_addr = stream.peer_addr()?;
        let local_addr = stream.local_addr()?;
        Ok(Conn::new(stream, peer_addr, local_addr))
    }
}

impl<IO> fmt::Debug for Conn<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer_addr", &self.parts.peer_addr)
            .field("local_addr", &self.parts.local_addr)
            .field("extensions", &self.parts.extensions)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn new_keeps_addresses_and_starts_without_extensions() {
        let (io, _peer) = tokio::io::duplex(8);
        let conn = Conn::new(io, addr("192.0.2.1:1000"), addr("127.0.0.1:80"));
        assert_eq!(conn.peer_addr(), addr("192.0.2.1:1000"));
        assert_eq!(conn.local_addr(), addr("127.0.0.1:80"));
        assert!(conn.extensions().is_empty());
    }

    #[tokio::test]
    async fn map_io_wraps_the_stream_and_keeps_everything_else() {
        let (io, mut peer) = tokio::io::duplex(64);
        let mut conn = Conn::new(io, addr("[2001:db8::1]:5"), addr("[::1]:80"));
        conn.extensions_mut().insert(7u32);

        let mut conn = conn.map_io(BufReader::new);
        assert_eq!(conn.peer_addr(), addr("[2001:db8::1]:5"));
        assert_eq!(conn.extensions().get::<u32>(), Some(&7));

        peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.io_mut().read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn into_parts_and_back_is_lossless() {
        let (io, _peer) = tokio::io::duplex(8);
        let mut conn = Conn::new(io, addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        conn.extensions_mut().insert("handle");
        let (io, parts) = conn.into_parts();
        assert_eq!(parts.peer_addr, addr("10.0.0.1:1"));
        let conn = Conn::from_parts(io, parts);
        assert_eq!(conn.extensions().get::<&str>(), Some(&"handle"));
        assert_eq!(conn.local_addr(), addr("10.0.0.2:2"));
    }

    #[test]
    fn the_close_signal_is_made_on_first_ask_and_then_shared() {
        let mut conn = Conn::new((), addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        let first = conn.graceful_close();
        let (io, mut parts) = conn.into_parts();
        parts.graceful_close().request();
        assert!(first.is_requested(), "one signal, however it is reached");
        let mut conn = Conn::from_parts(io, parts);
        assert!(conn.graceful_close().is_requested());
    }

    #[tokio::test]
    async fn built_from_a_tcp_stream_in_one_step() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(server_addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();

        let conn = Conn::try_from(accepted).unwrap();
        assert_eq!(conn.peer_addr(), client.local_addr().unwrap());
        assert_eq!(conn.local_addr(), server_addr);
    }
}
