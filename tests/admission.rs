//! The admission layers stacked under the accept loop, on real loopback sockets, with
//! clients bound to distinct 127.0.0.x addresses as distinct peers.

mod support;

use std::{net::Ipv4Addr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tower::{ServiceBuilder, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    limit::ConnectionLimitLayer,
    peer_limit::PeerLimitLayer,
    rate_limit::{Rate, RateLimitLayer},
};

use support::*;

/// Says hello, then holds the connection until the client closes it.
async fn hello(mut conn: Conn<TcpStream>) -> Result<(), BoxError> {
    let io = conn.io_mut();
    io.write_all(b"hello\n").await?;
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await?;
    Ok(())
}

/// The first line the server sends, or what it sent before closing.
async fn greeting(stream: &mut TcpStream) -> String {
    let mut buf = [0u8; 64];
    let mut got = 0;
    while !buf[..got].contains(&b'\n') {
        let read = within(PATIENCE, stream.read(&mut buf[got..]))
            .await
            .unwrap();
        if read == 0 {
            break;
        }
        got += read;
    }
    String::from_utf8_lossy(&buf[..got]).into_owned()
}

async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        within(PATIENCE, stream.read(&mut byte)).await,
        Ok(0) | Err(_)
    )
}

#[tokio::test]
async fn one_peer_over_its_limit_is_refused_while_another_is_served() {
    let per_peer = PeerLimitLayer::builder(2)
        .refusal_message(&b"ERROR busy\n"[..])
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(per_peer.clone())
        .layer(ConnectionLimitLayer::builder(100).build().unwrap())
        .service(service_fn(hello));
    let server = LoopbackServer::start(service, PATIENCE).await;

    let mut first = connect_from(2, server.addr).await;
    let mut second = connect_from(2, server.addr).await;
    assert_eq!(greeting(&mut first).await, "hello\n");
    assert_eq!(greeting(&mut second).await, "hello\n");
    let mut third = connect_from(2, server.addr).await;
    assert_eq!(greeting(&mut third).await, "ERROR busy\n");
    assert!(is_closed(&mut third).await);

    let mut other_peer = connect_from(3, server.addr).await;
    assert_eq!(greeting(&mut other_peer).await, "hello\n");

    // Once one of its connections ends, the first peer gets its slot back.
    drop(first);
    let mut retry = connect_from(2, server.addr).await;
    let mut tries = 0;
    while greeting(&mut retry).await != "hello\n" {
        tries += 1;
        assert!(tries < 100, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
        retry = connect_from(2, server.addr).await;
    }
    assert!(per_peer.stats().refused_peer_limit >= 1);
    drop((second, other_peer, retry));
    server.stop().await;
}

#[tokio::test]
async fn a_full_server_in_backpressure_mode_serves_waiting_connections_later() {
    let limit = ConnectionLimitLayer::builder(1)
        .backpressure()
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(limit.clone())
        .service(service_fn(hello));
    let server = LoopbackServer::start(service, PATIENCE).await;

    let mut first = connect_from(2, server.addr).await;
    assert_eq!(greeting(&mut first).await, "hello\n");
    // Accepted by the kernel, but not by the server while the first is served.
    let mut waiting = connect_from(4, server.addr).await;
    drop(first);
    assert_eq!(greeting(&mut waiting).await, "hello\n");
    let stats = limit.stats();
    assert_eq!((stats.admitted, stats.refused), (2, 0));
    drop(waiting);
    server.stop().await;
}

#[tokio::test]
async fn a_peer_over_its_rate_is_refused_while_another_is_served() {
    let rate = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(2))
        .refusal_message(&b"ERROR slow down\n"[..])
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(rate).service(service_fn(hello));
    let server = LoopbackServer::start(service, PATIENCE).await;

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from(5, server.addr).await;
        assert_eq!(greeting(&mut stream).await, "hello\n");
        held.push(stream);
    }
    let mut over = connect_from(5, server.addr).await;
    assert_eq!(greeting(&mut over).await, "ERROR slow down\n");
    let mut other_peer = connect_from(6, server.addr).await;
    assert_eq!(greeting(&mut other_peer).await, "hello\n");
    drop((held, other_peer));
    server.stop().await;
}

#[tokio::test]
async fn with_global_backpressure_one_flooding_peer_does_not_use_up_the_global_rate() {
    let rate = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1))
        .global(Rate::per_second(10))
        .global_backpressure()
        .build()
        .unwrap();
    let (served, mut served_rx) = tokio::sync::mpsc::unbounded_channel();
    let service =
        ServiceBuilder::new()
            .layer(rate)
            .service(service_fn(move |conn: Conn<TcpStream>| {
                served.send(conn.peer_addr().ip()).ok();
                async { Ok::<_, BoxError>(()) }
            }));
    // A backlog deep enough for the whole flood (tokio's default is 128).
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(addr("127.0.0.1:0")).unwrap();
    let server = LoopbackServer::start_on(socket.listen(1024).unwrap(), service, PATIENCE);

    // The flood: all but its first connection are refused for the peer's rate.
    let mut flood = Vec::new();
    for _ in 0..500 {
        flood.push(within(PATIENCE, connect_from(2, server.addr)).await);
    }
    let _other = within(PATIENCE, connect_from(3, server.addr)).await;
    // Had each refusal spent the global rate, the other peer would wait about 50 s.
    within(Duration::from_secs(2), async {
        while served_rx.recv().await.unwrap() != Ipv4Addr::new(127, 0, 0, 3) {}
    })
    .await;
    drop(flood);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_sent_its_request_reads_the_whole_refusal_rather_than_a_reset() {
    // An error page larger than the client's receive window: some of it is still queued
    // on the server when the server is done with the connection.
    let page = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 16384\r\n\r\n{}",
        "x".repeat(16 * 1024)
    );
    let limit = ConnectionLimitLayer::builder(1)
        .refusal_message(page.clone())
        .refusal_write_timeout(PATIENCE)
        .build()
        .unwrap();
    let (inner, mut handle) = tower_test::mock::pair::<Conn<TcpStream>, ()>();
    handle.allow(1);
    let service = ServiceBuilder::new().layer(limit).service(inner);
    let server = LoopbackServer::start(service, PATIENCE).await;
    let _held_client = connect_from(2, server.addr).await;
    let (held, respond) = within(PATIENCE, handle.next_request()).await.unwrap();

    // The inner service is not ready, so the server accepts nothing more: every request
    // below is in the server's socket before its connection is refused.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind(addr("127.0.0.3:0")).unwrap();
        let mut client = within(PATIENCE, socket.connect(server.addr)).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        clients.push(client);
    }
    handle.allow(1);
    for mut client in clients {
        let mut told = Vec::new();
        within(PATIENCE, client.read_to_end(&mut told))
            .await
            .unwrap();
        assert!(
            told == page.as_bytes(),
            "{} bytes of {}",
            told.len(),
            page.len()
        );
    }
    drop(held);
    respond.send_response(());
    server.stop().await;
}
