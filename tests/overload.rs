//! The overload manager, on paused time and in-memory streams: the pressure follows the
//! live connections through the scaled trigger, timeouts shrink under it, and a new
//! connection at a full cap evicts an idle one (the peer with the most first), never
//! one in the middle of a request, and no more at once than one for every sixteen of
//! the cap.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::RawQuery, routing::get};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    task::JoinHandle,
    time::Instant,
};
use tokio_test::{assert_ready_ok, task};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, Conn, GracefulClose,
    admission::Reason,
    http::HttpService,
    limit::ConnectionLimitLayer,
    login::{EvictReason, Evicted, Login},
    overload::Overload,
    proxy_protocol::{ProxyProtocolError, ProxyProtocolLayer},
    timeout::{TimedIo, TimeoutError, TimeoutLayer},
};
use tower_test::mock;

use support::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An idle timeout long enough that evictions, not it, close idle connections, its
/// connections offered to `overload`'s evictions.
fn idle_timeout(overload: &Overload) -> TimeoutLayer {
    TimeoutLayer::builder()
        .idle(secs(600))
        .overload(overload)
        .build()
        .unwrap()
}

/// The pressure from the connection cap alone: the test process's descriptors do not
/// count.
fn overload() -> tower_bouncer::overload::OverloadBuilder {
    Overload::builder().descriptors(false)
}

fn close_to(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-9
}

#[tokio::test(start_paused = true)]
async fn pressure_rises_and_falls_with_live_connections_through_the_thresholds() {
    let overload = overload().thresholds(0.25, 0.75).build().unwrap();
    let limit = ConnectionLimitLayer::builder(4)
        .overload(&overload)
        .build()
        .unwrap();
    let (inner, mut handle) = mock::pair::<Conn<DuplexStream>, ()>();
    let mut service = mock::Spawn::new(limit.layer(inner));

    let mut connections = Vec::new();
    let mut responders = Vec::new();
    // 1 of 4 is the start threshold: no pressure yet; then linear to 3 of 4.
    for (live, pressure) in [(1, 0.0), (2, 0.5), (3, 1.0), (4, 1.0)] {
        assert_ready_ok!(service.poll_ready());
        connections.push(task::spawn(service.call(conn_from("192.0.2.1:1"))));
        responders.push(handle.next_request().await.unwrap().1);
        assert!(
            close_to(overload.pressure(), pressure),
            "{live} live: {}",
            overload.pressure()
        );
    }
    assert_eq!(overload.stats().connections, Some(1.0));

    for (ended, pressure) in [(1, 1.0), (2, 0.5), (3, 0.0), (4, 0.0)] {
        responders.remove(0).send_response(());
        assert_ready_ok!(connections.remove(0).poll());
        assert!(
            close_to(overload.pressure(), pressure),
            "{ended} ended: {}",
            overload.pressure()
        );
    }
    assert_eq!(overload.stats().connections, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn time_under_pressure_is_counted_and_monitors_add_their_load() {
    let load = Arc::new(AtomicU64::new(0.0f64.to_bits()));
    let monitor = load.clone();
    let overload = overload()
        .monitor(move || f64::from_bits(monitor.load(Ordering::Relaxed)))
        .build()
        .unwrap();
    // Half a period off the samples, so that no look shares an instant with one.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert_eq!(overload.stats().time_under_pressure, Duration::ZERO);

    // Sampled once a second: the next sample sees it.
    load.store(0.95f64.to_bits(), Ordering::Relaxed);
    assert_eq!(overload.pressure(), 0.0);
    tokio::time::sleep(secs(1)).await;
    assert_eq!(overload.pressure(), 1.0);
    tokio::time::sleep(secs(9)).await;
    let stats = overload.stats();
    assert_eq!(stats.monitors, Some(0.95));
    assert_eq!(stats.time_under_pressure, secs(10));

    load.store(0.5f64.to_bits(), Ordering::Relaxed);
    tokio::time::sleep(secs(10)).await;
    assert_eq!(overload.pressure(), 0.0);
    assert_eq!(overload.stats().time_under_pressure, secs(10));
}

/// A raw protocol under the timeout layer, as the tests serve them.
trait RawProtocol:
    Service<
        Conn<TimedIo<DuplexStream>>,
        Response = (),
        Error = std::io::Error,
        Future: Send + 'static,
    > + Clone
{
}

impl<P> RawProtocol for P where
    P: Service<
            Conn<TimedIo<DuplexStream>>,
            Response = (),
            Error = std::io::Error,
            Future: Send + 'static,
        > + Clone
{
}

/// A raw protocol that reads until its client closes.
fn reader() -> impl RawProtocol {
    service_fn(|conn: Conn<TimedIo<DuplexStream>>| async move {
        let mut io = conn.into_io();
        let mut buffer = [0; 64];
        while io.read(&mut buffer).await? > 0 {}
        Ok(())
    })
}

/// The deadline a connection ended with.
fn timed_out(outcome: Result<(), BoxError>) -> TimeoutError {
    let error = outcome.expect_err("the connection should have timed out");
    let io = error
        .downcast_ref::<std::io::Error>()
        .unwrap_or_else(|| panic!("not an io::Error: {error}"));
    *io.get_ref()
        .and_then(|inner| inner.downcast_ref::<TimeoutError>())
        .expect("a TimeoutError inside")
}

#[tokio::test(start_paused = true)]
async fn with_no_pressure_the_idle_timeout_is_unchanged() {
    let overload = overload().build().unwrap();
    let service = ServiceBuilder::new()
        .layer(
            ConnectionLimitLayer::builder(10)
                .overload(&overload)
                .build()
                .unwrap(),
        )
        .layer(
            TimeoutLayer::builder()
                .idle(secs(60))
                .overload(&overload)
                .build()
                .unwrap(),
        )
        .service(reader());
    let began = Instant::now();
    let (conn, _client) = duplex_conn("192.0.2.1:1");
    let outcome = within(secs(3600), service.oneshot(conn)).await;
    assert_eq!(timed_out(outcome), TimeoutError::Idle(secs(60)));
    let idle = began.elapsed();
    assert!(
        idle >= secs(60) && idle <= secs(60) + secs(60) / 8,
        "{idle:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_idle_for_half_its_timeout_is_closed_when_the_pressure_is_full() {
    // At full pressure timeouts are a fifth of themselves: 60 s idle becomes 12 s.
    let overload = overload().evict_idle(false).build().unwrap();
    let service = ServiceBuilder::new()
        .layer(
            ConnectionLimitLayer::builder(2)
                .overload(&overload)
                .build()
                .unwrap(),
        )
        .layer(
            TimeoutLayer::builder()
                .idle(secs(60))
                .overload(&overload)
                .build()
                .unwrap(),
        )
        .service(reader());
    let began = Instant::now();
    let (first, _first_client) = duplex_conn("192.0.2.1:1");
    let first = tokio::spawn(service.clone().oneshot(first));
    tokio::time::sleep(secs(30)).await;
    assert!(!first.is_finished(), "half its timeout, no pressure yet");
    assert_eq!(overload.pressure(), 0.0);

    // The cap fills: full pressure.
    let (second, _second_client) = duplex_conn("192.0.2.2:2");
    let _second = tokio::spawn(service.oneshot(second));
    tokio::task::yield_now().await;
    assert_eq!(overload.pressure(), 1.0);
    let outcome = within(secs(60), first).await.unwrap();
    assert_eq!(timed_out(outcome), TimeoutError::Idle(secs(12)));
    // Within an eighth of the idle timeout of the pressure rising.
    let closed = began.elapsed();
    assert!(closed <= secs(30) + secs(60) / 8, "{closed:?}");
    assert!(overload.stats().time_under_pressure > Duration::ZERO);
}

/// The sampler runs on a runtime, started from the connections' path: a manager built
/// before any runtime (in a sync `main`) has none, and one whose runtime has ended has
/// lost it. Without evictions the connections never enrol, so the timeouts' looks must
/// start it, or the monitors stay at what they read last.
#[test]
fn without_evictions_the_timeouts_keep_the_monitors_sampled_on_each_runtime() {
    let load = Arc::new(AtomicU64::new(0.0f64.to_bits()));
    let monitor = load.clone();
    // Built outside any runtime.
    let overload = overload()
        .evict_idle(false)
        .monitor(move || f64::from_bits(monitor.load(Ordering::Relaxed)))
        .build()
        .unwrap();
    // On a runtime of its own, a connection that stays idle while the monitor's load
    // becomes `later`: the deadline it is cut at.
    let idle_cut_at = |later: f64| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let service = TimeoutLayer::builder()
                .idle(secs(60))
                .overload(&overload)
                .build()
                .unwrap()
                .layer(reader());
            let (conn, _client) = duplex_conn("192.0.2.1:1");
            let connection = tokio::spawn(service.oneshot(conn));
            tokio::task::yield_now().await;
            load.store(later.to_bits(), Ordering::Relaxed);
            timed_out(within(secs(3600), connection).await.unwrap())
        })
    };
    // The application's queue fills: full pressure at the next sample.
    assert_eq!(
        idle_cut_at(1.0),
        TimeoutError::Idle(secs(12)),
        "the monitor's load never reached the timeouts"
    );
    // That runtime has ended, and its sampler with it: the queue empties, and the
    // timeouts are whole again.
    assert_eq!(
        idle_cut_at(0.0),
        TimeoutError::Idle(secs(60)),
        "the load sampled on the runtime that ended stayed in force"
    );
}

