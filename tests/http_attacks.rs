//! Attacks on the HTTP example from outside its process, on loopback: WebSockets held
//! open, guesses multiplexed on one HTTP/2 connection, an HTTP/2 connection kept up by
//! PINGs alone. Each is also tried against the unprotected server where that shows the
//! attack working.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use tokio_tungstenite::tungstenite::Message;

use support::{example::*, *};

const ATTACKER: u8 = 2;
const OTHER: u8 = 3;
const WRONG_PASSWORD: &str = "Basic YWxpY2U6d3Jvbmc="; // alice:wrong

/// Opens a WebSocket to the server's `/ws` from `127.0.0.<last>`, on a connection that
/// first served a plain request, and checks that it echoes.
async fn websocket(
    last: u8,
    server: &Example,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = connect_from(last, server.addr).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"hello\n") {
        let mut chunk = [0u8; 256];
        let read = within(PATIENCE, stream.read(&mut chunk)).await.unwrap();
        assert!(read > 0, "closed after {response:?}");
        response.extend_from_slice(&chunk[..read]);
    }
    let url = format!("ws://{}/ws", server.addr);
    let (mut socket, _) = within(PATIENCE, tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap();
    socket.send(Message::text("ping")).await.unwrap();
    let echoed = within(PATIENCE, socket.next()).await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("ping"));
    socket
}

/// Waits for the server to close a WebSocket; returns how long that took.
async fn closed_after(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Duration {
    let began = Instant::now();
    loop {
        match within(PATIENCE, socket.next()).await {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => panic!("unexpected message"),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return began.elapsed(),
        }
    }
}

#[tokio::test]
async fn websockets_count_against_the_per_peer_cap_and_close_at_the_idle_timeout() {
    let server = Example::start(
        "axum_server",
        &["--max-per-peer", "2", "--idle-timeout", "1"],
    )
    .await;
    let mut first = websocket(ATTACKER, &server).await;
    let mut second = websocket(ATTACKER, &server).await;

    // The two WebSockets hold the attacker's places: a third connection is refused.
    let mut third = connect_from(ATTACKER, server.addr).await;
    let refusal = refusal_to_a_request(&mut third).await;
    assert!(refusal.starts_with("HTTP/1.1 503 "), "{refusal}");
    // Another peer is served.
    let mut other = websocket(OTHER, &server).await;

    // Silent, each is closed at the idle timeout.
    for socket in [&mut first, &mut second, &mut other] {
        let waited = closed_after(socket).await;
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }
    // Their places are free again.
    websocket(ATTACKER, &server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_in_use_outlives_the_request_timeout() {
    let server = Example::start(
        "axum_server",
        &["--request-timeout", "1", "--idle-timeout", "10"],
    )
    .await;
    let mut socket = websocket(ATTACKER, &server).await;
    // Its frames are not requests: three seconds of chatter is not a slow request.
    for n in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let message = Message::text(format!("message {n}"));
        socket.send(message.clone()).await.unwrap();
        let echoed = within(PATIENCE, socket.next()).await.unwrap().unwrap();
        assert_eq!(echoed, message);
    }
    // (Left open, it would hold the server's shutdown to its drain deadline.)
    drop(socket);
    server.stop().await;
}

#[tokio::test]
async fn unprotected_a_silent_websocket_stays_open() {
    let server = Example::start("axum_server", &["--unprotected"]).await;
    let mut socket = websocket(ATTACKER, &server).await;
    let next = tokio::time::timeout(Duration::from_secs(2), socket.next()).await;
    assert!(next.is_err(), "still open after 2 s: {next:?}");
    server.stop().await;
}

/// Sends `count` bad guesses at once on one HTTP/2 connection; returns how many were
/// answered `401`, that is, reached the password check.
async fn guesses_checked(server: &Example, count: usize) -> usize {
    let stream = connect_from(ATTACKER, server.addr).await;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let guesses: Vec<_> = (0..count)
        .map(|_| {
            let mut sender = sender.clone();
            let request = http::Request::get(format!("http://{}/login", server.addr))
                .header(http::header::AUTHORIZATION, WRONG_PASSWORD)
                .body(Empty::<Bytes>::new())
                .unwrap();
            tokio::spawn(async move {
                let response = sender.send_request(request).await.ok()?;
                let status = response.status();
                response.into_body().collect().await.ok()?;
                Some(status)
            })
        })
        .collect();
    let mut checked = 0;
    for guess in guesses {
        let status = within(PATIENCE, guess).await.unwrap();
        assert!(
            matches!(status.map(|status| status.as_u16()), None | Some(401 | 429)),
            "{status:?}"
        );
        checked += usize::from(status == Some(http::StatusCode::UNAUTHORIZED));
    }
    checked
}

#[tokio::test]
async fn concurrent_guesses_on_one_http2_connection_get_only_the_tries_allowed() {
    let server = Example::start("axum_server", &[]).await;
    assert_eq!(guesses_checked(&server, 30).await, 1, "--max-auth-tries 1");
    server.stop().await;

    let server = Example::start(
        "axum_server",
        &["--max-auth-tries", "3", "--max-failures", "100"],
    )
    .await;
    assert_eq!(guesses_checked(&server, 30).await, 3, "--max-auth-tries 3");
    server.stop().await;

    let server = Example::start("axum_server", &["--unprotected"]).await;
    assert_eq!(guesses_checked(&server, 30).await, 30, "unprotected");
    server.stop().await;
}

/// Makes one HTTP/2 request, then sends only PINGs, every 200 ms for at most `limit`;
/// returns how long after the request the server closed the connection, if it did.
async fn pinged_connection_lasts(server: &Example, limit: Duration) -> Option<Duration> {
    let stream = connect_from(ATTACKER, server.addr).await;
    let (mut sender, mut connection) = h2::client::handshake(stream).await.unwrap();
    let mut pings = connection.ping_pong().unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/", server.addr))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    assert_eq!(within(PATIENCE, response).await.unwrap().status(), 200);
    let answered = Instant::now();
    while answered.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if connection.is_finished()
            || within(PATIENCE, pings.ping(h2::Ping::opaque()))
                .await
                .is_err()
        {
            return Some(answered.elapsed());
        }
    }
    None
}

#[tokio::test]
async fn an_http2_connection_kept_up_by_pings_alone_is_closed_at_the_idle_timeout() {
    let server = Example::start("axum_server", &["--idle-timeout", "1"]).await;
    let lasted = pinged_connection_lasts(&server, Duration::from_secs(10)).await;
    let lasted = lasted.expect("still open after 10 s of PINGs");
    assert!(
        lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(3),
        "{lasted:?}"
    );
    server.stop().await;
}
