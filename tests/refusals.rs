//! Refusals answered in HTTP (`refusal_http`): real hyper and tonic clients over
//! in-memory streams, on paused time.

mod support;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_test::{assert_pending, assert_ready_err, task};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    admission::{Reason, ResponseFuture},
    limit::{ConnectionLimitLayer, GlobalSlot},
    rate_limit::{Rate, RateLimitLayer},
};

use support::*;

/// An admitted connection's future: it holds its place until the test ends.
type Held = std::future::Pending<Result<(), Infallible>>;

/// The connection-level service under test, which holds every admitted connection.
type Holding = tower::util::ServiceFn<fn(Conn<DuplexStream>) -> Held>;

/// A service under `layer` that has admitted one connection already, which holds the
/// cap or has spent the peer's rate.
async fn after_one<L>(layer: L) -> L::Service
where
    L: Layer<Holding>,
    L::Service: Service<Conn<DuplexStream>, Response = (), Error = BoxError>,
    <L::Service as Service<Conn<DuplexStream>>>::Future: Send + 'static,
{
    let hold: fn(Conn<DuplexStream>) -> Held = |_| std::future::pending();
    let mut service = layer.layer(service_fn(hold));
    let admitted = service
        .ready()
        .await
        .unwrap()
        .call(conn_from("192.0.2.1:1"));
    tokio::spawn(admitted);
    service
}

/// Connects from the same peer to a service that refuses it: the refusal runs in a
/// task; the client's end is returned.
async fn refused<S>(
    service: &mut S,
) -> (DuplexStream, tokio::task::JoinHandle<Result<(), BoxError>>)
where
    S: Service<Conn<DuplexStream>, Response = (), Error = BoxError>,
    S::Future: Send + 'static,
{
    let (conn, client) = duplex_conn("192.0.2.1:2");
    let refusal = service.ready().await.unwrap().call(conn);
    (client, tokio::spawn(refusal))
}

fn cap() -> ConnectionLimitLayer {
    ConnectionLimitLayer::builder(1)
        .refusal_http()
        .refusal_write_timeout(PATIENCE)
        .build()
        .unwrap()
}

fn rate() -> RateLimitLayer {
    RateLimitLayer::builder()
        .per_peer(Rate::per_minute(1))
        .refusal_http()
        .refusal_write_timeout(PATIENCE)
        .build()
        .unwrap()
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .headers
        .get(name)
        .map(|value| value.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn an_http1_client_over_its_rate_gets_429_with_retry_after() {
    let mut service = after_one(rate()).await;
    let (client, refusal) = refused(&mut service).await;

    let answer = Http1Client::connect(client).await.get("/").await.unwrap();
    assert_eq!(answer.status, 429);
    assert_eq!(header(&answer, "retry-after"), Some("60"));
    assert_eq!(header(&answer, "connection"), Some("close"));
    assert_eq!(answer.body, "this client connects too fast\n");
    let error = refusal.await.unwrap().unwrap_err();
    assert!(matches!(rejected(&error).reason(), Reason::PeerRate { .. }));
}

#[tokio::test(start_paused = true)]
async fn an_http1_client_over_the_cap_gets_503_without_retry_after() {
    let mut service = after_one(cap()).await;
    let (client, refusal) = refused(&mut service).await;

    let answer = Http1Client::connect(client).await.get("/").await.unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(header(&answer, "retry-after"), None);
    assert_eq!(header(&answer, "connection"), Some("close"));
    let error = refusal.await.unwrap().unwrap_err();
    assert_eq!(
        rejected(&error).reason(),
        &Reason::ConnectionLimit { limit: 1 }
    );
}

#[tokio::test(start_paused = true)]
async fn an_http2_client_gets_the_status_on_its_request_then_goaway() {
    let (client, refusal) = refused(&mut after_one(cap()).await).await;
    http2_is_told(client, refusal, 503).await;
    let (client, refusal) = refused(&mut after_one(rate()).await).await;
    http2_is_told(client, refusal, 429).await;
}

async fn http2_is_told(
    client: DuplexStream,
    refusal: tokio::task::JoinHandle<Result<(), BoxError>>,
    status: u16,
) {
    let mut client = Http2Client::connect(client).await;
    let answer = client.get("/").await.unwrap();
    assert_eq!(answer.status, status);
    assert_eq!(answer.version, http::Version::HTTP_2);
    // GOAWAY: the client's connection ends by itself.
    within(PATIENCE, client.driver).await.unwrap().unwrap();
    assert!(refusal.await.unwrap().is_err());
}

/// A tonic client's health check over `client`.
async fn health_check(client: DuplexStream) -> tonic::Status {
    let client = Arc::new(Mutex::new(Some(client)));
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector_lazy(service_fn(move |_| {
            let stream = client.lock().unwrap().take().expect("one connection");
            async move { Ok::<_, std::io::Error>(TokioIo::new(stream)) }
        }));
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err()
}

#[tokio::test(start_paused = true)]
async fn a_grpc_client_gets_a_status_not_a_transport_error() {
    let mut service = after_one(cap()).await;
    let (client, _refusal) = refused(&mut service).await;
    let status = health_check(client).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "the server is at its connection limit");

    let mut service = after_one(rate()).await;
    let (client, _refusal) = refused(&mut service).await;
    let status = health_check(client).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "this client connects too fast");
}

