use std::{net::IpAddr, sync::Arc, time::Duration};

use ipnet::IpNet;
use tower_layer::Layer;

use super::{ProxyProtocol, ProxyProtocolError, readers::Readers};
use crate::{
    ConfigError, config::nonzero, counter::Counter, deadline::Scaler,
    metrics::PROXY_PROTOCOL_ERRORS, peer::mapped_network_as_ipv4, throttle::LogThrottle,
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Room for what balancers send in TLVs (HAProxy's TLS details and unique IDs, cloud
/// balancers' endpoint IDs), yet a bound on what one connection makes the server hold.
const DEFAULT_MAX_V2_LEN: usize = 4096;
/// Far more than a balancer's connections wait for their first bytes at once, yet a
/// bound on the descriptors held before any cap counts them.
const DEFAULT_MAX_READING: usize = 1024;

/// Reads PROXY protocol headers from trusted balancers and rewrites each connection's
/// peer address to the client's. See the [module documentation](super).
///
/// Clones share their counters: keep a clone to read [`stats`](Self::stats).
#[derive(Debug, Clone)]
pub struct ProxyProtocolLayer {
    shared: Arc<Shared>,
}

/// Builds a [`ProxyProtocolLayer`]; it needs at least one trusted network.
#[derive(Debug, Clone)]
#[must_use]
pub struct ProxyProtocolBuilder {
    trusted: Vec<IpNet>,
    optional_from_trusted: bool,
    refuse_untrusted_headers: bool,
    timeout: Duration,
    max_v2_len: usize,
    max_reading: usize,
    scaler: Scaler,
}

/// What a [`ProxyProtocolLayer`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyProtocolStats {
    /// Headers from trusted sources whose client became the connection's peer.
    pub proxied: u64,
    /// Headers from trusted sources that name no client (v2 `LOCAL`, v1 `UNKNOWN`,
    /// UNIX, UDP or unspecified families): the socket's addresses were kept.
    pub local: u64,
    /// Connections from trusted sources without a header, let through as
    /// [`optional_from_trusted`](ProxyProtocolBuilder::optional_from_trusted) allows.
    pub without_header: u64,
    /// Connections from untrusted sources, let through with their bytes as sent.
    pub untrusted: u64,
    /// Refused: a trusted source sent no header where one is required.
    pub refused_missing: u64,
    /// Refused: a header that is not valid PROXY protocol, or of an unsupported version.
    pub refused_malformed: u64,
    /// Refused: a header beyond its size limit.
    pub refused_too_long: u64,
    /// Refused: the header was not complete within the timeout.
    pub refused_timed_out: u64,
    /// Refused: an untrusted source sent a header, with
    /// [`refuse_untrusted_headers`](ProxyProtocolBuilder::refuse_untrusted_headers).
    pub refused_untrusted_header: u64,
    /// Connections that ended or failed before their header was complete, or were asked
    /// to close (the server's drain).
    pub closed_early: u64,
    /// Closed to make room, at a full [`max_reading`](ProxyProtocolBuilder::max_reading),
    /// for a connection that came later.
    pub evicted: u64,
    /// Connections reading their header now.
    pub reading: u64,
}

/// One line: `proxied 40, local 1, without header 0, untrusted 2, refused 3 (missing
/// 1, malformed 1, too long 0, timed out 1, untrusted header 0), closed early 0,
/// evicted 0, reading 2`.
impl std::fmt::Display for ProxyProtocolStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "proxied {}, local {}, without header {}, untrusted {}, refused {} (missing {}, malformed {}, too long {}, timed out {}, untrusted header {}), closed early {}, evicted {}, reading {}",
            self.proxied,
            self.local,
            self.without_header,
            self.untrusted,
            self.refused_missing
                + self.refused_malformed
                + self.refused_too_long
                + self.refused_timed_out
                + self.refused_untrusted_header,
            self.refused_missing,
            self.refused_malformed,
            self.refused_too_long,
            self.refused_timed_out,
            self.refused_untrusted_header,
            self.closed_early,
            self.evicted,
            self.reading
        )
    }
}

impl ProxyProtocolLayer {
    /// A layer to configure: [`trusted`](ProxyProtocolBuilder::trusted) is required.
    pub fn builder() -> ProxyProtocolBuilder {
        ProxyProtocolBuilder {
            trusted: Vec::new(),
            optional_from_trusted: false,
            refuse_untrusted_headers: false,
            timeout: DEFAULT_TIMEOUT,
            max_v2_len: DEFAULT_MAX_V2_LEN,
            max_reading: DEFAULT_MAX_READING,
            scaler: Scaler::default(),
        }
    }

