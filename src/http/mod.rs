//! Serve HTTP/1.1 and cleartext HTTP/2 on each connection: the bridge between the
//! connection-level layers and an axum `Router`, tonic routes, or any
//! `Service<http::Request<Incoming>>`.
//!
//! [`HttpService`] is a connection-level service. For each connection it runs
//! hyper-util's auto builder, which detects the protocol from the first bytes, and:
//!
//! - puts the connection's [`ConnInfo`](crate::ConnInfo), its [`GracefulClose`] and every other
//!   [`Conn`] extension into each request's extensions; with the `axum` feature, also
//!   axum's `ConnectInfo<SocketAddr>`, so `ConnectInfo` extractors work unchanged; with
//!   the `tonic` feature, tonic's `TcpConnectInfo`, so `Request::remote_addr` works;
//! - honours [`GracefulClose`]: once it is raised, an HTTP/1.1 response carries
//!   `Connection: close` and the connection closes after it is flushed; HTTP/2 sends
//!   GOAWAY and lets open streams finish; whatever is still running after the
//!   [close grace](HttpService::close_grace) is cut;
//! - closes a connection that sends no byte within the
//!   [first-byte timeout](HttpService::first_byte_timeout) (10 s by default): hyper-util's
//!   protocol detection would otherwise wait forever;
//! - gives hyper a timer, so its HTTP/1 [header read
//!   timeout](HttpService::header_read_timeout) (30 s by default) is enforced.
//!
//! # Example
//!
//! A handler that ends the connection after its response:
//!
//! ```
//! use axum::{Extension, Router, routing::get};
//! use tower_bouncer::{GracefulClose, http::HttpService};
//!
//! async fn logout(Extension(close): Extension<GracefulClose>) -> &'static str {
//!     close.request();
//!     "bye\n"
//! }
//!
//! let app: Router = Router::new().route("/logout", get(logout));
//! let service = HttpService::new(app);
//! # let _ = service;
//! ```
//!
//! Serve it with [`serve`](crate::serve), under any connection-level layers.

use std::{
    future::Future,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, Request, Response, Version, header::CONNECTION};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use crate::{
    BoxError, Conn, GracefulClose,
    timeout::{self, Deadlines, RequestTimer},
};

const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A connection-level service that serves HTTP/1.1 and HTTP/2 with an inner
/// `Service<http::Request<Incoming>>`.
///
/// See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct HttpService<S> {
    service: S,
    config: Arc<Config>,
}

#[derive(Debug, Clone)]
struct Config {
    hyper: auto::Builder<TokioExecutor>,
    /// `hyper` without its header read timeout, for connections whose requests a
    /// [`TimeoutLayer`](crate::timeout::TimeoutLayer) above already times: one timer
    /// fewer to arm for every request.
    hyper_timed_above: auto::Builder<TokioExecutor>,
    /// The first-byte deadline, when this adapter watches it itself.
    first_byte: Option<Arc<timeout::Shared>>,
    close_grace: Duration,
}

fn without_header_timeout(hyper: &auto::Builder<TokioExecutor>) -> auto::Builder<TokioExecutor> {
    let mut hyper = hyper.clone();
    hyper.http1().header_read_timeout(None);
    hyper
}

fn first_byte_watch(timeout: Option<Duration>) -> Option<Arc<timeout::Shared>> {
    timeout.map(|limit| {
        Arc::new(timeout::Shared::new(Deadlines {
            first_byte: Some(limit),
            ..Deadlines::default()
        }))
    })
}

impl<S> HttpService<S> {
    /// Serves `service` with the defaults: HTTP/1.1 and HTTP/2 with protocol detection,
    /// a 10 s first-byte timeout, a 30 s HTTP/1 header read timeout, and a 5 s grace
    /// after a graceful close is asked for.
    pub fn new(service: S) -> Self {
        let mut hyper = auto::Builder::new(TokioExecutor::new());
        hyper
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(DEFAULT_HEADER_READ_TIMEOUT)
            .http2()
            .timer(TokioTimer::new());
        Self {
            service,
            config: Arc::new(Config {
                hyper_timed_above: without_header_timeout(&hyper),
                hyper,
                first_byte: first_byte_watch(Some(DEFAULT_FIRST_BYTE_TIMEOUT)),
                close_grace: DEFAULT_CLOSE_GRACE,
            }),
        }
    }

    /// How long a new connection may stay silent before it is closed; `None` waits
    /// forever, as hyper-util does on its own. A connection whose first byte a
    /// [`TimeoutLayer`](crate::timeout::TimeoutLayer) above already watches is left to
    /// it.
    ///
    /// # Panics
    ///
    /// If the timeout is zero.
    pub fn first_byte_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into();
        assert_ne!(
            timeout,
            Some(Duration::ZERO),
            "first_byte_timeout must be > 0"
        );
        Arc::make_mut(&mut self.config).first_byte = first_byte_watch(timeout);
        self
    }

    /// How long an HTTP/1 client has to send a whole request head, counted from when
    /// hyper starts waiting for it (also between keep-alive requests); `None` waits
    /// forever. On a connection whose requests a
    /// [`TimeoutLayer`](crate::timeout::TimeoutLayer) above already times, hyper's
    /// timer is left off: the layer's request timeout covers the head.
    ///
    /// # Panics
    ///
    /// If the timeout is zero.
    pub fn header_read_timeout(self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into();
        assert_ne!(
            timeout,
            Some(Duration::ZERO),
            "header_read_timeout must be > 0"
        );
        self.configure_hyper(|hyper| {
            hyper.http1().header_read_timeout(timeout);
        })
    }

    /// How long a connection may take to finish after a graceful close is asked for,
    /// before it is cut.
    pub fn close_grace(mut self, grace: Duration) -> Self {
        Arc::make_mut(&mut self.config).close_grace = grace;
        self
    }

    /// Tunes anything else on hyper-util's builder (HTTP/2 stream limits, buffer sizes,
    /// or `http1_only` to turn protocol detection off).
    pub fn configure_hyper(
        mut self,
        configure: impl FnOnce(&mut auto::Builder<TokioExecutor>),
    ) -> Self {
        let config = Arc::make_mut(&mut self.config);
        configure(&mut config.hyper);
        config.hyper_timed_above = without_header_timeout(&config.hyper);
        self
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.service
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.service
    }
}

