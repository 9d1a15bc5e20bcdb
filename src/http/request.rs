//! What the adapter does around each request: the connection's extensions in, the
//! request's life reported to the connection's timer, `Connection: close` once a close
//! is asked for.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header::CONNECTION};
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use pin_project::pin_project;
use tower::Service;

use super::ConnExtensions;
use crate::{GracefulClose, shared_io::MayLeave, timeout::Activity};

/// How the adapter times one connection's requests.
#[derive(Debug, Default)]
pub(super) struct RequestTiming {
    /// The connection's timer, told where requests and exchanges begin and end.
    pub(super) timed: Option<Arc<Activity>>,
    /// Whether request heads are timed (a request timeout, or the adapter's own).
    pub(super) times_heads: bool,
    /// Whether HTTP/1 request bodies are timed too (a timeout layer's request timeout).
    pub(super) times_bodies: bool,
}

/// The inner service, seen per request: it hands the connection's extensions to each
/// request, tells the timer about it, and marks HTTP/1 responses `Connection: close`
/// once a close is asked for. Cloned for every request (hyper calls a clone), so what
/// it shares is behind one reference count.
#[derive(Debug, Clone)]
pub(super) struct RequestService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The connection, and what each request gets: the connection and, with the `axum` and
/// `tonic` features, the peer's address as their own extractors read it. The map is made
/// once a second request comes, and cloned into each: cloning a made map costs less
/// than filling one, but for a connection that serves one request, making it would be
/// allocations for nothing. (The map holds the connection, not this: no cycle.)
struct Shared {
    conn: ConnExtensions,
    made: OnceLock<http::Extensions>,
    served: AtomicBool,
    /// Tells the connection's stream, held in place, that an upgrade may take it.
    may_leave: Arc<dyn MayLeave>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl<S> RequestService<S> {
    pub(super) fn new(inner: S, conn: ConnExtensions, may_leave: Arc<dyn MayLeave>) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                conn,
                made: OnceLock::new(),
                served: AtomicBool::new(false),
                may_leave,
            }),
        }
    }

    fn put_extensions(&self, extensions: &mut http::Extensions) {
        let shared = &*self.shared;
        if let Some(made) = shared.made.get() {
            extensions.extend(made.clone());
            return;
        }
        let mut made = http::Extensions::new();
        made.insert(shared.conn.clone());
        #[cfg(any(feature = "axum", feature = "tonic"))]
        let info = shared.conn.info();
        #[cfg(feature = "axum")]
        made.insert(axum::extract::ConnectInfo(info.peer_addr));
        #[cfg(feature = "tonic")]
        made.insert(tonic::transport::server::TcpConnectInfo {
            local_addr: Some(info.local_addr),
            remote_addr: Some(info.peer_addr),
        });
        if shared.served.swap(true, Ordering::Relaxed) {
            // A second request: more may come.
            let _ = shared.made.set(made.clone());
        }
        extensions.extend(made);
    }
}

impl<S, B> Service<Request<Incoming>> for RequestService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<ExchangeBody<B>>;
    type Error = S::Error;
    type Future = ExchangeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let http1 = request.version() < Version::HTTP_2;
        // hyper upgrades an HTTP/1 connection only after a request that asked for it
        // (`Upgrade`, `CONNECT`), and gives such a request its `OnUpgrade`. Looked up
        // before the connection's extensions go in: most requests come with none.
        if http1 && request.extensions().get::<OnUpgrade>().is_some() {
            self.shared.may_leave.may_leave();
        }
        self.put_extensions(request.extensions_mut());
        let conn = &self.shared.conn;
        let timing = conn.timing();
        let mut finish_on_response = None;
        // HTTP/2's streams are timed from their frames (see `frames`).
        if let Some(activity) = &timing.timed
            && http1
            && timing.times_heads
        {
            if timing.times_bodies && !request.body().is_end_stream() {
                // Complete once the handler has answered, and so read the body or
                // given up on it.
                finish_on_response = Some(activity.clone());
            } else {
                activity.finish_request();
            }
        }
        ExchangeFuture {
            // An HTTP/1 upgrade hands the stream over when its response is sent.
            upgrade: http1.then(|| {
                if request.method() == Method::CONNECT {
                    Upgrade::Tunnel
                } else {
                    Upgrade::Protocol
                }
            }),
            inner: self.inner.call(request),
            // `Connection` is an HTTP/1 header; HTTP/2 closes with GOAWAY instead.
            close: http1.then(|| conn.graceful_close().clone()),
            finish_on_response,
            exchange: timing.timed.as_ref().map(Exchange::open),
        }
    }
}

/// A request from its dispatch until its response is sent: while one is open, the
/// connection is not idle.
#[derive(Debug)]
struct Exchange(Arc<Activity>);

impl Exchange {
    #[inline]
    fn open(activity: &Arc<Activity>) -> Self {
        activity.open_exchange();
        Self(activity.clone())
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.close_exchange();
    }
}

/// What answer upgrades an HTTP/1 request: its stream then leaves HTTP.
#[derive(Debug, Clone, Copy)]
enum Upgrade {
    /// `101 Switching Protocols` (a WebSocket).
    Protocol,
    /// A `CONNECT`'s `2xx`: a tunnel.
    Tunnel,
}

/// A response future that ends the request's timer if its head did not, adds
/// `Connection: close` if a close was asked for while the response was being made, and
/// keeps the exchange open in the response's body.
#[pin_project]
#[derive(Debug)]
pub(super) struct ExchangeFuture<F> {
    #[pin]
    inner: F,
    close: Option<GracefulClose>,
    finish_on_response: Option<Arc<Activity>>,
    /// The answer that would upgrade it, for an HTTP/1 request.
    upgrade: Option<Upgrade>,
    exchange: Option<Exchange>,
}

impl<F, B, E> Future for ExchangeFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ExchangeBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = ready!(this.inner.poll(cx));
        if let Some(activity) = this.finish_on_response.take() {
            activity.finish_request();
        }
        let mut response = outcome?;
        let upgraded = match this.upgrade {
            Some(Upgrade::Protocol) => response.status() == StatusCode::SWITCHING_PROTOCOLS,
            Some(Upgrade::Tunnel) => response.status().is_success(),
            None => false,
        };
        if upgraded && let Some(Exchange(activity)) = this.exchange {
            // Before hyper sends the response and hands the stream to the handler's
            // task, whose reads must not start a request.
            activity.hand_over();
        }
        if this.close.as_ref().is_some_and(GracefulClose::is_requested) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let exchange = this.exchange.take();
        Poll::Ready(Ok(response.map(|body| ExchangeBody {
            inner: body,
            exchange,
        })))
    }
}

/// A response body that keeps its exchange open until it ends, and tells the timer how
/// much it hands to the protocol to send.
#[pin_project]
#[derive(Debug)]
pub(super) struct ExchangeBody<B> {
    #[pin]
    inner: B,
    exchange: Option<Exchange>,
}

impl<B: Body> Body for ExchangeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match (&frame, &*this.exchange) {
            (Some(Ok(frame)), Some(Exchange(activity))) => {
                if let Some(data) = frame.data_ref() {
                    activity.handed(data.remaining());
                }
            }
            (_, Some(_)) => *this.exchange = None,
            (_, None) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
