//! What the admission layers share: the refusal error, the optional refusal message,
//! dry run, and the response future that holds a connection's slot.
//!
//! # Dry run
//!
//! Every admission layer (and the ban check and the pre-authentication budget of
//! [`Login`](crate::login::Login)) has a `dry_run(bool)` builder method, to roll a
//! limit out before enforcing it, like nginx's `limit_conn_dry_run` or Envoy's shadow
//! mode. In dry run the decision is made as usual, counted apart (the layer's
//! `dry_run_refusals` in its stats, and `outcome="rejected_dry_run"` in the
//! `bouncer.rejected_connections` metric) and logged, throttled as refusals are, as
//! "connection would be refused"; then the connection is served anyway. It still takes
//! its place in the layer's counts (a cap's live count may go over the cap), so that
//! the figures say what enforcing would see. A backpressure mode in dry run does not
//! pause accepting. A connection served in dry run is no offence against its peer,
//! even where the same refusal would be one (`Offence::OverLimit`). A replica of a
//! [fleet](crate::fleet) whose login is in dry run applies the fleet's bans but adds
//! none: its offences and bans stay in its own table.

use std::{
    error::Error,
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use pin_project::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

#[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
use crate::peer::PeerKey;
use crate::{
    BoxError, Conn,
    counter::Counter,
    deadline::deadline_after,
    metrics::{REJECTED, REJECTED_CONNECTIONS, REJECTED_DRY_RUN},
    throttle::LogThrottle,
};

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
    /// This peer is banned, for its offences or by an operator.
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

/// What a refused connection is told before it is closed, if anything; or, in dry run,
/// that it is served anyway.
#[derive(Debug)]
pub(crate) struct Refusal {
    message: Option<Bytes>,
    /// Whether refused connections are answered in HTTP instead.
    #[cfg(feature = "http")]
    http: bool,
    write_timeout: Duration,
    /// How many refused connections hold a [`LingerSlot`] now, shared by clones.
    lingering: Arc<AtomicUsize>,
    /// Switched by a reload, once the layer is built.
    dry_run: AtomicBool,
}

impl Default for Refusal {
    fn default() -> Self {
        Self {
            message: None,
            #[cfg(feature = "http")]
            http: false,
            write_timeout: Duration::from_millis(100),
            lingering: Arc::default(),
            dry_run: AtomicBool::new(false),
        }
    }
}

/// A builder's copy: its own dry-run switch.
impl Clone for Refusal {
    fn clone(&self) -> Self {
        Self {
            message: self.message.clone(),
            #[cfg(feature = "http")]
            http: self.http,
            write_timeout: self.write_timeout,
            lingering: self.lingering.clone(),
            dry_run: AtomicBool::new(self.is_dry_run()),
        }
    }
}

impl Refusal {
    /// Turns dry run on or off, for the connections that come next.
    pub(crate) fn set_dry_run(&self, dry_run: bool) {
        self.dry_run.store(dry_run, Ordering::Relaxed);
    }

    /// Whether connections over the limit are served anyway.
    pub(crate) fn is_dry_run(&self) -> bool {
        self.dry_run.load(Ordering::Relaxed)
    }

    pub(crate) fn set_message(&mut self, message: Bytes) {
        self.message = (!message.is_empty()).then_some(message);
        #[cfg(feature = "http")]
        {
            self.http = false;
        }
    }

    #[cfg(feature = "http")]
    pub(crate) fn set_http(&mut self) {
        self.message = None;
        self.http = true;
    }

    pub(crate) fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    /// A place among the refused connections that may wait for their client to close,
    /// if one is free.
    fn linger_slot(&self) -> Option<LingerSlot> {
        self.lingering
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |lingering| {
                (lingering < MAX_LINGERING).then_some(lingering + 1)
            })
            .ok()?;
        Some(LingerSlot(self.lingering.clone()))
    }
}

/// The most refused connections of one layer that wait at once for their client to
/// close. The others are closed as soon as their message is written and what their
/// client already sent is read, so that a flood of refused connections holds no
/// descriptors.
const MAX_LINGERING: usize = 32;

/// A refused connection's place among those that may wait for their client to close,
/// given back when dropped.
struct LingerSlot(Arc<AtomicUsize>);

