//! The connection-level layers under a server that keeps its own accept loop:
//! `axum::serve` and tonic's `Server`.
//!
//! A [`ProtectedListener`] owns a listener and runs the accept loop of [`Server`] on it,
//! in a task of its own, with a stack of connection-level layers (bans, rates, caps,
//! TLS, timeouts: any [`Layer`] over a [`Handoff`], such as a
//! [`tower::ServiceBuilder`]). Under the stack, instead of a protocol, the [`Handoff`]
//! hands each admitted connection's stream, as the layers wrapped it, to the framework
//! that accepts from the listener, and the connection's future waits until the framework
//! drops it. So:
//!
//! - a refused connection is refused by its layer as usual (with its refusal message, if
//!   any) and never reaches the framework;
//! - an admitted connection holds its places under the caps while the framework serves
//!   it, and gives them back when the framework drops its stream;
//! - when a layer ends the connection first (a timeout, the lifetime's grace, a ban that
//!   evicts, an eviction to make room), the stream is closed under the framework: its
//!   pending and later reads and writes fail at once, and the framework lets it go;
//! - accept errors never reach the framework (`axum::serve` cannot be given one): they
//!   are handled as the [accept loop](super) handles them, backing off while descriptors
//!   are short, with a descriptor in reserve to close what waits in the backlog.
//!
//! The framework sees the peer address the layers settled on: behind a trusted balancer,
//! the client's, from its PROXY header.
//!
//! The whole recommended stack is one such layer: `ProtectedListener::new(tcp,
//! Bouncer::new()?)` (feature `bouncer`).
//!
//! With the `axum` feature, it is an [`axum::serve::Listener`]; its streams are
//! tonic's [`Connected`](tonic::transport::server::Connected) with the `tonic` feature,
//! and it is a [`Stream`] of them, for `serve_with_incoming`.
//!
//! # What this path cannot do
//!
//! The layers see the connection's bytes, not its requests: only the [HTTP
//! adapter](crate::http::HttpService), which serves the protocol itself, sees requests
//! and responses. Prefer it where you can replace `axum::serve` or tonic's server.
//!
//! | | `ProtectedListener` | `HttpService` |
//! |---|---|---|
//! | Bans, rates, caps per peer and in total, TLS, PROXY headers | yes | yes |
//! | First-byte timeout, lifetime | yes | yes |
//! | Idle timeout | by bytes: any byte keeps a connection alive, HTTP/2 PINGs too | no request open, PINGs or not |
//! | The layer's request timeout | no: nothing marks where a request ends, so it is not applied | each HTTP/1 request, each HTTP/2 stream |
//! | A request head trickled a byte at a time (slowloris) | bounded by the idle timeout between bytes, the lifetime and the caps | cut at the request (or header) timeout |
//! | Timeouts without a timeout layer (first byte, request heads, idle) | no: add a [`TimeoutLayer`](crate::timeout::TimeoutLayer) | yes |
//! | Login sessions: eviction right after a failed login's `401`, reported logins (`report_logins`, `ReportLoginLayer`), the login timeout, the pre-authentication budget | no: requests do not carry the connection's session, and nothing reports a login, so a connection handed to the framework has no `SessionLayer` login timeout and leaves its pre-authentication budget (`max_startups`, `per_source_max_startups`: it bounds only connections not yet handed over); the layer still evicts a newly banned peer's connections | yes |
//! | Closing gracefully (a lifetime, an eviction, a drain) | no: the connection is cut at its deadline | `Connection: close` or GOAWAY first |
//! | axum's `ConnectInfo<SocketAddr>` | through `tap_io` (see below) | yes |
//! | tonic's `Request::remote_addr` | yes | yes |
//!
//! A plain [`GracefulClose::request`] on a connection (a handler's, an operator's) cuts
//! it after 5 seconds, the HTTP adapter's default close grace: nothing can ask the
//! framework to finish it sooner. An overload eviction cuts an idle connection at once.
//!
//! # Shutdown
//!
//! Dropping the listener stops its accept loop: `axum::serve` and tonic's server drop it
//! when their graceful shutdown begins, then wait for the connections they serve. The
//! connections still open are cut at the accept loop's [drain
//! deadline](Server::drain_timeout) (10 seconds by default) if the framework has not let
//! them go by then. Admitted connections the framework had not yet accepted are closed.
//!
//! # Example: axum
//!
//! ```no_run
//! use std::{net::SocketAddr, time::Duration};
//! use axum::{Router, extract::ConnectInfo, routing::get, serve::ListenerExt};
//! use tower::ServiceBuilder;
//! use tower_bouncer::{
//!     peer_limit::PeerLimitLayer, serve::ProtectedListener, timeout::TimeoutLayer,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layers = ServiceBuilder::new()
//!     .layer(PeerLimitLayer::builder(16).build()?)
//!     .layer(TimeoutLayer::builder().first_byte(Duration::from_secs(10)).build()?);
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let listener = ProtectedListener::new(tcp, layers)?;
//!
//! async fn hello(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
//!     format!("hello {peer}\n")
//! }
//! let app = Router::new().route("/", get(hello));
//! // axum 0.8 gives `ConnectInfo<SocketAddr>` on its own listeners only; `tap_io` makes
//! // this one of them. Without `ConnectInfo`: `axum::serve(listener, app)`.
//! let listener = listener.tap_io(|_| {});
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Or, without `tap_io`, both addresses: `into_make_service_with_connect_info::<ConnInfo>()`
//! and `ConnectInfo<ConnInfo>` (see [`ConnInfo`]).
//!
//! # Example: tonic
//!
//! tonic's `tcp_nodelay` and `tcp_keepalive` settings do not apply to the streams of
//! `serve_with_incoming` (its HTTP/2 settings, timeouts and layers do): the stack's
//! outermost layer can set the socket's options instead.
//!
//! ```no_run
//! use tokio::net::TcpStream;
//! use tower::ServiceBuilder;
//! use tower_bouncer::{Conn, limit::ConnectionLimitLayer, serve::ProtectedListener};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layers = ServiceBuilder::new()
//!     .map_request(|conn: Conn<TcpStream>| {
//!         conn.io().set_nodelay(true).ok();
//!         conn
//!     })
//!     .layer(ConnectionLimitLayer::builder(1024).build()?);
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
//! let listener = ProtectedListener::new(tcp, layers)?;
//!
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .add_service(health)
//!     .serve_with_incoming(listener)
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::Stream;
use http::Extensions;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::mpsc,
    task::JoinHandle,
};
use tower::Service;
use tower_layer::Layer;

