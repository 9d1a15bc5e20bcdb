//! Deadlines on a connection's stream, enforced from outside the protocol.
//!
//! A connection's stream is wrapped in a [`TimedIo`] that notes when bytes arrive, and
//! the connection's future is raced against one timer: when the timer fires and the
//! deadline still holds, the inner future is dropped (which closes the stream) even if
//! the protocol was not reading at all.

mod io;

use std::{
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep};

use crate::{BoxError, Conn};
pub use io::TimedIo;

/// Why a connection was closed by a deadline. It is the inner error of an
/// [`std::io::Error`] of kind [`TimedOut`](std::io::ErrorKind::TimedOut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutError {
    /// No byte arrived within this long of connecting.
    FirstByte(Duration),
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeoutError::FirstByte(limit) => {
                write!(f, "no byte received within {limit:?} of connecting")
            }
        }
    }
}

impl Error for TimeoutError {}

impl From<TimeoutError> for std::io::Error {
    fn from(error: TimeoutError) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, error)
    }
}

/// The deadlines watched on one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deadlines {
    pub(crate) first_byte: Option<Duration>,
}

/// What a connection's stream has done so far, written by [`TimedIo`] and read by the
/// timer when it fires.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    first_byte_seen: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            first_byte_seen: AtomicBool::new(false),
        }
    }

    fn on_read(&self) {
        if !self.first_byte_seen.load(Ordering::Relaxed) {
            self.first_byte_seen.store(true, Ordering::Relaxed);
        }
    }

    /// The next instant to look again, or the deadline that has passed.
    fn next_check(&self, deadlines: Deadlines) -> Result<Option<Instant>, TimeoutError> {
        match deadlines.first_byte {
            Some(limit) if !self.first_byte_seen.load(Ordering::Relaxed) => {
                let deadline = self.started + limit;
                if Instant::now() >= deadline {
                    Err(TimeoutError::FirstByte(limit))
                } else {
                    Ok(Some(deadline))
                }
            }
            _ => Ok(None),
        }
    }
}

/// Wraps the connection's stream and runs `serve` on it under `deadlines`.
pub(crate) fn watch<IO, F, Fut, E>(conn: Conn<IO>, deadlines: Deadlines, serve: F) -> Watched<Fut>
where
    F: FnOnce(Conn<TimedIo<IO>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let conn = conn.map_io(|io| TimedIo::new(io, activity.clone()));
    let timer = match activity.next_check(deadlines) {
        Ok(Some(at)) => Some(Box::pin(tokio::time::sleep_until(at))),
        _ => None,
    };
    Watched {
        inner: serve(conn),
        activity,
        deadlines,
        timer,
    }
}

/// A connection's future raced against its deadlines.
#[pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Watched<F> {
    #[pin]
    inner: F,
    activity: Arc<Activity>,
    deadlines: Deadlines,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F, E> Future for Watched<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(outcome) = this.inner.poll(cx) {
            return Poll::Ready(outcome.map_err(Into::into));
        }
        while let Some(timer) = this.timer {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match this.activity.next_check(*this.deadlines) {
                Ok(Some(at)) => timer.as_mut().reset(at),
                Ok(None) => *this.timer = None,
                Err(error) => {
                    tracing::debug!(%error, "connection timed out");
                    return Poll::Ready(Err(std::io::Error::from(error).into()));
                }
            }
        }
        Poll::Pending
    }
}