#[tokio::test(start_paused = true)]
async fn a_proxy_header_deadline_shrinks_under_pressure() {
    // A monitor at its maximum: full pressure from the start.
    let overload = overload().monitor(|| 1.0).build().unwrap();
    let layer = ProxyProtocolLayer::builder()
        .trusted(["192.0.2.0/24".parse().unwrap()])
        .timeout(secs(5))
        .overload(&overload)
        .build()
        .unwrap();
    let service = layer.layer(service_fn(
        |_: Conn<tower_bouncer::proxy_protocol::Rewind<DuplexStream>>| async {
            Ok::<_, BoxError>(())
        },
    ));
    let began = Instant::now();
    let (conn, _balancer) = duplex_conn("192.0.2.9:1");
    let error = within(secs(60), service.oneshot(conn)).await.unwrap_err();
    let error = error.downcast_ref::<ProxyProtocolError>().unwrap();
    assert!(
        matches!(error, ProxyProtocolError::TimedOut(limit) if *limit == secs(1)),
        "{error}"
    );
    assert_eq!(began.elapsed(), secs(1));
}

#[tokio::test(start_paused = true)]
async fn the_login_timeout_shrinks_under_pressure() {
    let overload = overload().monitor(|| 1.0).build().unwrap();
    let login = Login::builder()
        .login_timeout(secs(30))
        .overload(&overload)
        .build()
        .unwrap();
    let service = login
        .session_layer()
        .layer(service_fn(|conn: Conn<DuplexStream>| async move {
            // A protocol that never hears of the eviction: cut after the grace (1 s).
            let mut io = conn.into_io();
            let mut buffer = [0; 64];
            while io.read(&mut buffer).await? > 0 {}
            Ok::<_, std::io::Error>(())
        }));
    let began = Instant::now();
    let (conn, _client) = duplex_conn("192.0.2.1:1");
    let error = within(secs(60), service.oneshot(conn)).await.unwrap_err();
    let evicted = error.downcast_ref::<Evicted>().unwrap();
    assert_eq!(evicted.reason, EvictReason::LoginTimeout(secs(6)));
    assert_eq!(began.elapsed(), secs(6) + secs(1));
}

/// An app whose `/sleep?S` handler takes S seconds, and whose `/stream?MS` answers at
/// once with a response that never ends, a line every MS milliseconds.
fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/sleep",
            get(|RawQuery(query): RawQuery| async move {
                tokio::time::sleep(secs(query.unwrap().parse().unwrap())).await;
                "slept\n"
            }),
        )
        .route(
            "/stream",
            get(|RawQuery(query): RawQuery| async move {
                let every = Duration::from_millis(query.unwrap().parse().unwrap());
                let lines = futures_util::stream::unfold((), move |()| async move {
                    tokio::time::sleep(every).await;
                    Some((Ok::<_, std::io::Error>("tick\n"), ()))
                });
                axum::body::Body::from_stream(lines)
            }),
        )
}

/// The HTTP example's stack in small: a cap of `max` evicting idle connections, the
/// timeouts, the adapter. Timeouts are not scaled, to see evictions alone.
fn http_stack(
    max: usize,
) -> (
    Overload,
    ConnectionLimitLayer,
    impl Service<Conn<DuplexStream>, Response = (), Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + 'static,
) {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let (limit, service) = evicting_stack(
        &overload,
        max,
        idle_and_request_timeouts(&overload),
        HttpService::new(app()),
    );
    (overload, limit, service)
}

/// The idle timeout of [`idle_timeout`], and a request timeout of 10 s.
fn idle_and_request_timeouts(overload: &Overload) -> TimeoutLayer {
    TimeoutLayer::builder()
        .idle(secs(600))
        .request(secs(10))
        .overload(overload)
        .build()
        .unwrap()
}

/// A cap of `max` evicting `overload`'s idle connections, and `timeouts` under it, over
/// `protocol`.
fn evicting_stack<P>(
    overload: &Overload,
    max: usize,
    timeouts: TimeoutLayer,
    protocol: P,
) -> (
    ConnectionLimitLayer,
    impl Service<Conn<DuplexStream>, Response = (), Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + 'static
    + use<P>,
)
where
    P: Service<Conn<TimedIo<DuplexStream>>, Response = ()> + Clone + Send + 'static,
    P::Error: Into<BoxError>,
    P::Future: Send + 'static,
{
    let limit = ConnectionLimitLayer::builder(max)
        .overload(overload)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(limit.clone())
        .layer(timeouts)
        .service(protocol);
    (limit, service)
}

/// A connection-level service over in-memory streams, as the tests spawn them.
trait Serves:
    Service<Conn<DuplexStream>, Response = (), Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> Serves for S where
    S: Service<Conn<DuplexStream>, Response = (), Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// A connection from `peer` served by `service`: its task and the client's end.
fn open<S: Serves>(service: &S, peer: &str) -> (JoinHandle<Result<(), BoxError>>, DuplexStream) {
    let (conn, client) = duplex_conn(peer);
    (tokio::spawn(service.clone().oneshot(conn)), client)
}

/// `count` idle keep-alive connections from 192.0.2.x, registered for eviction by
/// their timers' next look.
async fn idle_and_registered<S: Serves>(
    overload: &Overload,
    service: &S,
    count: u8,
) -> Vec<(JoinHandle<Result<(), BoxError>>, Http1Client)> {
    let mut idle = Vec::new();
    for n in 1..=count {
        idle.push(keep_alive(service, &format!("192.0.2.{n}:1")).await);
    }
    tokio::time::sleep(secs(600) / 8).await;
    assert_eq!(overload.stats().registered, usize::from(count));
    idle
}

/// An HTTP/1.1 client on a new connection from `peer` that has made one request.
async fn keep_alive<S: Serves>(
    service: &S,
    peer: &str,
) -> (JoinHandle<Result<(), BoxError>>, Http1Client) {
    let (server, client) = open(service, peer);
    let mut client = Http1Client::connect(client).await;
    assert_eq!(client.get("/").await.unwrap().body, "hello\n");
    (server, client)
}

