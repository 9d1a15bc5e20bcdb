use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Activity;

/// A stream that counts the bytes it reads and writes for its connection's timeouts.
///
/// It forwards every read and write method, vectored writes included, and stays `Unpin`
/// whenever the stream it wraps is.
#[pin_project]
#[derive(Debug)]
pub struct TimedIo<IO> {
    #[pin]
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> TimedIo<IO> {
    pub(crate) fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The wrapped stream, mutably. Bytes moved through it directly are not seen by the
    /// timeouts.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> IO {
        self.io
    }
}

impl<IO: AsyncRead> AsyncRead for TimedIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.activity.on_read(read);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite> AsyncWrite for TimedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = ready!(blocked_if_pending(
            this.io.poll_write(cx, buf),
            this.activity
        ))?;
        if written > 0 {
            this.activity.on_write(written);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = ready!(blocked_if_pending(
            this.io.poll_write_vectored(cx, bufs),
            this.activity
        ))?;
        if written > 0 {
            this.activity.on_write(written);
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Tells the activity that a write found the stream full: output waits for the client.
fn blocked_if_pending<T>(poll: Poll<T>, activity: &Activity) -> Poll<T> {
    if poll.is_pending() {
        activity.on_write_blocked();
    }
    poll
}
