//! Upgraded HTTP connections (WebSocket, tunnels) stay under every protection until
//! their socket is dropped: counted by the caps, timed, drained and cut.

mod support;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Empty;
use hyper::body::Incoming;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    sync::mpsc,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    admission::Reason,
    http::HttpService,
    limit::ConnectionLimitLayer,
    timeout::{TimeoutError, TimeoutLayer},
};

use support::*;

const UPGRADE_REQUEST: &[u8] =
    b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The answer that upgrades a connection to the made-up protocol `x`.
fn switching_protocols() -> Response<Empty<Bytes>> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "x")
        .body(Empty::new())
        .unwrap()
}

/// Hands the stream an upgrade takes to a task that holds it for `hold` without reading,
/// as a WebSocket handler waiting for its application does; `taken` hears when the task
/// has it.
fn hold_taken_stream(
    on_upgrade: hyper::upgrade::OnUpgrade,
    hold: Duration,
    taken: mpsc::UnboundedSender<()>,
) {
    tokio::spawn(async move {
        let stream = on_upgrade.await.expect("upgraded");
        taken.send(()).ok();
        tokio::time::sleep(hold).await;
        drop(stream);
    });
}

/// What an application makes of each request, at once: its response.
trait Answer: Fn(&mut Request<Incoming>) -> Response<Empty<Bytes>> + Clone + Send + 'static {}

impl<F> Answer for F where
    F: Fn(&mut Request<Incoming>) -> Response<Empty<Bytes>> + Clone + Send + 'static
{
}

/// An application that answers each request as `answer` says.
fn app(
    answer: impl Answer,
) -> impl Service<
    Request<Incoming>,
    Response = Response<Empty<Bytes>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |mut request: Request<Incoming>| {
        let response = answer(&mut request);
        async { Ok(response) }
    })
}

/// Upgrades every request, its stream held for `hold` (see
/// [`hold_taken_stream`]); `upgraded` hears when the task has it.
fn upgrading(hold: Duration, upgraded: mpsc::UnboundedSender<()>) -> impl Answer {
    move |request: &mut Request<Incoming>| {
        hold_taken_stream(hyper::upgrade::on(request), hold, upgraded.clone());
        switching_protocols()
    }
}

/// Upgrades every request, its stream read by a task until it fails, as a WebSocket
/// echo does; `ended` hears when that task is done.
fn reading(ended: mpsc::UnboundedSender<std::io::Result<usize>>) -> impl Answer {
    move |request: &mut Request<Incoming>| {
        let ended = ended.clone();
        let on_upgrade = hyper::upgrade::on(request);
        tokio::spawn(async move {
            let mut stream = hyper_util::rt::TokioIo::new(on_upgrade.await.expect("upgraded"));
            let mut buf = [0u8; 64];
            let outcome = loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break Ok(0),
                    Ok(_) => {}
                    Err(error) => break Err(error),
                }
            };
            ended.send(outcome).ok();
        });
        switching_protocols()
    }
}

/// Answers `CONNECT` with `200`, the tunnel held for an hour (see
/// [`hold_taken_stream`]); other requests `200` without taking their stream.
/// `tunnelled` hears when the task has the tunnel.
fn tunnelling(tunnelled: mpsc::UnboundedSender<()>) -> impl Answer {
    move |request: &mut Request<Incoming>| {
        if request.method() == http::Method::CONNECT {
            hold_taken_stream(hyper::upgrade::on(request), secs(3600), tunnelled.clone());
        }
        Response::new(Empty::new())
    }
}

/// Serves `answer` on one in-memory connection with a 2 s close grace: the connection's
/// task, the client's end, and the connection's close signal.
fn served_with_a_close_grace_of_2_s(
    answer: impl Answer,
) -> (
    tokio::task::JoinHandle<Result<(), BoxError>>,
    DuplexStream,
    tower_bouncer::GracefulClose,
) {
    let service = HttpService::builder(app(answer))
        .close_grace(secs(2))
        .build()
        .unwrap();
    let (mut conn, client) = duplex_conn("192.0.2.1:1");
    let close = conn.graceful_close();
    (tokio::spawn(service.oneshot(conn)), client, close)
}

