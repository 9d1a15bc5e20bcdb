//! The one-call preset: `Bouncer` serving an axum router and a raw protocol on
//! loopback, composed as a layer, and refusing settings that cannot work by their key.

mod support;

use std::time::Duration;

use axum::{Router, http::StatusCode, routing::get};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tower::ServiceBuilder;
use tower_bouncer::{
    BoxError, Conn,
    bouncer::{Bouncer, BouncerConfig, Refusals},
    serve::ShutdownReport,
};

use support::*;

/// A server on 127.0.0.1: its address, what stops it, and its task.
type Running = (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<ShutdownReport>>,
);

/// What stops a server: its sender used or dropped.
type Stop = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server on a new loopback listener, run by `serve` until the sender is used or
/// dropped.
async fn start<F>(serve: impl FnOnce(TcpListener, Stop) -> F) -> Running
where
    F: Future<Output = std::io::Result<ShutdownReport>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        Box::pin(async {
            stopped.await.ok();
        }),
    ));
    (addr, stop, task)
}

/// A bouncer serving `app`.
async fn serve_http(bouncer: &Bouncer, app: Router) -> Running {
    let bouncer = bouncer.clone();
    start(|listener, stop| async move { bouncer.serve_http_until(listener, app, stop).await }).await
}

/// A bouncer serving [`Echo`], a raw protocol.
async fn serve_echo(bouncer: &Bouncer) -> Running {
    let bouncer = bouncer.clone();
    start(
        |listener, stop| async move { bouncer.serve_until(listener, Echo::default(), stop).await },
    )
    .await
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/login", get(|| async { StatusCode::UNAUTHORIZED }))
}

fn config() -> BouncerConfig {
    let mut config = BouncerConfig::default();
    // Tests share the machine's kernel filter budget: user space is enough here.
    config.bans.kernel = false;
    config
}

/// Reads what the server sends until it closes.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut text = String::new();
    within(PATIENCE, stream.read_to_string(&mut text))
        .await
        .ok();
    text
}

#[tokio::test]
async fn serves_an_axum_router_with_the_per_peer_cap_from_its_config() {
    let mut config = config();
    config.connections.per_peer = 1;
    let bouncer = Bouncer::from_config(config).unwrap();
    let (addr, stop, task) = serve_http(&bouncer, app()).await;

    let mut first = Http1Client::connect(connect_from(2, addr).await).await;
    assert_eq!(first.get("/").await.unwrap().body, "hello\n");
    let mut second = connect_from(2, addr).await;
    second
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let refused = read_all(&mut second).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
    // Another peer is not held to the first one's share.
    let mut other = Http1Client::connect(connect_from(3, addr).await).await;
    assert_eq!(other.get("/").await.unwrap().status, 200);
    assert_eq!(bouncer.peer_limit().stats().refused_peer_limit, 1);

    drop(first);
    drop(other);
    stop.send(()).unwrap();
    within(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn failed_logins_over_http_ban_the_peer() {
    let mut config = config();
    config.bans.max_failures = 2;
    let bouncer = Bouncer::from_config(config).unwrap();
    let (addr, stop, task) = serve_http(&bouncer, app()).await;

    for _ in 0..2 {
        let mut client = Http1Client::connect(connect_from(4, addr).await).await;
        assert_eq!(
            client
                .get_as("/login", WRONG_PASSWORD)
                .await
                .unwrap()
                .status,
            401
        );
        // A failed login closes its connection once the 401 is sent.
        within(PATIENCE, &mut client.driver).await.ok();
    }
    let mut banned = connect_from(4, addr).await;
    let refused = refusal_to_a_request(&mut banned).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused:?}");
    assert!(
        bouncer
            .login()
            .bans()
            .banned_for("127.0.0.4".parse().unwrap())
            .is_some()
    );
    let mut client = Http1Client::connect(connect_from(5, addr).await).await;
    assert_eq!(client.get("/").await.unwrap().status, 200);

    drop(client);
    stop.send(()).unwrap();
    within(PATIENCE, task).await.unwrap().unwrap();
}

/// A raw protocol: one line in, the same line out, then close.
#[derive(Clone, Default)]
struct Echo {
    /// Told the name of the thread each connection's service is called on.
    called_on: Option<std::sync::mpsc::Sender<Option<String>>>,
}

impl<IO> tower::Service<Conn<IO>> for Echo
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        if let Some(called_on) = &self.called_on {
            let thread = std::thread::current().name().map(str::to_owned);
            called_on.send(thread).unwrap();
        }
        Box::pin(async move {
            let mut io = conn.into_io();
            let mut buffer = [0; 64];
            let read = io.read(&mut buffer).await?;
            io.write_all(&buffer[..read]).await?;
            Ok(())
        })
    }
}

