use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::futures::OwnedNotified,
    time::Sleep,
};
use tower::Service;

use super::layer::{LimiterCache, Shared};
use crate::{
    BoxError, Conn,
    admission::{ResponseFuture, refuse},
    deadline::deadline_after,
};

/// A connection-level service under a [`RateLimitLayer`](super::RateLimitLayer).
#[derive(Debug)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The per-peer limiter, if the layer has a per-peer rate.
    limiter: Option<LimiterCache>,
    /// With global backpressure: one connection's worth of the global rate, taken while
    /// waiting to be ready and spent by the next `call` that the global rate applies to.
    reserved: bool,
    /// With global backpressure: until when the global rate allows nothing, and a
    /// reload, which may allow more sooner.
    wait: Option<Pin<Box<Sleep>>>,
    reloaded: Option<Pin<Box<OwnedNotified>>>,
}

impl<S> RateLimit<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            limiter: shared.limiter_cache(),
            shared,
            reserved: false,
            wait: None,
            reloaded: None,
        }
    }

    crate::inner_service_accessors!();

    fn poll_global_rate(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.reserved {
            if let Some(wait) = &mut self.wait
                && wait.as_mut().poll(cx).is_pending()
            {
                // Looked at only while waiting: the reload's notice takes a lock.
                match self
                    .reloaded
                    .as_mut()
                    .map(|reloaded| reloaded.as_mut().poll(cx))
                {
                    // A new rate: look again now, not at the old one's next token.
                    Some(Poll::Ready(())) => self.reloaded = None,
                    _ => return Poll::Pending,
                }
            }
            // Subscribed before the look: a reload right after it is not missed.
            if self.reloaded.is_none() {
                self.reloaded = self.shared.next_global_reload();
            }
            match self.shared.check_global() {
                Ok(()) => self.reserved = true,
                Err(retry_after) => {
                    let until = deadline_after(retry_after);
                    match &mut self.wait {
                        Some(wait) => wait.as_mut().reset(until),
                        None => self.wait = Some(Box::pin(tokio::time::sleep_until(until))),
                    }
                }
            }
        }
        Poll::Ready(())
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S, IO> Service<Conn<IO>> for RateLimit<S>
where
    S: Service<Conn<IO>, Response = ()>,
    S::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, IO>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.shared.has_global_backpressure() {
            ready!(self.poll_global_rate(cx));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        let ip = conn.peer_addr().ip();
        match self
            .shared
            .admit(ip, self.limiter.as_mut(), &mut self.reserved)
        {
            Ok(()) => ResponseFuture::admitted(self.inner.call(conn), ()),
            Err(reason) => {
                let shared = &self.shared;
                let refusals = shared.refusals(&reason);
                refuse(
                    conn,
                    reason,
                    refusals,
                    &shared.refusal,
                    &shared.log,
                    |conn| ResponseFuture::admitted(self.inner.call(conn), ()),
                )
            }
        }
    }
}
