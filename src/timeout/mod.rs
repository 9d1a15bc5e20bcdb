//! Every connection gets a bounded life unless it is doing useful work: idle,
//! first-byte, request and lifetime timeouts, for any protocol.
//!
//! "A client could connect and send no bytes at all. The socket would remain open
//! forever." [`TimeoutLayer`] closes that, for raw TCP protocols and for HTTP:
//!
//! - **first byte**: nothing received within S of connecting;
//! - **idle**: nothing useful for S (Twisted's `TimeoutFactory`, HAProxy's `timeout
//!   client`): no byte read or written, or, for a protocol that says when it is busy
//!   (the [HTTP adapter](crate::http)), no request open, whatever else moves (HTTP/2
//!   PINGs), or only answered requests whose responses stream and no data moved (a
//!   quiet gRPC stream or event stream; on HTTP/2, DATA either way on streams still
//!   served, not PINGs); and a client that holds the server's output back must take
//!   it at a [minimum rate](TimeoutBuilder::idle_min_send_rate), so a slow reader is
//!   idle too. An idle HTTP/2 connection with no stream open is not cut at once: its
//!   [`GracefulClose`](crate::GracefulClose) is raised, so that the adapter sends
//!   GOAWAY (a client then retries elsewhere a call it sent as the connection
//!   closed), and it is cut a second later if it has not closed (unless a stream the
//!   client opened as the GOAWAY came is being served: it is, under the usual
//!   deadlines, and its [overload manager](crate::overload) may evict it again); the
//!   idle timeout is counted once, and a connection cut ends with the same
//!   [`TimeoutError::Idle`];
//! - **request**: once a request's first byte has arrived, the request must be complete
//!   within S (nginx's `client_header_timeout`, HAProxy's `timeout http-request`), so a
//!   client that trickles a byte every few seconds is closed however it trickles;
//!   optionally extended by the bytes received at a minimum rate, up to a maximum
//!   (Apache mod_reqtimeout's `MinRate`);
//! - **lifetime**: a connection older than S is asked to close gracefully (its
//!   [`GracefulClose`](crate::GracefulClose) is raised: HTTP answers `Connection: close`
//!   or sends GOAWAY) and cut after a grace period.
//!
//! The stream is wrapped in a [`TimedIo`] that records, on each read and write, the
//! bytes moved; the connection's future races the inner future against one timer,
//! re-armed only when it fires and finds activity since (a lazy deadline). When a
//! deadline passes, the inner future is dropped (after the idle goodbye above, for an
//! HTTP/2 connection), which closes the connection even if the protocol was not
//! reading, and the connection fails with an
//! [`io::ErrorKind::TimedOut`](std::io::ErrorKind::TimedOut) error holding a
//! [`TimeoutError`].
//!
//! Where a request starts and ends is the protocol's to say, through the connection's
//! [`RequestTimer`] ([`Conn::request_timer`](crate::Conn::request_timer)). The first byte
//! read starts a request, and [`RequestTimer::finish`] ends it once it is in; the next
//! byte read starts the next. [`RequestTimer::next`], once the protocol has answered,
//! tells what it has read past the last request: if anything (the start of the next
//! line, read with the last into a buffer), the next request starts then.
//! The [HTTP adapter](crate::http) does this on its own: an HTTP/1.1 request runs from its
//! first byte until its head is in (with a body, until the handler answers), an HTTP/2
//! stream from its headers until its body's last frame (however long its handler then
//! takes) or until its answer's head is written, if that comes first (a gRPC client or
//! bidirectional stream answered at once, as an HTTP/1.1 body streaming after its
//! answer); and it adds its own deadlines where the layer sets none. An HTTP/2 stream
//! the client resets while its request is still arriving leaves behind the time it ran
//! past what its data earned at the minimum rate: a stream the client opens within the
//! request timeout of that reset is timed as if begun that much earlier. A retry sent
//! at once has what the abandoned request had left (and earns more as its body comes),
//! a request that kept pace owes nothing, and one opened later starts afresh; a client
//! that abandons each upload just short of the timeout and opens the next at once is
//! cut at the timeout, as one that never abandons it would be. An HTTP/1.1 request
//! pipelined behind another starts no clock while the server answers that one (the
//! server's wait is not the client's): it is timed from the end of that exchange if its
//! bytes came meanwhile behind a request without a body, and otherwise from its next
//! byte. Empty lines between requests (CR and LF alone, which a client may send after a
//! request and hyper skips) start no clock: a client that sends one and then waits is
//! between requests, held to the idle timeout. (Bytes the adapter, which sees reads, cannot tell from the request ahead, those
//! read with that request before its dispatch or with its body, wait in hyper's buffer
//! untimed: with no request open, the idle timeout bounds them.) The rest of a body its
//! handler answered without reading (a `401` before an upload is taken), which hyper
//! drains once the answer is out to keep the connection, is read after the exchange, as
//! the next request's first bytes: it starts that request's clock, and a client that
//! then sends nothing is cut at the request timeout, with [`TimeoutError::Request`],
//! rather than at the idle timeout. The adapter cannot tell those bytes from a request
//! without seeing where the body ends; a handler that turns a body down unread can
//! answer with `Connection: close`, and the connection then ends with its answer.
//!
//! With an [overload manager](crate::overload) ([`TimeoutBuilder::overload`]), every
//! deadline but the lifetime shrinks as the pressure rises, and the layer tells the
//! manager which connections are idle, for it to evict at a full cap.
//!
//! Time is tokio's, so tests run on `tokio::time::pause`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_bouncer::{Conn, timeout::{TimedIo, TimeoutLayer}};
//! use tokio::{io::{AsyncBufReadExt, BufReader}, net::TcpStream};
//!
//! let timeouts = TimeoutLayer::builder()
//!     .first_byte(Duration::from_secs(10))
//!     .idle(Duration::from_secs(300))
//!     .request(Duration::from_secs(10))
//!     .build()
//!     .expect("valid timeouts");
//!
//! // A line protocol: each line is a request.
//! let lines = tower::service_fn(|mut conn: Conn<TimedIo<TcpStream>>| async move {
//!     let timer = conn.request_timer().expect("from the layer");
//!     let mut reader = BufReader::new(conn.into_io());
//!     let mut line = String::new();
//!     while reader.read_line(&mut line).await? > 0 {
//!         timer.finish();
//!         // ... answer the line ...
//!         line.clear();
//!         // What the reader holds past this line is the next one's start.
//!         timer.next(reader.buffer());
//!     }
//!     Ok::<_, std::io::Error>(())
//! });
//! let service = ServiceBuilder::new().layer(timeouts).service(lines);
//! # let _ = service;
//! ```

