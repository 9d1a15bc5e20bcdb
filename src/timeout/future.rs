use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use pin_project::pin_project;
use tokio::time::Sleep;

use super::{
    RequestTimer, Shared, TimedIo,
    activity::{Activity, Check, IdleWatch},
};
use crate::{BoxError, Conn, GracefulClose};

/// In a connection's extensions once a layer watches its first byte, so that the HTTP
/// adapter does not watch it a second time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FirstByteWatched;

/// Wraps the connection's stream, leaves the handles the protocol needs in its
/// extensions, and runs `serve` on it under `shared`'s deadlines.
pub(crate) fn watch<IO, F, Fut>(
    mut conn: Conn<IO>,
    shared: &Arc<Shared>,
    serve: F,
) -> ResponseFuture<Fut>
where
    F: FnOnce(Conn<TimedIo<IO>>) -> Fut,
{
    let deadlines = &shared.deadlines;
    let activity = Arc::new(Activity::new(deadlines.request.is_some()));
    let extensions = conn.extensions_mut();
    if deadlines.request.is_some() {
        extensions.insert(RequestTimer {
            activity: activity.clone(),
        });
    }
    if deadlines.first_byte.is_some() {
        extensions.insert(FirstByteWatched);
    }
    let close = deadlines.lifetime.map(|_| {
        extensions
            .get::<GracefulClose>()
            .cloned()
            .unwrap_or_else(|| {
                let close = GracefulClose::new();
                extensions.insert(close.clone());
                close
            })
    });

    let mut idle = IdleWatch::default();
    let timer = match activity.check(deadlines, &mut idle) {
        Check::Next(Some(at)) => Some(Box::pin(tokio::time::sleep_until(at))),
        _ => None,
    };
    let conn = conn.map_io(|io| TimedIo::new(io, activity.clone()));
    ResponseFuture {
        inner: serve(conn),
        activity,
        idle,
        shared: shared.clone(),
        timer,
        close,
    }
}

/// A connection's future raced against its deadlines.
#[pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    activity: Arc<Activity>,
    idle: IdleWatch,
    shared: Arc<Shared>,
    /// The one timer, set to the earliest deadline ahead; none when nothing is ahead.
    timer: Option<Pin<Box<Sleep>>>,
    /// Raised when the connection has lived its lifetime.
    close: Option<GracefulClose>,
}

impl<F, E> Future for ResponseFuture<F>
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
        let deadlines = &this.shared.deadlines;
        if deadlines.request.is_some() {
            this.activity.register_timer(cx.waker());
        }
        // A request that started since the timer was set may end before it.
        let mut look = this.activity.take_rearm();
        loop {
            if !look {
                let Some(timer) = this.timer.as_mut() else {
                    return Poll::Pending;
                };
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            look = false;
            let next = match this.activity.check(deadlines, this.idle) {
                Check::Expired(error) => {
                    this.shared.expired(error);
                    return Poll::Ready(Err(std::io::Error::from(error).into()));
                }
                Check::WindDown(grace_ends) => {
                    this.shared.wound_down();
                    if let Some(close) = this.close {
                        close.request();
                    }
                    Some(grace_ends)
                }
                Check::Next(next) => next,
            };
            match (next, this.timer.as_mut()) {
                (None, _) => *this.timer = None,
                (Some(at), Some(timer)) => timer.as_mut().reset(at),
                (Some(at), None) => *this.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }
}
