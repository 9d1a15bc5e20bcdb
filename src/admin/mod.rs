//! The operator's admin page: the bans, the top peers, the layers' figures and
//! Prometheus metrics as an axum [`Router`], with an HTML dashboard, behind a bearer
//! token.
//!
//! Mount it on a private listener, never on the public one: it lifts bans. It speaks
//! plain HTTP, so its token should only cross a network you trust (loopback, a private
//! network, an SSH tunnel). Its routes:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the dashboard (HTML, with its script and style beside it; no data) |
//! | `GET /stats` | the live figures of every layer given, as JSON |
//! | `GET /stats/history` | the figures sampled every second over the last ten minutes |
//! | `GET /bans` | the bans in force: target, seconds left, bans so far, reason if known |
//! | `POST /bans` | bans an address or a network: `{"target": "203.0.113.7", "seconds": 600, "reason": "scanner"}`; `409` if the target is in an exempt network (exempt peers skip the ban check) |
//! | `DELETE /bans/{target}` | lifts a ban: `/bans/203.0.113.7`, `/bans/198.51.100.0/24` |
//! | `GET /peers` | the top peers (20, or `?top=N` up to 100) by live connections, by recent offences and by past bans |
//! | `GET /metrics` | the Prometheus exposition, from the renderer given to [`AdminBuilder::metrics`] |
//!
//! # The token
//!
//! Every route but the dashboard's page, script and style needs
//! `Authorization: Bearer TOKEN`, compared in constant time (a wrong token and a
//! missing one both get `401`). The page holds no data: it asks for the token and keeps
//! it in the tab's `sessionStorage` (gone when the tab closes), and sends it as that
//! header on each of its requests. Nothing is in a cookie, so another site cannot
//! make a browser act on the page (no cross-site request forgery), and the page forbids
//! framing. Give Prometheus the token too (`authorization: { credentials: TOKEN }` in a
//! scrape config). Use a long random token (32 characters or more): the page does not
//! slow down guesses.
//!
//! [`Admin::serve`] and [`Admin::bind`] refuse to serve without a token on anything but
//! a loopback address, and warn when they serve without one on loopback. A router
//! mounted with [`Admin::router`] leaves that check to you.
//!
//! Any site the operator has open in a browser can still send requests to a loopback
//! address. So the page takes only JSON to ban (`Content-Type: application/json`, else
//! `415`), which a browser sends from another site only after asking the page, which
//! never agrees; and served without a token, it answers its data routes only to a host
//! named `localhost` or by an IP address (else `403`), so that a site whose name is
//! made to resolve to this machine (DNS rebinding) cannot read it or lift bans.
//!
//! # Exempt peers
//!
//! The ban check lets the keying's exempt peers in (`peers.exempt` of a
//! [`Bouncer`](crate::bouncer::Bouncer)'s configuration), banned or not. So `POST /bans`
//! refuses a target an exempt network holds whole (`409`, naming that network): it
//! would be listed and counted, and refuse nobody. That goes for the address or
//! network asked for, not only for the peer key it widens to: with IPv6 keyed by /64,
//! `2001:db8::10` when `2001:db8::10/128` alone is exempt is refused too, as a ban on
//! `2001:db8::/64` would shut out the host's neighbours and still let the host in (ban
//! the /64 by name to mean that). A wider target that holds exempt networks is banned,
//! and the rest of it refused; the answer names the exempt networks within it
//! (`"exempt": ["10.0.0.0/24"]`, and a `"note"` the dashboard shows).
//!
//! On its own listener ([`Admin::serve`]), the page holds at most 64 connections, 16 of
//! them from any one peer. At 64, a newcomer makes an idle connection close (the
//! [overload manager](crate::overload)'s eviction, from the peer holding the most idle
//! ones first), so that a few peers holding idle connections cannot lock the operator
//! out. Its own caps and accept loop report no metrics: `/metrics`,
//! like `/stats`, counts the application alone, whose series have the same names and
//! labels.
//!
//! # Example
//!
//! ```no_run
//! use std::future::IntoFuture;
//! use tower_bouncer::{admin::Admin, login::Login, peer_limit::PeerLimitLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let login = Login::builder().build()?;
//! let per_peer = PeerLimitLayer::builder(32).build()?;
//! // ... the layers serve the application on its own listener ...
//! let admin = Admin::builder()
//!     .token(std::env::var("ADMIN_TOKEN")?)
//!     .login(&login)
//!     .peer_limit(&per_peer)
//!     // With `metrics-exporter-prometheus`: `.metrics(move || handle.render())`.
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("10.0.0.5:9000").await?;
//! // Refused here, naming the address, if no token was given.
//! let server = admin.serve(listener)?;
//! println!("admin on {}", server.local_addr());
//! tokio::spawn(server.into_future());
//! # Ok(())
//! # }
//! ```
//!
//! With a [`Bouncer`](crate::bouncer::Bouncer) (feature `bouncer`),
//! `Admin::builder().bouncer(&bouncer)` gives the page every layer it holds.
//!
//! Or mount [`Admin::router`] in an axum application of your own: nested at a path
//! (`Router::new().nest("/admin", admin.router())`), the dashboard finds its routes
//! under that path.
//!
//! # Costs
//!
//! `/stats` reads each layer's counters; it and the sampler behind `/stats/history`
//! count the bans in force by walking the ban table, one shard at a time. `/peers` walks
//! the per-peer cap's table and the ban table the same way, keeping the top N: each
//! shard is locked only while its share is read, as long as a few admissions take.

