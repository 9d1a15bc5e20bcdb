//! Bridges from HTTP and gRPC responses to the login session.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;
use tower::Service;
use tower_layer::Layer;

use super::{AfterFailure, LoginSession};

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
pub trait ClassifyLogin: Clone {
    /// From the status and headers; `None` when the response says nothing about a login.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<LoginOutcome>;

    /// From a body's trailers (gRPC puts its status there); `None` by default.
    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<LoginOutcome> {
        let _ = trailers;
        None
    }
}

/// The default classifier: `401 Unauthorized` and gRPC `UNAUTHENTICATED` (status 16, in
/// the headers of a trailers-only response or in the trailers) are failed logins;
/// `403 Forbidden` too if asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusClassifier {
    forbidden_is_failure: bool,
}

impl StatusClassifier {
    /// Whether `403 Forbidden` is a failed login too; it is not by default, since it
    /// usually means an authenticated user lacks a permission.
    pub fn forbidden_is_failure(mut self, yes: bool) -> Self {
        self.forbidden_is_failure = yes;
        self
    }
}

/// gRPC's `UNAUTHENTICATED`.
const GRPC_UNAUTHENTICATED: &str = "16";

fn grpc_unauthenticated(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|status| status == GRPC_UNAUTHENTICATED)
}

impl ClassifyLogin for StatusClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<LoginOutcome> {
        let failed = status == StatusCode::UNAUTHORIZED
            || (self.forbidden_is_failure && status == StatusCode::FORBIDDEN)
            || grpc_unauthenticated(headers);
        failed.then_some(LoginOutcome::Failed)
    }

    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<LoginOutcome> {
        grpc_unauthenticated(trailers).then_some(LoginOutcome::Failed)
    }
}

/// Any `Fn(StatusCode, &HeaderMap) -> Option<LoginOutcome>` classifies responses, for
/// custom rules.
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
/// `UNAUTHENTICATED` is a failed login, which (with one try per connection) closes the
/// connection once the response is sent and counts toward the peer's ban.
///
/// Put it around an axum `Router` or tonic routes, inside the
/// [`HttpService`](crate::http::HttpService):
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
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    C: ClassifyLogin,
{
    type Response = Response<ReportBody<ResBody, C>>;
    type Error = S::Error;
    type Future = ReportFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let session = request.extensions().get::<LoginSession>().cloned();
        ReportFuture {
            inner: self.inner.call(request),
            report: session.map(|session| (session, self.classify.clone())),
        }
    }
}

/// The response future of [`ReportLogin`].
#[pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct ReportFuture<F, C> {
    #[pin]
    inner: F,
    report: Option<(LoginSession, C)>,
}

impl<F, C, B, E> Future for ReportFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: ClassifyLogin,
{
    type Output = Result<Response<ReportBody<B, C>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let mut report = this.report.take();
        if let Some((session, classify)) = &report
            && let Some(outcome) = classify.classify_response(response.status(), response.headers())
        {
            apply(session, outcome);
            // One outcome per response: the trailers have nothing more to say.
            report = None;
        }
        Poll::Ready(Ok(response.map(|body| ReportBody {
            inner: body,
            report,
        })))
    }
}

fn apply(session: &LoginSession, outcome: LoginOutcome) {
    match outcome {
        LoginOutcome::Failed => {
            // The response is already made; closing comes after it is sent.
            let _: AfterFailure = session.failed();
        }
        LoginOutcome::Succeeded => session.succeeded(),
    }
}

/// A response body that reports a login outcome found in its trailers.
#[pin_project]
#[derive(Debug)]
pub struct ReportBody<B, C = StatusClassifier> {
    #[pin]
    inner: B,
    report: Option<(LoginSession, C)>,
}

impl<B: Body, C: ClassifyLogin> Body for ReportBody<B, C> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let Some((session, classify)) = this.report.take()
            && let Some(outcome) = classify.classify_trailers(trailers)
        {
            apply(&session, outcome);
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

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for LoginSession {
    type Rejection = (StatusCode, &'static str);

    /// The connection's session, for a handler to report on explicitly.
    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<LoginSession>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "no login session: serve under tower_bouncer::login::SessionLayer",
        ))
    }
}