#[tokio::test(start_paused = true)]
async fn one_request_is_answered_and_no_more() {
    let mut service = after_one(cap()).await;
    let (mut client, refusal) = refused(&mut service).await;
    client
        .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut told = String::new();
    client.read_to_string(&mut told).await.unwrap();
    assert_eq!(told.matches("HTTP/1.1 503").count(), 1, "{told}");
    drop(client);
    assert!(refusal.await.unwrap().is_err());
}

/// A refused connection polled by the test: its future and the client's end.
async fn refusal_task(
    service: &mut tower_bouncer::limit::ConnectionLimit<Holding>,
) -> (
    task::Spawn<ResponseFuture<Held, DuplexStream, Option<GlobalSlot>>>,
    DuplexStream,
) {
    let (conn, client) = duplex_conn("192.0.2.1:2");
    let refusal = service.ready().await.unwrap().call(conn);
    (task::spawn(refusal), client)
}

/// A cap of one that answers refusals over HTTP within 250 ms.
fn refusing_within_250_ms() -> ConnectionLimitLayer {
    ConnectionLimitLayer::builder(1)
        .refusal_http()
        .refusal_write_timeout(Duration::from_millis(250))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_at_the_write_timeout() {
    let mut service = after_one(refusing_within_250_ms()).await;
    let (mut refusal, mut client) = refusal_task(&mut service).await;
    assert_pending!(refusal.poll());
    tokio::time::advance(Duration::from_millis(249)).await;
    assert_pending!(refusal.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(refusal.is_woken());
    assert_ready_err!(refusal.poll());
    assert_eq!(client.read(&mut [0; 16]).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn under_a_flood_of_refusals_only_32_are_answered_the_others_closed_at_once() {
    let mut service = after_one(cap()).await;
    let mut waiting = Vec::new();
    for _ in 0..32 {
        let (mut refusal, client) = refusal_task(&mut service).await;
        assert_pending!(refusal.poll());
        waiting.push((refusal, client));
    }
    for _ in 0..8 {
        let (mut refusal, mut client) = refusal_task(&mut service).await;
        assert_ready_err!(refusal.poll());
        assert_eq!(client.read(&mut [0; 16]).await.unwrap(), 0);
    }
    // Once a waiting one ends, the next waits for its request again.
    drop(waiting.pop());
    let (mut refusal, _client) = refusal_task(&mut service).await;
    assert_pending!(refusal.poll());
}

#[tokio::test(start_paused = true)]
async fn a_tls_client_is_closed_at_once_without_a_cleartext_answer() {
    let mut service = after_one(cap()).await;
    let (mut refusal, mut client) = refusal_task(&mut service).await;
    // The start of a TLS ClientHello record.
    client
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    assert_ready_err!(refusal.poll());
    let mut told = Vec::new();
    client.read_to_end(&mut told).await.unwrap();
    assert!(told.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_banned_http1_client_gets_429_with_the_ban_s_remaining_time() {
    let login = tower_bouncer::login::Login::builder()
        .refusal_http()
        .refusal_write_timeout(PATIENCE)
        .build()
        .unwrap();
    login
        .bans()
        .ban("192.0.2.1".parse().unwrap(), Duration::from_millis(90_500))
        .unwrap();
    let hold: fn(Conn<DuplexStream>) -> Held = |_| std::future::pending();
    let mut service = login.ban_layer().layer(service_fn(hold));
    let (client, refusal) = refused(&mut service).await;

    let answer = Http1Client::connect(client).await.get("/").await.unwrap();
    assert_eq!(answer.status, 429);
    assert_eq!(header(&answer, "retry-after"), Some("91"));
    let error = refusal.await.unwrap().unwrap_err();
    assert!(matches!(rejected(&error).reason(), Reason::Banned { .. }));
}

/// Answers nothing and holds its connection until the client closes it.
async fn hold_until_closed(mut conn: Conn<tokio::net::TcpStream>) -> Result<(), BoxError> {
    conn.io_mut().read_to_end(&mut Vec::new()).await?;
    Ok(())
}

#[tokio::test]
async fn on_real_sockets_a_refused_request_with_a_body_gets_its_503() {
    let layer = ConnectionLimitLayer::builder(1)
        .refusal_http()
        .refusal_write_timeout(PATIENCE)
        .build()
        .unwrap();
    let service = layer.layer(service_fn(hold_until_closed));
    let server = LoopbackServer::start(service, PATIENCE).await;
    let _held = connect_from(2, server.addr).await;
    // Admitted before the next one is refused.
    within(PATIENCE, async {
        while layer.stats().live == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;

    // A request with a body, which the refusal never reads as one.
    let body: &'static str = Box::leak("x".repeat(32 * 1024).into_boxed_str());
    let mut client = Http1Client::connect(connect_from(3, server.addr).await).await;
    let answer = within(PATIENCE, client.post("/", body)).await.unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.body, "the server is at its connection limit\n");
}

/// Reads one HTTP/2 frame: its type and stream; `None` at the end.
async fn read_frame(client: &mut DuplexStream) -> Option<(u8, u32)> {
    let mut head = [0; 9];
    client.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    client.read_exact(&mut vec![0; len]).await.ok()?;
    Some((head[3], stream))
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;

/// `GET /` on `stream`, ending it (HPACK: `:method GET`, `:scheme http`, `:path /`
/// from the static table, `:authority t`).
fn http2_get(stream: u32) -> Vec<u8> {
    let mut frames = vec![0, 0, 6, HEADERS, 0x05];
    frames.extend_from_slice(&stream.to_be_bytes());
    frames.extend_from_slice(&[0x82, 0x86, 0x84, 0x41, 0x01, b't']);
    frames
}

/// [`http2_get`], then the stream's reset (CANCEL) at once.
fn http2_get_and_reset(stream: u32) -> Vec<u8> {
    let mut frames = http2_get(stream);
    frames.extend_from_slice(&[0, 0, 4, RST_STREAM, 0]);
    frames.extend_from_slice(&stream.to_be_bytes());
    frames.extend_from_slice(&8u32.to_be_bytes());
    frames
}

/// Tasks alive on the runtime, once those that were about to end have ended.
async fn tasks_alive() -> usize {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// An HTTP/2 client that never acknowledges a PING (so never gets the GOAWAY that ends
/// the connection) opens up to 20 streams one after the other with `client_sends`, and
/// waits for each one's answer, reset or a second; returns how many streams it opened
/// before the connection ended, and how many were answered. No task is left behind.
async fn streams_until_cut(client_sends: fn(u32) -> Vec<u8>) -> (u32, u32) {
    let mut service = after_one(cap()).await;
    let tasks = tasks_alive().await;
    let (mut client, refusal) = refused(&mut service).await;
    client
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (mut opened, mut answered) = (0, 0);
    'streams: for stream in (1..40).step_by(2) {
        if client.write_all(&client_sends(stream)).await.is_err() {
            break;
        }
        opened += 1;
        loop {
            match tokio::time::timeout(Duration::from_secs(1), read_frame(&mut client)).await {
                Ok(Some((HEADERS, id))) if id == stream => {
                    answered += 1;
                    continue 'streams;
                }
                Ok(Some((RST_STREAM, id))) if id == stream => continue 'streams,
                Ok(Some(_)) => {}
                Ok(None) => break 'streams,
                Err(_) => continue 'streams,
            }
        }
    }
    drop(client);
    assert!(within(PATIENCE, refusal).await.unwrap().is_err());
    assert_eq!(
        tasks_alive().await,
        tasks,
        "a task of the refused connection is left"
    );
    (opened, answered)
}

#[tokio::test(start_paused = true)]
async fn a_refused_http2_client_gets_one_answer_and_is_cut_at_its_second_stream() {
    assert_eq!(streams_until_cut(http2_get).await, (2, 1));
    // Also when it resets each stream as soon as it opens it.
    assert_eq!(streams_until_cut(http2_get_and_reset).await.0, 2);
}

#[tokio::test(start_paused = true)]
async fn an_http1_client_that_half_closes_after_its_request_gets_its_answer() {
    let mut service = after_one(cap()).await;
    let (mut refusal, mut client) = refusal_task(&mut service).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    // Answered and closed without waiting for anything.
    assert_ready_err!(refusal.poll());
    let mut told = String::new();
    client.read_to_string(&mut told).await.unwrap();
    assert!(told.starts_with("HTTP/1.1 503"), "{told:?}");
    assert!(
        told.ends_with("the server is at its connection limit\n"),
        "{told:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_closes_before_its_request_is_closed_unanswered() {
    let mut service = after_one(cap()).await;
    for sent in [&b""[..], b"PRI * HTTP/2.0\r\n", b"GET / HTTP/1.1\r\nho"] {
        let (mut refusal, mut client) = refusal_task(&mut service).await;
        client.write_all(sent).await.unwrap();
        client.shutdown().await.unwrap();
        assert_ready_err!(refusal.poll());
        let mut told = Vec::new();
        client.read_to_end(&mut told).await.unwrap();
        assert!(told.is_empty(), "{:?}", String::from_utf8_lossy(&told));
    }
}

#[tokio::test(start_paused = true)]
async fn an_http2_client_that_opens_no_window_is_cut_at_the_write_timeout_leaving_no_task() {
    let mut service = after_one(refusing_within_250_ms()).await;
    let tasks = tasks_alive().await;
    let (mut refusal, mut client) = refusal_task(&mut service).await;
    client.write_all(HTTP2_GET_WITH_NO_WINDOW).await.unwrap();
    assert_pending!(refusal.poll());
    tokio::time::advance(Duration::from_millis(249)).await;
    assert_pending!(refusal.poll());
    // The answer waits for a window in hyper's task for its stream.
    assert_eq!(tasks_alive().await, tasks + 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_ready_err!(refusal.poll());
    assert_eq!(
        tasks_alive().await,
        tasks,
        "a task of the refused connection is left"
    );
}

/// A browser's request whose head is over 8 KiB (a site's cookies): the server serves
/// such heads (hyper's limit is some 400 KiB), and refused, it is to be told `503` with
/// its reason, as every refused client is, not `431 Request Header Fields Too Large`,
/// which blames its cookies and tells it nothing of when to come back.
#[tokio::test(start_paused = true)]
async fn an_http1_request_with_a_large_head_gets_the_refusal() {
    let mut service = after_one(cap()).await;
    let (mut client, refusal) = refused(&mut service).await;
    let cookie = "c".repeat(10 * 1024);
    client
        .write_all(format!("GET / HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut told = String::new();
    within(PATIENCE, client.read_to_string(&mut told))
        .await
        .unwrap();
    assert!(told.starts_with("HTTP/1.1 503"), "{told:?}");
    assert!(
        told.ends_with("the server is at its connection limit\n"),
        "{told:?}"
    );
    assert!(refusal.await.unwrap().is_err());
}

/// The same on HTTP/2, whose header list hyper limits on its own.
#[tokio::test(start_paused = true)]
async fn an_http2_request_with_a_large_head_gets_the_refusal() {
    let mut service = after_one(cap()).await;
    let (client, refusal) = refused(&mut service).await;
    let mut client = Http2Client::connect(client).await;
    let answer = client.get_as("/", &"c".repeat(10 * 1024)).await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer
            .body
            .ends_with("the server is at its connection limit\n"),
        "{}",
        answer.body
    );
    assert!(refusal.await.unwrap().is_err());
}