impl Drop for LingerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One layer's refusals for one reason: counted in its stats and in the
/// `bouncer.rejected_connections` metric, those of dry run apart.
#[derive(Debug)]
pub(crate) struct Refusals {
    refused: Counter,
    would_refuse: Counter,
}

impl Refusals {
    /// The counters of `layer`'s refusals for `reason`, as the metric labels them.
    pub(crate) fn new(layer: &'static str, reason: &'static str) -> Self {
        let counter = |outcome| {
            Counter::metric(
                REJECTED_CONNECTIONS,
                &[("layer", layer), ("reason", reason), ("outcome", outcome)],
            )
        };
        Self {
            refused: counter(REJECTED),
            would_refuse: counter(REJECTED_DRY_RUN),
        }
    }

    /// Connections refused.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// Connections that dry run served instead of refusing.
    pub(crate) fn dry_run(&self) -> u64 {
        self.would_refuse.get()
    }
}

/// Builder methods every admission layer has for its refusal message and dry run.
macro_rules! refusal_builder_methods {
    () => {
        /// Dry run: a connection this layer would refuse is counted (in
        /// `dry_run_refusals`) and logged, and served anyway. Off by default. See
        /// [dry run](crate::admission#dry-run).
        pub fn dry_run(self, dry_run: bool) -> Self {
            self.refusal.set_dry_run(dry_run);
            self
        }

        /// A short message written to each refused connection before it is closed,
        /// such as `b"ERROR busy\n"`, for raw protocols; for HTTP, see
        /// `refusal_http`. None by default; replaces `refusal_http`.
        pub fn refusal_message(mut self, message: impl Into<bytes::Bytes>) -> Self {
            self.refusal.set_message(message.into());
            self
        }

        /// Answers each refused connection in its own protocol: an HTTP/1.1 `503`
        /// (limits, startups) or `429` (rates, bans) with `Retry-After` and
        /// `Connection: close`; on HTTP/2 the same status on its stream, then GOAWAY;
        /// to a gRPC request (`content-type: application/grpc`), a trailers-only
        /// response with `grpc-status` 14 `UNAVAILABLE` or 8 `RESOURCE_EXHAUSTED` and
        /// a `grpc-message`. One request is answered, no more: an HTTP/2 client that
        /// opens another stream anyway is closed without an answer. A client that
        /// closes its side once its request is sent is answered all the same; a client
        /// that speaks TLS (refused before a TLS layer) is closed at once, as it could
        /// not read a cleartext answer.
        ///
        /// The server never waits on the client: the whole exchange is bounded by the
        /// `refusal_write_timeout`, and only the 32 refused connections that may wait
        /// are answered; under a flood, the others are closed at once. For clients
        /// far away (the deadline starts once the client makes the server wait), a
        /// longer timeout than the default, such as a second, lets more of them read
        /// their answer. Replaces `refusal_message`.
        #[cfg(feature = "http")]
        pub fn refusal_http(mut self) -> Self {
            self.refusal.set_http();
            self
        }

        /// How long the server waits on a refused client, from the first time the
        /// client makes it wait: for the refusal message to be written, then for the
        /// client to close its side. Meanwhile the server reads and drops what the
        /// client sent (up to 64 KiB), as closing with unread data would reset the
        /// connection and could destroy the message before the client reads it. The
        /// connection is closed at this deadline anyway; the server never waits on the
        /// client longer. 100 ms by default; `Duration::MAX` waits as good as forever.
        ///
        /// At most 32 refused connections per layer wait for their client to close at
        /// once: under a flood of refusals the others are closed as soon as their
        /// message is written and what their client already sent is read.
        pub fn refusal_write_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.refusal.set_write_timeout(timeout);
            self
        }
    };
}
pub(crate) use refusal_builder_methods;

/// The method every admission layer has to switch dry run once built; the layer's
/// `shared` state holds its `refusal`. A layer with more to do once switched gives it,
/// as `|shared| ...`.
macro_rules! dry_run_switch {
    () => {
        crate::admission::dry_run_switch!(|_shared| ());
    };
    (|$shared:ident| $then:expr) => {
        /// Turns [dry run](crate::admission#dry-run) on or off for this layer and its
        /// clones, for the connections that come next: a limit watched, then
        /// enforced, without a restart.
        pub fn set_dry_run(&self, dry_run: bool) {
            self.shared.refusal.set_dry_run(dry_run);
            let $shared = &self.shared;
            $then;
        }
    };
}
pub(crate) use dry_run_switch;

