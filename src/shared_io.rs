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
//! A stream that can leave only once it is told it may (the HTTP adapter's: only a
//! request for an upgrade can take it) starts [in place](share_in_place): polled without
//! the lock while the connection's own future holds it, and moved into the shared slot
//! at its first poll after it is told, before it can leave.
//!
//! The bytes passing through can also be shown to a [`Watch`] (the HTTP adapter's frame
//! watch, which follows HTTP/2's frames for the timeouts).

use std::{
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sees the bytes a shared stream moves. Held beside the stream: a large one should box
/// what it keeps.
pub(crate) trait Watch: Unpin {
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
    /// The stream, while it is polled in place.
    in_place: Option<InPlace<IO, W>>,
    slot: Arc<Slot<IO, W>>,
}

#[derive(Debug)]
struct InPlace<IO, W> {
    io: IO,
    watch: Option<W>,
}

/// The connection future's end: closes the stream when dropped.
#[derive(Debug)]
pub(crate) struct IoOwner<IO, W> {
    slot: Arc<Slot<IO, W>>,
}

#[derive(Debug)]
struct Slot<IO, W> {
    /// Taken on every read and write once the stream is shared, and uncontended but
    /// for the owner's close: one holder polls at a time. parking_lot's lock is a
    /// single atomic each way, with no poisoning to check.
    stream: Mutex<Stream<IO, W>>,
    /// Raised when a stream held in place may leave the owner's future: it moves into
    /// `stream` at its next poll.
    leaving: AtomicBool,
}

#[derive(Debug)]
struct Stream<IO, W> {
    /// Until the owner closes it; `None` too while it is held in place.
    io: Option<IO>,
    /// Whether the owner has dropped its end.
    closed: bool,
    /// Whether the holder has dropped its end, and the owner's task waiting for that.
    released: bool,
    owner: Option<Waker>,
    /// The holder's tasks waiting to read and to write, woken when the owner closes.
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// Dropped once it has nothing more to learn.
    watch: Option<W>,
}

/// Shares `io` between a holder and its owner; `watch` sees every byte.
pub(crate) fn share<IO, W>(io: IO, watch: Option<W>) -> (SharedIo<IO, W>, IoOwner<IO, W>) {
    let slot = Slot::new(Some(io), watch);
    (
        SharedIo {
            in_place: None,
            slot: slot.clone(),
        },
        IoOwner { slot },
    )
}

/// Shares `io` as [`share`] does, but polled in place, without the lock, until
/// [`IoOwner::may_leave`] is told: the holder must stay inside the owner's future until
/// then.
pub(crate) fn share_in_place<IO, W>(io: IO, watch: Option<W>) -> (SharedIo<IO, W>, IoOwner<IO, W>) {
    let slot = Slot::new(None, None);
    (
        SharedIo {
            in_place: Some(InPlace { io, watch }),
            slot: slot.clone(),
        },
        IoOwner { slot },
    )
}

impl<IO, W> Slot<IO, W> {
    fn new(io: Option<IO>, watch: Option<W>) -> Arc<Self> {
        Arc::new(Slot {
            stream: Mutex::new(Stream {
                io,
                closed: false,
                released: false,
                owner: None,
                reader: None,
                writer: None,
                watch,
            }),
            leaving: AtomicBool::new(false),
        })
    }
}

/// Tells a stream held in place that it may leave its owner's future.
pub(crate) trait MayLeave: Send + Sync {
    fn may_leave(&self);
}

impl<IO: Send, W: Send> MayLeave for Slot<IO, W> {
    fn may_leave(&self) {
        self.leaving.store(true, Ordering::Release);
    }
}

impl<IO: Send + 'static, W: Send + 'static> IoOwner<IO, W> {
    /// What tells the stream, if it is held in place, that it may leave the owner's
    /// future.
    pub(crate) fn may_leave(&self) -> Arc<dyn MayLeave> {
        self.slot.clone()
    }
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
            stream.closed = true;
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
    /// fails once it is closed; a pending poll of the shared stream keeps its waker, to
    /// be woken at a close.
    #[inline]
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        direction: Direction,
        poll: impl FnOnce(Pin<&mut IO>, &mut Context<'_>, &mut Option<W>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.in_place.is_some() && self.slot.leaving.load(Ordering::Acquire) {
            self.move_to_slot();
        }
        // One call of `poll` below, whichever way the stream is reached: it is inlined
        // then.
        let mut shared;
        let (io, watch, kept) = match &mut self.in_place {
            Some(held) => (&mut held.io, &mut held.watch, None),
            None => {
                shared = self.slot.stream.lock();
                let Stream {
                    io,
                    reader,
                    writer,
                    watch,
                    ..
                } = &mut *shared;
                let Some(io) = io else {
                    return Poll::Ready(Err(closed()));
                };
                let kept = match direction {
                    Direction::Read => reader,
                    Direction::Write => writer,
                };
                (io, watch, Some(kept))
            }
        };
        let polled = poll(Pin::new(io), cx, watch);
        match kept {
            Some(kept) => waiting(polled, kept, cx.waker()),
            None => polled,
        }
    }
}

