//! Every protection in one call: the recommended stack, in the right order, from one
//! [`BouncerConfig`] with documented defaults.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tower_bouncer::bouncer::Bouncer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new().route("/", get(|| async { "hello\n" }));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! // Caps, rates, timeouts, failed logins (a 401 to a request with
//! // credentials) and bans at their defaults; drains on SIGINT or SIGTERM.
//! Bouncer::new()?.serve_http(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! A [`Bouncer`] holds the layers, outermost first: the PROXY header (with
//! [`proxy_protocol.trusted`](config::ProxyProtocol::trusted) set), the ban check, the
//! per-peer and global rate, the per-peer cap, the total cap, TLS (with
//! [`tls.cert`](config::Tls::cert) set), the timeouts and the login sessions; and an
//! [`Overload`] manager that ties them together (timeouts shrink as the cap or the
//! descriptors fill up, and at a full cap a newcomer evicts an idle connection). It
//! serves an axum `Router` or tonic routes ([`serve_http`](Bouncer::serve_http)), or
//! a raw protocol's connection-level service ([`serve`](Bouncer::serve)); it is also a
//! [`Layer`] for a stack of one's own; a server that keeps `axum::serve` or tonic's
//! `Server` takes it as a listener ([`listener`](Bouncer::listener)). Each layer stays
//! reachable (for its `stats()`, the ban list) and public, for those who compose their
//! own. [`reload`](Bouncer::reload) puts a new configuration in force without a
//! restart.
//!
//! Building it raises the soft descriptor limit to the hard one (as Go does at start),
//! so that the connection cap binds before the descriptors run out, and derives the
//! default cap from it. With [`fleet.redis`](config::Fleet::redis) it joins the fleet,
//! which needs a tokio runtime: build it inside one.

pub mod config;
#[cfg(feature = "config")]
mod file;

use std::{io, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceBuilder, util::Either};
use tower_layer::Layer;
use tracing::{Instrument, instrument::WithSubscriber};

pub use config::{BouncerConfig, SettingError};
#[cfg(feature = "config")]
pub use file::{ConfigFile, ConfigFileError};

use crate::{
    BoxError, Conn,
    http::HttpService,
    limit::{ConnectionLimit, ConnectionLimitLayer},
    login::{BanCheck, Login, LoginBuilder, LoginSessions, StatusClassifier},
    overload::Overload,
    peer::PeerKeying,
    peer_limit::{PeerLimit, PeerLimitLayer},
    proxy_protocol::{ProxyProtocol, ProxyProtocolLayer},
    rate_limit::{Rate, RateLimit, RateLimitLayer},
    serve::{Listener, ProtectedListener, Server, ShutdownReport},
    timeout::{Timeout, TimeoutBuilder, TimeoutLayer},
};

/// The recommended protection, built from a [`BouncerConfig`]. Cheap to clone: clones
/// share every count, table and ban.
///
/// See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Bouncer {
    /// Replaced by a reload.
    config: Arc<ArcSwap<BouncerConfig>>,
    keying: PeerKeying,
    proxy: Option<ProxyProtocolLayer>,
    login: Login,
    rate: RateLimitLayer,
    per_peer: PeerLimitLayer,
    total: ConnectionLimitLayer,
    #[cfg(feature = "tls")]
    tls: Option<tls::TlsSetup>,
    timeouts: TimeoutLayer,
    overload: Overload,
    #[cfg(feature = "fleet")]
    fleet: Option<crate::fleet::Fleet>,
    /// Held across a [`reload`](Bouncer::reload): one at a time.
    reloading: Arc<std::sync::Mutex<()>>,
}

/// What a refused connection is told before it is closed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Refusals {
    /// An answer in the client's protocol, to its first request: `503 Service
    /// Unavailable` (connection limits) or `429 Too Many Requests` (rates, bans) with
    /// `Retry-After`, on HTTP/1.1 or HTTP/2, or the gRPC status `UNAVAILABLE` or
    /// `RESOURCE_EXHAUSTED`. Bounded: at most 32 refused connections per layer wait up
    /// to a second for their request, the others are closed at once. The default.
    Http,
    /// A raw protocol's own lines.
    Messages {
        /// Over a connection limit.
        busy: Bytes,
        /// Over a rate.
        too_fast: Bytes,
        /// From a banned peer.
        banned: Bytes,
    },
    /// Nothing: the connection is closed.
    Silent,
}

