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
    /// accept loop drops it to shut down, and out of descriptors it drops one that is
    /// not ready at once ([`reserve_descriptor`](super::Server::reserve_descriptor));
    /// a connection accepted by a dropped future is lost.
    ///
    /// An error is classified by the accept loop:
    ///
    /// - an OS error that means the listener itself is gone (`EBADF`, `ENOTSOCK`,
    ///   `EFAULT`, and `EINVAL` on Linux, where it means the socket is not listening)
    ///   ends the loop;
    /// - resource exhaustion (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, or
    ///   [`io::ErrorKind::OutOfMemory`]) is retried after a back-off;
    /// - anything else is taken to concern one connection, and skipped at once: return
    ///   any error for a client that fails a handshake or sends garbage. A run of such
    ///   errors pauses the loop for 1 ms after every 32, so a listener that fails every
    ///   accept does not spin it.
    ///
    /// To end the loop from a custom listener, return a dead listener's OS error, such
    /// as `io::Error::from_raw_os_error(libc::EBADF)`.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;

    /// The address this listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The local address of an accepted connection, when the listener is bound to a
    /// wildcard address (`0.0.0.0`, `::`) and so cannot tell: the listener's own address
    /// by default.
    ///
    /// An error concerns this connection only (its peer reset it since it was
    /// accepted): the accept loop drops the connection and goes on.
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

/// A listener shared with something else that needs its socket, such as the kernel ban
/// filter (`login::KernelBans`), which holds it weakly: the socket closes when the server
/// drops the last `Arc`.
impl Listener for std::sync::Arc<tokio::net::TcpListener> {
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