    /// Counters, read without locking.
    pub fn stats(&self) -> ProxyProtocolStats {
        let stats = &self.shared.stats;
        ProxyProtocolStats {
            proxied: stats.proxied.get(),
            local: stats.local.get(),
            without_header: stats.without_header.get(),
            untrusted: stats.untrusted.get(),
            refused_missing: stats.refused_missing.get(),
            refused_malformed: stats.refused_malformed.get(),
            refused_too_long: stats.refused_too_long.get(),
            refused_timed_out: stats.refused_timed_out.get(),
            refused_untrusted_header: stats.refused_untrusted_header.get(),
            closed_early: stats.closed_early.get(),
            evicted: stats.evicted.get(),
            reading: (self.shared.readers.len() + self.shared.untrusted_readers.len()) as u64,
        }
    }

    /// Changes [`max_reading`](ProxyProtocolBuilder::max_reading) for the layer and
    /// every clone; a lower cap evicts the readers over it as the next connection
    /// arrives.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for zero.
    pub fn set_max_reading(&self, max: usize) -> Result<(), ConfigError> {
        let max = nonzero(max, "max_reading")?;
        self.shared.readers.set_max(max);
        self.shared.untrusted_readers.set_max(max);
        Ok(())
    }

    /// The cap on connections reading their header at once.
    pub fn max_reading(&self) -> usize {
        self.shared.readers.max()
    }

    /// The trusted networks, IPv4-mapped ones as the IPv4 networks they carry: for the
    /// kernel ban filter, which must not drop the balancers
    /// ([`KernelBans::set_balancers`](crate::login::KernelBans::set_balancers)).
    pub fn trusted(&self) -> &[IpNet] {
        &self.shared.trusted
    }
}

impl ProxyProtocolBuilder {
    /// Adds networks whose connections carry a PROXY header: the balancers. An
    /// IPv4-mapped IPv6 network counts as the IPv4 network it carries, and a mapped peer
    /// address as its IPv4 address. An address in NAT64's well-known prefix
    /// (`64:ff9b::/96`) is matched as it is, not as the IPv4 address it carries, which
    /// the keyed layers key it by: trust goes to the host the socket names.
    pub fn trusted(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted
            .extend(networks.into_iter().map(mapped_network_as_ipv4));
        self
    }

    /// Whether a trusted source may send no header; `false` by default, as nginx's and
    /// HAProxy's `accept-proxy` listeners require one. When `true`, the first bytes from
    /// a trusted source are read to tell: if they are no PROXY signature they reach the
    /// protocol as sent. The protocol must then be one in which the client speaks first,
    /// or the [timeout](Self::timeout) closes its connections.
    pub fn optional_from_trusted(mut self, optional: bool) -> Self {
        self.optional_from_trusted = optional;
        self
    }

    /// Whether to refuse a connection from an untrusted source that starts with a PROXY
    /// signature; `false` by default, when nothing is read from untrusted sources and
    /// their bytes reach the protocol as sent. When `true`, their first bytes are read
    /// to tell (and reach the protocol as sent if they are no signature), so the
    /// protocol must be one in which the client speaks first, or the
    /// [timeout](Self::timeout) closes its connections.
    pub fn refuse_untrusted_headers(mut self, refuse: bool) -> Self {
        self.refuse_untrusted_headers = refuse;
        self
    }

    /// How long after the connection reaches this layer its header must be complete;
    /// 5 s by default. `Duration::MAX` waits as good as forever.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Shrinks the header timeout as `overload`'s pressure rises. See the
    /// [`overload`](crate::overload) module.
    #[cfg(feature = "overload")]
    pub fn overload(mut self, overload: &crate::overload::Overload) -> Self {
        self.scaler = Scaler::new(overload);
        self
    }

    /// The longest version 2 payload (addresses and TLVs, after the 16 fixed bytes)
    /// accepted; 4096 bytes by default. A longer one is refused as soon as its length
    /// is read. Version 1 headers have the spec's limit of 107 bytes.
    pub fn max_v2_len(mut self, max: usize) -> Self {
        self.max_v2_len = max;
        self
    }

    /// How many connections may read their header at once; 1024 by default. The layer
    /// goes before any cap counts a connection, so this bounds the descriptors held by
    /// connections whose header is slow to come. At the cap, a new connection closes
    /// the one that has waited longest for its header: a balancer sends the header
    /// with its first bytes, so its connections wait a round trip, and a source that
    /// trickles its headers loses its oldest. With
    /// [`refuse_untrusted_headers`](Self::refuse_untrusted_headers), the other sources'
    /// connections, read to see whether they send a header, are capped apart at the
    /// same number: they close only one another, never a balancer's. The
    /// [`Bouncer`](crate::bouncer::Bouncer) sets it to its connection cap.
    pub fn max_reading(mut self, max: usize) -> Self {
        self.max_reading = max;
        self
    }

