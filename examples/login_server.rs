//! A raw TCP line protocol with a login, after the 2005 Perspective Broker server whose
//! failed logins leaked one connection each: the raw-protocol target of the project's
//! end-to-end and attack tests.
//!
//! ```text
//! cargo run --release --example login_server -- [--addr IP:PORT] [--unprotected]
//! ```
//!
//! Lines end in `\n` (a trailing `\r` is ignored), at most 1024 bytes. The server sends
//! nothing on connect.
//!
//! - `LOGIN <user> <password>` answers `OK` for `alice` / `secret`, else `DENIED`;
//! - after `OK`, `ECHO <text>` answers `<text>`; `QUIT` closes;
//! - anything else answers `ERROR <reason>`; a line over the limit answers
//!   `ERROR line too long` and closes.
//!
//! Protected (the default), connections run through the crate's accept loop and its
//! layers (per-peer rate, per-peer cap, total cap, timeouts; see `--help` for the flags
//! and their defaults; a refused connection reads `ERROR busy`). Each line is a request
//! for the request timeout. Logins are reported to the crate's login session: a
//! connection is closed right after the `DENIED` of its last allowed try is written,
//! enough failures ban the peer (its new connections read `ERROR banned`), and a
//! connection that has not logged in within the login timeout is closed. A connection
//! also winds down when the server shuts down or it reaches its maximum lifetime.
//! `--unprotected` keeps the connection open after `DENIED`, as the 2005 server did,
//! and serves from a plain tokio accept loop.

mod common;

use common::login_protocol;

#[tokio::main]
async fn main() {
    common::on_a_worker(run()).await;
}

async fn run() {
    let args = common::Args::from_env("login_server", true);
    common::init_logging();
    common::record_metrics(&args);
    let bouncer = common::bouncer(&args, login_protocol::refusals());
    let shutdown = common::shutdown_signal();
    let listener = common::bind(args.addr).await;
    common::serve_admin(&args, bouncer.as_ref()).await;
    login_protocol::serve(listener, bouncer.as_ref(), shutdown).await;
}
