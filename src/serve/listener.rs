use std::{future::Future, io, net::SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::Conn;

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
    fn accept(&mut self) -> impl Future<Output = io::Result<Conn<Self::Io>>> + Send;

    /// The address this listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<Conn<Self::Io>> {
        let (stream, peer_addr) = tokio::net::TcpListener::accept(self).await?;
        // Read off the socket, not the listener: a listener bound to a wildcard address
        // accepts on many local addresses.
        let local_addr = stream.local_addr()?;
        Ok(Conn::new(stream, peer_addr, local_addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}
