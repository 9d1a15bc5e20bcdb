//! `ProtectedListener`: the connection-level layers under `axum::serve` and tonic's own
//! server, on real loopback sockets.
#![cfg(all(
    feature = "serve",
    feature = "axum",
    feature = "tonic",
    feature = "limit",
    feature = "peer-limit",
    feature = "timeout",
    feature = "login"
))]

mod support;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo, routing::get, serve::ListenerExt};
use futures_util::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tower::ServiceBuilder;
use tower_bouncer::{
    Conn, ConnInfo,
    limit::ConnectionLimitLayer,
    login::{AfterFailure, Login},
    peer_limit::PeerLimitLayer,
    serve::{Handoff, ProtectedListener, Server},
    timeout::TimeoutLayer,
};

use support::*;

/// Every deadline these tests set: long enough for a loaded machine to send a request
/// in time, short enough to wait for.
const SHORT: Duration = Duration::from_secs(1);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n";

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello\n" }))
}

/// Serves `app` with `axum::serve` on a protected loopback listener; returns its address.
async fn serve_axum<Ly>(layers: Ly, app: Router) -> SocketAddr
where
    Ly: tower::Layer<Handoff>,
    Ly::Service: tower::Service<Conn<TcpStream>, Response = ()> + Send + 'static,
    <Ly::Service as tower::Service<Conn<TcpStream>>>::Error:
        Into<tower_bouncer::BoxError> + 'static,
    <Ly::Service as tower::Service<Conn<TcpStream>>>::Future: Send + 'static,
{
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = ProtectedListener::new(tcp, layers).unwrap();
    let addr = listener.local_addr();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends one request on a new `stream` and reads the response's first bytes: whether it
/// was served (`false` for a connection closed or reset instead).
async fn served(stream: &mut TcpStream) -> bool {
    if stream.write_all(REQUEST).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    within(PATIENCE, stream.read_exact(&mut head)).await.is_ok() && &head == b"HTTP/1.1 200"
}

/// Waits for the server to close `stream`: its next read ends (EOF or reset). Panics if
/// it stays open for longer than [`PATIENCE`].
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match within(PATIENCE, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Connects from `127.0.0.<last>` until a connection is served, for at most
/// [`PATIENCE`]: a slot is given back when the server's task lets go of the connection,
/// a moment after the client sees it closed.
async fn served_soon(last: u8, server: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut stream = connect_from(last, server).await;
        if served(&mut stream).await {
            return stream;
        }
        assert!(Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn axum_serve_under_a_per_peer_cap_refuses_a_second_connection_until_the_first_closes() {
    let server = serve_axum(PeerLimitLayer::builder(1).build().unwrap(), app()).await;
    let mut first = connect_from(1, server).await;
    assert!(served(&mut first).await);

    let mut second = connect_from(1, server).await;
    assert!(!served(&mut second).await, "over the cap, yet served");
    let mut other_peer = connect_from(2, server).await;
    assert!(
        served(&mut other_peer).await,
        "another peer has a place of its own"
    );

    drop(first);
    served_soon(1, server).await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_by_the_first_byte_timeout() {
    let timeouts = TimeoutLayer::builder().first_byte(SHORT).build().unwrap();
    let server = serve_axum(timeouts, app()).await;
    let mut silent = connect_from(1, server).await;
    let mut talking = connect_from(1, server).await;
    assert!(served(&mut talking).await);
    closed_by_server(&mut silent).await;
}

#[tokio::test]
async fn a_timeout_that_fires_while_axum_holds_the_connection_closes_it() {
    let timeouts = TimeoutLayer::builder().idle(SHORT).build().unwrap();
    let server = serve_axum(timeouts, app()).await;
    let mut client = connect_from(1, server).await;
    assert!(served(&mut client).await);
    // Kept alive by axum, which waits for the next request: the idle timeout ends it.
    closed_by_server(&mut client).await;
}

#[tokio::test]
async fn a_handler_still_running_when_the_lifetime_ends_has_its_connection_cut() {
    let timeouts = TimeoutLayer::builder()
        .lifetime(SHORT)
        .lifetime_grace(SHORT)
        .build()
        .unwrap();
    let slow = Router::new().route(
        "/",
        get(|| async {
            tokio::time::sleep(4 * PATIENCE).await;
            "late\n"
        }),
    );
    let server = serve_axum(timeouts, slow).await;
    let mut client = connect_from(1, server).await;
    client.write_all(REQUEST).await.unwrap();
    closed_by_server(&mut client).await;
}

#[tokio::test(start_paused = true)]
async fn the_layers_request_timeout_does_not_cut_a_kept_alive_connection() {
    let (queue, _log, listener) = ChannelListener::new();
    let (conn, client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(conn)).unwrap();
    let timeouts = TimeoutLayer::builder()
        .request(Duration::from_secs(1))
        .build()
        .unwrap();
    let listener = ProtectedListener::new(listener, timeouts).unwrap();
    tokio::spawn(async move { axum::serve(listener, app()).await });

    let mut client = Http1Client::connect(client).await;
    assert_eq!(client.get("/").await.unwrap().body, "hello\n");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(client.get("/").await.unwrap().body, "hello\n");
}

#[tokio::test]
async fn connect_info_is_the_real_peer() {
    async fn peer(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
        peer.to_string()
    }
    async fn both(ConnectInfo(info): ConnectInfo<ConnInfo>) -> String {
        format!("{} {}", info.peer_addr, info.local_addr)
    }
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tcp.local_addr().unwrap();
    let limit = ConnectionLimitLayer::builder(8).build().unwrap();
    let listener = ProtectedListener::new(tcp, limit).unwrap().tap_io(|_| {});
    let app = Router::new().route("/", get(peer));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let client = connect_from(7, server).await;
    let client_addr = client.local_addr().unwrap();
    let answer = Http1Client::connect(client).await.get("/").await.unwrap();
    assert_eq!(answer.body, client_addr.to_string());

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tcp.local_addr().unwrap();
    let limit = ConnectionLimitLayer::builder(8).build().unwrap();
    let listener = ProtectedListener::new(tcp, limit).unwrap();
    let app = Router::new().route("/", get(both));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<ConnInfo>(),
        )
        .await
    });
    let client = connect_from(8, server).await;
    let client_addr = client.local_addr().unwrap();
    let answer = Http1Client::connect(client).await.get("/").await.unwrap();
    assert_eq!(answer.body, format!("{client_addr} {server}"));
}

#[tokio::test]
async fn a_banned_peer_is_refused_and_others_are_served() {
    let login = Login::builder().build().unwrap();
    login
        .bans()
        .ban(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
            Duration::from_secs(600),
        )
        .unwrap();
    let server = serve_axum(login.ban_layer(), app()).await;
    let mut banned = connect_from(3, server).await;
    assert!(!served(&mut banned).await, "banned, yet served");
    let mut other = connect_from(4, server).await;
    assert!(served(&mut other).await);
}

#[tokio::test]
async fn a_ban_evicts_the_connections_axum_holds_for_the_banned_peer() {
    let login = Login::builder()
        .max_timeouts(1)
        .evict_banned_connections(true)
        .eviction_grace(SHORT)
        .build()
        .unwrap();
    let layers = ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(login.session_layer())
        .layer(TimeoutLayer::builder().first_byte(SHORT).build().unwrap());
    let server = serve_axum(layers, app()).await;
    let mut served_first = connect_from(6, server).await;
    assert!(served(&mut served_first).await);

    // A silent connection from the same peer: its first-byte timeout is an offence
    // that bans the peer, whose other connection is evicted.
    let mut silent = connect_from(6, server).await;
    closed_by_server(&mut silent).await;
    closed_by_server(&mut served_first).await;
    assert!(
        login
            .bans()
            .banned_for(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)))
            .is_some()
    );
}

