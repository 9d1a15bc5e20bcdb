use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tower::Service;

use super::{ResponseFuture, layer::Shared};
use crate::{BoxError, Conn};

/// A connection-level service under a [`TlsLayer`](super::TlsLayer): it serves the
/// decrypted stream once the handshake is complete.
#[derive(Debug, Clone)]
pub struct Tls<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Tls<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    crate::inner_service_accessors!();
}

impl<S, IO> Service<Conn<IO>> for Tls<S>
where
    S: Service<Conn<TlsStream<IO>>, Response = ()> + Clone,
    S::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S, IO, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        // The inner service that `poll_ready` readied is called once the handshake is
        // done; a clone takes its place for the next connection.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (io, parts) = conn.into_parts();
        let accept = self.shared.acceptor.accept(io);
        ResponseFuture::new(accept, inner, parts, self.shared.clone())
    }
}
