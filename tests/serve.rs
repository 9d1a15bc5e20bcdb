//! The accept loop: backpressure, accept errors, panics, graceful shutdown.

mod support;

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    net::TcpStream,
    sync::{mpsc, oneshot},
    time::Instant,
};
use tower::service_fn;
use tower_bouncer::{
    BoxError, Conn,
    serve::{Listener, Server},
};

use support::*;

fn os_error(code: i32) -> io::Result<Conn<tokio::io::DuplexStream>> {
    Err(io::Error::from_raw_os_error(code))
}

/// A connection service that reports each peer it serves, then closes.
fn reporting_service<IO: Send + 'static>(
    served: mpsc::UnboundedSender<std::net::SocketAddr>,
) -> impl tower::Service<
    Conn<IO>,
    Response = (),
    Error = BoxError,
    Future = impl Future<Output = Result<(), BoxError>> + Send,
> {
    service_fn(move |conn: Conn<IO>| {
        let served = served.clone();
        async move {
            served.send(conn.peer_addr()).ok();
            Ok::<_, BoxError>(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_service_that_is_not_ready_stops_accepts_until_it_is() {
    let (service, mut handle) = tower_test::mock::pair::<Conn<tokio::io::DuplexStream>, ()>();
    handle.allow(0);
    let (queue, log, listener) = ChannelListener::new();
    let server = tokio::spawn(Server::new(listener).serve(service));

    let (first, _first_client) = duplex_conn("192.0.2.1:1");
    let (second, _second_client) = duplex_conn("192.0.2.2:2");
    queue.send(Ok(first)).unwrap();
    queue.send(Ok(second)).unwrap();

    // Not ready: nothing is accepted, both connections wait in the backlog.
    assert!(
        tokio::time::timeout(Duration::from_secs(60), handle.next_request())
            .await
            .is_err()
    );
    assert_eq!(log.accepted(), 0);

    // Ready for one: exactly one is accepted and served, the other keeps waiting.
    handle.allow(1);
    let (conn, respond) = handle.next_request().await.unwrap();
    assert_eq!(conn.peer_addr(), addr("192.0.2.1:1"));
    respond.send_response(());
    assert!(
        tokio::time::timeout(Duration::from_secs(60), handle.next_request())
            .await
            .is_err()
    );
    assert_eq!(log.accepted(), 1);

    handle.allow(1);
    let (conn, respond) = handle.next_request().await.unwrap();
    assert_eq!(conn.peer_addr(), addr("192.0.2.2:2"));
    respond.send_response(());
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_ends_a_server_whose_service_is_never_ready() {
    let (service, mut handle) = tower_test::mock::pair::<Conn<tokio::io::DuplexStream>, ()>();
    handle.allow(0);
    let (_queue, _log, listener) = ChannelListener::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::new(listener)
            .with_graceful_shutdown(async move {
                stopped.await.ok();
            })
            .serve(service),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!server.is_finished());
    stop.send(()).unwrap();
    let report = within(PATIENCE, server).await.unwrap().unwrap();
    assert_eq!((report.drained, report.cut), (0, 0));
}

#[tokio::test]
async fn on_real_sockets_a_paused_server_leaves_connections_in_the_kernel_backlog() {
    let (service, mut handle) = tower_test::mock::pair::<Conn<TcpStream>, ()>();
    handle.allow(0);
    let server = LoopbackServer::start(service, Duration::from_secs(1)).await;

    // The kernel completes the handshake even though the server is not accepting.
    let mut client = within(PATIENCE, connect_from(2, server.addr)).await;
    client.write_all(b"waiting").await.unwrap();

    handle.allow(1);
    let (conn, respond) = within(PATIENCE, handle.next_request()).await.unwrap();
    assert_eq!(conn.peer_addr(), client.local_addr().unwrap());
    let mut received = [0u8; 7];
    let mut io = conn.into_io();
    io.read_exact(&mut received).await.unwrap();
    assert_eq!(&received, b"waiting");
    respond.send_response(());
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn descriptor_exhaustion_backs_off_exponentially_then_recovers() {
    let (queue, log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    // The back-off alone: a scripted EMFILE frees no descriptor to close connections with.
    let server = tokio::spawn(
        Server::new(listener)
            .max_accept_backoff(Duration::from_millis(40))
            .reserve_descriptor(false)
            .serve(reporting_service(served)),
    );
    for _ in 0..5 {
        queue.send(os_error(libc::EMFILE)).unwrap();
    }
    let (conn, _client) = duplex_conn("192.0.2.9:9");
    queue.send(Ok(conn)).unwrap();

    let peer = within(PATIENCE, served_rx.recv()).await.unwrap();
    assert_eq!(peer, addr("192.0.2.9:9"));
    // Five failures: waits of 5, 10, 20, 40 and 40 ms (the cap) before retrying.
    assert_eq!(log.gaps_ms()[..5], [5, 10, 20, 40, 40]);

    // Success resets the back-off.
    queue.send(os_error(libc::ENFILE)).unwrap();
    let (conn, _client) = duplex_conn("192.0.2.10:10");
    queue.send(Ok(conn)).unwrap();
    within(PATIENCE, served_rx.recv()).await.unwrap();
    // After the success the loop retries at once, fails, and waits the minimum again.
    assert_eq!(log.gaps_ms()[5..7], [0, 5]);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_long_run_of_accept_errors_is_logged_rarely_and_never_spins() {
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let _logging = capture_warnings(warnings.clone());

    let (queue, log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(
        Server::new(listener)
            .max_accept_backoff(Duration::from_millis(100))
            .reserve_descriptor(false)
            .serve(reporting_service(served)),
    );
    // 60 failures in a row: about 5.6 s of back-off, the 5 s log interval passes once.
    for _ in 0..60 {
        queue.send(os_error(libc::EMFILE)).unwrap();
    }
    let (conn, _client) = duplex_conn("192.0.2.1:1");
    queue.send(Ok(conn)).unwrap();
    within(Duration::from_secs(60), served_rx.recv())
        .await
        .unwrap();

    let gaps = log.gaps_ms();
    assert!(gaps[..60].iter().all(|gap| *gap >= 5), "{gaps:?}");
    let warnings = warnings.lock().unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[1].contains("suppressed=") && !warnings[1].contains("suppressed=0"));
    server.abort();
}

/// Whether the server closed `client`'s connection without a word.
async fn closed_unserved(client: &mut DuplexStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(within(PATIENCE, client.read(&mut buf)).await, Ok(0))
}

#[tokio::test(start_paused = true)]
async fn out_of_descriptors_the_backlog_is_closed_instead_of_left_waiting() {
    let (queue, log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(Server::new(listener).serve(reporting_service(served)));
    // Out of descriptors, with two clients in the backlog.
    queue.send(os_error(libc::EMFILE)).unwrap();
    let (first, mut first_client) = duplex_conn("192.0.2.1:1");
    let (second, mut second_client) = duplex_conn("192.0.2.2:2");
    queue.send(Ok(first)).unwrap();
    queue.send(Ok(second)).unwrap();

    assert!(closed_unserved(&mut first_client).await);
    assert!(closed_unserved(&mut second_client).await);
    // Both at once, with the failed accept; then a look at an empty backlog, and back
    // to accepting: the next accept waits for a client.
    let (third, _third_client) = duplex_conn("192.0.2.3:3");
    queue.send(Ok(third)).unwrap();
    assert_eq!(
        within(PATIENCE, served_rx.recv()).await,
        Some(addr("192.0.2.3:3"))
    );
    assert_eq!(log.gaps_ms()[..4], [0, 0, 0, 0]);
    assert_eq!(log.accepted(), 3);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn without_the_reserve_the_backlog_waits_for_a_descriptor() {
    let (queue, _log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(
        Server::new(listener)
            .reserve_descriptor(false)
            .serve(reporting_service(served)),
    );
    queue.send(os_error(libc::EMFILE)).unwrap();
    let (waiting, _client) = duplex_conn("192.0.2.1:1");
    queue.send(Ok(waiting)).unwrap();
    assert_eq!(
        within(PATIENCE, served_rx.recv()).await,
        Some(addr("192.0.2.1:1"))
    );
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_shortage_of_memory_closes_nothing() {
    let (queue, _log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(Server::new(listener).serve(reporting_service(served)));
    queue.send(os_error(libc::ENOBUFS)).unwrap();
    let (waiting, _client) = duplex_conn("192.0.2.1:1");
    queue.send(Ok(waiting)).unwrap();
    assert_eq!(
        within(PATIENCE, served_rx.recv()).await,
        Some(addr("192.0.2.1:1"))
    );
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn one_retry_closes_at_most_256_connections() {
    let (queue, _log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(Server::new(listener).serve(reporting_service(served)));
    queue.send(os_error(libc::EMFILE)).unwrap();
    let mut clients = Vec::new();
    for n in 0..300 {
        let (conn, client) = duplex_conn(&format!("192.0.2.1:{}", n + 1));
        clients.push(client);
        queue.send(Ok(conn)).unwrap();
    }
    // The 257th is accepted at the next retry, descriptors permitting.
    assert_eq!(
        within(PATIENCE, served_rx.recv()).await,
        Some(addr("192.0.2.1:257"))
    );
    for client in &mut clients[..256] {
        assert!(closed_unserved(client).await);
    }
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn an_aborted_connection_is_skipped_at_once() {
    let (queue, log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(Server::new(listener).serve(reporting_service(served)));
    queue.send(os_error(libc::ECONNABORTED)).unwrap();
    let (conn, _client) = duplex_conn("192.0.2.3:3");
    queue.send(Ok(conn)).unwrap();

    within(PATIENCE, served_rx.recv()).await.unwrap();
    assert_eq!(log.gaps_ms()[0], 0);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn an_accept_error_without_an_os_code_skips_one_connection() {
    // What mio returns on macOS for a connection reset before `accept` on a dual-stack
    // listener: `InvalidInput` with no OS error code.
    let (queue, _log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(Server::new(listener).serve(reporting_service(served)));
    queue.send(Err(io::ErrorKind::InvalidInput.into())).unwrap();
    let (conn, _client) = duplex_conn("192.0.2.3:3");
    queue.send(Ok(conn)).unwrap();

    assert_eq!(
        within(PATIENCE, served_rx.recv()).await,
        Some(addr("192.0.2.3:3"))
    );
    assert!(!server.is_finished());
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_bad_client_on_a_custom_listener_is_skipped_without_backing_off() {
    let (queue, log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(Server::new(listener).serve(reporting_service(served)));
    // What a TLS listener might return for a client that fails its handshake.
    for kind in [
        io::ErrorKind::InvalidData,
        io::ErrorKind::UnexpectedEof,
        io::ErrorKind::BrokenPipe,
    ] {
        queue.send(Err(kind.into())).unwrap();
    }
    let (conn, _client) = duplex_conn("192.0.2.3:3");
    queue.send(Ok(conn)).unwrap();

    within(PATIENCE, served_rx.recv()).await.unwrap();
    assert_eq!(log.gaps_ms()[..3], [0, 0, 0]);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_listener_that_fails_every_accept_pauses_the_loop_now_and_then() {
    let (queue, log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(Server::new(listener).serve(reporting_service(served)));
    for _ in 0..100 {
        queue
            .send(Err(io::Error::other("always the same")))
            .unwrap();
    }
    let (conn, _client) = duplex_conn("192.0.2.3:3");
    queue.send(Ok(conn)).unwrap();

    within(PATIENCE, served_rx.recv()).await.unwrap();
    // Every 32nd error in a row is followed by a 1 ms pause, the others by none.
    let gaps = log.gaps_ms();
    let paused: Vec<usize> = (0..gaps.len()).filter(|&n| gaps[n] > 0).collect();
    assert_eq!(paused, [31, 63, 95], "{gaps:?}");
    assert!(paused.iter().all(|&n| gaps[n] == 1), "{gaps:?}");
    server.abort();
}

/// A listener on a wildcard address whose first connection is reset before its local
/// address is read.
struct WildcardListener {
    inner: ChannelListener,
    reset_first: AtomicBool,
}

impl Listener for WildcardListener {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, SocketAddr)> {
        self.inner.accept().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(addr("0.0.0.0:80"))
    }

    fn connection_local_addr(&self, _io: &DuplexStream) -> io::Result<SocketAddr> {
        if self.reset_first.swap(false, Ordering::SeqCst) {
            return Err(io::ErrorKind::NotConnected.into());
        }
        Ok(addr("192.0.2.80:80"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_reset_before_its_local_address_is_read_is_skipped() {
    let (queue, _log, inner) = ChannelListener::new();
    let listener = WildcardListener {
        inner,
        reset_first: AtomicBool::new(true),
    };
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let service = service_fn(move |conn: Conn<DuplexStream>| {
        served.send((conn.peer_addr(), conn.local_addr())).ok();
        async { Ok::<_, BoxError>(()) }
    });
    let server = tokio::spawn(Server::new(listener).serve(service));
    let mut clients = Vec::new();
    for peer in ["192.0.2.1:1", "192.0.2.2:2"] {
        let (conn, client) = duplex_conn(peer);
        clients.push(client);
        queue.send(Ok(conn)).unwrap();
    }

    assert_eq!(
        within(PATIENCE, served_rx.recv()).await,
        Some((addr("192.0.2.2:2"), addr("192.0.2.80:80")))
    );
    assert!(!server.is_finished());
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_dead_listener_ends_the_loop_with_its_error() {
    let (queue, _log, listener) = ChannelListener::new();
    let (served, _served_rx) = mpsc::unbounded_channel();
    let server = Server::new(listener).serve(reporting_service(served));
    queue.send(os_error(libc::EBADF)).unwrap();

    let error = within(PATIENCE, server).await.unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_connection_does_not_stop_the_loop() {
    let (queue, _log, listener) = ChannelListener::new();
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let service = service_fn(move |conn: Conn<tokio::io::DuplexStream>| {
        let served = served.clone();
        let peer = conn.peer_addr();
        // Panics inside `call` itself for one peer...
        assert_ne!(peer, addr("192.0.2.1:1"), "panic in call");
        async move {
            // ...and inside the connection's future for another.
            assert_ne!(peer, addr("192.0.2.2:2"), "panic in the connection");
            served.send(peer).ok();
            Ok::<_, BoxError>(())
        }
    });
    let server = tokio::spawn(Server::new(listener).serve(service));

    let mut clients = Vec::new();
    for peer in ["192.0.2.1:1", "192.0.2.2:2", "192.0.2.3:3"] {
        let (conn, client) = duplex_conn(peer);
        clients.push(client);
        queue.send(Ok(conn)).unwrap();
    }
    assert_eq!(
        within(PATIENCE, served_rx.recv()).await,
        Some(addr("192.0.2.3:3"))
    );
    assert!(!server.is_finished());
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn shutdown_winds_down_live_connections_and_cuts_the_stuck_one_at_the_deadline() {
    let (queue, _log, listener) = ChannelListener::new();
    let (started, mut started_rx) = mpsc::unbounded_channel();
    let service = service_fn(move |mut conn: Conn<tokio::io::DuplexStream>| {
        let close = conn.graceful_close();
        let started = started.clone();
        async move {
            started.send(()).ok();
            if conn.peer_addr() == addr("192.0.2.1:1") {
                // Cooperative: finishes once asked.
                close.requested().await;
            } else {
                // Stuck: ignores the request.
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(())
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::new(listener)
            .drain_timeout(Duration::from_secs(5))
            .with_graceful_shutdown(async move {
                stopped.await.ok();
            })
            .serve(service),
    );
    let mut clients = Vec::new();
    for peer in ["192.0.2.1:1", "192.0.2.2:2"] {
        let (conn, client) = duplex_conn(peer);
        clients.push(client);
        queue.send(Ok(conn)).unwrap();
        started_rx.recv().await.unwrap();
    }

    let shutdown_began = Instant::now();
    stop.send(()).unwrap();
    let report = within(PATIENCE, server).await.unwrap().unwrap();
    assert_eq!((report.drained, report.cut), (1, 1));
    assert_eq!(shutdown_began.elapsed(), Duration::from_secs(5));
    // The cut connection's stream was dropped: its client sees the end.
    let mut buf = [0u8; 1];
    assert_eq!(clients[1].read(&mut buf).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_accepting() {
    let (queue, log, listener) = ChannelListener::new();
    let (served, _served_rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = Server::new(listener)
        .with_graceful_shutdown(async move {
            stopped.await.ok();
        })
        .serve(reporting_service(served));
    stop.send(()).unwrap();
    let report = within(PATIENCE, server).await.unwrap();
    assert_eq!((report.drained, report.cut), (0, 0));

    let (conn, _client) = duplex_conn("192.0.2.1:1");
    assert!(queue.send(Ok(conn)).is_err(), "the listener was dropped");
    assert_eq!(log.accepted(), 0);
}

#[test]
fn the_descriptor_limit_can_be_raised_to_the_hard_limit() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard: u64 = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4))
        .and_then(|value| value.parse().ok())
        .unwrap();
    assert_eq!(
        tower_bouncer::serve::raise_descriptor_limit().unwrap(),
        hard
    );
}

/// The variable that makes [`descriptor_starved_server`] a server: `reserve` or `none`.
const STARVED_SERVER: &str = "TOWER_BOUNCER_STARVED_SERVER";
/// The starved server's soft limit on descriptors.
const STARVED_DESCRIPTORS: usize = 48;

/// Not a test of its own (it returns at once): the server the tests below start in a
/// child process with few descriptors, a copy of this test binary run under
/// `ulimit -Sn`. It says `+` to each connection and holds it until the client closes.
#[test]
fn descriptor_starved_server() {
    let Ok(mode) = std::env::var(STARVED_SERVER) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        let hold = service_fn(|conn: Conn<TcpStream>| async move {
            let mut io = conn.into_io();
            io.write_all(b"+").await?;
            let mut rest = Vec::new();
            io.read_to_end(&mut rest).await?;
            Ok::<_, BoxError>(())
        });
        Server::new(listener)
            .reserve_descriptor(mode == "reserve")
            .serve(hold)
            .await
            .unwrap();
    });
}

/// A [`descriptor_starved_server`] in a child process, killed when dropped.
struct StarvedServer {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

impl StarvedServer {
    async fn start(mode: &str) -> Self {
        use tokio::io::AsyncBufReadExt;

        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -Sn {STARVED_DESCRIPTORS} && exec \"$0\" \"$@\""
            ))
            .arg(std::env::current_exe().unwrap())
            .args(["descriptor_starved_server", "--exact", "--nocapture"])
            .env(STARVED_SERVER, mode)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = within(PATIENCE, async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the server's address");
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return addr.parse().unwrap();
                }
            }
        })
        .await;
        Self {
            addr,
            _child: child,
        }
    }

    /// Connects (the kernel completes the handshake whether or not the server accepts)
    /// and waits up to `limit` for a word: `Some(true)` served, `Some(false)` closed
    /// unserved, `None` still waiting.
    async fn try_connection(&self, limit: Duration) -> (TcpStream, Option<bool>, Duration) {
        let mut stream = within(PATIENCE, connect_from(2, self.addr)).await;
        let began = std::time::Instant::now();
        let mut byte = [0u8; 1];
        let answer = match tokio::time::timeout(limit, stream.read(&mut byte)).await {
            Ok(Ok(1)) => Some(true),
            Ok(_) => Some(false),
            Err(_) => None,
        };
        (stream, answer, began.elapsed())
    }

    /// Opens connections until the server has no descriptor left for the next, and
    /// returns the ones it serves and holds, and that next one.
    async fn starve(&self, limit: Duration) -> (Vec<TcpStream>, TcpStream, Option<bool>, Duration) {
        let mut held = Vec::new();
        loop {
            let (stream, answer, waited) = self.try_connection(limit).await;
            if answer != Some(true) {
                return (held, stream, answer, waited);
            }
            held.push(stream);
            assert!(
                held.len() < STARVED_DESCRIPTORS,
                "the server never ran short"
            );
        }
    }
}

#[tokio::test]
async fn a_server_out_of_descriptors_closes_backlog_clients_and_recovers() {
    let server = StarvedServer::start("reserve").await;
    let (mut held, _closed, answer, waited) = server.starve(PATIENCE).await;
    assert_eq!(answer, Some(false), "closed, not left waiting");
    eprintln!("{} held; the next closed after {waited:?}", held.len());

    // Clients that come while the shortage lasts are closed as they come.
    let mut waits = Vec::new();
    for _ in 0..10 {
        let (_stream, answer, waited) = server.try_connection(PATIENCE).await;
        assert_eq!(answer, Some(false));
        waits.push(waited.as_millis());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("waits during the shortage, ms: {waits:?}");

    // Descriptors free, once the server has seen its clients go: new clients are
    // served again.
    held.truncate(held.len() - 4);
    let freed = std::time::Instant::now();
    let closed_meanwhile = within(PATIENCE, async {
        for closed in 0.. {
            if server.try_connection(PATIENCE).await.1 == Some(true) {
                return closed;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        unreachable!()
    })
    .await;
    eprintln!(
        "served again {:?} after descriptors were freed ({closed_meanwhile} closed meanwhile)",
        freed.elapsed()
    );
}

#[tokio::test]
async fn without_the_reserve_a_backlog_client_waits_until_a_descriptor_frees() {
    let server = StarvedServer::start("none").await;
    let limit = Duration::from_millis(1500);
    let (mut held, mut waiting, answer, _) = server.starve(limit).await;
    assert_eq!(answer, None, "still waiting after {limit:?}");

    held.truncate(held.len() - 4);
    let began = std::time::Instant::now();
    let mut byte = [0u8; 1];
    assert_eq!(within(PATIENCE, waiting.read(&mut byte)).await.unwrap(), 1);
    eprintln!("served {:?} after descriptors freed", began.elapsed());
}