#[tokio::test(start_paused = true)]
async fn at_a_full_cap_a_new_connection_evicts_the_longest_idle_keep_alive_connection() {
    let (overload, limit, service) = http_stack(3);
    // The oldest connection of all is in the middle of a request.
    let (_busy, busy_client) = open(&service, "192.0.2.3:1");
    let mut busy_client = Http1Client::connect(busy_client).await;
    let busy = tokio::spawn(async move { busy_client.get("/sleep?300").await });
    let (oldest, oldest_client) = keep_alive(&service, "192.0.2.1:1").await;
    tokio::time::sleep(secs(20)).await;
    let (_newer, mut newer_client) = keep_alive(&service, "192.0.2.2:1").await;
    // Every connection has registered by its timer's next look.
    tokio::time::sleep(secs(600) / 8).await;
    assert_eq!(overload.stats().registered, 3);

    let (_newcomer, newcomer_client) = open(&service, "192.0.2.4:1");
    let mut newcomer_client = Http1Client::connect(newcomer_client).await;
    assert_eq!(newcomer_client.get("/").await.unwrap().body, "hello\n");

    // The oldest idle connection closed at once, cleanly, on both sides.
    within(PATIENCE, oldest).await.unwrap().unwrap();
    within(PATIENCE, oldest_client.driver)
        .await
        .unwrap()
        .unwrap();
    let stats = limit.stats();
    assert_eq!((stats.admitted, stats.refused, stats.live), (4, 0, 3));
    assert_eq!(overload.stats().evicted_idle, 1);
    // The others go on, the one in the middle of a request included.
    assert_eq!(newer_client.get("/").await.unwrap().body, "hello\n");
    assert_eq!(
        within(secs(600), busy).await.unwrap().unwrap().body,
        "slept\n"
    );
    assert_eq!(overload.stats().evicted_idle, 1);
}

/// A protocol may answer a request in its very first poll (a whole HTTP/1 request in
/// the first read, a line protocol's `LOGIN`): its connection must be evictable by then,
/// or a client that reads the answer and connects again at a full cap is refused instead
/// of evicting it.
#[tokio::test(start_paused = true)]
async fn a_connection_is_evictable_from_its_protocols_first_poll() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let limit = ConnectionLimitLayer::builder(2)
        .overload(&overload)
        .build()
        .unwrap();
    // What the evictions held when the protocol was first polled, for each connection.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watched = overload.clone();
    let protocol = service_fn(move |_: Conn<TimedIo<DuplexStream>>| {
        let (seen_tx, watched) = (seen_tx.clone(), watched.clone());
        async move {
            seen_tx.send(watched.stats().registered).unwrap();
            std::future::pending::<Result<(), BoxError>>().await
        }
    });
    let service = ServiceBuilder::new()
        .layer(limit)
        .layer(idle_timeout(&overload))
        .service(protocol);
    let (_first, _first_client) = open(&service, "192.0.2.1:1");
    assert_eq!(within(PATIENCE, seen.recv()).await, Some(1));
    let (_second, _second_client) = open(&service, "192.0.2.2:1");
    assert_eq!(within(PATIENCE, seen.recv()).await, Some(2));
}

