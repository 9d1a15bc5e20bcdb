//! The connection's stream, shared between whoever holds it and the connection's own
//! future.
//!
//! hyper hands an upgraded connection's stream (WebSocket, `CONNECT`-style tunnels) to
//! the handler's task and finishes: from then on only that task has the socket. Served
//! through [`SharedIo`], the stream stays in reach: the connection's future learns when
//! the holder drops it, and can close it from outside, at a deadline or a cut, even if
//! the holder never polls it again.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use parking_lot::Mutex;

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};

/// The holder's end: a stream that forwards to the shared one, or fails once the
/// connection's future has closed it.
#[derive(Debug)]
pub(super) struct SharedIo<IO> {
    slot: Arc<Slot<IO>>,
}

/// The connection future's end: closes the stream when dropped.
#[derive(Debug)]
pub(super) struct IoOwner<IO> {
    slot: Arc<Slot<IO>>,
}

#[derive(Debug)]
struct Slot<IO> {
    /// The stream, until the owner closes it. Taken on every read and write, and
    /// uncontended but for that close: one holder polls at a time. parking_lot's lock
    /// is a single atomic each way, with no poisoning to check.
    io: Mutex<Option<IO>>,
    released: AtomicBool,
    on_release: Notify,
}

/// Shares `io` between a holder and its owner.
pub(super) fn share<IO>(io: IO) -> (SharedIo<IO>, IoOwner<IO>) {
    let slot = Arc::new(Slot {
        io: Mutex::new(Some(io)),
        released: AtomicBool::new(false),
        on_release: Notify::new(),
    });
    (SharedIo { slot: slot.clone() }, IoOwner { slot })
}

impl<IO> IoOwner<IO> {
    /// Whether the holder has dropped its end.
    pub(super) fn is_released(&self) -> bool {
        self.slot.released.load(Ordering::Acquire)
    }

    /// Resolves once the holder has dropped its end.
    pub(super) async fn released(&self) {
        if !self.is_released() {
            // `notify_one` keeps a permit for a release before this waits.
            self.slot.on_release.notified().await;
        }
    }
}

impl<IO> Drop for IoOwner<IO> {
    fn drop(&mut self) {
        // Dropping the stream closes it, wherever its holder is.
        drop(self.slot.io.lock().take());
    }
}

impl<IO> Drop for SharedIo<IO> {
    fn drop(&mut self) {
        self.slot.released.store(true, Ordering::Release);
        self.slot.on_release.notify_one();
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection was closed by its server",
    )
}

impl<IO> SharedIo<IO> {
    fn with<T>(
        &self,
        use_io: impl FnOnce(Pin<&mut IO>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        IO: Unpin,
    {
        match self.slot.io.lock().as_mut() {
            Some(io) => use_io(Pin::new(io)),
            None => Poll::Ready(Err(closed())),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SharedIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_read(cx, buf))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SharedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|io| io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.slot
            .io
            .lock()
            .as_ref()
            .is_some_and(IO::is_write_vectored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_owner_closes_the_stream_its_holder_keeps() {
        let (server, mut client) = tokio::io::duplex(64);
        let (mut held, owner) = share(server);
        held.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.unwrap();
        assert!(!owner.is_released());

        drop(owner);
        assert_eq!(client.read(&mut buf).await.unwrap(), 0, "closed");
        let error = held.write_all(b"more").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn the_owner_learns_when_the_holder_lets_go() {
        let (server, _client) = tokio::io::duplex(64);
        let (held, owner) = share(server);
        drop(held);
        assert!(owner.is_released());
        owner.released().await;
    }
}
