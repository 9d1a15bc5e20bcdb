//! The settings of a [`Bouncer`](super::Bouncer), in the sections and keys of its
//! configuration file.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;

#[cfg(feature = "config")]
use serde::Deserialize;

/// Everything a [`Bouncer`](super::Bouncer) enforces. `Default` is the recommended
/// protection for a public server; change what differs:
///
/// ```
/// use std::time::Duration;
/// use tower_bouncer::bouncer::BouncerConfig;
///
/// let mut config = BouncerConfig::default();
/// config.connections.per_peer = 8;
/// config.timeouts.idle = Duration::from_secs(30);
/// config.peers.exempt.push("10.0.0.0/8".parse().unwrap());
/// ```
///
/// With the `config` feature the same settings come from a TOML file
/// ([`BouncerConfig::from_toml_file`]): each section below is a table, each field a key,
/// durations written as `"10s"`, `"500ms"` or `"1h 30m"`.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct BouncerConfig {
    /// `dry_run`: every admission decision (caps, rates, bans, the startups budget) is
    /// made, counted and logged, and the connection served anyway: a new limit can be
    /// watched before it is enforced. In a fleet, the replica applies the fleet's bans
    /// but adds none of its own. Off by default.
    pub dry_run: bool,
    /// `[connections]`: how many at once.
    pub connections: Connections,
    /// `[peers]`: who a peer is, and who is exempt.
    pub peers: Peers,
    /// `[rates]`: new connections per second.
    pub rates: Rates,
    /// `[timeouts]`.
    pub timeouts: Timeouts,
    /// `[logins]`: failed logins on one connection.
    pub logins: Logins,
    /// `[bans]`: offences that ban a peer, and for how long.
    pub bans: Bans,
    /// `[proxy_protocol]`: the real client behind a load balancer.
    pub proxy_protocol: ProxyProtocol,
    /// `[tls]`: TLS termination (feature `tls`).
    pub tls: Tls,
    /// `[fleet]`: bans and offences shared with the other replicas (feature `redis`).
    pub fleet: Fleet,
    /// `[admin]`: where the operator's page is served (feature `admin`), by the
    /// application (`Bouncer::admin`).
    pub admin: Admin,
}

/// `[connections]`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Connections {
    /// `max`: concurrent connections, all peers together. `None` (the default): 4096,
    /// or three quarters of the descriptor limit if that is less, leaving room for
    /// everything else the process opens.
    pub max: Option<usize>,
    /// `backpressure`: at the cap, stop accepting (connections wait in the kernel's
    /// backlog) instead of refusing. Behind `proxy_protocol.trusted` balancers a
    /// connection counts once its header is read: of a burst larger than the room left,
    /// what does not fit then is refused. Off by default.
    pub backpressure: bool,
    /// `per_peer`: concurrent connections per peer key; 32 by default.
    pub per_peer: usize,
    /// `raise_descriptor_limit`: raise the process's soft descriptor limit to its hard
    /// limit when the bouncer is built, as Go does at start, so that the cap binds
    /// before the descriptors run out. On by default.
    pub raise_descriptor_limit: bool,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max: None,
            backpressure: false,
            per_peer: 32,
            raise_descriptor_limit: true,
        }
    }
}

/// `[peers]`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Peers {
    /// `ipv6_prefix`: the prefix length that forms an IPv6 peer key; 64 by default
    /// (one subscriber's allocation). IPv4 peers are keyed by address, and so are those
    /// an IPv6-only server sees through a NAT64 translator's well-known prefix
    /// (`64:ff9b::a.b.c.d`); a network-specific translation prefix is keyed as IPv6.
    pub ipv6_prefix: u8,
    /// `exempt`: networks (`"10.0.0.0/8"`) whose peers skip the per-peer cap, the
    /// rates and bans: health checkers, a monitoring host. None by default. An IPv6
    /// network that holds all of NAT64's well-known prefix (`64:ff9b::/96`, `::/0`) is
    /// refused: its translated peers are keyed by their IPv4 addresses, so write those.
    pub exempt: Vec<IpNet>,
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            ipv6_prefix: 64,
            exempt: Vec::new(),
        }
    }
}

