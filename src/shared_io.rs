//! The connection's stream, shared between whoever holds it and the connection's own
//! future.
//!
//! Some streams leave the connection's future to be served elsewhere: hyper hands an
//! upgraded connection's stream (WebSocket, `CONNECT`-style tunnels) to the handler's
//! task, and the protected listener hands every admitted stream to the framework that
//! accepts from it. Served through [`SharedIo`], the stream stays in reach: the
//! connection's future learns when the holder drops it, and can close it from outside,
//! at a deadline or a cut, even if the holder never polls it again; a holder waiting on
//! it is woken to find it closed.
//!
//! The bytes passing through can also be shown to a [`Watch`] (the HTTP adapter's frame
//! watch, which follows HTTP/2's frames for the timeouts).

use std::{
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sees the bytes a shared stream moves.
pub(crate) trait Watch {
    /// The bytes just read; `false` once there is nothing more to learn from them, and
    /// the watch is dropped.
    fn on_read(&mut self, read: &[u8]) -> bool;

    /// The bytes just written.
    fn on_written(&mut self, written: &[u8]);
}

/// The watch of a stream whose bytes nobody follows: never made.
#[derive(Debug)]
pub(crate) enum Unwatched {}

impl Watch for Unwatched {
    fn on_read(&mut self, _: &[u8]) -> bool {
        match *self {}
    }

    fn on_written(&mut self, _: &[u8]) {
        match *self {}
    }
}

/// The holder's end: a stream that forwards to the shared one, or fails once the
/// connection's future has closed it.
#[derive(Debug)]
pub(crate) struct SharedIo<IO, W> {
    slot: Arc<Slot<IO, W>>,
}

/// The connection future's end: closes the stream when dropped.
#[derive(Debug)]
pub(crate) struct IoOwner<IO, W> {
    slot: Arc<Slot<IO, W>>,
}

#[derive(Debug)]
struct Slot<IO, W> {
    /// Taken on every read and write, and uncontended but for the owner's close: one
    /// holder polls at a time. parking_lot's lock is a single atomic each way, with no
    /// poisoning to check.
    stream: Mutex<Stream<IO, W>>,
}

#[derive(Debug)]
struct Stream<IO, W> {
    /// Until the owner closes it.
    io: Option<IO>,
    /// Whether the holder has dropped its end, and the owner's task waiting for that.
    released: bool,
    owner: Option<Waker>,
    /// The holder's tasks waiting to read and to write, woken when the owner closes.
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// Boxed, and dropped once it has nothing more to learn.
    watch: Option<Box<W>>,
}

/// Shares `io` between a holder and its owner; `watch` sees every byte.
pub(crate) fn share<IO, W>(io: IO, watch: Option<Box<W>>) -> (SharedIo<IO, W>, IoOwner<IO, W>) {
    let slot = Arc::new(Slot {
        stream: Mutex::new(Stream {
            io: Some(io),
            released: false,
            owner: None,
            reader: None,
            writer: None,
            watch,
        }),
    });
    (SharedIo { slot: slot.clone() }, IoOwner { slot })
}

impl<IO, W> IoOwner<IO, W> {
    /// Whether the holder has dropped its end.
    pub(crate) fn is_released(&self) -> bool {
        self.slot.stream.lock().released
    }

    /// Resolves once the holder has dropped its end.
    pub(crate) fn released(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            let mut stream = self.slot.stream.lock();
            if stream.released {
                return Poll::Ready(());
            }
            waiting(Poll::Pending, &mut stream.owner, cx.waker())
        })
    }
}

impl<IO, W> Drop for IoOwner<IO, W> {
    fn drop(&mut self) {
        // Dropping the stream closes it, wherever its holder is; a holder waiting on it
        // would otherwise never be polled again (the socket's own wake-ups go with it).
        let (io, reader, writer) = {
            let mut stream = self.slot.stream.lock();
            (stream.io.take(), stream.reader.take(), stream.writer.take())
        };
        drop(io);
        reader.into_iter().chain(writer).for_each(Waker::wake);
    }
}

impl<IO, W> Drop for SharedIo<IO, W> {
    fn drop(&mut self) {
        let owner = {
            let mut stream = self.slot.stream.lock();
            stream.released = true;
            stream.owner.take()
        };
        if let Some(owner) = owner {
            owner.wake();
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection was closed by its server",
    )
}

/// Keeps `waker` in `slot` if the poll is pending, to be woken at a close.
fn waiting<T>(poll: Poll<T>, slot: &mut Option<Waker>, waker: &Waker) -> Poll<T> {
    if poll.is_pending() && !slot.as_ref().is_some_and(|kept| kept.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
    poll
}

/// Which of the holder's wakers a poll keeps.
#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

impl<IO: Unpin, W: Watch> SharedIo<IO, W> {
    /// Polls the stream with `poll` (which also shows the watch what moved), or
    /// fails once it is closed; a pending poll keeps its waker, to be woken at a close.
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        direction: Direction,
        poll: impl FnOnce(Pin<&mut IO>, &mut Context<'_>, &mut Option<Box<W>>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let mut stream = self.slot.stream.lock();
        let Stream {
            io,
            reader,
            writer,
            watch,
            ..
        } = &mut *stream;
        let Some(io) = io else {
            return Poll::Ready(Err(closed()));
        };
        let polled = poll(Pin::new(io), cx, watch);
        let kept = match direction {
            Direction::Read => reader,
            Direction::Write => writer,
        };
        waiting(polled, kept, cx.waker())
    }
}

impl<IO: AsyncRead + Unpin, W: Watch> AsyncRead for SharedIo<IO, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_io(cx, Direction::Read, |io, cx, watch| {
            let before = buf.filled().len();
            let polled = io.poll_read(cx, buf);
            if let (Poll::Ready(Ok(())), Some(seen)) = (&polled, watch.as_mut())
                && !seen.on_read(&buf.filled()[before..])
            {
                *watch = None;
            }
            polled
        })
    }
}

impl<IO: AsyncWrite + Unpin, W: Watch> AsyncWrite for SharedIo<IO, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, Direction::Write, |io, cx, watch| {
            let polled = io.poll_write(cx, buf);
            if let (Poll::Ready(Ok(written)), Some(watch)) = (&polled, watch) {
                watch.on_written(&buf[..*written]);
            }
            polled
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, Direction::Write, |io, cx, watch| {
            let polled = io.poll_write_vectored(cx, bufs);
            if let (Poll::Ready(Ok(written)), Some(watch)) = (&polled, watch) {
                let mut left = *written;
                for buf in bufs {
                    let run = left.min(buf.len());
                    watch.on_written(&buf[..run]);
                    left -= run;
                    if left == 0 {
                        break;
                    }
                }
            }
            polled
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_io(cx, Direction::Write, |io, cx, _| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_io(cx, Direction::Write, |io, cx, _| io.poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        self.slot
            .stream
            .lock()
            .io
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
        let (mut held, owner) = share::<_, Unwatched>(server, None);
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
    async fn a_holder_waiting_to_read_is_woken_by_the_close() {
        let (server, _client) = tokio::io::duplex(64);
        let (mut held, owner) = share::<_, Unwatched>(server, None);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            held.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        drop(owner);
        let error = reader.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn the_owner_learns_when_the_holder_lets_go() {
        let (server, _client) = tokio::io::duplex(64);
        let (held, owner) = share::<_, Unwatched>(server, None);
        drop(held);
        assert!(owner.is_released());
        owner.released().await;
    }
}
