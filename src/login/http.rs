//! Bridges from HTTP and gRPC responses to the login session.

use std::{
    future::Future,
    hash::{BuildHasher, Hasher, RandomState},
    pin::Pin,
    sync::{Arc, LazyLock},
    task::{Context, Poll, ready},
};

use http::{
    HeaderMap, Method, Request, Response, StatusCode, Uri, Version,
    header::{AUTHORIZATION, PROXY_AUTHORIZATION},
};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;
use tower::Service;
use tower_layer::Layer;

use super::{
    AfterFailure, LoginSession,
    attempts::{AttemptPermit, AttemptWait, Credentials, TriesUsedUp},
};
use crate::http::{ConnExtensions, too_many_requests};

/// What a response says about a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginOutcome {
    /// A failed login.
    Failed,
    /// A successful login.
    Succeeded,
}

/// Decides what a response says about a login.
///
/// A failure counts only for a request that [`is_attempt`](Self::is_attempt) says is a
/// login attempt (by default, one that carries credentials), unless
/// [`counts_every_failure`](Self::counts_every_failure) says otherwise: a `401` to a
/// request without credentials (an API call from a visitor not logged in, the first
/// request of a Basic challenge) guessed nothing. A success counts whatever the request.
///
/// Only an outcome counts: an attempt that ends before its answer (its client reset
/// the stream or hung up, its handler panicked) uses no try and is no failed login. Its
/// client learned nothing from it, and counting it would ban honest clients that send
/// credentials with every request and cancel some (a browser navigating away, a gRPC
/// deadline). What such attempts cost the server is a check run for nothing: over
/// HTTP/1 one a connection, bounded by the connection rate; on HTTP/2 as many at a time
/// as the connection has tries left (the gate), for as long as its client goes on
/// opening and resetting streams.
pub trait ClassifyLogin: Clone {
    /// From the status and headers; `None` when the response says nothing about a login.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<LoginOutcome>;

    /// From a body's trailers (gRPC puts its status there); `None` by default.
    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<LoginOutcome> {
        let _ = trailers;
        None
    }

    /// Whether a request may be a login attempt: its failure counts, and it is held to
    /// the connection's tries: by default, one that carries credentials
    /// (`Authorization` or `Proxy-Authorization`; gRPC metadata travels in the same
    /// header). Logins whose credentials travel in the body (forms, JSON) are attempts
    /// only if this says so, by path. Asked once per request, as it is dispatched.
    fn is_attempt(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        let _ = (method, uri);
        if headers.keys_len() <= SCANNED_HEADERS {
            headers
                .keys()
                .any(|name| name == AUTHORIZATION || name == PROXY_AUTHORIZATION)
        } else {
            headers.contains_key(AUTHORIZATION) || headers.contains_key(PROXY_AUTHORIZATION)
        }
    }

    /// Whether a failure counts for every request, not only for login attempts
    /// ([`is_attempt`](Self::is_attempt)): `false` by default, so that no anonymous
    /// visitor is banned for the `401`s an application answers it. It counts failures
    /// only: a request that is no attempt is never held to the connection's tries on
    /// HTTP/2, which would hold every request of a connection not logged in to them.
    fn counts_every_failure(&self) -> bool {
        false
    }
}

/// The default classifier: `401 Unauthorized` and gRPC `UNAUTHENTICATED` (status 16, in
/// the headers of a trailers-only response, which gRPC sends as `200 OK`, or in the
/// trailers) are failed logins, when answered to a request that carries credentials;
/// `403 Forbidden` too if asked, and to every request if asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusClassifier {
    forbidden_is_failure: bool,
    count_every_failure: bool,
}

impl StatusClassifier {
    /// Whether `403 Forbidden` is a failed login too; it is not by default, since it
    /// usually means an authenticated user lacks a permission.
    pub fn forbidden_is_failure(mut self, yes: bool) -> Self {
        self.forbidden_is_failure = yes;
        self
    }

