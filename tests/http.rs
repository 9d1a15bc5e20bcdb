//! The HTTP adapter end to end on loopback, and its timeouts on paused time.

mod support;

use std::time::Duration;

use axum::{Router, extract::RawQuery, routing::get};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_bouncer::{
    BoxError, Conn, GracefulClose,
    http::{ConnExtensions, HttpService},
    timeout::TimeoutError,
};

use support::*;

/// A per-connection value a connection layer leaves for the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marker(u32);

fn app(entered: mpsc::UnboundedSender<()>) -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/upload",
            axum::routing::post(|body: String| async move { format!("{} bytes\n", body.len()) }),
        )
        .route(
            "/info",
            get(|conn: ConnExtensions| async move {
                let (info, marker) = (conn.info(), conn.get::<Marker>().unwrap());
                format!("{} {} {}", info.peer_addr, info.local_addr, marker.0)
            }),
        )
        .route(
            "/logout",
            get(|close: GracefulClose| async move {
                close.request();
                "bye\n"
            }),
        )
        .route(
            "/slow",
            get(move |RawQuery(query): RawQuery| {
                let entered = entered.clone();
                async move {
                    entered.send(()).ok();
                    let ms: u64 = query.unwrap().strip_prefix("ms=").unwrap().parse().unwrap();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "done\n"
                }
            }),
        )
}

/// The adapter under a connection layer that leaves a [`Marker`] in each connection.
fn marked<IO>(
    http: HttpService<Router>,
) -> impl Service<Conn<IO>, Response = (), Error = BoxError, Future: Send + 'static> + Clone
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    ServiceBuilder::new()
        .map_request(|mut conn: Conn<IO>| {
            conn.extensions_mut().insert(Marker(7));
            conn
        })
        .service(http)
}

async fn start(http: HttpService<Router>, drain: Duration) -> LoopbackServer {
    LoopbackServer::start(marked(http), drain).await
}

fn plain_app() -> Router {
    app(mpsc::unbounded_channel().0)
}

#[tokio::test]
async fn axum_is_served_over_http1_and_http2_on_one_port() {
    let server = start(HttpService::new(plain_app()), PATIENCE).await;

    let mut h1 = Http1Client::connect(connect_from(1, server.addr).await).await;
    for _ in 0..2 {
        let answer = within(PATIENCE, h1.get("/")).await.unwrap();
        assert_eq!(
            (answer.version, answer.status.as_u16()),
            (http::Version::HTTP_11, 200)
        );
        assert_eq!(answer.body, "hello\n");
    }

    let mut h2 = Http2Client::connect(connect_from(1, server.addr).await).await;
    for _ in 0..2 {
        let answer = within(PATIENCE, h2.get("/")).await.unwrap();
        assert_eq!(
            (answer.version, answer.status.as_u16()),
            (http::Version::HTTP_2, 200)
        );
        assert_eq!(answer.body, "hello\n");
    }
    server.stop().await;
}