/// Sends `request` and reads the response head, which must start with `status`.
async fn exchange(client: &mut DuplexStream, request: &[u8], status: &[u8]) {
    client.write_all(request).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(client.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(status), "{head:?}");
}

/// Sends the upgrade request and reads the `101` head.
async fn upgrade(client: &mut DuplexStream) {
    exchange(client, UPGRADE_REQUEST, b"HTTP/1.1 101").await;
}

/// Reads until the server closes its end; `Ok(())` at EOF, an error if the client reads
/// data instead.
async fn eof(client: &mut DuplexStream) {
    let mut byte = [0u8; 1];
    assert_eq!(client.read(&mut byte).await.unwrap(), 0, "expected EOF");
}

#[tokio::test(start_paused = true)]
async fn an_upgraded_connection_keeps_its_slot_and_is_closed_at_the_idle_timeout() {
    let limit = ConnectionLimitLayer::builder(1).build().unwrap();
    let timeouts = TimeoutLayer::builder().idle(secs(5)).build().unwrap();
    let (upgraded, mut upgraded_rx) = mpsc::unbounded_channel();
    let mut service = ServiceBuilder::new()
        .layer(limit.clone())
        .layer(timeouts.clone())
        .service(HttpService::new(app(upgrading(secs(3600), upgraded))));

    let (conn, mut client) = duplex_conn("192.0.2.1:1");
    let connection = tokio::spawn(
        ServiceExt::<Conn<DuplexStream>>::ready(&mut service)
            .await
            .unwrap()
            .call(conn),
    );
    let began = tokio::time::Instant::now();
    upgrade(&mut client).await;
    upgraded_rx.recv().await.unwrap();

    assert_eq!(
        limit.stats().live,
        1,
        "the upgraded connection holds its slot"
    );
    let (second, _second_client) = duplex_conn("192.0.2.2:2");
    let refused = ServiceExt::<Conn<DuplexStream>>::ready(&mut service)
        .await
        .unwrap()
        .call(second)
        .await
        .unwrap_err();
    assert_eq!(
        rejected(&refused).reason(),
        &Reason::ConnectionLimit { limit: 1 }
    );

    // Nothing moves on the upgraded stream: it is closed at the idle timeout, although
    // the task holding it would keep it for an hour.
    within(secs(7), eof(&mut client)).await;
    assert!(
        began.elapsed() <= secs(5) + secs(5) / 8,
        "{:?}",
        began.elapsed()
    );
    let outcome: Result<(), BoxError> = within(secs(1), connection).await.unwrap();
    let error = outcome.unwrap_err();
    let timeout = error
        .downcast_ref::<std::io::Error>()
        .and_then(|error| error.get_ref())
        .and_then(|inner| inner.downcast_ref::<TimeoutError>())
        .copied();
    assert_eq!(timeout, Some(TimeoutError::Idle(secs(5))), "{error}");
    assert_eq!(limit.stats().live, 0);
    assert_eq!(timeouts.stats().idle, 1);
}

#[tokio::test(start_paused = true)]
async fn a_holder_reading_a_stream_closed_at_the_idle_timeout_is_told_and_ends() {
    let timeouts = TimeoutLayer::builder().idle(secs(5)).build().unwrap();
    let (ended, mut ended_rx) = mpsc::unbounded_channel();
    let service = ServiceBuilder::new()
        .layer(timeouts)
        .service(HttpService::new(app(reading(ended))));
    let (conn, mut client) = duplex_conn("192.0.2.1:1");
    let connection = tokio::spawn(service.oneshot(conn));
    upgrade(&mut client).await;
    within(secs(7), eof(&mut client)).await;
    within(secs(1), connection).await.unwrap().unwrap_err();
    // The task that held the stream is not left waiting on it forever.
    let outcome = within(secs(1), ended_rx.recv()).await.unwrap();
    assert_eq!(
        outcome.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionAborted
    );
}