    /// # Errors
    ///
    /// [`ConfigError::Empty`] without a trusted network: a header is never believed
    /// from anyone by default. [`ConfigError::Zero`] for a zero timeout or cap.
    pub fn build(self) -> Result<ProxyProtocolLayer, ConfigError> {
        if self.trusted.is_empty() {
            return Err(ConfigError::Empty {
                needs: "a trusted network",
            });
        }
        Ok(ProxyProtocolLayer {
            shared: Arc::new(Shared {
                trusted: self.trusted.into(),
                optional_from_trusted: self.optional_from_trusted,
                refuse_untrusted_headers: self.refuse_untrusted_headers,
                timeout: nonzero(self.timeout, "timeout")?,
                scaler: self.scaler,
                max_v2_len: nonzero(self.max_v2_len, "max_v2_len")?,
                readers: Readers::new(nonzero(self.max_reading, "max_reading")?),
                untrusted_readers: Readers::new(nonzero(self.max_reading, "max_reading")?),
                log: LogThrottle::new(Duration::from_secs(1)),
                stats: Stats::new(),
            }),
        })
    }
}

impl<S> Layer<S> for ProxyProtocolLayer {
    type Service = ProxyProtocol<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProxyProtocol::new(inner, self.shared.clone())
    }
}

/// The settings and counters every clone shares.
#[derive(Debug)]
pub(crate) struct Shared {
    trusted: Box<[IpNet]>,
    pub(super) optional_from_trusted: bool,
    pub(super) refuse_untrusted_headers: bool,
    pub(super) timeout: Duration,
    /// What shrinks the header timeout under load.
    pub(super) scaler: Scaler,
    pub(super) max_v2_len: usize,
    /// The trusted sources' connections reading their header.
    readers: Readers,
    /// The others' read for a header to refuse, under the same cap apart: a crowd of
    /// them can close only one another, never a balancer's connections.
    untrusted_readers: Readers,
    log: LogThrottle,
    pub(super) stats: Stats,
}

#[derive(Debug)]
pub(super) struct Stats {
    pub(super) proxied: Counter,
    pub(super) local: Counter,
    pub(super) without_header: Counter,
    pub(super) untrusted: Counter,
    refused_missing: Counter,
    refused_malformed: Counter,
    refused_too_long: Counter,
    refused_timed_out: Counter,
    refused_untrusted_header: Counter,
    closed_early: Counter,
    evicted: Counter,
}

impl Stats {
    fn new() -> Self {
        let error = |reason| Counter::metric(PROXY_PROTOCOL_ERRORS, &[("reason", reason)]);
        Self {
            proxied: Counter::default(),
            local: Counter::default(),
            without_header: Counter::default(),
            untrusted: Counter::default(),
            refused_missing: error("missing"),
            refused_malformed: error("malformed"),
            refused_too_long: error("too_long"),
            refused_timed_out: error("timed_out"),
            refused_untrusted_header: error("untrusted_header"),
            closed_early: error("closed_early"),
            evicted: error("evicted"),
        }
    }
}

impl Shared {
    pub(super) fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The readers a trusted source's connection, or another's, joins.
    pub(super) fn readers(&self, trusted: bool) -> &Readers {
        if trusted {
            &self.readers
        } else {
            &self.untrusted_readers
        }
    }

    /// Counts and logs (at most once a second) a connection failed with `error`.
    pub(super) fn failed(&self, error: &ProxyProtocolError, peer: IpAddr) {
        let stats = &self.stats;
        let counter = match error {
            ProxyProtocolError::Missing => &stats.refused_missing,
            ProxyProtocolError::UntrustedHeader => &stats.refused_untrusted_header,
            ProxyProtocolError::Malformed { .. } | ProxyProtocolError::UnsupportedVersion(_) => {
                &stats.refused_malformed
            }
            ProxyProtocolError::TooLong { .. } => &stats.refused_too_long,
            ProxyProtocolError::TimedOut(_) => &stats.refused_timed_out,
            ProxyProtocolError::Incomplete { .. }
            | ProxyProtocolError::CloseRequested
            | ProxyProtocolError::Io(_) => &stats.closed_early,
            ProxyProtocolError::Evicted { .. } => &stats.evicted,
        };
        counter.add();
        if let Some(suppressed) = self.log.allow() {
            if matches!(
                error,
                ProxyProtocolError::Incomplete { .. }
                    | ProxyProtocolError::CloseRequested
                    | ProxyProtocolError::Io(_)
            ) {
                // The source's own doing, such as a balancer's health check that
                // connects and closes, or the server's drain.
                tracing::debug!(%peer, %error, suppressed, "connection ended before its PROXY header");
            } else {
                tracing::warn!(%peer, %error, suppressed, "PROXY header refused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line() {
        let stats = ProxyProtocolStats {
            proxied: 40,
            local: 1,
            without_header: 0,
            untrusted: 2,
            refused_missing: 1,
            refused_malformed: 1,
            refused_too_long: 0,
            refused_timed_out: 1,
            refused_untrusted_header: 0,
            closed_early: 5,
            evicted: 3,
            reading: 2,
        };
        assert_eq!(
            stats.to_string(),
            "proxied 40, local 1, without header 0, untrusted 2, refused 3 (missing 1, malformed 1, too long 0, timed out 1, untrusted header 0), closed early 5, evicted 3, reading 2"
        );
    }
}