#[tokio::test]
async fn every_request_carries_the_connection_addresses_and_extensions() {
    let server = start(HttpService::new(plain_app()), PATIENCE).await;

    let stream = connect_from(5, server.addr).await;
    let expected = format!("{} {} 7", stream.local_addr().unwrap(), server.addr);
    let mut h1 = Http1Client::connect(stream).await;
    // The first request, the second and those after are handed the connection each
    // their own way.
    for n in 0..3 {
        assert_eq!(
            within(PATIENCE, h1.get("/info")).await.unwrap().body,
            expected,
            "request {n}"
        );
    }

    let stream = connect_from(6, server.addr).await;
    let expected = format!("{} {} 7", stream.local_addr().unwrap(), server.addr);
    let mut h2 = Http2Client::connect(stream).await;
    for n in 0..3 {
        assert_eq!(
            within(PATIENCE, h2.get("/info")).await.unwrap().body,
            expected,
            "stream {n}"
        );
    }
    server.stop().await;
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_connect_info_extractor_sees_the_peer() {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;

    let app = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let server = LoopbackServer::start(HttpService::new(app), PATIENCE).await;
    let stream = connect_from(9, server.addr).await;
    let me = stream.local_addr().unwrap();
    let mut h1 = Http1Client::connect(stream).await;
    for n in 0..3 {
        assert_eq!(
            within(PATIENCE, h1.get("/peer")).await.unwrap().body,
            me.to_string(),
            "request {n}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn http1_close_signal_sends_connection_close_then_closes_after_the_response() {
    let server = start(HttpService::new(plain_app()), PATIENCE).await;

    let mut stream = connect_from(1, server.addr).await;
    stream
        .write_all(b"GET /logout HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    // read_to_string ends only when the server closes the connection.
    within(PATIENCE, stream.read_to_string(&mut response))
        .await
        .unwrap();
    let response = response.to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200 ok\r\n"), "{response}");
    assert!(response.contains("\r\nconnection: close\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nbye\n"), "{response}");

    // Without the signal the same connection would have stayed open for more.
    let mut h1 = Http1Client::connect(connect_from(1, server.addr).await).await;
    let answer = within(PATIENCE, h1.get("/")).await.unwrap();
    assert!(!answer.headers.contains_key(http::header::CONNECTION));
    within(PATIENCE, h1.get("/")).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn http2_close_signal_sends_goaway_after_the_response() {
    let server = start(HttpService::new(plain_app()), PATIENCE).await;

    let mut h2 = Http2Client::connect(connect_from(1, server.addr).await).await;
    let answer = within(PATIENCE, h2.get("/logout")).await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.body.as_str()),
        (200, "bye\n")
    );
    // GOAWAY, then the server closes: the client connection ends cleanly.
    within(PATIENCE, &mut h2.driver).await.unwrap().unwrap();
    assert!(h2.get("/").await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_byte_timeout() {
    let http = HttpService::builder(plain_app())
        .first_byte_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let server = start(http, PATIENCE).await;

    let mut silent = connect_from(1, server.addr).await;
    let mut buf = [0u8; 1];
    let read = within(PATIENCE, silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // A connection that speaks is not affected.
    let mut h1 = Http1Client::connect(connect_from(1, server.addr).await).await;
    within(PATIENCE, h1.get("/")).await.unwrap();
    server.stop().await;
}

/// Runs the adapter on one in-memory connection and returns its outcome.
async fn run_on_duplex(
    http: HttpService<Router>,
    client_writes: &'static [u8],
) -> (Result<(), BoxError>, tokio::io::DuplexStream) {
    let (conn, mut client) = duplex_conn("192.0.2.1:1");
    client.write_all(client_writes).await.unwrap();
    let outcome = marked(http).oneshot(conn).await;
    (outcome, client)
}

fn timeout_error(error: &BoxError) -> TimeoutError {
    let io = error
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    *io.get_ref()
        .and_then(|inner| inner.downcast_ref::<TimeoutError>())
        .expect("a TimeoutError inside")
}

#[tokio::test(start_paused = true)]
async fn first_byte_timeout_fails_the_connection_with_a_typed_error() {
    let began = tokio::time::Instant::now();
    let http = HttpService::builder(plain_app())
        .first_byte_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let (outcome, _client) = run_on_duplex(http, b"").await;
    assert_eq!(
        timeout_error(&outcome.unwrap_err()),
        TimeoutError::FirstByte(Duration::from_secs(3))
    );
    assert_eq!(began.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn an_incomplete_request_head_is_closed_at_the_header_read_timeout() {
    let began = tokio::time::Instant::now();
    let http = HttpService::builder(plain_app())
        .header_read_timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    let (outcome, _client) = run_on_duplex(http, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    assert!(outcome.is_err());
    assert_eq!(began.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_outlives_its_close_grace_is_cut() {
    let (entered, mut entered_rx) = mpsc::unbounded_channel();
    let http = HttpService::builder(app(entered))
        .close_grace(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut conn, mut client) = duplex_conn("192.0.2.1:1");
    let close = conn.graceful_close();
    let connection = tokio::spawn(marked(http).oneshot(conn));

    client
        .write_all(b"GET /slow?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    entered_rx.recv().await.unwrap();
    let asked = tokio::time::Instant::now();
    close.request();
    within(PATIENCE, connection).await.unwrap().unwrap();
    assert_eq!(asked.elapsed(), Duration::from_secs(5));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "cut before any response");
}

#[tokio::test(start_paused = true)]
async fn a_cut_http2_connection_stops_its_handlers() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    /// Sets its flag when the handler's future is dropped.
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let dropped = Arc::new(AtomicBool::new(false));
    let (entered, mut entered_rx) = mpsc::unbounded_channel();
    let flag = dropped.clone();
    let app = Router::new().route(
        "/forever",
        get(move || {
            let guard = Dropped(flag.clone());
            let entered = entered.clone();
            async move {
                let _guard = guard;
                entered.send(()).ok();
                std::future::pending::<()>().await;
                ""
            }
        }),
    );
    let (mut conn, client) = duplex_conn("192.0.2.1:1");
    let close = conn.graceful_close();
    let connection = tokio::spawn(
        HttpService::builder(app)
            .close_grace(Duration::from_secs(5))
            .build()
            .unwrap()
            .oneshot(conn),
    );
    let mut h2 = Http2Client::connect(client).await;
    let request = tokio::spawn(async move { h2.get("/forever").await });
    entered_rx.recv().await.unwrap();

    close.request();
    within(PATIENCE, connection).await.unwrap().unwrap();
    tokio::task::yield_now().await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the stream's handler stopped with its connection"
    );
    assert!(request.await.unwrap().is_err());
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request_and_cuts_a_stuck_one_at_the_deadline() {
    let (entered, mut entered_rx) = mpsc::unbounded_channel();
    // A long close grace, so that the server's drain deadline is what cuts.
    let http = HttpService::builder(app(entered))
        .close_grace(Duration::from_secs(60))
        .build()
        .unwrap();
    let server = start(http, Duration::from_secs(2)).await;

    let mut finishing = Http1Client::connect(connect_from(1, server.addr).await).await;
    let mut stuck = Http1Client::connect(connect_from(2, server.addr).await).await;
    let mut idle = Http1Client::connect(connect_from(3, server.addr).await).await;
    within(PATIENCE, idle.get("/")).await.unwrap();
    let finishing = tokio::spawn(async move { finishing.get("/slow?ms=300").await });
    let stuck = tokio::spawn(async move { stuck.get("/slow?ms=60000").await });
    entered_rx.recv().await.unwrap();
    entered_rx.recv().await.unwrap();

    let report = server.stop().await;
    assert_eq!((report.drained, report.cut), (2, 1));

    let answer = finishing.await.unwrap().unwrap();
    assert_eq!(answer.body, "done\n");
    assert_eq!(answer.headers[http::header::CONNECTION], "close");
    assert!(stuck.await.unwrap().is_err(), "the stuck request was cut");
    // The idle keep-alive connection was closed at once.
    within(PATIENCE, &mut idle.driver).await.unwrap().unwrap();
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn tonic_sees_the_remote_address_through_the_adapter() {
    use tonic::service::{Routes, interceptor::InterceptedService};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let (seen, mut seen_rx) = mpsc::unbounded_channel();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let health = InterceptedService::new(health, move |request: tonic::Request<()>| {
        seen.send(request.remote_addr()).ok();
        Ok(request)
    });
    let server =
        LoopbackServer::start(HttpService::new(Routes::new(health).prepare()), PATIENCE).await;

    let channel = grpc_channel(server.addr).await;
    let mut client = HealthClient::new(channel);
    within(PATIENCE, client.check(HealthCheckRequest::default()))
        .await
        .unwrap();
    let remote: Option<std::net::SocketAddr> = seen_rx.recv().await.unwrap();
    assert_eq!(remote.unwrap().ip().to_string(), "127.0.0.1");
    server.stop().await;
}

mod under_a_request_timeout {
    use super::*;
    use tower_bouncer::timeout::TimeoutLayer;

    /// The adapter under a 2 s request timeout, on one in-memory connection.
    fn serve_one() -> (
        tokio::task::JoinHandle<Result<(), BoxError>>,
        tokio::io::DuplexStream,
    ) {
        let timeouts = TimeoutLayer::builder()
            .request(Duration::from_secs(2))
            .build()
            .unwrap();
        let service = ServiceBuilder::new().layer(timeouts).service(
            HttpService::builder(plain_app())
                .header_read_timeout(None)
                .build()
                .unwrap(),
        );
        let (conn, client) = duplex_conn("192.0.2.1:1");
        (tokio::spawn(service.oneshot(conn)), client)
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_requests_far_apart_are_not_cut() {
        let (connection, client) = serve_one();
        let mut h1 = Http1Client::connect(client).await;
        for _ in 0..3 {
            assert_eq!(within(PATIENCE, h1.get("/")).await.unwrap().body, "hello\n");
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        assert!(!connection.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_quiet_after_its_first_request_is_not_cut() {
        let (connection, client) = serve_one();
        let mut h2 = Http2Client::connect(client).await;
        assert_eq!(within(PATIENCE, h2.get("/")).await.unwrap().body, "hello\n");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(within(PATIENCE, h2.get("/")).await.unwrap().body, "hello\n");
        assert!(!connection.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_request_body_is_cut() {
        let (connection, mut client) = serve_one();
        let began = tokio::time::Instant::now();
        client
            .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .await
            .unwrap();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if client.write_all(b"x").await.is_err() {
                    break;
                }
            }
        });
        let outcome = within(PATIENCE, connection).await.unwrap();
        let error = outcome.unwrap_err();
        assert!(
            error.downcast_ref::<std::io::Error>().unwrap().kind() == std::io::ErrorKind::TimedOut,
            "{error}"
        );
        assert_eq!(began.elapsed(), Duration::from_secs(2));
        trickle.abort();
    }
}

mod reporting_logins {
    use super::*;
    use axum::http::StatusCode;
    use support::reporter::{Boxed, Reporter};
    use tower_bouncer::login::{Login, LoginOutcome, StatusClassifier};

    fn auth_app() -> Router {
        Router::new()
            .route("/login", get(|| async { StatusCode::UNAUTHORIZED }))
            .route("/forbidden", get(|| async { StatusCode::FORBIDDEN }))
            .route(
                "/stream",
                get(|| async {
                    use http_body_util::BodyExt;
                    // A `200`, its gRPC status in the trailers, as a streaming call ends.
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
                    let body = http_body_util::Full::new(bytes::Bytes::from_static(b"data"))
                        .with_trailers(async move { Some(Ok(trailers)) });
                    axum::body::Body::new(body)
                }),
            )
            .route(
                "/welcome",
                get(|conn: ConnExtensions| async move {
                    conn.login_session().unwrap().succeeded();
                    "welcome\n"
                }),
            )
    }

    /// Serves `http` on loopback under `login`'s layers.
    async fn serve(login: &Login, http: Boxed<tokio::net::TcpStream>) -> LoopbackServer {
        let service = ServiceBuilder::new()
            .layer(login.ban_layer())
            .layer(login.session_layer())
            .service(http);
        LoopbackServer::start(service, PATIENCE).await
    }

    #[tokio::test]
    async fn a_401_is_a_failed_login_that_closes_after_the_response_and_counts_toward_a_ban() {
        for reporter in Reporter::ALL {
            let login = Login::builder().max_failures(2).build().unwrap();
            let server = serve(
                &login,
                reporter.http(auth_app(), StatusClassifier::default()),
            )
            .await;
            for _ in 0..2 {
                let mut h1 = Http1Client::connect(connect_from(7, server.addr).await).await;
                let answer = within(PATIENCE, h1.get_as("/login", WRONG_PASSWORD))
                    .await
                    .unwrap();
                assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{reporter:?}");
                assert_eq!(answer.headers[http::header::CONNECTION], "close");
                within(PATIENCE, &mut h1.driver).await.unwrap().unwrap();
            }
            assert!(
                login
                    .bans()
                    .banned_for(std::net::Ipv4Addr::new(127, 0, 0, 7).into())
                    .is_some(),
                "{reporter:?}"
            );

            // The banned peer is refused before any byte is read; another peer is served.
            let mut banned = connect_from(7, server.addr).await;
            let mut byte = [0u8; 1];
            assert!(matches!(
                within(PATIENCE, banned.read(&mut byte)).await,
                Ok(0) | Err(_)
            ));
            let mut other = Http1Client::connect(connect_from(8, server.addr).await).await;
            let answer = within(PATIENCE, other.get("/welcome")).await.unwrap();
            assert_eq!(answer.body, "welcome\n");
            let stats = login.stats();
            assert_eq!(
                (stats.failed_logins, stats.bans, stats.authenticated),
                (2, 1, 1),
                "{reporter:?}"
            );
            server.stop().await;
        }
    }

    #[tokio::test]
    async fn a_403_counts_only_when_asked_and_custom_rules_work() {
        for reporter in Reporter::ALL {
            let login = Login::builder().build().unwrap();
            let custom = |status: StatusCode, _: &http::HeaderMap| {
                (status == StatusCode::FORBIDDEN).then_some(LoginOutcome::Failed)
            };
            // Each classifier in turn; the failed logins so far after its `403`.
            let classified = [
                (reporter.http(auth_app(), StatusClassifier::default()), 0),
                (
                    reporter.http(
                        auth_app(),
                        StatusClassifier::default().forbidden_is_failure(true),
                    ),
                    1,
                ),
                (reporter.http(auth_app(), custom), 2),
            ];
            for (peer, (http, failed_logins)) in (9..).zip(classified) {
                let server = serve(&login, http).await;
                let mut h1 = Http1Client::connect(connect_from(peer, server.addr).await).await;
                let answer = within(PATIENCE, h1.get_as("/forbidden", WRONG_PASSWORD))
                    .await
                    .unwrap();
                assert_eq!(answer.status, StatusCode::FORBIDDEN);
                assert_eq!(login.stats().failed_logins, failed_logins, "{reporter:?}");
                server.stop().await;
            }
        }
    }

    #[tokio::test]
    async fn an_outcome_in_the_trailers_is_reported() {
        for reporter in Reporter::ALL {
            let login = Login::builder().build().unwrap();
            let server = serve(
                &login,
                reporter.http(auth_app(), StatusClassifier::default()),
            )
            .await;
            let mut h2 = Http2Client::connect(connect_from(11, server.addr).await).await;
            let answer = within(PATIENCE, h2.get_as("/stream", WRONG_PASSWORD))
                .await
                .unwrap();
            assert_eq!(
                (answer.status.as_u16(), answer.body.as_str()),
                (200, "data")
            );
            assert_eq!(login.stats().failed_logins, 1, "{reporter:?}");
            server.stop().await;
        }
    }

    #[tokio::test]
    async fn grpc_unauthenticated_is_a_failed_login() {
        use tonic::service::{Routes, interceptor::InterceptedService};
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        for reporter in Reporter::ALL {
            let login = Login::builder().max_failures(1).build().unwrap();
            let (_reporter, health) = tonic_health::server::health_reporter();
            let health = InterceptedService::new(health, |_: tonic::Request<()>| {
                Err::<tonic::Request<()>, _>(tonic::Status::unauthenticated("no token"))
            });
            let routes = Routes::new(health).prepare();
            let server = serve(&login, reporter.http(routes, StatusClassifier::default())).await;
            let channel = grpc_channel(server.addr).await;
            let mut client =
                HealthClient::with_interceptor(channel, |mut call: tonic::Request<()>| {
                    let token = "Bearer wrong".parse().unwrap();
                    call.metadata_mut().insert("authorization", token);
                    Ok(call)
                });
            let status = within(PATIENCE, client.check(HealthCheckRequest::default()))
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            let stats = login.stats();
            assert_eq!((stats.failed_logins, stats.bans), (1, 1), "{reporter:?}");
            server.stop().await;
        }
    }
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn a_handler_reports_through_the_login_session_extractor() {
    use tower_bouncer::login::{Login, LoginSession};

    let login = Login::builder().build().unwrap();
    let app = Router::new().route(
        "/welcome",
        get(|session: LoginSession| async move {
            session.succeeded();
            "welcome\n"
        }),
    );
    let service = login.session_layer().layer(HttpService::new(app));
    let server = LoopbackServer::start(service, PATIENCE).await;
    let mut h1 = Http1Client::connect(connect_from(11, server.addr).await).await;
    assert_eq!(
        within(PATIENCE, h1.get("/welcome")).await.unwrap().body,
        "welcome\n"
    );
    assert_eq!(login.stats().authenticated, 1);
    server.stop().await;

    // Without the session layer the extractor says what is missing.
    let bare = Router::new().route("/welcome", get(|_: LoginSession| async { "" }));
    let server = LoopbackServer::start(HttpService::new(bare), PATIENCE).await;
    let mut h1 = Http1Client::connect(connect_from(11, server.addr).await).await;
    assert_eq!(
        within(PATIENCE, h1.get("/welcome")).await.unwrap().status,
        500
    );
    server.stop().await;
}