#[tokio::test(start_paused = true)]
async fn the_peer_holding_the_most_idle_connections_loses_one_first() {
    let (overload, _limit, service) = http_stack(4);
    // The longest idle is a peer's only connection.
    let (_lone, mut lone_client) = keep_alive(&service, "192.0.2.1:1").await;
    tokio::time::sleep(secs(20)).await;
    let (first, first_client) = keep_alive(&service, "192.0.2.2:1").await;
    let (second, second_client) = keep_alive(&service, "192.0.2.2:2").await;
    let (_other, mut other_client) = keep_alive(&service, "192.0.2.3:1").await;
    tokio::time::sleep(secs(600) / 8).await;

    let (_newcomer, newcomer_client) = open(&service, "192.0.2.4:1");
    let mut newcomer_client = Http1Client::connect(newcomer_client).await;
    assert_eq!(newcomer_client.get("/").await.unwrap().body, "hello\n");

    // One of the two connections of 192.0.2.2 is gone, the other peers keep theirs.
    let (first_client, second_client) = (first_client.driver, second_client.driver);
    tokio::select! {
        closed = first => closed.unwrap().unwrap(),
        closed = second => closed.unwrap().unwrap(),
        () = tokio::time::sleep(PATIENCE) => panic!("no connection of 192.0.2.2 was evicted"),
    }
    within(PATIENCE, async {
        while !first_client.is_finished() && !second_client.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(lone_client.get("/").await.unwrap().body, "hello\n");
    assert_eq!(other_client.get("/").await.unwrap().body, "hello\n");
    assert_eq!(overload.stats().evicted_idle, 1);
}

#[tokio::test(start_paused = true)]
async fn an_http2_connection_with_no_open_stream_is_evicted_one_with_a_stream_is_not() {
    let (overload, limit, service) = http_stack(2);
    let (idle, idle_client) = open(&service, "192.0.2.1:1");
    let mut idle_client = Http2Client::connect(idle_client).await;
    assert_eq!(idle_client.get("/").await.unwrap().body, "hello\n");
    tokio::time::sleep(secs(20)).await;
    let (_busy, busy_client) = open(&service, "192.0.2.2:1");
    let mut busy_client = Http2Client::connect(busy_client).await;
    let busy = tokio::spawn(async move { busy_client.get("/sleep?300").await });
    tokio::time::sleep(secs(600) / 8).await;

    // The connection with no stream open gets a GOAWAY and ends.
    let (_newcomer, newcomer_client) = open(&service, "192.0.2.3:1");
    let mut newcomer_client = Http2Client::connect(newcomer_client).await;
    let newcomer = tokio::spawn(async move { newcomer_client.get("/sleep?60").await });
    // At once, not cut after a grace. (Either end may fail to write its last frames
    // once the other, in memory, is gone.)
    within(secs(1), idle).await.unwrap().ok();
    within(secs(1), idle_client.driver).await.unwrap().ok();
    assert_eq!(overload.stats().evicted_idle, 1);

    // Now every connection has a stream open: the next one is refused.
    tokio::time::sleep(secs(1)).await;
    let (refused, _client) = open(&service, "192.0.2.4:1");
    let error = within(PATIENCE, refused).await.unwrap().unwrap_err();
    assert_eq!(
        rejected(&error).reason(),
        &Reason::ConnectionLimit { limit: 2 }
    );
    assert_eq!(
        within(secs(600), busy).await.unwrap().unwrap().body,
        "slept\n"
    );
    assert_eq!(
        within(secs(120), newcomer).await.unwrap().unwrap().body,
        "slept\n"
    );
    assert_eq!(overload.stats().evicted_idle, 1);
    assert_eq!(limit.stats().refused, 1);
}

/// An idle HTTP/2 connection leaves the evictions when its idle timeout tells it
/// goodbye (GOAWAY and a PING), as it is cut a second later. A stream its client opened
/// as the GOAWAY came is served instead, and the connection lives on after it until its
/// client acknowledges the PING (h2 sends its last GOAWAY then) or its next idle
/// timeout: evictable again from then on, so that a newcomer at a full cap evicts it
/// once it is idle rather than being refused.
#[tokio::test(start_paused = true)]
async fn an_http2_connection_served_after_its_idle_goaway_is_evictable_again() {
    let (overload, limit, service) = http_stack(2);
    let (served, mut client) = open(&service, "192.0.2.1:1");
    client.write_all(HTTP2_GET_THEN_DEAF).await.unwrap();
    // Its answer, then, at the idle timeout, the goodbye.
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    for _ in 0..20 {
        let types = frame_types(&received);
        if types.contains(&0x7) && types.contains(&0x6) {
            break;
        }
        let read = within(secs(3600), client.read(&mut buffer)).await.unwrap();
        assert_ne!(read, 0, "closed before its goodbye: {types:?}");
        received.extend_from_slice(&buffer[..read]);
    }
    // `GET /sleep?3` on stream 3, sent as the GOAWAY came; the PING never acknowledged.
    client
        .write_all(b"\0\0\x0f\x01\x05\0\0\0\x03\x82\x86\x04\x08/sleep?3\x41\x01t")
        .await
        .unwrap();
    tokio::time::sleep(secs(5)).await;
    assert!(!served.is_finished(), "cut instead of served");
    let (_busy, busy_client) = open(&service, "192.0.2.2:1");
    let mut busy_client = Http1Client::connect(busy_client).await;
    let busy = tokio::spawn(async move { busy_client.get("/sleep?300").await });
    tokio::time::sleep(secs(1)).await;

    let (_newcomer, newcomer_client) = open(&service, "192.0.2.3:1");
    let mut newcomer_client = Http1Client::connect(newcomer_client).await;
    let answer = newcomer_client.get("/").await;
    assert_eq!(
        (limit.stats().refused, overload.stats().evicted_idle),
        (0, 1),
        "the newcomer was refused: {} connections registered",
        overload.stats().registered
    );
    assert_eq!(answer.unwrap().body, "hello\n");
    within(secs(1), served).await.unwrap().unwrap();
    assert_eq!(
        within(secs(600), busy).await.unwrap().unwrap().body,
        "slept\n"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_whose_request_has_not_come_yet_is_not_the_one_evicted() {
    let (overload, _limit, service) = http_stack(2);
    let (first, mut first_client) = keep_alive(&service, "192.0.2.1:1").await;
    // Offered to evictions at its timer's next look; then a request after it, so that
    // its timer has not seen it idle since.
    tokio::time::sleep(secs(600) / 8 + secs(1)).await;
    assert_eq!(first_client.get("/").await.unwrap().body, "hello\n");
    // A client whose request is on its way: connected, nothing read yet.
    let (_second, second_client) = open(&service, "192.0.2.2:1");
    tokio::time::sleep(Duration::from_millis(10)).await;

    // The newcomer evicts the connection that served its request, not the one whose
    // request has not arrived.
    let (_newcomer, _newcomer_client) = keep_alive(&service, "198.51.100.1:1").await;
    within(secs(1), first).await.unwrap().unwrap();
    assert_eq!(overload.stats().evicted_idle, 1);
    let mut second_client = Http1Client::connect(second_client).await;
    assert_eq!(second_client.get("/").await.unwrap().body, "hello\n");
}

#[tokio::test(start_paused = true)]
async fn an_evicted_connection_whose_request_began_since_is_not_cut() {
    // A raw protocol that does not listen for the close, under a request timeout: its
    // first byte starts a request. Every connection offered to evictions from its start.
    let overload = overload()
        .thresholds(0.0, 1.0)
        .min_timeout_scale(1.0)
        .build()
        .unwrap();
    let (limit, service) =
        evicting_stack(&overload, 1, idle_and_request_timeouts(&overload), reader());
    let (victim, mut victim_client) = open(&service, "192.0.2.1:1");
    tokio::time::sleep(secs(2)).await;

    // Chosen while idle, its first byte in its stream but not read: the eviction's
    // wake-up finds a request begun.
    let (_newcomer, _newcomer_client) = open(&service, "192.0.2.2:1");
    victim_client.write_all(b"x").await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(overload.stats().evicted_idle, 1);
    tokio::time::sleep(secs(1)).await;
    assert!(!victim.is_finished(), "cut in the middle of its request");
    assert_eq!(limit.stats().live, 2);
    // It ends as its protocol ends it.
    drop(victim_client);
    within(secs(1), victim).await.unwrap().unwrap();
}

/// The types of the HTTP/2 frames in `bytes`, in order.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while let Some((header, rest)) = bytes.split_first_chunk::<9>() {
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        types.push(header[3]);
        bytes = &rest[length.min(rest.len())..];
    }
    types
}

/// Two connections, from 192.0.2.1 and .2 a second apart, whose clients send `bytes`
/// and nothing more: their tasks and the clients' ends.
async fn http2_clients<S: Serves>(
    service: &S,
    bytes: &[u8],
) -> Vec<(JoinHandle<Result<(), BoxError>>, DuplexStream)> {
    let mut clients = Vec::new();
    for n in 1..=2 {
        let (server, mut client) = open(service, &format!("192.0.2.{n}:1"));
        client.write_all(bytes).await.unwrap();
        clients.push((server, client));
        tokio::time::sleep(secs(1)).await;
    }
    clients
}

/// Opens a connection from `peer` that `service` refuses: it is answered and closed,
/// and its task ends with the refusal.
async fn refused<S: Serves>(service: &S, peer: &str) {
    let (server, mut client) = open(service, peer);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert!(within(PATIENCE, server).await.unwrap().is_err());
}

#[tokio::test(start_paused = true)]
async fn an_evicted_http2_connection_whose_client_never_reads_is_cut_after_its_goaway() {
    // A cap of 2: one eviction under way at a time.
    let (overload, limit, service) = http_stack(2);
    let mut deaf = http2_clients(&service, HTTP2_GET_THEN_DEAF).await;
    // Answered, and idle: offered to the evictions at their timer's next look.
    tokio::time::sleep(secs(600) / 8).await;

    // The newcomer evicts the first. Its client would never acknowledge the GOAWAY's
    // PING: it is cut at once, not after the adapter's close grace (5 s), which would
    // hold the one eviction allowed at a time.
    let (_first, _first_client) = keep_alive(&service, "198.51.100.1:1").await;
    let (server, mut client) = deaf.remove(0);
    within(secs(1), server).await.unwrap().unwrap();
    let mut received = Vec::new();
    client.read_to_end(&mut received).await.unwrap();
    let types = frame_types(&received);
    assert_eq!(types.first(), Some(&0x4), "its settings first: {types:?}");
    assert!(types.contains(&0x7), "a GOAWAY before the end: {types:?}");

    // So the next newcomer evicts too, instead of being refused.
    let (_second, _second_client) = keep_alive(&service, "198.51.100.2:1").await;
    let (server, _client) = deaf.remove(0);
    within(secs(1), server).await.unwrap().unwrap();
    assert_eq!(overload.stats().evicted_idle, 2);
    let stats = limit.stats();
    assert_eq!((stats.refused, stats.live), (0, 2));
}

/// [`HTTP2_GET_WITH_NO_WINDOW`], then `GET /` on stream 3 and its reset (CANCEL).
const HTTP2_NO_WINDOW_AND_A_RESET: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
    \0\0\x06\x04\0\0\0\0\0\0\x04\0\0\0\0\
    \0\0\0\x04\x01\0\0\0\0\
    \0\0\x06\x01\x05\0\0\0\x01\x82\x86\x84\x41\x01t\
    \0\0\x06\x01\x05\0\0\0\x03\x82\x86\x84\x41\x01t\
    \0\0\x04\x03\0\0\0\0\x03\0\0\0\x08";

#[tokio::test(start_paused = true)]
async fn an_http2_connection_whose_client_takes_none_of_its_answer_is_evicted_and_cut() {
    // Also when the client resets a stream of its own: data handed to hyper for a reset
    // stream is dropped unsent and seems to wait for good, but what makes waiting output
    // a stall is a window the client keeps at zero.
    for client_sends in [HTTP2_GET_WITH_NO_WINDOW, HTTP2_NO_WINDOW_AND_A_RESET] {
        let (overload, limit, service) = http_stack(2);
        let mut stalled = http2_clients(&service, client_sends).await;
        // Each answer waits on a window its client never opens: a stream is open, so
        // HTTP/2 is busy, but the client holds its place and takes nothing. Its timer's
        // next look sees that; a second later it counts as idle.
        tokio::time::sleep(secs(600) / 8 + secs(2)).await;

        let (_newcomer, mut newcomer) = keep_alive(&service, "198.51.100.1:1").await;
        let (server, _client) = stalled.remove(0);
        within(secs(1), server).await.unwrap().unwrap();
        assert_eq!(overload.stats().evicted_idle, 1);
        let stats = limit.stats();
        assert_eq!((stats.refused, stats.live), (0, 2));
        assert_eq!(newcomer.get("/").await.unwrap().body, "hello\n");
    }
}

/// A client that sends a byte every 900 ms on a raw connection until it is closed.
fn chatty<S: Serves>(service: &S, peer: &str) -> JoinHandle<Result<(), BoxError>> {
    let (server, mut client) = open(service, peer);
    tokio::spawn(async move {
        while client.write_all(b".").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
    });
    server
}

#[tokio::test(start_paused = true)]
async fn with_nothing_idle_the_oldest_connection_judged_by_its_bytes_gives_way() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    // No request timer: the connections are judged by their bytes.
    let (limit, service) = evicting_stack(&overload, 2, idle_timeout(&overload), reader());
    // Never quiet for the 10 s that would make them idle.
    let oldest = chatty(&service, "192.0.2.1:1");
    tokio::time::sleep(secs(5)).await;
    let older = chatty(&service, "192.0.2.2:1");
    // Offered to the evictions at their timer's next look.
    tokio::time::sleep(secs(600) / 8).await;

    // A newcomer is let in, and the oldest is cut for it, busy as it is.
    let newcomer = chatty(&service, "198.51.100.1:1");
    within(secs(2), oldest).await.unwrap().unwrap();
    let stats = overload.stats();
    assert_eq!((stats.evicted_idle, stats.evicted_long_lived), (0, 1));
    // The next makes the next oldest give way.
    let _next = chatty(&service, "198.51.100.2:1");
    within(secs(2), older).await.unwrap().unwrap();
    // Those two have lived less than 10 s: they keep their places, and a third newcomer
    // is refused.
    refused(&service, "198.51.100.3:1").await;
    assert!(!newcomer.is_finished());
    let stats = limit.stats();
    assert_eq!((stats.refused, stats.live), (1, 2));
    assert_eq!(overload.stats().evicted_long_lived, 2);
}

/// A connection joins the evictions at its first poll, if the load is high enough, or
/// at a later look of its timer; only the idle timeout keeps the timer looking for as
/// long as the connection lives. Without one, a connection opened at a low load would
/// never join: at a full cap, every newcomer refused for good, where the oldest of
/// those judged by their bytes should give way for its age.
#[tokio::test(start_paused = true)]
async fn without_an_idle_timeout_connections_opened_at_a_low_load_give_way_for_their_age() {
    let timeouts = [
        ("first byte", TimeoutLayer::builder().first_byte(secs(10))),
        ("lifetime", TimeoutLayer::builder().lifetime(secs(3600))),
    ];
    for (alone, timeouts) in timeouts {
        let overload = overload().min_timeout_scale(1.0).build().unwrap();
        let timeouts = timeouts.overload(&overload).build().unwrap();
        let (limit, service) = evicting_stack(&overload, 10, timeouts, reader());
        // Three long-lived connections, opened while the cap is far from full: with no
        // timer to offer them later, they join the evictions as they start.
        let mut old = Vec::new();
        for n in 1..=3 {
            old.push(chatty(&service, &format!("192.0.2.{n}:1")));
            tokio::time::sleep(secs(1)).await;
        }
        assert_eq!(overload.stats().registered, 3, "{alone}");
        tokio::time::sleep(secs(20)).await;
        // A reload lowers the cap to what is live: full.
        limit.set_max(3).unwrap();
        tokio::time::sleep(secs(60)).await;

        let _newcomer = chatty(&service, "198.51.100.1:1");
        tokio::time::sleep(secs(1)).await;
        let stats = overload.stats();
        assert_eq!(
            (stats.evicted_long_lived, limit.stats().refused),
            (1, 0),
            "{alone}: the oldest connection did not give way"
        );
        within(PATIENCE, old.remove(0)).await.unwrap().unwrap();
        assert!(old.iter().all(|other| !other.is_finished()), "{alone}");
        assert_eq!(limit.stats().live, 3, "{alone}");
    }
}

/// The same for connections idle between requests: under an HTTP adapter without an
/// idle timeout, keep-alive connections opened at a low load make room at a full cap.
#[tokio::test(start_paused = true)]
async fn without_an_idle_timeout_keep_alive_connections_opened_at_a_low_load_make_room() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let timeouts = TimeoutLayer::builder()
        .request(secs(10))
        .overload(&overload)
        .build()
        .unwrap();
    let http = HttpService::builder(app())
        .idle_timeout(None)
        .build()
        .unwrap();
    let (limit, service) = evicting_stack(&overload, 10, timeouts, http);
    let mut old = Vec::new();
    for n in 1..=2 {
        old.push(keep_alive(&service, &format!("192.0.2.{n}:1")).await);
    }
    tokio::time::sleep(secs(60)).await;
    // A reload lowers the cap to what is live: full.
    limit.set_max(2).unwrap();

    let (_newcomer, client) = open(&service, "198.51.100.1:1");
    let mut newcomer = Http1Client::connect(client).await;
    let answer = newcomer.get("/").await;
    tokio::time::sleep(secs(1)).await;
    // (Without an idle timeout to sample since when each has been idle, either may go.)
    let closed = old
        .iter()
        .filter(|(server, _)| server.is_finished())
        .count();
    assert_eq!(
        (overload.stats().evicted_idle, closed),
        (1, 1),
        "no idle connection made room"
    );
    assert_eq!(answer.unwrap().body, "hello\n");
    assert_eq!(newcomer.get("/").await.unwrap().body, "hello\n");
    let stats = limit.stats();
    assert_eq!((stats.refused, stats.live), (0, 2));
}

