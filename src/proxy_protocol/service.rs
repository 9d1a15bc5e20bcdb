use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use pin_project::{pin_project, pinned_drop};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use super::{
    ProxiedBy, ProxyProtocolError, Rewind,
    header::{self, Header, Scan, V1_MAX_LEN},
    layer::Shared,
    readers::Reader,
};
use crate::{BoxError, Conn, close::Requested, deadline::ShrinkingDeadline};

/// What is read before knowing more: a whole version 1 header, a version 2 header with
/// IPv6 addresses and a few TLVs, or the start of the protocol's first message.
const FIRST_READ: usize = 256;
const _: () = assert!(FIRST_READ > V1_MAX_LEN);

/// A connection-level service under a [`ProxyProtocolLayer`](super::ProxyProtocolLayer).
#[derive(Debug, Clone)]
pub struct ProxyProtocol<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ProxyProtocol<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    crate::inner_service_accessors!();
}

impl<S, IO> Service<Conn<IO>> for ProxyProtocol<S>
where
    S: Service<Conn<Rewind<IO>>, Response = ()> + Clone,
    S::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S, IO, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        let trusted = self.shared.is_trusted(conn.peer_addr().ip());
        if !trusted && !self.shared.refuse_untrusted_headers {
            self.shared.stats.untrusted.add();
            let conn = conn.map_io(|io| Rewind::new(io, Bytes::new()));
            return ResponseFuture {
                state: State::Running(self.inner.call(conn)),
            };
        }
        // The inner service is called once the header is read: the future takes the
        // service made ready by `poll_ready`, and leaves a clone to be made ready next.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Reading(Box::pin(Reading {
                conn: Some(conn),
                inner: Some(ready),
                buffer: BytesMut::with_capacity(FIRST_READ),
                trusted,
                reader: self.shared.readers(trusted).join(),
                close: None,
                shared: self.shared.clone(),
                deadline: None,
            })),
        }
    }
}

/// The future of a connection under a [`ProxyProtocolLayer`](super::ProxyProtocolLayer):
/// its header read, then the inner service's future.
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<S, IO, F> {
    #[pin]
    state: State<S, IO, F>,
}

