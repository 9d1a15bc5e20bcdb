//! The protection flags of `shared/EXAMPLES.md` and the layers they build. Without
//! `--unprotected` every protection is on with the defaults below, which each flag
//! overrides.

use bytes::Bytes;
use ipnet::IpNet;
use tower_bouncer::{
    ConfigError,
    limit::{ConnectionLimit, ConnectionLimitLayer},
    peer::PeerKeying,
    peer_limit::{PeerLimit, PeerLimitLayer},
    rate_limit::{Rate, RateLimit, RateLimitLayer},
};

use super::value;

/// Concurrent connections, all peers together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Concurrent connections per peer key.
pub const DEFAULT_MAX_PER_PEER: usize = 32;
/// New connections per second per peer key; the burst is the same unless `--burst`.
pub const DEFAULT_RATE: u32 = 20;
/// New connections per second, all peers together.
pub const DEFAULT_GLOBAL_RATE: u32 = 2000;
/// The prefix length that forms an IPv6 peer key.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The `--help` lines of the protection flags.
pub const USAGE: &str = "\
  --max-connections N   concurrent connections in all (default 4096)
  --backpressure        when at --max-connections, stop accepting instead of refusing
  --max-per-peer N      concurrent connections per peer key (default 32)
  --ipv6-prefix N       prefix length of an IPv6 peer key (default 64)
  --rate N              new connections per second per peer key (default 20)
  --burst N             burst for --rate (default: the rate)
  --global-rate N       new connections per second in all (default 2000)
  --exempt CIDR         peers that skip per-peer limits and rates (repeatable)";

/// The protection settings, from the defaults and the flags.
#[derive(Debug, Clone)]
pub struct Protection {
    pub max_connections: usize,
    pub backpressure: bool,
    pub max_per_peer: usize,
    pub ipv6_prefix: u8,
    pub rate: u32,
    pub burst: Option<u32>,
    pub global_rate: u32,
    pub exempt: Vec<IpNet>,
}

impl Default for Protection {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            backpressure: false,
            max_per_peer: DEFAULT_MAX_PER_PEER,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            rate: DEFAULT_RATE,
            burst: None,
            global_rate: DEFAULT_GLOBAL_RATE,
            exempt: Vec::new(),
        }
    }
}

/// What a refused connection is told, in the server's protocol.
#[derive(Debug, Clone)]
pub struct Refusals {
    /// Over a connection limit.
    pub busy: Bytes,
    /// Over a rate.
    pub too_fast: Bytes,
}

/// The admission layers, outermost first: rate, per-peer cap, total cap.
#[derive(Debug, Clone)]
pub struct Admission {
    pub rate: RateLimitLayer,
    pub per_peer: PeerLimitLayer,
    pub total: ConnectionLimitLayer,
}

impl Protection {
    /// Takes `flag` (and its value from `argv`) if it is a protection flag.
    pub fn parse_flag(&mut self, flag: &str, argv: &mut impl Iterator<Item = String>) -> bool {
        match flag {
            "--max-connections" => self.max_connections = value(flag, argv.next()),
            "--backpressure" => self.backpressure = true,
            "--max-per-peer" => self.max_per_peer = value(flag, argv.next()),
            "--ipv6-prefix" => self.ipv6_prefix = value(flag, argv.next()),
            "--rate" => self.rate = value(flag, argv.next()),
            "--burst" => self.burst = Some(value(flag, argv.next())),
            "--global-rate" => self.global_rate = value(flag, argv.next()),
            "--exempt" => self.exempt.push(value(flag, argv.next())),
            _ => return false,
        }
        true
    }

    /// Who a peer is, and who is exempt.
    pub fn keying(&self) -> Result<PeerKeying, ConfigError> {
        Ok(PeerKeying::with_prefixes(32, self.ipv6_prefix)?.exempt(self.exempt.iter().copied()))
    }

    /// Builds the admission layers; a setting that cannot work is an error here, at
    /// startup.
    pub fn admission(&self, refusals: &Refusals) -> Result<Admission, ConfigError> {
        let keying = self.keying()?;
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
            .keying(keying)
            .refusal_message(refusals.busy.clone())
            .build()?;
        let mut total = ConnectionLimitLayer::builder(self.max_connections)
            .refusal_message(refusals.busy.clone());
        if self.backpressure {
            total = total.backpressure();
        }
        let total = total.build()?;
        tracing::info!(
            max_connections = self.max_connections,
            backpressure = self.backpressure,
            max_per_peer = self.max_per_peer,
            rate = self.rate,
            burst = self.burst.unwrap_or(self.rate),
            global_rate = self.global_rate,
            ipv6_prefix = self.ipv6_prefix,
            exempt = ?self.exempt,
            "protections on"
        );
        Ok(Admission {
            rate,
            per_peer,
            total,
        })
    }
}

impl Admission {
    /// Puts `inner` under the admission layers.
    pub fn around<S>(&self, inner: S) -> RateLimit<PeerLimit<ConnectionLimit<S>>> {
        tower::ServiceBuilder::new()
            .layer(self.rate.clone())
            .layer(self.per_peer.clone())
            .layer(self.total.clone())
            .service(inner)
    }
}
