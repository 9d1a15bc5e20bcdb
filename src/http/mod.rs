//! Serve HTTP/1.1 and cleartext HTTP/2 on each connection: the bridge between the
//! connection-level layers and an axum `Router`, tonic routes, or any
//! `Service<http::Request<Incoming>>`.
//!
//! [`HttpService`] is a connection-level service. For each connection it runs
//! hyper-util's auto builder, which detects the protocol from the first bytes (or
//! serves HTTP/2 straight away when the TLS layer's handshake agreed on it through
//! ALPN), and:
//!
//! - puts the connection into each request's extensions as one [`ConnExtensions`]: its
//!   [`ConnInfo`](crate::ConnInfo), its [`GracefulClose`](crate::GracefulClose), its
//!   login session and every [`Conn`] extension the layers left; with the `axum`
//!   feature, also axum's `ConnectInfo<SocketAddr>`, so `ConnectInfo` extractors work
//!   unchanged; with the `tonic` feature, tonic's `TcpConnectInfo`, so
//!   `Request::remote_addr` works;
//! - honours [`GracefulClose`](crate::GracefulClose): once it is raised, an HTTP/1.1
//!   response carries `Connection: close` and the connection closes after it is
//!   flushed; HTTP/2 sends GOAWAY and lets open streams finish; a connection that does
//!   not finish is cut by whoever asked, or, for a plain
//!   [`GracefulClose::request`](crate::GracefulClose::request), after the
//!   [close grace](HttpServiceBuilder::close_grace);
//! - bounds a connection's phases on its own, with no other layer, but for request
//!   bodies: the first byte ([10 s](HttpServiceBuilder::first_byte_timeout)), each
//!   request head from its first byte, protocol detection and HTTP/2's preface included
//!   ([30 s](HttpServiceBuilder::header_read_timeout)), and the time with no request
//!   open, HTTP/2 PINGs or not ([60 s](HttpServiceBuilder::idle_timeout)), a slow reader
//!   of a response counting as idle (an HTTP/2 connection with no stream open is sent
//!   GOAWAY then, as gRPC servers do at their idle limit, so that a client retries a
//!   call it sends as the connection closes; one that does not close is cut a second
//!   later, unless the client opened a stream as the GOAWAY came, which is served). A
//!   request whose head is in and whose body never comes, or comes a byte an
//!   hour (a slow POST), is open and unanswered, so busy, not idle: it holds its
//!   connection for as long as its handler waits for the body. Bound bodies with a
//!   [`TimeoutLayer`](crate::timeout::TimeoutLayer) request timeout above the adapter
//!   (the `Bouncer` has one), best with a
//!   [minimum rate](crate::timeout::TimeoutBuilder::request_min_rate) so that an upload
//!   that keeps moving is not cut;
//! - tells a [`TimeoutLayer`](crate::timeout::TimeoutLayer) above it when requests
//!   start and end, and when the connection is busy, so that the layer's request
//!   timeout holds every HTTP/1 request (head, and body until the handler answers) and
//!   every HTTP/2 stream until its request's last frame or its answer (a gRPC client
//!   or bidirectional stream answered at once streams on untimed; one its client
//!   resets on the way leaves the time it ran past its minimum rate to the streams
//!   the client opens next, so that abandoning uploads restarts no clock), and its
//!   idle timeout means "no request open"; the adapter's own timeouts then fill in only what the layer leaves
//!   unset (the adapter's own header timeout holds request heads only);
//! - keeps an upgraded connection (WebSocket, `CONNECT`-style tunnels) under every
//!   connection-level layer until its stream is dropped: it holds its place under the
//!   caps, is closed by the idle and lifetime timeouts, and is drained and cut on
//!   shutdown, wherever the task holding it is.
//!
//! # Example
//!
//! A handler that ends the connection after its response:
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_bouncer::{GracefulClose, http::HttpService};
//!
//! async fn logout(close: GracefulClose) -> &'static str {
//!     close.request();
//!     "bye\n"
//! }
//!
//! let app: Router = Router::new().route("/logout", get(logout));
//! let service = HttpService::new(app);
//! # let _ = service;
//! ```
//!
//! Other settings, checked when built:
//!
//! ```
//! use std::time::Duration;
//! # let app: axum::Router = axum::Router::new();
//! let service = tower_bouncer::http::HttpService::builder(app)
//!     .header_read_timeout(Duration::from_secs(10))
//!     .idle_timeout(Duration::from_secs(120))
//!     .close_grace(Duration::from_secs(2))
//!     .build()
//!     .expect("valid settings");
//! # let _ = service;
//! ```
//!
//! Serve it with [`serve`](crate::serve), under any connection-level layers.
//!
//! # Features
//!
//! `http` and `axum` are on by default. With `default-features = false`, name them, or
//! every `ConnectInfo<SocketAddr>` extractor answers 500 at run time; add `tonic` for
//! tonic's `Request::remote_addr`:
//!
//! ```toml
//! tower-bouncer = { version = "0.1", default-features = false, features = ["serve", "http", "axum", "tonic"] }
//! ```
//!
//! # Refusals in HTTP
//!
//! The admission layers close a refused connection, or write it a raw message. On the
//! HTTP path, `refusal_http()` on each of their builders answers it in its own
//! protocol instead, with nothing to write by hand: HTTP/1.1 `503` (caps, startups) or
//! `429` (rates, bans) with `Retry-After` and `Connection: close`; the same status on
//! HTTP/2, then GOAWAY; and for gRPC, a status tonic clients read as
//! `Code::Unavailable` or `Code::ResourceExhausted`. The server never waits on the
//! client for it (see
//! [`ConnectionLimitBuilder::refusal_http`](crate::limit::ConnectionLimitBuilder::refusal_http)).
//!
//! ```
//! # #[cfg(all(feature = "limit", feature = "rate-limit"))] {
//! use tower::ServiceBuilder;
//! use tower_bouncer::{
//!     http::HttpService,
//!     limit::ConnectionLimitLayer,
//!     rate_limit::{Rate, RateLimitLayer},
//! };
//! # let app: axum::Router = axum::Router::new();
//! let service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::builder().per_peer(Rate::per_second(20)).refusal_http().build()?)
//!     .layer(ConnectionLimitLayer::builder(4096).refusal_http().build()?)
//!     .service(HttpService::new(app));
//! # let _ = service;
//! # }
//! # Ok::<(), tower_bouncer::ConfigError>(())
//! ```
//!
//! # Clients that half-close
//!
//! The adapter keeps hyper's HTTP/1 default of `half_close(false)`: a client's FIN ends
//! its connection, and a handler still at work for it is dropped, so that no work is
//! spent on clients that are gone, which matters under attack. A client that shuts its
//! side once its request is sent (`nc -N`, scripted HTTP/1.0 clients, some health
//! checkers) is then answered only if its answer is ready within the poll that reads
//! its request; otherwise the connection ends with hyper's `IncompleteMessage` (no
//! offence). A server whose clients do that turns half-close on, and then notices a
//! client that is gone at its answer's first write, or by the timeouts:
//!
//! ```
//! # let app: axum::Router = axum::Router::new();
//! let service = tower_bouncer::http::HttpService::builder(app)
//!     .configure_hyper(|b| {
//!         b.http1().half_close(true);
//!     })
//!     .build()
//!     .expect("valid settings");
//! # let _ = service;
//! ```
//!
//! A refused client (`refusal_http`) is answered whether it half-closes or not.
//!
//! # Coming from tonic's `Server::builder()`
//!
//! Serving tonic routes with [`HttpService`] replaces tonic's server, and its settings
//! go here:
//!
//! | `tonic::transport::Server` | with this crate |
//! |---|---|
//! | `add_service`, `add_routes` | `tonic::service::Routes::new(svc).add_service(...)`, given to [`HttpService::new`] |
//! | `layer` | tower layers on the routes: `ServiceBuilder::new().layer(...).service(routes)` |
//! | `timeout` | a handler deadline: `tower::timeout::TimeoutLayer` on the routes (an expired request's stream is reset), or `tokio::time::timeout` in the handler answering `Status::deadline_exceeded`; reading requests is bounded by [`TimeoutLayer::request`](crate::timeout::TimeoutBuilder::request) |
//! | `concurrency_limit_per_connection`, `max_concurrent_streams` | `configure_hyper(\|b\| { b.http2().max_concurrent_streams(n); })` |
//! | `http2_keepalive_interval`, `http2_keepalive_timeout` | `configure_hyper(\|b\| { b.http2().keep_alive_interval(d).keep_alive_timeout(d); })` |
//! | `initial_stream_window_size`, `initial_connection_window_size`, `http2_adaptive_window`, `max_frame_size`, `http2_max_header_list_size`, `http2_max_pending_accept_reset_streams`, `http2_max_local_error_reset_streams` | the same names on `configure_hyper`'s `b.http2()` |
//! | `accept_http1` | HTTP/1.1 is always detected; `configure_hyper(\|b\| *b = b.clone().http2_only())` serves HTTP/2 alone |
//! | `tcp_nodelay`, `tcp_keepalive` | on each accepted stream, in a connection-level layer: `ServiceBuilder::new().map_request(\|conn: Conn<TcpStream>\| { conn.io().set_nodelay(true).ok(); conn })` (keep-alive with `socket2::SockRef::from(conn.io())`) |
//! | `max_connection_age`, `max_connection_age_grace` | [`TimeoutLayer::lifetime`](crate::timeout::TimeoutBuilder::lifetime), [`lifetime_grace`](crate::timeout::TimeoutBuilder::lifetime_grace) |
//! | `load_shed` | [`ConnectionLimitLayer`](crate::limit) and [`RateLimitLayer`](crate::rate_limit), per connection |
//! | `tls_config` | [`TlsLayer`](crate::tls) (feature `tls`) |
//! | `serve_with_shutdown` | [`Server::with_graceful_shutdown`](crate::serve::Server::with_graceful_shutdown) |
//!
//! ```
//! # #[cfg(feature = "tonic")] {
//! use std::time::Duration;
//! use tokio::net::TcpStream;
//! use tower::ServiceBuilder;
//! use tower_bouncer::{Conn, http::HttpService};
//!
//! # let routes = tonic::service::Routes::default();
//! let grpc = HttpService::builder(routes)
//!     .configure_hyper(|hyper| {
//!         hyper
//!             .http2()
//!             .max_concurrent_streams(64)
//!             .keep_alive_interval(Duration::from_secs(30))
//!             .keep_alive_timeout(Duration::from_secs(10));
//!     })
//!     .build()
//!     .expect("valid settings");
//! let service = ServiceBuilder::new()
//!     .map_request(|conn: Conn<TcpStream>| {
//!         conn.io().set_nodelay(true).ok();
//!         conn
//!     })
//!     .service(grpc);
//! # let _ = service;
//! # }
//! ```