#[pin_project(project = StateProj)]
enum State<S, IO, F> {
    /// Boxed: once the header is read, the connection's future no longer carries what
    /// reading it took.
    Reading(Pin<Box<Reading<S, IO>>>),
    Running(#[pin] F),
}

/// A connection whose first bytes are being read.
#[pin_project(PinnedDrop)]
struct Reading<S, IO> {
    /// Until it is handed to the inner service.
    conn: Option<Conn<IO>>,
    /// The ready inner service, until it is called.
    inner: Option<S>,
    buffer: BytesMut,
    trusted: bool,
    /// Its place among the readers, given back when it is dropped.
    reader: Reader,
    /// Set the first time the source makes us wait: a draining server closes the
    /// connection at once, as it has no request under way.
    close: Option<Requested>,
    shared: Arc<Shared>,
    /// Set the first time the source makes us wait.
    #[pin]
    deadline: Option<ShrinkingDeadline>,
}

#[pinned_drop]
impl<S, IO> PinnedDrop for Reading<S, IO> {
    fn drop(self: Pin<&mut Self>) {
        self.shared.readers(self.trusted).leave(&self.reader);
    }
}

/// What the first bytes turned out to be.
enum Outcome {
    Header(Header),
    /// Protocol data, as it was sent.
    NoHeader,
}

impl<S, IO> Reading<S, IO>
where
    S: Service<Conn<Rewind<IO>>, Response = ()>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads until the first bytes tell, then calls the inner service.
    fn poll_call(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Future, BoxError>> {
        let outcome = ready!(self.as_mut().poll_outcome(cx));
        let this = self.project();
        let conn = this.conn.take().expect("polled after completion");
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                this.shared.failed(&error, conn.peer_addr().ip());
                // Dropping the connection closes it: the source is a balancer, or
                // someone pretending to be one, and gets no message.
                return Poll::Ready(Err(error.into()));
            }
        };
        let mut buffer = std::mem::take(this.buffer);
        let conn = match outcome {
            Outcome::Header(header) => {
                buffer.advance(header.len);
                let (io, mut parts) = conn.into_parts();
                parts.extensions.insert(ProxiedBy {
                    balancer: parts.peer_addr,
                    accepted_on: parts.local_addr,
                });
                match header.addresses {
                    Some(addresses) => {
                        this.shared.stats.proxied.add();
                        parts.peer_addr = addresses.source;
                        parts.local_addr = addresses.destination;
                    }
                    None => this.shared.stats.local.add(),
                }
                Conn::from_parts(io, parts)
            }
            Outcome::NoHeader if *this.trusted => {
                this.shared.stats.without_header.add();
                conn
            }
            Outcome::NoHeader => {
                this.shared.stats.untrusted.add();
                conn
            }
        };
        let replay = if buffer.is_empty() {
            Bytes::new()
        } else {
            buffer.freeze()
        };
        let mut inner = this.inner.take().expect("polled after completion");
        Poll::Ready(Ok(inner.call(conn.map_io(|io| Rewind::new(io, replay)))))
    }

    /// Reads until the bytes read are a header, are not one, or fail.
    fn poll_outcome(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Outcome, ProxyProtocolError>> {
        let mut this = self.project();
        let shared = &**this.shared;
        // Whether the connection may carry no header.
        let optional = !*this.trusted || shared.optional_from_trusted;
        loop {
            let scan = match header::scan(this.buffer, shared.max_v2_len) {
                Ok(Scan::NotHeader) if !*this.trusted => return Poll::Ready(Ok(Outcome::NoHeader)),
                Ok(Scan::MaybeSignature) => Scan::MaybeSignature,
                // Anything else from an untrusted source is an attempt at a header.
                _ if !*this.trusted => {
                    return Poll::Ready(Err(ProxyProtocolError::UntrustedHeader));
                }
                scanned => scanned?,
            };
            let maybe_signature = scan == Scan::MaybeSignature;
            match scan {
                Scan::Complete(header) => return Poll::Ready(Ok(Outcome::Header(header))),
                Scan::NotHeader if optional => return Poll::Ready(Ok(Outcome::NoHeader)),
                Scan::NotHeader => return Poll::Ready(Err(ProxyProtocolError::Missing)),
                Scan::MaybeSignature | Scan::Incomplete { len: None } => {}
                Scan::Incomplete { len: Some(len) } => {
                    // Within the cap: the scan refused a longer header.
                    this.buffer.reserve(len - this.buffer.len());
                }
            }
            let conn = this.conn.as_mut().expect("polled after completion");
            match tokio_util::io::poll_read_buf(Pin::new(conn.io_mut()), cx, this.buffer) {
                Poll::Ready(Ok(0)) => {
                    let received = this.buffer.len();
                    // A signature cut short is protocol data where a header may be absent.
                    return Poll::Ready(if maybe_signature && optional {
                        Ok(Outcome::NoHeader)
                    } else {
                        Err(ProxyProtocolError::Incomplete { received })
                    });
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(ProxyProtocolError::Io(error))),
                Poll::Pending => {
                    let readers = shared.readers(*this.trusted);
                    if readers.poll_evicted(this.reader, cx).is_ready() {
                        let max = readers.max();
                        return Poll::Ready(Err(ProxyProtocolError::Evicted { max }));
                    }
                    let close = this
                        .close
                        .get_or_insert_with(|| conn.graceful_close().requested());
                    if Pin::new(close).poll(cx).is_ready() {
                        return Poll::Ready(Err(ProxyProtocolError::CloseRequested));
                    }
                    if this.deadline.is_none() {
                        let deadline = ShrinkingDeadline::after(shared.timeout, &shared.scaler);
                        this.deadline.set(Some(deadline));
                    }
                    let deadline = this.deadline.as_mut().as_pin_mut().expect("just set");
                    let limit = ready!(deadline.poll_passed(cx, &shared.scaler));
                    return Poll::Ready(Err(ProxyProtocolError::TimedOut(limit)));
                }
            }
        }
    }
}

impl<S, IO, F> fmt::Debug for ResponseFuture<S, IO, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Reading(_) => f.write_str("ResponseFuture::Reading"),
            State::Running(_) => f.write_str("ResponseFuture::Running"),
        }
    }
}

impl<S, IO, F> Future for ResponseFuture<S, IO, F>
where
    S: Service<Conn<Rewind<IO>>, Response = (), Future = F>,
    F: Future<Output = Result<(), S::Error>>,
    S::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Result<(), BoxError>;

    // Inlined into the future that polls it: a connection's task polls every layer's
    // future at each wake-up, and a call per layer showed in each request's cost.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Running(future) => return future.poll(cx).map_err(Into::into),
                StateProj::Reading(reading) => {
                    let future = ready!(reading.as_mut().poll_call(cx))?;
                    state.set(State::Running(future));
                }
            }
        }
    }
}
