//! The login_server protocol, shared by the example and the siege's server mode.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpListener,
};
use tower::Service;
use tower_bouncer::{
    Conn, GracefulClose,
    login::{AfterFailure, LoginSession},
    timeout::RequestTimer,
};

use tower_bouncer::bouncer::{Bouncer, Refusals};

const MAX_LINE: usize = 1024;

/// What a refused connection reads.
pub fn refusals() -> Refusals {
    Refusals::messages(
        Bytes::from_static(b"ERROR busy\n"),
        Bytes::from_static(b"ERROR busy\n"),
        Bytes::from_static(b"ERROR banned\n"),
    )
}

/// Serves the protocol until `shutdown`: under the bouncer's layers through the crate's
/// accept loop, or, without a bouncer, from a plain tokio accept loop.
pub async fn serve(
    listener: TcpListener,
    bouncer: Option<&Bouncer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let Some(bouncer) = bouncer else {
        serve_unprotected(listener, shutdown).await;
        return;
    };
    let report = bouncer.serve_until(listener, Protocol, shutdown).await;
    if let Err(error) = report {
        super::fail(format_args!("server failed: {error}"));
    }
}

/// The protocol as a connection-level service, on whatever stream the layers above make
/// (a PROXY header read or not, TLS or not).
#[derive(Debug, Clone, Copy)]
struct Protocol;

impl<IO> Service<Conn<IO>> for Protocol
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = ();
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut conn: Conn<IO>) -> Self::Future {
        let request_timer = conn.request_timer();
        let session = Session {
            login: conn.login_session().cloned(),
            close: Some(conn.graceful_close()),
            request_timer,
        };
        Box::pin(session.run(conn.into_io()))
    }
}

/// A plain tokio accept loop, as a server without any protection is written.
async fn serve_unprotected(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let session = Session {
                        login: None,
                        close: None,
                        request_timer: None,
                    };
                    tokio::spawn(session.run(stream));
                }
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
        }
    }
}

/// One connection's state.
struct Session {
    /// Where logins are reported; `None`: never close after `DENIED` (the 2005
    /// behaviour).
    login: Option<LoginSession>,
    /// Raised when the server shuts down or the connection reaches its lifetime.
    close: Option<GracefulClose>,
    /// Told where each request (a line) ends, for the request timeout.
    request_timer: Option<RequestTimer>,
}

enum Line {
    Text(String),
    TooLong,
    End,
}

impl Session {
    async fn run<IO>(self, io: IO) -> io::Result<()>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut io = BufReader::new(io);
        let mut user = None;
        let close = self.close.unwrap_or_default();
        loop {
            if let Some(timer) = &self.request_timer {
                // The last line answered, the next may have begun in the same read as
                // it: its time starts now.
                timer.next(io.buffer());
            }
            let line = tokio::select! {
                line = read_line(&mut io) => line?,
                () = close.requested() => return Ok(()),
            };
            if let Some(timer) = &self.request_timer {
                timer.finish();
            }
            let line = match line {
                Line::Text(line) => line,
                Line::TooLong => return reply(&mut io, "ERROR line too long").await,
                Line::End => return Ok(()),
            };
            let (command, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match command {
                "LOGIN" => {
                    let Some((name, password)) = rest.split_once(' ') else {
                        reply(&mut io, "ERROR usage: LOGIN <user> <password>").await?;
                        continue;
                    };
                    if name == "alice" && password == "secret" {
                        user = Some(name.to_owned());
                        if let Some(login) = &self.login {
                            login.succeeded();
                        }
                        reply(&mut io, "OK").await?;
                    } else {
                        // Written and flushed before the failure is reported: the reply
                        // always reaches the client before the connection closes.
                        reply(&mut io, "DENIED").await?;
                        if let Some(login) = &self.login
                            && login.failed() == AfterFailure::Closing
                        {
                            return Ok(());
                        }
                    }
                }
                "ECHO" if user.is_some() => reply(&mut io, rest).await?,
                "ECHO" => reply(&mut io, "ERROR not logged in").await?,
                "QUIT" => return Ok(()),
                _ => reply(&mut io, "ERROR unknown command").await?,
            }
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes, without its `\n` or `\r\n`.
async fn read_line<R: AsyncRead + Unpin>(io: &mut BufReader<R>) -> io::Result<Line> {
    let mut buf = Vec::new();
    // Room for the longest line plus "\r\n": anything longer is too long.
    let limit = MAX_LINE as u64 + 2;
    let read = (&mut *io).take(limit).read_until(b'\n', &mut buf).await?;
    if read == 0 {
        return Ok(Line::End);
    }
    if buf.pop() != Some(b'\n') {
        // No newline: either the limit was hit or the peer closed mid-line.
        return Ok(if read as u64 == limit {
            Line::TooLong
        } else {
            Line::End
        });
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    if buf.len() > MAX_LINE {
        return Ok(Line::TooLong);
    }
    Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()))
}

/// Writes one line and flushes it, so it has left before anything else happens.
async fn reply<W: AsyncWrite + Unpin>(io: &mut W, line: &str) -> io::Result<()> {
    // One write: a line split in two waits on Nagle's algorithm for the peer's delayed
    // acknowledgement, 40 ms on Linux.
    io.write_all(format!("{line}\n").as_bytes()).await?;
    io.flush().await
}
