//! The TLS layer: HTTP/1.1, HTTP/2 and gRPC over TLS as agreed by ALPN, the handshake
//! deadline against stalled and trickled handshakes, typed and counted failures,
//! certificates reloaded while connections live, and the timeouts below it on
//! decrypted bytes.
#![cfg(feature = "tls")]

mod support;

use std::time::Duration;

use axum::{Router, extract::WebSocketUpgrade, routing::get};
use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    task::JoinHandle,
    time::Instant,
};
use tokio_rustls::TlsConnector;
use tower::{ServiceBuilder, ServiceExt};
use tower_bouncer::{
    BoxError, ConfigError, Conn,
    http::{ConnExtensions, HttpService},
    overload::Overload,
    timeout::{TimeoutError, TimeoutLayer},
    tls::{
        CertificateError, ServerCertificate, TlsError, TlsInfo, TlsLayer,
        rustls::{ClientConnection, pki_types::ServerName},
    },
};

use support::{tls::*, *};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn tls_layer(certificate: ServerCertificate) -> TlsLayer {
    TlsLayer::builder(certificate).build().unwrap()
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/tls",
            get(|conn: ConnExtensions| async move {
                let tls = conn.get::<TlsInfo>().unwrap();
                let alpn = tls.alpn().map(String::from_utf8_lossy);
                format!(
                    "{} {}",
                    tls.server_name().unwrap_or("-"),
                    alpn.as_deref().unwrap_or("-")
                )
            }),
        )
        .route(
            "/upload",
            axum::routing::post(|body: String| async move { format!("{} bytes\n", body.len()) }),
        )
        .route(
            "/ws",
            get(|upgrade: WebSocketUpgrade| async move {
                upgrade.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        if socket.send(message).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        )
}

/// Serves one in-memory connection with `service`; returns its task and the client's end.
fn serve_one<S>(service: S) -> (JoinHandle<Result<(), BoxError>>, DuplexStream)
where
    S: tower::Service<Conn<DuplexStream>, Response = (), Error = BoxError, Future: Send + 'static>
        + Send
        + 'static,
{
    let (conn, client) = duplex_conn("192.0.2.1:1");
    (tokio::spawn(service.oneshot(conn)), client)
}

/// The handshake error a connection failed with.
fn tls_error(outcome: Result<(), BoxError>) -> TlsError {
    let error = outcome.expect_err("the handshake should have failed");
    *error
        .downcast::<TlsError>()
        .unwrap_or_else(|error| panic!("not a TlsError: {error}"))
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

mod over_loopback {
    use super::*;

    #[tokio::test]
    async fn http1_and_http2_are_served_as_agreed_and_handlers_see_sni_and_alpn() {
        let generated = generate();
        let tls = tls_layer(generated.certificate());
        let server = LoopbackServer::start(
            ServiceBuilder::new()
                .layer(tls.clone())
                .service(HttpService::new(app())),
            PATIENCE,
        )
        .await;

        let stream = connect_from(1, server.addr).await;
        let stream = tls_connect(stream, client_config(&[&generated], &["http/1.1"])).await;
        let mut h1 = Http1Client::connect(stream).await;
        let answer = within(PATIENCE, h1.get("/tls")).await.unwrap();
        assert_eq!(answer.version, http::Version::HTTP_11);
        assert_eq!(answer.body, "localhost http/1.1");

        let stream = connect_from(1, server.addr).await;
        let stream = tls_connect(stream, client_config(&[&generated], &["h2", "http/1.1"])).await;
        let mut h2 = Http2Client::connect(stream).await;
        let answer = within(PATIENCE, h2.get("/tls")).await.unwrap();
        assert_eq!(answer.version, http::Version::HTTP_2);
        assert_eq!(answer.body, "localhost h2");

        // No ALPN: the adapter detects the protocol, as on a plain connection.
        let stream = connect_from(1, server.addr).await;
        let stream = tls_connect(stream, client_config(&[&generated], &[])).await;
        let mut h2 = Http2Client::connect(stream).await;
        let answer = within(PATIENCE, h2.get("/tls")).await.unwrap();
        assert_eq!(answer.version, http::Version::HTTP_2);
        assert_eq!(answer.body, "localhost -");

        assert_eq!(tls.stats().handshakes_completed, 3);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_client_that_agreed_on_h2_is_not_served_http1() {
        let generated = generate();
        let server = LoopbackServer::start(
            ServiceBuilder::new()
                .layer(tls_layer(generated.certificate()))
                .service(HttpService::new(app())),
            PATIENCE,
        )
        .await;
        let stream = connect_from(1, server.addr).await;
        let mut stream = tls_connect(stream, client_config(&[&generated], &["h2"])).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        // The server speaks HTTP/2 (its SETTINGS first), not HTTP/1.
        let mut answer = [0u8; 64];
        let read = within(PATIENCE, stream.read(&mut answer)).await.unwrap();
        assert!(read > 0);
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(!answer.starts_with("HTTP/1"), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_websocket_is_upgraded_over_tls() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;

        let generated = generate();
        let server = LoopbackServer::start(
            ServiceBuilder::new()
                .layer(tls_layer(generated.certificate()))
                .service(HttpService::new(app())),
            PATIENCE,
        )
        .await;
        let stream = connect_from(1, server.addr).await;
        let stream = tls_connect(stream, client_config(&[&generated], &["http/1.1"])).await;
        let (mut socket, _) = within(
            PATIENCE,
            tokio_tungstenite::client_async("wss://localhost/ws", stream),
        )
        .await
        .unwrap();
        socket.send(Message::text("ping")).await.unwrap();
        let echoed = within(PATIENCE, socket.next()).await.unwrap().unwrap();
        assert_eq!(echoed, Message::text("ping"));
        drop(socket);
        server.stop().await;
    }

    #[tokio::test]
    async fn tonic_is_served_over_tls() {
        use tonic::service::{Routes, interceptor::InterceptedService};
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        let generated = generate();
        let (_reporter, health) = tonic_health::server::health_reporter();
        // The interceptor sees what the handshake agreed, as any tonic service would.
        let health = InterceptedService::new(health, |request: tonic::Request<()>| {
            let conn = request.extensions().get::<ConnExtensions>();
            match conn.and_then(ConnExtensions::get::<TlsInfo>) {
                Some(tls) if tls.alpn() == Some(b"h2") => Ok(request),
                other => Err(tonic::Status::internal(format!("{other:?}"))),
            }
        });
        let routes = Routes::new(health).prepare().into_axum_router();
        let server = LoopbackServer::start(
            ServiceBuilder::new()
                .layer(tls_layer(generated.certificate()))
                .service(HttpService::new(routes)),
            PATIENCE,
        )
        .await;

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
        let response = within(
            PATIENCE,
            HealthClient::new(channel).check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .unwrap();
        assert_eq!(response.into_inner().status, 1); // SERVING
        server.stop().await;
    }

    #[tokio::test]
    async fn a_reloaded_certificate_is_presented_to_new_connections_while_live_ones_go_on() {
        let (first, renewed) = (generate(), generate());
        let certificate = first.certificate();
        let server = LoopbackServer::start(
            ServiceBuilder::new()
                .layer(tls_layer(certificate.clone()))
                .service(HttpService::new(app())),
            PATIENCE,
        )
        .await;
        // A client config each: a second connection with the same one would resume the
        // first one's session, in which the server presents no certificate.
        let trusting_both = || client_config(&[&first, &renewed], &["http/1.1"]);

        let live = tls_connect(connect_from(1, server.addr).await, trusting_both()).await;
        assert_eq!(presented(&live), first.der);
        let mut live = Http1Client::connect(live).await;
        assert_eq!(within(PATIENCE, live.get("/")).await.unwrap().status, 200);

        certificate
            .reload_from_pem(renewed.chain_pem.as_bytes(), renewed.key_pem.as_bytes())
            .unwrap();

        let next = tls_connect(connect_from(1, server.addr).await, trusting_both()).await;
        assert_eq!(presented(&next), renewed.der);
        let mut next = Http1Client::connect(next).await;
        assert_eq!(within(PATIENCE, next.get("/")).await.unwrap().status, 200);
        assert_eq!(within(PATIENCE, live.get("/")).await.unwrap().status, 200);
        server.stop().await;
    }

    /// `curl`, where the machine has it, with OpenSSL on the client side.
    #[tokio::test]
    async fn curl_gets_an_answer_over_http1_and_http2() {
        let Ok(version) = std::process::Command::new("curl").arg("-V").output() else {
            eprintln!("no curl on this machine; skipped");
            return;
        };
        let features = String::from_utf8_lossy(&version.stdout).into_owned();
        let generated = generate();
        let server = LoopbackServer::start(
            ServiceBuilder::new()
                .layer(tls_layer(generated.certificate()))
                .service(HttpService::new(app())),
            PATIENCE,
        )
        .await;
        let ca =
            std::env::temp_dir().join(format!("tower-bouncer-curl-{}.pem", std::process::id()));
        std::fs::write(&ca, &generated.chain_pem).unwrap();
        let port = server.addr.port();
        let mut versions = vec![("--http1.1", "localhost http/1.1")];
        if features.contains("HTTP2") {
            versions.push(("--http2", "localhost h2"));
        }
        for (flag, expected) in versions {
            let output = within(
                PATIENCE,
                tokio::process::Command::new("curl")
                    .args([
                        "--silent",
                        "--show-error",
                        "--max-time",
                        "10",
                        flag,
                        "--cacert",
                    ])
                    .arg(&ca)
                    .arg("--resolve")
                    .arg(format!("localhost:{port}:127.0.0.1"))
                    .arg(format!("https://localhost:{port}/tls"))
                    .output(),
            )
            .await
            .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
        }
        std::fs::remove_file(&ca).ok();
        server.stop().await;
    }
}

mod handshakes {
    use super::*;

    /// The first flight of a TLS client, as it would send it.
    fn client_hello(generated: &Generated) -> Vec<u8> {
        let mut client = ClientConnection::new(
            client_config(&[generated], &["h2"]),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        hello
    }

    /// Serves one connection under a TLS layer in front of the HTTP adapter.
    fn serve_tls(tls: &TlsLayer) -> (JoinHandle<Result<(), BoxError>>, DuplexStream) {
        serve_one(
            ServiceBuilder::new()
                .layer(tls.clone())
                .service(HttpService::new(app())),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_client_hello_then_silence_is_cut_at_the_handshake_deadline() {
        let generated = generate();
        let tls = tls_layer(generated.certificate());
        let began = Instant::now();
        let (connection, mut client) = serve_tls(&tls);
        let hello = client_hello(&generated);
        client.write_all(&hello[..hello.len() / 2]).await.unwrap();

        let outcome = within(secs(3600), connection).await.unwrap();
        assert!(matches!(tls_error(outcome), TlsError::Timeout(limit) if limit == secs(10)));
        assert_eq!(began.elapsed(), secs(10));
        assert_eq!(tls.stats().handshakes_timed_out, 1);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_hello_trickled_a_byte_a_second_is_cut_at_the_handshake_deadline() {
        let generated = generate();
        let tls = tls_layer(generated.certificate());
        let began = Instant::now();
        let (connection, mut client) = serve_tls(&tls);
        let hello = client_hello(&generated);
        assert!(hello.len() > 20);
        let trickle = tokio::spawn(async move {
            for byte in hello {
                if client.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(secs(1)).await;
            }
        });

        let outcome = within(secs(3600), connection).await.unwrap();
        assert!(matches!(tls_error(outcome), TlsError::Timeout(_)));
        assert_eq!(began.elapsed(), secs(10));
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn under_full_pressure_the_handshake_deadline_is_a_fifth_of_itself() {
        let generated = generate();
        // A monitor at its maximum: full pressure from the start.
        let overload = Overload::builder()
            .descriptors(false)
            .monitor(|| 1.0)
            .build()
            .unwrap();
        let tls = TlsLayer::builder(generated.certificate())
            .overload(&overload)
            .build()
            .unwrap();
        let began = Instant::now();
        let (connection, mut client) = serve_tls(&tls);
        let hello = client_hello(&generated);
        client.write_all(&hello[..hello.len() / 2]).await.unwrap();

        let outcome = within(secs(3600), connection).await.unwrap();
        assert!(matches!(tls_error(outcome), TlsError::Timeout(limit) if limit == secs(2)));
        assert_eq!(began.elapsed(), secs(2));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_handshake_is_cut_at_the_deadline() {
        let generated = generate();
        let tls = TlsLayer::builder(generated.certificate())
            .handshake_timeout(secs(3))
            .build()
            .unwrap();
        let began = Instant::now();
        let (connection, mut client) = serve_tls(&tls);
        // A whole ClientHello: the server answers, and waits for the client's Finished.
        client.write_all(&client_hello(&generated)).await.unwrap();
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.unwrap();

        let outcome = within(secs(3600), connection).await.unwrap();
        assert!(matches!(tls_error(outcome), TlsError::Timeout(limit) if limit == secs(3)));
        assert_eq!(began.elapsed(), secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_server_closes_a_connection_still_in_its_handshake() {
        use tower_bouncer::serve::Server;

        let generated = generate();
        // The Bouncer's TLS handshake deadline and drain deadline are both 10 s; here the
        // handshake's is longer, to tell a close by the drain from the deadline's cut.
        let tls = TlsLayer::builder(generated.certificate())
            .handshake_timeout(secs(120))
            .build()
            .unwrap();
        let (queue, _log, listener) = ChannelListener::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::new(listener)
                .drain_timeout(secs(60))
                .with_graceful_shutdown(async move {
                    stopped.await.ok();
                })
                .serve(
                    ServiceBuilder::new()
                        .layer(tls.clone())
                        .service(HttpService::new(app())),
                ),
        );
        // A client that connected and sent half its ClientHello (or nothing: a port
        // scanner, a balancer's TCP check), as the server is told to stop.
        let (conn, mut client) = duplex_conn("192.0.2.1:1");
        queue.send(Ok(conn)).unwrap();
        let hello = client_hello(&generated);
        client.write_all(&hello[..hello.len() / 2]).await.unwrap();
        tokio::time::sleep(secs(1)).await;

        let shutdown_began = Instant::now();
        stop.send(()).unwrap();
        let report = within(secs(3600), server).await.unwrap().unwrap();
        // A connection that has sent no request loses nothing by being closed at once,
        // as the HTTP adapter closes one that has sent nothing, and the PROXY layer one
        // still reading its header.
        let stats = tls.stats();
        assert_eq!(
            (
                (report.drained, report.cut),
                shutdown_began.elapsed(),
                (stats.handshakes_timed_out, stats.handshakes_closed)
            ),
            ((1, 0), Duration::ZERO, (0, 1)),
            "(drained, cut), how long the drain took, handshakes (timed out, closed)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_typed_counted_and_reach_the_layers_above() {
        let generated = generate();
        let tls = tls_layer(generated.certificate());

        // Plain HTTP on the TLS port.
        let (connection, mut client) = serve_tls(&tls);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let outcome = within(PATIENCE, connection).await.unwrap();
        assert!(matches!(tls_error(outcome), TlsError::Protocol(_)));

        // A client that leaves halfway through its ClientHello.
        let (connection, mut client) = serve_tls(&tls);
        let hello = client_hello(&generated);
        client.write_all(&hello[..hello.len() / 2]).await.unwrap();
        drop(client);
        let outcome = within(PATIENCE, connection).await.unwrap();
        assert!(matches!(tls_error(outcome), TlsError::Io(_)));

        // A client offering only protocols the server does not speak.
        let (connection, client) = serve_tls(&tls);
        let refused = TlsConnector::from(client_config(&[&generated], &["imap"]))
            .connect(ServerName::try_from("localhost").unwrap(), client);
        assert!(within(PATIENCE, refused).await.is_err());
        let outcome = within(PATIENCE, connection).await.unwrap();
        assert!(matches!(tls_error(outcome), TlsError::Protocol(_)));

        let stats = tls.stats();
        assert_eq!(
            (
                stats.handshakes_completed,
                stats.handshakes_failed,
                stats.handshakes_timed_out
            ),
            (0, 3, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_their_counters_and_a_huge_timeout_means_forever() {
        let generated = generate();
        let tls = TlsLayer::builder(generated.certificate())
            .handshake_timeout(Duration::MAX)
            .build()
            .unwrap();
        let clone = tls.clone();
        let (_connection, client) = serve_tls(&clone);
        let stream = tls_connect(client, client_config(&[&generated], &["http/1.1"])).await;
        let mut h1 = Http1Client::connect(stream).await;
        assert_eq!(within(PATIENCE, h1.get("/")).await.unwrap().status, 200);
        assert_eq!(tls.stats().handshakes_completed, 1);
    }

    #[test]
    fn bad_settings_are_refused_when_built() {
        let generated = generate();
        let zero = TlsLayer::builder(generated.certificate())
            .handshake_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(
            zero,
            ConfigError::Zero {
                setting: "handshake_timeout"
            }
        );
        let empty_name = TlsLayer::builder(generated.certificate())
            .alpn(["h2", ""])
            .build()
            .unwrap_err();
        assert_eq!(empty_name, ConfigError::Zero { setting: "alpn" });
    }
}

mod certificates {
    use super::*;
    use std::path::PathBuf;

    /// Writes `contents` to a file of its own for this test.
    fn file(name: &str, contents: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("tower-bouncer-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn pem_files_load_and_their_errors_name_the_file_and_the_fault() {
        let (generated, other) = (generate(), generate());
        let chain = file("chain.pem", &generated.chain_pem);
        let key = file("key.pem", &generated.key_pem);
        let other_key = file("other-key.pem", &other.key_pem);
        let missing = std::env::temp_dir().join("tower-bouncer-tls-missing.pem");

        let certificate = ServerCertificate::from_pem_files(&chain, &key).unwrap();
        assert_eq!(certificate.current().cert[0], generated.der);

        let error = ServerCertificate::from_pem_files(&missing, &key).unwrap_err();
        assert!(matches!(&error, CertificateError::Read { path, .. } if *path == missing));
        assert!(
            error.to_string().contains("tower-bouncer-tls-missing.pem"),
            "{error}"
        );

        // The files swapped: the key file holds no certificate.
        let error = ServerCertificate::from_pem_files(&key, &chain).unwrap_err();
        assert!(matches!(&error, CertificateError::Chain { path: Some(path), .. } if *path == key));
        assert!(
            error.to_string().contains("no certificate found"),
            "{error}"
        );

        let error = ServerCertificate::from_pem_files(&chain, &chain).unwrap_err();
        assert!(matches!(&error, CertificateError::Key { path: Some(path), .. } if *path == chain));
        assert!(
            error.to_string().contains("no private key found"),
            "{error}"
        );

        let error = ServerCertificate::from_pem_files(&chain, &other_key).unwrap_err();
        assert!(matches!(error, CertificateError::Mismatch { .. }));
        assert!(
            error.to_string().contains("other-key.pem does not hold"),
            "{error}"
        );

        // A failed reload keeps the certificate in place.
        assert!(
            certificate
                .reload_from_pem_files(&chain, &other_key)
                .is_err()
        );
        assert_eq!(certificate.current().cert[0], generated.der);

        for path in [chain, key, other_key] {
            std::fs::remove_file(path).ok();
        }
    }

    /// A certificate or key path that is not a regular file is refused at once, naming
    /// the file. A FIFO with no writer (a renewal hook's, or one swapped in) would hold
    /// the read, and a SIGHUP's reload with it, for good; a directory or a file over
    /// 1 MiB is refused as well. The certificate in force stays.
    #[test]
    fn a_pem_path_that_is_not_a_regular_file_is_refused_without_waiting_on_it() {
        let generated = generate();
        let chain = file("irregular-chain.pem", &generated.chain_pem);
        let key = file("irregular-key.pem", &generated.key_pem);
        let certificate = ServerCertificate::from_pem_files(&chain, &key).unwrap();
        let fifo = std::env::temp_dir().join(format!(
            "tower-bouncer-tls-{}-fifo-key.pem",
            std::process::id()
        ));
        std::fs::remove_file(&fifo).ok();
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());

        let (done, outcome) = std::sync::mpsc::channel();
        let reloading = std::thread::spawn({
            let (certificate, chain, fifo) = (certificate.clone(), chain.clone(), fifo.clone());
            move || {
                done.send(certificate.reload_from_pem_files(&chain, &fifo))
                    .ok();
            }
        });
        let outcome = outcome.recv_timeout(PATIENCE);
        if outcome.is_err() {
            // The read waits for a writer: be one, so that the thread ends.
            drop(std::fs::OpenOptions::new().write(true).open(&fifo));
        }
        reloading.join().unwrap();
        let error = outcome
            .expect("the reload waits on the FIFO for a writer")
            .unwrap_err();
        assert!(matches!(&error, CertificateError::Read { path, .. } if *path == fifo));
        assert!(error.to_string().contains("not a regular file"), "{error}");
        assert_eq!(error.to_string().lines().count(), 1, "{error}");

        let directory = std::env::temp_dir();
        let error = ServerCertificate::from_pem_files(&directory, &key).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        let long = file("long-chain.pem", &generated.chain_pem.repeat(2 << 20 >> 9));
        let error = ServerCertificate::from_pem_files(&long, &key).unwrap_err();
        assert!(error.to_string().contains("at most 1048576"), "{error}");
        assert_eq!(certificate.current().cert[0], generated.der);

        for path in [chain, key, fifo, long] {
            std::fs::remove_file(path).ok();
        }
    }

    #[test]
    fn malformed_pem_in_memory_is_refused() {
        let generated = generate();
        let truncated = &generated.chain_pem[..generated.chain_pem.len() / 2];
        let error = ServerCertificate::from_pem(truncated.as_bytes(), generated.key_pem.as_bytes())
            .unwrap_err();
        assert!(matches!(error, CertificateError::Chain { path: None, .. }));
        assert!(
            error.to_string().starts_with("the certificate chain: "),
            "{error}"
        );
    }
}

mod timeouts_below {
    use super::*;

    /// The README's timeouts (idle 60 s, request 10 s) under the TLS layer, over the
    /// adapter, on one in-memory connection.
    fn layered(generated: &Generated) -> (JoinHandle<Result<(), BoxError>>, DuplexStream) {
        let timeouts = TimeoutLayer::builder()
            .idle(secs(60))
            .request(secs(10))
            .lifetime(secs(3600))
            .build()
            .unwrap();
        serve_one(
            ServiceBuilder::new()
                .layer(tls_layer(generated.certificate()))
                .layer(timeouts)
                .service(HttpService::new(app())),
        )
    }

    /// An HTTP/2 client (the `h2` crate, for PINGs and body trickles) over TLS.
    async fn h2_client(
        client: DuplexStream,
        generated: &Generated,
    ) -> (h2::client::SendRequest<Bytes>, h2::PingPong) {
        let stream = tls_connect(client, client_config(&[generated], &["h2"])).await;
        let (sender, mut connection) = h2::client::handshake(stream).await.unwrap();
        let pings = connection.ping_pong().unwrap();
        tokio::spawn(async move {
            connection.await.ok();
        });
        (sender, pings)
    }

    fn h2_request(method: http::Method, path: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .body(())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
        let generated = generate();
        let (connection, client) = layered(&generated);
        let stream = tls_connect(client, client_config(&[&generated], &["http/1.1"])).await;
        let mut h1 = Http1Client::connect(stream).await;
        assert_eq!(within(PATIENCE, h1.get("/")).await.unwrap().status, 200);
        let quiet = Instant::now();

        let outcome = within(secs(3600), connection).await.unwrap();
        assert_eq!(timed_out(outcome), TimeoutError::Idle(secs(60)));
        let idle = quiet.elapsed();
        assert!(
            idle >= secs(60) && idle <= secs(60) + secs(60) / 8,
            "{idle:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pings_do_not_keep_an_http2_connection_alive() {
        let generated = generate();
        let (connection, client) = layered(&generated);
        let (mut sender, mut pings) = h2_client(client, &generated).await;
        let (response, _) = sender
            .send_request(h2_request(http::Method::GET, "/"), true)
            .unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        let quiet = Instant::now();
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

    #[tokio::test(start_paused = true)]
    async fn a_trickled_http2_body_is_cut_at_the_request_timeout() {
        // The adapter's frame watch reads decrypted HTTP/2 frames under TLS.
        let generated = generate();
        let (connection, client) = layered(&generated);
        let (mut sender, _pings) = h2_client(client, &generated).await;
        let (_response, mut body) = sender
            .send_request(h2_request(http::Method::POST, "/upload"), false)
            .unwrap();
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
            first_byte.elapsed() <= secs(11),
            "{:?}",
            first_byte.elapsed()
        );
        trickle.abort();
    }
}