mod conn_extensions;
mod connection;
mod frames;
#[cfg(any(
    feature = "limit",
    feature = "peer-limit",
    feature = "rate-limit",
    feature = "login"
))]
pub(crate) mod refusal;
mod request;

pub use conn_extensions::ConnExtensions;
pub(crate) use request::too_many_requests;

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use crate::{
    BoxError, ConfigError, Conn,
    striped::Striped,
    timeout::{self, DEFAULT_MIN_SEND_RATE, Deadlines, IdleLimit, RequestLimit},
};

const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A connection-level service that serves HTTP/1.1 and HTTP/2 with an inner
/// `Service<http::Request<Incoming>>`.
///
/// See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct HttpService<S> {
    inner: S,
    /// Each connection holds its thread stripe's handle for as long as it lives.
    config: Striped<Config>,
}

/// Builds an [`HttpService`] with settings other than the defaults.
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpServiceBuilder<S> {
    service: S,
    hyper: auto::Builder<TokioExecutor>,
    first_byte: Option<Duration>,
    header_read: Option<Duration>,
    idle: Option<Duration>,
    close_grace: Duration,
    #[cfg(feature = "login")]
    report_logins: Option<crate::login::SharedClassifier>,
}

#[derive(Debug)]
struct Config {
    hyper: auto::Builder<TokioExecutor>,
    /// `hyper` restricted to HTTP/2, for connections whose TLS handshake agreed on it
    /// (ALPN); `None` if `configure_hyper` already restricted `hyper` to one protocol.
    hyper_http2: Option<auto::Builder<TokioExecutor>>,
    /// The adapter's own deadlines: added where a timeout layer above leaves a gap, or
    /// watched on their own without one.
    deadlines: Deadlines,
    /// The state of the adapter's own watch, for connections without a timeout layer;
    /// `None` if the adapter has no deadline at all.
    alone: Option<Striped<timeout::Shared>>,
    close_grace: Duration,
    /// What tells a response's login outcome, if the adapter reports logins.
    #[cfg(feature = "login")]
    report_logins: Option<crate::login::SharedClassifier>,
}

