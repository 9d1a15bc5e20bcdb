use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{
    rustls::ServerConnection,
    server::{Accept, TlsStream},
};
use tower::Service;

use super::{TlsError, TlsInfo, layer::Shared};
use crate::{BoxError, Conn, Parts, close::Requested, deadline::ShrinkingDeadline};

/// A connection's handshake, then the inner service's future on the decrypted stream.
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<S, IO, F> {
    #[pin]
    state: State<S, IO, F>,
    shared: Arc<Shared>,
}

#[pin_project(project = StateProj)]
enum State<S, IO, F> {
    Handshake {
        /// Boxed: the handshake's state is large, and no longer needed once the
        /// connection is served.
        handshake: Pin<Box<Handshake<IO>>>,
        /// The service to call once the handshake is done, and the connection's parts.
        next: Option<(S, Parts)>,
    },
    Serving {
        #[pin]
        connection: F,
    },
}

/// A handshake, and the deadline it must finish by.
#[pin_project]
struct Handshake<IO> {
    #[pin]
    accept: Accept<IO>,
    #[pin]
    deadline: ShrinkingDeadline,
    /// Set the first time the client makes us wait: a draining server closes the
    /// connection at once, as it has no request under way.
    close: Option<Requested>,
}

impl<S, IO, F> ResponseFuture<S, IO, F> {
    pub(super) fn new(accept: Accept<IO>, inner: S, parts: Parts, shared: Arc<Shared>) -> Self {
        let deadline = ShrinkingDeadline::after(shared.handshake_timeout, &shared.scaler);
        Self {
            state: State::Handshake {
                handshake: Box::pin(Handshake {
                    accept,
                    deadline,
                    close: None,
                }),
                next: Some((inner, parts)),
            },
            shared,
        }
    }
}

impl<S, IO, F> Future for ResponseFuture<S, IO, F>
where
    S: Service<Conn<TlsStream<IO>>, Response = (), Future = F>,
    S::Error: Into<BoxError>,
    F: Future<Output = Result<(), S::Error>>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Handshake { handshake, next } => {
                    let handshake = handshake.as_mut().project();
                    let outcome = match handshake.accept.poll(cx) {
                        Poll::Ready(outcome) => Ok(outcome),
                        Poll::Pending => {
                            let (_, parts) = next.as_mut().expect("polled after completion");
                            let close = handshake
                                .close
                                .get_or_insert_with(|| parts.graceful_close().requested());
                            if Pin::new(close).poll(cx).is_ready() {
                                Err(TlsError::CloseRequested)
                            } else {
                                let passed =
                                    handshake.deadline.poll_passed(cx, &this.shared.scaler);
                                Err(TlsError::Timeout(ready!(passed)))
                            }
                        }
                    };
                    let (mut inner, mut parts) = next.take().expect("polled after completion");
                    let failure = match outcome {
                        Ok(Ok(stream)) => {
                            this.shared.completed();
                            describe(stream.get_ref().1, &mut parts);
                            let connection = inner.call(Conn::from_parts(stream, parts));
                            this.state.set(State::Serving { connection });
                            continue;
                        }
                        Ok(Err(error)) => TlsError::from_handshake(error),
                        Err(ended) => ended,
                    };
                    let error = this.shared.failed(failure, parts.peer_addr);
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Serving { connection } => {
                    return connection.poll(cx).map_err(Into::into);
                }
            }
        }
    }
}

/// Leaves what the handshake settled for the layers and the protocol below.
fn describe(session: &ServerConnection, parts: &mut Parts) {
    let alpn = session.alpn_protocol();
    parts.http_version = match alpn {
        Some(b"h2") => Some(http::Version::HTTP_2),
        Some(b"http/1.1") => Some(http::Version::HTTP_11),
        Some(b"http/1.0") => Some(http::Version::HTTP_10),
        _ => None,
    };
    parts
        .extensions
        .insert(TlsInfo::new(session.server_name(), alpn));
}

impl<S, IO, F> fmt::Debug for ResponseFuture<S, IO, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Handshake { .. } => "handshake",
            State::Serving { .. } => "serving",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