impl<S, IO, B> Service<Conn<IO>> for HttpService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner service's readiness is awaited per request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut conn: Conn<IO>) -> Self::Future {
        let close = conn
            .extensions()
            .get::<GracefulClose>()
            .cloned()
            .unwrap_or_default();
        let info = conn.info();
        let extensions = conn.extensions_mut();
        extensions.insert(close.clone());
        extensions.insert(info);
        #[cfg(feature = "axum")]
        extensions.insert(axum::extract::ConnectInfo(info.peer_addr));
        #[cfg(feature = "tonic")]
        extensions.insert(tonic::transport::server::TcpConnectInfo {
            local_addr: Some(info.local_addr),
            remote_addr: Some(info.peer_addr),
        });

        let config = self.config.clone();
        let service = self.service.clone();
        match &self.config.first_byte {
            Some(first_byte) if !conn.first_byte_watched() => {
                Box::pin(timeout::watch(conn, first_byte, move |conn| {
                    serve_connection(conn, service, close, config)
                }))
            }
            _ => Box::pin(serve_connection(conn, service, close, config)),
        }
    }
}

async fn serve_connection<IO, S, B>(
    conn: Conn<IO>,
    service: S,
    close: GracefulClose,
    config: Arc<Config>,
) -> Result<(), BoxError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, mut parts) = conn.into_parts();
    // The adapter tells the timer where requests end; handlers have no use for it.
    let request_timer = parts.extensions.remove::<RequestTimer>();
    let hyper = if request_timer.is_some() {
        &config.hyper_timed_above
    } else {
        &config.hyper
    };
    let service = RequestService {
        inner: service,
        conn: Arc::new(ConnShared {
            request_timer,
            extensions: parts.extensions,
            close: close.clone(),
        }),
    };
    let mut connection = pin!(
        hyper.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
    );

    tokio::select! {
        outcome = connection.as_mut() => return outcome,
        () = close.requested() => {}
    }
    // HTTP/1: no more keep-alive (an idle connection closes now); HTTP/2: GOAWAY.
    connection.as_mut().graceful_shutdown();
    match tokio::time::timeout(config.close_grace, connection).await {
        Ok(Err(error)) if is_cancelled_detection(&*error) => Ok(()),
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::debug!(grace = ?config.close_grace, "connection cut after its close grace");
            Ok(())
        }
    }
}

/// Protocol detection stopped by a graceful close (hyper-util reports it as
/// `Interrupted`): the connection had sent nothing worth answering, so closing it is the
/// expected outcome.
fn is_cancelled_detection(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::Interrupted)
}

/// What every request of one connection shares.
#[derive(Debug)]
struct ConnShared {
    extensions: http::Extensions,
    close: GracefulClose,
    /// Where an outer [`TimeoutLayer`](crate::timeout::TimeoutLayer) with a request
    /// timeout is told that requests end.
    request_timer: Option<RequestTimer>,
}

/// The inner service, seen per request: it hands the connection's extensions to each
/// request and marks HTTP/1 responses `Connection: close` once a close is asked for.
#[derive(Debug, Clone)]
struct RequestService<S> {
    inner: S,
    conn: Arc<ConnShared>,
}

impl<S, B> Service<Request<Incoming>> for RequestService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = CloseAware<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        request
            .extensions_mut()
            .extend(self.conn.extensions.clone());
        let http1 = request.version() < Version::HTTP_2;
        // The request timer runs from a request's first byte. Its head is complete now;
        // a request with a body is complete once the handler has answered (and so read
        // the body or given up on it).
        let mut finish_on_response = None;
        if let Some(timer) = &self.conn.request_timer {
            if !http1 {
                // HTTP/2's preface and first request were timed; its frames after that
                // are not requests (pings, window updates): the idle timeout takes over.
                timer.stop();
            } else if request.body().is_end_stream() {
                timer.finish();
            } else {
                finish_on_response = Some(timer.clone());
            }
        }
        // `Connection` is an HTTP/1 header; HTTP/2 closes with GOAWAY instead.
        let close = http1.then(|| self.conn.close.clone());
        CloseAware {
            inner: self.inner.call(request),
            close,
            finish_on_response,
        }
    }
}

/// A response future that adds `Connection: close` if a close was asked for while the
/// response was being made, and ends the request's timer if the head did not.
#[pin_project::pin_project]
#[derive(Debug)]
struct CloseAware<F> {
    #[pin]
    inner: F,
    close: Option<GracefulClose>,
    finish_on_response: Option<RequestTimer>,
}

impl<F, B, E> Future for CloseAware<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.inner.poll(cx));
        if let Some(timer) = this.finish_on_response.take() {
            timer.finish();
        }
        let mut response = outcome?;
        if this.close.as_ref().is_some_and(GracefulClose::is_requested) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}