/// `[rates]`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Rates {
    /// `per_peer`: new connections per second per peer key; 20 by default.
    pub per_peer: u32,
    /// `burst`: connections a peer may open at once before its rate applies; `None`
    /// (the default): the rate.
    pub burst: Option<u32>,
    /// `global`: new connections per second, all peers together; 2000 by default.
    pub global: u32,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            per_peer: 20,
            burst: None,
            global: 2000,
        }
    }
}

/// `[timeouts]`. Each but the lifetime shrinks under pressure, to a fifth as the
/// connections near the cap or the descriptors near their limit.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Timeouts {
    /// `first_byte`: close a connection that sends nothing this long after
    /// connecting; 10 s by default.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub first_byte: Duration,
    /// `idle`: close a connection idle this long (HTTP: no request open), or whose
    /// client takes its output slower than 256 bytes a second; 60 s by default.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub idle: Duration,
    /// `request`: close a connection whose request is not complete this long after
    /// its first byte, extended while it keeps moving by `request_min_rate`; 10 s by
    /// default. Under the HTTP adapter, a request is its head and its body until the
    /// handler answers (an upload the handler reads is held to it whole); an HTTP/2
    /// upload reset by its client before it is in leaves the time it ran past
    /// `request_min_rate` to the streams its client opens within `request` after.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub request: Duration,
    /// `request_min_rate`: each this many bytes a request has brought add a second to
    /// `request`, up to `request_max` (Apache mod_reqtimeout's `MinRate`), so that an
    /// upload on a slow link that keeps moving is not cut, while a trickle slower than
    /// this is, and counts a `request_timeout` offence; 500 by default, Apache's. Under
    /// the HTTP adapter a request earns time only once its head is in: a head that
    /// keeps coming but never ends is held to `request`; an HTTP/2 stream earns it by
    /// its own body alone (not PINGs, padding, nor other streams' frames). 0 turns it
    /// off: every request, body included, is held to `request`.
    pub request_min_rate: u64,
    /// `request_max`: the longest a request extended by `request_min_rate` may take;
    /// 5 minutes by default: a 2 MB upload (axum's default body limit) fits at about
    /// 7 KB/s, a poor mobile uplink, and a request kept just above the minimum rate holds
    /// its connection no longer than that. At least `request`.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub request_max: Duration,
    /// `lifetime`: ask a connection this old to close, and cut it 30 s later; an hour
    /// by default.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub lifetime: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            first_byte: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            request: Duration::from_secs(10),
            request_min_rate: 500,
            request_max: Duration::from_secs(300),
            lifetime: Duration::from_secs(3600),
        }
    }
}

/// `[logins]`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Logins {
    /// `max_auth_tries`: failed logins one connection may make before it is closed
    /// (OpenSSH's `MaxAuthTries`); 1 by default.
    pub max_auth_tries: u32,
    /// `timeout`: close a connection not logged in this long after connecting
    /// (OpenSSH's `LoginGraceTime`), for protocols where every connection logs in;
    /// not applied under [`Bouncer::listener`](super::Bouncer::listener), where nothing
    /// reports a login. `None` (the default): no login timeout.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub timeout: Option<Duration>,
}

impl Default for Logins {
    fn default() -> Self {
        Self {
            max_auth_tries: 1,
            timeout: None,
        }
    }
}

/// `[bans]`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Bans {
    /// `max_failures`: failed logins from one peer key within `window` that ban it;
    /// 5 by default.
    pub max_failures: u32,
    /// `max_timeouts`: timeout offences (first byte, request, login, TLS handshake)
    /// within `window` that ban a peer; 30 by default, 0 turns it off.
    pub max_timeouts: u32,
    /// `window`: the window offences are counted in; 10 minutes by default.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub window: Duration,
    /// `first`: the first ban; 10 minutes by default.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub first: Duration,
    /// `factor`: each repeat offence multiplies the ban by this; 2 by default.
    pub factor: u32,
    /// `max`: the longest ban; 24 hours by default.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub max: Duration,
    /// `kernel`: on Linux, a banned peer that goes on reconnecting is dropped by a
    /// socket filter on the listener, SYNs included; never a key that holds a
    /// `proxy_protocol.trusted` balancer (refused in user space). On by default.
    pub kernel: bool,
}

