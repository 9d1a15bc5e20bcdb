//! An axum application served through tower-bouncer's HTTP adapter: the HTTP target of
//! the project's end-to-end and attack tests.
//!
//! ```text
//! cargo run --release --example axum_server -- [--addr IP:PORT] [--unprotected]
//! ```
//!
//! - `GET /` answers `hello`;
//! - `GET /login` with `Authorization: Basic` for `alice:secret` answers
//!   `welcome alice`, anything else `401` with `WWW-Authenticate: Basic realm="demo"`;
//! - `GET /slow?ms=N` answers after N ms (at most 10000).
//!
//! Protected (the default), connections run through the crate's accept loop, its
//! protection layers (per-peer rate, per-peer cap, total cap, timeouts; see `--help` for
//! the flags and their defaults) and its HTTP adapter; a refused connection is answered
//! `503` or `429` (a banned peer too). A request, for the request timeout, runs from its
//! first byte until its head is in (or, with a body, until the handler answers). A `401`
//! from `/login` is a failed login: the response is sent, then the connection is closed,
//! and the failure counts toward the peer's ban. `--unprotected` serves the same router
//! with plain `axum::serve`.

mod common;

use std::time::Duration;

use axum::{
    Router,
    extract::RawQuery,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use bytes::Bytes;
use common::protection::Refusals;
use tower::Layer;
use tower_bouncer::{http::HttpService, login::ReportLoginLayer, serve::Server};

/// Refusals in HTTP/1.1, the protocol most clients open with.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const TOO_FAST: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const MAX_SLOW_MS: u64 = 10_000;

#[tokio::main]
async fn main() {
    let args = common::Args::from_env("axum_server", None);
    common::init_logging();
    let refusals = Refusals {
        busy: Bytes::from_static(BUSY),
        too_fast: Bytes::from_static(TOO_FAST),
        banned: Bytes::from_static(TOO_FAST),
    };
    let protection = args
        .protection
        .layers(&refusals)
        .unwrap_or_else(|error| common::fail(error));
    let shutdown = common::shutdown_signal();
    let listener = common::bind(args.addr).await;
    let app = app();

    if args.unprotected {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .expect("axum::serve never fails");
        return;
    }
    let report = Server::new(listener)
        .with_graceful_shutdown(shutdown)
        .serve(protection.around(HttpService::new(ReportLoginLayer::new().layer(app))))
        .await;
    if let Err(error) = report {
        common::fail(format_args!("server failed: {error}"));
    }
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/login", get(login))
        .route("/slow", get(slow))
}

async fn login(headers: HeaderMap) -> Response {
    match basic_credentials(&headers) {
        Some((user, password)) if user == "alice" && password == "secret" => {
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

/// The user and password of an `Authorization: Basic` header, if it holds any.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// `GET /slow?ms=N`: answers after N milliseconds, at most 10 seconds.
async fn slow(RawQuery(query): RawQuery) -> Response {
    let ms = match query.as_deref().and_then(|q| q.strip_prefix("ms=")) {
        None => 0,
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) => ms.min(MAX_SLOW_MS),
            Err(_) => return (StatusCode::BAD_REQUEST, "ms must be a number\n").into_response(),
        },
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "done\n".into_response()
}
