//! What the admission layers share: the refusal error, the optional refusal message,
//! and the response future that holds a connection's slot.

use std::{
    error::Error,
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use pin_project::pin_project;
use tokio::{io::AsyncWrite, time::Sleep};

#[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
use crate::peer::PeerKey;
use crate::{BoxError, Conn, deadline::deadline_after, throttle::LogThrottle};

/// A connection refused by an admission layer. Every admission layer fails its
/// connection with this one type, inside the [`BoxError`]: downcast to read why.
///
/// ```
/// # use tower_bouncer::{BoxError, admission::Rejected};
/// fn log_refusal(error: &BoxError) {
///     if let Some(rejected) = error.downcast_ref::<Rejected>() {
///         eprintln!("{} refused: {}", rejected.peer(), rejected.reason());
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    reason: Reason,
    peer: SocketAddr,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The server already serves its maximum number of connections.
    ConnectionLimit {
        /// The maximum.
        limit: usize,
    },
    /// This peer already has its maximum number of connections.
    #[cfg(feature = "peer-limit")]
    PeerLimit {
        /// The peer's key.
        key: PeerKey,
        /// The maximum per peer.
        limit: usize,
    },
    /// The table of tracked peers is full and is set to refuse new peers.
    #[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
    PeerTableFull {
        /// The table's capacity.
        capacity: usize,
    },
    /// This peer opens connections faster than its rate.
    #[cfg(feature = "rate-limit")]
    PeerRate {
        /// The peer's key.
        key: PeerKey,
        /// When the peer may connect again.
        retry_after: Duration,
    },
    /// All peers together open connections faster than the global rate.
    #[cfg(feature = "rate-limit")]
    GlobalRate {
        /// When a connection may be accepted again.
        retry_after: Duration,
    },
    /// This peer is banned for failed logins.
    #[cfg(feature = "login")]
    Banned {
        /// The peer's key.
        key: PeerKey,
        /// How long the ban still runs.
        remaining: Duration,
    },
    /// As many connections as allowed are waiting to authenticate (OpenSSH's
    /// `MaxStartups` full).
    #[cfg(feature = "login")]
    StartupsFull {
        /// The most unauthenticated connections.
        limit: usize,
    },
    /// Dropped at random because many connections are waiting to authenticate
    /// (OpenSSH's `MaxStartups` early drop).
    #[cfg(feature = "login")]
    EarlyDrop {
        /// Unauthenticated connections when this one arrived.
        unauthenticated: usize,
    },
    /// This peer already has its most connections waiting to authenticate (OpenSSH's
    /// `PerSourceMaxStartups`).
    #[cfg(feature = "login")]
    PeerStartups {
        /// The peer's key.
        key: PeerKey,
        /// The most per peer.
        limit: usize,
    },
}

impl Rejected {
    pub(crate) fn new(reason: Reason, peer: SocketAddr) -> Self {
        Self { reason, peer }
    }

    /// Why the connection was refused.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The address of the refused peer.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// How long until the same peer may be admitted, for refusals that know it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.reason {
            #[cfg(feature = "rate-limit")]
            Reason::PeerRate { retry_after, .. } | Reason::GlobalRate { retry_after } => {
                Some(retry_after)
            }
            #[cfg(feature = "login")]
            Reason::Banned { remaining, .. } => Some(remaining),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ConnectionLimit { limit } => {
                write!(f, "the server is at its limit of {limit} connections")
            }
            #[cfg(feature = "peer-limit")]
            Reason::PeerLimit { key, limit } => {
                write!(f, "{key} already has its limit of {limit} connections")
            }
            #[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
            Reason::PeerTableFull { capacity } => {
                write!(f, "the peer table is full ({capacity} peers)")
            }
            #[cfg(feature = "rate-limit")]
            Reason::PeerRate { key, retry_after } => {
                write!(f, "{key} connects too fast; retry after {retry_after:?}")
            }
            #[cfg(feature = "rate-limit")]
            Reason::GlobalRate { retry_after } => {
                write!(
                    f,
                    "the server accepts no more connections for {retry_after:?}"
                )
            }
            #[cfg(feature = "login")]
            Reason::Banned { key, remaining } => {
                write!(f, "{key} is banned for another {remaining:?}")
            }
            #[cfg(feature = "login")]
            Reason::StartupsFull { limit } => {
                write!(f, "{limit} connections are already waiting to authenticate")
            }
            #[cfg(feature = "login")]
            Reason::EarlyDrop { unauthenticated } => write!(
                f,
                "dropped at random with {unauthenticated} connections waiting to authenticate"
            ),
            #[cfg(feature = "login")]
            Reason::PeerStartups { key, limit } => {
                write!(
                    f,
                    "{key} already has {limit} connections waiting to authenticate"
                )
            }
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection from {} refused: {}", self.peer, self.reason)
    }
}

impl Error for Rejected {}

/// What an admission layer does with a connection over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Close it at once, after the refusal message if one is set.
    #[default]
    Refuse,
    /// Do not accept it yet: the service is not ready until there is room, so the
    /// accept loop pauses and connections wait in the kernel's backlog.
    Backpressure,
}

/// What a refused connection is told before it is closed, if anything.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    message: Option<Bytes>,
    write_timeout: Duration,
}

impl Default for Refusal {
    fn default() -> Self {
        Self {
            message: None,
            write_timeout: Duration::from_millis(100),
        }
    }
}

