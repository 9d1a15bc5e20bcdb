//! The HTTP adapter's deadlines, on its own and under a timeout layer, on paused time:
//! protocol detection and HTTP/2's preface are bounded, an HTTP/2 connection is idle when
//! no stream is open (PINGs do not count) and is told so with a GOAWAY, every HTTP/2
//! request body is held to the request timeout until it is answered, a slow reader is
//! cut, and a grace means what its owner says.

mod support;

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    extract::RawQuery,
    routing::{get, post},
};
use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    task::JoinHandle,
    time::Instant,
};
use tower::{ServiceBuilder, ServiceExt};
use tower_bouncer::{
    BoxError,
    http::HttpService,
    serve::Server,
    timeout::{TimeoutError, TimeoutLayer},
};

use support::*;

const BIG: usize = 8 << 20;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/upload",
            post(|body: String| async move { format!("{} bytes\n", body.len()) }),
        )
        .route("/big", get(|| async { vec![b'x'; BIG] }))
        // Answers at once, then sends nothing (an event stream with no event yet).
        .route(
            "/quiet",
            get(|| async {
                Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>())
            }),
        )
        // Answers at once, and echoes the request's body as it streams in.
        .route(
            "/echo",
            post(|body: Body| async move { Body::from_stream(body.into_data_stream()) }),
        )
        .route(
            "/compute",
            post(|body: String| async move {
                // A handler that takes its time once it has the whole request.
                tokio::time::sleep(secs(40)).await;
                format!("{} bytes computed\n", body.len())
            }),
        )
        .route(
            "/sleep",
            get(|RawQuery(query): RawQuery| async move {
                let seconds: u64 = query.unwrap().parse().unwrap();
                tokio::time::sleep(secs(seconds)).await;
                "slept\n"
            }),
        )
        .route(
            "/events",
            get(|| async {
                // A server that writes slowly: a byte every 30 s, ten times.
                let events = futures_util::stream::unfold(0, |sent| async move {
                    if sent == 10 {
                        return None;
                    }
                    tokio::time::sleep(secs(30)).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from_static(b".")), sent + 1))
                });
                Body::from_stream(events)
            }),
        )
}

/// Serves one in-memory connection with `service`; returns its task and the client's end.
fn serve_one<S>(service: S) -> (JoinHandle<Result<(), BoxError>>, DuplexStream)
where
    S: tower::Service<
            tower_bouncer::Conn<DuplexStream>,
            Response = (),
            Error = BoxError,
            Future: Send + 'static,
        > + Send
        + 'static,
{
    let (conn, client) = duplex_conn("192.0.2.1:1");
    (tokio::spawn(service.oneshot(conn)), client)
}

/// The README's timeouts (idle 60 s, request 10 s, lifetime 1 h) over the adapter.
fn layered() -> (JoinHandle<Result<(), BoxError>>, DuplexStream) {
    let timeouts = TimeoutLayer::builder()
        .idle(secs(60))
        .request(secs(10))
        .lifetime(secs(3600))
        .build()
        .unwrap();
    serve_one(
        ServiceBuilder::new()
            .layer(timeouts)
            .service(HttpService::new(app())),
    )
}

/// The deadline a connection ended with.
fn timed_out(outcome: Result<(), BoxError>) -> TimeoutError {
    let error = outcome.expect_err("the connection should have timed out");
    let io = error
        .downcast_ref::<std::io::Error>()
        .unwrap_or_else(|| panic!("not an io::Error: {error}"));
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{error}");
    *io.get_ref()
        .and_then(|inner| inner.downcast_ref::<TimeoutError>())
        .expect("a TimeoutError inside")
}