    /// Whether a failure answered to a request without credentials is a failed login
    /// too, so that every `401` (or `UNAUTHENTICATED`) counts toward the connection's
    /// tries and its peer's ban. It is not by default: a browser's first request to a
    /// page behind a Basic challenge, and an application's anonymous API calls, are
    /// answered `401` without anyone guessing a password, and five of them would ban
    /// an honest visitor (and everyone behind its address). Set it for a service no
    /// anonymous client has any business calling.
    ///
    /// It counts failures; it holds no request to the connection's tries. A login form,
    /// whose credentials travel in its body, where the default
    /// [`is_attempt`](ClassifyLogin::is_attempt) does not look, needs a classifier whose
    /// `is_attempt` picks its path: then its posts are held to the tries on HTTP/2 as
    /// requests with credentials are (50 guesses sent at once get one check). With this
    /// alone, its failures count and close the connection, but guesses sent at once on
    /// one HTTP/2 connection are all checked before the first failure closes it.
    pub fn count_every_failure(mut self, yes: bool) -> Self {
        self.count_every_failure = yes;
        self
    }
}

/// gRPC's `UNAUTHENTICATED`.
const GRPC_UNAUTHENTICATED: &str = "16";

/// A name made once: looked up by a string, it would be parsed on every response.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// Up to this many headers, a name is found faster by comparing it with each than by
/// hashing it.
const SCANNED_HEADERS: usize = 8;

fn grpc_unauthenticated(headers: &HeaderMap) -> bool {
    // Most responses have no `grpc-status`: the names alone tell.
    if headers.keys_len() <= SCANNED_HEADERS && !headers.keys().any(|name| name == GRPC_STATUS) {
        return false;
    }
    headers
        .get(&GRPC_STATUS)
        .is_some_and(|status| status == GRPC_UNAUTHENTICATED)
}

impl ClassifyLogin for StatusClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<LoginOutcome> {
        // gRPC answers every call `200 OK`, its own status in a header or the trailers.
        let failed = status == StatusCode::UNAUTHORIZED
            || (self.forbidden_is_failure && status == StatusCode::FORBIDDEN)
            || (status == StatusCode::OK && grpc_unauthenticated(headers));
        failed.then_some(LoginOutcome::Failed)
    }

    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<LoginOutcome> {
        grpc_unauthenticated(trailers).then_some(LoginOutcome::Failed)
    }

    fn counts_every_failure(&self) -> bool {
        self.count_every_failure
    }
}

/// Any `Fn(StatusCode, &HeaderMap) -> Option<LoginOutcome>` classifies responses, for
/// custom rules. Its failures count for requests that carry credentials, as
/// [`is_attempt`](ClassifyLogin::is_attempt)'s default says; for other attempts (a
/// login form's path), implement [`ClassifyLogin`].
impl<F> ClassifyLogin for F
where
    F: Fn(StatusCode, &HeaderMap) -> Option<LoginOutcome> + Clone,
{
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<LoginOutcome> {
        self(status, headers)
    }
}

/// A request-level layer that reports each response's login outcome on the
/// connection's [`LoginSession`]: with the default classifier, a `401` or gRPC
/// `UNAUTHENTICATED` to a request that carries credentials is a failed login, which
/// (with one try per connection) closes the connection once the response is sent and
/// counts toward the peer's ban.
///
/// Put it around an axum `Router` or tonic routes, inside the
/// [`HttpService`](crate::http::HttpService). (The adapter's own
/// [`report_logins`](crate::http::HttpServiceBuilder::report_logins) does the same for
/// less per request: a layer here is for a report placed elsewhere in a stack, say
/// under a router's own layers.)
///
/// ```
/// use axum::{Router, http::StatusCode, routing::get};
/// use tower_bouncer::{http::HttpService, login::ReportLoginLayer};
/// use tower::Layer;
///
/// let app: Router = Router::new().route("/login", get(|| async { StatusCode::UNAUTHORIZED }));
/// let service = HttpService::new(ReportLoginLayer::new().layer(app));
/// # let _ = service;
/// ```
///
/// On a multiplexed connection (HTTP/2) it also keeps MaxAuthTries: requests that may
/// be login attempts ([`ClassifyLogin::is_attempt`]: those carrying credentials, by
/// default) run at most as many at once as the connection has tries left. Once the
/// connection logs in ([`LoginSession::succeeded`], reported while the attempt is in
/// flight: report it, or the requests of a client that sends its credentials with
/// every request stay one at a time), the attempts with the very credentials that
/// logged it in (the same `Authorization` and `Proxy-Authorization` values) go on at
/// once; every other attempt (other credentials, or a login form's path that carries
/// none) still waits for a place, so that a client logged in with an account of its
/// own gets no more guesses at another's. (With more than one attempt in flight as it
/// logs in, the credentials are those of the attempt last given a place.) An attempt
/// holds its place until its outcome is known: at its response's head, or, if only the
/// trailers may tell (a gRPC stream that fails its caller after its headers), until
/// its body's first frame, data or trailers. A request waiting for its place has not
/// reached the service yet: it is called once admitted, or, once the connection logs
/// in with its credentials, at once. Once the connection has used up its tries or is
/// being closed, every further request is answered `429 Too Many Requests` at once,
/// without reaching the service. Logins whose credentials travel in the body (forms,
/// JSON) are attempts only if a classifier's [`is_attempt`](ClassifyLogin::is_attempt)
/// says so, by path: [`count_every_failure`](StatusClassifier::count_every_failure),
/// or a handler's own [`LoginSession::failed`], counts their failures, but holds none
/// of them to the tries. HTTP/1 serves one request at a time on a connection: nothing
/// is held there, and nothing is hashed.
///
/// Requests without a session (no [`SessionLayer`](super::SessionLayer) below the
/// adapter) pass through untouched.
#[derive(Debug, Clone, Default)]
pub struct ReportLoginLayer<C = StatusClassifier> {
    classify: C,
}