impl Refusals {
    /// A raw protocol's refusal lines, such as `ERROR busy\n`.
    pub fn messages(
        busy: impl Into<Bytes>,
        too_fast: impl Into<Bytes>,
        banned: impl Into<Bytes>,
    ) -> Self {
        Refusals::Messages {
            busy: busy.into(),
            too_fast: too_fast.into(),
            banned: banned.into(),
        }
    }

    /// (busy, too fast, banned), for the refusals that are bytes written at once.
    fn bytes(&self) -> (Bytes, Bytes, Bytes) {
        match self {
            Refusals::Messages {
                busy,
                too_fast,
                banned,
            } => (busy.clone(), too_fast.clone(), banned.clone()),
            Refusals::Http | Refusals::Silent => Default::default(),
        }
    }
}

/// How long a connection refused in HTTP may take to send its request and read the
/// answer: a far client's request arrives a round trip after the connection.
const HTTP_REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Builds a [`Bouncer`] with what a configuration file does not say: how refusals are
/// worded.
#[derive(Debug, Clone)]
#[must_use]
pub struct BouncerBuilder {
    config: BouncerConfig,
    refusals: Refusals,
}

impl BouncerBuilder {
    /// What a refused connection is told; [`Refusals::Http`] by default.
    pub fn refusals(mut self, refusals: Refusals) -> Self {
        self.refusals = refusals;
        self
    }

    /// Builds the layers; a setting that cannot work is an error here, at startup,
    /// naming its key.
    pub fn build(self) -> Result<Bouncer, SettingError> {
        let config = self.config;
        config.validate()?;
        if config.connections.raise_descriptor_limit {
            match crate::serve::raise_descriptor_limit() {
                Ok(limit) => tracing::debug!(limit, "descriptor limit raised"),
                Err(error) => tracing::warn!(%error, "cannot raise the descriptor limit"),
            }
        }
        let (busy, too_fast, banned) = self.refusals.bytes();
        let http = matches!(self.refusals, Refusals::Http);
        // In the client's protocol, or the raw protocol's bytes.
        macro_rules! told {
            ($builder:expr, $message:ident, $bytes:expr) => {
                if http {
                    $builder
                        .refusal_http()
                        .refusal_write_timeout(HTTP_REFUSAL_WAIT)
                } else {
                    $builder.$message($bytes)
                }
            };
        }
        let keying = PeerKeying::with_prefixes(32, config.peers.ipv6_prefix)
            .map_err(|error| SettingError::new("peers.ipv6_prefix", error))?
            .exempt(config.peers.exempt.iter().copied())
            .map_err(|error| SettingError::new("peers.exempt", error))?;
        let overload = Overload::builder()
            .keying(keying.clone())
            .build()
            .map_err(|error| SettingError::new("connections.max", error))?;

        let rate = RateLimitLayer::builder()
            .per_peer(per_peer_rate(&config))
            .global(Rate::per_second(config.rates.global))
            .keying(keying.clone());
        let rate = told!(rate, refusal_message, too_fast)
            .dry_run(config.dry_run)
            .build()
            .map_err(|error| SettingError::new("rates.per_peer", error))?;
        let per_peer = PeerLimitLayer::builder(config.connections.per_peer).keying(keying.clone());
        let per_peer = told!(per_peer, refusal_message, busy.clone())
            .dry_run(config.dry_run)
            .build()
            .map_err(|error| SettingError::new("connections.per_peer", error))?;
        let max_connections = max_connections(&config);
        let total = ConnectionLimitLayer::builder(max_connections);
        let mut total = told!(total, refusal_message, busy)
            .dry_run(config.dry_run)
            .overload(&overload);
        if config.connections.backpressure {
            total = total.backpressure();
        }
        let total = total
            .build()
            .map_err(|error| SettingError::new("connections.max", error))?;

        let timeouts = timeouts(&config)
            .overload(&overload)
            .build()
            .map_err(|error| SettingError::new("timeouts", error))?;
        let login = login_policy(&config)
            .keying(keying.clone())
            .evict_banned_connections(true);
        let login = told!(login, ban_message, banned)
            .dry_run(config.dry_run)
            .overload(&overload)
            .build()
            .map_err(|error| SettingError::new("bans", error))?;

        let proxy = if config.proxy_protocol.trusted.is_empty() {
            None
        } else {
            let proxy = ProxyProtocolLayer::builder()
                .trusted(config.proxy_protocol.trusted.iter().copied())
                .timeout(config.proxy_protocol.timeout)
                // As many may read their header as the cap admits.
                .max_reading(max_connections)
                .overload(&overload)
                .build()
                .map_err(|error| SettingError::new("proxy_protocol.trusted", error))?;
            Some(proxy)
        };
        #[cfg(feature = "tls")]
        let tls = tls::TlsSetup::from_config(&config.tls, &overload)?;
        #[cfg(feature = "fleet")]
        let fleet = join_fleet(&config.fleet, &login)?;

        tracing::info!(max_connections, ?config, "protections on");
        Ok(Bouncer {
            config: Arc::new(ArcSwap::from_pointee(config)),
            keying,
            proxy,
            login,
            rate,
            per_peer,
            total,
            #[cfg(feature = "tls")]
            tls,
            timeouts,
            overload,
            #[cfg(feature = "fleet")]
            fleet,
            reloading: Arc::default(),
        })
    }
}