mod assets;
mod auth;
mod bans;
mod figures;
mod history;
mod peers;
mod server;

use std::{fmt, sync::Arc};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};

pub use server::{AdminError, AdminServer};

use crate::{ConfigError, janitor::Janitor, login::Login};
use auth::Token;
use figures::Sources;
use history::History;

/// The largest request body read: a ban request is well under it.
const MAX_BODY: usize = 1024;

/// The admin page: build it with [`Admin::builder`], then [`serve`](Self::serve) it on
/// a private listener or mount its [`router`](Self::router). Cheap to clone.
///
/// See the [module documentation](self).
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

/// Builds an [`Admin`] from the layers it reads; each is optional, and a route whose
/// layer was not given answers `404` saying which is missing.
#[must_use]
#[derive(Default)]
pub struct AdminBuilder {
    token: Option<String>,
    sources: Sources,
    metrics: Option<Renderer>,
}

/// What renders the Prometheus exposition.
type Renderer = Box<dyn Fn() -> String + Send + Sync>;

/// The state every route shares.
struct Shared {
    token: Option<Token>,
    sources: Sources,
    metrics: Option<Renderer>,
    history: History,
    sampler: Janitor,
    reasons: bans::Reasons,
}

impl Admin {
    /// An admin page with no layer and no token yet.
    pub fn builder() -> AdminBuilder {
        AdminBuilder::default()
    }

    /// The routes, to mount on a listener of your own. The token is checked on every
    /// data route; whether the listener is private is for you to make sure.
    ///
    /// Starts the sampler behind `/stats/history` on the current tokio runtime, if
    /// there is one (else on the first request).
    pub fn router(&self) -> Router {
        self.shared.ensure_sampler();
        let data = Router::new()
            .route("/stats", get(figures::stats))
            .route("/stats/history", get(history::history))
            .route("/bans", get(bans::list).post(bans::ban))
            .route("/bans/{*target}", axum::routing::delete(bans::unban))
            .route("/peers", get(peers::peers))
            .route("/metrics", get(metrics))
            .route_layer(middleware::from_fn_with_state(
                self.shared.clone(),
                auth::require_token,
            ))
            .layer(middleware::map_response(no_store));
        Router::new()
            .route("/", get(assets::page))
            .route("/dashboard.js", get(assets::script))
            .route("/dashboard.css", get(assets::style))
            .merge(data)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(middleware::map_response(hardened))
            .with_state(self.shared.clone())
    }
}

