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
use crate::{shared_io::MayLeave, timeout::Activity};
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

/// hyper's service for one connection. hyper calls it by reference for each request,
/// so a request costs a clone of the inner service and one reference count to the
/// connection; its future does the rest (see [`ExchangeFuture`]).
#[derive(Debug)]
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
}

impl Shared {
    fn put_extensions(&self, extensions: &mut http::Extensions) {
        match self.made.get() {
            Some(made) => extensions.extend(made.clone()),
            None => extensions.extend(self.make_extensions()),
        }
    }

    /// The map, for a connection's first requests: out of line, so that the code every
    /// other request runs stays compact.
    #[cold]
    #[inline(never)]
    fn make_extensions(&self) -> http::Extensions {
        let mut made = http::Extensions::new();
        made.insert(self.conn.clone());
        #[cfg(any(feature = "axum", feature = "tonic"))]
        let info = self.conn.info();
        #[cfg(feature = "axum")]
        made.insert(axum::extract::ConnectInfo(info.peer_addr));
        #[cfg(feature = "tonic")]
        made.insert(tonic::transport::server::TcpConnectInfo {
            local_addr: Some(info.local_addr),
            remote_addr: Some(info.peer_addr),
        });
        if self.served.swap(true, Ordering::Relaxed) {
            // A second request: more may come.
            let _ = self.made.set(made.clone());
        }
        made
    }

    fn activity(&self) -> Option<&Arc<Activity>> {
        self.conn.timing().timed.as_ref()
    }
}

#[cfg(feature = "login")]
impl Shared {
    /// The session and classifier, if the adapter reports this connection's logins.
    fn login_report(&self) -> Option<(&LoginSession, &SharedClassifier)> {
        Some((self.conn.login_session()?, self.report_logins.as_ref()?))
    }

    /// Reports the login outcome a response's head tells, a failure only if it
    /// `counts_failures`; whether its trailers may still tell one: this connection's
    /// logins are reported, and the head told none (one outcome per response).
    fn report_response<B>(&self, response: &Response<B>, counts_failures: bool) -> bool {
        self.login_report().is_some_and(|(session, classify)| {
            !report_outcome(
                session,
                classify.response(response.status(), response.headers()),
                counts_failures,
            )
        })
    }

