//! The axum_server application, shared by the example and the siege's server mode.

use std::{future::IntoFuture, net::SocketAddr, time::Duration};

use axum::{
    Extension, Router,
    extract::{
        ConnectInfo, RawQuery,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use tokio::net::TcpListener;
use tower_bouncer::{
    bouncer::{Bouncer, Refusals},
    http::ConnExtensions,
};

const MAX_SLOW_MS: u64 = 10_000;

/// What a refused connection reads: `503` or `429`.
pub fn refusals() -> Refusals {
    Refusals::Http
}

/// Serves the application until `shutdown`: under the bouncer's layers through the
/// crate's accept loop and HTTP adapter, or, without a bouncer, with plain
/// `axum::serve`, its drain cut at the protected server's deadline.
pub async fn serve(
    listener: TcpListener,
    bouncer: Option<&Bouncer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let Some(bouncer) = bouncer else {
        let app = app().into_make_service_with_connect_info::<SocketAddr>();
        let (shutdown, drain_deadline) = super::with_drain_deadline(shutdown);
        let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown);
        tokio::select! {
            served = serving.into_future() => served.expect("axum::serve never fails"),
            () = drain_deadline => {}
        }
        return;
    };
    let report = bouncer
        .serve_until(listener, super::http_service(app()), shutdown)
        .await;
    if let Err(error) = report {
        super::fail(format_args!("server failed: {error}"));
    }
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/login", get(login))
        .route("/slow", get(slow))
        .route("/ws", get(websocket))
        .route("/ip", get(ip))
        // Its handlers made into routes once, not on every request (as `axum::serve`'s
        // make-services do for the unprotected server).
        .with_state(())
}

/// `GET /ip`: the client address the server keys on: behind a balancer that sends the
/// PROXY protocol, the client's, not the balancer's; an IPv4 client of a dual-stack
/// listener as IPv4 (`127.0.0.1`, not `::ffff:127.0.0.1`), as the crate keys it.
async fn ip(
    protected: Option<ConnExtensions>,
    unprotected: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let peer = match (protected, unprotected) {
        (Some(conn), _) => conn.info().peer_addr,
        (None, Some(Extension(ConnectInfo(peer)))) => peer,
        (None, None) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    format!("{}\n", peer.ip().to_canonical()).into_response()
}

/// `GET /ws`: a WebSocket that echoes every message. Protected, its connection counts
/// against every cap and timeout for as long as it is open.
async fn websocket(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let echoed = match message {
            Message::Text(_) | Message::Binary(_) => message,
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(echoed).await.is_err() {
            return;
        }
    }
}

/// `GET /login`: HTTP Basic for `alice:secret`. A success is reported on the
/// connection's login session (protected mode), so that its later requests with
/// credentials are no longer held to its tries one at a time.
async fn login(conn: Option<ConnExtensions>, headers: HeaderMap) -> Response {
    match basic_credentials(&headers) {
        Some((user, password)) if user == "alice" && password == "secret" => {
            if let Some(session) = conn.as_ref().and_then(ConnExtensions::login_session) {
                session.succeeded();
            }
            format!("welcome {user}\n").into_response()
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Basic realm="demo""#)],
            "unauthorized\n",
        )
            .into_response(),
    }
}

/// The user and password of an `Authorization: Basic` header, if it holds any; the
/// scheme's name in any case (`basic`), as RFC 9110 §11.1 has it.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// `GET /slow?ms=N`: answers after N milliseconds, at most 10 seconds; `ms` among any
/// other parameters. (axum's `Query` needs a feature the examples' axum goes without.)
async fn slow(RawQuery(query): RawQuery) -> Response {
    let asked = query
        .as_deref()
        .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("ms=")));
    let ms = match asked {
        None => 0,
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) => ms.min(MAX_SLOW_MS),
            Err(_) => return (StatusCode::BAD_REQUEST, "ms must be a number\n").into_response(),
        },
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "done\n".into_response()
}