/// Reads from `client` until `needle` has come, or the stream ends: what was read.
async fn read_until(client: &mut DuplexStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => seen.extend_from_slice(&buffer[..read]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The adapter's own head timeout (30 s) holds heads, not bodies: an HTTP/1 upload
/// whose body takes longer than that to come, after its head, is served.
#[tokio::test(start_paused = true)]
async fn an_http1_upload_slower_than_the_head_timeout_is_served() {
    let (connection, mut client) = serve_one(HttpService::new(app()));
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n")
        .await
        .unwrap();
    // 1 KiB a second: 64 s.
    for _ in 0..64 {
        tokio::time::sleep(secs(1)).await;
        assert!(!connection.is_finished(), "cut: {:?}", connection.await);
        client.write_all(&[b'x'; 1024]).await.unwrap();
    }
    let answer = within(secs(5), read_until(&mut client, "65536 bytes")).await;
    assert!(answer.contains("65536 bytes\n"), "{answer:?}");
    // The next request's head is timed again, from its first byte.
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let sent = Instant::now();
    assert_eq!(
        timed_out(within(secs(60), connection).await.unwrap()),
        TimeoutError::Request(secs(30))
    );
    assert!(
        sent.elapsed() <= secs(30) + secs(30) / 8,
        "{:?}",
        sent.elapsed()
    );
}

/// Under a timeout layer, an HTTP/1 request's body is held to the request timeout
/// until its handler answers. A handler that answers at once and streams the body back
/// as it comes (an echo, a proxy) has answered: the body's later bytes do not start a
/// request of their own.
#[tokio::test(start_paused = true)]
async fn an_http1_body_streaming_after_its_answer_is_not_held_to_the_request_timeout() {
    let (connection, mut client) = layered();
    client
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let head = within(secs(5), read_until(&mut client, "\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    // A chunk every 2 s for a minute, each echoed: past the 10 s request timeout, and
    // never idle for the 60 s idle timeout.
    for _ in 0..30 {
        tokio::time::sleep(secs(2)).await;
        assert!(!connection.is_finished(), "cut: {:?}", connection.await);
        client.write_all(b"1\r\nx\r\n").await.unwrap();
        let echoed = within(secs(5), read_until(&mut client, "x")).await;
        assert!(echoed.contains('x'), "{echoed:?}");
    }
    client.write_all(b"0\r\n\r\n").await.unwrap();
    let end = within(secs(5), read_until(&mut client, "0\r\n\r\n")).await;
    assert!(end.ends_with("0\r\n\r\n"), "{end:?}");
    // The connection's next request is timed from its first byte.
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let sent = Instant::now();
    assert_eq!(
        timed_out(within(secs(60), connection).await.unwrap()),
        TimeoutError::Request(secs(10))
    );
    assert!(
        sent.elapsed() <= secs(10) + secs(10) / 8,
        "{:?}",
        sent.elapsed()
    );
}

/// An HTTP/2 connection's preface and empty SETTINGS, as a client sends them.
const HTTP2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// A whole `GET /` on `stream` (HPACK: GET, http, `/`, authority `t`): one HEADERS
/// frame flagged END_HEADERS and END_STREAM.
fn http2_get(stream: u8) -> Vec<u8> {
    let mut frame = b"\0\0\x06\x01\x05\0\0\0".to_vec();
    frame.push(stream);
    frame.extend_from_slice(b"\x82\x86\x84\x41\x01t");
    frame
}

/// HTTP/2 frame types the tests read from the server.
const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

/// Reads one frame the server wrote: its type, flags, stream and payload; `None` at the
/// end.
async fn next_frame(client: &mut DuplexStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    client.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    client.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

/// Reads what the server writes until its idle goodbye, a GOAWAY and a PING (20 frames
/// at most); the PING's payload, for the client to acknowledge.
async fn goodbye_ping(client: &mut DuplexStream) -> Vec<u8> {
    let mut ping = None;
    let mut goaway = false;
    for _ in 0..20 {
        let Some((kind, flags, _, payload)) = within(secs(3600), next_frame(client)).await else {
            break;
        };
        goaway |= kind == GOAWAY;
        if kind == PING && flags & 0x1 == 0 {
            ping = Some(payload);
        }
        if goaway && ping.is_some() {
            break;
        }
    }
    ping.expect("the goodbye's PING")
}

/// Reads what the server writes until it closes (20 frames at most): whether it
/// answered `stream`, and the stream its last GOAWAY named as processed.
async fn answered_before_the_end(client: &mut DuplexStream, stream: u32) -> (bool, Option<u32>) {
    let mut answered = false;
    let mut last_goaway = None;
    for _ in 0..20 {
        let Some((kind, _, on, payload)) = within(secs(3600), next_frame(client)).await else {
            break;
        };
        answered |= kind == HEADERS && on == stream;
        if kind == GOAWAY {
            last_goaway = Some(u32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ]));
        }
    }
    (answered, last_goaway)
}

/// The same request, padded with 200 bytes: the frame's header (flagged END_HEADERS
/// and END_STREAM) and its payload's first bytes. What a client trickles after them
/// is the padding.
fn http2_padded_get_start(stream: u8) -> Vec<u8> {
    let mut frame = b"\0\0\xcf\x01\x0d\0\0\0".to_vec();
    frame.push(stream);
    frame.extend_from_slice(b"\xc8\x82\x86\x84\x41\x01t");
    frame
}

/// Sends `client` a byte of padding every 5 s, 200 at most.
fn trickle(mut client: DuplexStream) -> JoinHandle<DuplexStream> {
    tokio::spawn(async move {
        for _ in 0..200 {
            tokio::time::sleep(secs(5)).await;
            if client.write_all(b"\0").await.is_err() {
                break;
            }
        }
        client
    })
}

/// An HTTP/2 client (the `h2` crate, for PINGs and body trickles) on `io`.
async fn h2_client(
    io: DuplexStream,
    builder: &h2::client::Builder,
) -> (h2::client::SendRequest<Bytes>, h2::PingPong) {
    let (sender, mut connection) = builder.handshake(io).await.unwrap();
    let pings = connection.ping_pong().unwrap();
    tokio::spawn(async move {
        connection.await.ok();
    });
    (sender, pings)
}

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://localhost{path}"))
        .body(())
        .unwrap()
}

mod on_its_own {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_byte_then_silence_is_cut_at_the_request_head_deadline() {
        let began = Instant::now();
        let (connection, mut client) = serve_one(HttpService::new(app()));
        client.write_all(b"P").await.unwrap();
        let outcome = within(secs(3600), connection).await.unwrap();
        assert_eq!(timed_out(outcome), TimeoutError::Request(secs(30)));
        assert_eq!(began.elapsed(), secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_preface_then_silence_is_cut_at_the_request_head_deadline() {
        let (connection, mut client) = serve_one(HttpService::new(app()));
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let outcome = within(secs(3600), connection).await.unwrap();
        assert_eq!(timed_out(outcome), TimeoutError::Request(secs(30)));
    }

    /// The first headers are in once their frame's payload is, not its header: flagged
    /// as whole, and trickled after that, they are held to the head deadline.
    #[tokio::test(start_paused = true)]
    async fn http2_first_headers_trickled_after_their_frames_header_are_cut_at_the_head_deadline() {
        let began = Instant::now();
        let (connection, mut client) = serve_one(HttpService::new(app()));
        client.write_all(HTTP2_START).await.unwrap();
        client.write_all(&http2_padded_get_start(1)).await.unwrap();
        let trickling = trickle(client);
        let outcome = within(secs(3600), connection).await.unwrap();
        trickling.abort();
        assert_eq!(timed_out(outcome), TimeoutError::Request(secs(30)));
        assert!(
            began.elapsed() <= secs(30) + secs(30) / 8,
            "{:?}",
            began.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_with_no_open_stream_is_closed_at_the_idle_timeout() {
        let (connection, client) = serve_one(HttpService::new(app()));
        let (mut sender, mut pings) = h2_client(client, &h2::client::Builder::new()).await;
        let (response, _) = sender.send_request(h2_get("/"), true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        let quiet = Instant::now();
        // PINGs every 10 s are not requests: the connection is idle all the same.
        let keep_alive = tokio::spawn(async move {
            for _ in 0..360 {
                tokio::time::sleep(secs(10)).await;
                if pings.ping(h2::Ping::opaque()).await.is_err() {
                    break;
                }
            }
        });
        let outcome = within(secs(3600), connection).await.unwrap();
        assert_eq!(timed_out(outcome), TimeoutError::Idle(secs(60)));
        let idle = quiet.elapsed();
        assert!(
            idle >= secs(60) && idle <= secs(60) + secs(60) / 8,
            "{idle:?}"
        );
        keep_alive.abort();
    }

    /// An idle HTTP/2 connection has no stream open: a GOAWAY closes it at once, and
    /// tells the client, as gRPC servers do at their idle timeout (MAX_CONNECTION_IDLE),
    /// that no request it sends now will be served. Without one, a gRPC client whose
    /// call leaves as the connection is cut cannot tell whether it ran, and fails it
    /// (UNAVAILABLE) instead of retrying it on a new connection.
    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_closed_at_the_idle_timeout_is_told_so_with_a_goaway() {
        let (connection, mut client) = serve_one(HttpService::new(app()));
        client.write_all(HTTP2_START).await.unwrap();
        client.write_all(&http2_get(1)).await.unwrap();
        // Everything the server sends, until it closes: its SETTINGS, the answer, ...
        let mut sent = Vec::new();
        let read = within(secs(3600), client.read_to_end(&mut sent)).await;
        let outcome = within(secs(5), connection).await.unwrap();
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 9 <= sent.len() {
            let len = usize::from(sent[at]) << 16
                | usize::from(sent[at + 1]) << 8
                | usize::from(sent[at + 2]);
            frames.push(sent[at + 3]);
            at += 9 + len;
        }
        assert!(
            frames.contains(&GOAWAY),
            "frame types sent {frames:?}, then {read:?}; the connection ended {outcome:?}"
        );
    }

    /// A client whose call leaves as the idle timeout's GOAWAY arrives (the case the
    /// goodbye is for) sends it before it reads the GOAWAY: h2 accepts the stream (its
    /// first GOAWAY names no last stream, and the second, sent once the client
    /// acknowledges its PING, names this one as processed), so the client waits for the
    /// answer and will not retry it. The server must then serve it; the goodbye's cut,
    /// a second after the GOAWAY, drops it instead when its handler takes longer.
    #[tokio::test(start_paused = true)]
    async fn a_stream_the_client_opens_as_the_idle_goaway_arrives_is_served_to_its_end() {
        let (connection, mut client) = serve_one(HttpService::new(app()));
        client.write_all(HTTP2_START).await.unwrap();
        client.write_all(&http2_get(1)).await.unwrap();
        // The answer to stream 1, then, 60 s later, the goodbye: GOAWAY and a PING.
        let ping = goodbye_ping(&mut client).await;
        let told_at = Instant::now();
        // The call that was on its way (`GET /sleep?3` on stream 3), then the PING's
        // acknowledgement.
        let mut call = b"\0\0\x0f\x01\x05\0\0\0\x03\x82\x86\x04\x08/sleep?3\x41\x01t".to_vec();
        call.extend_from_slice(b"\0\0\x08\x06\x01\0\0\0\0");
        call.extend_from_slice(&ping);
        client.write_all(&call).await.unwrap();
        let (answered, last_goaway) = answered_before_the_end(&mut client, 3).await;
        let outcome = within(secs(5), connection).await.unwrap();
        assert!(
            answered,
            "stream 3 unanswered; the last GOAWAY named {last_goaway:?} as processed; the connection \
             ended {outcome:?}, {:?} after the goodbye",
            told_at.elapsed()
        );
    }
}

mod on_its_own_slow_readers_and_handlers {
    use super::*;

    /// An HTTP/2 client that opens no window for the response: its `GET /` is answered
    /// with headers, and the body waits for the client forever.
    async fn never_taking(
        connection: JoinHandle<Result<(), BoxError>>,
        client: DuplexStream,
        pings_every: Duration,
    ) -> Duration {
        let mut builder = h2::client::Builder::new();
        builder.initial_window_size(0);
        let (mut sender, mut pings) = h2_client(client, &builder).await;
        let (response, _) = sender.send_request(h2_get("/"), true).unwrap();
        let response = within(secs(60), response).await.unwrap();
        assert_eq!(response.status(), 200);
        let began = Instant::now();
        // PING acknowledgements are written bytes, but not data taken.
        let keep_alive = tokio::spawn(async move {
            for _ in 0..100_000 {
                tokio::time::sleep(pings_every).await;
                if pings.ping(h2::Ping::opaque()).await.is_err() {
                    break;
                }
            }
        });
        let outcome = within(secs(3600), connection).await.unwrap();
        assert!(matches!(timed_out(outcome), TimeoutError::Idle(_)));
        keep_alive.abort();
        began.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_never_takes_is_idle() {
        let (connection, client) = serve_one(HttpService::new(app()));
        let lasted = never_taking(connection, client, secs(3600)).await;
        assert!(lasted <= secs(60) + secs(60) / 8, "{lasted:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn pings_do_not_count_as_data_taken() {
        let (connection, client) = serve_one(HttpService::new(app()));
        let lasted = never_taking(connection, client, Duration::from_millis(50)).await;
        assert!(lasted <= secs(60) + secs(60) / 8, "{lasted:?}");
    }

    /// An answered stream whose client streams data to it (a gRPC client stream) is
    /// not idle, though nothing is written back: its data moves it, as PINGs do not.
    /// (Under a layer's request timeout, the stream's body would be held to that.)
    #[tokio::test(start_paused = true)]
    async fn a_client_streaming_to_an_answered_http2_stream_is_not_idle() {
        let (connection, client) = serve_one(HttpService::new(app()));
        let (mut sender, _pings) = h2_client(client, &h2::client::Builder::new()).await;
        // Answered at once with a body that sends nothing; the request's body goes on.
        let (response, mut body) = sender.send_request(h2_get("/quiet"), false).unwrap();
        let response = within(secs(5), response).await.unwrap();
        assert_eq!(response.status(), 200);
        let _answer = response.into_body();
        // A byte every 30 s for five minutes: past the 60 s idle timeout many times.
        for _ in 0..10 {
            tokio::time::sleep(secs(30)).await;
            assert!(!connection.is_finished(), "cut: {:?}", connection.await);
            body.send_data(Bytes::from_static(b"x"), false).unwrap();
        }
        tokio::time::sleep(secs(30)).await;
        assert!(!connection.is_finished(), "cut: {:?}", connection.await);
        // Then nothing moves: idle.
        let outcome = within(secs(120), connection).await.unwrap();
        assert_eq!(timed_out(outcome), TimeoutError::Idle(secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_slower_than_the_head_deadline_is_not_cut() {
        let (connection, client) = serve_one(HttpService::new(app()));
        let mut h1 = Http1Client::connect(client).await;
        let answer = within(secs(120), h1.post("/compute", "hello"))
            .await
            .unwrap();
        assert_eq!(answer.body, "5 bytes computed\n");
        assert!(!connection.is_finished());
    }

    /// A request pipelined behind a slow handler's waits, its head whole, until that
    /// handler answers: the wait is the handler's, not the client's, as for the handler's
    /// own request above.
    #[tokio::test(start_paused = true)]
    async fn a_request_pipelined_behind_a_handler_slower_than_the_head_deadline_is_served() {
        let (connection, mut client) = serve_one(HttpService::new(app()));
        client
            .write_all(b"GET /sleep?40 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(secs(1)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answers = within(secs(120), read_until(&mut client, "hello\n")).await;
        assert!(
            answers.contains("slept\n") && answers.contains("hello\n"),
            "answered {answers:?}; the connection ended {:?}",
            within(secs(1), connection).await.unwrap()
        );
        assert!(!connection.is_finished());
    }
}

mod under_a_timeout_layer {
    use super::*;

    /// A request pipelined behind a slow handler's is whole in hyper's buffer, and
    /// waits for that handler's answer: the request timeout holds a request "from its
    /// first byte until its head is in", not the handler ahead of it.
    #[tokio::test(start_paused = true)]
    async fn a_request_pipelined_behind_a_handler_slower_than_the_request_timeout_is_served() {
        let (connection, mut client) = layered();
        client
            .write_all(b"GET /sleep?15 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(secs(1)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answers = within(secs(60), read_until(&mut client, "hello\n")).await;
        assert!(
            answers.contains("slept\n") && answers.contains("hello\n"),
            "answered {answers:?}; the connection ended {:?}",
            within(secs(1), connection).await.unwrap()
        );
        assert!(!connection.is_finished());
    }

    /// A head pipelined behind a slow handler, and left unfinished, is timed from the
    /// end of the exchange ahead of it, not its first byte: cut at the request timeout
    /// after the slow answer, not before it.
    #[tokio::test(start_paused = true)]
    async fn a_head_left_unfinished_behind_a_slow_handler_is_timed_from_that_handlers_answer() {
        let (connection, mut client) = layered();
        client
            .write_all(b"GET /sleep?15 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(secs(1)).await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let answer = within(secs(60), read_until(&mut client, "slept\n")).await;
        assert!(answer.contains("slept\n"), "{answer:?}");
        let answered = Instant::now();
        assert_eq!(
            timed_out(within(secs(60), connection).await.unwrap()),
            TimeoutError::Request(secs(10))
        );
        let waited = answered.elapsed();
        assert!(
            waited >= secs(10) && waited <= secs(10) + secs(10) / 8,
            "{waited:?}"
        );
    }

    /// The same behind a response that streams longer than the request timeout (a
    /// download, server-sent events): the queued request's head is in, and waits for
    /// the server.
    #[tokio::test(start_paused = true)]
    async fn a_request_pipelined_behind_a_long_response_is_served() {
        let (connection, mut client) = layered();
        client
            .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let head = within(secs(5), read_until(&mut client, "\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Ten events, 30 s apart, then the queued answer.
        let answers = within(secs(600), read_until(&mut client, "hello\n")).await;
        assert!(
            answers.contains("hello\n"),
            "answered {answers:?}; the connection ended {:?}",
            within(secs(1), connection).await.unwrap()
        );
    }

    /// An empty line after a request is no request (RFC 9112 §2.2: a server ignores
    /// those before a request line, and hyper skips them); some old clients end a POST's
    /// body with one. The client that sends one after its answer and then waits is
    /// between requests: held to the idle timeout, not cut at the request timeout.
    #[tokio::test(start_paused = true)]
    async fn an_empty_line_after_an_answer_leaves_the_connection_to_the_idle_timeout() {
        let (connection, mut client) = layered();
        client
            .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let answer = within(secs(5), read_until(&mut client, "5 bytes\n")).await;
        assert!(answer.contains("5 bytes\n"), "{answer:?}");
        client.write_all(b"\r\n").await.unwrap();
        assert_eq!(
            timed_out(within(secs(120), connection).await.unwrap()),
            TimeoutError::Idle(secs(60))
        );
    }

    /// The same for an empty line that comes while the server answers: it is not the
    /// start of a request pipelined behind that answer, and the next request, sent after
    /// longer than the request timeout, is served.
    #[tokio::test(start_paused = true)]
    async fn an_empty_line_sent_while_the_server_answers_starts_no_request() {
        let (connection, mut client) = layered();
        client
            .write_all(b"GET /sleep?5 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(secs(1)).await;
        client.write_all(b"\r\n").await.unwrap();
        let answer = within(secs(60), read_until(&mut client, "slept\n")).await;
        assert!(answer.contains("slept\n"), "{answer:?}");
        tokio::time::sleep(secs(30)).await;
        assert!(
            !connection.is_finished(),
            "the connection ended {:?}",
            within(secs(1), connection).await.unwrap()
        );
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = within(secs(5), read_until(&mut client, "hello\n")).await;
        assert!(
            answer.contains("hello\n"),
            "answered {answer:?}; the connection ended {:?}",
            within(secs(1), connection).await.unwrap()
        );
        assert!(!connection.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_handler_slower_than_the_request_timeout_is_not_cut() {
        let (connection, client) = layered();
        let (mut sender, _pings) = h2_client(client, &h2::client::Builder::new()).await;
        let upload = http::Request::post("http://localhost/compute")
            .body(())
            .unwrap();
        let (response, mut body) = sender.send_request(upload, false).unwrap();
        body.send_data(Bytes::from_static(b"hello"), true).unwrap();
        // The body is all in at once; its handler then takes 40 s, past the 10 s
        // request timeout, and its neighbours are served meanwhile.
        let (neighbour, _) = sender.send_request(h2_get("/"), true).unwrap();
        assert_eq!(within(secs(1), neighbour).await.unwrap().status(), 200);
        let response = within(secs(60), response).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(!connection.is_finished());
    }

    /// The HTTP/2 twin of the HTTP/1 echo above, and what a gRPC bidirectional or
    /// client stream is on the wire: the handler answers at once, and the request's
    /// body goes on streaming, each message answered as it comes. Answered, the stream
    /// is no request being read any more: its body is not held to the request timeout
    /// (the idle timeout still judges its data), as an HTTP/1 body streaming after its
    /// answer is not.
    #[tokio::test(start_paused = true)]
    async fn an_http2_body_streaming_after_its_answer_is_not_held_to_the_request_timeout() {
        let (connection, client) = layered();
        let (mut sender, _pings) = h2_client(client, &h2::client::Builder::new()).await;
        let echo = http::Request::post("http://localhost/echo")
            .body(())
            .unwrap();
        let (response, mut body) = sender.send_request(echo, false).unwrap();
        body.send_data(Bytes::from_static(b"x"), false).unwrap();
        let response = within(secs(5), response).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut echoed = response.into_body();
        // A message every 2 s for a minute, each echoed: past the 10 s request timeout,
        // and never idle for the 60 s idle timeout.
        for round in 0..30 {
            let data = within(secs(5), echoed.data()).await;
            if connection.is_finished() {
                panic!("round {round}: cut: {:?}", connection.await);
            }
            assert!(
                matches!(&data, Some(Ok(data)) if data.as_ref() == b"x"),
                "round {round}: {data:?}"
            );
            let _ = echoed.flow_control().release_capacity(1);
            tokio::time::sleep(secs(2)).await;
            assert!(
                !connection.is_finished(),
                "round {round}: cut: {:?}",
                connection.await
            );
            body.send_data(Bytes::from_static(b"x"), false).unwrap();
        }
    }

    /// Told so with a GOAWAY, an HTTP/2 connection closed at the idle timeout still ends
    /// with an idle timeout, counted once; a client that never acknowledges the
    /// goodbye (its PING) is cut a second after it is sent.
    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_told_goodbye_at_the_idle_timeout_counts_one_idle_timeout() {
        let timeouts = TimeoutLayer::builder().idle(secs(60)).build().unwrap();
        let (connection, mut client) = serve_one(
            ServiceBuilder::new()
                .layer(timeouts.clone())
                .service(HttpService::new(app())),
        );
        client.write_all(HTTP2_START).await.unwrap();
        client.write_all(&http2_get(1)).await.unwrap();
        let began = Instant::now();
        let mut sent = Vec::new();
        let _ = within(secs(3600), client.read_to_end(&mut sent)).await;
        let outcome = within(secs(5), connection).await.unwrap();
        assert_eq!(timed_out(outcome), TimeoutError::Idle(secs(60)));
        let lasted = began.elapsed();
        assert!(lasted <= secs(60) + secs(60) / 8 + secs(1), "{lasted:?}");
        assert_eq!(timeouts.stats().idle, 1);
    }

    /// Asks for `path` on HTTP/2 under the layer's idle timeout (60 s), keeps its answer,
    /// then sends a PING every 30 s: the connection must be cut as idle all the same.
    async fn idle_despite_pings(path: &str) {
        let (connection, client) = layered();
        let (mut sender, mut pings) = h2_client(client, &h2::client::Builder::new()).await;
        let (response, _) = sender.send_request(h2_get(path), true).unwrap();
        let response = within(secs(5), response).await.unwrap();
        assert_eq!(response.status(), 200);
        let _body = response.into_body();
        let quiet = Instant::now();
        let keep_alive = tokio::spawn(async move {
            for _ in 0..120 {
                tokio::time::sleep(secs(30)).await;
                if pings.ping(h2::Ping::opaque()).await.is_err() {
                    break;
                }
            }
        });
        let outcome = within(secs(3600), connection).await.unwrap();
        assert_eq!(timed_out(outcome), TimeoutError::Idle(secs(60)), "{path}");
        assert!(
            quiet.elapsed() <= secs(60) + secs(60) / 8,
            "{path}: {:?}",
            quiet.elapsed()
        );
        keep_alive.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn pings_do_not_keep_an_http2_connection_alive() {
        idle_despite_pings("/").await;
    }

    /// An answered stream that sends nothing is as idle as a silent socket: PINGs do
    /// not move it, and only its data, either way, would.
    #[tokio::test(start_paused = true)]
    async fn pings_do_not_keep_a_quiet_answered_http2_stream_alive() {
        idle_despite_pings("/quiet").await;
    }

    /// `GET /quiet` on stream 1 (HPACK: GET, http, `:path` literal, authority `t`),
    /// answered at once with a body that sends nothing.
    fn http2_get_quiet() -> Vec<u8> {
        let mut quiet = b"\0\0\x0d\x01\x05\0\0\0\x01".to_vec();
        quiet.extend_from_slice(b"\x82\x86\x04\x06/quiet\x41\x01t");
        quiet
    }

    /// Sends one byte of DATA on stream 3, over since its answer, every 30 s (20 at
    /// most), and checks that `connection`, whose last exchange is a quiet answered
    /// stream, is closed at its idle timeout all the same.
    async fn idle_despite_data_to_a_finished_stream(
        connection: JoinHandle<Result<(), BoxError>>,
        mut client: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
    ) {
        let began = Instant::now();
        let keep_alive = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(secs(30)).await;
                if client.write_all(b"\0\0\x01\0\0\0\0\0\x03x").await.is_err() {
                    break;
                }
            }
            client
        });
        let outcome = tokio::time::timeout(secs(300), connection).await;
        keep_alive.abort();
        let outcome = outcome.unwrap_or_else(|_| {
            panic!(
                "still open {:?} after its last exchange went quiet (idle timeout 60 s)",
                began.elapsed()
            )
        });
        assert_eq!(timed_out(outcome.unwrap()), TimeoutError::Idle(secs(60)));
        assert!(
            began.elapsed() <= secs(60) + secs(60) / 8,
            "{:?}",
            began.elapsed()
        );
    }

    /// DATA to a stream that is over moves no exchange: the server drops it (h2 resets
    /// the dead stream), as it would a PING. A client that sends a byte of it every 30 s
    /// must not keep a quiet answered stream alive past the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn data_to_a_finished_http2_stream_does_not_keep_a_quiet_answered_stream_alive() {
        let (connection, mut client) = layered();
        client.write_all(HTTP2_START).await.unwrap();
        client.write_all(&http2_get_quiet()).await.unwrap();
        // Stream 3: GET /, answered and over.
        client.write_all(&http2_get(3)).await.unwrap();
        let answer = within(secs(5), read_until(&mut client, "hello")).await;
        assert!(answer.contains("hello"), "{answer:?}");
        idle_despite_data_to_a_finished_stream(connection, client).await;
    }

    /// The same, after the client once opened more streams at once than the frame watch
    /// follows (256; hyper refuses those over its 200 at a time): every stream the
    /// server answered or refused is over all the same, and DATA to one of them, which
    /// the server drops, must not keep a quiet answered stream alive.
    #[tokio::test(start_paused = true)]
    async fn data_to_a_finished_http2_stream_does_not_keep_a_quiet_stream_alive_after_a_burst_of_streams()
     {
        let (connection, mut client) = layered();
        client.write_all(HTTP2_START).await.unwrap();
        client.write_all(&http2_get_quiet()).await.unwrap();
        // 256 `GET /` at once, on streams 3 to 513: whole requests, each answered at once
        // or refused.
        let mut burst = Vec::new();
        for stream in (3u32..=513).step_by(2) {
            burst.extend_from_slice(b"\0\0\x06\x01\x05");
            burst.extend_from_slice(&stream.to_be_bytes());
            burst.extend_from_slice(b"\x82\x86\x84\x41\x01t");
        }
        let (mut reader, mut writer) = tokio::io::split(client);
        let draining = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink).await;
        });
        writer.write_all(&burst).await.unwrap();
        tokio::time::sleep(secs(5)).await;
        assert!(!connection.is_finished(), "{:?}", connection.await);
        idle_despite_data_to_a_finished_stream(connection, writer).await;
        draining.abort();
    }

    /// The connection's opening (preface, first headers) is one request, from its first
    /// byte: a first HEADERS frame begun just before its deadline does not start the
    /// clock again.
    #[tokio::test(start_paused = true)]
    async fn http2_first_headers_begun_late_are_cut_at_the_request_timeout_from_the_first_byte() {
        let (connection, mut client) = layered();
        let began = Instant::now();
        client.write_all(&HTTP2_START[..1]).await.unwrap();
        tokio::time::sleep(secs(9)).await;
        client.write_all(&HTTP2_START[1..]).await.unwrap();
        client.write_all(&http2_padded_get_start(1)).await.unwrap();
        let trickling = trickle(client);
        let outcome = within(secs(3600), connection).await.unwrap();
        trickling.abort();
        assert_eq!(timed_out(outcome), TimeoutError::Request(secs(10)));
        assert!(
            began.elapsed() <= secs(10) + secs(10) / 8,
            "cut {:?} after its first byte",
            began.elapsed()
        );
    }

    /// A later request's headers are in once their frame's payload is: flagged as
    /// whole, and trickled after their frame's header, they are held to the request
    /// timeout.
    #[tokio::test(start_paused = true)]
    async fn http2_headers_trickled_after_their_frames_header_are_cut_at_the_request_timeout() {
        let (connection, mut client) = layered();
        client.write_all(HTTP2_START).await.unwrap();
        client.write_all(&http2_get(1)).await.unwrap();
        let answer = within(secs(5), read_until(&mut client, "hello")).await;
        assert!(answer.contains("hello"), "{answer:?}");
        client.write_all(&http2_padded_get_start(3)).await.unwrap();
        let began = Instant::now();
        let trickling = trickle(client);
        let outcome = within(secs(3600), connection).await.unwrap();
        trickling.abort();
        assert_eq!(timed_out(outcome), TimeoutError::Request(secs(10)));
        assert!(
            began.elapsed() <= secs(10) + secs(10) / 8,
            "{:?}",
            began.elapsed()
        );
    }

    /// Under a timeout layer too, a call the client sends as the idle goodbye arrives is
    /// served to its end. A second call, sent once the client has acknowledged the
    /// goodbye's PING but before it reads the last GOAWAY (an upload, its body still
    /// coming), is one h2 ignores (above the last GOAWAY's stream: the client retries
    /// it elsewhere): no request the server reads, it must not cut the first call at
    /// the request timeout.
    #[tokio::test(start_paused = true)]
    async fn a_call_ignored_after_the_last_goaway_does_not_cut_the_call_being_served() {
        let (connection, mut client) = layered();
        client.write_all(HTTP2_START).await.unwrap();
        client.write_all(&http2_get(1)).await.unwrap();
        let ping = goodbye_ping(&mut client).await;
        let told_at = Instant::now();
        // `GET /sleep?30` on stream 3, the PING's acknowledgement, then `POST /upload` on
        // stream 5 with the first byte of its body.
        let mut calls = b"\0\0\x10\x01\x05\0\0\0\x03\x82\x86\x04\x09/sleep?30\x41\x01t".to_vec();
        calls.extend_from_slice(b"\0\0\x08\x06\x01\0\0\0\0");
        calls.extend_from_slice(&ping);
        calls.extend_from_slice(b"\0\0\x0e\x01\x04\0\0\0\x05\x83\x86\x04\x07/upload\x41\x01t");
        calls.extend_from_slice(b"\0\0\x01\0\0\0\0\0\x05x");
        client.write_all(&calls).await.unwrap();
        let (answered, last_goaway) = answered_before_the_end(&mut client, 3).await;
        let outcome = within(secs(5), connection).await.unwrap();
        assert!(
            answered,
            "stream 3 unanswered; the last GOAWAY named {last_goaway:?} as processed; the connection \
             ended {outcome:?}, {:?} after the goodbye",
            told_at.elapsed()
        );
    }

    /// A frame counts once it is whole, as h2 reads it: a RST_STREAM whose header came
    /// and whose 4-byte payload never does resets nothing. Its stream's handler still
    /// waits for the body, and the stream is still a request being read: held to the
    /// request timeout, not forgotten at a frame header the server never acts on.
    #[tokio::test(start_paused = true)]
    async fn an_http2_body_stalled_behind_half_a_rst_stream_is_cut_at_the_request_timeout() {
        let (connection, mut client) = layered();
        client.write_all(HTTP2_START).await.unwrap();
        // `POST /upload` on stream 1 (HPACK: POST, http, `:path` literal, authority
        // `t`), its headers ended, its body to come.
        let mut upload = b"\0\0\x0e\x01\x04\0\0\0\x01".to_vec();
        upload.extend_from_slice(b"\x83\x86\x04\x07/upload\x41\x01t");
        client.write_all(&upload).await.unwrap();
        // Then a RST_STREAM's frame header for stream 1, and never its error code.
        client.write_all(b"\0\0\x04\x03\0\0\0\0\x01").await.unwrap();
        let began = Instant::now();
        let outcome = tokio::time::timeout(secs(600), connection)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "still open {:?} after its body stopped (request timeout 10 s)",
                    began.elapsed()
                )
            });
        assert_eq!(timed_out(outcome.unwrap()), TimeoutError::Request(secs(10)));
        assert!(
            began.elapsed() <= secs(10) + secs(10) / 8,
            "{:?}",
            began.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_http2_body_is_cut_at_the_request_timeout() {
        let (connection, client) = layered();
        let (mut sender, _pings) = h2_client(client, &h2::client::Builder::new()).await;
        let (response, _) = sender.send_request(h2_get("/"), true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);

        let upload = http::Request::post("http://localhost/upload")
            .body(())
            .unwrap();
        let (_response, mut body) = sender.send_request(upload, false).unwrap();
        let first_byte = Instant::now();
        let trickle = tokio::spawn(async move {
            for _ in 0..120 {
                if body.send_data(Bytes::from_static(b"x"), false).is_err() {
                    break;
                }
                tokio::time::sleep(secs(30)).await;
            }
        });
        let outcome = within(secs(3600), connection).await.unwrap();
        assert_eq!(timed_out(outcome), TimeoutError::Request(secs(10)));
        assert!(
            first_byte.elapsed() <= secs(60),
            "{:?}",
            first_byte.elapsed()
        );
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_slow_reader_is_cut() {
        let (connection, mut client) = layered();
        client
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let began = Instant::now();
        // Takes 1 KiB every 30 s, for at most ten minutes.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            for _ in 0..20 {
                tokio::time::sleep(secs(30)).await;
                if client.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
        });
        let outcome = within(secs(600), connection).await.unwrap();
        assert!(matches!(timed_out(outcome), TimeoutError::Idle(_)));
        assert!(began.elapsed() <= secs(120), "{:?}", began.elapsed());
        reader.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_slow_reader_is_cut() {
        let (connection, client) = layered();
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(1024)
            .initial_connection_window_size(1024);
        let (mut sender, _pings) = h2_client(client, &builder).await;
        let (response, _) = sender.send_request(h2_get("/big"), true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let began = Instant::now();
        // Takes 1 KiB every 30 s, for at most ten minutes.
        let reader = tokio::spawn(async move {
            for _ in 0..20 {
                let Some(Ok(data)) = body.data().await else {
                    return;
                };
                tokio::time::sleep(secs(30)).await;
                body.flow_control().release_capacity(data.len()).ok();
            }
        });
        let outcome = within(secs(600), connection).await.unwrap();
        assert!(matches!(timed_out(outcome), TimeoutError::Idle(_)));
        assert!(began.elapsed() <= secs(120), "{:?}", began.elapsed());
        reader.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_reader_and_a_slow_writer_are_not_cut() {
        let (connection, client) = layered();
        let mut h1 = Http1Client::connect(client).await;
        let big = within(secs(60), h1.get("/big")).await.unwrap();
        assert_eq!(big.body.len(), BIG);
        // Five minutes of a byte every 30 s: the server is the slow one.
        let events = within(secs(600), h1.get("/events")).await.unwrap();
        assert_eq!(events.body, "..........");
        assert!(!connection.is_finished());
    }
}

mod graces {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lifetime_grace_longer_than_the_adapters_close_grace_is_honoured() {
        let timeouts = TimeoutLayer::builder()
            .lifetime(secs(10))
            .lifetime_grace(secs(30))
            .build()
            .unwrap();
        let (connection, client) = serve_one(
            ServiceBuilder::new()
                .layer(timeouts)
                .service(HttpService::new(app())),
        );
        let mut h1 = Http1Client::connect(client).await;
        tokio::time::sleep(secs(5)).await;
        // 20 s from t = 5 s: the lifetime ends at 10 s, its grace at 40 s.
        let answer = within(secs(60), h1.get("/sleep?20")).await.unwrap();
        assert_eq!(answer.body, "slept\n");
        assert_eq!(answer.headers[http::header::CONNECTION], "close");
        within(secs(1), connection).await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_deadline_longer_than_the_adapters_close_grace_is_honoured() {
        let (queue, _log, listener) = ChannelListener::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::new(listener)
                .drain_timeout(secs(60))
                .with_graceful_shutdown(async move {
                    stopped.await.ok();
                })
                .serve(HttpService::new(app())),
        );
        let (conn, client) = duplex_conn("192.0.2.1:1");
        queue.send(Ok(conn)).unwrap();
        let mut h1 = Http1Client::connect(client).await;
        let request = tokio::spawn(async move { h1.get("/sleep?20").await });
        tokio::time::sleep(secs(1)).await;
        stop.send(()).unwrap();
        let answer = within(secs(60), request).await.unwrap().unwrap();
        assert_eq!(answer.body, "slept\n");
        let report = within(secs(60), server).await.unwrap().unwrap();
        assert_eq!((report.drained, report.cut), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_asked_by_a_handler_is_cut_after_the_adapters_close_grace() {
        let (mut conn, client) = duplex_conn("192.0.2.1:1");
        let close = conn.graceful_close();
        let connection = tokio::spawn(
            HttpService::builder(app())
                .close_grace(secs(5))
                .build()
                .unwrap()
                .oneshot(conn),
        );
        let mut h1 = Http1Client::connect(client).await;
        let request = tokio::spawn(async move { h1.get("/sleep?20").await });
        tokio::time::sleep(secs(1)).await;
        let asked = Instant::now();
        close.request();
        within(secs(60), connection).await.unwrap().unwrap();
        assert_eq!(asked.elapsed(), secs(5));
        assert!(request.await.unwrap().is_err(), "cut before the response");
    }
}

mod settings {
    use super::*;
    use tower_bouncer::ConfigError;

    #[test]
    fn a_zero_timeout_is_refused_when_built() {
        for (builder, setting) in [
            (
                HttpService::builder(app()).first_byte_timeout(Duration::ZERO),
                "first_byte_timeout",
            ),
            (
                HttpService::builder(app()).header_read_timeout(Duration::ZERO),
                "header_read_timeout",
            ),
            (
                HttpService::builder(app()).idle_timeout(Duration::ZERO),
                "idle_timeout",
            ),
        ] {
            assert_eq!(builder.build().unwrap_err(), ConfigError::Zero { setting });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_meant_as_forever_wait_without_panicking() {
        let http = HttpService::builder(app())
            .first_byte_timeout(Duration::MAX)
            .header_read_timeout(Duration::MAX)
            .idle_timeout(Duration::MAX)
            .close_grace(Duration::MAX)
            .build()
            .unwrap();
        let timeouts = TimeoutLayer::builder()
            .idle(Duration::MAX)
            .request(Duration::MAX)
            .request_min_rate(1, Duration::MAX)
            .lifetime(Duration::MAX)
            .lifetime_grace(Duration::MAX)
            .build()
            .unwrap();
        let (connection, client) = serve_one(ServiceBuilder::new().layer(timeouts).service(http));
        let mut h1 = Http1Client::connect(client).await;
        for _ in 0..3 {
            assert_eq!(within(secs(60), h1.get("/")).await.unwrap().body, "hello\n");
            tokio::time::sleep(secs(3600)).await;
        }
        assert!(!connection.is_finished());
    }
}