/// What [`HttpService`] serves: a `Service<http::Request<Incoming>>` that answers
/// `http::Response`s, such as an axum `Router` or tonic `Routes`. Implemented for every
/// such service; its bound on [`HttpService::new`] refuses anything else there, where
/// the mistake is, rather than where the service is served.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a service of `http::Request<Incoming>`, which `HttpService` serves",
    label = "not a request service",
    note = "coming from `axum::serve`? Pass the `Router` itself, not `into_make_service()` nor `into_make_service_with_connect_info::<SocketAddr>()`: `HttpService` puts `ConnectInfo<SocketAddr>` in every request (feature `axum`, on by default)"
)]
pub trait RequestService {}

impl<S, B> RequestService for S where S: Service<Request<Incoming>, Response = Response<B>> {}

impl<S: RequestService> HttpService<S> {
    /// Serves `service` with the defaults: HTTP/1.1 and HTTP/2 with protocol detection,
    /// a 10 s first-byte timeout, 30 s for each request head, 60 s with no request open,
    /// and a 5 s grace after a plain graceful close is asked for.
    ///
    /// Request bodies are not bounded by the adapter: serve it under a
    /// [`TimeoutLayer`](crate::timeout::TimeoutLayer) with a
    /// [request timeout](crate::timeout::TimeoutBuilder::request) (the
    /// `Bouncer` has one), or a client that sends a head and then
    /// never its body holds its connection (see the [module documentation](self)).
    ///
    /// # Coming from `axum::serve`
    ///
    /// Pass the `Router` itself, where `axum::serve` takes
    /// `app.into_make_service_with_connect_info::<SocketAddr>()`: the adapter puts
    /// `ConnectInfo<SocketAddr>` in every request (with the `axum` feature, on by
    /// default), so `ConnectInfo` extractors work unchanged. A make-service is not a
    /// request service, and is refused here. What `axum::serve` does for you, do once
    /// here: `app.with_state(())` makes the router's handlers into routes up front;
    /// without it, axum makes the route again for every request.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::{Router, extract::ConnectInfo, routing::get};
    /// use tower_bouncer::http::HttpService;
    ///
    /// async fn whoami(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    ///     format!("{peer}\n")
    /// }
    ///
    /// let app: Router = Router::new().route("/", get(whoami)).with_state(());
    /// // Not `app.into_make_service_with_connect_info::<SocketAddr>()`:
    /// let service = HttpService::new(app);
    /// # let _ = service;
    /// ```
    pub fn new(service: S) -> Self {
        Self::builder(service)
            .build()
            .expect("the default settings are valid")
    }

