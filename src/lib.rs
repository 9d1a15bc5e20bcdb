//! Connection-level [`tower`] layers that protect any tokio server against
//! connection-exhaustion denial of service.
//!
//! A connection is a request: a connection-level service is a
//! `Service<Conn<IO>, Response = ()>` whose future runs the whole connection. Every
//! protection is a [`Layer`](tower_layer::Layer) over such a service, so protections
//! compose with [`tower::ServiceBuilder`] and are tested with `tower-test`.
//!
//! - [`Conn`]: the stream, the peer and local addresses, and typed extensions.
//! - [`GracefulClose`]: the per-connection signal that asks a connection to finish its
//!   current exchange and close.
//! - [`serve`](mod@serve) (feature `serve`): the accept loop, which waits for the service
//!   to be ready before each accept, survives `EMFILE`, and drains on shutdown; and
//!   [`ProtectedListener`](serve::ProtectedListener), the layers under `axum::serve` or
//!   tonic's own server.
//! - [`http`](mod@http) (feature `http`): [`HttpService`](http::HttpService) serves an
//!   axum `Router` or tonic routes over HTTP/1.1 and HTTP/2 on each connection.
//! - [`proxy_protocol`] (feature `proxy-protocol`): the real client behind a load
//!   balancer, read from a PROXY header sent by a trusted network.
//! - [`overload`] (feature `overload`): the pressure every layer can read; timeouts
//!   that shrink under it, idle connections evicted to make room at a full cap.
//! - [`tls`](mod@tls) (feature `tls`): [`TlsLayer`](tls::TlsLayer) terminates TLS with a
//!   deadline on the whole handshake, ALPN, and certificates that reload without a
//!   restart.
//! - [`fleet`] (feature `fleet`; Redis with feature `redis`): bans, offences and
//!   escalation shared by a service's replicas, off every connection's path.
//! - [`admin`] (feature `admin`): the operator's page: bans, top peers, the layers'
//!   figures and Prometheus metrics behind a bearer token, with an HTML dashboard.
//! - `metrics` (feature `metrics`): every layer's figures through the `metrics`
//!   facade, for any exporter; the names, types, units and labels.
//!
//! # Example
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tower_bouncer::{http::HttpService, serve::Server};
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route("/", get(|| async { "hello\n" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! Server::new(listener)
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
//!     .serve(HttpService::new(app))
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Runtime
//!
//! The layers run on any tokio runtime with timers: `#[tokio::main]`, `Runtime::new`, or
//! a `Builder` with `enable_time` (or `enable_all`). Deadlines need timers outright. The
//! per-peer limit, the rate limit, the login, the overload registry and the admin page
//! also keep a task on the runtime where they are first used (a sweep of their tables,
//! a sampler), and on a runtime without timers that task cannot run: the first use
//! panics and catches the panic, once per layer (tokio's message, naming
//! `enable_time`, is printed), and the layer goes on without the task. Its tables stay
//! within their bounds but are not swept: a departed peer is forgotten only where a
//! full table makes way for a new one, and a table that fills otherwise stays full (its
//! overflow policy applies); neither the overload pressure nor the admin page's history
//! is sampled. Built with `panic = "abort"`, the process aborts at that first use
//! instead.
//!
//! # Logs
//!
//! The crate logs through [`tracing`], under its module paths as targets, so that an
//! `EnvFilter` directive for a module also covers the modules under it:
//!
//! | target | level | events |
//! |---|---|---|
//! | `tower_bouncer::serve` | `error` | the listener or the service failed, a connection panicked; the server stops |
//! | | `warn` | accepts keep failing (descriptors run out): pausing, backing off |
//! | | `info` | the server stopped, with how many connections drained and were cut |
//! | | `debug`, `trace` | a connection ended with an error, was cut at the drain deadline, or closed |
//! | `tower_bouncer::admission` | `warn` | a connection refused by a cap, a rate, a ban or the startups budget, with its peer and reason; in dry run, one that would be |
//! | `tower_bouncer::login` | `warn` | a peer banned, with its offence and the ban's length; a ban from the fleet not applied |
//! | | `debug` | a connection evicted after a failed login, and cut after its grace; the kernel ban filter rebuilt (`warn` if the kernel refused it) |
//! | `tower_bouncer::timeout` | `info` | a connection timed out, with which deadline |
//! | | `debug` | a connection reached its lifetime and was asked to close |
//! | `tower_bouncer::proxy_protocol` | `warn` | a PROXY header refused (`debug` if the connection ended before it) |
//! | `tower_bouncer::tls` | `info` | a TLS handshake failed |
//! | `tower_bouncer::http` | `debug` | a connection cut after its close grace |
//! | `tower_bouncer::overload` | `debug` | an idle connection evicted to make room |
//! | `tower_bouncer::fleet` | `error`, `warn`, `info` | the sync task panicked; the store is unreachable; back in step with it |
//! | `tower_bouncer::bouncer` | `info` | protections on, the configuration reloaded, shutting down |
//! | | `warn`, `debug` | the descriptor limit not raised (raised); no kernel ban filter |
//! | `tower_bouncer::admin` | `warn` | a ban made or lifted from the admin page; the page served without a token |
//!
//! The accept loop runs each connection in a `debug` span named `conn` with its `peer`
//! (cheap when `debug` is filtered out); the events above that concern one connection
//! name its `peer` themselves.
//!
//! Events an attacker can cause are throttled, so that a flood cannot flood the logs:
//! each layer lets at most one such event through a second (refusals, bans, timeouts,
//! TLS and PROXY failures; accept errors one every 5 seconds, the fleet's store one a
//! minute), and the next one let through carries `suppressed`, the count held back
//! since. Counts are in each layer's `stats()`.
//!
//! ```
//! use tracing_subscriber::EnvFilter;
//!
//! // Everything at `info`, refusals included; evictions and cuts too.
//! let filter = EnvFilter::new("info,tower_bouncer::login=debug,tower_bouncer::http=debug");
//! tracing_subscriber::fmt().with_env_filter(filter).init();
//! ```
#![forbid(unsafe_code)]
#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Shared internals serve several features; with some features off, parts go unused.
#![cfg_attr(
    not(all(
        feature = "serve",
        feature = "http",
        feature = "limit",
        feature = "peer-limit",
        feature = "rate-limit",
        feature = "timeout",
        feature = "login",
        feature = "proxy-protocol",
        feature = "overload"
    )),
    allow(dead_code, unused_imports, unused_macros)
)]

#[cfg(any(
    feature = "limit",
    feature = "peer-limit",
    feature = "rate-limit",
    feature = "login"
))]
pub mod admission;
#[cfg(any(feature = "config", feature = "tls"))]
mod bounded_read;
pub(crate) mod close;
mod config;
mod conn;
mod counter;
mod deadline;
#[cfg(any(
    feature = "peer-limit",
    feature = "rate-limit",
    feature = "login",
    feature = "overload"
))]
mod janitor;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
pub mod peer;
#[cfg(any(feature = "serve", feature = "http"))]
mod shared_io;
mod striped;

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "bouncer")]
pub mod bouncer;
#[cfg(feature = "fleet")]
pub mod fleet;
#[cfg(feature = "limit")]
pub mod limit;
#[cfg(feature = "login")]
pub mod login;
#[cfg(feature = "overload")]
pub mod overload;
#[cfg(feature = "peer-limit")]
pub mod peer_limit;
#[cfg(feature = "proxy-protocol")]
pub mod proxy_protocol;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;

#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "timeout")]
pub mod timeout;
#[cfg(feature = "tls")]
pub mod tls;

mod throttle;

pub use close::GracefulClose;
pub use config::ConfigError;
pub use conn::{Conn, ConnInfo, Parts};

/// `get_ref`, `get_mut` and `into_inner` for a middleware service whose wrapped service
/// is its `inner` field, as tower's middleware have them.
macro_rules! inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
pub(crate) use inner_service_accessors;

/// The error type of connection-level services (tower's convention).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The README's code, compiled as a doc test so it stays true (its TLS stack needs the
/// `tls` feature).
#[cfg(all(doctest, feature = "tls"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