impl ReportLoginLayer {
    /// Reports with the [`StatusClassifier`] defaults.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C> ReportLoginLayer<C> {
    /// Reports with another classifier: a [`StatusClassifier`] with other settings, or a
    /// closure `Fn(StatusCode, &HeaderMap) -> Option<LoginOutcome>`.
    pub fn classify_with<D: ClassifyLogin>(self, classify: D) -> ReportLoginLayer<D> {
        ReportLoginLayer { classify }
    }
}

impl<S, C: Clone> Layer<S> for ReportLoginLayer<C> {
    type Service = ReportLogin<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ReportLogin {
            inner,
            classify: self.classify.clone(),
        }
    }
}

/// A request-level service under a [`ReportLoginLayer`].
#[derive(Debug, Clone)]
pub struct ReportLogin<S, C = StatusClassifier> {
    inner: S,
    classify: C,
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for ReportLogin<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    C: ClassifyLogin,
{
    type Response = Response<ReportBody<ResBody, C>>;
    type Error = S::Error;
    type Future = ReportFuture<S, Request<ReqBody>, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let session = request
            .extensions()
            .get::<ConnExtensions>()
            .and_then(ConnExtensions::login_session)
            .cloned();
        let Some(session) = session else {
            return ReportFuture {
                answer: Answer::call(&mut self.inner, request),
                report: None,
            };
        };
        let classify = &self.classify;
        let attempt = classify.is_attempt(request.method(), request.uri(), request.headers());
        let answer = Answer::start(&mut self.inner, &mut Some(request), &session, attempt);
        ReportFuture {
            answer,
            report: Some(Report {
                counts_failures: attempt || classify.counts_every_failure(),
                session,
                classify: classify.clone(),
            }),
        }
    }
}

/// What a request's response reports, and on which session.
#[derive(Debug)]
struct Report<C> {
    session: LoginSession,
    classify: C,
    /// Whether a failure counts: the request is a login attempt, or every failure
    /// counts.
    counts_failures: bool,
}

/// The response future of [`ReportLogin`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ReportFuture<S, Req, C>
where
    S: Service<Req>,
{
    #[pin]
    answer: Answer<S, Req>,
    /// Until the response is made.
    report: Option<Report<C>>,
}

impl<S, Req, C> std::fmt::Debug for ReportFuture<S, Req, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportFuture")
            .field("answer", &self.answer)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, B> Future for ReportFuture<S, Req, C>
