//! A raw TCP line protocol with a login, after the 2005 Perspective Broker server whose
//! failed logins leaked one connection each: the raw-protocol target of the project's
//! end-to-end and attack tests.
//!
//! ```text
//! cargo run --release --example login_server -- [--addr IP:PORT] [--unprotected]
//! ```
//!
//! Lines end in `\n` (a trailing `\r` is ignored), at most 1024 bytes. The server sends
//! nothing on connect.
//!
//! - `LOGIN <user> <password>` answers `OK` for `alice` / `secret`, else `DENIED`;
//! - after `OK`, `ECHO <text>` answers `<text>`; `QUIT` closes;
//! - anything else answers `ERROR <reason>`; a line over the limit answers
//!   `ERROR line too long` and closes.
//!
//! Protected (the default), connections run through the crate's accept loop and its
//! layers (per-peer rate, per-peer cap, total cap, timeouts; see `--help` for the flags
//! and their defaults; a refused connection reads `ERROR busy`). Each line is a request
//! for the request timeout. Logins are reported to the crate's login session: a
//! connection is closed right after the `DENIED` of its last allowed try is written,
//! enough failures ban the peer (its new connections read `ERROR banned`), and a
//! connection that has not logged in within the login timeout is closed. A connection
//! also winds down when the server shuts down or it reaches its maximum lifetime.
//! `--unprotected` keeps the connection open after `DENIED`, as the 2005 server did,
//! and serves from a plain tokio accept loop.

mod common;

use std::io;

use bytes::Bytes;
use common::protection::Refusals;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tower::service_fn;
use tower_bouncer::{
    Conn, GracefulClose,
    login::{AfterFailure, LoginSession},
    serve::Server,
    timeout::{RequestTimer, TimedIo},
};

const MAX_LINE: usize = 1024;

#[tokio::main]
async fn main() {
    let args = common::Args::from_env(
        "login_server",
        Some(common::protection::DEFAULT_LOGIN_TIMEOUT),
    );
    common::init_logging();
    let refusals = Refusals {
        busy: Bytes::from_static(b"ERROR busy\n"),
        too_fast: Bytes::from_static(b"ERROR busy\n"),
        banned: Bytes::from_static(b"ERROR banned\n"),
    };
    let protection = args
        .protection
        .layers(&refusals)
        .unwrap_or_else(|error| common::fail(error));
    let shutdown = common::shutdown_signal();
    let listener = common::bind(args.addr).await;

    if args.unprotected {
        serve_unprotected(listener, shutdown).await;
        return;
    }
    let protocol = service_fn(|mut conn: Conn<TimedIo<TcpStream>>| {
        let extensions = conn.extensions_mut();
        let session = Session {
            login: extensions.remove::<LoginSession>(),
            close: extensions.remove::<GracefulClose>(),
            request_timer: extensions.remove::<RequestTimer>(),
        };
        session.run(conn.into_io())
    });
    let report = Server::new(listener)
        .with_graceful_shutdown(shutdown)
        .serve(protection.around(protocol))
        .await;
    if let Err(error) = report {
        common::fail(format_args!("server failed: {error}"));
    }
}

/// A plain tokio accept loop, as a server without any protection is written.
async fn serve_unprotected(listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) {
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
    io.write_all(line.as_bytes()).await?;
    io.write_all(b"\n").await?;
    io.flush().await
}