use super::{Listener, Server, ShutdownReport};
use crate::{
    BoxError, Conn, ConnInfo, GracefulClose,
    close::Cut,
    shared_io::{self, SharedIo, Unwatched},
};

/// Admitted connections waiting for the framework to accept them; beyond, each waits in
/// its own task, held to its layers' deadlines.
const QUEUE: usize = 64;
/// How long a connection asked to close with a plain [`GracefulClose::request`] stays
/// open: the HTTP adapter's default close grace.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A listener whose connections pass a stack of connection-level layers before the
/// framework that accepts from it sees them.
///
/// See the [module documentation](self).
pub struct ProtectedListener {
    admitted: mpsc::Receiver<ProtectedIo>,
    local_addr: SocketAddr,
    /// Until it has ended and its outcome was reported.
    accept_loop: Option<JoinHandle<io::Result<ShutdownReport>>>,
}

/// The stream of a connection the layers admitted, as they wrapped it, handed to the
/// framework by a [`ProtectedListener`].
///
/// Closed under its holder when a layer ends the connection: reads and writes then fail
/// with [`io::ErrorKind::ConnectionAborted`].
pub struct ProtectedIo {
    io: SharedIo<Box<dyn Io>, Unwatched>,
    info: ConnInfo,
    close: GracefulClose,
    #[cfg(feature = "login")]
    login: Option<crate::login::LoginSession>,
    extensions: Extensions,
}

/// The innermost service of a [`ProtectedListener`]'s stack: it hands each connection's
/// stream to the listener and waits until the framework drops it.
#[derive(Debug, Clone)]
pub struct Handoff {
    admitted: mpsc::Sender<ProtectedIo>,
}

