use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;
use tower_layer::Layer;

use super::Shared;
use crate::{
    BoxError, Conn,
    admission::{Reason, ResponseFuture, Slot, refuse},
    peer::Overflow,
};

/// Refuses a banned peer's new connections at accept, before any byte is read. Get it
/// from [`Login::ban_layer`](super::Login::ban_layer); put it outermost.
#[derive(Debug, Clone)]
pub struct BanLayer {
    pub(super) shared: Arc<Shared>,
}

impl<S> Layer<S> for BanLayer {
    type Service = BanCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BanCheck {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A connection-level service under a [`BanLayer`].
#[derive(Debug, Clone)]
pub struct BanCheck<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> BanCheck<S> {
    crate::inner_service_accessors!();
}

impl<S, IO> Service<Conn<IO>> for BanCheck<S>
where
    S: Service<Conn<IO>, Response = ()>,
    S::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, IO>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        let shared = &self.shared;
        shared.start_janitor();
        if let Some(peer) = shared.keying.classify(conn.peer_addr().ip()) {
            let refusal = if let Some(remaining) = shared.bans.banned_for(&peer) {
                #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
                if super::kernel_bans::sent_by_its_peer(&conn) {
                    shared.bans.refused_while_banned(&peer.key, remaining);
                }
                Some(Reason::Banned {
                    key: peer.key,
                    remaining,
                })
            } else if shared.overflow == Overflow::Refuse && shared.bans.is_full_for(&peer.at) {
                Some(Reason::PeerTableFull {
                    capacity: shared.bans.capacity(),
                })
            } else {
                None
            };
            if let Some(reason) = refusal {
                shared.stats.refused_banned.add();
                return refuse(conn, reason, &shared.ban_refusal, &shared.refusal_log);
            }
        }
        ResponseFuture::admitted(self.inner.call(conn), Slot::None)
    }
}
