//! What the adapter does around each request: the connection's extensions in, the
//! request's life reported to the connection's timer, `Connection: close` once a close
//! is asked for.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http::{HeaderValue, Request, Response, Version, header::CONNECTION};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project::pin_project;
use tower::Service;

use crate::{
    GracefulClose,
    timeout::{Activity, RequestLimit, StreamDeadline},
};

/// What every request of one connection shares.
#[derive(Debug)]
pub(super) struct ConnShared {
    pub(super) extensions: http::Extensions,
    pub(super) close: GracefulClose,
    /// The connection's timer, told where requests and exchanges begin and end.
    pub(super) timed: Option<Arc<Activity>>,
    /// The request timeout, when the timer has one.
    pub(super) request_limit: Option<RequestLimit>,
}

/// The inner service, seen per request: it hands the connection's extensions to each
/// request, tells the timer about it, and marks HTTP/1 responses `Connection: close`
/// once a close is asked for.
#[derive(Debug, Clone)]
pub(super) struct RequestService<S> {
    pub(super) inner: S,
    pub(super) conn: Arc<ConnShared>,
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

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        request
            .extensions_mut()
            .extend(self.conn.extensions.clone());
        let http1 = request.version() < Version::HTTP_2;
        let conn = &self.conn;
        let mut finish_on_response = None;
        let mut deadline = None;
        if let (Some(activity), Some(limit)) = (&conn.timed, conn.request_limit) {
            let has_body = !request.body().is_end_stream();
            if !http1 {
                // HTTP/2's preface and first head were timed from the first byte; its
                // frames after that are not requests: each stream is timed on its own.
                activity.stop_timing_requests();
                deadline = has_body.then(|| Box::new(StreamDeadline::start(activity, limit)));
            } else if has_body {
                // Complete once the handler has answered, and so read the body or
                // given up on it.
                finish_on_response = Some(activity.clone());
            } else {
                activity.finish_request();
            }
        }
        ExchangeFuture {
            inner: self.inner.call(request),
            // `Connection` is an HTTP/1 header; HTTP/2 closes with GOAWAY instead.
            close: http1.then(|| conn.close.clone()),
            finish_on_response,
            deadline,
            exchange: conn.timed.as_ref().map(Exchange::open),
        }
    }
}

/// A request from its dispatch until its response is sent: while one is open, the
/// connection is not idle.
#[derive(Debug)]
struct Exchange(Arc<Activity>);

impl Exchange {
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
    /// Boxed: most requests have none.
    deadline: Option<Box<StreamDeadline>>,
    exchange: Option<Exchange>,
}

impl<F, B, E> Future for ExchangeFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ExchangeBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(deadline) = this.deadline
            && deadline.poll_expired(cx).is_ready()
        {
            // The connection is being closed; the handler runs until it is.
            *this.deadline = None;
        }
        let outcome = ready!(this.inner.poll(cx));
        *this.deadline = None;
        if let Some(activity) = this.finish_on_response.take() {
            activity.finish_request();
        }
        let mut response = outcome?;
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