/// What the framework gets, whatever the layers wrapped the stream in.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl ProtectedListener {
    /// Runs `listener`'s connections through `layers`, with the accept loop's defaults
    /// (see [`Server::new`]); [`Server::protect`] takes other settings.
    ///
    /// # Errors
    ///
    /// If the listener cannot tell its address, or outside a tokio runtime.
    pub fn new<L, Ly>(listener: L, layers: Ly) -> io::Result<Self>
    where
        L: Listener,
        Ly: Layer<Handoff>,
        Ly::Service: Service<Conn<L::Io>, Response = ()> + Send + 'static,
        <Ly::Service as Service<Conn<L::Io>>>::Error: Into<BoxError> + 'static,
        <Ly::Service as Service<Conn<L::Io>>>::Future: Send + 'static,
    {
        Server::new(listener).protect(layers)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next admitted connection; an error once if the accept loop has failed (its
    /// listener is gone), and `None` once it has ended and every admitted connection was
    /// handed out.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<ProtectedIo>>> {
        match self.admitted.poll_recv(cx) {
            Poll::Ready(Some(admitted)) => return Poll::Ready(Some(Ok(admitted))),
            Poll::Ready(None) if self.accept_loop.is_none() => return Poll::Ready(None),
            // Empty, or emptied by an accept loop that has ended: its outcome comes first.
            _ => {}
        }
        let Some(accept_loop) = &mut self.accept_loop else {
            return Poll::Pending;
        };
        let outcome = ready!(Pin::new(accept_loop).poll(cx));
        self.accept_loop = None;
        match outcome {
            // Ended by its own shutdown: the connections it admitted before are handed
            // out, then the queue ends.
            Ok(Ok(_)) => self.poll_accept(cx),
            Ok(Err(error)) => Poll::Ready(Some(Err(error))),
            Err(failed) => Poll::Ready(Some(Err(io::Error::other(failed)))),
        }
    }
}

impl<L: Listener, F> Server<L, F> {
    /// Runs this accept loop, with its settings, in a task of its own, and hands the
    /// connections `layers` admit to whoever accepts from the returned
    /// [`ProtectedListener`] (`axum::serve`, tonic's `serve_with_incoming`).
    ///
    /// The accept loop stops when the listener is dropped or the shutdown signal
    /// completes; its [drain deadline](Self::drain_timeout) then bounds how long the
    /// framework may keep serving the connections it holds.
    ///
    /// # Errors
    ///
    /// If the listener cannot tell its address, or outside a tokio runtime.
    pub fn protect<Ly>(self, layers: Ly) -> io::Result<ProtectedListener>
    where
        F: Future<Output = ()> + Send + 'static,
        Ly: Layer<Handoff>,
        Ly::Service: Service<Conn<L::Io>, Response = ()> + Send + 'static,
        <Ly::Service as Service<Conn<L::Io>>>::Error: Into<BoxError> + 'static,
        <Ly::Service as Service<Conn<L::Io>>>::Future: Send + 'static,
    {
        let local_addr = self.local_addr()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (sender, admitted) = mpsc::channel(QUEUE);
        let service = layers.layer(Handoff {
            admitted: sender.clone(),
        });
        let server = self.map_shutdown(|shutdown| async move {
            tokio::select! {
                () = shutdown => {}
                () = sender.closed() => {}
            }
        });
        Ok(ProtectedListener {
            admitted,
            local_addr,
            accept_loop: Some(runtime.spawn(server.serve(service))),
        })
    }
}

impl<IO> Service<Conn<IO>> for Handoff
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A full queue holds no place back: each connection waits in its own task.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        hand_off(&self.admitted, conn)
    }
}

