//! Serving the page on a listener of its own, with the loopback check.

use std::{
    error::Error,
    fmt,
    future::{Future, IntoFuture, Pending},
    io,
    net::SocketAddr,
    pin::Pin,
    time::Duration,
};

use axum::Router;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use super::Admin;
use crate::{
    http::HttpService, limit::ConnectionLimitLayer, overload::Overload, peer_limit::PeerLimitLayer,
    serve::Server, timeout::TimeoutLayer,
};

/// The most connections the page holds at once: an operator or two, and a scraper.
/// At this cap a newcomer makes an idle connection close, so that a few peers holding
/// idle connections cannot lock the operator out.
const MAX_CONNECTIONS: usize = 64;
/// The most one peer holds: a browser's six and a scraper's, and not the whole page's,
/// so that a client without the token, holding half-sent requests, cannot lock the
/// operator out alone.
const MAX_PER_PEER: usize = 16;
/// How long a connection may have no request open: the HTTP adapter's default, here
/// on the timeout layer, which tells the overload manager which connections are idle.
const IDLE: Duration = Duration::from_secs(60);
/// How long shutdown waits for the page's connections.
const DRAIN: Duration = Duration::from_secs(2);

/// Why the admin page was not served.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdminError {
    /// No token, on an address other hosts can reach.
    NoToken {
        /// The address.
        addr: SocketAddr,
    },
    /// The address could not be bound, or the listener's address read.
    Io {
        /// The address, if known.
        addr: Option<SocketAddr>,
        /// Why.
        error: io::Error,
    },
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::NoToken { addr } => write!(
                f,
                "refusing to serve the admin page on {addr} without a token: give one \
                 (AdminBuilder::token), or serve it on a loopback address"
            ),
            AdminError::Io {
                addr: Some(addr),
                error,
            } => write!(f, "admin page on {addr}: {error}"),
            AdminError::Io { addr: None, error } => write!(f, "admin page: {error}"),
        }
    }
}

impl Error for AdminError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            AdminError::NoToken { .. } => None,
            AdminError::Io { error, .. } => Some(error),
        }
    }
}

/// The admin page on its listener, ready to run: await it (it runs until the listener
/// fails or, with [`with_graceful_shutdown`](Self::with_graceful_shutdown), until its
/// signal), or spawn [`into_future`](IntoFuture::into_future).
///
/// It runs under the crate's own accept loop and HTTP adapter, with their default
/// timeouts (shrunk as the page fills up), and at most 64 connections, 16 from any one
/// peer; at the full cap, a newcomer makes an idle connection close (an [overload
/// manager](crate::overload) of the page's own, which watches its connections alone
/// and evicts first from the peer holding the most idle ones). These report to no
/// metrics recorder: they are the page's, not the application's.
#[must_use = "the admin page is served only once this is awaited"]
pub struct AdminServer<F = Pending<()>> {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    shutdown: F,
}

impl Admin {
    /// Serves the page on `listener`, once the returned server is awaited.
    ///
    /// # Errors
    ///
    /// [`AdminError::NoToken`] if the page has no token and the listener's address is
    /// not loopback; [`AdminError::Io`] if that address cannot be read.
    pub fn serve(self, listener: TcpListener) -> Result<AdminServer, AdminError> {
        let local_addr = listener
            .local_addr()
            .map_err(|error| AdminError::Io { addr: None, error })?;
        self.check(local_addr)?;
        Ok(AdminServer {
            router: self.router(),
            listener,
            local_addr,
            shutdown: std::future::pending(),
        })
    }

    /// Binds `addr` and serves the page on it, once the returned server is awaited.
    ///
    /// # Errors
    ///
    /// [`AdminError::NoToken`] (before binding) if the page has no token and `addr` is
    /// not loopback; [`AdminError::Io`] if it cannot be bound.
    pub async fn bind(self, addr: SocketAddr) -> Result<AdminServer, AdminError> {
        self.check(addr)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| AdminError::Io {
                addr: Some(addr),
                error,
            })?;
        self.serve(listener)
    }

    /// Refuses a non-loopback address without a token; warns on loopback without one.
    fn check(&self, addr: SocketAddr) -> Result<(), AdminError> {
        if self.shared.token.is_some() {
            return Ok(());
        }
        if !addr.ip().to_canonical().is_loopback() {
            return Err(AdminError::NoToken { addr });
        }
        tracing::warn!(
            target: "tower_bouncer::admin",
            %addr,
            "admin page served without a token: anyone on this host can read it and lift bans"
        );
        Ok(())
    }
}

impl<F> AdminServer<F> {
    /// The address the page is served on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving when `signal` completes, after the page's connections finish (2 s
    /// at most).
    pub fn with_graceful_shutdown<G>(self, signal: G) -> AdminServer<G>
    where
        G: Future<Output = ()> + Send + 'static,
    {
        AdminServer {
            listener: self.listener,
            local_addr: self.local_addr,
            router: self.router,
            shutdown: signal,
        }
    }
}

impl<F> IntoFuture for AdminServer<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            // The page's caps and accept loop are not the application's: they register
            // with no recorder, so that `/metrics` counts the application alone, as
            // `/stats` does, under the same names and labels.
            let serving = crate::metrics::unrecorded(|| {
                // The page's connections alone: the process's descriptors are the
                // application's manager's to count.
                let overload = Overload::builder()
                    .descriptors(false)
                    .build()
                    .expect("valid settings");
                let cap = ConnectionLimitLayer::builder(MAX_CONNECTIONS)
                    .overload(&overload)
                    .build()
                    .expect("a cap of at least 1");
                let per_peer = PeerLimitLayer::builder(MAX_PER_PEER)
                    .build()
                    .expect("a cap of at least 1");
                let timeouts = TimeoutLayer::builder()
                    .idle(IDLE)
                    .overload(&overload)
                    .build()
                    .expect("a valid idle timeout");
                let service = ServiceBuilder::new()
                    .layer(per_peer)
                    .layer(cap)
                    .layer(timeouts)
                    .service(HttpService::new(self.router));
                Server::new(self.listener)
                    .with_graceful_shutdown(self.shutdown)
                    .drain_timeout(DRAIN)
                    .serve(service)
            });
            serving.await.map(|_| ())
        })
    }
}

impl<F> fmt::Debug for AdminServer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}