#[cfg(feature = "bouncer")]
#[tokio::test]
async fn a_bouncer_protects_axum_serve_in_one_call() {
    let bouncer = tower_bouncer::bouncer::Bouncer::new().unwrap();
    let listener = bouncer
        .listener(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let server = listener.local_addr();
    tokio::spawn(async move { axum::serve(listener, app()).await });
    let mut client = Http1Client::connect(connect_from(1, server).await).await;
    assert_eq!(client.get("/").await.unwrap().body, "hello\n");
    assert_eq!(bouncer.connection_limit().stats().live, 1);
    assert_eq!(client.get("/").await.unwrap().body, "hello\n", "kept alive");
}

#[tokio::test]
async fn slots_are_given_back_when_axum_lets_go_of_its_connections() {
    let limit = ConnectionLimitLayer::builder(2).build().unwrap();
    let server = serve_axum(limit.clone(), app()).await;
    for round in 0..20 {
        let stream = served_soon(1, server).await;
        drop(stream);
        let deadline = Instant::now() + PATIENCE;
        while limit.stats().live > 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: a slot was never given back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let stats = limit.stats();
    assert_eq!((stats.admitted, stats.refused), (20, 0));
}

/// The listener queues 64 streams the framework has not accepted yet; the connections
/// admitted beyond wait in their own tasks for room, and none is lost.
#[tokio::test]
async fn connections_beyond_the_listeners_queue_wait_for_room_and_are_all_handed_out() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CLIENTS: usize = 100;
    let admitted = Arc::new(AtomicUsize::new(0));
    let counting = ServiceBuilder::new().map_request({
        let admitted = admitted.clone();
        move |conn: Conn<TcpStream>| {
            admitted.fetch_add(1, Ordering::Relaxed);
            conn
        }
    });
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut listener = ProtectedListener::new(tcp, counting).unwrap();
    let addr = listener.local_addr();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    // Every connection admitted before the framework accepts one.
    let deadline = Instant::now() + PATIENCE;
    while admitted.load(Ordering::Relaxed) < CLIENTS {
        assert!(
            Instant::now() < deadline,
            "not every connection was admitted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut expected: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    let mut handed = Vec::new();
    for _ in 0..CLIENTS {
        let (mut io, peer) = within(PATIENCE, axum::serve::Listener::accept(&mut listener)).await;
        io.write_all(b"x").await.unwrap();
        handed.push(peer);
    }
    expected.sort();
    handed.sort();
    assert_eq!(handed, expected, "every connection handed out once");
    for client in &mut clients {
        let mut byte = [0u8; 1];
        within(PATIENCE, client.read_exact(&mut byte))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn accept_errors_do_not_stop_the_listener() {
    let (queue, log, listener) = ChannelListener::new();
    queue
        .send(Err(io::Error::from_raw_os_error(libc::ENOBUFS)))
        .unwrap();
    queue
        .send(Err(io::Error::from_raw_os_error(libc::ECONNABORTED)))
        .unwrap();
    queue.send(Err(io::ErrorKind::InvalidData.into())).unwrap();
    let (conn, client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(conn)).unwrap();

    let limit = ConnectionLimitLayer::builder(8).build().unwrap();
    let listener = ProtectedListener::new(listener, limit).unwrap();
    tokio::spawn(async move { axum::serve(listener, app()).await });
    let answer = within(PATIENCE, async {
        Http1Client::connect(client).await.get("/").await.unwrap()
    })
    .await;
    assert_eq!(answer.body, "hello\n");
    assert_eq!(log.accepted(), 1);
}

#[tokio::test]
async fn a_listener_that_fails_ends_the_stream_with_its_error() {
    let (queue, _log, listener) = ChannelListener::new();
    let limit = ConnectionLimitLayer::builder(8).build().unwrap();
    let mut listener = ProtectedListener::new(listener, limit).unwrap();
    // The test listener fails as a closed socket does (EBADF) once its queue is gone.
    drop(queue);
    let error = within(PATIENCE, listener.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
    assert!(within(PATIENCE, listener.next()).await.is_none());
}

#[tokio::test]
async fn dropping_the_listener_cuts_what_the_framework_holds_at_the_drain_deadline() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tcp.local_addr().unwrap();
    let limit = ConnectionLimitLayer::builder(8).build().unwrap();
    let mut listener = Server::new(tcp)
        .drain_timeout(SHORT)
        .protect(limit.clone())
        .unwrap();
    let mut client = connect_from(1, server).await;
    let mut held = within(PATIENCE, listener.next()).await.unwrap().unwrap();
    assert_eq!(held.info().peer_addr, client.local_addr().unwrap());

    drop(listener);
    let mut buf = [0u8; 8];
    let error = within(PATIENCE, held.read(&mut buf)).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    closed_by_server(&mut client).await;
    assert_eq!(limit.stats().live, 0);
}

#[tokio::test(start_paused = true)]
async fn a_plain_graceful_close_cuts_the_connection_after_five_seconds() {
    let (queue, _log, listener) = ChannelListener::new();
    let (conn, _client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(conn)).unwrap();
    let limit = ConnectionLimitLayer::builder(8).build().unwrap();
    let mut listener = ProtectedListener::new(listener, limit).unwrap();
    let mut held = within(PATIENCE, listener.next()).await.unwrap().unwrap();

    let asked = Instant::now();
    held.graceful_close().request();
    let mut buf = [0u8; 8];
    let error = within(PATIENCE, held.read(&mut buf)).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    assert!(
        asked.elapsed() >= Duration::from_secs(5),
        "cut before its grace"
    );
}

/// An eviction is no plain close: the connection it chose is idle, and is cut at once
/// rather than after the close grace, which would keep the eviction under way as long.
#[cfg(feature = "overload")]
#[tokio::test(start_paused = true)]
async fn a_connection_evicted_to_make_room_is_cut_at_once() {
    use tower_bouncer::overload::Overload;

    // Every connection offered to evictions from its start; quiet after 10 s.
    let overload = Overload::builder()
        .descriptors(false)
        .thresholds(0.0, 1.0)
        .evict_quiet_after(Duration::from_secs(10))
        .build()
        .unwrap();
    let limit = ConnectionLimitLayer::builder(1)
        .overload(&overload)
        .build()
        .unwrap();
    let layers = ServiceBuilder::new().layer(limit.clone()).layer(
        TimeoutLayer::builder()
            .idle(Duration::from_secs(600))
            .overload(&overload)
            .build()
            .unwrap(),
    );
    let (queue, _log, listener) = ChannelListener::new();
    let mut listener = ProtectedListener::new(listener, layers).unwrap();
    let (conn, _idle_client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(conn)).unwrap();
    let mut idle = within(PATIENCE, listener.next()).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;

    // The newcomer, at the full cap, evicts the quiet one.
    let evicted = Instant::now();
    let (conn, _newcomer_client) = duplex_conn("192.0.2.2:1000");
    queue.send(Ok(conn)).unwrap();
    let _newcomer = within(PATIENCE, listener.next()).await.unwrap().unwrap();
    let mut buf = [0u8; 8];
    let error = within(PATIENCE, idle.read(&mut buf)).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    assert!(
        evicted.elapsed() < Duration::from_secs(1),
        "cut after {:?}",
        evicted.elapsed()
    );
    assert_eq!(overload.stats().evicted_idle, 1);
    assert_eq!(limit.stats().live, 1);
}

#[tokio::test]
async fn the_stream_handed_out_carries_the_connections_login_session() {
    let (queue, _log, listener) = ChannelListener::new();
    let (conn, _client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(conn)).unwrap();
    let login = Login::builder().max_auth_tries(1).build().unwrap();
    let mut listener = ProtectedListener::new(listener, login.session_layer()).unwrap();
    let held = within(PATIENCE, listener.next()).await.unwrap().unwrap();

    let session = held.login_session().expect("from the session layer");
    assert!(!held.graceful_close().is_requested());
    assert_eq!(session.failed(), AfterFailure::Closing);
    assert!(
        held.graceful_close().is_requested(),
        "the session's close signal is the stream's"
    );
}

/// The module's table: this path has no login timeout, as nothing reports a login from
/// the framework's requests. A login session's timeout under the listener (a
/// `SessionLayer` with one, or a `Bouncer` with `logins.timeout`) must then not cut
/// every connection the framework serves, nor count each as an offence toward a ban.
#[tokio::test(start_paused = true)]
async fn a_login_timeout_does_not_cut_the_connections_axum_serves() {
    let (queue, _log, listener) = ChannelListener::new();
    let (conn, client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(conn)).unwrap();
    let login = Login::builder()
        .login_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let listener = ProtectedListener::new(listener, login.session_layer()).unwrap();
    tokio::spawn(async move { axum::serve(listener, app()).await });

    let mut client = Http1Client::connect(client).await;
    // A busy client: a request every 10 s for two minutes.
    for round in 0..12 {
        let answer = within(PATIENCE, client.get("/"))
            .await
            .map(|answer| answer.body);
        assert!(
            answer.as_ref().is_ok_and(|body| body == "hello\n"),
            "round {round} ({} s in): {answer:?}; {}",
            round * 10,
            login.stats()
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    assert_eq!(login.stats().login_timeouts, 0, "{}", login.stats());
}

/// A layer of the common tower shape that decides in its future: it calls its inner
/// service at once, then waits for the verdict (an asynchronous check: an outside
/// authorisation, a lookup) before it polls the inner future, and drops that future
/// unpolled if the verdict is no.
#[derive(Clone)]
struct DecidesLater<S> {
    inner: S,
    verdict: tokio::sync::watch::Receiver<Option<bool>>,
}

impl<S, IO> tower::Service<Conn<IO>> for DecidesLater<S>
where
    S: tower::Service<Conn<IO>, Response = (), Error = tower_bouncer::BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = tower_bouncer::BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tower_bouncer::BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        let served = self.inner.call(conn);
        let mut verdict = self.verdict.clone();
        Box::pin(async move {
            let allowed = *verdict.wait_for(Option::is_some).await?;
            if allowed != Some(true) {
                return Err("refused by the outside check".into());
            }
            served.await
        })
    }
}

/// What feeds a [`ChannelListener`].
type Queue = tokio::sync::mpsc::UnboundedSender<io::Result<Conn<tokio::io::DuplexStream>>>;

/// A listener under [`DecidesLater`], fed by the test, and what decides.
fn decided_later() -> (
    tokio::sync::watch::Sender<Option<bool>>,
    Queue,
    ProtectedListener,
) {
    let (decide, verdict) = tokio::sync::watch::channel(None);
    let (queue, _log, listener) = ChannelListener::new();
    let layer = tower::layer::layer_fn(move |inner| DecidesLater {
        inner,
        verdict: verdict.clone(),
    });
    let listener = ProtectedListener::new(listener, layer).unwrap();
    (decide, queue, listener)
}

#[tokio::test(start_paused = true)]
async fn the_framework_has_the_stream_only_once_a_layer_deciding_in_its_future_lets_it_through() {
    let (decide, queue, mut listener) = decided_later();
    let (conn, _client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(conn)).unwrap();
    assert!(
        tokio::time::timeout(SHORT, listener.next()).await.is_err(),
        "handed to the framework before the layer decided"
    );
    decide.send(Some(true)).unwrap();
    let held = within(PATIENCE, listener.next()).await.unwrap().unwrap();
    assert_eq!(held.info().peer_addr, addr("192.0.2.1:1000"));
}

#[tokio::test(start_paused = true)]
async fn a_connection_a_layer_refuses_in_its_future_never_reaches_the_framework() {
    let (decide, queue, mut listener) = decided_later();
    let (conn, mut client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(conn)).unwrap();
    decide.send(Some(false)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        within(PATIENCE, client.read(&mut byte)).await.unwrap(),
        0,
        "the refused connection is closed"
    );
    let handed = tokio::time::timeout(SHORT, listener.next()).await;
    assert!(handed.is_err(), "the framework got it: {handed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_whose_layer_panics_after_calling_in_never_reaches_the_framework() {
    #[derive(Clone)]
    struct PanicsAfterCallingIn<S>(S);
    impl<S, IO> tower::Service<Conn<IO>> for PanicsAfterCallingIn<S>
    where
        S: tower::Service<Conn<IO>, Response = ()>,
    {
        type Response = ();
        type Error = S::Error;
        type Future = S::Future;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, conn: Conn<IO>) -> S::Future {
            let _served = self.0.call(conn);
            panic!("a bug in the layer, after it called its inner service");
        }
    }
    let (queue, _log, listener) = ChannelListener::new();
    let layer = tower::layer::layer_fn(PanicsAfterCallingIn);
    let mut listener = ProtectedListener::new(listener, layer).unwrap();
    let (conn, mut client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(conn)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(within(PATIENCE, client.read(&mut byte)).await.unwrap(), 0);
    let handed = tokio::time::timeout(SHORT, listener.next()).await;
    assert!(handed.is_err(), "the framework got it: {handed:?}");
}

mod tonic_server {
    use tonic::transport::{Endpoint, Server};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    use super::*;

    /// Serves tonic's health service on a protected loopback listener; returns its
    /// address and the peer address of every request served.
    async fn serve_health<Ly>(layers: Ly) -> (SocketAddr, Arc<Mutex<Vec<Option<SocketAddr>>>>)
    where
        Ly: tower::Layer<Handoff>,
        Ly::Service: tower::Service<Conn<TcpStream>, Response = ()> + Send + 'static,
        <Ly::Service as tower::Service<Conn<TcpStream>>>::Error:
            Into<tower_bouncer::BoxError> + 'static,
        <Ly::Service as tower::Service<Conn<TcpStream>>>::Future: Send + 'static,
    {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = ProtectedListener::new(tcp, layers).unwrap();
        let addr = listener.local_addr();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let record = move |request: tonic::Request<()>| {
            seen.lock().unwrap().push(request.remote_addr());
            Ok(request)
        };
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            Server::builder()
                .layer(tonic::service::InterceptorLayer::new(record))
                .add_service(health)
                .serve_with_incoming(listener),
        );
        (addr, peers)
    }

    fn endpoint(last: u8, server: SocketAddr) -> Endpoint {
        Endpoint::from_shared(format!("http://{server}"))
            .unwrap()
            .local_address(Some(Ipv4Addr::new(127, 0, 0, last).into()))
    }

    async fn check(endpoint: &Endpoint) -> Result<i32, tonic::Status> {
        let channel = within(PATIENCE, endpoint.connect())
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        let response = within(
            PATIENCE,
            HealthClient::new(channel).check(HealthCheckRequest::default()),
        )
        .await?;
        Ok(response.into_inner().status)
    }

    #[tokio::test]
    async fn the_health_service_sees_the_real_peer() {
        let limit = ConnectionLimitLayer::builder(8).build().unwrap();
        let (server, peers) = serve_health(limit).await;
        let channel = within(PATIENCE, endpoint(5, server).connect())
            .await
            .unwrap();
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap();
        assert_eq!(status.into_inner().status, 1, "SERVING");
        let peers = peers.lock().unwrap().clone();
        assert_eq!(peers.len(), 1);
        let peer = peers[0].expect("remote_addr");
        assert_eq!(peer.ip(), Ipv4Addr::new(127, 0, 0, 5));
    }

    #[tokio::test]
    async fn a_cap_refuses_a_second_client_until_the_first_leaves() {
        let limit = ConnectionLimitLayer::builder(1).build().unwrap();
        let (server, _) = serve_health(limit.clone()).await;
        let first = within(PATIENCE, endpoint(1, server).connect())
            .await
            .unwrap();
        let mut first = HealthClient::new(first);
        first
            .check(HealthCheckRequest::default())
            .await
            .expect("the first client is served");

        let second = endpoint(2, server);
        assert!(check(&second).await.is_err(), "over the cap, yet served");
        // The client may have tried more than once.
        assert!(limit.stats().refused >= 1);

        drop(first);
        let deadline = Instant::now() + PATIENCE;
        while check(&second).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "never served after the first left"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The pre-authentication budget counts the connections that have not logged in yet. A
/// connection handed to a framework never reports a login (the reason it has no login
/// timeout either), so it must leave the budget when it is handed over: otherwise every
/// connection `axum::serve` holds stays "unauthenticated" for its whole life, the
/// budget becomes a cap on all of them, and a browser's second parallel connection is
/// refused over `PerSourceMaxStartups`, an `OverLimit` offence toward a ban.
#[tokio::test(start_paused = true)]
async fn connections_axum_serves_leave_the_pre_authentication_budget() {
    let (queue, _log, listener) = ChannelListener::new();
    let login = Login::builder().per_source_max_startups(1).build().unwrap();
    let layers = ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(login.session_layer());
    let listener = ProtectedListener::new(listener, layers).unwrap();
    tokio::spawn(async move { axum::serve(listener, app()).await });

    // A browser's two parallel keep-alive connections, from one peer.
    let (first, first_client) = duplex_conn("192.0.2.1:1000");
    queue.send(Ok(first)).unwrap();
    let mut first_client = Http1Client::connect(first_client).await;
    let answer = within(PATIENCE, first_client.get("/")).await;
    assert!(answer.is_ok_and(|answer| answer.body == "hello\n"));

    let (second, second_client) = duplex_conn("192.0.2.1:1001");
    queue.send(Ok(second)).unwrap();
    let mut second_client = Http1Client::connect(second_client).await;
    let answer = within(PATIENCE, second_client.get("/"))
        .await
        .map(|answer| answer.body);
    let stats = login.stats();
    assert!(
        answer.as_ref().is_ok_and(|body| body == "hello\n"),
        "the second connection: {answer:?}; {stats}"
    );
    assert_eq!(
        (stats.unauthenticated, stats.over_limit_refusals),
        (0, 0),
        "{stats}"
    );
}
