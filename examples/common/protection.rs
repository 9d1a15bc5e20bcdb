//! The protection flags of `shared/EXAMPLES.md` and the layers they build. Without
//! `--unprotected` every protection is on with the defaults below, which each flag
//! overrides. An overload manager with its defaults ties them together: its pressure
//! comes from the connection cap and the descriptor limit, shrinks every timeout as it
//! rises, and a new connection at the cap evicts an idle one instead of being refused.

use std::{str::FromStr, sync::Arc, time::Duration};

use bytes::Bytes;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tower::util::Either;
#[cfg(feature = "tls")]
use tower_bouncer::tls::{ServerCertificate, TlsLayer};
use tower_bouncer::{
    BoxError, ConfigError, Conn,
    limit::{ConnectionLimit, ConnectionLimitLayer},
    login::{BanCheck, Login, LoginSessions},
    overload::Overload,
    peer::PeerKeying,
    peer_limit::{PeerLimit, PeerLimitLayer},
    proxy_protocol::{ProxyProtocol, ProxyProtocolLayer},
    rate_limit::{Rate, RateLimit, RateLimitLayer},
    serve::{Server, ShutdownReport},
    timeout::{Timeout, TimeoutLayer},
};

use super::value;

/// Concurrent connections, all peers together: at most this many, and at most three
/// quarters of the process's descriptor limit, leaving room for everything else.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The default cap on concurrent connections under the current descriptor limit.
fn default_max_connections() -> usize {
    let (soft, _) = rlimit::Resource::NOFILE
        .get()
        .unwrap_or((u64::MAX, u64::MAX));
    let room = usize::try_from(soft / 4 * 3).unwrap_or(usize::MAX);
    DEFAULT_MAX_CONNECTIONS.min(room).max(1)
}
/// Concurrent connections per peer key.
pub const DEFAULT_MAX_PER_PEER: usize = 32;
/// New connections per second per peer key; the burst is the same unless `--burst`.
pub const DEFAULT_RATE: u32 = 20;
/// New connections per second, all peers together.
pub const DEFAULT_GLOBAL_RATE: u32 = 2000;
/// The prefix length that forms an IPv6 peer key.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// Close a connection with no byte read or written for this long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Close a connection that sends nothing for this long after connecting.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Close a connection whose request is not complete this long after its first byte.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Ask a connection this old to close, and cut it 30 seconds later.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Failed logins one connection may make before it is closed.
pub const DEFAULT_MAX_AUTH_TRIES: u32 = 1;
/// Failed logins from one peer key within the failure window that ban it.
pub const DEFAULT_MAX_FAILURES: u32 = 5;
/// Timeout offences (first byte, request, login, TLS handshake) from one peer key within
/// the failure window that ban it.
pub const DEFAULT_MAX_TIMEOUTS: u32 = 30;
/// The window failed logins and other offences are counted in.
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// The first ban; each repeat offence doubles it, up to 24 hours.
pub const DEFAULT_BAN: Duration = Duration::from_secs(600);
/// login_server: close a connection that has not logged in this long after connecting.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A trusted balancer's PROXY header must be complete this long after accept.
pub const DEFAULT_PROXY_PROTOCOL_TIMEOUT: Duration = Duration::from_secs(5);
/// A TLS handshake must be complete this long after accept.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `--help` lines of the protection flags every example takes.
pub const USAGE: &str =
    "  --max-connections N   concurrent connections in all (default 4096, or 3/4 of the
                        descriptor limit if that is less); at the cap a new connection
                        evicts an idle one, and past 80% of it (or of the descriptor
                        limit) every timeout shrinks, to a fifth at 95%
  --backpressure        when at --max-connections with none idle, stop accepting
                        instead of refusing
  --max-per-peer N      concurrent connections per peer key (default 32)
  --ipv6-prefix N       prefix length of an IPv6 peer key (default 64)
  --rate N              new connections per second per peer key (default 20)
  --burst N             burst for --rate (default: the rate)
  --global-rate N       new connections per second in all (default 2000)
  --exempt CIDR         peers that skip per-peer limits, rates and bans (repeatable)
  --idle-timeout S      close a connection idle for S seconds (default 60): nothing moved
                        (HTTP: no request open; PINGs do not count), or output waiting
                        for a client that takes under 256 bytes a second of it
  --first-byte-timeout S
                        close a connection silent for S seconds after connecting (default 10)
  --request-timeout S   close a connection whose request is not complete S seconds
                        after its first byte (default 10)
  --max-lifetime S      close a connection older than S seconds gracefully (default 3600)
  --max-auth-tries N    failed logins on one connection before it is closed (default 1)
  --max-failures N      failed logins per peer key within --failure-window that ban it (default 5)
  --max-timeouts N      timeout offences per peer within --failure-window that ban it
                        (default 30; 0 = off)
  --failure-window S    the window failed logins and other offences are counted in (default 600)
  --ban S               the first ban; each repeat offence doubles it, up to 24 hours (default 600)
  --no-kernel-bans      refuse banned peers in user space only (by default, on Linux, a
                        banned peer that keeps reconnecting is dropped by a socket filter)
  --proxy-protocol-from CIDR
                        read a PROXY v1/v2 header from these balancers, and only them
                        (repeatable; none by default)
  --proxy-protocol-timeout S
                        the PROXY header must be complete within S of accept (default 5)
  --tls-cert FILE, --tls-key FILE
                        serve TLS with this PEM certificate chain and key, ALPN h2 and
                        http/1.1 (needs the `tls` feature; SIGHUP reloads them)
  --tls-handshake-timeout S
                        the whole TLS handshake must finish within S (default 10)
  --redis URL           share bans, failed logins and other offences with every replica
                        on this Redis (redis:// or rediss://; needs the `redis` feature)
  --redis-prefix P      the Redis key prefix this service's replicas share
                        (default tower-bouncer)";

/// The `--help` line of the flag only login_server takes.
pub const LOGIN_TIMEOUT_USAGE: &str = "  --login-timeout S     close a connection not logged in S seconds after connecting (default 30)";

/// The protection settings, from the defaults and the flags.
#[derive(Debug, Clone)]
pub struct Protection {
    /// `None`: [`default_max_connections`], worked out when the layers are built.
    pub max_connections: Option<usize>,
    pub backpressure: bool,
    pub max_per_peer: usize,
    pub ipv6_prefix: u8,
    pub rate: u32,
    pub burst: Option<u32>,
    pub global_rate: u32,
    pub exempt: Vec<IpNet>,
    pub idle_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub request_timeout: Duration,
    pub max_lifetime: Duration,
    pub max_auth_tries: u32,
    pub max_failures: u32,
    pub max_timeouts: u32,
    pub failure_window: Duration,
    pub ban: Duration,
    /// Drop banned peers that keep reconnecting in the kernel (Linux); off with
    /// `--no-kernel-bans`.
    pub kernel_bans: bool,
    /// `None` for the examples that take no `--login-timeout`.
    pub login_timeout: Option<Duration>,
    /// Balancers whose PROXY headers are read; none: no PROXY protocol.
    pub proxy_protocol_from: Vec<IpNet>,
    pub proxy_protocol_timeout: Duration,
    /// The certificate chain and key TLS is served with; none: plaintext.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub tls_handshake_timeout: Duration,
    /// The fleet's Redis; none: this replica bans alone.
    pub redis: Option<String>,
    pub redis_prefix: Option<String>,
}

impl Protection {
    /// The defaults; `login_timeout` is `Some` for a server whose every connection logs
    /// in, which then takes `--login-timeout`.
    pub fn new(login_timeout: Option<Duration>) -> Self {
        Self {
            max_connections: None,
            backpressure: false,
            max_per_peer: DEFAULT_MAX_PER_PEER,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            rate: DEFAULT_RATE,
            burst: None,
            global_rate: DEFAULT_GLOBAL_RATE,
            exempt: Vec::new(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            max_auth_tries: DEFAULT_MAX_AUTH_TRIES,
            max_failures: DEFAULT_MAX_FAILURES,
            max_timeouts: DEFAULT_MAX_TIMEOUTS,
            failure_window: DEFAULT_FAILURE_WINDOW,
            ban: DEFAULT_BAN,
            kernel_bans: true,
            login_timeout,
            proxy_protocol_from: Vec::new(),
            proxy_protocol_timeout: DEFAULT_PROXY_PROTOCOL_TIMEOUT,
            tls_cert: None,
            tls_key: None,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            redis: None,
            redis_prefix: None,
        }
    }
}

/// A duration flag's value: seconds, fractions allowed.
#[derive(Debug, Clone, Copy)]
pub struct Seconds(pub Duration);

impl FromStr for Seconds {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let seconds: f64 = value
            .parse()
            .map_err(|_| "not a number of seconds".to_owned())?;
        Duration::try_from_secs_f64(seconds)
            .map(Seconds)
            .map_err(|_| "not a duration".to_owned())
    }
}

/// What a refused connection is told, in the server's protocol.
#[derive(Debug, Clone)]
pub struct Refusals {
    /// Over a connection limit.
    pub busy: Bytes,
    /// Over a rate.
    pub too_fast: Bytes,
    /// From a banned peer.
    pub banned: Bytes,
}

/// The protection layers, outermost first: the PROXY header (behind a balancer), bans,
/// rate, per-peer cap, total cap, TLS, timeouts, login sessions.
#[derive(Debug, Clone)]
pub struct Layers {
    pub proxy: Option<ProxyProtocolLayer>,
    #[cfg(feature = "tls")]
    pub tls: Option<TlsSetup>,
    pub login: Login,
    /// The fleet the login's bans and offences are shared with, with `--redis`.
    #[cfg(feature = "fleet")]
    pub fleet: Option<tower_bouncer::fleet::Fleet>,
    /// Whether the listener gets the kernel ban filter.
    pub kernel_bans: bool,
    pub rate: RateLimitLayer,
    pub per_peer: PeerLimitLayer,
    pub total: ConnectionLimitLayer,
    pub timeouts: TimeoutLayer,
    /// Shared by the cap and every layer with a deadline.
    pub overload: Overload,
}

/// The service type of a protocol `S` under every protection layer keyed on the peer.
pub type Protected<S> =
    BanCheck<RateLimit<PeerLimit<ConnectionLimit<MaybeTls<Timeout<LoginSessions<S>>>>>>>;

/// TLS in front of `S`, when it is served.
#[cfg(feature = "tls")]
pub type MaybeTls<S> = Either<tower_bouncer::tls::Tls<S>, S>;
#[cfg(not(feature = "tls"))]
pub type MaybeTls<S> = S;

/// The same, behind the PROXY layer when balancers are trusted.
pub type Stack<S> = Either<ProxyProtocol<Protected<S>>, Protected<S>>;

impl Protection {
    /// Takes `flag` (and its value from `argv`) if it is a protection flag.
    pub fn parse_flag(&mut self, flag: &str, argv: &mut impl Iterator<Item = String>) -> bool {
        let seconds =
            |argv: &mut dyn Iterator<Item = String>| value::<Seconds>(flag, argv.next()).0;
        match flag {
            "--max-connections" => self.max_connections = Some(value(flag, argv.next())),
            "--backpressure" => self.backpressure = true,
            "--max-per-peer" => self.max_per_peer = value(flag, argv.next()),
            "--ipv6-prefix" => self.ipv6_prefix = value(flag, argv.next()),
            "--rate" => self.rate = value(flag, argv.next()),
            "--burst" => self.burst = Some(value(flag, argv.next())),
            "--global-rate" => self.global_rate = value(flag, argv.next()),
            "--exempt" => self.exempt.push(value(flag, argv.next())),
            "--idle-timeout" => self.idle_timeout = seconds(argv),
            "--first-byte-timeout" => self.first_byte_timeout = seconds(argv),
            "--request-timeout" => self.request_timeout = seconds(argv),
            "--max-lifetime" => self.max_lifetime = seconds(argv),
            "--max-auth-tries" => self.max_auth_tries = value(flag, argv.next()),
            "--max-failures" => self.max_failures = value(flag, argv.next()),
            "--max-timeouts" => self.max_timeouts = value(flag, argv.next()),
            "--failure-window" => self.failure_window = seconds(argv),
            "--ban" => self.ban = seconds(argv),
            "--no-kernel-bans" => self.kernel_bans = false,
            "--login-timeout" if self.login_timeout.is_some() => {
                self.login_timeout = Some(seconds(argv));
            }
            "--proxy-protocol-from" => self.proxy_protocol_from.push(value(flag, argv.next())),
            "--proxy-protocol-timeout" => self.proxy_protocol_timeout = seconds(argv),
            #[cfg(feature = "tls")]
            "--tls-cert" => self.tls_cert = Some(value(flag, argv.next())),
            #[cfg(feature = "tls")]
            "--tls-key" => self.tls_key = Some(value(flag, argv.next())),
            #[cfg(feature = "tls")]
            "--tls-handshake-timeout" => self.tls_handshake_timeout = seconds(argv),
            #[cfg(not(feature = "tls"))]
            "--tls-cert" | "--tls-key" | "--tls-handshake-timeout" => super::fail(format_args!(
                "`{flag}` needs TLS: build the examples with `--features tls`"
            )),
            #[cfg(feature = "redis")]
            "--redis" => self.redis = Some(value(flag, argv.next())),
            #[cfg(feature = "redis")]
            "--redis-prefix" => self.redis_prefix = Some(value(flag, argv.next())),
            #[cfg(not(feature = "redis"))]
            "--redis" | "--redis-prefix" => super::fail(format_args!(
                "`{flag}` needs Redis: build the examples with `--features redis`"
            )),
            _ => return false,
        }
        true
    }

    /// Who a peer is, and who is exempt.
    pub fn keying(&self) -> Result<PeerKeying, ConfigError> {
        Ok(PeerKeying::with_prefixes(32, self.ipv6_prefix)?.exempt(self.exempt.iter().copied()))
    }

    /// Builds the protection layers; a setting that cannot work is an error here, at
    /// startup.
    pub fn layers(&self, refusals: &Refusals) -> Result<Layers, ConfigError> {
        let keying = self.keying()?;
        let overload = Overload::builder().keying(keying.clone()).build()?;
        let mut per_peer_rate = Rate::per_second(self.rate);
        if let Some(burst) = self.burst {
            per_peer_rate = per_peer_rate.burst(burst);
        }
        let rate = RateLimitLayer::builder()
            .per_peer(per_peer_rate)
            .global(Rate::per_second(self.global_rate))
            .keying(keying.clone())
            .refusal_message(refusals.too_fast.clone())
            .build()?;
        let per_peer = PeerLimitLayer::builder(self.max_per_peer)
            .keying(keying.clone())
            .refusal_message(refusals.busy.clone())
            .build()?;
        let max_connections = self.max_connections.unwrap_or_else(default_max_connections);
        let mut total = ConnectionLimitLayer::builder(max_connections)
            .refusal_message(refusals.busy.clone())
            .overload(&overload);
        if self.backpressure {
            total = total.backpressure();
        }
        let total = total.build()?;
        let timeouts = TimeoutLayer::builder()
            .idle(self.idle_timeout)
            .first_byte(self.first_byte_timeout)
            .request(self.request_timeout)
            .lifetime(self.max_lifetime)
            .overload(&overload)
            .build()?;
        let mut login = Login::builder()
            .keying(keying)
            .max_auth_tries(self.max_auth_tries)
            .max_failures(self.max_failures)
            .max_timeouts(self.max_timeouts)
            .failure_window(self.failure_window)
            .ban(self.ban)
            .evict_banned_connections(true)
            .ban_message(refusals.banned.clone())
            .overload(&overload);
        if let Some(timeout) = self.login_timeout {
            login = login.login_timeout(timeout);
        }
        let login = login.build()?;
        #[cfg(feature = "fleet")]
        let fleet = self.join_fleet(&login)?;
        let proxy = if self.proxy_protocol_from.is_empty() {
            None
        } else {
            Some(
                ProxyProtocolLayer::builder()
                    .trusted(self.proxy_protocol_from.iter().copied())
                    .timeout(self.proxy_protocol_timeout)
                    .overload(&overload)
                    .build()?,
            )
        };
        #[cfg(feature = "tls")]
        let tls = self.tls(&overload)?;
        tracing::info!(
            max_connections,
            backpressure = self.backpressure,
            max_per_peer = self.max_per_peer,
            rate = self.rate,
            burst = self.burst.unwrap_or(self.rate),
            global_rate = self.global_rate,
            ipv6_prefix = self.ipv6_prefix,
            exempt = ?self.exempt,
            idle_timeout = ?self.idle_timeout,
            first_byte_timeout = ?self.first_byte_timeout,
            request_timeout = ?self.request_timeout,
            max_lifetime = ?self.max_lifetime,
            max_auth_tries = self.max_auth_tries,
            max_failures = self.max_failures,
            max_timeouts = self.max_timeouts,
            failure_window = ?self.failure_window,
            ban = ?self.ban,
            kernel_bans = self.kernel_bans && cfg!(all(feature = "kernel-bans", target_os = "linux")),
            login_timeout = ?self.login_timeout,
            proxy_protocol_from = ?self.proxy_protocol_from,
            proxy_protocol_timeout = ?self.proxy_protocol_timeout,
            "protections on"
        );
        Ok(Layers {
            proxy,
            #[cfg(feature = "tls")]
            tls,
            login,
            #[cfg(feature = "fleet")]
            fleet,
            kernel_bans: self.kernel_bans,
            rate,
            per_peer,
            total,
            timeouts,
            overload,
        })
    }
}

impl Protection {
    /// Joins the fleet on `--redis`, from inside the runtime; a bad URL or prefix ends
    /// the process here, at startup.
    #[cfg(feature = "fleet")]
    fn join_fleet(
        &self,
        login: &Login,
    ) -> Result<Option<tower_bouncer::fleet::Fleet>, ConfigError> {
        #[cfg(feature = "redis")]
        if let Some(url) = &self.redis {
            use tower_bouncer::fleet::{Fleet, RedisBackend};
            let mut backend = RedisBackend::new(url)
                .unwrap_or_else(|error| super::fail(format_args!("--redis {url}: {error}")));
            if let Some(prefix) = &self.redis_prefix {
                backend = backend
                    .prefix(prefix)
                    .unwrap_or_else(|error| super::fail(format_args!("--redis-prefix: {error}")));
            }
            tracing::info!(%url, prefix = ?self.redis_prefix, "sharing bans with the fleet");
            return Fleet::builder(backend).join(login).map(Some);
        }
        if self.redis_prefix.is_some() {
            super::fail("`--redis-prefix` needs `--redis`");
        }
        let _ = login;
        Ok(None)
    }
}

/// What the layers did to connections, all layers together.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Refused at admission: rates, limits, bans, the pre-authentication budget.
    pub refused: u64,
    /// Closed after admission: timeouts and evictions after failed logins.
    pub evicted: u64,
    /// Peers banned for their offences: failed logins, timeouts, protocol errors,
    /// refusals over a per-peer limit.
    pub banned: u64,
    /// What the overload manager did: idle connections asked to close to make room at
    /// the cap,
    pub shed: u64,
    /// and how long it ran the timeouts shortened.
    pub scaled: Duration,
}

