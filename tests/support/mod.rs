//! Helpers shared by the integration tests: injected listeners, loopback servers and
//! clients, and minimal HTTP clients.

// Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod example;
#[path = "../../examples/siege/haproxy.rs"]
pub mod haproxy;
#[cfg(all(feature = "http", feature = "login"))]
pub mod reporter;
#[cfg(feature = "tls")]
pub mod tls;

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::DuplexStream,
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tower_bouncer::{
    BoxError, Conn,
    serve::{Listener, Server, ShutdownReport},
};

/// A generous bound for anything a test waits on, so a broken feature fails instead of
/// hanging; passing tests never come near it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How long a banned peer's connection waits for its refusal before the test takes it
/// as dropped by the kernel filter. A handshake under way when the peer's key goes into
/// the filter completes on the client's side only (its SYN passed the old filter, its
/// last ACK meets the new one): the connection looks open, and no answer ever comes.
pub const REFUSAL_OR_DROPPED: Duration = Duration::from_secs(2);

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What an HTTP/2 client that never reads sends: the preface, its settings and the
/// acknowledgement of the server's, and `GET /` on stream 1 (HPACK: `:method GET`,
/// `:scheme http`, `:path /` from the static table, `:authority t`).
pub const HTTP2_GET_THEN_DEAF: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
    \0\0\0\x04\0\0\0\0\0\
    \0\0\0\x04\x01\0\0\0\0\
    \0\0\x06\x01\x05\0\0\0\x01\x82\x86\x84\x41\x01t";

/// What an HTTP/2 client that takes nothing of its answer sends: the preface, settings
/// that give every stream a window of zero (and never a window update after), the
/// acknowledgement of the server's, and `GET /` on stream 1, as in
/// [`HTTP2_GET_THEN_DEAF`].
pub const HTTP2_GET_WITH_NO_WINDOW: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
    \0\0\x06\x04\0\0\0\0\0\0\x04\0\0\0\0\
    \0\0\0\x04\x01\0\0\0\0\
    \0\0\x06\x01\x05\0\0\0\x01\x82\x86\x84\x41\x01t";

/// A connection over an in-memory stream, from `peer`; returns it and the client's end.
pub fn duplex_conn(peer: &str) -> (Conn<DuplexStream>, DuplexStream) {
    let (server, client) = tokio::io::duplex(4096);
    (Conn::new(server, addr(peer), addr("127.0.0.1:80")), client)
}

/// A listener fed by the test: each item sent is what the next `accept` returns.
pub struct ChannelListener {
    queue: mpsc::UnboundedReceiver<io::Result<Conn<DuplexStream>>>,
    log: Arc<AcceptLog>,
}

/// What the accept loop asked of a [`ChannelListener`].
#[derive(Default)]
pub struct AcceptLog {
    /// When each `accept` call began.
    pub attempts: Mutex<Vec<Instant>>,
    /// How many connections were handed out.
    pub accepted: AtomicUsize,
}

impl AcceptLog {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Milliseconds between successive accept attempts.
    pub fn gaps_ms(&self) -> Vec<u128> {
        let attempts = self.attempts.lock().unwrap();
        attempts
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_millis())
            .collect()
    }
}

impl ChannelListener {
    pub fn new() -> (
        mpsc::UnboundedSender<io::Result<Conn<DuplexStream>>>,
        Arc<AcceptLog>,
        Self,
    ) {
        let (sender, queue) = mpsc::unbounded_channel();
        let log = Arc::new(AcceptLog::default());
        (sender, log.clone(), Self { queue, log })
    }
}

impl Listener for ChannelListener {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, SocketAddr)> {
        self.log.attempts.lock().unwrap().push(Instant::now());
        match self.queue.recv().await {
            Some(Ok(conn)) => {
                self.log.accepted.fetch_add(1, Ordering::SeqCst);
                let peer_addr = conn.peer_addr();
                Ok((conn.into_io(), peer_addr))
            }
            Some(Err(error)) => Err(error),
            // The test dropped its sender: behave as a closed listener does.
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(addr("127.0.0.1:80"))
    }
}

/// A server on a real loopback socket, shut down when `stop` is called or dropped.
pub struct LoopbackServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<ShutdownReport>>,
}

impl LoopbackServer {
    /// Serves `service` on 127.0.0.1 with a drain deadline of `drain`.
    pub async fn start<S>(service: S, drain: Duration) -> Self
    where
        S: tower::Service<Conn<TcpStream>, Response = ()> + Send + 'static,
        S::Error: Into<BoxError> + 'static,
        S::Future: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, service, drain)
    }

    /// Serves `service` on `listener` with a drain deadline of `drain`.
    pub fn start_on<L, S>(listener: L, service: S, drain: Duration) -> Self
    where
        L: Listener<Io = TcpStream>,
        S: tower::Service<Conn<TcpStream>, Response = ()> + Send + 'static,
        S::Error: Into<BoxError> + 'static,
        S::Future: Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::new(listener)
            .drain_timeout(drain)
            .with_graceful_shutdown(async move {
                stopped.await.ok();
            });
        let task = tokio::spawn(server.serve(service));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Shuts the server down and returns its report.
    pub async fn stop(mut self) -> ShutdownReport {
        self.stop.take().unwrap().send(()).ok();
        within(PATIENCE, &mut self.task).await.unwrap().unwrap()
    }
}