impl Default for Bans {
    fn default() -> Self {
        Self {
            max_failures: 5,
            max_timeouts: 30,
            window: Duration::from_secs(600),
            first: Duration::from_secs(600),
            factor: 2,
            max: Duration::from_secs(24 * 3600),
            kernel: true,
        }
    }
}

/// `[proxy_protocol]`. As many connections may read their header at once as
/// `connections.max` admits; at that cap a new one closes the one that has waited
/// longest ([`max_reading`](crate::proxy_protocol::ProxyProtocolBuilder::max_reading)).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct ProxyProtocol {
    /// `trusted`: the balancers' networks; a PROXY v1/v2 header is required from them
    /// and honoured from no others. None by default: no PROXY protocol.
    pub trusted: Vec<IpNet>,
    /// `timeout`: the header must be complete this long after accept; 5 s by default.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub timeout: Duration,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        Self {
            trusted: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Tls {
    /// `cert`: the PEM certificate chain; with `key`, TLS is served (ALPN `h2` and
    /// `http/1.1`). None by default.
    pub cert: Option<PathBuf>,
    /// `key`: the PEM private key.
    pub key: Option<PathBuf>,
    /// `handshake_timeout`: the whole handshake must finish within this; 10 s by
    /// default.
    #[cfg_attr(feature = "config", serde(with = "humantime_serde"))]
    pub handshake_timeout: Duration,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// `[fleet]`. Its `Debug` hides the password in the Redis URL: the configuration is
/// logged at each start and reload.
#[derive(Clone, PartialEq, Default)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Fleet {
    /// `redis`: the Redis every replica shares bans, failed logins and other offences
    /// on (`redis://` or `rediss://`). None by default: this replica bans alone.
    pub redis: Option<String>,
    /// `prefix`: the key prefix this service's replicas share; `tower-bouncer` by
    /// default.
    pub prefix: Option<String>,
}

/// `[admin]`. Its `Debug` hides the token, as the admin page's own `Admin` does:
/// the configuration is logged at each start and reload.
#[derive(Clone, PartialEq, Default)]
#[cfg_attr(
    feature = "config",
    derive(Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Admin {
    /// `addr`: the private address of the admin page (`"127.0.0.1:9000"`). None by
    /// default: no admin page. The page speaks plain HTTP, so its token should only
    /// cross a network you trust.
    pub addr: Option<SocketAddr>,
    /// `token`: the bearer token every request to the page's data needs; required on
    /// any address but loopback.
    pub token: Option<String>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("redis", &self.redis.as_deref().map(without_password))
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// A URL to show: the password of `scheme://user:password@host/...` and the query
/// (`?password=...` for some clients) hidden; all of it hidden if it is not a URL.
fn without_password(url: &str) -> String {
    const HIDDEN: &str = "<hidden>";
    let Some((scheme, rest)) = url.split_once("://") else {
        return HIDDEN.to_owned();
    };
    let (rest, query) = match rest.find(['?', '#']) {
        Some(at) => (&rest[..at], "?<hidden>"),
        None => (rest, ""),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{HIDDEN}@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}{query}")
}

/// A setting that cannot work, named by its key in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    key: &'static str,
    reason: String,
}

impl SettingError {
    pub(crate) fn new(key: &'static str, reason: impl fmt::Display) -> Self {
        Self {
            key,
            reason: reason.to_string(),
        }
    }

    /// The setting's key, as `section.key` (`connections.per_peer`).
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.reason)
    }
}

impl std::error::Error for SettingError {}

