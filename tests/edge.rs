//! The edge, end to end against the example servers on loopback: behind a real HAProxy
//! that sends the PROXY protocol, the limits and bans fall on the real clients; a
//! header from anyone else is never honoured; a trusted source is held to the header's
//! deadline, and its slow headers to a cap.

mod support;

use std::{net::Ipv4Addr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use support::{
    example::*,
    haproxy::{HaproxyBinary, Proxy, ProxyProtocol, Role},
    *,
};

/// The balancer's own address: the only source the servers trust for PROXY headers.
const BALANCER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const TRUST_BALANCER: &str = "127.0.0.5/32";
const CLIENT: u8 = 2;
const OTHER: u8 = 3;

fn haproxy() -> HaproxyBinary {
    HaproxyBinary::find().expect("haproxy is installed (apt-get install haproxy; .ci/run does)")
}

/// HAProxy in front of `server`, in TCP mode, sending `proxy` headers.
async fn balancer(server: &Example, proxy: Option<ProxyProtocol>) -> Proxy {
    haproxy()
        .start(
            server.addr,
            Role::Balancer {
                source: BALANCER,
                proxy,
            },
        )
        .await
}

/// Sends one `Connection: close` request from `127.0.0.<from>` to `target`; returns the
/// whole response, lower-cased, or what arrived before the connection closed.
async fn ask(from: u8, target: std::net::SocketAddr, request: &str) -> String {
    let mut stream = connect_from(from, target).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = within(PATIENCE, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).to_ascii_lowercase()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
}

/// Opens a keep-alive connection from `127.0.0.<from>` through `target` and makes one
/// request on it, so that the server has admitted it; returns the open stream.
async fn held(from: u8, target: std::net::SocketAddr) -> Option<TcpStream> {
    let mut stream = connect_from(from, target).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    within(PATIENCE, stream.read_exact(&mut head)).await.ok()?;
    head.starts_with(b"HTTP/1.1 200").then_some(stream)
}

#[tokio::test]
async fn behind_haproxy_the_server_sees_each_real_client() {
    for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
        let server =
            Example::start("axum_server", &["--proxy-protocol-from", TRUST_BALANCER]).await;
        let proxy = balancer(&server, Some(version)).await;
        for client in [CLIENT, OTHER] {
            let answer = ask(client, proxy.addr, &get("/ip")).await;
            assert!(
                answer.ends_with(&format!("\r\n\r\n127.0.0.{client}\n")),
                "{version:?}: {answer}"
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn without_the_proxy_protocol_every_client_is_the_balancer() {
    let server = Example::start("axum_server", &[]).await;
    let proxy = balancer(&server, None).await;
    let answer = ask(CLIENT, proxy.addr, &get("/ip")).await;
    assert!(answer.ends_with("\r\n\r\n127.0.0.5\n"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn behind_haproxy_the_per_peer_limit_falls_on_the_real_client() {
    let server = Example::start(
        "axum_server",
        &[
            "--proxy-protocol-from",
            TRUST_BALANCER,
            "--max-per-peer",
            "2",
        ],
    )
    .await;
    let proxy = balancer(&server, Some(ProxyProtocol::V2)).await;
    let _first = held(CLIENT, proxy.addr).await.expect("admitted");
    let _second = held(CLIENT, proxy.addr).await.expect("admitted");
    let refused = ask(CLIENT, proxy.addr, &get("/")).await;
    assert!(refused.starts_with("http/1.1 503"), "{refused}");
    // The same balancer, another client: served.
    let answer = ask(OTHER, proxy.addr, &get("/ip")).await;
    assert!(answer.ends_with("\r\n\r\n127.0.0.3\n"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn behind_haproxy_a_ban_falls_on_the_real_client() {
    let server = Example::start(
        "axum_server",
        &[
            "--proxy-protocol-from",
            TRUST_BALANCER,
            "--max-failures",
            "2",
        ],
    )
    .await;
    let proxy = balancer(&server, Some(ProxyProtocol::V2)).await;
    for _ in 0..2 {
        let denied = ask(CLIENT, proxy.addr, &get("/login")).await;
        assert!(denied.starts_with("http/1.1 401"), "{denied}");
    }
    // The server closes a failed login's connection before it counts: give it a moment.
    let mut banned = String::new();
    for _ in 0..50 {
        banned = ask(CLIENT, proxy.addr, &get("/")).await;
        if banned.starts_with("http/1.1 429") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(banned.starts_with("http/1.1 429"), "{banned}");
    let answer = ask(OTHER, proxy.addr, &get("/ip")).await;
    assert!(answer.ends_with("\r\n\r\n127.0.0.3\n"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_header_from_an_untrusted_client_is_never_honoured() {
    let server = Example::start("axum_server", &["--proxy-protocol-from", TRUST_BALANCER]).await;
    // A forged header straight from a client: its bytes are HTTP, and not valid HTTP.
    let forged = ask(
        CLIENT,
        server.addr,
        &format!("PROXY TCP4 192.0.2.9 127.0.0.1 4000 80\r\n{}", get("/ip")),
    )
    .await;
    assert!(!forged.contains("192.0.2.9"), "{forged}");
    assert!(
        forged.is_empty() || forged.starts_with("http/1.1 400"),
        "{forged}"
    );
    // Nor is any forwarding header: the server keys on whom it sees.
    let forwarded = ask(
        CLIENT,
        server.addr,
        "GET /ip HTTP/1.1\r\nHost: edge\r\nX-Forwarded-For: 192.0.2.9\r\nForwarded: for=192.0.2.9\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(forwarded.ends_with("\r\n\r\n127.0.0.2\n"), "{forwarded}");
    server.stop().await;
}

/// Connects from the balancer's own address, as HAProxy does.
async fn from_balancer(server: &Example) -> TcpStream {
    connect_from(BALANCER.octets()[3], server.addr).await
}

#[tokio::test]
async fn a_trusted_source_is_held_to_the_header_deadline() {
    let server = Example::start(
        "axum_server",
        &[
            "--proxy-protocol-from",
            TRUST_BALANCER,
            "--proxy-protocol-timeout",
            "0.5",
        ],
    )
    .await;
    // Half a header, then silence: cut at the deadline.
    let mut stalled = from_balancer(&server).await;
    stalled.write_all(b"PROXY TCP4 192.0.2.").await.unwrap();
    let waited = closed_after(&mut stalled).await;
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // No header at all from a trusted source: refused.
    let mut bare = from_balancer(&server).await;
    bare.write_all(get("/ip").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = within(PATIENCE, bare.read_to_end(&mut response)).await;
    assert!(!String::from_utf8_lossy(&response).contains("200 ok"));
    server.stop().await;

    // A header trickled byte by byte, within the deadline: honoured.
    let server = Example::start(
        "axum_server",
        &[
            "--proxy-protocol-from",
            TRUST_BALANCER,
            "--proxy-protocol-timeout",
            "5",
        ],
    )
    .await;
    let mut trickled = from_balancer(&server).await;
    for byte in b"PROXY TCP4 192.0.2.9 127.0.0.1 4000 80\r\n" {
        trickled.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    trickled.write_all(get("/ip").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    within(PATIENCE, trickled.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.ends_with("\r\n\r\n192.0.2.9\n"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn slow_headers_beyond_the_cap_make_way_for_the_balancers_next_connection() {
    const CAP: usize = 8;
    let server = Example::start(
        "axum_server",
        &[
            "--proxy-protocol-from",
            TRUST_BALANCER,
            "--proxy-protocol-timeout",
            "60",
            "--max-connections",
            &CAP.to_string(),
        ],
    )
    .await;
    // Three times as many connections as the cap, each stalled mid-header, oldest first.
    let mut stalled = Vec::new();
    for _ in 0..3 * CAP {
        let mut stream = from_balancer(&server).await;
        stream.write_all(b"PROXY TCP4 192.0.2.").await.unwrap();
        stalled.push(stream);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The balancer's next connection, whole: served.
    let mut whole = from_balancer(&server).await;
    whole
        .write_all(format!("PROXY TCP4 192.0.2.9 127.0.0.1 4000 80\r\n{}", get("/ip")).as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    within(PATIENCE, whole.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.ends_with("\r\n\r\n192.0.2.9\n"), "{response}");
    // No more stalled connections are held than the cap, and the oldest went first, long
    // before their header's deadline.
    let mut open = Vec::new();
    for (arrival, stream) in stalled.iter_mut().enumerate() {
        let mut byte = [0u8; 1];
        let closed = matches!(
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        );
        if !closed {
            open.push(arrival);
        }
    }
    assert!(open.len() < CAP, "open: {open:?}");
    assert!(
        open.iter().all(|&arrival| arrival >= 2 * CAP),
        "open: {open:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_login_and_grpc_servers_see_the_real_client_too() {
    // login_server: a header from the trusted balancer, then its protocol.
    let server = Example::start("login_server", &["--proxy-protocol-from", TRUST_BALANCER]).await;
    let proxy = balancer(&server, Some(ProxyProtocol::V1)).await;
    let mut client = LineClient::connect_from(CLIENT, proxy.addr).await;
    assert_eq!(
        client.ask("LOGIN alice secret").await.as_deref(),
        Some("OK")
    );
    assert_eq!(client.ask("ECHO hi").await.as_deref(), Some("hi"));
    server.stop().await;

    // tonic_server over HTTP/2 through the balancer.
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let server = Example::start("tonic_server", &["--proxy-protocol-from", TRUST_BALANCER]).await;
    let proxy = balancer(&server, Some(ProxyProtocol::V2)).await;
    let channel = grpc_channel(proxy.addr).await;
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Bearer secret".parse().unwrap());
    let response = within(PATIENCE, HealthClient::new(channel).check(request))
        .await
        .unwrap();
    assert_eq!(response.into_inner().status, 1, "SERVING");
    server.stop().await;
}

#[cfg(feature = "tls")]
mod over_tls {
    use std::path::PathBuf;

    use support::tls::*;
    use tokio_rustls::client::TlsStream;

    use super::*;

    /// `generated`'s certificate chain and key as PEM files in a directory of this test's
    /// own; returns their paths as flags take them.
    fn pem_files(generated: &Generated, name: &str) -> (String, String) {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("edge-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (chain, key) = (dir.join("chain.pem"), dir.join("key.pem"));
        std::fs::write(&chain, &generated.chain_pem).unwrap();
        std::fs::write(&key, &generated.key_pem).unwrap();
        (
            chain.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )
    }

    async fn tls_from(
        from: u8,
        target: std::net::SocketAddr,
        trusted: &[&Generated],
        alpn: &str,
    ) -> TlsStream<TcpStream> {
        tls_connect(
            connect_from(from, target).await,
            client_config(trusted, &[alpn]),
        )
        .await
    }

    #[tokio::test]
    async fn axum_server_speaks_http1_and_http2_over_tls_as_alpn_agrees() {
        let generated = generate();
        let (chain, key) = pem_files(&generated, "alpn");
        let server =
            Example::start("axum_server", &["--tls-cert", &chain, "--tls-key", &key]).await;

        let stream = tls_from(CLIENT, server.addr, &[&generated], "h2").await;
        let mut h2 = Http2Client::connect(stream).await;
        let answer = within(PATIENCE, h2.get("/ip")).await.unwrap();
        assert_eq!(
            (answer.version, answer.body.as_str()),
            (http::Version::HTTP_2, "127.0.0.2\n")
        );

        let stream = tls_from(CLIENT, server.addr, &[&generated], "http/1.1").await;
        let mut h1 = Http1Client::connect(stream).await;
        let answer = within(PATIENCE, h1.get("/ip")).await.unwrap();
        assert_eq!(
            (answer.version, answer.body.as_str()),
            (http::Version::HTTP_11, "127.0.0.2\n")
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn a_stalled_handshake_is_cut_at_the_handshake_deadline() {
        let generated = generate();
        let (chain, key) = pem_files(&generated, "stalled");
        let server = Example::start(
            "axum_server",
            &[
                "--tls-cert",
                &chain,
                "--tls-key",
                &key,
                "--tls-handshake-timeout",
                "0.5",
                "--first-byte-timeout",
                "30",
            ],
        )
        .await;
        // A TLS record header announcing a 512-byte ClientHello, and the hello's first
        // bytes: then silence.
        let mut stalled = connect_from(CLIENT, server.addr).await;
        stalled
            .write_all(&[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ])
            .await
            .unwrap();
        let waited = closed_after(&mut stalled).await;
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn behind_haproxy_tls_passes_through_and_the_server_sees_the_client() {
        let generated = generate();
        let (chain, key) = pem_files(&generated, "balanced");
        let server = Example::start(
            "axum_server",
            &[
                "--proxy-protocol-from",
                TRUST_BALANCER,
                "--tls-cert",
                &chain,
                "--tls-key",
                &key,
            ],
        )
        .await;
        let proxy = balancer(&server, Some(ProxyProtocol::V2)).await;
        for client in [CLIENT, OTHER] {
            let stream = tls_from(client, proxy.addr, &[&generated], "h2").await;
            let mut h2 = Http2Client::connect(stream).await;
            let answer = within(PATIENCE, h2.get("/ip")).await.unwrap();
            assert_eq!(answer.body, format!("127.0.0.{client}\n"));
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn a_sighup_reloads_the_certificate_for_new_connections() {
        let (first, second) = (generate(), generate());
        let (chain, key) = pem_files(&first, "reload");
        let server =
            Example::start("axum_server", &["--tls-cert", &chain, "--tls-key", &key]).await;
        let live = tls_from(CLIENT, server.addr, &[&first, &second], "h2").await;
        assert_eq!(presented(&live), first.der);

        std::fs::write(&chain, &second.chain_pem).unwrap();
        std::fs::write(&key, &second.key_pem).unwrap();
        let hangup = std::process::Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(hangup.success());
        let mut seen = None;
        for _ in 0..100 {
            let stream = tls_from(CLIENT, server.addr, &[&first, &second], "h2").await;
            if presented(&stream) == second.der {
                seen = Some(stream);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fresh = seen.expect("the new certificate within two seconds");
        // Both connections serve.
        for stream in [live, fresh] {
            let mut h2 = Http2Client::connect(stream).await;
            assert_eq!(within(PATIENCE, h2.get("/")).await.unwrap().body, "hello\n");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn tonic_server_answers_grpc_over_tls() {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        let generated = generate();
        let (chain, key) = pem_files(&generated, "grpc");
        let server =
            Example::start("tonic_server", &["--tls-cert", &chain, "--tls-key", &key]).await;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&generated.chain_pem))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{}", server.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request
            .metadata_mut()
            .insert("authorization", "Bearer secret".parse().unwrap());
        let response = within(PATIENCE, HealthClient::new(channel).check(request))
            .await
            .unwrap();
        assert_eq!(response.into_inner().status, 1, "SERVING");
        server.stop().await;
    }
}
