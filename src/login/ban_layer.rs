use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;
use tower_layer::Layer;

use super::{Offence, Shared};
use crate::{
    BoxError, Conn,
    admission::{Reason, ResponseFuture, refuse},
    peer::{Classified, Overflow},
    striped::{Handle, Striped},
};

/// Refuses a banned peer's new connections at accept, before any byte is read, and
/// counts against its peer each connection that fails with an [`Offence`]. Get it from
/// [`Login::ban_layer`](super::Login::ban_layer); put it outermost, or right below the
/// PROXY layer on a listener behind a balancer, so that it sees the real client and
/// every offence the layers below detect.
#[derive(Debug, Clone)]
pub struct BanLayer {
    pub(super) shared: Striped<Shared>,
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
    shared: Striped<Shared>,
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
    type Future = ResponseFuture<PenaltyFuture<S::Future>, IO>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        let shared = &self.shared;
        shared.start_janitor();
        let peer = shared.keying.classify(conn.peer_addr().ip());
        if let Some(peer) = peer {
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
                let refusals = shared.stats.refusals(&reason);
                let log = &shared.refusal_log;
                return refuse(conn, reason, refusals, &shared.ban_refusal, log, |conn| {
                    serve(&mut self.inner, shared, conn, Some(peer))
                });
            }
        }
        serve(&mut self.inner, shared, conn, peer)
    }
}

/// Serves a connection that the ban check lets through, counting its offences against
/// `peer`.
fn serve<S, IO>(
    inner: &mut S,
    shared: &Striped<Shared>,
    conn: Conn<IO>,
    peer: Option<Classified>,
) -> ResponseFuture<PenaltyFuture<S::Future>, IO>
where
    S: Service<Conn<IO>, Response = ()>,
{
    let future = PenaltyFuture {
        inner: inner.call(conn),
        offender: peer.map(|peer| (shared.local(), peer)),
    };
    ResponseFuture::admitted(future, ())
}

/// A connection's future under a [`BanLayer`]: if the connection fails with an
/// [`Offence`], it counts against the peer. A connection that ends well pays for
/// nothing but this check.
#[pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct PenaltyFuture<F> {
    #[pin]
    inner: F,
    /// Where to count an offence, and against whom; `None` for an exempt peer.
    offender: Option<(Arc<Handle<Shared>>, Classified)>,
}

impl<F, E> Future for PenaltyFuture<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    // Inlined into the future that polls it: a connection's task polls every layer's
    // future at each wake-up, and a call per layer showed in each request's cost.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = ready!(this.inner.poll(cx)).map_err(Into::into);
        if let (Err(error), Some((shared, peer))) = (&outcome, this.offender.take())
            && let Some(offence) = Offence::of(&**error)
        {
            shared.offended(&peer, offence);
        }
        Poll::Ready(outcome)
    }
}