impl Refusal {
    pub(crate) fn set_message(&mut self, message: Bytes) {
        self.message = (!message.is_empty()).then_some(message);
    }

    pub(crate) fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }
}

/// Builder methods every admission layer has for its refusal message.
macro_rules! refusal_builder_methods {
    () => {
        /// A short message written to each refused connection before it is closed,
        /// such as `b"ERROR busy\n"` or an HTTP `503` response. None by default.
        pub fn refusal_message(mut self, message: impl Into<bytes::Bytes>) -> Self {
            self.refusal.set_message(message.into());
            self
        }

        /// How long writing the refusal message may take before the connection is
        /// closed anyway; the server never waits on the client longer. 100 ms by
        /// default.
        pub fn refusal_write_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.refusal.set_write_timeout(timeout);
            self
        }
    };
}
pub(crate) use refusal_builder_methods;

/// Reports a refusal: a tracing event (at most one a second per layer, with the count of
/// the ones held back), then the future that tells the peer and closes.
pub(crate) fn refuse<F, IO>(
    conn: Conn<IO>,
    reason: Reason,
    refusal: &Refusal,
    log: &LogThrottle,
) -> ResponseFuture<F, IO> {
    let rejected = Rejected::new(reason, conn.peer_addr());
    if let Some(suppressed) = log.allow() {
        tracing::warn!(peer = %rejected.peer, reason = %rejected.reason, suppressed, "connection refused");
    }
    ResponseFuture {
        state: State::Refused(Box::new(Refusing {
            io: refusal.message.as_ref().map(|_| conn.into_io()),
            message: refusal.message.clone().unwrap_or_default(),
            write_timeout: refusal.write_timeout,
            deadline: None,
            rejected: Some(rejected),
        })),
    }
}

/// A connection's slot in an admission layer, released by its `Drop` when the
/// connection ends, however it ends: completion, error, panic or cancellation.
#[derive(Debug)]
pub(crate) enum Slot {
    /// The layer holds nothing for this connection (a rate limit, an exempt peer).
    None,
    #[cfg(feature = "limit")]
    Global(#[allow(dead_code, reason = "held for its Drop")] crate::limit::GlobalSlot),
    #[cfg(feature = "peer-limit")]
    Peer(#[allow(dead_code, reason = "held for its Drop")] crate::peer_limit::PeerSlot),
}

/// The response future of the admission layers: the inner connection's future with the
/// slot it holds, or the refusal of the connection.
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<F, IO> {
    #[pin]
    state: State<F, IO>,
}

#[pin_project(project = StateProj)]
enum State<F, IO> {
    Admitted {
        #[pin]
        inner: F,
        slot: Slot,
    },
    /// Boxed: refusals are the rare path, and every admitted connection's future
    /// would otherwise be as large as a refusal.
    Refused(Box<Refusing<IO>>),
}

/// A refused connection: its message being written, then the error.
struct Refusing<IO> {
    io: Option<IO>,
    message: Bytes,
    write_timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    rejected: Option<Rejected>,
}

impl<IO: AsyncWrite + Unpin> Refusing<IO> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<BoxError> {
        if let Some(io) = &mut self.io {
            let written = write_refusal(
                io,
                &mut self.message,
                self.write_timeout,
                &mut self.deadline,
                cx,
            );
            if written.is_pending() {
                return Poll::Pending;
            }
            // Dropping the stream closes the connection.
            self.io = None;
        }
        let rejected = self.rejected.take().expect("polled after completion");
        Poll::Ready(rejected.into())
    }
}

impl<F, IO> ResponseFuture<F, IO> {
    pub(crate) fn admitted(inner: F, slot: Slot) -> Self {
        Self {
            state: State::Admitted { inner, slot },
        }
    }
}

impl<F, IO> fmt::Debug for ResponseFuture<F, IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Admitted { .. } => f.write_str("ResponseFuture::Admitted"),
            State::Refused(refusing) => f
                .debug_tuple("ResponseFuture::Refused")
                .field(&refusing.rejected)
                .finish(),
        }
    }
}

impl<F, E, IO> Future for ResponseFuture<F, IO>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
    IO: AsyncWrite + Unpin,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { inner, slot } => {
                let outcome = std::task::ready!(inner.poll(cx));
                // Give the slot back as soon as the connection is over, not when the
                // future is dropped.
                *slot = Slot::None;
                Poll::Ready(outcome.map_err(Into::into))
            }
            StateProj::Refused(refusing) => refusing.poll(cx).map(Err),
        }
    }
}

/// Writes what is left of the message, then shuts the write side; gives up at the
/// deadline, which only starts if the peer's window is full (a fresh connection takes a
/// short message at once).
fn write_refusal<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    message: &mut Bytes,
    write_timeout: Duration,
    deadline: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        let progress = if message.has_remaining() {
            Pin::new(&mut *io)
                .poll_write(cx, message)
                .map_ok(|written| {
                    message.advance(written);
                    written
                })
        } else {
            Pin::new(&mut *io).poll_shutdown(cx).map_ok(|()| 0)
        };
        match progress {
            Poll::Ready(Ok(written)) if written > 0 => continue,
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => {
                let deadline = deadline.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(deadline_after(write_timeout)))
                });
                return deadline.as_mut().poll(cx);
            }
        }
    }
}