    /// Reports the login outcome a response's trailers tell.
    fn report_trailers(&self, trailers: &http::HeaderMap, counts_failures: bool) {
        if let Some((session, classify)) = self.login_report() {
            report_outcome(session, classify.trailers(trailers), counts_failures);
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for RequestService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<ExchangeBody<B>>;
    type Error = S::Error;
    type Future = ExchangeFuture<S>;

    #[inline]
    fn call(&self, request: Request<Incoming>) -> Self::Future {
        // The inner service is called from the future, on the request's task (an
        // HTTP/2 stream's own): what it allocates is freed there too.
        ExchangeFuture {
            stage: Stage::Unpolled {
                service: self.inner.clone(),
                request: Some(request),
            },
            held: Some(Held {
                shared: self.shared.clone(),
                exchange: false,
                answered: false,
                plan: Plan::default(),
            }),
        }
    }
}

/// What the response future does once the service answers, decided at dispatch.
#[derive(Debug, Default, Clone, Copy)]
struct Plan {
    /// HTTP/1: `Connection: close` if a close is asked for by then. (HTTP/2 closes
    /// with GOAWAY instead.)
    close: bool,
    /// The request's timer ends with the response, not the head.
    finish_on_response: bool,
    /// HTTP/1 with its heads timed: the next request is looked for only once this
    /// exchange is over, so that bytes read while the server answers (this request's
    /// body, a request pipelined behind it) do not start its timer then.
    next_request: Option<NextRequest>,
    /// The answer that would upgrade it, for an HTTP/1 request.
    upgrade: Option<Upgrade>,
    /// Whether a failure its response tells is a failed login (see
    /// [`ClassifyLogin`](crate::login::ClassifyLogin)).
    #[cfg(feature = "login")]
    counts_failures: bool,
}

/// How an HTTP/1 exchange that is over looks for the next request.
#[derive(Debug, Clone, Copy)]
enum NextRequest {
    /// The request had no body: bytes read during the exchange, empty lines aside, are
    /// the next request's, and start its timer at the exchange's end.
    AfterBytesRead,
    /// The request's body came during the exchange: the next read starts it.
    OnNextByte,
}

/// The connection, held by a request's future and then its response's body: one
/// reference count for all the request needs of it. From the request's dispatch on,
/// while it is held, the connection's exchange is open: it is not idle.
#[derive(Debug)]
struct Held {
    shared: Arc<Shared>,
    exchange: bool,
    /// Whether the timer was told the exchange has its answer: its response streams.
    answered: bool,
    /// What the response future does once the service answers. Kept here, in the
    /// padding after `exchange`, rather than beside `Held` in the request's future: an
    /// HTTP/2 stream's task holds that future, and tokio pads a task to 128 bytes; with
    /// axum's router, the 8 bytes saved keep the task at 512 bytes, not 640.
    plan: Plan,
}

impl Held {
    /// What the adapter does as a request is dispatched: the connection's extensions
    /// in, the timer told, the exchange opened; then the service called, unless the
    /// login session holds the request back.
    #[inline]
    fn dispatch<S>(
        &mut self,
        service: &mut S,
        slot: &mut Option<Request<Incoming>>,
    ) -> Answer<S, Request<Incoming>>
    where
        S: Service<Request<Incoming>> + Clone,
    {
        // Taken from its slot only by the call: each move of a request is a copy.
        let request = slot.as_mut().expect("dispatched once");
        let shared = &*self.shared;
        let http1 = request.version() < Version::HTTP_2;
        // hyper upgrades an HTTP/1 connection only after a request that asked for it
        // (`Upgrade`, `CONNECT`), and gives such a request its `OnUpgrade`. Looked up
        // before the connection's extensions go in: most requests come with none.
        if http1 && request.extensions().get::<OnUpgrade>().is_some() {
            shared.may_leave.may_leave();
        }
        shared.put_extensions(request.extensions_mut());
        let timing = shared.conn.timing();
        if let Some(activity) = &timing.timed {
            // HTTP/2's streams are timed from their frames (see `frames`).
            if http1 && timing.times_heads {
                self.plan.next_request = Some(if request.body().is_end_stream() {
                    activity.head_in();
                    NextRequest::AfterBytesRead
                } else {
                    if timing.times_bodies {
                        // Complete once the handler has answered, and so read the body
                        // or given up on it.
                        self.plan.finish_on_response = true;
                    } else {
                        // The head is in; the adapter's own timeout leaves bodies be.
                        activity.stop_timing_requests();
                    }
                    NextRequest::OnNextByte
                });
            }
            activity.open_exchange();
            self.exchange = true;
        }
        if http1 {
            self.plan.close = true;
            // An HTTP/1 upgrade hands the stream over when its response is sent.
            self.plan.upgrade = Some(if request.method() == Method::CONNECT {
                Upgrade::Tunnel
            } else {
                Upgrade::Protocol
            });
        }
        #[cfg(feature = "login")]
        if let Some((session, classify)) = shared.login_report() {
            let attempt = classify.is_attempt(request);
            self.plan.counts_failures = attempt || classify.counts_every_failure();
            return Answer::start(service, slot, session, attempt);
        }
        Answer::call(service, slot.take().expect("dispatched once"))
    }

    /// The response's body hands `n` bytes to the protocol.
    #[inline]
    fn handed(&self, n: usize) {
        if self.exchange
            && let Some(activity) = self.shared.activity()
        {
            activity.handed(n);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.exchange
            && let Some(activity) = self.shared.activity()
        {
            activity.close_exchange(self.answered);
            // Unless the connection was handed over (upgraded): no requests then.
            if let Some(next) = self.plan.next_request
                && activity.declares_exchanges()
            {
                match next {
                    NextRequest::AfterBytesRead => activity.next_after_exchange(),
                    NextRequest::OnNextByte => activity.look_for_next_request(),
                }
            }
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

/// A request's future: it dispatches the request once the inner service is ready (see
/// [`Held::dispatch`]), ends the request's timer if its head did not, reports the
/// response's login outcome, adds `Connection: close` if a close was asked for while
/// the response was being made, and keeps the exchange open in the response's body.
#[pin_project]
#[derive(Debug)]
pub(super) struct ExchangeFuture<S: Service<Request<Incoming>>> {
    #[pin]
    stage: Stage<S>,
    /// Until the response is made; then its body's.
    held: Option<Held>,
}

// Without `login`, clippy sizes the service's future, a type parameter, as empty.
#[cfg_attr(not(feature = "login"), allow(clippy::large_enum_variant))]
#[pin_project(project = StageProj)]
enum Stage<S: Service<Request<Incoming>>> {
    /// Waiting for the service to be ready.
    Unpolled {
        service: S,
        request: Option<Request<Incoming>>,
    },
    Dispatched {
        #[pin]
        answer: Answer<S, Request<Incoming>>,
    },
}

impl<S: Service<Request<Incoming>>> std::fmt::Debug for Stage<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unpolled { .. } => f.write_str("waiting for the service to be ready"),
            Self::Dispatched { answer } => answer.fmt(f),
        }
    }
}

impl<S, B> Future for ExchangeFuture<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Output = Result<Response<ExchangeBody<B>>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let StageProj::Unpolled { service, request } = this.stage.as_mut().project() {
            ready!(service.poll_ready(cx))?;
            let held = this.held.as_mut().expect("held until the response");
            let answer = held.dispatch(service, request);
            this.stage.set(Stage::Dispatched { answer });
        }
        let StageProj::Dispatched { mut answer } = this.stage.as_mut().project() else {
            unreachable!("dispatched above")
        };
        let outcome = ready!(answer.as_mut().poll_answer(cx));
        let mut held = this.held.take().expect("held until the response");
        let plan = held.plan;
        let activity = held.exchange.then(|| held.shared.activity()).flatten();
        if plan.finish_on_response
            && let Some(activity) = activity
        {
            // The body may still stream in (an echo, a proxy): the next request is
            // looked for once the exchange is over.
            activity.stop_timing_requests();
        }
        let answered = outcome?;
        #[cfg(feature = "login")]
        let report = answered
            .as_ref()
            .is_some_and(|response| held.shared.report_response(response, plan.counts_failures));
        #[cfg(feature = "login")]
        let pending = answer.reported(report);
        #[cfg(not(feature = "login"))]
        answer.reported();
        let mut response = match answered {
            Some(response) => response.map(Some),
            None => too_many_requests(None),
        };
        let upgraded = match plan.upgrade {
            Some(Upgrade::Protocol) => response.status() == StatusCode::SWITCHING_PROTOCOLS,
            Some(Upgrade::Tunnel) => response.status().is_success(),
            None => false,
        };
        if upgraded && let Some(activity) = activity {
            // Before hyper sends the response and hands the stream to the handler's
            // task, whose reads must not start a request.
            activity.hand_over();
        }
        if plan.close && held.shared.conn.graceful_close().is_requested() {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(activity) = activity {
            activity.answer_exchange();
            held.answered = true;
        }
        Poll::Ready(Ok(response.map(|inner| ExchangeBody {
            inner,
            held: Some(held),
            #[cfg(feature = "login")]
            report,
            #[cfg(feature = "login")]
            pending,
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
    /// Until the body ends.
    held: Option<Held>,
    /// Whether its trailers may still tell a login outcome.
    #[cfg(feature = "login")]
    report: bool,
    /// The login attempt's place, while only the trailers may tell its outcome.
    #[cfg(feature = "login")]
    pending: crate::login::PendingOutcome,
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
            *this.held = None;
            return Poll::Ready(None);
        };
        let frame = ready!(inner.poll_frame(cx));
        match (&frame, &*this.held) {
            (Some(Ok(frame)), Some(held)) => {
                if let Some(data) = frame.data_ref() {
                    held.handed(data.remaining());
                }
                #[cfg(feature = "login")]
                if *this.report
                    && let Some(trailers) = frame.trailers_ref()
                {
                    *this.report = false;
                    held.shared
                        .report_trailers(trailers, held.plan.counts_failures);
                }
            }
            (_, Some(_)) => *this.held = None,
            (_, None) => {}
        }
        // After the trailers' outcome, if any: the attempts waiting see the try used.
        #[cfg(feature = "login")]
        this.pending.settle();
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