    /// Starts from the defaults of [`new`](Self::new).
    pub fn builder(service: S) -> HttpServiceBuilder<S> {
        let mut hyper = auto::Builder::new(TokioExecutor::new());
        // The adapter times request heads itself, from their first byte: hyper's header
        // timer starts later, after protocol detection, and only for HTTP/1. The timers
        // stay for what `configure_hyper` may turn on. HTTP/1's `half_close(false)` is
        // kept (see "Clients that half-close" above).
        hyper
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .http2()
            .timer(TokioTimer::new());
        HttpServiceBuilder {
            service,
            hyper,
            first_byte: Some(DEFAULT_FIRST_BYTE_TIMEOUT),
            header_read: Some(DEFAULT_HEADER_READ_TIMEOUT),
            idle: Some(DEFAULT_IDLE_TIMEOUT),
            close_grace: DEFAULT_CLOSE_GRACE,
            #[cfg(feature = "login")]
            report_logins: None,
        }
    }
}

impl<S> HttpService<S> {
    crate::inner_service_accessors!();
}

impl<S> HttpServiceBuilder<S> {
    /// How long a new connection may stay silent before it is closed; `None` waits
    /// forever, as hyper-util does on its own.
    pub fn first_byte_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.first_byte = timeout.into();
        self
    }

    /// How long a client has to send a whole request head, from its first byte: every
    /// HTTP/1 request's, and an HTTP/2 connection's preface and first headers, which
    /// covers protocol detection too (hyper times none of that). Bodies are not held to
    /// it, nor to any other of the adapter's timeouts (a timeout layer's request
    /// timeout bounds them); later HTTP/2 headers are held to the idle timeout. `None`
    /// waits forever.
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.header_read = timeout.into();
        self
    }

    /// How long a connection may have no request open (HTTP/1 keep-alive between
    /// requests, HTTP/2 with no stream: PINGs and window updates do not count), or move
    /// no data while only answered requests' responses stream (on HTTP/2, DATA frames
    /// either way, on streams still served: PINGs, and DATA to a stream that is over, do
    /// not count), before it is closed, or hold back a response
    /// while reading it slower than 256 bytes a second. `None` waits forever. An HTTP/2
    /// connection with no stream open is sent GOAWAY when it closes so, and cut a second
    /// later if it has not closed (a client that never acknowledges the goodbye), unless
    /// a stream the client opened as the GOAWAY came is being served.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.idle = timeout.into();
        self
    }

    /// How long a connection may take to finish after a plain
    /// [`GracefulClose::request`](crate::GracefulClose::request) (from a handler, say,
    /// or an eviction at a full cap, whose request begun before it heard of it finishes
    /// within this grace) before it is cut. A close asked by a layer or the server with
    /// a deadline of its own is cut on that deadline instead.
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// Reports each response's login outcome on its connection's
    /// [`LoginSession`](crate::login::LoginSession), as a
    /// [`ReportLoginLayer`](crate::login::ReportLoginLayer) around the service would
    /// (MaxAuthTries on HTTP/2 included), but at less cost per request: the adapter's
    /// own request future does it. `classify` is a
    /// [`StatusClassifier`](crate::login::StatusClassifier) (a `401` or gRPC
    /// `UNAUTHENTICATED` to a request with credentials is a failed login; to every
    /// request with
    /// [`count_every_failure`](crate::login::StatusClassifier::count_every_failure)) or
    /// any other [`ClassifyLogin`](crate::login::ClassifyLogin). Use this or the layer, not both:
    /// each would report every outcome. Connections without a session (no
    /// [`SessionLayer`](crate::login::SessionLayer) below) are served as without it.
    ///
    /// ```
    /// use axum::{Router, http::StatusCode, routing::get};
    /// use tower_bouncer::{http::HttpService, login::StatusClassifier};
    ///
    /// let app: Router = Router::new().route("/login", get(|| async { StatusCode::UNAUTHORIZED }));
    /// let service = HttpService::builder(app)
    ///     .report_logins(StatusClassifier::default())
    ///     .build()
    ///     .expect("valid settings");
    /// # let _ = service;
    /// ```
    #[cfg(feature = "login")]
    pub fn report_logins<C>(mut self, classify: C) -> Self
    where
        C: crate::login::ClassifyLogin + Send + Sync + 'static,
    {
        self.report_logins = Some(crate::login::SharedClassifier::new(classify));
        self
    }

    /// Tunes anything else on hyper-util's builder (HTTP/2 stream limits, buffer sizes,
    /// `http1_only` to turn protocol detection off, or `http1().half_close(true)` to
    /// answer clients that half-close: see the [module documentation](self)).
    pub fn configure_hyper(
        mut self,
        configure: impl FnOnce(&mut auto::Builder<TokioExecutor>),
    ) -> Self {
        configure(&mut self.hyper);
        self
    }

    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero timeout (`None` turns one off). Durations too
    /// long to matter (`Duration::MAX`) mean "never".
    pub fn build(self) -> Result<HttpService<S>, ConfigError> {
        let positive = |value: Option<Duration>, setting| match value {
            Some(Duration::ZERO) => Err(ConfigError::Zero { setting }),
            other => Ok(other),
        };
        let deadlines = Deadlines {
            first_byte: positive(self.first_byte, "first_byte_timeout")?,
            request: positive(self.header_read, "header_read_timeout")?.map(|base| RequestLimit {
                base,
                min_rate: None,
            }),
            idle: positive(self.idle, "idle_timeout")?.map(|after| IdleLimit {
                after,
                min_send_rate: DEFAULT_MIN_SEND_RATE,
            }),
            lifetime: None,
        };
        Ok(HttpService {
            inner: self.service,
            config: Striped::new(Config {
                hyper_http2: (self.hyper.is_http1_available() && self.hyper.is_http2_available())
                    .then(|| self.hyper.clone().http2_only()),
                hyper: self.hyper,
                deadlines,
                alone: (!deadlines.is_empty())
                    .then(|| Striped::new(timeout::Shared::new(deadlines))),
                close_grace: self.close_grace,
                #[cfg(feature = "login")]
                report_logins: self.report_logins,
            }),
        })
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

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        let config = self.config.local();
        let service = self.inner.clone();
        if let Some(activity) = conn.timed() {
            // Under a timeout layer: the adapter's deadlines fill in what it leaves.
            activity.add_protocol_deadlines(config.deadlines);
            return Box::pin(connection::serve(conn, service, config, true));
        }
        match &self.config.alone {
            Some(shared) => Box::pin(timeout::watch(conn, shared, move |conn| {
                connection::serve(conn, service, config, false)
            })),
            None => Box::pin(connection::serve(conn, service, config, false)),
        }
    }
}
