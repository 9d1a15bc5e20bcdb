use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that first gives back the bytes read from it past the PROXY header (or read
/// to look for one), then reads on from the stream: the protocol gets every byte the
/// client sent after the header, once, in order (hyper-util's `Rewind`).
///
/// It forwards every write method, vectored writes included, and stays `Unpin`
/// whenever the stream it wraps is. The replayed bytes are freed once read.
#[pin_project]
#[derive(Debug)]
pub struct Rewind<IO> {
    #[pin]
    io: IO,
    replay: Bytes,
}

impl<IO> Rewind<IO> {
    pub(crate) fn new(io: IO, replay: Bytes) -> Self {
        Self { io, replay }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The wrapped stream, mutably. Reading from it directly skips the bytes not yet
    /// given back.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Unwraps the stream, with the bytes not yet given back.
    pub fn into_inner(self) -> (IO, Bytes) {
        (self.io, self.replay)
    }
}

impl<IO: AsyncRead> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.replay.is_empty() {
            return this.io.poll_read(cx, buf);
        }
        let given = this.replay.len().min(buf.remaining());
        buf.put_slice(&this.replay[..given]);
        this.replay.advance(given);
        if this.replay.is_empty() {
            // Let go of the buffer the bytes came in.
            *this.replay = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
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
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn assert_unpin<T: Unpin>() {}

    #[tokio::test]
    async fn gives_back_the_replay_then_reads_on_and_nothing_twice() {
        let (io, mut client) = tokio::io::duplex(64);
        let mut rewind = Rewind::new(io, Bytes::from_static(b"hello "));
        client.write_all(b"world").await.unwrap();
        drop(client);

        let mut small = [0; 4];
        assert_eq!(rewind.read(&mut small).await.unwrap(), 4);
        assert_eq!(&small, b"hell");
        let mut rest = String::new();
        rewind.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "o world");
        assert!(rewind.into_inner().1.is_empty());
    }

    #[tokio::test]
    async fn forwards_every_write_method() {
        assert_unpin::<Rewind<tokio::io::DuplexStream>>();
        let (io, mut client) = tokio::io::duplex(64);
        let mut rewind = Rewind::new(io, Bytes::new());
        assert_eq!(
            rewind.is_write_vectored(),
            rewind.get_ref().is_write_vectored()
        );
        let slices = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
        let written = rewind.write_vectored(&slices).await.unwrap();
        rewind.write_all(&b"abcd"[written..]).await.unwrap();
        rewind.write_all(b"!").await.unwrap();
        rewind.flush().await.unwrap();
        rewind.shutdown().await.unwrap();
        let mut received = String::new();
        client.read_to_string(&mut received).await.unwrap();
        assert_eq!(received, "abcd!");
    }
}
