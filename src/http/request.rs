//! What the adapter does around each request: the connection's extensions in, the
//! request's life reported to the connection's timer, its login outcome reported if
//! asked, `Connection: close` once a close is asked for.

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

use super::{Config, ConnExtensions};
#[cfg(feature = "login")]
use crate::login::{Answer, LoginSession, SharedClassifier, report_outcome};
use crate::{GracefulClose, shared_io::MayLeave, timeout::Activity};
#[cfg(not(feature = "login"))]
use called::Answer;

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
/// request, tells the timer about it, reports its login outcome if asked to, and marks
/// HTTP/1 responses `Connection: close` once a close is asked for. Cloned for every
/// request (hyper calls a clone), so what it shares is behind one reference count.
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
    /// What tells a response's login outcome, for a connection with a login session
    /// when the adapter reports logins.
    #[cfg(feature = "login")]
    report_logins: Option<SharedClassifier>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl<S> RequestService<S> {
    pub(super) fn new(
        inner: S,
        conn: ConnExtensions,
        may_leave: Arc<dyn MayLeave>,
        config: &Config,
    ) -> Self {
        #[cfg(feature = "login")]
        let report_logins = conn.login_session().and(config.report_logins.clone());
        #[cfg(not(feature = "login"))]
        let _ = config;
        Self {
            inner,
            shared: Arc::new(Shared {
                conn,
                made: OnceLock::new(),
                served: AtomicBool::new(false),
                may_leave,
                #[cfg(feature = "login")]
                report_logins,
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

#[cfg(feature = "login")]
impl Shared {
    /// The session and classifier, if the adapter reports this connection's logins.
    fn login_report(&self) -> Option<(&LoginSession, &SharedClassifier)> {
        Some((self.conn.login_session()?, self.report_logins.as_ref()?))
    }

    /// Reports the login outcome a response's head tells; whether it told one.
    fn report_response<B>(&self, response: &Response<B>) -> bool {
        self.login_report().is_some_and(|(session, classify)| {
            report_outcome(
                session,
                classify.response(response.status(), response.headers()),
            )
        })
    }

    /// Reports the login outcome a response's trailers tell.
    fn report_trailers(&self, trailers: &http::HeaderMap) {
        if let Some((session, classify)) = self.login_report() {
            report_outcome(session, classify.trailers(trailers));
        }
    }
}

impl<S, B> Service<Request<Incoming>> for RequestService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<ExchangeBody<B>>;
    type Error = S::Error;
    type Future = ExchangeFuture<S>;

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
        // An HTTP/1 upgrade hands the stream over when its response is sent.
        let upgrade = http1.then(|| {
            if request.method() == Method::CONNECT {
                Upgrade::Tunnel
            } else {
                Upgrade::Protocol
            }
        });
        #[cfg(feature = "login")]
        let (answer, report) = match self.shared.login_report() {
            Some((session, classify)) => (
                Answer::start(&mut self.inner, request, session, |request| {
                    classify.is_attempt(request)
                }),
                Some(self.shared.clone()),
            ),
            None => (Answer::call(&mut self.inner, request), None),
        };
        #[cfg(not(feature = "login"))]
        let answer = Answer::call(&mut self.inner, request);
        ExchangeFuture {
            answer,
            // `Connection` is an HTTP/1 header; HTTP/2 closes with GOAWAY instead.
            close: http1.then(|| conn.graceful_close().clone()),
            finish_on_response,
            upgrade,
            exchange: timing.timed.as_ref().map(Exchange::open),
            #[cfg(feature = "login")]
            report,
        }
    }
}

/// Without the `login` feature, no session holds a request back: its service is
/// called at once. (With it, `login`'s `Answer` may wait or refuse.)
#[cfg(not(feature = "login"))]
mod called {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use pin_project::pin_project;
    use tower::Service;

    #[pin_project]
    pub(super) struct Answer<S: Service<Req>, Req> {
        #[pin]
        future: S::Future,
    }

    impl<S: Service<Req>, Req> Answer<S, Req> {
        #[inline]
        pub(super) fn call(service: &mut S, request: Req) -> Self {
            Self {
                future: service.call(request),
            }
        }

        /// Always the service's response: nothing is refused.
        #[inline]
        pub(super) fn poll_answer(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<Option<S::Response>, S::Error>> {
            self.project()
                .future
                .poll(cx)
                .map(|outcome| outcome.map(Some))
        }

        /// Nothing to give back.
        #[inline]
        pub(super) fn reported(self: Pin<&mut Self>) {}
    }

    impl<S: Service<Req>, Req> std::fmt::Debug for Answer<S, Req> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("called")
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

/// The answer to a request that must not reach the service: a login attempt on a
/// connection that has used up its tries, or is being closed.
pub(crate) fn too_many_requests<B>(empty: B) -> Response<B> {
    let mut response = Response::new(empty);
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
}

/// A response future that ends the request's timer if its head did not, reports the
/// response's login outcome, adds `Connection: close` if a close was asked for while
/// the response was being made, and keeps the exchange open in the response's body.
#[pin_project]
#[derive(Debug)]
pub(super) struct ExchangeFuture<S: Service<Request<Incoming>>> {
    #[pin]
    answer: Answer<S, Request<Incoming>>,
    close: Option<GracefulClose>,
    finish_on_response: Option<Arc<Activity>>,
    /// The answer that would upgrade it, for an HTTP/1 request.
    upgrade: Option<Upgrade>,
    exchange: Option<Exchange>,
    /// The connection, if its logins are reported.
    #[cfg(feature = "login")]
    report: Option<Arc<Shared>>,
}

impl<S, B> Future for ExchangeFuture<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Output = Result<Response<ExchangeBody<B>>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let outcome = ready!(this.answer.as_mut().poll_answer(cx));
        if let Some(activity) = this.finish_on_response.take() {
            activity.finish_request();
        }
        let answered = outcome?;
        // One outcome per response: if its head tells one, its trailers have nothing
        // more to say.
        #[cfg(feature = "login")]
        let report = match &answered {
            Some(response) => this
                .report
                .take()
                .filter(|shared| !shared.report_response(response)),
            None => None,
        };
        this.answer.reported();
        let mut response = match answered {
            Some(response) => response.map(Some),
            None => too_many_requests(None),
        };
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
        Poll::Ready(Ok(response.map(|inner| ExchangeBody {
            inner,
            exchange,
            #[cfg(feature = "login")]
            report,
        })))
    }
}

/// A response body that keeps its exchange open until it ends, tells the timer how
/// much it hands to the protocol to send, and reports a login outcome its trailers
/// tell.
#[pin_project]
#[derive(Debug)]
pub(super) struct ExchangeBody<B> {
    /// `None` for a request answered without reaching the service: no body.
    #[pin]
    inner: Option<B>,
    exchange: Option<Exchange>,
    #[cfg(feature = "login")]
    report: Option<Arc<Shared>>,
}

impl<B: Body> Body for ExchangeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            *this.exchange = None;
            return Poll::Ready(None);
        };
        let frame = ready!(inner.poll_frame(cx));
        match (&frame, &*this.exchange) {
            (Some(Ok(frame)), Some(Exchange(activity))) => {
                if let Some(data) = frame.data_ref() {
                    activity.handed(data.remaining());
                }
            }
            (_, Some(_)) => *this.exchange = None,
            (_, None) => {}
        }
        #[cfg(feature = "login")]
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let Some(shared) = this.report.take()
        {
            shared.report_trailers(trailers);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