#[tokio::test(start_paused = true)]
async fn an_upgraded_connection_ends_when_its_holder_drops_the_stream() {
    let (upgraded, mut upgraded_rx) = mpsc::unbounded_channel();
    let service = HttpService::new(app(upgrading(secs(30), upgraded)));
    let (conn, mut client) = duplex_conn("192.0.2.1:1");
    let connection = tokio::spawn(service.oneshot(conn));
    upgrade(&mut client).await;
    upgraded_rx.recv().await.unwrap();
    tokio::time::sleep(secs(10)).await;
    assert!(
        !connection.is_finished(),
        "live while the holder has the stream"
    );
    within(secs(60), eof(&mut client)).await;
    within(secs(1), connection).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_upgraded_connection_asked_to_close_is_cut_after_the_close_grace() {
    let (upgraded, mut upgraded_rx) = mpsc::unbounded_channel();
    let (connection, mut client, close) =
        served_with_a_close_grace_of_2_s(upgrading(secs(3600), upgraded));
    upgrade(&mut client).await;
    upgraded_rx.recv().await.unwrap();

    let asked = tokio::time::Instant::now();
    close.request();
    within(secs(3), eof(&mut client)).await;
    assert_eq!(asked.elapsed(), secs(2));
    within(secs(1), connection).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_drains_an_upgraded_connection_and_cuts_it_at_the_deadline() {
    let (upgraded, mut upgraded_rx) = mpsc::unbounded_channel();
    let http = HttpService::builder(app(upgrading(secs(3600), upgraded)))
        .close_grace(secs(60))
        .build()
        .unwrap();
    let server = LoopbackServer::start(http, Duration::from_millis(300)).await;

    let mut stream = connect_from(1, server.addr).await;
    stream.write_all(UPGRADE_REQUEST).await.unwrap();
    within(PATIENCE, upgraded_rx.recv()).await.unwrap();

    let report = server.stop().await;
    assert_eq!(
        (report.drained, report.cut),
        (0, 1),
        "still live at the deadline"
    );
    let mut rest = Vec::new();
    within(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.starts_with(b"HTTP/1.1 101"), "then closed");
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_is_cut_after_the_close_grace_after_requests_that_asked_for_nothing() {
    let (tunnelled, mut tunnelled_rx) = mpsc::unbounded_channel();
    let (connection, mut client, close) = served_with_a_close_grace_of_2_s(tunnelling(tunnelled));
    // Served in place first, then taken by the tunnel.
    for _ in 0..2 {
        exchange(
            &mut client,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 200",
        )
        .await;
    }
    let connect = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n";
    exchange(&mut client, connect, b"HTTP/1.1 200").await;
    within(secs(1), tunnelled_rx.recv()).await.unwrap();

    let asked = tokio::time::Instant::now();
    close.request();
    within(secs(3), eof(&mut client)).await;
    assert_eq!(asked.elapsed(), secs(2));
    within(secs(1), connection).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_request_for_an_upgrade_answered_without_one_leaves_the_connection_serving() {
    let (tunnelled, _tunnelled_rx) = mpsc::unbounded_channel();
    let (connection, mut client, close) = served_with_a_close_grace_of_2_s(tunnelling(tunnelled));
    exchange(&mut client, UPGRADE_REQUEST, b"HTTP/1.1 200").await;
    exchange(
        &mut client,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HTTP/1.1 200",
    )
    .await;

    // Idle between requests: a close ends it at once.
    close.request();
    within(secs(1), eof(&mut client)).await;
    within(secs(1), connection).await.unwrap().unwrap();
}