#[tokio::test]
async fn serves_a_raw_protocol_with_its_own_refusal_lines() {
    let mut config = config();
    config.connections.per_peer = 1;
    let bouncer = Bouncer::builder(config)
        .refusals(Refusals::messages(
            "ERROR busy\n",
            "ERROR slow down\n",
            "ERROR banned\n",
        ))
        .build()
        .unwrap();
    let (addr, stop, task) = serve_echo(&bouncer).await;

    let mut first = connect_from(6, addr).await;
    let mut second = connect_from(6, addr).await;
    assert_eq!(read_all(&mut second).await, "ERROR busy\n");
    first.write_all(b"ping\n").await.unwrap();
    assert_eq!(read_all(&mut first).await, "ping\n");

    stop.send(()).unwrap();
    within(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn is_a_layer_for_a_stack_of_ones_own() {
    let mut config = config();
    config.connections.max = Some(1);
    config.connections.backpressure = false;
    let bouncer = Bouncer::from_config(config).unwrap();
    let service = ServiceBuilder::new()
        .layer(bouncer.clone())
        .service(Echo::default());
    let server = LoopbackServer::start(service, Duration::from_secs(1)).await;

    let mut held = connect_from(7, server.addr).await;
    // The cap of 1 is taken: another peer is refused.
    let mut refused = connect_from(8, server.addr).await;
    let answer = refusal_to_a_request(&mut refused).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    held.write_all(b"hi\n").await.unwrap();
    assert_eq!(read_all(&mut held).await, "hi\n");
    assert_eq!(bouncer.connection_limit().stats().refused, 1);
    server.stop().await;
}

#[test]
fn a_setting_that_cannot_work_is_refused_by_its_key() {
    let refused = |change: fn(&mut BouncerConfig)| {
        let mut config = config();
        change(&mut config);
        Bouncer::from_config(config).unwrap_err()
    };
    assert_eq!(
        refused(|c| c.connections.per_peer = 0).key(),
        "connections.per_peer"
    );
    assert_eq!(refused(|c| c.rates.global = 0).key(), "rates.global");
    assert_eq!(
        refused(|c| c.timeouts.idle = Duration::ZERO).key(),
        "timeouts.idle"
    );
    assert_eq!(
        refused(|c| c.peers.ipv6_prefix = 129).key(),
        "peers.ipv6_prefix"
    );
    assert_eq!(
        refused(|c| c.fleet.prefix = Some("api".into())).key(),
        "fleet.prefix"
    );
    let error = refused(|c| {
        c.tls.cert = Some("/nonexistent/cert.pem".into());
        c.tls.key = Some("/nonexistent/key.pem".into());
    });
    if cfg!(feature = "tls") {
        assert_eq!(error.key(), "tls.cert");
        assert!(error.reason().contains("/nonexistent/cert.pem"), "{error}");
    }
}

/// The configuration is logged at each start and reload: its secrets, the admin token
/// and the password in the fleet's Redis URL, must not be.
#[test]
fn the_logged_configuration_hides_the_admin_token_and_the_redis_password() {
    let mut config = BouncerConfig::default();
    config.admin.token = Some("an-operator-token-of-some-length".into());
    config.fleet.redis = Some("redis://fleet:a-redis-password@10.0.0.9:6379/2".into());
    let logged = format!("{config:?}");
    assert!(!logged.contains("an-operator-token"), "{logged}");
    assert!(!logged.contains("a-redis-password"), "{logged}");
    assert!(
        logged.contains(r#""redis://fleet:<hidden>@10.0.0.9:6379/2""#),
        "the Redis is still named: {logged}"
    );
    config.fleet.redis = Some("redis+unix:///run/redis.sock?pass=a-redis-password".into());
    let logged = format!("{config:?}");
    assert!(!logged.contains("a-redis-password"), "{logged}");
}

/// There is no switch to turn the global rate off: the most a `u32` holds is what an
/// operator writes for none. It builds, and reloads, as the file accepts it.
#[tokio::test]
async fn a_rate_of_billions_a_second_builds_and_reloads() {
    let mut config = config();
    config.rates.global = u32::MAX;
    config.rates.per_peer = u32::MAX;
    let bouncer = Bouncer::from_config(config.clone()).unwrap();
    config.connections.max = Some(5000);
    config.rates.global = u32::MAX - 1;
    bouncer.reload(config).unwrap();
    assert_eq!(bouncer.max_connections(), 5000);
    assert_eq!(bouncer.config().rates.global, u32::MAX - 1);
}

#[test]
fn building_raises_the_descriptor_limit_unless_told_not_to() {
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    if hard < 4096 {
        return;
    }
    let lowered = hard - 1;
    rlimit::Resource::NOFILE.set(lowered, hard).unwrap();
    let mut config = config();
    config.connections.raise_descriptor_limit = false;
    let _bouncer = Bouncer::from_config(config.clone()).unwrap();
    assert_eq!(rlimit::Resource::NOFILE.get().unwrap().0, lowered);
    config.connections.raise_descriptor_limit = true;
    let bouncer = Bouncer::from_config(config).unwrap();
    assert_eq!(rlimit::Resource::NOFILE.get().unwrap().0, hard);
    assert_eq!(bouncer.max_connections(), 4096);
}

#[tokio::test]
async fn a_reload_changes_the_limits_without_dropping_live_connections() {
    let mut config = config();
    config.connections.per_peer = 2;
    let bouncer = Bouncer::builder(config.clone())
        .refusals(Refusals::messages(
            "ERROR busy\n",
            "ERROR slow down\n",
            "ERROR banned\n",
        ))
        .build()
        .unwrap();
    let (addr, stop, task) = serve_echo(&bouncer).await;

    let mut live = [connect_from(10, addr).await, connect_from(10, addr).await];
    config.connections.per_peer = 1;
    bouncer.reload(config.clone()).unwrap();
    assert_eq!(bouncer.config().connections.per_peer, 1);
    let mut over = connect_from(10, addr).await;
    assert_eq!(read_all(&mut over).await, "ERROR busy\n");
    // The two admitted under the old limit are served on.
    for stream in &mut live {
        stream.write_all(b"still here\n").await.unwrap();
        assert_eq!(read_all(stream).await, "still here\n");
    }

    // An exempt network, given on a reload, reaches every layer.
    let held = connect_from(11, addr).await;
    let mut second = connect_from(11, addr).await;
    assert_eq!(read_all(&mut second).await, "ERROR busy\n");
    config.peers.exempt = vec!["127.0.0.11/32".parse().unwrap()];
    bouncer.reload(config.clone()).unwrap();
    let mut exempt = connect_from(11, addr).await;
    exempt.write_all(b"in\n").await.unwrap();
    assert_eq!(read_all(&mut exempt).await, "in\n");
    drop(held);

    // A reload that cannot work changes nothing, and says why by its key.
    let mut bad = config.clone();
    bad.connections.per_peer = 5;
    bad.rates.global = 0;
    assert_eq!(bouncer.reload(bad).unwrap_err().key(), "rates.global");
    let mut restart = config.clone();
    restart.peers.ipv6_prefix = 48;
    let error = bouncer.reload(restart).unwrap_err();
    assert_eq!(error.key(), "peers.ipv6_prefix");
    assert_eq!(error.reason(), "cannot change without a restart");
    assert_eq!(bouncer.config().connections.per_peer, 1);
    assert_eq!(bouncer.peer_limit().stats().refused_peer_limit, 2);

    stop.send(()).unwrap();
    within(PATIENCE, task).await.unwrap().unwrap();
}

/// What is built once at start cannot be changed by a reload, and the refusal names the
/// key itself (not its section), for the operator to find in the file: the descriptor
/// limit is raised only when the bouncer is built, so changing whether it is raised
/// would otherwise be taken and do nothing.
#[tokio::test]
async fn a_reload_refuses_a_key_that_needs_a_restart_by_its_own_name() {
    let mut config = config();
    config.connections.raise_descriptor_limit = false;
    let bouncer = Bouncer::from_config(config.clone()).unwrap();
    let refused = |change: fn(&mut BouncerConfig)| {
        let mut changed = config.clone();
        change(&mut changed);
        let error = bouncer.reload(changed).expect_err("needs a restart");
        assert_eq!(error.reason(), "cannot change without a restart");
        error.key()
    };
    assert_eq!(
        refused(|config| config.connections.raise_descriptor_limit = true),
        "connections.raise_descriptor_limit"
    );
    assert_eq!(
        refused(|config| config.proxy_protocol.timeout = Duration::from_secs(1)),
        "proxy_protocol.timeout"
    );
    assert_eq!(*bouncer.config(), config);
}

#[tokio::test]
async fn behind_a_balancer_as_many_may_read_their_header_as_the_cap_admits() {
    let mut config = config();
    config.connections.max = Some(100);
    config.proxy_protocol.trusted = vec!["10.0.0.0/8".parse().unwrap()];
    let bouncer = Bouncer::from_config(config.clone()).unwrap();
    let proxy = bouncer.proxy_protocol().expect("a PROXY layer");
    assert_eq!(proxy.max_reading(), 100);
    config.connections.max = Some(40);
    bouncer.reload(config).unwrap();
    assert_eq!(proxy.max_reading(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_runs_on_a_worker_even_when_awaited_on_the_main_thread() {
    let bouncer = Bouncer::from_config(config()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (called_on, threads) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    // Awaited here, on the test's own thread, which is no worker.
    let echo = Echo {
        called_on: Some(called_on),
    };
    let serving = bouncer.serve_until(listener, echo, async {
        stopped.await.ok();
    });
    let client = async {
        let mut stream = connect_from(20, addr).await;
        stream.write_all(b"ping").await.unwrap();
        assert_eq!(read_all(&mut stream).await, "ping");
        stop.send(()).unwrap();
    };
    let (report, ()) = tokio::join!(serving, client);
    report.unwrap();
    let thread = threads.try_recv().unwrap();
    assert_ne!(thread, std::thread::current().name().map(str::to_owned));
}

#[tokio::test]
async fn dropping_the_serve_future_stops_the_accept_loop() {
    let bouncer = Bouncer::from_config(config()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = bouncer.serve_until(listener, Echo::default(), std::future::pending());
    let mut first = connect_from(21, addr).await;
    let (stopped, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(200), serving),
        async {
            first.write_all(b"one").await.unwrap();
            assert_eq!(read_all(&mut first).await, "one");
        }
    );
    assert!(stopped.is_err(), "the server runs until dropped");
    // Dropped: the loop goes with its listener, and new connections are refused.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener outlived the dropped serve future");
}

#[tokio::test]
async fn a_reload_changes_the_ban_policy_and_the_timeouts() {
    let mut config = config();
    config.bans.max_failures = 5;
    let bouncer = Bouncer::from_config(config.clone()).unwrap();
    let (addr, stop, task) = serve_http(&bouncer, app()).await;

    config.bans.max_failures = 1;
    config.timeouts.first_byte = Duration::from_millis(200);
    bouncer.reload(config).unwrap();
    let mut client = Http1Client::connect(connect_from(12, addr).await).await;
    assert_eq!(
        client
            .get_as("/login", WRONG_PASSWORD)
            .await
            .unwrap()
            .status,
        401
    );
    within(PATIENCE, &mut client.driver).await.ok();
    assert!(
        bouncer
            .login()
            .bans()
            .banned_for("127.0.0.12".parse().unwrap())
            .is_some(),
        "one failure bans under the reloaded policy"
    );
    // A silent connection is closed at the reloaded first-byte timeout, not at 10 s.
    let mut silent = connect_from(13, addr).await;
    let began = std::time::Instant::now();
    read_all(&mut silent).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(bouncer.timeouts().stats().first_byte, 1);

    stop.send(()).unwrap();
    within(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn in_dry_run_what_would_be_refused_is_served_and_counted_until_a_reload_enforces_it() {
    let mut config = config();
    config.connections.per_peer = 1;
    config.dry_run = true;
    let bouncer = Bouncer::builder(config.clone())
        .refusals(Refusals::messages(
            "ERROR busy\n",
            "ERROR slow down\n",
            "ERROR banned\n",
        ))
        .build()
        .unwrap();
    let (addr, stop, task) = serve_echo(&bouncer).await;

    let first = connect_from(14, addr).await;
    let mut over = connect_from(14, addr).await;
    over.write_all(b"served\n").await.unwrap();
    assert_eq!(read_all(&mut over).await, "served\n");
    let stats = bouncer.peer_limit().stats();
    assert_eq!((stats.dry_run_refusals, stats.refused_peer_limit), (1, 0));

    // Watched, then enforced without a restart.
    config.dry_run = false;
    bouncer.reload(config).unwrap();
    let mut refused = connect_from(14, addr).await;
    assert_eq!(read_all(&mut refused).await, "ERROR busy\n");
    assert_eq!(bouncer.peer_limit().stats().refused_peer_limit, 1);

    drop(first);
    stop.send(()).unwrap();
    within(PATIENCE, task).await.unwrap().unwrap();
}

/// What a test's own subscriber writes.
#[derive(Clone, Default)]
struct Logged(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The accept loop runs in a task of its own, on a worker: its events still reach the
/// subscriber of the thread that awaits it, in the span it is awaited in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_logs_in_the_callers_span_to_the_callers_subscriber() {
    use tracing::Instrument;
    let logged = Logged::default();
    let writer = logged.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    // Whether a callsite is enabled is cached for the whole process: a test beside
    // this one with no subscriber may have reached the loop's first.
    tracing::callsite::rebuild_interest_cache();

    let bouncer = Bouncer::from_config(config()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let report = bouncer
        .serve_until(listener, Echo::default(), async {})
        .instrument(tracing::info_span!("public_listener"))
        .await
        .unwrap();
    assert_eq!((report.drained, report.cut), (0, 0));
    let logged = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
    let line = logged.lines().find(|line| line.contains("server stopped"));
    assert!(
        line.is_some_and(|line| line.contains("public_listener")),
        "{logged}"
    );
}

/// A reload that changes nothing (a certificate renewed, a SIGHUP sent twice) must put
/// nothing new in force: not a fresh global bucket. Under a flood held at the global
/// rate, every such reload would let a whole burst more in at once.
#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_nothing_gives_no_fresh_global_burst() {
    use tower::{Service, ServiceExt};
    let mut config = config();
    config.rates.global = 3;
    let bouncer = Bouncer::builder(config.clone())
        .refusals(Refusals::Silent)
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new()
        .layer(bouncer.clone())
        .service(Echo::default());
    // Each peer connects once, and hangs up: only the global rate can refuse it.
    let mut connect_all = async |peers: std::ops::RangeInclusive<u8>| {
        for peer in peers {
            let (conn, client) = duplex_conn(&format!("192.0.2.{peer}:1"));
            drop(client);
            let ready = ServiceExt::<Conn<tokio::io::DuplexStream>>::ready(&mut service);
            let _ = ready.await.unwrap().call(conn).await;
        }
    };
    connect_all(1..=10).await;
    let refused = bouncer.rate_limit().stats().refused_global_rate;
    assert_eq!(refused, 7, "a burst of 3");
    bouncer.reload(config).unwrap();
    connect_all(11..=20).await;
    assert_eq!(
        bouncer.rate_limit().stats().refused_global_rate - refused,
        10,
        "admitted after a reload that changed nothing, the time not having moved"
    );
}

/// An honest client on a slow uplink: a photo uploaded at a steady 10 KB/s, 20 s for
/// 200 KB, every byte arriving on time. The preset holds request bodies to the request
/// timeout (10 s) with no minimum rate to extend it (`request_min_rate`, Apache's
/// `MinRate`): the upload is cut, and each cut counts a `request_timeout` offence
/// toward the peer's ban (30 of them ban it), as a slowloris would.
#[tokio::test(start_paused = true)]
async fn a_steady_upload_on_a_slow_link_is_neither_cut_nor_counted_as_an_offence() {
    use axum::routing::post;
    use tower::ServiceExt;
    use tower_bouncer::{http::HttpService, login::StatusClassifier};

    const SIZE: usize = 200_000;
    let bouncer = Bouncer::from_config(config()).unwrap();
    let app = Router::new().route(
        "/upload",
        post(|body: axum::body::Bytes| async move { format!("{}\n", body.len()) }),
    );
    let http = HttpService::builder(app)
        .report_logins(StatusClassifier::default())
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(bouncer.clone()).service(http);
    let (conn, mut client) = duplex_conn("192.0.2.1:1000");
    let connection = tokio::spawn(service.oneshot(conn));

    client
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
                 content-length: {SIZE}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let chunk = [b'x'; 1000];
    let mut sent = 0;
    // 1 000 bytes every 100 ms: 10 KB/s.
    while sent < SIZE {
        if client.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answer = Vec::new();
    let _ = within(PATIENCE, client.read_to_end(&mut answer)).await;
    drop(client);
    let ended = within(PATIENCE, connection).await.unwrap();
    let stats = bouncer.login().stats();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{sent} of {SIZE} bytes sent; answer {:?}; the connection ended {ended:?}; {stats}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(stats.request_timeouts, 0, "{stats}");
}

/// Serves one connection from 192.0.2.1 through `bouncer` to an app that reads uploads:
/// writes `head` at once, then `body` bytes in writes of `chunk` bytes `every` apart,
/// and returns the answer, how the connection ended and how long after `head` it ended.
async fn send_slowly(
    bouncer: &Bouncer,
    head: &[u8],
    body: usize,
    chunk: usize,
    every: Duration,
) -> (String, Result<(), BoxError>, Duration) {
    use axum::routing::post;
    use tower::ServiceExt;
    use tower_bouncer::http::HttpService;

    let app = Router::new().route("/", get(|| async { "hello\n" })).route(
        "/upload",
        post(|body: axum::body::Bytes| async move { format!("{}\n", body.len()) }),
    );
    let service = ServiceBuilder::new()
        .layer(bouncer.clone())
        .service(HttpService::new(app));
    let (conn, mut client) = duplex_conn("192.0.2.1:1000");
    let began = tokio::time::Instant::now();
    let connection = tokio::spawn(async move {
        let ended = service.oneshot(conn).await;
        (ended, began.elapsed())
    });
    client.write_all(head).await.unwrap();
    let mut sent = 0;
    while sent < body {
        tokio::time::sleep(every).await;
        if client.write_all(&vec![b'x'; chunk]).await.is_err() {
            break;
        }
        sent += chunk;
    }
    let mut answer = Vec::new();
    within(PATIENCE, client.read_to_end(&mut answer))
        .await
        .unwrap();
    let (ended, after) = within(PATIENCE, connection).await.unwrap();
    (String::from_utf8_lossy(&answer).into_owned(), ended, after)
}

/// The preset's minimum rate (500 bytes a second) extends a request that keeps moving,
/// not one trickled slower: a slowloris head at 10 bytes a second, and a body at 250
/// bytes a second, are each cut close to the 10 s request timeout (each second earns
/// a fiftieth or a half of one), far from the 5-minute maximum, and each counts a
/// `request_timeout` offence.
#[tokio::test(start_paused = true)]
async fn a_request_trickled_under_the_minimum_rate_is_still_cut_and_counted() {
    use tower_bouncer::timeout::TimeoutError;

    let bouncer = Bouncer::from_config(config()).unwrap();
    let (answer, ended, after) = send_slowly(
        &bouncer,
        b"GET / HTTP/1.1\r\n",
        1000,
        1,
        Duration::from_millis(100),
    )
    .await;
    let error = ended.unwrap_err();
    assert!(
        matches!(TimeoutError::of(&*error), Some(TimeoutError::Request(_))),
        "the slowloris head ended {error:?} after {after:?}, answered {answer:?}"
    );
    assert!(after < Duration::from_secs(11), "held {after:?}");
    assert_eq!(bouncer.login().stats().request_timeouts, 1);

    let head = b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n";
    let (answer, ended, after) =
        send_slowly(&bouncer, head, 100_000, 25, Duration::from_millis(100)).await;
    let error = ended.unwrap_err();
    assert!(
        matches!(TimeoutError::of(&*error), Some(TimeoutError::Request(_))),
        "the trickled body ended {error:?} after {after:?}, answered {answer:?}"
    );
    assert!(after < Duration::from_secs(21), "held {after:?}");
    assert_eq!(bouncer.login().stats().request_timeouts, 2);
}

/// `timeouts.request_min_rate` and `timeouts.request_max` reload like the other
/// timeouts, for new connections: the minimum rate turned off holds a steady upload
/// to the request timeout, and a lower maximum cuts it there.
#[tokio::test(start_paused = true)]
async fn a_reload_puts_the_minimum_rate_and_its_maximum_in_force() {
    use tower_bouncer::timeout::TimeoutError;

    let head = b"POST /upload HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
                 content-length: 200000\r\n\r\n";
    // 200 KB at 10 KB/s: 20 s.
    let upload = async |bouncer: &Bouncer| {
        send_slowly(bouncer, head, 200_000, 1000, Duration::from_millis(100)).await
    };
    let bouncer = Bouncer::from_config(config()).unwrap();
    let (answer, ended, _) = upload(&bouncer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?} {ended:?}");

    let mut reloaded = config();
    reloaded.timeouts.request_min_rate = 0;
    bouncer.reload(reloaded.clone()).unwrap();
    let (_, ended, after) = upload(&bouncer).await;
    assert_eq!(
        TimeoutError::of(&*ended.unwrap_err()),
        Some(TimeoutError::Request(Duration::from_secs(10)))
    );
    assert_eq!(after, Duration::from_secs(10));

    reloaded.timeouts.request_min_rate = 500;
    reloaded.timeouts.request_max = Duration::from_secs(15);
    bouncer.reload(reloaded).unwrap();
    let (_, ended, after) = upload(&bouncer).await;
    assert_eq!(
        TimeoutError::of(&*ended.unwrap_err()),
        Some(TimeoutError::Request(Duration::from_secs(15)))
    );
    assert_eq!(after, Duration::from_secs(15));
}

/// The minimum rate extends a request whose head is in and whose body keeps coming, not
/// a head that keeps coming and never ends: that is a slowloris however fast it
/// trickles (here 1 000 bytes a second, twice the minimum rate), cut at the request
/// timeout and counted, not held to the 5-minute maximum.
#[tokio::test(start_paused = true)]
async fn a_request_head_that_keeps_coming_earns_no_time_at_the_minimum_rate() {
    use tower_bouncer::timeout::TimeoutError;

    let bouncer = Bouncer::from_config(config()).unwrap();
    let (answer, ended, after) = send_slowly(
        &bouncer,
        b"GET / HTTP/1.1\r\nx-padding: ",
        100_000,
        100,
        Duration::from_millis(100),
    )
    .await;
    let error = ended.unwrap_err();
    assert_eq!(
        TimeoutError::of(&*error),
        Some(TimeoutError::Request(Duration::from_secs(10))),
        "the head ended {error:?} after {after:?}, answered {answer:?}"
    );
    assert!(after < Duration::from_secs(11), "held {after:?}");
    assert_eq!(bouncer.login().stats().request_timeouts, 1);
}

/// The connection's task of [`serve_http2`]: how it ended, and when.
type Served = tokio::task::JoinHandle<(Result<(), BoxError>, tokio::time::Instant)>;

/// Serves one connection from 192.0.2.1 through `bouncer` to an app that reads uploads
/// whole: the client's end of the stream, and the connection's task.
fn serve_uploads(bouncer: &Bouncer) -> (tokio::io::DuplexStream, Served) {
    use axum::routing::post;
    use tower::ServiceExt;
    use tower_bouncer::http::HttpService;

    let app = Router::new().route(
        "/upload",
        post(|body: axum::body::Bytes| async move { format!("{}\n", body.len()) }),
    );
    let service = ServiceBuilder::new()
        .layer(bouncer.clone())
        .service(HttpService::new(app));
    let (conn, client) = duplex_conn("192.0.2.1:1000");
    let connection = tokio::spawn(async move {
        let ended = service.oneshot(conn).await;
        (ended, tokio::time::Instant::now())
    });
    (client, connection)
}

/// [`serve_uploads`] over HTTP/2: the client (the `h2` crate) that sends its requests
/// and its PINGs, and the connection's task.
async fn serve_http2(
    bouncer: &Bouncer,
) -> (h2::client::SendRequest<bytes::Bytes>, h2::PingPong, Served) {
    let (client, connection) = serve_uploads(bouncer);
    let (sender, mut client) = within(PATIENCE, h2::client::handshake(client))
        .await
        .unwrap();
    let pings = client.ping_pong().unwrap();
    tokio::spawn(async move {
        client.await.ok();
    });
    (sender, pings, connection)
}

/// [`serve_uploads`] for a client that writes its HTTP/2 frames by hand, starting with
/// the preface and empty SETTINGS: what the server writes is read and dropped (it never
/// waits on the client). The client's writing half, the task that drops what the server
/// writes, and the connection's task.
async fn serve_raw_http2(
    bouncer: &Bouncer,
) -> (
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
    tokio::task::JoinHandle<()>,
    Served,
) {
    let (client, connection) = serve_uploads(bouncer);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let draining = tokio::spawn(async move {
        let mut sink = [0; 4096];
        while matches!(from_server.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    to_server
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    (to_server, draining, connection)
}

/// `POST /upload` on `stream` (HPACK: POST, http, `/upload`, authority `t`), one
/// HEADERS frame flagged END_HEADERS alone: its body is to come.
fn http2_upload_headers(stream: u32) -> Vec<u8> {
    let mut frame = b"\0\0\x0e\x01\x04".to_vec();
    frame.extend(stream.to_be_bytes());
    frame.extend_from_slice(b"\x83\x86\x44\x07/upload\x41\x01t");
    frame
}

/// A `POST /upload` whose body is still to be sent: its response, and its body.
fn start_upload(
    sender: &mut h2::client::SendRequest<bytes::Bytes>,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let upload = http::Request::post("http://localhost/upload")
        .body(())
        .unwrap();
    sender.send_request(upload, false).unwrap()
}

/// Sends `body` `size` bytes in chunks of `chunk`, one every 100 ms, the last one
/// ending it; stops early if the stream is gone.
fn send_steadily(
    mut body: h2::SendStream<bytes::Bytes>,
    size: usize,
    chunk: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sent = 0;
        while sent < size {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sent += chunk;
            let data = bytes::Bytes::from(vec![b'x'; chunk]);
            if body.send_data(data, sent >= size).is_err() {
                return;
            }
        }
    })
}

/// On HTTP/2 a request earns time at the minimum rate by its own DATA alone, as an
/// HTTP/1 request does by its own bytes. A body trickled at 10 bytes a second is cut
/// close to the 10 s request timeout, and counted, however much else its client sends
/// on the connection: PINGs (850 bytes a second), or a second upload at twice the
/// minimum rate. Counting the connection's bytes held it to the 5-minute maximum.
#[tokio::test(start_paused = true)]
async fn an_http2_body_trickled_under_the_minimum_rate_is_cut_and_counted_whatever_pads_it() {
    use tower_bouncer::timeout::TimeoutError;

    let bouncer = Bouncer::from_config(config()).unwrap();
    for (offences, padding) in [(1, "PINGs"), (2, "a second upload")] {
        let (mut sender, mut pings, connection) = serve_http2(&bouncer).await;
        let began = tokio::time::Instant::now();
        let (_trickled, body) = start_upload(&mut sender);
        // 1 byte every 100 ms, for at most 5 minutes.
        let trickle = send_steadily(body, 3000, 1);
        let pad = if offences == 1 {
            tokio::spawn(async move {
                // A PING every 20 ms, each answered before the next, for at most 5
                // minutes.
                for _ in 0..15_000 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if pings.ping(h2::Ping::opaque()).await.is_err() {
                        break;
                    }
                }
            })
        } else {
            // 100 bytes every 100 ms, for at most 5 minutes.
            let (_padding, body) = start_upload(&mut sender);
            send_steadily(body, 300_000, 100)
        };
        let (ended, at) = within(Duration::from_secs(600), connection).await.unwrap();
        trickle.abort();
        pad.abort();
        let after = at - began;
        let error = ended.unwrap_err();
        assert!(
            matches!(TimeoutError::of(&*error), Some(TimeoutError::Request(_))),
            "padded with {padding}: ended {error:?} after {after:?}"
        );
        assert!(
            after < Duration::from_secs(11),
            "padded with {padding}: held {after:?}"
        );
        assert_eq!(bouncer.login().stats().request_timeouts, offences);
    }
}

/// Two photos uploaded side by side on one HTTP/2 connection, each at a steady
/// 10 KB/s (20 s for 200 KB), the second begun 5 s after the first: each is extended
/// by its own data, the second too once it is the oldest still arriving, and neither
/// is cut or counted.
#[tokio::test(start_paused = true)]
async fn steady_http2_uploads_side_by_side_are_each_extended_by_their_own_data() {
    const SIZE: usize = 200_000;
    let bouncer = Bouncer::from_config(config()).unwrap();
    let (mut sender, _pings, connection) = serve_http2(&bouncer).await;
    let (first, body) = start_upload(&mut sender);
    let sending_first = send_steadily(body, SIZE, 1000);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (second, body) = start_upload(&mut sender);
    let sending_second = send_steadily(body, SIZE, 1000);
    for (upload, response) in [("first", first), ("second", second)] {
        let response = match within(Duration::from_secs(60), response).await {
            Ok(response) => response,
            Err(error) => {
                let (ended, _) = within(PATIENCE, connection).await.unwrap();
                panic!("the {upload} upload: {error}; the connection ended {ended:?}");
            }
        };
        assert_eq!(response.status(), 200, "the {upload} upload");
        let mut body = response.into_body();
        let answer = within(PATIENCE, body.data()).await.unwrap().unwrap();
        assert_eq!(answer, format!("{SIZE}\n"), "the {upload} upload");
    }
    sending_first.abort();
    sending_second.abort();
    assert!(!connection.is_finished());
    assert_eq!(bouncer.login().stats().request_timeouts, 0);
}

/// Padding is no body. An HTTP/2 DATA frame's padding (RFC 9113 §6.1), which the
/// server strips and its handler never sees, earns a stream no more time at the minimum
/// rate than a PING does. A `POST` whose body never comes, its stream sent a DATA frame
/// of no data and 255 bytes of padding every half second (512 bytes a second), is cut
/// close to the 10 s request timeout and counted, as one padded with PINGs is.
#[tokio::test(start_paused = true)]
async fn an_http2_body_of_padding_alone_earns_no_time_at_the_minimum_rate() {
    use tower_bouncer::timeout::TimeoutError;

    let bouncer = Bouncer::from_config(config()).unwrap();
    let (mut to_server, draining, connection) = serve_raw_http2(&bouncer).await;
    let began = tokio::time::Instant::now();
    to_server.write_all(&http2_upload_headers(1)).await.unwrap();
    // DATA on stream 1 flagged PADDED: a pad length of 255, no data, the padding.
    let mut padded = b"\0\x01\0\0\x08\0\0\0\x01\xff".to_vec();
    padded.extend([0; 255]);
    let padding = tokio::spawn(async move {
        // One every 500 ms, for at most 50 s: 25.6 KB, within the stream's first window.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if to_server.write_all(&padded).await.is_err() {
                break;
            }
        }
        to_server
    });
    let (ended, at) = within(Duration::from_secs(600), connection).await.unwrap();
    padding.abort();
    draining.abort();
    let after = at - began;
    let error = ended.unwrap_err();
    assert!(
        matches!(TimeoutError::of(&*error), Some(TimeoutError::Request(_))),
        "ended {error:?} after {after:?}"
    );
    assert!(after < Duration::from_secs(11), "held {after:?}");
    assert_eq!(bouncer.login().stats().request_timeouts, 1);
}

/// A client that abandons each upload before its request timeout is not served for
/// good. Over HTTP/2 it opens a `POST` whose body never comes, resets that stream (a
/// whole RST_STREAM, CANCEL) 9 s later, just short of the 10 s request timeout, and
/// opens the next: no request ever arrives whole, and the connection, always busy with
/// an exchange waiting on its body, is never idle either (nor evictable as idle under
/// overload). The next upload has what the one it replaces had left of the request
/// timeout: the connection is cut 10 s in, and counted, not held to its one-hour
/// lifetime (over HTTP/1 a client cannot abandon a request and stay).
#[tokio::test(start_paused = true)]
async fn an_http2_client_that_resets_each_upload_before_its_timeout_is_not_held_for_good() {
    use tower_bouncer::timeout::TimeoutError;

    let bouncer = Bouncer::from_config(config()).unwrap();
    let (mut to_server, draining, connection) = serve_raw_http2(&bouncer).await;
    let began = tokio::time::Instant::now();
    let rotating = tokio::spawn(async move {
        // 40 uploads, 9 s each: 6 minutes at most.
        for n in 0..40u32 {
            let stream = 2 * n + 1;
            if to_server
                .write_all(&http2_upload_headers(stream))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(9)).await;
            let mut reset = b"\0\0\x04\x03\0".to_vec();
            reset.extend(stream.to_be_bytes());
            reset.extend([0, 0, 0, 8]);
            if to_server.write_all(&reset).await.is_err() {
                break;
            }
        }
        to_server
    });
    let (ended, at) = within(Duration::from_secs(600), connection).await.unwrap();
    rotating.abort();
    draining.abort();
    let after = at - began;
    let counted = bouncer.login().stats().request_timeouts;
    let error = ended.unwrap_err();
    assert!(
        matches!(TimeoutError::of(&*error), Some(TimeoutError::Request(_)))
            && after < Duration::from_secs(11),
        "held {after:?}, ended {error:?}, {counted} request timeouts counted"
    );
    assert_eq!(counted, 1);
}

/// An honest client that cancels an upload and sends another on the same HTTP/2
/// connection is served, none cut or counted. A retry sent at once has what the
/// cancelled upload had left of the 10 s request timeout, and earns more at the minimum
/// rate as its body comes: here after an upload that sent nothing for 6 s, its body
/// sent at 10 KB/s; and after one that kept pace (10 KB/s for 15 s, owing nothing), its
/// body 9 s in coming. An upload opened 11 s after one that sent nothing for 9 s is a
/// new one, not a retry (the request timeout has passed): its body too may take 9 s.
#[tokio::test(start_paused = true)]
async fn an_http2_upload_cancelled_and_sent_again_is_served() {
    let bouncer = Bouncer::from_config(config()).unwrap();
    let (mut sender, _pings, connection) = serve_http2(&bouncer).await;
    let served = async |upload: &str, response: h2::client::ResponseFuture, size: usize| {
        let response = within(Duration::from_secs(60), response)
            .await
            .unwrap_or_else(|error| panic!("the {upload}: {error}"));
        assert_eq!(response.status(), 200, "the {upload}");
        let mut body = response.into_body();
        let answer = within(PATIENCE, body.data()).await.unwrap().unwrap();
        assert_eq!(answer, format!("{size}\n"), "the {upload}");
    };
    let cancel = |mut body: h2::SendStream<bytes::Bytes>| body.send_reset(h2::Reason::CANCEL);
    let send_late = |mut body: h2::SendStream<bytes::Bytes>| {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            body.send_data(bytes::Bytes::from_static(&[b'x'; 1000]), true)
                .unwrap();
        })
    };

    let (_, stalled) = start_upload(&mut sender);
    tokio::time::sleep(Duration::from_secs(6)).await;
    cancel(stalled);
    let (retry, body) = start_upload(&mut sender);
    let sending = send_steadily(body, 200_000, 1000);
    served("retry after a stalled upload", retry, 200_000).await;
    sending.await.unwrap();

    let (_, steady) = start_upload(&mut sender);
    let sending = send_steadily(steady, 300_000, 1000);
    tokio::time::sleep(Duration::from_millis(15_050)).await;
    // Its body dropped unfinished, with its response: h2 resets it (CANCEL).
    sending.abort();
    let (retry, body) = start_upload(&mut sender);
    let sending = send_late(body);
    served("retry after a steady upload", retry, 1000).await;
    sending.await.unwrap();

    let (_, stalled) = start_upload(&mut sender);
    tokio::time::sleep(Duration::from_secs(9)).await;
    cancel(stalled);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (upload, body) = start_upload(&mut sender);
    let sending = send_late(body);
    served("new upload after a stalled one", upload, 1000).await;
    sending.await.unwrap();

    assert!(!connection.is_finished());
    assert_eq!(bouncer.login().stats().request_timeouts, 0);
}
