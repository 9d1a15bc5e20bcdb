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
    /// In backpressure mode, the slot `poll_ready` took for the next `call`. The ready
    /// service carries it, so a layer above that calls it later (the PROXY layer, once
    /// the header is read) keeps the slot meanwhile; a clone carries none, and a ready
    /// service dropped uncalled gives it back.
    reserved: Option<GlobalSlot>,
    /// Registered for a freed slot while full, in backpressure mode.
    waiting: Option<Pin<Box<OwnedNotified>>>,
}

impl<S> ConnectionLimit<S> {
    pub(super) fn new(inner: S, shared: Striped<Shared>) -> Self {
        Self {
            inner,
            shared,
            reserved: None,
            waiting: None,
        }
    }

    crate::inner_service_accessors!();

    /// Takes a slot for the next `call`, waiting for one while full.
    fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.reserved.is_none() {
            self.reserved = GlobalSlot::try_take(&self.shared);
            if self.reserved.is_some() {
                break;
            }
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(self.shared.freed.clone().notified_owned()));
            // Registered before trying again, so a slot freed in between is not missed.
            waiting.as_mut().enable();
            self.reserved = GlobalSlot::try_take(&self.shared);
            if self.reserved.is_some() {
                break;
            }
            ready!(waiting.as_mut().poll(cx));
            self.waiting = None;
        }
        self.waiting = None;
        Poll::Ready(())
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
            ready!(self.poll_reserve(cx));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        // Taken now unless `poll_ready` reserved it (backpressure mode, out of dry run).
        let slot = self
            .reserved
            .take()
            .or_else(|| GlobalSlot::try_take(&self.shared));
        match slot {
            Some(slot) => ResponseFuture::admitted(self.inner.call(conn), Some(slot.admit())),
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
