//! The 2005 scenario, end to end on loopback against the example servers: an attacker
//! opens connection after connection, fails a login on each and never closes its side,
//! while a legitimate peer (another 127.0.0.x address) keeps working.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

use support::{example::*, *};

const ATTACKER: u8 = 2;
const LEGIT: u8 = 3;

/// How many connections the attacker can hold here: thousands, within this process's
/// descriptor limit.
fn attack_size(wanted: usize) -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(1024);
    wanted.min(soft.saturating_sub(200) / 2)
}

/// A legitimate client on its own address, working at a steady pace until stopped;
/// counts what went right and wrong.
struct Legit {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Legit {
    /// Logs in to login_server once, then echoes every 20 ms.
    async fn login_server(addr: std::net::SocketAddr) -> Self {
        let mut client = LineClient::connect_from(LEGIT, addr).await;
        assert_eq!(
            client.ask("LOGIN alice secret").await.as_deref(),
            Some("OK")
        );
        let client = Arc::new(tokio::sync::Mutex::new(client));
        Self::run(move |ok, failed| {
            let client = client.clone();
            async move {
                match client.lock().await.ask("ECHO ping").await.as_deref() {
                    Some("ping") => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    }

    fn run<F, Fut>(step: F) -> Self
    where
        F: Fn(Arc<AtomicUsize>, Arc<AtomicUsize>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (stop_flag, ok_count, failed_count) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            // Bounded: at most a minute of steps.
            for _ in 0..3000 {
                if stop_flag.load(Ordering::SeqCst) {
                    break;
                }
                step(ok_count.clone(), failed_count.clone()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            stop,
            ok,
            failed,
            task,
        }
    }

    /// Stops it and returns (succeeded, failed).
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        within(PATIENCE, self.task).await.unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// The first line the server sends on `stream`, or `None` if it closes first.
async fn first_line(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match within(PATIENCE, stream.read(&mut byte)).await {
            Ok(0) | Err(_) => return None,
            Ok(_) if byte[0] == b'\n' => return Some(String::from_utf8_lossy(&buf).into_owned()),
            Ok(_) => buf.push(byte[0]),
        }
    }
}

/// Whether the server has closed `stream` (or is closing it now).
async fn server_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        within(PATIENCE, stream.read(&mut byte)).await,
        Ok(0) | Err(_)
    )
}

/// Waits, up to the patience, for the server's descriptors to come down to `at_most`.
async fn descriptors_settle(server: &Example, at_most: usize) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let open = server.open_descriptors();
        if open <= at_most || tokio::time::Instant::now() > deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2005_login_flood_is_closed_and_banned_while_another_peer_logs_in() {
    let attack = attack_size(2000);
    // Refused in user space every time, at scale: the kernel filter would drop the
    // attacker after ten refusals (see the HTTP and gRPC floods).
    let server = Example::start("login_server", &["--no-kernel-bans"]).await;
    let legit = Legit::login_server(server.addr).await;
    let baseline = server.open_descriptors();

    let mut held = Vec::with_capacity(attack);
    let (mut denied, mut banned) = (0, 0);
    for _ in 0..attack {
        let mut stream = connect_from(ATTACKER, server.addr).await;
        // The attacker writes its wrong password and never closes its side.
        let _ = stream.write_all(b"LOGIN alice wrong\n").await;
        match first_line(&mut stream).await.as_deref() {
            Some("DENIED") => denied += 1,
            Some("ERROR banned") => banned += 1,
            other => panic!("unexpected answer {other:?}"),
        }
        // The server records a failure, then closes; waiting for the close (the
        // attacker still holds its side) keeps the count of DENIED exact.
        assert!(
            server_closed(&mut stream).await,
            "the server closed the connection"
        );
        held.push(stream);
    }
    // Five failures (the default) ban the peer; every later connection is refused at
    // accept.
    assert_eq!((denied, banned), (5, attack - 5));
    for stream in &mut held {
        assert!(
            server_closed(stream).await,
            "the server closed every connection"
        );
    }
    // The attacker still holds all its sockets; the server holds none of them.
    let open = descriptors_settle(&server, baseline).await;
    assert!(
        open <= baseline,
        "{open} descriptors open, {baseline} at the start"
    );

    let mut again = connect_from(ATTACKER, server.addr).await;
    assert_eq!(
        first_line(&mut again).await.as_deref(),
        Some("ERROR banned")
    );
    let (ok, failed) = legit.finish().await;
    assert!(
        ok > 0 && failed == 0,
        "legit client: {ok} ok, {failed} failed"
    );
    drop(held);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprotected_the_2005_login_flood_piles_up_descriptors() {
    let attack = attack_size(500);
    let server = Example::start("login_server", &["--unprotected"]).await;
    let baseline = server.open_descriptors();

    let mut held = Vec::with_capacity(attack);
    for _ in 0..attack {
        let mut stream = connect_from(ATTACKER, server.addr).await;
        stream.write_all(b"LOGIN alice wrong\n").await.unwrap();
        assert_eq!(first_line(&mut stream).await.as_deref(), Some("DENIED"));
        held.push(stream);
    }
    let open = server.open_descriptors();
    assert!(
        open >= baseline + attack,
        "{open} descriptors open, {baseline} at the start, {attack} connections held"
    );
    drop(held);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_401_flood_is_banned_while_another_peer_is_served() {
    let server = Example::start("axum_server", &[]).await;
    let addr = server.addr;
    let legit = Legit::run(move |ok, failed| async move {
        let mut client = Http1Client::connect(connect_from(LEGIT, addr).await).await;
        match within(PATIENCE, client.get("/")).await {
            Ok(answer) if answer.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
            _ => failed.fetch_add(1, Ordering::SeqCst),
        };
    });

    let mut statuses = Vec::new();
    for _ in 0..50 {
        let connecting = connect_from(ATTACKER, addr);
        let Ok(mut stream) = tokio::time::timeout(Duration::from_millis(300), connecting).await
        else {
            // Its SYNs are dropped in the kernel from now on.
            statuses.push("dropped".to_owned());
            break;
        };
        // alice:wrong, keep-alive asked for: the server closes after the 401 anyway.
        let _ = stream
            .write_all(
                b"GET /login HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\n",
            )
            .await;
        let mut response = String::new();
        let read = stream.read_to_string(&mut response);
        if tokio::time::timeout(REFUSAL_OR_DROPPED, read)
            .await
            .is_err()
        {
            // Caught mid-handshake by the filter's rebuild: never answered.
            statuses.push("dropped".to_owned());
            break;
        }
        statuses.push(response.split(' ').nth(1).unwrap_or("closed").to_owned());
    }
    // Five failures ban it; ten refusals later (a few more while the filter is
    // rebuilt), the kernel drops it.
    let unauthorized = statuses.iter().filter(|status| *status == "401").count();
    let refused = statuses.iter().filter(|status| *status == "429").count();
    assert_eq!(unauthorized, 5, "{statuses:?}");
    assert!(statuses[..5].iter().all(|status| status == "401"));
    assert!((10..45).contains(&refused), "{statuses:?}");
    assert_eq!(statuses.last().map(String::as_str), Some("dropped"));
    let (ok, failed) = legit.finish().await;
    assert!(
        ok > 0 && failed == 0,
        "legit client: {ok} ok, {failed} failed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_unauthenticated_flood_is_banned_while_another_peer_is_served() {
    use tonic::transport::Endpoint;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    // The legitimate client opens a connection every 20 ms or so: more than the
    // default 20 a second per peer on a fast machine.
    let server = Example::start("tonic_server", &["--rate", "100"]).await;
    let endpoint = |last: u8| {
        Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .local_address(Some(std::net::Ipv4Addr::new(127, 0, 0, last).into()))
            // Once the kernel drops its SYNs, the attacker's connections never complete.
            .connect_timeout(Duration::from_millis(300))
    };
    let legit_endpoint = endpoint(LEGIT);
    let legit = Legit::run(move |ok, failed| {
        let endpoint = legit_endpoint.clone();
        async move {
            let mut request = tonic::Request::new(HealthCheckRequest::default());
            request
                .metadata_mut()
                .insert("authorization", "Bearer secret".parse().unwrap());
            let answered = match endpoint.connect().await {
                Ok(channel) => HealthClient::new(channel).check(request).await.is_ok(),
                Err(_) => false,
            };
            if answered {
                ok.fetch_add(1, Ordering::SeqCst);
            } else {
                failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    let mut unauthenticated = 0;
    let mut refused = 0;
    for _ in 0..20 {
        let outcome = match within(PATIENCE, endpoint(ATTACKER).connect()).await {
            Ok(channel) => within(
                PATIENCE,
                HealthClient::new(channel).check(HealthCheckRequest::default()),
            )
            .await
            .map(|_| ()),
            Err(error) => Err(tonic::Status::unavailable(error.to_string())),
        };
        match outcome {
            Err(status) if status.code() == tonic::Code::Unauthenticated => unauthenticated += 1,
            Err(_) => refused += 1,
            Ok(()) => panic!("no token, yet served"),
        }
    }
    // Refused: in user space, then (after ten refusals) dropped by the kernel.
    assert_eq!((unauthenticated, refused), (5, 15));
    let (ok, failed) = legit.finish().await;
    assert!(
        ok > 0 && failed == 0,
        "legit client: {ok} ok, {failed} failed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_that_reconnects_is_banned_while_another_peer_is_served() {
    let server = Example::start(
        "axum_server",
        &["--max-timeouts", "3", "--first-byte-timeout", "0.2"],
    )
    .await;
    let addr = server.addr;
    let legit = Legit::run(move |ok, failed| async move {
        let mut client = Http1Client::connect(connect_from(LEGIT, addr).await).await;
        match within(PATIENCE, client.get("/")).await {
            Ok(answer) if answer.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
            _ => failed.fetch_add(1, Ordering::SeqCst),
        };
    });

    // Three connections that send nothing, each closed at the first-byte timeout
    // without a word.
    for _ in 0..3 {
        let mut silent = connect_from(ATTACKER, addr).await;
        let mut answer = Vec::new();
        within(PATIENCE, silent.read_to_end(&mut answer))
            .await
            .unwrap();
        assert!(answer.is_empty(), "{answer:?}");
    }
    // The fourth is refused at accept: its request is answered with the ban's 429.
    let mut refused = connect_from(ATTACKER, addr).await;
    refused
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = within(PATIENCE, refused.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after:"),
        "{answer:?}"
    );

    let (ok, failed) = legit.finish().await;
    assert!(
        ok > 0 && failed == 0,
        "legit client: {ok} ok, {failed} failed"
    );
    server.stop().await;
}