/// The first key `new` changes that the running server is built around, which only a
/// restart changes: the leaf key, for the operator to find in the file.
fn needs_restart(old: &BouncerConfig, new: &BouncerConfig) -> Option<&'static str> {
    let (proxy, new_proxy) = (&old.proxy_protocol, &new.proxy_protocol);
    [
        (
            "peers.ipv6_prefix",
            old.peers.ipv6_prefix == new.peers.ipv6_prefix,
        ),
        (
            "connections.backpressure",
            old.connections.backpressure == new.connections.backpressure,
        ),
        (
            "connections.raise_descriptor_limit",
            old.connections.raise_descriptor_limit == new.connections.raise_descriptor_limit,
        ),
        ("proxy_protocol.trusted", proxy.trusted == new_proxy.trusted),
        ("proxy_protocol.timeout", proxy.timeout == new_proxy.timeout),
        // On or off; the files themselves are read again.
        ("tls.cert", old.tls.cert.is_some() == new.tls.cert.is_some()),
        (
            "tls.handshake_timeout",
            old.tls.handshake_timeout == new.tls.handshake_timeout,
        ),
        ("bans.kernel", old.bans.kernel == new.bans.kernel),
        ("fleet.redis", old.fleet.redis == new.fleet.redis),
        ("fleet.prefix", old.fleet.prefix == new.fleet.prefix),
        ("admin.addr", old.admin.addr == new.admin.addr),
        ("admin.token", old.admin.token == new.admin.token),
    ]
    .into_iter()
    .find_map(|(key, same)| (!same).then_some(key))
}

/// `connections.max`, or its default.
fn max_connections(config: &BouncerConfig) -> usize {
    config
        .connections
        .max
        .unwrap_or_else(default_max_connections)
}

/// `rates.per_peer` with its burst.
fn per_peer_rate(config: &BouncerConfig) -> Rate {
    let rate = Rate::per_second(config.rates.per_peer);
    match config.rates.burst {
        Some(burst) => rate.burst(burst),
        None => rate,
    }
}

/// The `[timeouts]`.
fn timeouts(config: &BouncerConfig) -> TimeoutBuilder {
    let timeouts = &config.timeouts;
    let builder = TimeoutLayer::builder()
        .first_byte(timeouts.first_byte)
        .idle(timeouts.idle)
        .request(timeouts.request)
        .lifetime(timeouts.lifetime);
    match timeouts.request_min_rate {
        0 => builder,
        rate => builder.request_min_rate(rate, timeouts.request_max),
    }
}

/// The `[logins]` and `[bans]` policy.
fn login_policy(config: &BouncerConfig) -> LoginBuilder {
    let bans = &config.bans;
    let login = Login::builder()
        .max_auth_tries(config.logins.max_auth_tries)
        .max_failures(bans.max_failures)
        .max_timeouts(bans.max_timeouts)
        .failure_window(bans.window)
        .ban(bans.first)
        .ban_escalation(bans.factor, bans.max);
    match config.logins.timeout {
        Some(timeout) => login.login_timeout(timeout),
        None => login,
    }
}

/// Concurrent connections by default: 4096, or three quarters of the descriptor limit
/// if that is less, leaving room for everything else the process opens.
fn default_max_connections() -> usize {
    const MAX: usize = 4096;
    #[cfg(unix)]
    let soft = rlimit::Resource::NOFILE
        .get()
        .map_or(u64::MAX, |(soft, _)| soft);
    #[cfg(not(unix))]
    let soft = u64::MAX;
    let room = usize::try_from(soft / 4 * 3).unwrap_or(usize::MAX);
    MAX.min(room).max(1)
}