impl<IO, W> SharedIo<IO, W> {
    /// Moves the stream held in place into the slot, where its owner can close it
    /// wherever it goes; or drops it, if its owner is gone.
    fn move_to_slot(&mut self) {
        let Some(InPlace { io, watch }) = self.in_place.take() else {
            return;
        };
        let mut stream = self.slot.stream.lock();
        if !stream.closed {
            stream.io = Some(io);
            stream.watch = watch;
        }
    }
}

impl<IO: AsyncRead + Unpin, W: Watch> AsyncRead for SharedIo<IO, W> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_io(cx, Direction::Read, |io, cx, watch| {
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
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, Direction::Write, |io, cx, watch| {
                let polled = io.poll_write(cx, buf);
                if let (Poll::Ready(Ok(written)), Some(watch)) = (&polled, watch) {
                    watch.on_written(&buf[..*written]);
                }
                polled
            })
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, Direction::Write, |io, cx, watch| {
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

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_io(cx, Direction::Write, |io, cx, _| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_io(cx, Direction::Write, |io, cx, _| io.poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        if let Some(held) = &self.in_place {
            return held.io.is_write_vectored();
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_stream_held_in_place_is_moved_where_its_owner_can_close_it() {
        let (server, mut client) = tokio::io::duplex(64);
        let (mut held, owner) = share_in_place::<_, Unwatched>(server, None);
        held.write_all(b"in").await.unwrap();
        owner.may_leave().may_leave();
        held.write_all(b"out").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"inout");

        // Now anywhere, as an upgraded stream is: its owner still closes it.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            held.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        drop(owner);
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf));
        assert_eq!(read.await.expect("closed").unwrap(), 0);
        let error = reader.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn a_stream_told_to_leave_after_its_owner_is_gone_is_closed() {
        let (server, mut client) = tokio::io::duplex(64);
        let (mut held, owner) = share_in_place::<_, Unwatched>(server, None);
        let may_leave = owner.may_leave();
        drop(owner);
        may_leave.may_leave();
        let error = held.write_all(b"late").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        let mut buf = [0u8; 4];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0, "closed");
    }

    #[tokio::test]
    async fn the_owner_learns_when_the_holder_lets_go() {
        let (server, _client) = tokio::io::duplex(64);
        let (held, owner) = share::<_, Unwatched>(server, None);
        drop(held);
        assert!(owner.is_released());
        owner.released().await;

        let (server, _client) = tokio::io::duplex(64);
        let (held, owner) = share_in_place::<_, Unwatched>(server, None);
        assert!(!owner.is_released());
        drop(held);
        assert!(owner.is_released());
    }
}
