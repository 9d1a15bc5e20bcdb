//! Penalties: every abuse the layers below the ban check detect counts against its
//! peer in the one ban table, each kind with its weight; on paused time over in-memory
//! streams.

mod support;

use std::time::Duration;

use tokio::{
    io::{
        AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
        DuplexStream,
    },
    task::JoinHandle,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    admission::Reason,
    login::{AfterFailure, Login, LoginBuilder, Offence},
    peer_limit::PeerLimitLayer,
    rate_limit::{Rate, RateLimitLayer},
    timeout::{TimeoutError, TimeoutLayer},
};

use support::*;

const OFFENDER: &str = "192.0.2.1:1";
const HONEST: &str = "192.0.2.2:1";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn login(builder: LoginBuilder) -> Login {
    builder.build().unwrap()
}

/// A line protocol: `good` logs in and `bad` fails (with a session), anything else is
/// echoed. It ends when its connection is asked to close.
async fn protocol<IO>(mut conn: Conn<IO>) -> Result<(), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let session = conn.login_session().cloned();
    let timer = conn.request_timer();
    let close = conn.graceful_close();
    let mut io = BufReader::new(conn.into_io());
    let mut line = String::new();
    loop {
        line.clear();
        if let Some(timer) = &timer {
            timer.next(io.buffer());
        }
        tokio::select! {
            read = io.read_line(&mut line) => if read? == 0 { return Ok(()) },
            () = close.requested() => return Ok(()),
        }
        if let Some(timer) = &timer {
            timer.finish();
        }
        let reply = match (line.trim(), &session) {
            ("good", Some(session)) => {
                session.succeeded();
                "OK"
            }
            ("bad", Some(session)) => {
                if session.failed() == AfterFailure::Closing {
                    io.get_mut().write_all(b"DENIED\n").await?;
                    return Ok(());
                }
                "DENIED"
            }
            (text, _) => text,
        };
        io.get_mut()
            .write_all(format!("{reply}\n").as_bytes())
            .await?;
    }
}

/// A connection-level stack the tests clone for each connection.
trait Stack:
    Service<Conn<DuplexStream>, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
}

impl<S> Stack for S where
    S: Service<Conn<DuplexStream>, Response = (), Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// Serves one connection from `peer` with a clone of `service`.
fn connect(service: &impl Stack, peer: &str) -> (JoinHandle<Result<(), BoxError>>, DuplexStream) {
    let (conn, client) = duplex_conn(peer);
    (tokio::spawn(service.clone().oneshot(conn)), client)
}

/// How a connection ended: served, or failed with this error.
async fn ended(connection: JoinHandle<Result<(), BoxError>>) -> Result<(), BoxError> {
    within(secs(3600), connection).await.unwrap()
}

fn timed_out(error: &BoxError) -> TimeoutError {
    let io = error
        .downcast_ref::<std::io::Error>()
        .unwrap_or_else(|| panic!("expected a timeout, got {error}"));
    *io.get_ref().unwrap().downcast_ref().unwrap()
}

fn is_banned(error: &BoxError) -> bool {
    matches!(rejected(error).reason(), Reason::Banned { .. })
}

async fn ask(client: &mut (impl AsyncRead + AsyncWrite + Unpin), line: &str) -> Option<String> {
    client
        .write_all(format!("{line}\n").as_bytes())
        .await
        .ok()?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while client.read(&mut byte).await.ok()? == 1 && byte[0] != b'\n' {
        answer.push(byte[0]);
    }
    Some(String::from_utf8(answer).unwrap())
}

/// The ban check over 1 s first-byte and request timeouts, 5 s idle, and `protocol`.
fn timed(login: &Login) -> impl Stack {
    let timeouts = TimeoutLayer::builder()
        .first_byte(secs(1))
        .request(secs(1))
        .idle(secs(5))
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(timeouts)
        .service(service_fn(protocol))
}

/// Opens a connection from `peer` that sends nothing until the first-byte timeout.
async fn stay_silent(service: &impl Stack, peer: &str) {
    let (connection, _client) = connect(service, peer);
    let error = ended(connection).await.unwrap_err();
    assert_eq!(timed_out(&error), TimeoutError::FirstByte(secs(1)));
}