impl Layers {
    /// Adds up the layers' counters.
    pub fn tally(&self) -> Tally {
        let rate = self.rate.stats();
        let per_peer = self.per_peer.stats();
        let total = self.total.stats();
        let timeouts = self.timeouts.stats();
        let login = self.login.stats();
        let overload = self.overload.stats();
        let proxy = self.proxy.as_ref().map(|proxy| proxy.stats());
        let refused_proxy = proxy.map_or(0, |proxy| {
            proxy.refused_missing
                + proxy.refused_malformed
                + proxy.refused_too_long
                + proxy.refused_timed_out
                + proxy.refused_untrusted_header
        });
        Tally {
            refused: refused_proxy
                + rate.refused_peer_rate
                + rate.refused_global_rate
                + rate.refused_table_full
                + per_peer.refused_peer_limit
                + per_peer.refused_table_full
                + total.refused
                + login.refused_banned
                + login.refused_startups,
            evicted: timeouts.first_byte
                + timeouts.idle
                + timeouts.request
                + timeouts.lifetime_cut
                + login.evicted_after_failures
                + login.evicted_login_timeout
                + login.evicted_banned,
            banned: login.bans,
            shed: overload.evicted_idle,
            scaled: overload.time_under_pressure,
        }
    }

    /// Puts `inner` under the protection layers.
    pub fn around<S>(&self, inner: S) -> Stack<S> {
        let builder = tower::ServiceBuilder::new()
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

    /// Serves `inner` under the protection layers on `listener` until `shutdown`. On
    /// Linux the listener gets the kernel ban filter, unless `--no-kernel-bans`. With
    /// TLS, a SIGHUP reloads the certificate files, and replies are not held back by
    /// Nagle's algorithm (rustls' session tickets would otherwise delay each first
    /// response by the client's delayed acknowledgement).
    pub async fn serve<S>(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        inner: S,
    ) -> std::io::Result<ShutdownReport>
    where
        Stack<S>: tower::Service<Conn<TcpStream>, Response = (), Error = BoxError>,
        <Stack<S> as tower::Service<Conn<TcpStream>>>::Future: Send + 'static,
    {
        let service = self.around(inner);
        let listener = Arc::new(listener);
        #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
        if self.kernel_bans
            && let Err(error) = self.login.bans().kernel_filter().attach(&listener)
        {
            tracing::warn!(%error, "no kernel ban filter: banned peers are refused in user space");
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            tls.reload_on_hangup();
            return Server::new(NoDelay(listener))
                .with_graceful_shutdown(shutdown)
                .serve(service)
                .await;
        }
        Server::new(listener)
            .with_graceful_shutdown(shutdown)
            .serve(service)
            .await
    }
}

/// The TLS layer, and where its certificate comes from.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
pub struct TlsSetup {
    pub layer: TlsLayer,
    certificate: ServerCertificate,
    files: (std::path::PathBuf, std::path::PathBuf),
}

#[cfg(feature = "tls")]
impl TlsSetup {
    /// Reloads the certificate files on every SIGHUP, for new connections.
    fn reload_on_hangup(&self) {
        use tokio::signal::unix::{SignalKind, signal};

        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot watch SIGHUP: the certificate will not reload");
            return;
        };
        let (certificate, (chain, key)) = (self.certificate.clone(), self.files.clone());
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match certificate.reload_from_pem_files(&chain, &key) {
                    Ok(()) => tracing::info!("certificate reloaded"),
                    Err(error) => tracing::warn!(%error, "certificate not reloaded"),
                }
            }
        });
    }
}

