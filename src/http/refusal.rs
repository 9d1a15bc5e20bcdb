//! A refused connection answered in its own protocol: an HTTP/1.1 `503` or `429` with
//! `Retry-After` and `Connection: close`, the same status on HTTP/2's streams then
//! GOAWAY, or a gRPC trailers-only response with `UNAVAILABLE` or `RESOURCE_EXHAUSTED`.
//!
//! hyper serves the refused stream with a service that answers the first request with
//! the refusal and asks for nothing else: no keep-alive, one HTTP/2 stream at a time, a
//! graceful close as soon as the first request is in, and the connection closed
//! without an answer if another comes in anyway (an HTTP/2 client that never
//! acknowledges the PING before the final GOAWAY can still open streams). A client
//! that closes its side once its request is sent (HTTP/1 half-close) is answered all
//! the same. The admission layer's refusal deadline and linger slots bound the whole
//! exchange; this module only speaks HTTP.

use std::{
    convert::Infallible,
    future::{Pending, Ready, pending, ready},
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::admission::{MAX_DISCARDED, Reason, Rejected};

/// What opens every HTTP/2 connection (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first byte of a TLS record carrying a handshake: a client that speaks TLS cannot
/// read a cleartext answer, so it is closed at once.
const TLS_HANDSHAKE: u8 = 0x16;

/// The most bytes of output h2 buffers.
const MAX_SEND_BUF: usize = 8 * 1024;

/// A refused connection being answered.
pub(crate) struct Answer<IO> {
    phase: Phase<IO>,
    refusal: Arc<Refusal>,
}

enum Phase<IO> {
    /// Reading the first bytes to tell HTTP/2's preface from anything else, unless the
    /// TLS handshake agreed on HTTP/2.
    Detecting {
        io: IO,
        agreed_http2: bool,
        read: [u8; PREFACE.len()],
        len: usize,
    },
    Serving(Serving<IO>),
    Done,
}

/// The connection handed back once answered, for the admission layer to close as it
/// closes every refused connection.
pub(crate) struct Answered<IO> {
    pub(crate) io: IO,
    /// Whether hyper already shut the write side down.
    pub(crate) shut_down: bool,
    /// How many bytes were read from the client.
    pub(crate) read: usize,
}

struct Serving<IO> {
    connection: Connection<IO>,
    stream: Arc<Mutex<Lent<IO>>>,
    /// Requests that came in, counted by the service.
    requests: Arc<AtomicUsize>,
    going_away: bool,
}

type HyperIo<IO> = TokioIo<Shared<IO>>;

enum Connection<IO> {
    Http1(Pin<Box<http1::Connection<HyperIo<IO>, Answering>>>),
    Http2(Pin<Box<http2::Connection<HyperIo<IO>, Answering, TokioExecutor>>>),
}

impl<IO> Answer<IO> {
    /// Answers `io` on behalf of `rejected`; `http2` if the TLS handshake agreed on it.
    pub(crate) fn new(io: IO, http2: bool, rejected: &Rejected) -> Self {
        Self {
            phase: Phase::Detecting {
                io,
                agreed_http2: http2,
                read: [0; PREFACE.len()],
                len: 0,
            },
            refusal: Arc::new(Refusal::of(rejected)),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Answer<IO> {
    /// Ready with the connection once answered, or `None` if it is not worth more
    /// (a TLS client, or a stream that failed).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answered<IO>>> {
        loop {
            match &mut self.phase {
                Phase::Detecting {
                    io,
                    agreed_http2,
                    read,
                    len,
                } => {
                    if *agreed_http2 {
                        let Phase::Detecting { io, .. } =
                            std::mem::replace(&mut self.phase, Phase::Done)
                        else {
                            unreachable!("matched above")
                        };
                        self.phase =
                            Phase::Serving(Serving::new(io, Vec::new(), true, &self.refusal));
                        continue;
                    }
                    let mut buffer = ReadBuf::new(&mut read[*len..]);
                    match ready!(Pin::new(&mut *io).poll_read(cx, &mut buffer)) {
                        Ok(()) if !buffer.filled().is_empty() => {
                            *len += buffer.filled().len();
                        }
                        // The client closed or failed before asking anything.
                        _ => {
                            let Phase::Detecting { io, len, .. } =
                                std::mem::replace(&mut self.phase, Phase::Done)
                            else {
                                unreachable!("matched above")
                            };
                            return Poll::Ready(Some(Answered {
                                io,
                                shut_down: false,
                                read: len,
                            }));
                        }
                    }
                    if read[0] == TLS_HANDSHAKE {
                        self.phase = Phase::Done;
                        return Poll::Ready(None);
                    }
                    let http2 = read[..*len] == PREFACE[..*len];
                    if http2 && *len < PREFACE.len() {
                        continue;
                    }
                    let Phase::Detecting { io, read, len, .. } =
                        std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        unreachable!("matched above")
                    };
                    self.phase = Phase::Serving(Serving::new(
                        io,
                        read[..len].to_vec(),
                        http2,
                        &self.refusal,
                    ));
                }
                Phase::Serving(serving) => {
                    ready!(serving.poll(cx));
                    let Phase::Serving(serving) = std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        unreachable!("matched above")
                    };
                    return Poll::Ready(serving.into_answered());
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Serving<IO> {
    fn new(io: IO, replay: Vec<u8>, http2: bool, refusal: &Arc<Refusal>) -> Self {
        let stream = Arc::new(Mutex::new(Lent {
            read: replay.len(),
            replay: Bytes::from(replay),
            io,
            shut_down: false,
        }));
        let requests = Arc::new(AtomicUsize::new(0));
        let service = Answering {
            refusal: refusal.clone(),
            requests: requests.clone(),
        };
        let io = TokioIo::new(Shared(stream.clone()));
        let connection = if http2 {
            Connection::Http2(Box::pin(
                http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1)
                    // Headers as large as the refusal reads, as for HTTP/1 below.
                    .max_header_list_size(MAX_DISCARDED as u32)
                    .max_send_buf_size(MAX_SEND_BUF)
                    .serve_connection(io, service),
            ))
        } else {
            Connection::Http1(Box::pin(
                http1::Builder::new()
                    .keep_alive(false)
                    .header_read_timeout(None)
                    .half_close(true)
                    // A head as large as the refusal reads: a site's cookies make a
                    // browser's heads over 8 KiB, hyper's least, which hyper would
                    // answer `431` (no reason, no `Retry-After`). Its buffer grows only
                    // as it reads.
                    .max_buf_size(MAX_DISCARDED)
                    .serve_connection(io, service),
            ))
        };
        Self {
            connection,
            stream,
            requests,
            going_away: false,
        }
    }

    /// The connection back from hyper, which is dropped first.
    fn into_answered(self) -> Option<Answered<IO>> {
        drop(self.connection);
        let lent = Arc::into_inner(self.stream)?.into_inner();
        Some(Answered {
            io: lent.io,
            shut_down: lent.shut_down,
            read: lent.read,
        })
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Serving<IO> {
    /// Ready once hyper is done with the connection, however it ended, or once a second
    /// request came in: what follows is the same closing either way.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let done = match &mut self.connection {
                Connection::Http1(connection) => connection.as_mut().poll(cx).is_ready(),
                Connection::Http2(connection) => connection.as_mut().poll(cx).is_ready(),
            };
            // A second request is on HTTP/2 only (HTTP/1 is served without keep-alive):
            // a stream opened before the GOAWAY that ends the connection, which h2 sends
            // once the client acknowledges a PING, as it may never do. It is not
            // answered; the connection is closed now.
            let requests = self.requests.load(Ordering::Relaxed);
            if done || requests > 1 {
                return Poll::Ready(());
            }
            // HTTP/2: GOAWAY once a request is in, so that no other follows; polled
            // again to send it.
            match &mut self.connection {
                Connection::Http2(connection) if !self.going_away && requests == 1 => {
                    self.going_away = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ => return Poll::Pending,
            }
        }
    }
}

/// The refused stream while hyper holds it: shared so that it comes back when hyper is
/// done (hyper's HTTP/2 connection never gives its stream back).
struct Shared<IO>(Arc<Mutex<Lent<IO>>>);

struct Lent<IO> {
    io: IO,
    /// What detection read, given to hyper first.
    replay: Bytes,
    /// Bytes read from the client so far, up to [`MAX_DISCARDED`].
    read: usize,
    shut_down: bool,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Shared<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut lent = self.0.lock();
        if !lent.replay.is_empty() {
            let take = lent.replay.len().min(buf.remaining());
            buf.put_slice(&lent.replay.split_to(take));
            return Poll::Ready(Ok(()));
        }
        let room = MAX_DISCARDED.saturating_sub(lent.read).min(buf.remaining());
        if room == 0 {
            // As if the client had closed: enough was read.
            return Poll::Ready(Ok(()));
        }
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        ready!(Pin::new(&mut lent.io).poll_read(cx, &mut limited))?;
        let filled = limited.filled().len();
        lent.read += filled;
        buf.advance(filled);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Shared<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.lock().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut lent = self.0.lock();
        ready!(Pin::new(&mut lent.io).poll_shutdown(cx))?;
        lent.shut_down = true;
        Poll::Ready(Ok(()))
    }
}

/// What the request on a refused connection is answered.
#[derive(Debug)]
struct Refusal {
    /// `503`/`UNAVAILABLE` for a server at a limit, `429`/`RESOURCE_EXHAUSTED` for a
    /// client over a rate or banned.
    too_many: bool,
    retry_after: Option<HeaderValue>,
    message: &'static str,
}

impl Refusal {
    fn of(rejected: &Rejected) -> Self {
        let (too_many, message) = match rejected.reason() {
            Reason::ConnectionLimit { .. } => (false, "the server is at its connection limit"),
            #[cfg(feature = "peer-limit")]
            Reason::PeerLimit { .. } => (false, "too many connections from this client"),
            #[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
            Reason::PeerTableFull { .. } => (false, "the server tracks too many clients"),
            #[cfg(feature = "rate-limit")]
            Reason::PeerRate { .. } => (true, "this client connects too fast"),
            #[cfg(feature = "rate-limit")]
            Reason::GlobalRate { .. } => (true, "the server accepts no more connections now"),
            #[cfg(feature = "login")]
            Reason::Banned { .. } => (true, "this client is banned"),
            #[cfg(feature = "login")]
            Reason::StartupsFull { .. }
            | Reason::EarlyDrop { .. }
            | Reason::PeerStartups { .. } => {
                (false, "too many connections are waiting to authenticate")
            }
        };
        Self {
            too_many,
            retry_after: rejected
                .retry_after()
                .map(|wait| whole_seconds(wait).into()),
            message,
        }
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<String> {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|kind| kind.as_bytes().starts_with(b"application/grpc"));
        let mut response = Response::new(String::new());
        if !grpc {
            *response.status_mut() = if self.too_many {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            *response.body_mut() = format!("{}\n", self.message);
        }
        let headers = response.headers_mut();
        if grpc {
            // Trailers-only: the status in the headers of an empty response.
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            let code = if self.too_many {
                GRPC_RESOURCE_EXHAUSTED
            } else {
                GRPC_UNAVAILABLE
            };
            headers.insert("grpc-status", HeaderValue::from_static(code));
            // Plain ASCII without `%`: nothing to percent-encode.
            headers.insert("grpc-message", HeaderValue::from_static(self.message));
        } else {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        if let Some(retry_after) = &self.retry_after {
            headers.insert(header::RETRY_AFTER, retry_after.clone());
        }
        // HTTP/2 has no such header: GOAWAY says it.
        if request.version() < Version::HTTP_2 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

const GRPC_UNAVAILABLE: &str = "14";
const GRPC_RESOURCE_EXHAUSTED: &str = "8";

/// `Retry-After` counts whole seconds; a client told less than the wait comes back too
/// early, so a partial second counts as one.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The service hyper runs on a refused connection: it answers the first request, and
/// never the others, for which the connection is closed (see [`Serving::poll`]).
#[derive(Clone)]
struct Answering {
    refusal: Arc<Refusal>,
    requests: Arc<AtomicUsize>,
}

impl hyper::service::Service<Request<Incoming>> for Answering {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Either<
        Ready<Result<Response<String>, Infallible>>,
        Pending<Result<Response<String>, Infallible>>,
    >;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        if self.requests.fetch_add(1, Ordering::Relaxed) > 0 {
            // Dropped with the connection, which wakes hyper's task for the stream.
            return Either::Right(pending());
        }
        Either::Left(ready(Ok(self.refusal.answer(&request))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_second_counts_as_one() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
    }
}
