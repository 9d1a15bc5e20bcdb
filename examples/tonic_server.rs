//! The standard gRPC health service (`tonic-health`) behind an interceptor that wants
//! `authorization: Bearer secret`, served through tower-bouncer's HTTP adapter.
//!
//! ```text
//! cargo run --release --example tonic_server -- [--addr IP:PORT] [--unprotected]
//! ```
//!
//! A call without the token fails with `UNAUTHENTICATED`. Protected (the default), the
//! routes run through the crate's accept loop, its protection layers (the same flags as
//! the other examples; see `--help`) and its HTTP adapter, and an `UNAUTHENTICATED` is a
//! failed login that counts toward the peer's ban, with a token or without, as with
//! axum_server (`count_every_failure`: the crate's default counts only calls that carry
//! credentials); `--unprotected` serves them with
//! tonic's own server, whose drain on SIGINT or SIGTERM is cut at the protected
//! servers' deadline.

mod common;

use tonic::{
    Request, Status,
    service::{Routes, interceptor::InterceptedService},
    transport::server::TcpIncoming,
};
use tower_bouncer::{bouncer::Refusals, http::ConnExtensions};

#[tokio::main]
async fn main() {
    common::on_a_worker(run()).await;
}

async fn run() {
    let args = common::Args::from_env("tonic_server", false);
    common::init_logging();
    common::record_metrics(&args);
    // A refused call gets UNAVAILABLE or RESOURCE_EXHAUSTED, in gRPC.
    let bouncer = common::bouncer(&args, Refusals::Http);
    let shutdown = common::shutdown_signal();
    let listener = common::bind(args.addr).await;
    common::serve_admin(&args, bouncer.as_ref()).await;

    let (_reporter, health) = tonic_health::server::health_reporter();
    let health = InterceptedService::new(health, require_token);

    let Some(bouncer) = bouncer else {
        let (shutdown, drain_deadline) = common::with_drain_deadline(shutdown);
        let serving = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown);
        tokio::select! {
            served = serving => served
                .unwrap_or_else(|error| common::fail(format_args!("server failed: {error}"))),
            () = drain_deadline => {}
        }
        return;
    };
    let routes = Routes::new(health).prepare();
    let report = bouncer
        .serve_until(listener, common::http_service(routes), shutdown)
        .await;
    if let Err(error) = report {
        common::fail(format_args!("server failed: {error}"));
    }
}

/// Lets a call through only with `authorization: Bearer secret`. A good token is a
/// successful login on the connection: its later calls, token and all, run side by
/// side instead of one at a time as unproven credentials do.
fn require_token(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get("authorization") {
        Some(token) if token == "Bearer secret" => {
            if let Some(session) = request
                .extensions()
                .get::<ConnExtensions>()
                .and_then(ConnExtensions::login_session)
            {
                session.succeeded();
            }
            Ok(request)
        }
        _ => Err(Status::unauthenticated("a valid bearer token is required")),
    }
}