/// Joins the fleet on `fleet.redis`.
#[cfg(feature = "fleet")]
fn join_fleet(
    config: &config::Fleet,
    login: &Login,
) -> Result<Option<crate::fleet::Fleet>, SettingError> {
    #[cfg(feature = "redis")]
    if let Some(url) = &config.redis {
        use crate::fleet::{Fleet, RedisBackend};
        let mut backend =
            RedisBackend::new(url).map_err(|error| SettingError::new("fleet.redis", error))?;
        if let Some(prefix) = &config.prefix {
            backend = backend
                .prefix(prefix)
                .map_err(|error| SettingError::new("fleet.prefix", error))?;
        }
        let fleet = Fleet::builder(backend)
            .join(login)
            .map_err(|error| SettingError::new("fleet.redis", error))?;
        return Ok(Some(fleet));
    }
    let _ = (config, login);
    Ok(None)
}

/// A connection-level service under every layer of a [`Bouncer`].
pub type Protected<S> = Either<ProxyProtocol<Admitted<S>>, Admitted<S>>;

/// Under the admission layers, keyed on the peer (the client's, after a PROXY header).
type Admitted<S> =
    BanCheck<RateLimit<PeerLimit<ConnectionLimit<MaybeTls<Timeout<LoginSessions<S>>>>>>>;

#[cfg(feature = "tls")]
type MaybeTls<S> = Either<crate::tls::Tls<S>, S>;
#[cfg(not(feature = "tls"))]
type MaybeTls<S> = S;

/// An HTTP application under the adapter, failed logins reported.
pub type ProtectedHttp<A> = Protected<HttpService<A>>;

impl<S> Layer<S> for Bouncer {
    type Service = Protected<S>;

    fn layer(&self, inner: S) -> Protected<S> {
        let builder = ServiceBuilder::new()
            .option_layer(self.proxy.clone())
            .layer(self.login.ban_layer())
            .layer(self.rate.clone())
            .layer(self.per_peer.clone())
            .layer(self.total.clone());
        #[cfg(feature = "tls")]
        let builder = builder.option_layer(self.tls.as_ref().map(|tls| tls.layer.clone()));
        builder
            .layer(self.timeouts.clone())
            .layer(self.login.session_layer())
            .service(inner)
    }
}

impl Bouncer {
    /// The recommended protection, every setting at its default.
    pub fn new() -> Result<Self, SettingError> {
        Self::from_config(BouncerConfig::default())
    }

    /// The protection `config` describes.
    pub fn from_config(config: BouncerConfig) -> Result<Self, SettingError> {
        Self::builder(config).build()
    }

    /// A builder, for what a configuration does not say.
    pub fn builder(config: BouncerConfig) -> BouncerBuilder {
        BouncerBuilder {
            config,
            refusals: Refusals::Http,
        }
    }

    /// Serves an axum `Router`, tonic routes or any `Service<http::Request<Incoming>>`
    /// over HTTP/1.1 and HTTP/2 (and TLS, if configured) under every layer, until SIGINT
    /// or SIGTERM; then drains. A `401` (or gRPC `UNAUTHENTICATED`) to a request that
    /// carries credentials is a failed login: the connection closes once it is sent,
    /// and the failure counts toward the peer's ban (the [`StatusClassifier`]'s
    /// defaults; for others, give [`serve_until`](Self::serve_until) an [`HttpService`]
    /// that [reports](crate::http::HttpServiceBuilder::report_logins) as you choose).
    /// Give a `Router` as `app.with_state(())`, which makes its routes once rather than
    /// for every request (see [`HttpService::new`]).
    pub async fn serve_http<A, B>(
        &self,
        listener: TcpListener,
        app: A,
    ) -> io::Result<ShutdownReport>
    where
        A: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        ProtectedHttp<A>:
            Service<Conn<TcpStream>, Response = (), Error = BoxError> + Send + 'static,
        <ProtectedHttp<A> as Service<Conn<TcpStream>>>::Future: Send + 'static,
    {
        self.serve_http_until(listener, app, shutdown_signal())
            .await
    }