#[cfg(feature = "tls")]
impl Protection {
    /// The TLS layer the flags ask for; a certificate that does not load ends the process
    /// with a one-line error and status 2.
    fn tls(&self, overload: &Overload) -> Result<Option<TlsSetup>, ConfigError> {
        let (chain, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) => return Ok(None),
            (Some(chain), Some(key)) => (chain.clone(), key.clone()),
            _ => {
                return Err(ConfigError::Inconsistent {
                    reason: "--tls-cert and --tls-key go together",
                });
            }
        };
        let certificate = ServerCertificate::from_pem_files(&chain, &key)
            .unwrap_or_else(|error| super::fail(error));
        let layer = TlsLayer::builder(certificate.clone())
            .handshake_timeout(self.tls_handshake_timeout)
            .overload(overload)
            .build()?;
        Ok(Some(TlsSetup {
            layer,
            certificate,
            files: (chain, key),
        }))
    }
}

/// A TCP listener whose connections send without delay.
#[cfg(feature = "tls")]
struct NoDelay(Arc<TcpListener>);

#[cfg(feature = "tls")]
impl tower_bouncer::serve::Listener for NoDelay {
    type Io = TcpStream;

    async fn accept(&mut self) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }

    fn connection_local_addr(&self, stream: &TcpStream) -> std::io::Result<std::net::SocketAddr> {
        stream.local_addr()
    }
}