where
    S: Service<Req, Response = Response<B>>,
    C: ClassifyLogin,
{
    type Output = Result<Response<ReportBody<B, C>>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(response) = ready!(this.answer.as_mut().poll_answer(cx))? else {
            return Poll::Ready(Ok(too_many_requests(ReportBody {
                inner: None,
                report: None,
                pending: PendingOutcome::default(),
            })));
        };
        let mut report = this.report.take();
        if let Some(Report {
            session,
            classify,
            counts_failures,
            ..
        }) = &report
            && report_outcome(
                session,
                classify.classify_response(response.status(), response.headers()),
                *counts_failures,
            )
        {
            // One outcome per response: the trailers have nothing more to say.
            report = None;
        }
        let pending = this.answer.reported(report.is_some());
        Poll::Ready(Ok(response.map(|body| ReportBody {
            inner: Some(body),
            report,
            pending,
        })))
    }
}

/// A request on a connection with a login session, until its service answers: on a
/// multiplexed connection, a login attempt first waits for a place among the
/// connection's tries; on a connection being closed, it is refused without reaching
/// the service. Shared by [`ReportLogin`] and the HTTP adapter's own report.
#[pin_project]
pub(crate) struct Answer<S: Service<Req>, Req> {
    #[pin]
    state: State<S, Req>,
    /// The attempt's place, given back once its response is classified
    /// ([`reported`](Self::reported)), or, if only its trailers may tell, with them or
    /// its first data ([`PendingOutcome`]).
    permit: Option<AttemptPermit>,
}

#[pin_project(project = StateProj)]
enum State<S, Req>
where
    S: Service<Req>,
{
    /// A login attempt, waiting for a place among the connection's tries before its
    /// service is called.
    Waiting {
        wait: AttemptWait,
        call: Option<(S, Req)>,
    },
    /// The connection is being closed: answered at once, without the service.
    Refused,
    Called {
        #[pin]
        future: S::Future,
    },
}

impl<S: Service<Req>, Req> std::fmt::Debug for Answer<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.state {
            State::Waiting { .. } => "waiting for a login attempt's place",
            State::Refused => "refused",
            State::Called { .. } => "called",
        })
    }
}

impl<S: Service<Req>, Req> Answer<S, Req> {
    /// Calls the service at once: a request no session holds back.
    #[inline]
    pub(crate) fn call(service: &mut S, request: Req) -> Self {
        Self {
            state: State::Called {
                future: service.call(request),
            },
            permit: None,
        }
    }

    /// The service's response once it has answered; `None` for a request refused
    /// without reaching it, to be answered `429 Too Many Requests`.
    #[inline]
    pub(crate) fn poll_answer(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<S::Response>, S::Error>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { wait, call } => match ready!(Pin::new(wait).poll(cx)) {
                    Ok(permit) => {
                        *this.permit = permit;
                        let (mut service, request) = call.take().expect("called once");
                        let future = service.call(request);
                        this.state.set(State::Called { future });
                    }
                    Err(TriesUsedUp) => this.state.set(State::Refused),
                },
                StateProj::Refused => return Poll::Ready(Ok(None)),
                StateProj::Called { future } => {
                    return future.poll(cx).map(|outcome| outcome.map(Some));
                }
            }
        }
    }

    /// The response's head is classified: the attempts waiting see the try this one
    /// used, unless only its trailers may tell (`pending`); the place then goes with
    /// the body.
    #[inline]
    pub(crate) fn reported(self: Pin<&mut Self>, pending: bool) -> PendingOutcome {
        let permit = self.project().permit.take();
        PendingOutcome(permit.filter(|_| pending))
    }
}

/// A login attempt's place, kept by its response's body while only the trailers may
/// still tell the outcome (a gRPC stream that fails its caller's authentication after
/// its headers): given back at the body's first frame, its data or its trailers, or its
/// end. A stream that sends data goes on without holding the connection's other
/// attempts back; one that fails sends none first.
#[derive(Debug, Default)]
pub(crate) struct PendingOutcome(Option<AttemptPermit>);

impl PendingOutcome {
    /// The body has sent a frame, or ended.
    #[inline]
    pub(crate) fn settle(&mut self) {
        if self.0.is_some() {
            self.0 = None;
        }
    }
}

