//! The protection flags of `shared/EXAMPLES.md`, each a key of the crate's
//! [`BouncerConfig`], and the [`Bouncer`] they build. Without `--unprotected` every
//! protection is on with the crate's defaults; `--config FILE` sets any of them from a
//! TOML file, and each flag overrides one value. An overload manager ties them
//! together: its pressure comes from the connection cap and the descriptor limit,
//! shrinks every timeout as it rises, and a new connection at the cap evicts an idle
//! one instead of being refused.

use std::{str::FromStr, time::Duration};

use tower_bouncer::bouncer::{Bouncer, BouncerConfig, ConfigFile, Refusals, SettingError};

use super::value;

/// login_server: close a connection that has not logged in this long after connecting.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Failed logins from one peer key within the failure window that ban it.
pub fn default_max_failures() -> u32 {
    BouncerConfig::default().bans.max_failures
}

/// The `--help` lines of the protection flags every example takes.
pub const USAGE: &str =
    "  --dry-run             make every admission decision (caps, rates, bans), count and log
                        it, and serve the connection anyway
  --max-connections N   concurrent connections in all (default 4096, or 3/4 of the
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
  --request-timeout S   close a connection whose request (HTTP: head and body) is not
                        complete S seconds after its first byte (default 10; no
                        minimum rate extends it unless --config sets one)
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
                        http/1.1 (needs the `tls` feature; SIGHUP reads them again;
                        regular files only, a FIFO is refused)
  --tls-handshake-timeout S
                        the whole TLS handshake must finish within S (default 10)
  --redis URL           share bans, failed logins and other offences with every replica
                        on this Redis (redis:// or rediss://; needs the `redis` feature)
  --redis-prefix P      the Redis key prefix this service's replicas share
                        (default tower-bouncer)
  --admin-addr IP:PORT  serve the admin page (bans, top peers, figures, /metrics) on this
                        private address; stdout's second line is `admin on IP:PORT`
                        (needs the `admin` feature)
  --admin-token T       the bearer token the admin page's data needs (required on any
                        address but loopback)
  --config FILE         every setting above from a TOML file (a sample with every key at
                        its default: examples/bouncer.toml); flags given too override it,
                        and the two are checked together; SIGHUP reads it (and the TLS
                        files) again, but a pipe (<(render)) or a FIFO only once, at start:
                        a SIGHUP keeps its settings";

/// The `--help` line of the flag only login_server takes.
pub const LOGIN_TIMEOUT_USAGE: &str = "  --login-timeout S     close a connection not logged in S seconds after connecting (default 30)";

/// Each protection flag and the configuration key it sets, for `--help` and for errors.
pub const FLAG_KEYS: &[(&str, &str)] = &[
    ("--dry-run", "dry_run"),
    ("--max-connections", "connections.max"),
    ("--backpressure", "connections.backpressure"),
    ("--max-per-peer", "connections.per_peer"),
    ("--ipv6-prefix", "peers.ipv6_prefix"),
    ("--exempt", "peers.exempt"),
    ("--rate", "rates.per_peer"),
    ("--burst", "rates.burst"),
    ("--global-rate", "rates.global"),
    ("--idle-timeout", "timeouts.idle"),
    ("--first-byte-timeout", "timeouts.first_byte"),
    ("--request-timeout", "timeouts.request"),
    ("--max-lifetime", "timeouts.lifetime"),
    ("--max-auth-tries", "logins.max_auth_tries"),
    ("--login-timeout", "logins.timeout"),
    ("--max-failures", "bans.max_failures"),
    ("--max-timeouts", "bans.max_timeouts"),
    ("--failure-window", "bans.window"),
    ("--ban", "bans.first"),
    ("--no-kernel-bans", "bans.kernel"),
    ("--proxy-protocol-from", "proxy_protocol.trusted"),
    ("--proxy-protocol-timeout", "proxy_protocol.timeout"),
    ("--tls-cert", "tls.cert"),
    ("--tls-key", "tls.key"),
    ("--tls-handshake-timeout", "tls.handshake_timeout"),
    ("--redis", "fleet.redis"),
    ("--redis-prefix", "fleet.prefix"),
    ("--admin-addr", "admin.addr"),
    ("--admin-token", "admin.token"),
];

/// The protection settings: the crate's defaults, then the `--config` file, then the
/// flags, checked together.
#[derive(Debug, Clone)]
pub struct Protection {
    pub config: BouncerConfig,
    /// The `--config` file, to name the line of a setting of it that cannot work.
    file: Option<ConfigFile>,
    /// Whether the server takes `--login-timeout` (every connection logs in).
    logs_in: bool,
    /// Repeatable flags given so far: the first replaces the file's list.
    exempt_given: bool,
    proxy_protocol_from_given: bool,
    /// The keys the flags given set: a setting of theirs that cannot work is named by
    /// its flag, not by the file.
    set_by_flags: Vec<&'static str>,
}

impl Protection {
    /// The settings of `file` (`--config`, read but not yet checked), or the defaults; a
    /// server whose every connection logs in (`logs_in`) closes a connection not logged
    /// in within 30 s unless the file says otherwise.
    pub fn new(file: Option<ConfigFile>, logs_in: bool) -> Self {
        let mut config = file
            .as_ref()
            .map_or_else(BouncerConfig::default, |file| file.config().clone());
        if logs_in && config.logins.timeout.is_none() {
            config.logins.timeout = Some(DEFAULT_LOGIN_TIMEOUT);
        }
        // EXAMPLES.md: `--request-timeout S` closes a request not complete within S,
        // body included; the preset's minimum rate would extend an upload past it.
        if !file
            .as_ref()
            .is_some_and(|file| file.writes("timeouts.request_min_rate"))
        {
            config.timeouts.request_min_rate = 0;
        }
        Self {
            config,
            file,
            logs_in,
            exempt_given: false,
            proxy_protocol_from_given: false,
            set_by_flags: Vec::new(),
        }
    }

    /// The `--config` file the settings were read from.
    pub fn file(&self) -> Option<&ConfigFile> {
        self.file.as_ref()
    }

    /// Takes `flag` (and its value from `argv`) if it is a protection flag.
    pub fn parse_flag(&mut self, flag: &str, argv: &mut impl Iterator<Item = String>) -> bool {
        let seconds =
            |argv: &mut dyn Iterator<Item = String>| value::<Seconds>(flag, argv.next()).0;
        let config = &mut self.config;
        match flag {
            "--dry-run" => config.dry_run = true,
            "--max-connections" => config.connections.max = Some(value(flag, argv.next())),
            "--backpressure" => config.connections.backpressure = true,
            "--max-per-peer" => config.connections.per_peer = value(flag, argv.next()),
            "--ipv6-prefix" => config.peers.ipv6_prefix = value(flag, argv.next()),
            "--exempt" => {
                if !std::mem::replace(&mut self.exempt_given, true) {
                    config.peers.exempt.clear();
                }
                config.peers.exempt.push(value(flag, argv.next()));
            }
            "--rate" => config.rates.per_peer = value(flag, argv.next()),
            "--burst" => config.rates.burst = Some(value(flag, argv.next())),
            "--global-rate" => config.rates.global = value(flag, argv.next()),
            "--idle-timeout" => config.timeouts.idle = seconds(argv),
            "--first-byte-timeout" => config.timeouts.first_byte = seconds(argv),
            "--request-timeout" => config.timeouts.request = seconds(argv),
            "--max-lifetime" => config.timeouts.lifetime = seconds(argv),
            "--max-auth-tries" => config.logins.max_auth_tries = value(flag, argv.next()),
            "--login-timeout" if self.logs_in => config.logins.timeout = Some(seconds(argv)),
            "--max-failures" => config.bans.max_failures = value(flag, argv.next()),
            "--max-timeouts" => config.bans.max_timeouts = value(flag, argv.next()),
            "--failure-window" => config.bans.window = seconds(argv),
            "--ban" => config.bans.first = seconds(argv),
            "--no-kernel-bans" => config.bans.kernel = false,
            "--proxy-protocol-from" => {
                if !std::mem::replace(&mut self.proxy_protocol_from_given, true) {
                    config.proxy_protocol.trusted.clear();
                }
                config.proxy_protocol.trusted.push(value(flag, argv.next()));
            }
            "--proxy-protocol-timeout" => config.proxy_protocol.timeout = seconds(argv),
            #[cfg(feature = "tls")]
            "--tls-cert" => config.tls.cert = Some(value(flag, argv.next())),
            #[cfg(feature = "tls")]
            "--tls-key" => config.tls.key = Some(value(flag, argv.next())),
            #[cfg(feature = "tls")]
            "--tls-handshake-timeout" => config.tls.handshake_timeout = seconds(argv),
            #[cfg(not(feature = "tls"))]
            "--tls-cert" | "--tls-key" | "--tls-handshake-timeout" => super::fail(format_args!(
                "`{flag}` needs TLS: build the examples with `--features tls`"
            )),
            #[cfg(feature = "redis")]
            "--redis" => config.fleet.redis = Some(value(flag, argv.next())),
            #[cfg(feature = "redis")]
            "--redis-prefix" => config.fleet.prefix = Some(value(flag, argv.next())),
            #[cfg(not(feature = "redis"))]
            "--redis" | "--redis-prefix" => super::fail(format_args!(
                "`{flag}` needs Redis: build the examples with `--features redis`"
            )),
            #[cfg(feature = "admin")]
            "--admin-addr" => config.admin.addr = Some(value(flag, argv.next())),
            #[cfg(feature = "admin")]
            "--admin-token" => config.admin.token = Some(value(flag, argv.next())),
            #[cfg(not(feature = "admin"))]
            "--admin-addr" | "--admin-token" => super::fail(format_args!(
                "`{flag}` needs the admin page: build the examples with `--features admin`"
            )),
            _ => return false,
        }
        if let Some((_, key)) = FLAG_KEYS.iter().find(|(given, _)| *given == flag)
            && !self.set_by_flags.contains(key)
        {
            self.set_by_flags.push(key);
        }
        true
    }

    /// Builds the protection; a setting that cannot work ends the process with a
    /// one-line error naming it ([`describe`](Self::describe)), status 2.
    pub fn bouncer(&self, refusals: Refusals) -> Bouncer {
        Bouncer::builder(self.config.clone())
            .refusals(refusals)
            .build()
            .unwrap_or_else(|error| super::fail(self.describe(&error)))
    }

    /// A setting that cannot work, named where the operator wrote it: by its key and
    /// flag if a flag set it; else by its key and the file's line (`--config FILE:LINE:
    /// ...`) if the file writes it, or if no flag given sets a key its check reads;
    /// else by its key and flag. Either way followed by the flags given that set the
    /// keys its check reads (`--ban` for `bans.max`, which must be at least
    /// `bans.first`).
    pub fn describe(&self, error: &SettingError) -> String {
        let key = error.key();
        let read_from_flags = self.flags_read_by(error);
        let mut described = match &self.file {
            Some(file)
                if !self.set_by_flags.contains(&key)
                    && (file.writes(key) || read_from_flags.is_empty()) =>
            {
                format!("--config {}", file.locate(error))
            }
            _ => {
                let flag = flag_of(key).map_or(String::new(), |flag| format!(" ({flag})"));
                format!("`{key}`{flag}: {}", error.reason())
            }
        };
        for (flag, read) in read_from_flags {
            described.push_str(&format!("; {flag} sets `{read}`"));
        }
        described
    }

    /// The flags given that set a key `error`'s check read besides its own (the keys
    /// its reason names), with that key.
    fn flags_read_by(&self, error: &SettingError) -> Vec<(&'static str, &'static str)> {
        self.set_by_flags
            .iter()
            .filter(|set| **set != error.key() && error.reason().contains(&format!("`{set}`")))
            .filter_map(|set| Some((flag_of(set)?, *set)))
            .collect()
    }
}

/// The flag that sets `key`, if one does.
fn flag_of(key: &str) -> Option<&'static str> {
    FLAG_KEYS
        .iter()
        .find(|(_, flagged)| *flagged == key)
        .map(|(flag, _)| *flag)
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
    /// the cap (and connections slow with their PROXY header closed for newer ones),
    pub shed: u64,
    /// and how long it ran the timeouts shortened.
    pub scaled: Duration,
    /// Refused at admission, as the Prometheus metrics count it (the siege's check that
    /// they move with the stats).
    pub metrics_refused: u64,
}

/// Adds up the layers' counters.
pub fn tally(bouncer: &Bouncer) -> Tally {
    let rate = bouncer.rate_limit().stats();
    let per_peer = bouncer.peer_limit().stats();
    let total = bouncer.connection_limit().stats();
    let timeouts = bouncer.timeouts().stats();
    let login = bouncer.login().stats();
    let overload = bouncer.overload().stats();
    let proxy = bouncer.proxy_protocol().map(|proxy| proxy.stats());
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
        shed: overload.evicted_idle
            + overload.evicted_long_lived
            + proxy.map_or(0, |proxy| proxy.evicted),
        scaled: overload.time_under_pressure,
        metrics_refused: 0,
    }
}
