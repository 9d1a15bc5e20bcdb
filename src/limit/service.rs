use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::futures::OwnedNotified,
};
use tower::Service;

use super::layer::{GlobalSlot, Shared};
use crate::{
    BoxError, Conn,
    admission::{Reason, ResponseFuture, refuse},
    striped::Striped,
};

/// A connection-level service under a [`ConnectionLimitLayer`](super::ConnectionLimitLayer).
#[derive(Debug)]
pub struct ConnectionLimit<S> {
    inner: S,
    shared: Striped<Shared>,
    /// Registered for a freed slot while full, in backpressure mode.
    waiting: Option<Pin<Box<OwnedNotified>>>,
}

impl<S> ConnectionLimit<S> {
    pub(super) fn new(inner: S, shared: Striped<Shared>) -> Self {
        Self {
            inner,
            shared,
            waiting: None,
        }
    }

    crate::inner_service_accessors!();

    /// Ready once a slot is free, without reserving it: the slot is taken in `call`.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.shared.has_room() {
                self.waiting = None;
                return Poll::Ready(());
            }
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(self.shared.freed.clone().notified_owned()));
            // Registered before looking again, so a slot freed in between is not missed.
            waiting.as_mut().enable();
            if self.shared.has_room() {
                self.waiting = None;
                return Poll::Ready(());
            }
            ready!(waiting.as_mut().poll(cx));
            self.waiting = None;
        }
    }
}

impl<S: Clone> Clone for ConnectionLimit<S> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S, IO> Service<Conn<IO>> for ConnectionLimit<S>
where
    S: Service<Conn<IO>, Response = ()>,
    S::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, IO, Option<GlobalSlot>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.shared.waits_for_room() {
            ready!(self.poll_room(cx));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        // In backpressure mode another server sharing this limit may have taken the slot
        // seen in `poll_ready`; the connection is then refused like in refuse mode.
        match GlobalSlot::try_acquire(&self.shared) {
            Some(slot) => ResponseFuture::admitted(self.inner.call(conn), Some(slot)),
            // Admitted at once, over the cap, while an idle connection closes.
            #[cfg(feature = "overload")]
            None if self.shared.evict_idle() => {
                let slot = GlobalSlot::over_cap(&self.shared);
                ResponseFuture::admitted(self.inner.call(conn), Some(slot))
            }
            None => {
                let shared = &self.shared;
                let reason = Reason::ConnectionLimit {
                    limit: shared.max(),
                };
                refuse(
                    conn,
                    reason,
                    &shared.refused,
                    &shared.refusal,
                    &shared.log,
                    |conn| {
                        let slot = GlobalSlot::over_cap(shared);
                        ResponseFuture::admitted(self.inner.call(conn), Some(slot))
                    },
                )
            }
        }
    }
}