/// Refuses a connection for `reason`, counted in `refusals`: a tracing event (at most
/// one a second per layer, with the count of the ones held back), then the future that
/// tells the peer and closes. In dry run, the same count apart and event, then
/// `serve_anyway`, which takes the connection's place in the layer's counts.
pub(crate) fn refuse<F, IO, P>(
    conn: Conn<IO>,
    reason: Reason,
    refusals: &Refusals,
    refusal: &Refusal,
    log: &LogThrottle,
    serve_anyway: impl FnOnce(Conn<IO>) -> ResponseFuture<F, IO, P>,
) -> ResponseFuture<F, IO, P> {
    if refusal.is_dry_run() {
        refusals.would_refuse.add();
        if let Some(suppressed) = log.allow() {
            tracing::warn!(peer = %conn.peer_addr(), %reason, suppressed, "dry run: connection would be refused");
        }
        return serve_anyway(conn);
    }
    refusals.refused.add();
    let rejected = Rejected::new(reason, conn.peer_addr());
    if let Some(suppressed) = log.allow() {
        tracing::warn!(peer = %rejected.peer, reason = %rejected.reason, suppressed, "connection refused");
    }
    #[cfg(feature = "http")]
    if refusal.http {
        return refuse_in_http(conn, rejected, refusal);
    }
    let io = refusal.message.as_ref().map(|_| conn.into_io());
    ResponseFuture {
        state: State::Refused(Box::new(Refusing {
            #[cfg(feature = "http")]
            http: None,
            linger: io.as_ref().and_then(|_| refusal.linger_slot()),
            io,
            message: refusal.message.clone().unwrap_or_default(),
            shut_down: false,
            discarded: 0,
            write_timeout: refusal.write_timeout,
            deadline: None,
            rejected: Some(rejected),
        })),
    }
}

/// The refusal of a connection answered in HTTP, if it may wait for its client: the
/// others are closed at once.
#[cfg(feature = "http")]
fn refuse_in_http<F, IO, P>(
    conn: Conn<IO>,
    rejected: Rejected,
    refusal: &Refusal,
) -> ResponseFuture<F, IO, P> {
    let linger = refusal.linger_slot();
    let http = linger.as_ref().map(|_| {
        let (io, parts) = conn.into_parts();
        let http2 = parts.http_version == Some(http::Version::HTTP_2);
        crate::http::refusal::Answer::new(io, http2, &rejected)
    });
    ResponseFuture {
        state: State::Refused(Box::new(Refusing {
            http,
            linger,
            io: None,
            message: Bytes::new(),
            shut_down: false,
            discarded: 0,
            write_timeout: refusal.write_timeout,
            deadline: None,
            rejected: Some(rejected),
        })),
    }
}

/// What a connection holds in an admission layer: `()` in the layers that count
/// nothing while it lives (the ban check, the rate limit, the login sessions' own
/// refusals), an optional slot in those that do, given back by its `Drop` when the
/// connection ends, however it ends: completion, error, panic or cancellation.
///
/// A type of each layer's own rather than one enum of them all: a connection's future
/// nests every layer's, and an enum would cost each of them the largest slot and a tag.
mod place {
    /// A connection's place in an admission layer (sealed: the crate's layers only).
    pub trait Place {
        /// Gives the place back as soon as the connection is over, before the future
        /// is dropped.
        fn give_back(&mut self);
    }

    impl Place for () {
        #[inline(always)]
        fn give_back(&mut self) {}
    }

    impl<T> Place for Option<T> {
        #[inline(always)]
        fn give_back(&mut self) {
            self.take();
        }
    }
}

/// The response future of the admission layers: the inner connection's future with the
/// place `P` it holds in the layer, or the refusal of the connection.
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<F, IO, P = ()> {
    #[pin]
    state: State<F, IO, P>,
}

#[pin_project(project = StateProj)]
enum State<F, IO, P> {
    Admitted {
        #[pin]
        inner: F,
        place: P,
    },
    /// Boxed: refusals are the rare path, and every admitted connection's future
    /// would otherwise be as large as a refusal.
    Refused(Box<Refusing<IO>>),
}