    /// [`serve_http`](Self::serve_http) until `shutdown` completes.
    pub async fn serve_http_until<A, B>(
        &self,
        listener: TcpListener,
        app: A,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<ShutdownReport>
    where
        A: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        ProtectedHttp<A>:
            Service<Conn<TcpStream>, Response = (), Error = BoxError> + Send + 'static,
        <ProtectedHttp<A> as Service<Conn<TcpStream>>>::Future: Send + 'static,
    {
        let http = HttpService::builder(app)
            .report_logins(StatusClassifier::default())
            .build()
            .expect("the default settings are valid");
        self.serve_until(listener, http, shutdown).await
    }

    /// Serves a raw protocol's connection-level service (one call per connection, its
    /// future runs the connection) under every layer, until SIGINT or SIGTERM; then
    /// drains. The protocol reports logins on the connection's
    /// [`LoginSession`](crate::login::LoginSession) ([`Conn::login_session`]).
    pub async fn serve<S>(&self, listener: TcpListener, service: S) -> io::Result<ShutdownReport>
    where
        Protected<S>: Service<Conn<TcpStream>, Response = (), Error = BoxError> + Send + 'static,
        <Protected<S> as Service<Conn<TcpStream>>>::Future: Send + 'static,
    {
        self.serve_until(listener, service, shutdown_signal()).await
    }

    /// [`serve`](Self::serve) until `shutdown` completes. On Linux the listener gets
    /// the kernel ban filter (unless [`bans.kernel`](config::Bans::kernel) is off);
    /// with TLS, sockets send without Nagle's delay, which would otherwise hold each
    /// first response behind rustls' session tickets for the client's delayed
    /// acknowledgement.
    ///
    /// The accept loop runs in a task of its own, on a runtime worker, wherever this is
    /// awaited (see [`serve`](crate::serve#where-the-accept-loop-runs)), in the caller's
    /// tracing span and with its subscriber. Dropping this future aborts that task: the
    /// listener closes once the runtime next runs it, not at once, and the connections
    /// already accepted run on in their own tasks until they end or their timeouts cut
    /// them. To stop accepting and drain them, complete `shutdown` instead.
    pub async fn serve_until<S>(
        &self,
        listener: TcpListener,
        service: S,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<ShutdownReport>
    where
        Protected<S>: Service<Conn<TcpStream>, Response = (), Error = BoxError> + Send + 'static,
        <Protected<S> as Service<Conn<TcpStream>>>::Future: Send + 'static,
    {
        let service = self.layer(service);
        let server = Server::new(self.accept(listener))
            .with_graceful_shutdown(shutdown)
            .serve(service);
        // A task does not inherit the span or the thread's subscriber it is spawned in.
        let server = server.in_current_span().with_current_subscriber();
        let mut task = AbortOnDrop(tokio::spawn(server));
        match (&mut task.0).await {
            Ok(report) => report,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(cancelled) => Err(io::Error::other(cancelled)),
            },
        }
    }

    /// A listener for `axum::serve` or tonic's `serve_with_incoming`, whose connections
    /// pass every layer before the framework sees them; set up as
    /// [`serve_until`](Self::serve_until) sets up its own. The framework serves HTTP, so
    /// what needs the HTTP adapter is lost: see
    /// [`ProtectedListener`](crate::serve::protected) for what this path cannot do.
    /// The layers run in the framework's accept loop: run it in a task of its own
    /// (`tokio::spawn`), as the [`serve`](crate::serve#where-the-accept-loop-runs)
    /// module advises.
    ///
    /// ```no_run
    /// use axum::{Router, routing::get};
    /// use tower_bouncer::bouncer::Bouncer;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let app = Router::new().route("/", get(|| async { "hello\n" }));
    /// let tcp = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
    /// axum::serve(Bouncer::new()?.listener(tcp)?, app).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// If the listener cannot tell its address.
    pub fn listener(&self, listener: TcpListener) -> io::Result<ProtectedListener> {
        Server::new(self.accept(listener)).protect(self.clone())
    }

    /// The listener this bouncer accepts from: on Linux with the kernel ban filter
    /// (unless [`bans.kernel`](config::Bans::kernel) is off), which keeps the trusted
    /// balancers' keys out; with TLS, sockets that send without Nagle's delay.
    fn accept(&self, listener: TcpListener) -> Accept {
        let listener = Arc::new(listener);
        #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
        if self.config.load().bans.kernel {
            let kernel = self.login.bans().kernel_filter();
            // `proxy_protocol.trusted` is not reloaded: set once, it stays right.
            if let Some(proxy) = &self.proxy {
                kernel.set_balancers(proxy.trusted().iter().copied());
            }
            if let Err(error) = kernel.attach(&listener) {
                tracing::warn!(%error, "no kernel ban filter: banned peers are refused in user space");
            }
        }
        let nodelay = self.tls_configured();
        Accept { listener, nodelay }
    }

    fn tls_configured(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// The settings in force: those it was built from, or last reloaded.
    pub fn config(&self) -> Arc<BouncerConfig> {
        self.config.load_full()
    }

    /// The connection cap in force (`connections.max`, or its default worked out from
    /// the descriptor limit).
    pub fn max_connections(&self) -> usize {
        self.total.stats().limit
    }

    /// Puts `config` in force without a restart: dry run, the caps, the rates, the
    /// timeouts (for new connections; live ones keep theirs), the exempt networks, the
    /// login tries and timeout, the ban policy (in a fleet, the store's too, from this
    /// replica's next change), and, with TLS, the certificate files read again (for
    /// new handshakes). Live connections are not dropped: under a lower
    /// cap, new ones are refused (or, with backpressure, wait) until there is room. The
    /// rates keep what each peer and the whole server have spent, counted in
    /// connections at the new rates: a reload hands out no fresh burst. Checked whole
    /// before anything changes: a reload that cannot work changes nothing and says why,
    /// by key (`ConfigFile::locate` finds its line in a file). What the running server
    /// is built around needs a restart, and a reload changing it is refused naming the
    /// key that changed: the IPv6 prefix, backpressure, whether the descriptor limit is
    /// raised (done when the bouncer is built), the PROXY protocol, TLS on or off and
    /// its handshake timeout, the kernel filter, the fleet, the admin page. Reloads run
    /// one at a time: one called while another runs waits for it.
    ///
    /// ```no_run
    /// # fn run(bouncer: tower_bouncer::bouncer::Bouncer) -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_bouncer::bouncer::BouncerConfig;
    ///
    /// // On SIGHUP, say:
    /// match BouncerConfig::from_toml_file("bouncer.toml") {
    ///     Ok(config) => bouncer.reload(config)?,
    ///     Err(error) => eprintln!("kept the configuration in force: {error}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn reload(&self, config: BouncerConfig) -> Result<(), SettingError> {
        // Two reloads at once would interleave their setters (one's cap, the other's
        // rate) and store either config; off the connection path, as a reload is.
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        config.validate()?;
        if let Some(key) = needs_restart(&self.config.load(), &config) {
            return Err(SettingError::new(key, "cannot change without a restart"));
        }
        // The one part that can fail on what it reads: read before anything changes,
        // put in force with the rest.
        #[cfg(feature = "tls")]
        let certificate = match (&self.tls, &config.tls.cert, &config.tls.key) {
            (Some(tls), Some(chain), Some(key)) => Some((
                &tls.certificate,
                crate::tls::ServerCertificate::from_pem_files(chain, key)
                    .map_err(|error| SettingError::new("tls.cert", error))?,
            )),
            _ => None,
        };
        // Validated above: the layers refuse nothing that `validate` lets through, so
        // none of these fails once the first has changed something.
        let at = |key| move |error| SettingError::new(key, error);
        let max = max_connections(&config);
        self.total.set_max(max).map_err(at("connections.max"))?;
        if let Some(proxy) = &self.proxy {
            proxy.set_max_reading(max).map_err(at("connections.max"))?;
        }
        self.per_peer
            .set_max_per_peer(config.connections.per_peer)
            .map_err(at("connections.per_peer"))?;
        self.rate
            .set_per_peer(per_peer_rate(&config))
            .map_err(at("rates.per_peer"))?;
        self.rate
            .set_global(Rate::per_second(config.rates.global))
            .map_err(at("rates.global"))?;
        self.timeouts
            .set_deadlines(timeouts(&config))
            .map_err(at("timeouts"))?;
        self.login
            .set_policy(login_policy(&config))
            .map_err(at("bans"))?;
        self.keying
            .set_exempt(config.peers.exempt.iter().copied())
            .map_err(at("peers.exempt"))?;
        self.total.set_dry_run(config.dry_run);
        self.per_peer.set_dry_run(config.dry_run);
        self.rate.set_dry_run(config.dry_run);
        self.login.set_dry_run(config.dry_run);
        #[cfg(feature = "tls")]
        if let Some((in_force, loaded)) = certificate {
            in_force.replace_with(&loaded);
        }
        tracing::info!(?config, "configuration reloaded");
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// The login policy: failed logins, bans ([`Login::bans`] lists, adds and lifts
    /// them), the offence table.
    pub fn login(&self) -> &Login {
        &self.login
    }

    /// The overload manager: pressure, and what it shed.
    pub fn overload(&self) -> &Overload {
        &self.overload
    }

    /// The total connection cap.
    pub fn connection_limit(&self) -> &ConnectionLimitLayer {
        &self.total
    }

    /// The per-peer connection cap.
    pub fn peer_limit(&self) -> &PeerLimitLayer {
        &self.per_peer
    }

    /// The per-peer and global connection rates.
    pub fn rate_limit(&self) -> &RateLimitLayer {
        &self.rate
    }

    /// The timeouts.
    pub fn timeouts(&self) -> &TimeoutLayer {
        &self.timeouts
    }

    /// The PROXY protocol layer, when balancers are trusted.
    pub fn proxy_protocol(&self) -> Option<&ProxyProtocolLayer> {
        self.proxy.as_ref()
    }

    /// The TLS layer and its certificate, when TLS is served.
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<(&crate::tls::TlsLayer, &crate::tls::ServerCertificate)> {
        self.tls.as_ref().map(|tls| (&tls.layer, &tls.certificate))
    }

    /// The operator's page over every layer, with the `admin.token` of the
    /// configuration; serve it on `admin.addr` (feature `admin`):
    ///
    /// ```no_run
    /// # async fn run(bouncer: tower_bouncer::bouncer::Bouncer) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::future::IntoFuture;
    ///
    /// if let Some(addr) = bouncer.config().admin.addr {
    ///     // With `metrics-exporter-prometheus`: `.metrics(move || handle.render())`.
    ///     let admin = bouncer.admin().build()?.bind(addr).await?;
    ///     tokio::spawn(admin.into_future());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "admin")]
    pub fn admin(&self) -> crate::admin::AdminBuilder {
        let admin = crate::admin::Admin::builder().bouncer(self);
        match &self.config().admin.token {
            Some(token) => admin.token(token.clone()),
            None => admin,
        }
    }

    /// The fleet the bans are shared with, when `fleet.redis` is set.
    #[cfg(feature = "fleet")]
    pub fn fleet(&self) -> Option<&crate::fleet::Fleet> {
        self.fleet.as_ref()
    }
}

/// Aborts the task when dropped: the caller's future owns it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completes on SIGINT or, on Unix, SIGTERM. On Unix both handlers are installed when
/// this is called, before the server starts (elsewhere, Ctrl-C's when first polled).
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt())
            .and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)))
    };
    async move {
        #[cfg(unix)]
        if let Ok((mut interrupt, mut terminate)) = handlers {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutting down");
            return;
        }
        tokio::signal::ctrl_c().await.ok();
        tracing::info!("shutting down");
    }
}

