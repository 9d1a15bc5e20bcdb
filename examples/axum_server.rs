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
//! - `GET /slow?ms=N` answers after N ms (at most 10000);
//! - `GET /ws` is a WebSocket that echoes every message;
//! - `GET /ip` answers the client address the server keys on.
//!
//! Protected (the default), connections run through the crate's accept loop, its
//! protection layers (per-peer rate, per-peer cap, total cap, timeouts; see `--help` for
//! the flags and their defaults) and its HTTP adapter; a refused connection is answered
//! `503` or `429` (a banned peer too). A request, for the request timeout, runs from its
//! first byte until its head is in (or, with a body, until the handler answers). A `401`
//! from `/login` is a failed login: the response is sent, then the connection is closed,
//! and the failure counts toward the peer's ban. Every `401` counts, with credentials
//! or without, as the examples' contract says (`count_every_failure`: the crate's
//! default counts only requests with credentials). On HTTP/2, requests with credentials
//! wait for the connection's tries, so concurrent guesses get one password check. A
//! WebSocket holds its place under the caps and is closed by the idle timeout like
//! any other connection. `--unprotected` serves the same router with plain
//! `axum::serve`, whose drain on SIGINT or SIGTERM is cut at the protected server's
//! deadline.

mod common;

use common::axum_app;

#[tokio::main]
async fn main() {
    common::on_a_worker(run()).await;
}

async fn run() {
    let args = common::Args::from_env("axum_server", false);
    common::init_logging();
    common::record_metrics(&args);
    let bouncer = common::bouncer(&args, axum_app::refusals());
    let shutdown = common::shutdown_signal();
    let listener = common::bind(args.addr).await;
    common::serve_admin(&args, bouncer.as_ref()).await;
    axum_app::serve(listener, bouncer.as_ref(), shutdown).await;
}