/// What the evictions cost at a low load: with an idle timeout, whose looks offer the
/// connection later, none joins the registry (and takes its lock) until the load is
/// near the start threshold.
#[tokio::test(start_paused = true)]
async fn with_an_idle_timeout_connections_join_the_evictions_only_as_the_load_rises() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let (_limit, service) = evicting_stack(&overload, 10, idle_timeout(&overload), reader());
    // Half the start threshold (80 %) is 4 of 10.
    let mut connections = Vec::new();
    for n in 1..=3 {
        connections.push(chatty(&service, &format!("192.0.2.{n}:1")));
    }
    tokio::time::sleep(secs(600)).await;
    assert_eq!(overload.stats().registered, 0);
    connections.push(chatty(&service, "192.0.2.4:1"));
    tokio::task::yield_now().await;
    assert_eq!(overload.stats().registered, 1, "the fourth, as it starts");
    tokio::time::sleep(secs(600) / 8 + secs(1)).await;
    assert_eq!(
        overload.stats().registered,
        4,
        "the others, at their timer's next look"
    );
}

/// A connection from `peer` whose one request, sent and never read from again, is
/// `GET path`: its task.
fn requested<S: Serves>(service: &S, peer: &str, path: &str) -> JoinHandle<Result<(), BoxError>> {
    let (server, mut client) = open(service, peer);
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    tokio::spawn(async move {
        client.write_all(request.as_bytes()).await.unwrap();
        // Held open, unread: the response is small enough for the stream's buffer.
        std::future::pending::<()>().await;
        drop(client);
    });
    server
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_streams_nothing_is_idle_a_handler_yet_to_answer_is_not() {
    let (overload, limit, service) = http_stack(2);
    // A response that sent its head and then nothing (a quiet gRPC stream), and a
    // handler that takes its time before answering.
    let quiet = requested(&service, "192.0.2.1:1", "/stream?3600000");
    let slow = requested(&service, "192.0.2.2:1", "/sleep?300");
    // Quiet for the 10 s that make a connection judged by its bytes idle, and seen so
    // by its timer.
    tokio::time::sleep(secs(20) + secs(600) / 8).await;

    let (_newcomer, newcomer_client) = open(&service, "192.0.2.3:1");
    let mut newcomer_client = Http1Client::connect(newcomer_client).await;
    assert_eq!(newcomer_client.get("/").await.unwrap().body, "hello\n");
    within(secs(1), quiet).await.unwrap().ok();
    assert_eq!(overload.stats().evicted_idle, 1);
    // The newcomer keeps its place by asking for something slow too: nothing is idle
    // now, and the next one is refused, the slow handler left to answer.
    let next_request = tokio::spawn(async move { newcomer_client.get("/sleep?60").await });
    tokio::time::sleep(secs(1)).await;
    refused(&service, "192.0.2.4:1").await;
    assert!(!slow.is_finished());
    let stats = overload.stats();
    assert_eq!((stats.evicted_idle, stats.evicted_long_lived), (1, 0));
    assert_eq!(limit.stats().refused, 1);
    assert_eq!(
        within(secs(120), next_request).await.unwrap().unwrap().body,
        "slept\n"
    );
}

#[tokio::test(start_paused = true)]
async fn an_http2_answer_that_streams_nothing_is_evicted_and_cut_despite_its_goaway() {
    let (overload, _limit, service) = http_stack(2);
    let (quiet, quiet_client) = open(&service, "192.0.2.1:1");
    let mut quiet_client = Http2Client::connect(quiet_client).await;
    let _stream = tokio::spawn(async move { quiet_client.get("/stream?3600000").await });
    let (_slow, slow_client) = open(&service, "192.0.2.2:1");
    let mut slow_client = Http2Client::connect(slow_client).await;
    let slow = tokio::spawn(async move { slow_client.get("/sleep?300").await });
    tokio::time::sleep(secs(20) + secs(600) / 8).await;

    // Evicted for a newcomer and cut at once: its GOAWAY would wait for the stream's
    // end, which never comes (and its bytes would make it look busy).
    let (_newcomer, newcomer_client) = open(&service, "192.0.2.3:1");
    let mut newcomer_client = Http2Client::connect(newcomer_client).await;
    assert_eq!(newcomer_client.get("/").await.unwrap().body, "hello\n");
    within(secs(1), quiet).await.unwrap().ok();
    assert_eq!(overload.stats().evicted_idle, 1);
    assert_eq!(
        within(secs(600), slow).await.unwrap().unwrap().body,
        "slept\n"
    );
}

#[tokio::test(start_paused = true)]
async fn with_nothing_idle_the_oldest_answer_that_streams_gives_way() {
    let (overload, limit, service) = http_stack(2);
    // A response that sends a line every 900 ms (server-sent events): never quiet.
    let streaming = requested(&service, "192.0.2.1:1", "/stream?900");
    tokio::time::sleep(secs(5)).await;
    let slow = requested(&service, "192.0.2.2:1", "/sleep?300");
    tokio::time::sleep(secs(10) + secs(600) / 8).await;

    // The stream, older than 10 s, is cut for a newcomer; the handler is left alone.
    let (_newcomer, newcomer_client) = open(&service, "192.0.2.3:1");
    let mut newcomer_client = Http1Client::connect(newcomer_client).await;
    let newcomer = tokio::spawn(async move { newcomer_client.get("/sleep?60").await });
    within(secs(2), streaming).await.unwrap().ok();
    let stats = overload.stats();
    assert_eq!((stats.evicted_idle, stats.evicted_long_lived), (0, 1));
    tokio::time::sleep(secs(1)).await;
    refused(&service, "192.0.2.4:1").await;
    assert!(!slow.is_finished());
    assert_eq!(limit.stats().refused, 1);
    assert_eq!(
        within(secs(120), newcomer).await.unwrap().unwrap().body,
        "slept\n"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_http2_answer_does_not_make_a_later_request_look_stalled() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let router = app().route("/big", get(|| async { vec![b'x'; 1 << 20] }));
    let (limit, service) = evicting_stack(
        &overload,
        2,
        idle_and_request_timeouts(&overload),
        HttpService::new(router),
    );
    let (cancelling, client) = open(&service, "192.0.2.1:1");
    let (mut from_server, mut to_server) = tokio::io::split(client);
    // Default settings, a connection window of 1 MiB more (a client that reads all it
    // is sent opens it as it goes), and `GET /big` on stream 1; all that comes is read.
    to_server
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\0\x04\x01\0\0\0\0")
        .await
        .unwrap();
    to_server
        .write_all(b"\0\0\x04\x08\0\0\0\0\0\0\x10\0\0")
        .await
        .unwrap();
    to_server
        .write_all(b"\0\0\x0b\x01\x05\0\0\0\x01\x82\x86\x04\x04/big\x41\x01t")
        .await
        .unwrap();
    let _reader = tokio::spawn(async move {
        let mut sink = vec![0; 1 << 16];
        while from_server.read(&mut sink).await.is_ok_and(|read| read > 0) {}
    });
    tokio::time::sleep(secs(1)).await;
    // The download is cancelled (RST_STREAM, CANCEL) with part of it handed to hyper and
    // never sent; then `GET /sleep?300` on stream 3, a long request.
    to_server
        .write_all(b"\0\0\x04\x03\0\0\0\0\x01\0\0\0\x08")
        .await
        .unwrap();
    to_server
        .write_all(b"\0\0\x11\x01\x05\0\0\0\x03\x82\x86\x04\x0a/sleep?300\x41\x01t")
        .await
        .unwrap();
    let (_busy, busy_client) = open(&service, "192.0.2.2:1");
    let mut busy_client = Http2Client::connect(busy_client).await;
    let _busy = tokio::spawn(async move { busy_client.get("/sleep?300").await });
    tokio::time::sleep(secs(600) / 8 + secs(2)).await;

    // Both are in the middle of a request, taking all they are sent: neither is evicted,
    // and a newcomer is refused.
    refused(&service, "198.51.100.1:1").await;
    assert!(!cancelling.is_finished());
    assert_eq!(overload.stats().evicted_idle, 0);
    assert_eq!(limit.stats().refused, 1);
}

/// An eviction marks its connection, then asks it to close: a poll of the protocol
/// between the two (on another thread) looks for the close too early. The connection is
/// cut only once a poll of its protocol came after the request, so that the protocol
/// had it to say goodbye.
#[tokio::test(start_paused = true)]
async fn an_evicted_connection_is_cut_only_once_its_protocol_has_seen_the_close() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let limit = ConnectionLimitLayer::builder(1)
        .overload(&overload)
        .build()
        .unwrap();
    // The same cap in front of a service that holds nothing: a newcomer at it evicts.
    let newcomers = limit.layer(service_fn(|_: Conn<DuplexStream>| async {
        Ok::<(), BoxError>(())
    }));
    let protocol = service_fn(move |mut conn: Conn<TimedIo<DuplexStream>>| {
        let mut newcomers = newcomers.clone();
        async move {
            let close = conn.graceful_close();
            let mut io = conn.into_io();
            // Quiet for long enough to be evicted as idle.
            tokio::time::sleep(secs(100)).await;
            // The protocol has looked for a close in this poll, and found none: now a
            // newcomer evicts its connection, before the poll returns.
            assert!(!close.is_requested());
            let ready =
                newcomers.poll_ready(&mut std::task::Context::from_waker(std::task::Waker::noop()));
            assert!(ready.is_ready());
            let (newcomer, _newcomer_client) = duplex_conn("198.51.100.1:1");
            drop(newcomers.call(newcomer));
            assert!(close.is_requested());
            tokio::task::yield_now().await;
            // The next poll sees the request.
            io.write_all(b"bye\n").await?;
            std::future::pending::<Result<(), BoxError>>().await
        }
    });
    let service = ServiceBuilder::new()
        .layer(limit)
        .layer(idle_timeout(&overload))
        .service(protocol);
    let (server, mut client) = open(&service, "192.0.2.1:1");
    within(secs(300), server).await.unwrap().unwrap();
    let mut said = Vec::new();
    client.read_to_end(&mut said).await.unwrap();
    assert_eq!(said, b"bye\n", "cut before its protocol could say goodbye");
    assert_eq!(overload.stats().evicted_idle, 1);
}

/// A line protocol whose requests are lines, timed by its request timer.
fn line_protocol() -> impl RawProtocol {
    service_fn(|conn: Conn<TimedIo<DuplexStream>>| async move {
        let timer = conn.request_timer().unwrap();
        let mut io = conn.into_io();
        let mut buffer = [0; 64];
        loop {
            let read = io.read(&mut buffer).await?;
            if read == 0 {
                return Ok(());
            }
            if let Some(end) = buffer[..read].iter().rposition(|&byte| byte == b'\n') {
                timer.finish();
                timer.next(&buffer[end + 1..read]);
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_raw_connection_in_the_middle_of_a_timed_request_is_not_evicted_for_its_age() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let (limit, service) = evicting_stack(
        &overload,
        2,
        idle_and_request_timeouts(&overload),
        line_protocol(),
    );
    let mut lines = Vec::new();
    for n in 1..=2 {
        let (server, mut client) = open(&service, &format!("192.0.2.{n}:1"));
        client.write_all(b"first line\n").await.unwrap();
        lines.push((server, client));
    }
    // Offered to the evictions at their timer's next look; then each begins a request
    // and is in the middle of it, 80 s old, when a newcomer comes.
    tokio::time::sleep(secs(600) / 8 + secs(4)).await;
    for (_, client) in &mut lines {
        client.write_all(b"a line begun").await.unwrap();
    }
    tokio::time::sleep(secs(1)).await;
    refused(&service, "198.51.100.1:1").await;
    assert!(lines.iter().all(|(server, _)| !server.is_finished()));
    let stats = overload.stats();
    assert_eq!((stats.evicted_idle, stats.evicted_long_lived), (0, 0));
    assert_eq!(limit.stats().refused, 1);
}

#[tokio::test(start_paused = true)]
async fn in_backpressure_mode_nothing_is_evicted_and_the_shrunk_idle_timeout_makes_room() {
    let overload = overload().build().unwrap();
    let limit = ConnectionLimitLayer::builder(1)
        .backpressure()
        .overload(&overload)
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new()
        .layer(limit.clone())
        .layer(
            TimeoutLayer::builder()
                .idle(secs(60))
                .overload(&overload)
                .build()
                .unwrap(),
        )
        .service(HttpService::new(app()));
    let began = Instant::now();
    let (idle, _idle_client) = keep_alive(&service, "192.0.2.1:1").await;
    tokio::time::sleep(secs(5)).await;
    assert_eq!(
        overload.stats().registered,
        0,
        "a connection nothing may evict joined the evictions' registry"
    );

    // Full: not ready until the idle connection's timeout, a fifth of itself.
    within(
        secs(60),
        ServiceExt::<Conn<DuplexStream>>::ready(&mut service),
    )
    .await
    .unwrap();
    assert_eq!(timed_out(idle.await.unwrap()), TimeoutError::Idle(secs(12)));
    let waited = began.elapsed();
    assert!(
        waited >= secs(12) && waited <= secs(12) + secs(60) / 8,
        "{waited:?}"
    );
    assert_eq!(overload.stats().evicted_idle, 0);
}

/// Two accept loops sharing the cap (an IPv4 and an IPv6 listener) may both see its last
/// slot free; the one that loses the race is refused, as in refuse mode, and evicts
/// nothing either.
#[tokio::test(start_paused = true)]
async fn in_backpressure_mode_the_loser_of_a_race_for_the_last_slot_evicts_nothing() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let limit = ConnectionLimitLayer::builder(2)
        .backpressure()
        .overload(&overload)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(limit.clone())
        .layer(idle_and_request_timeouts(&overload))
        .service(HttpService::new(app()));
    let (idle, _idle_client) = keep_alive(&service, "192.0.2.1:1").await;
    tokio::time::sleep(secs(5)).await;

    // Both ready for the one slot left, then both called.
    let (mut first, mut second) = (service.clone(), service.clone());
    ServiceExt::<Conn<DuplexStream>>::ready(&mut first)
        .await
        .unwrap();
    ServiceExt::<Conn<DuplexStream>>::ready(&mut second)
        .await
        .unwrap();
    let (a, _a_client) = duplex_conn("198.51.100.1:1");
    let (b, _b_client) = duplex_conn("198.51.100.2:1");
    let _a = tokio::spawn(first.call(a));
    let lost = tokio::spawn(second.call(b));
    tokio::time::sleep(secs(1)).await;
    assert_eq!(
        overload.stats().evicted_idle,
        0,
        "an idle connection was evicted in backpressure mode"
    );
    assert!(!idle.is_finished());
    let error = within(PATIENCE, lost).await.unwrap().unwrap_err();
    assert_eq!(
        rejected(&error).reason(),
        &Reason::ConnectionLimit { limit: 2 }
    );
    let stats = limit.stats();
    assert_eq!((stats.refused, stats.live), (1, 2));
}

/// Dry run enforces nothing: a connection over a full cap is served and counted, and no
/// real connection is evicted for it.
#[tokio::test(start_paused = true)]
async fn in_dry_run_a_newcomer_at_a_full_cap_is_served_without_evicting_an_idle_connection() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let limit = ConnectionLimitLayer::builder(1)
        .dry_run(true)
        .overload(&overload)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(limit.clone())
        .layer(idle_and_request_timeouts(&overload))
        .service(HttpService::new(app()));
    let (first, mut first_client) = keep_alive(&service, "192.0.2.1:1").await;
    tokio::time::sleep(secs(5)).await;
    assert_eq!(overload.stats().registered, 1);

    let (_second, mut second_client) = keep_alive(&service, "192.0.2.2:1").await;
    tokio::time::sleep(secs(1)).await;
    assert_eq!(
        overload.stats().evicted_idle,
        0,
        "dry run evicted a real idle connection"
    );
    assert!(!first.is_finished(), "dry run closed the first connection");
    assert_eq!(first_client.get("/").await.unwrap().body, "hello\n");
    assert_eq!(second_client.get("/").await.unwrap().body, "hello\n");
    let stats = limit.stats();
    assert_eq!(
        (stats.dry_run_refusals, stats.refused, stats.live),
        (1, 0, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn evictions_take_a_full_cap_over_by_one_connection_for_every_sixteen_of_it() {
    // A raw protocol that ignores the request to close, under a request timer: an
    // evicted connection whose request has begun by the time it hears of its eviction
    // stays until its client leaves (or its request times out). Every connection
    // registers as it starts (a start threshold of 0).
    let overload = overload()
        .thresholds(0.0, 1.0)
        .min_timeout_scale(1.0)
        .build()
        .unwrap();
    let (limit, mut service) = evicting_stack(
        &overload,
        32,
        idle_and_request_timeouts(&overload),
        reader(),
    );
    // Silent, and so idle between requests once past a newcomer's second.
    let mut clients = Vec::new();
    let mut closes = Vec::new();
    for n in 1..=32 {
        let (mut conn, client) = duplex_conn(&format!("192.0.2.{n}:1"));
        closes.push(conn.graceful_close());
        tokio::spawn(service.clone().oneshot(conn));
        clients.push(client);
    }
    tokio::time::sleep(secs(2)).await;
    assert_eq!(overload.stats().registered, 32);

    // Two newcomers admitted here, each evicting a connection, whose client's request
    // is in its stream before it is polled again.
    let mut newcomers = Vec::new();
    for n in 1..=2 {
        let (conn, client) = duplex_conn(&format!("198.51.100.{n}:1"));
        let admitted = service.ready().await.unwrap().call(conn);
        newcomers.push((tokio::spawn(admitted), client));
    }
    let mut evicted = Vec::new();
    for (close, client) in closes.iter().zip(&mut clients) {
        if close.is_requested() {
            client.write_all(b"x").await.unwrap();
            evicted.push(client);
        }
    }
    assert_eq!(evicted.len(), 2);
    tokio::time::sleep(secs(1)).await;
    assert_eq!(overload.stats().evicted_idle, 2);
    let stats = limit.stats();
    assert_eq!((stats.admitted, stats.refused, stats.live), (34, 0, 34));

    // Both evictions allowed are still closing: the next newcomer is refused.
    let over_cap = |n: u8| open(&service, &format!("198.51.100.{n}:1"));
    let (refused, _refused_client) = over_cap(3);
    let error = within(PATIENCE, refused).await.unwrap().unwrap_err();
    assert_eq!(
        rejected(&error).reason(),
        &Reason::ConnectionLimit { limit: 32 }
    );
    let stats = limit.stats();
    assert_eq!((stats.admitted, stats.refused, stats.live), (34, 1, 34));

    // Once an evicted connection has gone, another newcomer evicts again.
    let evicted_client = closes.iter().position(GracefulClose::is_requested).unwrap();
    drop(clients.remove(evicted_client));
    tokio::task::yield_now().await;
    assert_eq!(limit.stats().live, 33);
    let _next = over_cap(4);
    tokio::task::yield_now().await;
    assert_eq!(overload.stats().evicted_idle, 3);
    // That one, idle when its eviction woke it, is cut at once.
    let stats = limit.stats();
    assert_eq!((stats.admitted, stats.refused, stats.live), (35, 1, 33));
}

/// `set_max` keeps the live connections and refuses newcomers until enough have ended.
/// With evictions, a newcomer over a lowered cap would instead take the place of an idle
/// connection it evicts, and the live count would never come down to the new cap.
#[tokio::test(start_paused = true)]
async fn under_a_cap_lowered_by_one_newcomers_are_refused_not_swapped_in() {
    let (overload, limit, service) = http_stack(17);
    let _idle = idle_and_registered(&overload, &service, 17).await;

    // A reload lowers the cap by one, less than the evictions it allows at once: one
    // connection over it, every one idle.
    limit.set_max(16).unwrap();
    let mut newcomers = Vec::new();
    for n in 1..=5 {
        newcomers.push(open(&service, &format!("198.51.100.{n}:1")));
        // Any eviction under way has ended by the next newcomer.
        tokio::time::sleep(secs(2)).await;
    }
    let stats = limit.stats();
    assert_eq!(
        (overload.stats().evicted_idle, stats.refused, stats.live),
        (0, 5, 17),
        "newcomers over a cap lowered by one swapped in for idle connections"
    );
}

#[tokio::test(start_paused = true)]
async fn under_a_lowered_cap_newcomers_are_refused_until_enough_connections_end() {
    let (overload, limit, service) = http_stack(8);
    let mut idle = idle_and_registered(&overload, &service, 8).await;

    // A reload lowers the cap to 2: six connections over it, every one of them idle.
    limit.set_max(2).unwrap();
    for n in 1..=6 {
        refused(&service, &format!("198.51.100.{n}:1")).await;
    }
    let stats = limit.stats();
    assert_eq!(
        (overload.stats().evicted_idle, stats.refused, stats.live),
        (0, 6, 8),
        "newcomers over a lowered cap swapped in for idle connections"
    );

    // Six end: at the new cap, a newcomer evicts an idle connection again.
    for (server, client) in idle.drain(..6) {
        drop(client);
        within(PATIENCE, server).await.unwrap().unwrap();
    }
    assert_eq!(limit.stats().live, 2);
    let (_newcomer, mut newcomer) = keep_alive(&service, "198.51.100.7:1").await;
    assert_eq!(overload.stats().evicted_idle, 1);
    assert_eq!(newcomer.get("/").await.unwrap().body, "hello\n");
    let stats = limit.stats();
    assert_eq!((stats.refused, stats.live), (6, 2));
}

/// A raw connection that sent its first byte and then nothing, its client still there.
async fn silent<S: Serves>(
    service: &S,
    peer: &str,
) -> (JoinHandle<Result<(), BoxError>>, DuplexStream) {
    let (server, mut client) = open(service, peer);
    client.write_all(b".").await.unwrap();
    (server, client)
}

/// Without an idle timeout, a connection judged by its bytes gives way for its age and
/// is "cut rather than asked to close"; the cut is made at a poll of its future. A
/// protocol that does not await the close (the tests' `reader`) and a client that sends
/// nothing more leave nothing to poll it: no timer looks again once the first byte is
/// in. The evicted connection then stays, counted among the evictions under way for as
/// long as its client keeps it open, and once a sixteenth of the cap is so held, every
/// newcomer is refused, idle or old connections there or not.
#[tokio::test(start_paused = true)]
async fn without_an_idle_timeout_a_silent_connection_evicted_for_its_age_is_cut() {
    let overload = overload().min_timeout_scale(1.0).build().unwrap();
    let timeouts = TimeoutLayer::builder()
        .first_byte(secs(10))
        .overload(&overload)
        .build()
        .unwrap();
    let (limit, service) = evicting_stack(&overload, 3, timeouts, reader());
    let mut old = Vec::new();
    for n in 1..=3 {
        old.push(silent(&service, &format!("192.0.2.{n}:1")).await);
        tokio::time::sleep(secs(1)).await;
    }
    assert_eq!(overload.stats().registered, 3);
    // Past their first byte and the 10 s that makes them long-lived.
    tokio::time::sleep(secs(60)).await;

    let _newcomer = chatty(&service, "198.51.100.1:1");
    tokio::time::sleep(secs(1)).await;
    assert_eq!(overload.stats().evicted_long_lived, 1);
    let (oldest, _client) = old.remove(0);
    tokio::time::sleep(PATIENCE).await;
    let cut = oldest.is_finished();
    // The next newcomer makes the next oldest give way, as the one before did.
    let _next = chatty(&service, "198.51.100.2:1");
    tokio::time::sleep(secs(1)).await;
    let stats = limit.stats();
    assert!(
        cut && stats.refused == 0,
        "the connection evicted for its age still runs ({} live on a cap of 3) and the \
         next newcomer was refused ({} refused, {} evicted for their age)",
        stats.live,
        stats.refused,
        overload.stats().evicted_long_lived
    );
}

/// An eviction is a plain `GracefulClose::request`, whose cut the HTTP adapter makes
/// after its close grace (`HttpServiceBuilder::close_grace`: "how long a connection may
/// take to finish after a plain request before it is cut"). A keep-alive connection
/// chosen idle whose next request came before it heard of its eviction finishes that
/// request under the graceful close: an honest download of 60 s, on a server whose
/// close grace is 2 minutes, is not cut half-way 30 s after the eviction.
#[tokio::test(start_paused = true)]
async fn an_evicted_connection_finishes_its_download_within_the_close_grace_it_was_promised() {
    let overload = overload()
        .thresholds(0.0, 1.0)
        .min_timeout_scale(1.0)
        .build()
        .unwrap();
    // A download of 60 lines, one a second.
    let app = Router::new().route("/", get(|| async { "hello\n" })).route(
        "/download",
        get(|| async {
            let lines = futures_util::stream::unfold(0, |sent| async move {
                if sent == 60 {
                    return None;
                }
                tokio::time::sleep(secs(1)).await;
                Some((Ok::<_, std::io::Error>("tick\n"), sent + 1))
            });
            axum::body::Body::from_stream(lines)
        }),
    );
    let http = HttpService::builder(app)
        .close_grace(secs(120))
        .build()
        .unwrap();
    let (limit, service) = evicting_stack(&overload, 1, idle_and_request_timeouts(&overload), http);
    let (victim, mut victim_client) = open(&service, "192.0.2.1:1");
    victim_client
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0; 4096];
    let n = within(PATIENCE, victim_client.read(&mut answer))
        .await
        .unwrap();
    assert!(answer[..n].ends_with(b"hello\n"));
    tokio::time::sleep(secs(2)).await;

    // Chosen while idle between requests; its next request, a download, is in its
    // stream before it hears of the eviction.
    let (_newcomer, _newcomer_client) = open(&service, "192.0.2.2:1");
    victim_client
        .write_all(b"GET /download HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::task::yield_now().await;
    assert_eq!(overload.stats().evicted_idle, 1);
    let evicted_at = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    for _ in 0..1000 {
        match within(secs(600), victim_client.read(&mut buffer)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    let ticks = received.windows(5).filter(|w| w == b"tick\n").count();
    let ended = within(PATIENCE, victim).await.unwrap();
    assert_eq!(
        ticks,
        60,
        "the download was cut after {ticks} of its 60 lines, {:?} after the eviction (close \
         grace 120 s); the connection ended {ended:?}",
        evicted_at.elapsed()
    );
    assert_eq!(limit.stats().refused, 0);
}
