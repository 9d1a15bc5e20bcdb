//! Attacks wider or more stubborn than the caps, end to end on loopback against
//! axum_server: a botnet spray of idle keep-alive connections from many more addresses
//! than the cap holds, an HTTP/2 crowd that never reads, one that takes none of its
//! answers, a crowd of WebSockets kept alive with pings, a crowd of gRPC streams that
//! never end (against tonic_server), a slowloris peer that keeps coming back, and a
//! banned peer that reconnects from several tasks as fast as it can; a legitimate
//! client is served through each (through the spray once it has arrived).

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};
use tokio_tungstenite::tungstenite::Message;

use support::{example::*, *};

const LEGIT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// The n-th botnet address: `127.20.<n / 250>.<n % 250 + 1>`.
fn bot(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 20, (n / 250) as u8, (n % 250) as u8 + 1)
}

async fn connect_as(from: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    socket.connect(server).await
}

/// A legitimate request on a connection of its own: whether it got `hello`.
async fn served(server: SocketAddr) -> bool {
    let exchange = async {
        let mut stream = connect_as(LEGIT, server).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        Some(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello\n"))
    };
    within(PATIENCE, exchange).await.unwrap_or(false)
}

/// One request on a new connection from `from`, its answer read; the connection is kept
/// open, idle, as a keep-alive client leaves it.
async fn idle_after_one_request(from: Ipv4Addr, server: SocketAddr) -> Option<TcpStream> {
    let mut stream = connect_as(from, server).await.ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .ok()?;
    let mut answer = [0u8; 512];
    let read = within(PATIENCE, stream.read(&mut answer)).await.ok()?;
    answer[..read]
        .starts_with(b"HTTP/1.1 200")
        .then_some(stream)
}

/// Whether the server has closed `stream`, looking for at most `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A connection from each of the bots `bots`, one every 10 ms, that sends `bytes` and
/// nothing more; those that could.
async fn http2_crowd(
    server: SocketAddr,
    bots: std::ops::Range<usize>,
    bytes: &[u8],
) -> Vec<TcpStream> {
    let mut crowd = Vec::new();
    for n in bots {
        let Ok(mut stream) = connect_as(bot(n), server).await else {
            continue;
        };
        if stream.write_all(bytes).await.is_ok() {
            crowd.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    crowd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_botnet_spray_wider_than_the_cap_leaves_room_for_the_legitimate_client() {
    const CAP: usize = 64;
    // 200 addresses, two connections each: six times the cap, every address within the
    // per-peer limits.
    const BOTS: usize = 200;
    let server = Example::start("axum_server", &["--max-connections", &CAP.to_string()]).await;
    let addr = server.addr;
    let baseline = server.open_descriptors();

    let mut spray = JoinSet::new();
    for worker in 0..16 {
        spray.spawn(async move {
            let mut held = Vec::new();
            for n in (worker..2 * BOTS).step_by(16) {
                held.extend(idle_after_one_request(bot(n / 2), addr).await);
            }
            held
        });
    }
    // The spray arrives faster than evictions finish: a newcomer in it, bot or not, may
    // be refused while the evictions allowed at once are under way (at most one for every
    // 16 of the cap), so the legitimate client is asked once the spray is in place.
    let held = within(PATIENCE, async {
        let mut held = Vec::new();
        while let Some(streams) = spray.join_next().await {
            held.extend(streams.unwrap());
        }
        held
    })
    .await;
    // Idle bot connections made room for more of the spray than the cap holds; the rest
    // was refused.
    let held_count = held.len();
    assert!(
        held_count > CAP + CAP / 4,
        "{held_count} bot connections served"
    );

    // The cap is full of idle bot connections; the legitimate client still gets in,
    // every time.
    for _ in 0..20 {
        assert!(served(addr).await, "a legitimate request failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server holds about the cap, not the spray.
    let open = server.open_descriptors();
    assert!(
        open <= baseline + CAP + CAP / 16 + 4,
        "{open} descriptors open, {baseline} at the start"
    );
    let mut closed = 0;
    for mut stream in held {
        closed += usize::from(closed_within(&mut stream, Duration::from_millis(50)).await);
    }
    server.stop().await;
    // Closed by the server to make room: all but the cap's worth.
    assert!(
        closed >= held_count - CAP,
        "{closed} of {held_count} closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_crowd_that_never_reads_is_evicted_as_it_comes() {
    const CAP: usize = 64;
    const BOTS: usize = 200;
    let server = Example::start("axum_server", &["--max-connections", &CAP.to_string()]).await;
    let addr = server.addr;
    // One connection per address, a request each, then never a read: not the answer,
    // not the GOAWAY's PING. Paced (a connection every 10 ms) so that each is answered,
    // and so idle, before the next comes.
    let crowd = http2_crowd(addr, 1000..1000 + BOTS, HTTP2_GET_THEN_DEAF).await;
    // The legitimate client gets in every time.
    for _ in 0..20 {
        assert!(served(addr).await, "a legitimate request failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each newcomer was admitted by evicting an idle one, which was cut after its GOAWAY
    // instead of holding one of the four evictions allowed at once for the close grace
    // (5 s): the server answered about all of the crowd, not the cap and a few.
    let mut answered = 0;
    for mut stream in crowd {
        let mut received = [0u8; 64];
        let read = within(PATIENCE, stream.read(&mut received))
            .await
            .unwrap_or(0);
        // The server's SETTINGS frame first, not a refusal's `HTTP/1.1 503`.
        answered += usize::from(read > 3 && received[3] == 0x4);
    }
    server.stop().await;
    assert!(answered >= BOTS * 9 / 10, "{answered} of {BOTS} answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_crowd_that_takes_none_of_its_answers_gives_way_to_the_legitimate_client() {
    const CAP: usize = 64;
    const BOTS: usize = 100;
    let server = Example::start("axum_server", &["--max-connections", &CAP.to_string()]).await;
    let addr = server.addr;
    // One connection per address, a request each with a window of zero, never opened:
    // each answer waits on its client for good, a stream open.
    let crowd = http2_crowd(addr, 2000..2000 + BOTS, HTTP2_GET_WITH_NO_WINDOW).await;
    // Once their timers have looked (every eighth of the idle timeout, shrunk under
    // pressure to 12 s) and a second has passed, the stalled count as idle: the
    // legitimate client gets in every time, where it would wait for the idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..20 {
        assert!(served(addr).await, "a legitimate request failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(crowd);
    server.stop().await;
}

/// A WebSocket to the server's `/ws` from `from`, that pings every 900 ms and reads what
/// comes until the server closes it or `for_at_most` has passed; whether the server
/// closed it.
async fn pinging_websocket(
    from: Ipv4Addr,
    server: SocketAddr,
    for_at_most: Duration,
) -> Option<tokio::task::JoinHandle<bool>> {
    let stream = connect_as(from, server).await.ok()?;
    let url = format!("ws://{server}/ws");
    let (mut socket, _) = within(PATIENCE, tokio_tungstenite::client_async(url, stream))
        .await
        .ok()?;
    Some(tokio::spawn(async move {
        let ends = tokio::time::Instant::now() + for_at_most;
        let mut ping = tokio::time::interval(Duration::from_millis(900));
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(ends) => return false,
                _ = ping.tick() => {
                    if socket.send(Message::Ping(vec![0].into())).await.is_err() {
                        return true;
                    }
                }
                message = socket.next() => {
                    if !matches!(message, Some(Ok(_))) {
                        return true;
                    }
                }
            }
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_websockets_kept_alive_with_pings_gives_way_to_the_legitimate_client() {
    const CAP: usize = 64;
    let server = Example::start("axum_server", &["--max-connections", &CAP.to_string()]).await;
    let addr = server.addr;
    // The whole cap in WebSockets from as many addresses, never quiet for the 10 s that
    // would make them idle.
    let mut crowd = Vec::new();
    for n in 0..CAP {
        if let Some(socket) = pinging_websocket(bot(3000 + n), addr, 3 * PATIENCE).await {
            crowd.push(socket);
        }
    }
    assert_eq!(crowd.len(), CAP, "the crowd did not fill the cap");
    // Busy, but older than 10 s: the oldest gives way to each newcomer, and the
    // legitimate client gets in every time, where it would wait for their lifetime (an
    // hour).
    tokio::time::sleep(Duration::from_secs(11)).await;
    for _ in 0..20 {
        assert!(served(addr).await, "a legitimate request failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Those the server closed have ended; the others are closed before the server
    // stops, which would otherwise wait for them to its drain deadline.
    let closed = crowd.iter().filter(|socket| socket.is_finished()).count();
    for socket in &crowd {
        socket.abort();
    }
    server.stop().await;
    // One gave way, and then the legitimate client had its place each time.
    assert!((1..=20).contains(&closed), "{closed} WebSockets closed");
}

/// tonic_server's health service, over a connection of its own from `from`.
async fn health_client(
    from: Ipv4Addr,
    server: SocketAddr,
) -> Option<tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .unwrap()
        .local_address(Some(from.into()))
        .connect_timeout(PATIENCE)
        .connect()
        .await
        .ok()?;
    Some(tonic_health::pb::health_client::HealthClient::new(channel))
}

/// A health request with tonic_server's token.
fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", "Bearer secret".parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_grpc_streams_that_never_end_gives_way_to_the_legitimate_client() {
    use tonic_health::pb::HealthCheckRequest;

    const CAP: usize = 32;
    let server = Example::start("tonic_server", &["--max-connections", &CAP.to_string()]).await;
    let addr = server.addr;
    // The whole cap in health `Watch` calls from as many addresses: each answered with
    // the service's status, then a stream that sends nothing until the status changes,
    // and never ends.
    let mut crowd = Vec::new();
    for n in 0..CAP {
        let Some(mut client) = health_client(bot(4000 + n), addr).await else {
            continue;
        };
        let watching = within(
            PATIENCE,
            client.watch(with_token(HealthCheckRequest::default())),
        );
        if let Ok(answer) = watching.await {
            let mut stream = answer.into_inner();
            crowd.push(tokio::spawn(async move {
                while let Some(Ok(_)) = stream.next().await {}
                drop(client);
            }));
        }
    }
    assert_eq!(crowd.len(), CAP, "the crowd did not fill the cap");
    // Older than 10 s: each newcomer makes one give way, where the legitimate client
    // would otherwise wait for their lifetime (an hour).
    tokio::time::sleep(Duration::from_secs(11)).await;
    for _ in 0..20 {
        let checked = async {
            let mut client = health_client(LEGIT, addr).await?;
            client
                .check(with_token(HealthCheckRequest::default()))
                .await
                .ok()
        };
        assert!(
            within(PATIENCE, checked).await.is_some(),
            "a legitimate call failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = crowd.iter().filter(|stream| stream.is_finished()).count();
    for stream in &crowd {
        stream.abort();
    }
    server.stop().await;
    assert!((1..=20).contains(&closed), "{closed} streams closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_peer_that_keeps_coming_back_is_banned_while_another_peer_is_served() {
    let server = Example::start(
        "axum_server",
        &["--max-timeouts", "3", "--request-timeout", "0.3"],
    )
    .await;
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    // Three request heads, a byte every 100 ms, each cut at the request timeout.
    for _ in 0..3 {
        let mut slow = connect_as(attacker, server.addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .await
            .unwrap();
        let trickle = async {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if slow.write_all(b"a").await.is_err() {
                    return;
                }
            }
        };
        within(PATIENCE, trickle).await;
        assert!(closed_within(&mut slow, PATIENCE).await);
        assert!(served(server.addr).await);
    }
    // The fourth is refused at accept: its request is answered with the ban's 429.
    let mut refused = connect_as(attacker, server.addr).await.unwrap();
    let answer = refusal_to_a_request(&mut refused).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
    assert!(served(server.addr).await);
    server.stop().await;
}

/// Gets `from` banned (one wrong password is enough with `--max-failures 1`), then
/// reconnects from eight tasks for `storm`, each attempt waiting at most 300 ms to
/// connect and [`REFUSAL_OR_DROPPED`] for its refusal; returns how many attempts connected.
async fn banned_reconnect_storm(from: Ipv4Addr, server: SocketAddr, storm: Duration) -> usize {
    let mut wrong = connect_as(from, server).await.unwrap();
    wrong
        .write_all(
            b"GET /login HTTP/1.1\r\nHost: t\r\nAuthorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = within(PATIENCE, wrong.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");

    let ends = tokio::time::Instant::now() + storm;
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        tasks.spawn(async move {
            let mut connected = 0;
            // At most this many attempts per task, whatever the time.
            for _ in 0..5000 {
                if tokio::time::Instant::now() >= ends {
                    break;
                }
                let connecting = connect_as(from, server);
                let Ok(Ok(mut stream)) =
                    tokio::time::timeout(Duration::from_millis(300), connecting).await
                else {
                    continue;
                };
                connected += 1;
                let answered = refusal_to_a_request(&mut stream);
                let _ = tokio::time::timeout(REFUSAL_OR_DROPPED, answered).await;
            }
            connected
        });
    }
    within(PATIENCE + storm, tasks.join_all())
        .await
        .into_iter()
        .sum()
}

#[cfg(all(feature = "kernel-bans", target_os = "linux"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_reconnect_storm_is_dropped_in_the_kernel_while_another_peer_is_served() {
    let storm = Duration::from_millis(1500);
    let mut accepted = Vec::new();
    for flags in [&[][..], &["--no-kernel-bans"][..]] {
        let args = [&["--max-failures", "1"][..], flags].concat();
        let server = Example::start("axum_server", &args).await;
        let addr = server.addr;
        let legit = tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..20 {
                failed += usize::from(!served(addr).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            failed
        });
        let connected = banned_reconnect_storm(Ipv4Addr::new(127, 0, 0, 2), addr, storm).await;
        assert_eq!(within(PATIENCE, legit).await.unwrap(), 0, "{flags:?}");
        server.stop().await;
        accepted.push(connected);
    }
    // Every attempt that connects costs the server an accept and a refusal. With bans
    // in the kernel the storm gets through a few times only (its first refusals, and
    // those before the filter is rebuilt); in user space, every time.
    let (kernel, user_space) = (accepted[0], accepted[1]);
    assert!(
        kernel < 100 && user_space > 10 * kernel,
        "attempts accepted: {kernel} with kernel bans, {user_space} without"
    );
}