/// Hands `conn`'s stream to the listener, then lives until the framework drops it or a
/// plain graceful close is due; dropped earlier by a layer, it closes the stream.
///
/// The stream is handed out when the future is first polled, not when it is made: a
/// layer above may still refuse the connection in its own future (an asynchronous
/// check before it polls this one), and the framework must never have a connection
/// its layers have not let through. Until then the stream and a sender wait in a box,
/// and the future that lives on holds only what it waits on; so does waiting for room
/// in a full queue, boxed apart, as a future's size is that of its largest state, and
/// that wait holds the stream and the sender's own future (over 600 bytes).
fn hand_off<IO>(
    admitted: &mpsc::Sender<ProtectedIo>,
    mut conn: Conn<IO>,
) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let close = conn.graceful_close();
    let info = conn.info();
    let (io, parts) = conn.into_parts();
    // Nothing will say where the framework's requests end: a request timed from its
    // first byte would run until the connection closes. Idle is about bytes.
    #[cfg(feature = "timeout")]
    if let Some(activity) = &parts.timed {
        activity.hand_over();
    }
    // Nor will anything report a login: a login timeout would cut every connection.
    #[cfg(feature = "login")]
    if let Some(session) = &parts.login {
        session.hand_over();
    }
    let (io, owner) = shared_io::share::<Box<dyn Io>, Unwatched>(Box::new(io), None);
    let handed = ProtectedIo {
        io,
        info,
        close: close.clone(),
        #[cfg(feature = "login")]
        login: parts.login,
        extensions: parts.extensions,
    };
    let unsent = Box::new((admitted.clone(), handed));
    Box::pin(async move {
        // The listener ends once every connection admitted before its accept loop
        // stopped has been handed out: a connection holds no sender once it has handed
        // its stream.
        let waiting_for_room = {
            let (admitted, handed) = *unsent;
            match admitted.try_send(handed) {
                Ok(()) => None,
                // The listener is gone, and the stream with it.
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(handed)) => {
                    Some(Box::pin(async move { admitted.send(handed).await.is_ok() }))
                }
            }
        };
        if let Some(waiting) = waiting_for_room
            && !waiting.await
        {
            return Ok(());
        }
        let mut cut = Cut::new(&close, CLOSE_GRACE);
        tokio::select! {
            () = owner.released() => {}
            () = cut.due() => tracing::debug!(grace = ?CLOSE_GRACE, "connection cut after its close grace"),
        }
        Ok(())
    })
}

impl ProtectedIo {
    /// The connection's peer and local addresses.
    pub fn info(&self) -> ConnInfo {
        self.info
    }

    /// The connection's close signal: raised, the connection closes (the framework is
    /// given its grace, then the stream is closed under it).
    pub fn graceful_close(&self) -> &GracefulClose {
        &self.close
    }

    /// The connection's login session, if a
    /// [`SessionLayer`](crate::login::SessionLayer) opened one.
    #[cfg(feature = "login")]
    pub fn login_session(&self) -> Option<&crate::login::LoginSession> {
        self.login.as_ref()
    }

    /// The extensions the layers left on the connection (a
    /// [`TlsInfo`](crate::tls::TlsInfo), a [`ProxiedBy`](crate::proxy_protocol::ProxiedBy),
    /// ...), for a connect-info type of your own to pick from.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }
}

impl AsyncRead for ProtectedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProtectedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The admitted connections, for tonic's `serve_with_incoming`. An accept loop that
/// fails (its listener is gone) yields its error, and the stream then ends.
impl Stream for ProtectedListener {
    type Item = io::Result<ProtectedIo>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_accept(cx)
    }
}

/// Waits for the next admitted connection. `axum::serve` cannot be told that the accept
/// loop failed (its listener is gone): the error is logged, and no connection comes.
#[cfg(feature = "axum")]
impl axum::serve::Listener for ProtectedListener {
    type Io = ProtectedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ProtectedIo, SocketAddr) {
        loop {
            match std::future::poll_fn(|cx| self.poll_accept(cx)).await {
                Some(Ok(io)) => {
                    let peer = io.info.peer_addr;
                    return (io, peer);
                }
                Some(Err(error)) => {
                    tracing::error!(%error, "the protected listener's accept loop failed");
                }
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// Both addresses in axum's `ConnectInfo`:
/// `app.into_make_service_with_connect_info::<ConnInfo>()`, then a
/// `ConnectInfo<ConnInfo>` extractor.
#[cfg(feature = "axum")]
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ProtectedListener>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, ProtectedListener>) -> Self {
        stream.io().info
    }
}

/// tonic's `TcpConnectInfo`, so `Request::remote_addr` works.
#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for ProtectedIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: Some(self.info.local_addr),
            remote_addr: Some(self.info.peer_addr),
        }
    }
}

impl fmt::Debug for ProtectedListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectedListener")
            .field("local_addr", &self.local_addr)
            .field("queued", &self.admitted.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ProtectedIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectedIo")
            .field("info", &self.info)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}