/// The most a refused client may send that is read and dropped: a request head and a
/// small body. A client that sends more is cut off, reset and all.
pub(crate) const MAX_DISCARDED: usize = 64 * 1024;

/// A refused connection: its message being written, then the error.
struct Refusing<IO> {
    /// The connection being answered in HTTP, before it is closed like the others.
    #[cfg(feature = "http")]
    http: Option<crate::http::refusal::Answer<IO>>,
    /// The connection, until it is closed.
    io: Option<IO>,
    /// What is left to write of the message.
    message: Bytes,
    /// Whether the message is written and the write side shut down.
    shut_down: bool,
    /// How many bytes the client sent that were read and dropped.
    discarded: usize,
    /// Held if this connection may wait for its client to close.
    linger: Option<LingerSlot>,
    write_timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    rejected: Option<Rejected>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Refusing<IO> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<BoxError> {
        // The deadline starts the first time the client makes us wait: a fresh connection
        // takes a short message at once.
        if self.poll_tell(cx).is_pending() {
            let deadline = self.deadline.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(deadline_after(self.write_timeout)))
            });
            ready!(deadline.as_mut().poll(cx));
        }
        // Dropping the stream closes the connection.
        self.io = None;
        #[cfg(feature = "http")]
        {
            self.http = None;
        }
        self.linger = None;
        let rejected = self.rejected.take().expect("polled after completion");
        Poll::Ready(rejected.into())
    }

    /// Writes what is left of the message and shuts the write side down, then reads and
    /// drops what the client sent until it closes its side: closing a socket with unread
    /// data resets the connection, and a reset can destroy the message before the client
    /// reads it (HTTP clients send their request at once). Ready once done, once the
    /// client fails, after [`MAX_DISCARDED`] bytes, or, without a [`LingerSlot`], once
    /// what the client already sent is read.
    fn poll_tell(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        #[cfg(feature = "http")]
        if let Some(answer) = &mut self.http {
            let answered = ready!(answer.poll(cx));
            self.http = None;
            let Some(answered) = answered else {
                return Poll::Ready(());
            };
            self.io = Some(answered.io);
            self.shut_down = answered.shut_down;
            self.discarded = answered.read;
        }
        let Some(io) = &mut self.io else {
            return Poll::Ready(());
        };
        let mut io = Pin::new(io);
        while self.message.has_remaining() {
            match ready!(io.as_mut().poll_write(cx, &self.message)) {
                Ok(written) if written > 0 => self.message.advance(written),
                _ => return Poll::Ready(()),
            }
        }
        if !self.shut_down {
            if ready!(io.as_mut().poll_shutdown(cx)).is_err() {
                return Poll::Ready(());
            }
            self.shut_down = true;
        }
        let mut buffer = [0; 1024];
        while self.discarded < MAX_DISCARDED {
            let mut unread = ReadBuf::new(&mut buffer);
            match io.as_mut().poll_read(cx, &mut unread) {
                Poll::Ready(Ok(())) if !unread.filled().is_empty() => {
                    self.discarded += unread.filled().len();
                }
                Poll::Pending if self.linger.is_some() => return Poll::Pending,
                // The client closed its side, failed, or may not be waited for.
                _ => return Poll::Ready(()),
            }
        }
        Poll::Ready(())
    }
}

impl<F, IO, P> ResponseFuture<F, IO, P> {
    pub(crate) fn admitted(inner: F, place: P) -> Self {
        Self {
            state: State::Admitted { inner, place },
        }
    }
}

impl<F, IO, P> fmt::Debug for ResponseFuture<F, IO, P> {
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

impl<F, E, IO, P> Future for ResponseFuture<F, IO, P>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
    P: place::Place,
{
    type Output = Result<(), BoxError>;

    // Inlined into the future that polls it: a connection's task polls every layer's
    // future at each wake-up, and a call per layer showed in each request's cost.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { inner, place } => {
                let outcome = std::task::ready!(inner.poll(cx));
                place.give_back();
                Poll::Ready(outcome.map_err(Into::into))
            }
            StateProj::Refused(refusing) => refusing.poll(cx).map(Err),
        }
    }
}
