use std::{future::Future, io, net::SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite};

/// A source of connections for [`Server`](super::Server).
///
/// Implemented for [`tokio::net::TcpListener`]; implement it to serve another kind of
/// socket, or to inject accept failures in tests.
pub trait Listener: Send + 'static {
    /// The stream of an accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Accepts the next connection.
    ///
    /// The future must be cancel-safe, as [`tokio::net::TcpListener::accept`] is: the
    /// accept loop drops it to reap finished connections or to shut down, and a
    /// connection accepted by a dropped future is lost.
    ///
    /// An error is classified by the accept loop: per-connection errors
    /// (`ECONNABORTED`, ...) are skipped, resource exhaustion (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`, `ENOMEM`) is retried after a back-off, and an error that means the
    /// listener itself is gone (`EBADF`, `EINVAL`, `ENOTSOCK`) ends the loop.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;

    /// The address this listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The local address of an accepted connection, when the listener is bound to a
    /// wildcard address (`0.0.0.0`, `::`) and so cannot tell: the listener's own address
    /// by default.
    fn connection_local_addr(&self, io: &Self::Io) -> io::Result<SocketAddr> {
        let _ = io;
        self.local_addr()
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, SocketAddr)> {
        tokio::net::TcpListener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }

    fn connection_local_addr(&self, stream: &Self::Io) -> io::Result<SocketAddr> {
        stream.local_addr()
    }
}