impl BouncerConfig {
    /// Checks every setting, naming the first that cannot work.
    pub fn validate(&self) -> Result<(), SettingError> {
        let at_least_one = |key, value: u64| {
            if value == 0 {
                Err(SettingError::new(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        let positive = |key, value: Duration| {
            if value.is_zero() {
                Err(SettingError::new(key, "must be longer than zero"))
            } else {
                Ok(())
            }
        };
        if let Some(max) = self.connections.max {
            at_least_one("connections.max", max as u64)?;
        }
        at_least_one("connections.per_peer", self.connections.per_peer as u64)?;
        if self.peers.ipv6_prefix > 128 {
            return Err(SettingError::new(
                "peers.ipv6_prefix",
                format_args!(
                    "an IPv6 prefix is at most /128, not /{}",
                    self.peers.ipv6_prefix
                ),
            ));
        }
        for &network in &self.peers.exempt {
            crate::peer::keyed_network(network)
                .map_err(|error| SettingError::new("peers.exempt", error))?;
        }
        at_least_one("rates.per_peer", self.rates.per_peer.into())?;
        if let Some(burst) = self.rates.burst {
            at_least_one("rates.burst", burst.into())?;
        }
        at_least_one("rates.global", self.rates.global.into())?;
        positive("timeouts.first_byte", self.timeouts.first_byte)?;
        positive("timeouts.idle", self.timeouts.idle)?;
        positive("timeouts.request", self.timeouts.request)?;
        if self.timeouts.request_min_rate > 0 && self.timeouts.request_max < self.timeouts.request {
            return Err(SettingError::new(
                "timeouts.request_max",
                "must be at least the request timeout (`timeouts.request`), or \
                 `timeouts.request_min_rate` 0 to turn the minimum rate off",
            ));
        }
        positive("timeouts.lifetime", self.timeouts.lifetime)?;
        at_least_one("logins.max_auth_tries", self.logins.max_auth_tries.into())?;
        if let Some(timeout) = self.logins.timeout {
            positive("logins.timeout", timeout)?;
        }
        at_least_one("bans.max_failures", self.bans.max_failures.into())?;
        positive("bans.window", self.bans.window)?;
        positive("bans.first", self.bans.first)?;
        at_least_one("bans.factor", self.bans.factor.into())?;
        if self.bans.max < self.bans.first {
            return Err(SettingError::new(
                "bans.max",
                "must be at least the first ban (`bans.first`)",
            ));
        }
        positive("proxy_protocol.timeout", self.proxy_protocol.timeout)?;
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => return Err(SettingError::new("tls.cert", "needs `tls.key` too")),
            (None, Some(_)) => return Err(SettingError::new("tls.key", "needs `tls.cert` too")),
            (Some(_), Some(_)) if !cfg!(feature = "tls") => {
                return Err(SettingError::new("tls.cert", "needs the `tls` feature"));
            }
            _ => {}
        }
        positive("tls.handshake_timeout", self.tls.handshake_timeout)?;
        if self.fleet.redis.is_some() && !cfg!(feature = "redis") {
            return Err(SettingError::new(
                "fleet.redis",
                "needs the `redis` feature",
            ));
        }
        if self.fleet.prefix.is_some() && self.fleet.redis.is_none() {
            return Err(SettingError::new("fleet.prefix", "needs `fleet.redis`"));
        }
        if let Some(addr) = self.admin.addr {
            if !cfg!(feature = "admin") {
                return Err(SettingError::new("admin.addr", "needs the `admin` feature"));
            }
            if !addr.ip().is_loopback() && self.admin.token.is_none() {
                return Err(SettingError::new(
                    "admin.token",
                    format_args!(
                        "required to serve the admin page on {addr} (`admin.addr`), not loopback"
                    ),
                ));
            }
        }
        if let Some(token) = &self.admin.token
            && !crate::config::is_bearer_token(token)
        {
            return Err(SettingError::new(
                "admin.token",
                "must be visible ASCII characters, at least one: no spaces, no accents",
            ));
        }
        Ok(())
    }
}