/// Connects to `server` from the loopback address `127.0.0.<last>`: distinct peers
/// for the server, all on this machine.
pub async fn connect_from(last: u8, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0);
    socket.bind(local).unwrap();
    socket.connect(server).await.unwrap()
}

/// Awaits `future`, panicking if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .expect("the test waited too long")
}

/// A response with its body read.
pub struct Answer {
    pub status: http::StatusCode,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: String,
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Full::default())
        .unwrap()
}

/// Credentials that are wrong (`alice:wrong`, HTTP Basic): a login attempt that fails.
pub const WRONG_PASSWORD: &str = "Basic YWxpY2U6d3Jvbmc=";

/// An HTTP/1.1 client connection, with its driver running in a task.
pub struct Http1Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub driver: JoinHandle<Result<(), hyper::Error>>,
}

impl Http1Client {
    pub async fn connect<IO>(stream: IO) -> Self
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        Self {
            sender,
            driver: tokio::spawn(connection),
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(get(path)).await?;
        Ok(collect(response).await)
    }

    /// `GET path` with `authorization`: a login attempt.
    pub async fn get_as(
        &mut self,
        path: &str,
        authorization: &str,
    ) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let mut request = get(path);
        let value = http::HeaderValue::try_from(authorization).unwrap();
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
        let response = self.sender.send_request(request).await?;
        Ok(collect(response).await)
    }

    pub async fn post(&mut self, path: &str, body: &'static str) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let request = http::Request::post(path)
            .header(http::header::HOST, "localhost")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let response = self.sender.send_request(request).await?;
        Ok(collect(response).await)
    }
}

/// An HTTP/2 client connection (prior knowledge, cleartext), with its driver running in
/// a task.
pub struct Http2Client {
    sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    pub driver: JoinHandle<Result<(), hyper::Error>>,
}

impl Http2Client {
    pub async fn connect<IO>(stream: IO) -> Self
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        Self {
            sender,
            driver: tokio::spawn(connection),
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let request = http::Request::get(format!("http://localhost{path}"))
            .body(Empty::new())
            .unwrap();
        let response = self.sender.send_request(request).await?;
        Ok(collect(response).await)
    }

    /// `GET path` with `authorization`: a login attempt.
    pub async fn get_as(
        &mut self,
        path: &str,
        authorization: &str,
    ) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let request = http::Request::get(format!("http://localhost{path}"))
            .header(http::header::AUTHORIZATION, authorization)
            .body(Empty::new())
            .unwrap();
        let response = self.sender.send_request(request).await?;
        Ok(collect(response).await)
    }
}

/// A gRPC channel to `addr`, in cleartext HTTP/2, connected.
pub async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The refusal an admission layer failed a connection with.
pub fn rejected(error: &BoxError) -> &tower_bouncer::admission::Rejected {
    error
        .downcast_ref()
        .unwrap_or_else(|| panic!("expected a Rejected, got {error}"))
}

/// A connection over an in-memory stream whose other end is dropped: for layers that
/// decide without any I/O.
pub fn conn_from(peer: &str) -> Conn<DuplexStream> {
    duplex_conn(peer).0
}

/// `promtool`, installed from Debian's `prometheus` package first if missing (as
/// root), once for all the tests here.
pub fn promtool() -> &'static str {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let present = || std::process::Command::new("promtool").arg("--version").output().is_ok();
        if present() {
            return true;
        }
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
        root && std::process::Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus",
            ])
            .status()
            .is_ok_and(|status| status.success())
            && present()
    });
    assert!(
        *found,
        "promtool is installed (apt-get install prometheus; .ci/run does)"
    );
    "promtool"
}

/// What a refused HTTP connection answers to a request: refusals in HTTP answer the
/// client's first request, in its protocol.
pub async fn refusal_to_a_request(stream: &mut TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .ok();
    let mut answer = String::new();
    within(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .ok();
    answer
}

std::thread_local! {
    /// Where this thread's WARN events go while a test captures them.
    static WARNINGS: std::cell::RefCell<Option<Arc<Mutex<Vec<String>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Collects every WARN event logged on this thread, formatted, while the guard lives.
///
/// One global subscriber serves every test of the binary, each test's events going to
/// its own sink. A subscriber set per thread could miss an event: tracing remembers
/// which subscribers want a log call, and a test on another thread that made the same
/// call first, with none, could leave it remembered as wanted by nobody.
pub fn capture_warnings(sink: Arc<Mutex<Vec<String>>>) -> CapturedWarnings {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(|| ThreadSink)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    });
    WARNINGS.with_borrow_mut(|current| *current = Some(sink));
    CapturedWarnings
}

/// Stops [`capture_warnings`] when dropped.
pub struct CapturedWarnings;

impl Drop for CapturedWarnings {
    fn drop(&mut self) {
        WARNINGS.with_borrow_mut(|current| *current = None);
    }
}

/// Writes an event to this thread's sink, if a test set one.
struct ThreadSink;

impl std::io::Write for ThreadSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        WARNINGS.with_borrow(|sink| {
            if let Some(sink) = sink {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(buf).into_owned());
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
