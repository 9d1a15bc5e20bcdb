//! One connection's life under the adapter: HTTP until hyper is done, then, for an
//! upgraded connection, until its new holder drops the stream.

use std::{
    pin::pin,
    sync::Arc,
    task::{Poll, ready},
};

use futures_util::future::Either;
use http::{Request, Response, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use super::{
    Config, ConnExtensions,
    frames::LazyFrameWatch,
    request::{RequestService, RequestTiming},
};

use crate::{BoxError, Conn, close::Cut, shared_io, striped::Handle};

/// Sets the connection up, then returns the future that serves it. Not an `async fn`:
/// its future would keep room for the connection and its parts for as long as the
/// connection lives, though they are taken apart before the first await (250 bytes).
pub(super) fn serve<IO, S, B>(
    conn: Conn<IO>,
    service: S,
    config: Arc<Handle<Config>>,
    timed_by_layer: bool,
) -> impl Future<Output = Result<(), BoxError>> + use<IO, S, B>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, mut parts) = conn.into_parts();
    let close = parts.graceful_close();
    let timed = parts.timed.take();
    let http_version = parts.http_version;
    // A timeout layer's request timeout holds request bodies too; the adapter's own
    // holds heads only.
    let times_bodies = timed_by_layer
        && timed
            .as_ref()
            .is_some_and(|activity| activity.layer_deadlines().request.is_some());
    if let Some(activity) = &timed {
        activity.declare_exchanges();
        activity.say_goodbye_on_close();
    }
    let frames = timed
        .as_ref()
        .map(|activity| LazyFrameWatch::new(activity.clone(), times_bodies));
    let (io, owner) = shared_io::share_in_place(io, frames);
    let service = RequestService::new(
        service,
        ConnExtensions::new(
            parts,
            RequestTiming {
                times_heads: timed
                    .as_ref()
                    .is_some_and(|activity| activity.deadlines().request.is_some()),
                times_bodies,
                timed,
            },
        ),
        owner.may_leave(),
        &config,
    );
    async move {
        // A plain close is the adapter's to cut, after its grace; watched once a close is
        // asked for.
        let mut cut: Option<Box<Cut>> = None;
        // hyper's connection is dropped at the end of this block: it lets go of the
        // stream then, unless an upgrade has taken it. (A block, not an `async` block
        // awaited: that would keep room for the stream and the service a third time.)
        let outcome = {
            let io = TokioIo::new(io);
            // HTTP/2 as the TLS handshake agreed (ALPN), or detected. HTTP/1 is always
            // detected: hyper-util serves upgrades (WebSockets) only on a detecting
            // connection, and detection stops at the first byte that is not HTTP/2's.
            let mut connection = pin!(match (&config.hyper_http2, http_version) {
                (Some(http2), Some(Version::HTTP_2)) => {
                    Either::Right(http2.serve_connection(io, service))
                }
                _ => Either::Left(config.hyper.serve_connection_with_upgrades(io, service)),
            });
            let mut asked = pin!(close.requested());
            // Polled by hand, not with `select!`: this runs on every wake-up of the
            // connection.
            std::future::poll_fn(|cx| {
                loop {
                    // Matched here rather than through `Either`'s own poll: a call less at
                    // every wake-up.
                    let polled = match connection.as_mut().as_pin_mut() {
                        Either::Left(detecting) => detecting.poll(cx),
                        Either::Right(http2) => http2.poll(cx),
                    };
                    if let Poll::Ready(outcome) = polled {
                        return Poll::Ready(Some(outcome));
                    }
                    match &mut cut {
                        Some(cut) => return cut.poll_due(cx).map(|()| None),
                        None => {
                            ready!(asked.as_mut().poll(cx));
                            cut = Some(Box::new(Cut::new(&close, config.close_grace)));
                            // HTTP/1: no more keep-alive (an idle connection closes now);
                            // HTTP/2: GOAWAY. Then the connection is polled again.
                            match connection.as_mut().as_pin_mut() {
                                Either::Left(detecting) => detecting.graceful_shutdown(),
                                Either::Right(http2) => http2.graceful_shutdown(),
                            }
                        }
                    }
                }
            })
            .await
        };
        let Some(outcome) = outcome else {
            tracing::debug!(grace = ?config.close_grace, "connection cut after its close grace");
            return Ok(());
        };
        match outcome {
            Err(error) if cut.is_some() && is_cancelled_detection(&*error) => return Ok(()),
            Err(error) => return Err(error),
            Ok(()) if owner.is_released() => return Ok(()),
            Ok(()) => {}
        }
        // Upgraded: hyper handed the stream to a handler's task (and the timer was told
        // when the answer was made). The connection lives on until that task drops it; its
        // deadlines, caps and cuts still hold, and dropping this future closes the stream
        // wherever it is.
        let cut = cut.get_or_insert_with(|| Box::new(Cut::new(&close, config.close_grace)));
        tokio::select! {
            () = owner.released() => {}
            () = cut.due() => {
                tracing::debug!(grace = ?config.close_grace, "upgraded connection cut after its close grace");
            }
        }
        Ok(())
    }
}

/// Protocol detection stopped by a graceful close (hyper-util reports it as
/// `Interrupted`): the connection had sent nothing worth answering, so closing it is the
/// expected outcome.
fn is_cancelled_detection(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::Interrupted)
}