impl<S: Service<Request<B>> + Clone, B> Answer<S, Request<B>> {
    /// A request on `session`'s connection. A login `attempt` (as
    /// [`ClassifyLogin::is_attempt`] says) on an HTTP/2 connection waits for its place
    /// before the service is called, unless the connection logged in with its
    /// credentials, since the service may check credentials in `call` itself (tonic's
    /// interceptors do); the ready service goes with the request and a clone takes its
    /// place. The request stays in its slot until the service is called or the attempt
    /// waits: each move of a request is a copy of its few hundred bytes.
    #[inline]
    pub(crate) fn start(
        service: &mut S,
        request: &mut Option<Request<B>>,
        session: &LoginSession,
        attempt: bool,
    ) -> Self {
        let pending = request.as_ref().expect("a request to answer");
        if session.state.is_evicted() {
            return Self {
                state: State::Refused,
                permit: None,
            };
        }
        if attempt && pending.version() >= Version::HTTP_2 {
            let credentials = credentials(pending.headers());
            if !session.state.logged_in_with(credentials) {
                return Self::wait(service, request, session, credentials);
            }
        }
        // HTTP/1 serves one request at a time on a connection: nothing to hold.
        Self::call(service, request.take().expect("a request to answer"))
    }

    /// An attempt that waits for its place. Out of line: most requests are not
    /// attempts, and the code they run stays compact.
    #[cold]
    #[inline(never)]
    fn wait(
        service: &mut S,
        request: &mut Option<Request<B>>,
        session: &LoginSession,
        credentials: Credentials,
    ) -> Self {
        let clone = service.clone();
        Self {
            state: State::Waiting {
                wait: session.attempt(credentials),
                call: Some((
                    std::mem::replace(service, clone),
                    request.take().expect("a request to answer"),
                )),
            },
            permit: None,
        }
    }
}

/// The key of the credentials' hashes: random for each process.
static CREDENTIALS_KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// A request's `Authorization` and `Proxy-Authorization` values, hashed under the
/// process's key; [`Credentials::NONE`] if it carries neither. Only for an HTTP/2 login
/// attempt: one hash of a few dozen bytes.
fn credentials(headers: &HeaderMap) -> Credentials {
    let mut hasher = CREDENTIALS_KEY.build_hasher();
    let mut any = false;
    for name in [AUTHORIZATION, PROXY_AUTHORIZATION] {
        for value in headers.get_all(name) {
            any = true;
            hasher.write(value.as_bytes());
            // Ends the value: `a` then `bc` is not `ab` then `c`.
            hasher.write_u8(0xff);
        }
        // Ends the header's values: one in `Authorization` is not one in the other.
        hasher.write_u8(0);
    }
    if any {
        Credentials::from_hash(hasher.finish())
    } else {
        Credentials::NONE
    }
}

/// Reports `outcome` on the session, a failure only if it `counts_failures` (see
/// [`ClassifyLogin`]); whether there was one.
#[inline]
pub(crate) fn report_outcome(
    session: &LoginSession,
    outcome: Option<LoginOutcome>,
    counts_failures: bool,
) -> bool {
    match outcome {
        // The response is already made; closing comes after it is sent.
        Some(LoginOutcome::Failed) => {
            if counts_failures {
                let _: AfterFailure = session.failed();
            }
        }
        Some(LoginOutcome::Succeeded) => session.succeeded(),
        None => return false,
    }
    true
}

/// A [`ClassifyLogin`] the HTTP adapter holds for all its connections, behind one
/// pointer: no type parameter on the adapter, and no clone per request.
#[derive(Clone)]
pub(crate) struct SharedClassifier(Arc<dyn Classify>);

/// [`ClassifyLogin`] without `Clone`, so that it can be a trait object.
trait Classify: Send + Sync + 'static {
    fn response_outcome(&self, status: StatusCode, headers: &HeaderMap) -> Option<LoginOutcome>;
    fn trailers_outcome(&self, trailers: &HeaderMap) -> Option<LoginOutcome>;
    fn may_be_attempt(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool;
    fn counts_all_failures(&self) -> bool;
}

impl<C: ClassifyLogin + Send + Sync + 'static> Classify for C {
    fn response_outcome(&self, status: StatusCode, headers: &HeaderMap) -> Option<LoginOutcome> {
        self.classify_response(status, headers)
    }

    fn trailers_outcome(&self, trailers: &HeaderMap) -> Option<LoginOutcome> {
        self.classify_trailers(trailers)
    }

    fn may_be_attempt(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        self.is_attempt(method, uri, headers)
    }

    fn counts_all_failures(&self) -> bool {
        self.counts_every_failure()
    }
}