mod activity;
mod future;
mod io;
mod layer;

use std::{error::Error, fmt, sync::Arc, time::Duration};

pub(crate) use activity::{
    Activity, DEFAULT_MIN_SEND_RATE, Deadlines, IdleLimit, Idleness, RequestLimit, nanos,
};
pub use future::ResponseFuture;
pub(crate) use future::watch;
pub use io::TimedIo;
pub(crate) use layer::Shared;
pub use layer::{Timeout, TimeoutBuilder, TimeoutLayer, TimeoutStats};

/// Why a connection was closed by a deadline. It is the inner error of an
/// [`std::io::Error`] of kind [`TimedOut`](std::io::ErrorKind::TimedOut):
/// [`TimeoutError::of`] finds it in any error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutError {
    /// No byte arrived within this long of connecting.
    FirstByte(Duration),
    /// Nothing useful happened for this long: no byte moved (or, under the HTTP
    /// adapter, no request open, or only answered ones streaming and no data moved), or
    /// output waiting for the client was not taken at the minimum send rate.
    Idle(Duration),
    /// A request was not complete this long after it began (its first byte, or for an
    /// HTTP/2 stream its headers).
    Request(Duration),
    /// The connection outlived this lifetime and its grace period.
    Lifetime(Duration),
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeoutError::FirstByte(limit) => {
                write!(f, "no byte received within {limit:?} of connecting")
            }
            TimeoutError::Idle(limit) => write!(f, "idle for {limit:?}"),
            TimeoutError::Request(limit) => {
                write!(f, "request not complete within {limit:?} of its start")
            }
            TimeoutError::Lifetime(limit) => {
                write!(
                    f,
                    "connection older than {limit:?} did not close in its grace period"
                )
            }
        }
    }
}