#[tokio::test(start_paused = true)]
async fn a_peer_whose_connections_stay_silent_is_banned_after_max_timeouts() {
    let login = login(Login::builder().max_timeouts(3).ban(secs(60)));
    let service = timed(&login);
    for _ in 0..3 {
        stay_silent(&service, OFFENDER).await;
    }
    let (refused, _client) = connect(&service, OFFENDER);
    let error = ended(refused).await.unwrap_err();
    assert!(
        matches!(rejected(&error).reason(), Reason::Banned { remaining, .. } if *remaining == secs(60))
    );

    let (_connection, mut honest) = connect(&service, HONEST);
    assert_eq!(ask(&mut honest, "hello").await.as_deref(), Some("hello"));
    let stats = login.stats();
    assert_eq!(
        (stats.first_byte_timeouts, stats.bans, stats.refused_banned),
        (3, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn an_honest_peer_with_a_few_silent_connections_is_not_banned() {
    let login = login(Login::builder());
    let service = timed(&login);
    // A browser's unused preconnects, within one window.
    for _ in 0..5 {
        stay_silent(&service, HONEST).await;
        tokio::time::sleep(secs(30)).await;
    }
    let (_connection, mut honest) = connect(&service, HONEST);
    assert_eq!(ask(&mut honest, "hello").await.as_deref(), Some("hello"));
    let stats = login.stats();
    assert_eq!((stats.first_byte_timeouts, stats.bans), (5, 0));
}

#[tokio::test(start_paused = true)]
async fn request_timeouts_count_and_add_up_with_first_byte_timeouts() {
    let login = login(Login::builder().max_timeouts(2));
    let service = timed(&login);
    stay_silent(&service, OFFENDER).await;
    // Half a request, then silence.
    let (connection, mut client) = connect(&service, OFFENDER);
    client.write_all(b"hel").await.unwrap();
    let error = ended(connection).await.unwrap_err();
    assert_eq!(timed_out(&error), TimeoutError::Request(secs(1)));

    let (refused, _client) = connect(&service, OFFENDER);
    assert!(is_banned(&ended(refused).await.unwrap_err()));
    let stats = login.stats();
    assert_eq!((stats.first_byte_timeouts, stats.request_timeouts), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn idle_timeouts_are_no_offence() {
    let login = login(Login::builder().max_timeouts(1));
    let service = timed(&login);
    for _ in 0..3 {
        let (connection, mut client) = connect(&service, OFFENDER);
        assert_eq!(ask(&mut client, "hello").await.as_deref(), Some("hello"));
        let error = ended(connection).await.unwrap_err();
        assert_eq!(timed_out(&error), TimeoutError::Idle(secs(5)));
    }
    assert_eq!(login.stats().bans, 0);
}

#[tokio::test(start_paused = true)]
async fn a_kind_whose_limit_is_zero_is_not_counted() {
    let login = login(Login::builder().max_timeouts(0));
    let service = timed(&login);
    for _ in 0..50 {
        stay_silent(&service, OFFENDER).await;
    }
    let stats = login.stats();
    assert_eq!((stats.first_byte_timeouts, stats.tracked_peers), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn login_timeouts_count_though_their_connections_close_gracefully() {
    let login = login(Login::builder().login_timeout(secs(5)).max_timeouts(2));
    let service = ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(login.session_layer())
        .service(service_fn(protocol));
    for _ in 0..2 {
        let (connection, _client) = connect(&service, OFFENDER);
        ended(connection).await.unwrap();
    }
    let (refused, _client) = connect(&service, OFFENDER);
    assert!(is_banned(&ended(refused).await.unwrap_err()));
    let stats = login.stats();
    assert_eq!((stats.login_timeouts, stats.evicted_login_timeout), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_ban_for_timeouts_escalates_the_next_ban_for_failed_logins() {
    let login = login(
        Login::builder()
            .max_timeouts(1)
            .max_failures(1)
            .ban(secs(10)),
    );
    let timeouts = TimeoutLayer::builder().first_byte(secs(1)).build().unwrap();
    let service = ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(timeouts)
        .layer(login.session_layer())
        .service(service_fn(protocol));
    let peer = addr(OFFENDER).ip();
    stay_silent(&service, OFFENDER).await;
    assert_eq!(login.bans().banned_for(peer), Some(secs(10)));
    tokio::time::sleep(secs(10)).await;

    let (_connection, mut client) = connect(&service, OFFENDER);
    assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
    assert_eq!(
        login.bans().banned_for(peer),
        Some(secs(20)),
        "a second offence"
    );
    assert_eq!(login.bans().list()[0].offences, 2);
}

/// The ban check over a per-peer rate of one connection a second and a global rate of
/// `global` a second.
fn rated(login: &Login, global: u32) -> impl Stack {
    let rate = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1))
        .global(Rate::per_second(global))
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(rate)
        .service(service_fn(protocol))
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_keeps_hitting_its_rate_is_banned_and_its_bans_count_for_nothing() {
    let login = login(Login::builder().max_offences(Offence::OverLimit, 5));
    let service = rated(&login, 1000);
    let (admitted, _client) = connect(&service, OFFENDER);
    let mut reasons = Vec::new();
    for _ in 0..10 {
        let (refused, _client) = connect(&service, OFFENDER);
        let error = ended(refused).await.unwrap_err();
        reasons.push(matches!(rejected(&error).reason(), Reason::PeerRate { .. }));
    }
    assert_eq!(
        reasons,
        [[true; 5], [false; 5]].concat(),
        "5 over the rate, then banned"
    );
    let stats = login.stats();
    assert_eq!(
        (stats.over_limit_refusals, stats.bans, stats.refused_banned),
        (5, 1, 5)
    );
    drop(admitted);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_bursts_past_its_rate_once_is_not_banned() {
    let login = login(Login::builder());
    let service = rated(&login, 1000);
    for _ in 0..50 {
        let (connection, client) = connect(&service, HONEST);
        drop(client);
        let _ = ended(connection).await;
    }
    tokio::time::sleep(secs(1)).await;
    let (_connection, mut honest) = connect(&service, HONEST);
    assert_eq!(ask(&mut honest, "hello").await.as_deref(), Some("hello"));
    let stats = login.stats();
    assert_eq!((stats.over_limit_refusals, stats.bans), (49, 0));
}

#[tokio::test(start_paused = true)]
async fn global_refusals_are_not_the_peers_fault() {
    let login = login(Login::builder().max_offences(Offence::OverLimit, 1));
    let service = rated(&login, 1);
    let (_admitted, _client) = connect(&service, HONEST);
    for port in 0..10 {
        let (refused, _client) = connect(&service, &format!("198.51.100.{port}:1"));
        let error = ended(refused).await.unwrap_err();
        assert!(matches!(
            rejected(&error).reason(),
            Reason::GlobalRate { .. }
        ));
    }
    let stats = login.stats();
    assert_eq!((stats.over_limit_refusals, stats.tracked_peers), (0, 0));
}

/// Global refusals are not the peer's fault, however many: a peer that the global rate
/// turned away and that never had a connection served is not refused for its own rate
/// afterwards, nor banned for it.
#[tokio::test(start_paused = true)]
async fn a_peer_only_ever_refused_by_the_global_rate_is_not_banned_for_its_own_rate() {
    let login = login(Login::builder().max_offences(Offence::OverLimit, 1));
    let rate = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(2))
        .global(Rate::per_second(1))
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(rate)
        .service(service_fn(protocol));
    // A crowd takes this second's global token.
    let (_crowd, _crowd_client) = connect(&service, "198.51.100.1:1");
    for _ in 0..2 {
        let (refused, _client) = connect(&service, HONEST);
        let error = ended(refused).await.unwrap_err();
        assert!(matches!(
            rejected(&error).reason(),
            Reason::GlobalRate { .. }
        ));
    }
    tokio::time::sleep(secs(1)).await;
    let (connection, mut honest) = connect(&service, HONEST);
    let answer = ask(&mut honest, "hello").await;
    if answer.as_deref() != Some("hello") {
        let error = ended(connection).await.unwrap_err();
        panic!(
            "{HONEST}, never served, refused: {}; over-limit offences {}, bans {}",
            rejected(&error).reason(),
            login.stats().over_limit_refusals,
            login.stats().bans
        );
    }
    assert_eq!(login.stats().bans, 0);
}

#[tokio::test(start_paused = true)]
async fn a_peer_over_its_connection_cap_counts_too() {
    let login = login(Login::builder().max_offences(Offence::OverLimit, 2));
    let service = ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(PeerLimitLayer::builder(1).build().unwrap())
        .service(service_fn(protocol));
    let (_held, _client) = connect(&service, OFFENDER);
    for _ in 0..2 {
        let (refused, _client) = connect(&service, OFFENDER);
        let error = ended(refused).await.unwrap_err();
        assert!(matches!(
            rejected(&error).reason(),
            Reason::PeerLimit { .. }
        ));
    }
    let (refused, _client) = connect(&service, OFFENDER);
    assert!(is_banned(&ended(refused).await.unwrap_err()));
}

mod http {
    use axum::{Router, routing::get};
    use tower_bouncer::http::HttpService;

    use super::*;

    fn hyper_error(error: &BoxError) -> &hyper::Error {
        error
            .downcast_ref()
            .unwrap_or_else(|| panic!("expected hyper's error, got {error}"))
    }

    fn served(login: &Login) -> impl Stack {
        let app = Router::new().route("/", get(|| async { "hello\n" }));
        ServiceBuilder::new()
            .layer(login.ban_layer())
            .service(HttpService::new(app))
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_http1_and_http2_count_as_protocol_errors() {
        let login = login(Login::builder().max_offences(Offence::HttpProtocolError, 2));
        let service = served(&login);

        // A well-formed request is no offence.
        let (connection, client) = connect(&service, OFFENDER);
        let mut h1 = Http1Client::connect(client).await;
        assert_eq!(h1.get("/").await.unwrap().status, 200);
        drop(h1);
        ended(connection).await.unwrap();
        assert_eq!(login.stats().http_protocol_errors, 0);

        // Garbage instead of a request head: hyper answers 400 and fails.
        let (connection, mut client) = connect(&service, OFFENDER);
        client.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
        let error = ended(connection).await.unwrap_err();
        assert!(hyper_error(&error).is_parse(), "{error}");

        // The HTTP/2 preface, then a SETTINGS frame of a length no SETTINGS has.
        let (connection, mut client) = connect(&service, OFFENDER);
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x05\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let error = ended(connection).await.unwrap_err();
        hyper_error(&error);
        let (refused, _client) = connect(&service, OFFENDER);
        assert!(is_banned(&ended(refused).await.unwrap_err()));
        assert_eq!(login.stats().http_protocol_errors, 2);
    }
}

#[cfg(feature = "tls")]
mod tls {
    use tower_bouncer::tls::{TlsError, TlsLayer};

    use super::{support::tls::*, *};

    fn tls_error(error: &BoxError) -> &TlsError {
        error
            .downcast_ref()
            .unwrap_or_else(|| panic!("expected a TLS error, got {error}"))
    }

    #[tokio::test(start_paused = true)]
    async fn broken_and_stalled_handshakes_count_and_a_hang_up_does_not() {
        let login = login(
            Login::builder()
                .max_offences(Offence::TlsHandshakeFailure, 2)
                .max_timeouts(2),
        );
        let generated = generate();
        let tls = TlsLayer::builder(generated.certificate())
            .handshake_timeout(secs(3))
            .build()
            .unwrap();
        let service = ServiceBuilder::new()
            .layer(login.ban_layer())
            .layer(tls)
            .service(service_fn(protocol));

        // Connects and leaves before its handshake: no offence.
        let (connection, client) = connect(&service, OFFENDER);
        drop(client);
        let error = ended(connection).await.unwrap_err();
        assert!(matches!(tls_error(&error), TlsError::Io(_)));

        // Plain text on the TLS port: half a ban.
        let (connection, mut client) = connect(&service, OFFENDER);
        client.write_all(b"hello\n").await.unwrap();
        let error = ended(connection).await.unwrap_err();
        assert!(matches!(tls_error(&error), TlsError::Protocol(_)));

        // Silent past the handshake deadline: half a ban too.
        let (connection, _client) = connect(&service, OFFENDER);
        let error = ended(connection).await.unwrap_err();
        assert!(matches!(tls_error(&error), TlsError::Timeout(_)));

        let (refused, _client) = connect(&service, OFFENDER);
        assert!(is_banned(&ended(refused).await.unwrap_err()));
        let stats = login.stats();
        assert_eq!(
            (stats.tls_handshake_failures, stats.tls_handshake_timeouts),
            (1, 1)
        );

        // A completed handshake is no offence.
        let (_connection, client) = connect(&service, HONEST);
        let mut stream = tls_connect(client, client_config(&[&generated], &[])).await;
        assert_eq!(ask(&mut stream, "hello").await.as_deref(), Some("hello"));
        assert_eq!(login.stats().tracked_peers, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handshake_ended_by_a_draining_server_is_no_offence() {
        let login = login(
            Login::builder()
                .max_offences(Offence::TlsHandshakeFailure, 1)
                .max_timeouts(1),
        );
        let tls = TlsLayer::builder(generate().certificate()).build().unwrap();
        let service = ServiceBuilder::new()
            .layer(login.ban_layer())
            .layer(tls)
            .service(service_fn(protocol));

        // Silent in its handshake as the server drains.
        let (mut conn, _client) = duplex_conn(OFFENDER);
        let close = conn.graceful_close();
        let connection = tokio::spawn(service.clone().oneshot(conn));
        tokio::time::sleep(secs(1)).await;
        close.request_cut_by_caller();
        let error = ended(connection).await.unwrap_err();
        assert!(matches!(tls_error(&error), TlsError::CloseRequested));
        assert_eq!(login.stats().tracked_peers, 0, "the peer has an offence");
    }
}