impl SharedClassifier {
    pub(crate) fn new<C: ClassifyLogin + Send + Sync + 'static>(classify: C) -> Self {
        Self(Arc::new(classify))
    }

    /// [`ClassifyLogin::classify_response`].
    pub(crate) fn response(&self, status: StatusCode, headers: &HeaderMap) -> Option<LoginOutcome> {
        self.0.response_outcome(status, headers)
    }

    /// [`ClassifyLogin::classify_trailers`].
    pub(crate) fn trailers(&self, trailers: &HeaderMap) -> Option<LoginOutcome> {
        self.0.trailers_outcome(trailers)
    }

    /// [`ClassifyLogin::is_attempt`].
    pub(crate) fn is_attempt<B>(&self, request: &Request<B>) -> bool {
        self.0
            .may_be_attempt(request.method(), request.uri(), request.headers())
    }

    /// [`ClassifyLogin::counts_every_failure`].
    pub(crate) fn counts_every_failure(&self) -> bool {
        self.0.counts_all_failures()
    }
}

impl std::fmt::Debug for SharedClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedClassifier")
    }
}

/// A response body that reports a login outcome found in its trailers.
#[pin_project]
#[derive(Debug)]
pub struct ReportBody<B, C = StatusClassifier> {
    /// `None` for a request answered without reaching the service: no body.
    #[pin]
    inner: Option<B>,
    report: Option<Report<C>>,
    pending: PendingOutcome,
}

impl<B: Body, C: ClassifyLogin> Body for ReportBody<B, C> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let Some(report) = this.report.take()
        {
            report_outcome(
                &report.session,
                report.classify.classify_trailers(trailers),
                report.counts_failures,
            );
        }
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

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for LoginSession {
    type Rejection = (StatusCode, &'static str);

    /// The connection's session, for a handler to report on explicitly.
    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let conn = parts.extensions.get::<ConnExtensions>();
        conn.and_then(ConnExtensions::login_session)
            .cloned()
            .ok_or((
                StatusCode::INTERNAL_SERVER_ERROR,
                "no login session: serve under tower_bouncer::login::SessionLayer",
            ))
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(grpc_status: Option<&'static str>, others: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for n in 0..others {
            let name = http::HeaderName::try_from(format!("x-other-{n}")).unwrap();
            headers.insert(name, HeaderValue::from_static("1"));
        }
        if let Some(status) = grpc_status {
            headers.insert(GRPC_STATUS, HeaderValue::from_static(status));
        }
        headers
    }

    #[test]
    fn grpc_unauthenticated_is_found_among_few_headers_or_many() {
        let classify = StatusClassifier::default();
        for others in [0, 3, SCANNED_HEADERS, 20] {
            let failed = classify.classify_response(StatusCode::OK, &headers(Some("16"), others));
            assert_eq!(failed, Some(LoginOutcome::Failed), "among {others}");
            let ok = classify.classify_response(StatusCode::OK, &headers(Some("0"), others));
            assert_eq!(ok, None, "among {others}");
            assert_eq!(
                classify.classify_response(StatusCode::OK, &headers(None, others)),
                None
            );
        }
    }

    #[test]
    fn credentials_are_found_among_few_headers_or_many() {
        let classify = StatusClassifier::default();
        let (method, uri) = (Method::GET, Uri::from_static("/"));
        for others in [0, 3, SCANNED_HEADERS, 20] {
            for name in [AUTHORIZATION, PROXY_AUTHORIZATION] {
                let mut with = headers(None, others);
                with.insert(name, HeaderValue::from_static("Basic YTpi"));
                assert!(classify.is_attempt(&method, &uri, &with), "among {others}");
            }
            let without = headers(Some("0"), others);
            assert!(
                !classify.is_attempt(&method, &uri, &without),
                "among {others}"
            );
        }
    }

    #[test]
    fn a_grpc_status_counts_only_on_a_200_as_grpc_sends_it() {
        let classify = StatusClassifier::default();
        let unauthenticated = headers(Some("16"), 1);
        assert_eq!(
            classify.classify_response(StatusCode::BAD_GATEWAY, &unauthenticated),
            None
        );
        assert_eq!(
            classify.classify_trailers(&unauthenticated),
            Some(LoginOutcome::Failed)
        );
    }
}
