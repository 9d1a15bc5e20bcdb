use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use super::layer::{Admission, Shared};
use crate::{
    BoxError, Conn,
    admission::{ResponseFuture, refuse},
    peer::table::Located,
    striped::{Handle, Striped},
};

/// A connection-level service under a [`PeerLimitLayer`](super::PeerLimitLayer).
#[derive(Debug, Clone)]
pub struct PeerLimit<S> {
    inner: S,
    shared: Striped<Shared>,
}

impl<S> PeerLimit<S> {
    pub(super) fn new(inner: S, shared: Striped<Shared>) -> Self {
        Self { inner, shared }
    }

    crate::inner_service_accessors!();
}

impl<S, IO> Service<Conn<IO>> for PeerLimit<S>
where
    S: Service<Conn<IO>, Response = ()>,
    S::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, IO, Option<PeerSlot>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        match Shared::admit(&self.shared, conn.peer_addr().ip()) {
            Admission::Tracked(slot) => ResponseFuture::admitted(self.inner.call(conn), Some(slot)),
            Admission::Untracked => ResponseFuture::admitted(self.inner.call(conn), None),
            Admission::Refused(reason, slot) => {
                let shared = &self.shared;
                let refusals = shared.refusals(&reason);
                refuse(
                    conn,
                    reason,
                    refusals,
                    &shared.refusal,
                    &shared.log,
                    |conn| ResponseFuture::admitted(self.inner.call(conn), slot),
                )
            }
        }
    }
}

/// A connection's place in its peer's count, held by [`PeerLimit`]'s future while the
/// connection lives, and given back when it ends or the future is dropped.
#[derive(Debug)]
pub struct PeerSlot {
    shared: Arc<Handle<Shared>>,
    at: Located,
}

impl PeerSlot {
    pub(super) fn new(shared: Arc<Handle<Shared>>, at: Located) -> Self {
        Self { shared, at }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.shared.release(&self.at);
    }
}