impl TimeoutError {
    /// The deadline behind `error`, in one call: `error` itself, or any error in its
    /// [`source`](Error::source) chain, as the [`std::io::Error`] the timeout fails a
    /// connection with or as anything that wraps one (a `hyper::Error`, say).
    ///
    /// ```
    /// use tower_bouncer::{BoxError, timeout::TimeoutError};
    ///
    /// fn log_timeout(error: &BoxError) {
    ///     if let Some(timeout) = TimeoutError::of(&**error) {
    ///         eprintln!("closed by a deadline: {timeout}");
    ///     }
    /// }
    ///
    /// let error: BoxError = std::io::Error::from(TimeoutError::Idle(
    ///     std::time::Duration::from_secs(60),
    /// ))
    /// .into();
    /// assert!(matches!(TimeoutError::of(&*error), Some(TimeoutError::Idle(_))));
    /// ```
    pub fn of(error: &(dyn Error + 'static)) -> Option<TimeoutError> {
        let mut next = Some(error);
        // An error chain is short; the bound only guards against a chain that loops.
        for _ in 0..MAX_CHAIN {
            let error = next?;
            if let Some(timeout) = error.downcast_ref::<TimeoutError>() {
                return Some(*timeout);
            }
            // `io::Error::source` skips the error it holds: look at that one next.
            next = match error
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(inner) => Some(inner),
                None => error.source(),
            };
        }
        None
    }
}

/// The most errors [`TimeoutError::of`] looks through.
const MAX_CHAIN: usize = 32;

impl Error for TimeoutError {}

impl From<TimeoutError> for std::io::Error {
    fn from(error: TimeoutError) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, error)
    }
}

/// Marks where requests end on one connection, for the request timeout:
/// [`Conn::request_timer`](crate::Conn::request_timer), under a [`TimeoutLayer`] with a
/// request timeout.
///
/// The first byte read starts a request; [`finish`](Self::finish) ends it, and the next
/// starts at once if the protocol has read past its end, or else at the next byte
/// read. Clones mark the same connection.
#[derive(Debug, Clone)]
pub struct RequestTimer {
    activity: Arc<Activity>,
}

impl RequestTimer {
    /// The timer of a connection watched through `activity`, if its layer times
    /// requests.
    pub(crate) fn of(activity: &Arc<Activity>) -> Option<Self> {
        activity.layer_deadlines().request.is_some().then(|| Self {
            activity: activity.clone(),
        })
    }

    /// The request in progress is in: its clock stops, and the next byte read starts
    /// the next request's. The time the protocol then takes to answer is its own, not
    /// the client's.
    pub fn finish(&self) {
        self.activity.finish_request();
    }

    /// The protocol turns to its next request, holding `read_ahead` of it: what it read
    /// past the last one (a `BufReader`'s [`buffer`](tokio::io::BufReader::buffer), empty
    /// if it holds nothing). If anything, the next request's clock starts now: those
    /// bytes were read already, and no later read would start it (a half line that came
    /// in the same read as a whole one would be held only to the idle timeout). Call it
    /// once the last request is answered, not when it is in: a request pipelined behind
    /// a slow one is not timed through the server's wait. Bytes read ahead earn no time
    /// at a minimum rate.
    pub fn next(&self, read_ahead: &[u8]) {
        if !read_ahead.is_empty() {
            self.activity.start_request();
        }
    }

    /// Starts a request now, if none is in progress: for protocols whose requests do not
    /// start with a byte from the client.
    pub fn start(&self) {
        self.activity.start_request();
    }

    /// Times no more requests on this connection, such as once a protocol has switched
    /// to one whose traffic is not requests (HTTP/2's frames, a WebSocket). The other
    /// deadlines still apply.
    pub fn stop(&self) {
        self.activity.stop_timing_requests();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as hyper's and tonic's do.
    #[derive(Debug)]
    struct Wrapper(Box<dyn Error + Send + Sync>);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn the_reason_is_found_however_deep_it_is_wrapped() {
        let timeout = TimeoutError::Request(Duration::from_secs(10));
        let io = || std::io::Error::from(timeout);
        assert_eq!(TimeoutError::of(&timeout), Some(timeout));
        assert_eq!(TimeoutError::of(&io()), Some(timeout));
        let boxed: crate::BoxError = Box::new(Wrapper(Box::new(io())));
        assert_eq!(TimeoutError::of(&*boxed), Some(timeout));
        let nested = std::io::Error::other(Wrapper(Box::new(io())));
        assert_eq!(TimeoutError::of(&nested), Some(timeout));
    }

    #[test]
    fn other_errors_have_no_reason() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(TimeoutError::of(&refused), None);
        assert_eq!(TimeoutError::of(&Wrapper(Box::new(refused))), None);
        let bare_timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(TimeoutError::of(&bare_timeout), None);
    }
}