/// The bouncer's listener: a TCP listener whose sockets send without delay when asked.
struct Accept {
    listener: Arc<TcpListener>,
    nodelay: bool,
}

impl Listener for Accept {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        if self.nodelay {
            stream.set_nodelay(true)?;
        }
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn connection_local_addr(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        stream.local_addr()
    }
}

#[cfg(feature = "tls")]
mod tls {
    use super::{SettingError, config};
    use crate::{
        overload::Overload,
        tls::{ServerCertificate, TlsLayer},
    };

    /// The TLS layer and the certificate it presents.
    #[derive(Debug, Clone)]
    pub(super) struct TlsSetup {
        pub(super) layer: TlsLayer,
        pub(super) certificate: ServerCertificate,
    }

    impl TlsSetup {
        /// The TLS layer `tls.cert` and `tls.key` ask for.
        pub(super) fn from_config(
            config: &config::Tls,
            overload: &Overload,
        ) -> Result<Option<Self>, SettingError> {
            let (Some(chain), Some(key)) = (&config.cert, &config.key) else {
                return Ok(None);
            };
            let certificate = ServerCertificate::from_pem_files(chain, key)
                .map_err(|error| SettingError::new("tls.cert", error))?;
            let layer = TlsLayer::builder(certificate.clone())
                .handshake_timeout(config.handshake_timeout)
                .overload(overload)
                .build()
                .map_err(|error| SettingError::new("tls.handshake_timeout", error))?;
            Ok(Some(Self { layer, certificate }))
        }
    }
}