impl AdminBuilder {
    /// The bearer token every data route requires. Without one, [`Admin::serve`]
    /// serves on loopback only.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Every layer of `bouncer`: as [`login`](Self::login),
    /// [`peer_limit`](Self::peer_limit), [`connection_limit`](Self::connection_limit),
    /// [`rate_limit`](Self::rate_limit), [`timeouts`](Self::timeouts) and
    /// [`overload`](Self::overload) with each of its layers. A reload changes those
    /// layers in place, so the page goes on reading them.
    #[cfg(feature = "bouncer")]
    pub fn bouncer(self, bouncer: &crate::bouncer::Bouncer) -> Self {
        self.login(bouncer.login())
            .peer_limit(bouncer.peer_limit())
            .connection_limit(bouncer.connection_limit())
            .rate_limit(bouncer.rate_limit())
            .timeouts(bouncer.timeouts())
            .overload(bouncer.overload())
    }

    /// The login layers: `/bans`, the offenders in `/peers`, and their figures.
    pub fn login(mut self, login: &Login) -> Self {
        self.sources.login = Some(login.clone());
        self
    }

    /// The per-peer cap: the peers with the most live connections in `/peers`, and its
    /// figures.
    #[cfg(feature = "peer-limit")]
    pub fn peer_limit(mut self, layer: &crate::peer_limit::PeerLimitLayer) -> Self {
        self.sources.peer_limit = Some(layer.clone());
        self
    }

    /// The global cap: the live connections, and its figures.
    pub fn connection_limit(mut self, layer: &crate::limit::ConnectionLimitLayer) -> Self {
        self.sources.connection_limit = Some(layer.clone());
        self
    }

    /// The connection-rate limit's figures.
    #[cfg(feature = "rate-limit")]
    pub fn rate_limit(mut self, layer: &crate::rate_limit::RateLimitLayer) -> Self {
        self.sources.rate_limit = Some(layer.clone());
        self
    }

    /// The timeouts' figures.
    pub fn timeouts(mut self, layer: &crate::timeout::TimeoutLayer) -> Self {
        self.sources.timeouts = Some(layer.clone());
        self
    }

    /// The overload manager: the pressure, and its figures.
    #[cfg(feature = "overload")]
    pub fn overload(mut self, overload: &crate::overload::Overload) -> Self {
        self.sources.overload = Some(overload.clone());
        self
    }

    /// What `/metrics` answers: the Prometheus exposition, rendered on each scrape.
    /// With `metrics-exporter-prometheus`, `move || handle.render()` for its
    /// `PrometheusHandle`. Without it `/metrics` answers `404`.
    pub fn metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Some(Box::new(render));
        self
    }

    /// # Errors
    ///
    /// [`ConfigError::Inconsistent`] if the token is empty or holds anything but
    /// visible ASCII (it could not be sent in a header).
    pub fn build(self) -> Result<Admin, ConfigError> {
        let token = self.token.map(Token::new).transpose()?;
        let shared = Arc::new(Shared {
            token,
            sources: self.sources,
            metrics: self.metrics,
            history: History::default(),
            sampler: Janitor::default(),
            reasons: bans::Reasons::default(),
        });
        shared.sample();
        Ok(Admin { shared })
    }
}

impl Shared {
    /// Makes sure a task samples the figures for `/stats/history`.
    fn ensure_sampler(self: &Arc<Self>) {
        self.sampler
            .ensure(self, history::SAMPLE_EVERY, Shared::sample);
    }

    fn sample(&self) {
        self.history.push(self.sources.totals());
    }
}

/// `GET /metrics`.
async fn metrics(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Response {
    match &shared.metrics {
        Some(render) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no metrics: the admin page was built without a renderer (AdminBuilder::metrics)",
        ),
    }
}

/// A JSON answer.
fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
        .into_response()
}

/// An error as JSON: `{"error": "..."}`.
fn error(status: StatusCode, message: impl fmt::Display) -> Response {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// A route whose layer was not given to the builder.
fn missing(what: &str, method: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format_args!("no {what}: the admin page was built without it (AdminBuilder::{method})"),
    )
}

/// Data is never cached: it is live, and behind a token.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Every answer: no framing (no clickjacking of the unban buttons), no content
/// sniffing, and a page that loads nothing but its own script and style and talks
/// only to its own origin.
async fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("Admin")
            .field("token", &shared.token.as_ref().map(|_| "<hidden>"))
            .field("sources", &shared.sources)
            .field("metrics", &shared.metrics.is_some())
            .finish()
    }
}

impl fmt::Debug for AdminBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminBuilder")
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("sources", &self.sources)
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}
