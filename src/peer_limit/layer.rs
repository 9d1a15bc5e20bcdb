use std::{
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tower_layer::Layer;

use super::{PeerLimit, PeerSlot};
use crate::{
    ConfigError,
    admission::{Reason, Refusal, Refusals, Slot, refusal_builder_methods},
    config::nonzero,
    counter::Counter,
    peer::{
        Classified, PeerKeying,
        table::{Located, Overflow, PeerTable},
    },
    striped::Striped,
    throttle::LogThrottle,
};

const DEFAULT_MAX_TRACKED_PEERS: usize = 65_536;

/// Caps concurrent connections per peer. See the [module documentation](super).
///
/// Clones share one table: keep a clone to read [`stats`](Self::stats).
#[derive(Debug, Clone)]
pub struct PeerLimitLayer {
    shared: Striped<Shared>,
}

/// Builds a [`PeerLimitLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PeerLimitBuilder {
    max_per_peer: usize,
    keying: PeerKeying,
    max_tracked_peers: usize,
    overflow: Overflow,
    refusal: Refusal,
}

/// What a [`PeerLimitLayer`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerLimitStats {
    /// Connections let through, exempt and untracked ones included.
    pub admitted: u64,
    /// Of those, connections from exempt peers.
    pub exempt: u64,
    /// Of those, connections let through untracked because the table was full.
    pub untracked: u64,
    /// Of those, connections that would have been refused, served anyway in [dry
    /// run](PeerLimitBuilder::dry_run).
    pub dry_run_refusals: u64,
    /// Connections refused because their peer was at its limit.
    pub refused_peer_limit: u64,
    /// Connections refused because the table was full.
    pub refused_table_full: u64,
    /// Peers with live connections, tracked now.
    pub tracked_peers: usize,
}

/// A peer and its live connections, as [`PeerLimitLayer::top_peers`] lists them.
#[cfg(feature = "admin")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerConnections {
    /// The peer.
    pub key: crate::peer::PeerKey,
    /// Its live connections, counted against its limit.
    pub connections: usize,
}

/// One line: `admitted 40 (exempt 2, untracked 0, dry run 0), refused 3 (peer limit
/// 3, table full 0), 5 peers tracked`.
impl std::fmt::Display for PeerLimitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "admitted {} (exempt {}, untracked {}, dry run {}), refused {} (peer limit {}, table full {}), {} peers tracked",
            self.admitted,
            self.exempt,
            self.untracked,
            self.dry_run_refusals,
            self.refused_peer_limit + self.refused_table_full,
            self.refused_peer_limit,
            self.refused_table_full,
            self.tracked_peers
        )
    }
}

impl PeerLimitLayer {
    /// At most `max_per_peer` concurrent connections per peer key.
    pub fn builder(max_per_peer: usize) -> PeerLimitBuilder {
        PeerLimitBuilder {
            max_per_peer,
            keying: PeerKeying::default(),
            max_tracked_peers: DEFAULT_MAX_TRACKED_PEERS,
            overflow: Overflow::default(),
            refusal: Refusal::default(),
        }
    }

    /// Counters, read without locking.
    pub fn stats(&self) -> PeerLimitStats {
        let shared = &self.shared;
        PeerLimitStats {
            admitted: shared.admitted.get(),
            exempt: shared.exempt.get(),
            untracked: shared.untracked.get(),
            dry_run_refusals: shared.refused_peer_limit.dry_run()
                + shared.refused_table_full.dry_run(),
            refused_peer_limit: shared.refused_peer_limit.refused(),
            refused_table_full: shared.refused_table_full.refused(),
            tracked_peers: shared.table.len(),
        }
    }

    crate::admission::dry_run_switch!();

    /// Changes the limit per peer of this layer and its clones, for a reload without a
    /// restart. Live connections are kept: a peer over a lower limit gets no new one
    /// until enough of its own have ended.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a limit of 0; the limit is then unchanged.
    pub fn set_max_per_peer(&self, max_per_peer: usize) -> Result<(), ConfigError> {
        let max = nonzero(max_per_peer, "max_per_peer")?;
        self.shared
            .max_per_peer
            .store(u32::try_from(max).unwrap_or(u32::MAX), Ordering::Relaxed);
        Ok(())
    }

    /// The `n` peers with the most live connections, most first (exempt and untracked
    /// peers are not counted, so not listed).
    ///
    /// Walks the whole table, one shard at a time, each locked only while its share is
    /// read (as long as a few connections' admission): O(tracked peers · log n). For an
    /// operator's page, not for every connection.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_bouncer::{Conn, peer_limit::PeerLimitLayer};
    ///
    /// let per_peer = PeerLimitLayer::builder(10).build().expect("a valid limit");
    /// let (io, _client) = tokio::io::duplex(64);
    /// let conn = Conn::new(io, "192.0.2.7:4000".parse().unwrap(), "127.0.0.1:80".parse().unwrap());
    /// let (seen, mut listed) = tokio::sync::mpsc::unbounded_channel();
    /// let layer = per_peer.clone();
    /// let service = per_peer.layer(service_fn(move |_: Conn<tokio::io::DuplexStream>| {
    ///     // While the connection is served, its peer is listed.
    ///     seen.send(layer.top_peers(20)).ok();
    ///     async { Ok::<_, std::io::Error>(()) }
    /// }));
    /// service.oneshot(conn).await.unwrap();
    /// let top = listed.recv().await.unwrap();
    /// assert_eq!(top[0].key.to_string(), "192.0.2.7/32");
    /// assert_eq!(top[0].connections, 1);
    /// assert!(per_peer.top_peers(20).is_empty(), "gone with its connection");
    /// # }
    /// ```
    #[cfg(feature = "admin")]
    pub fn top_peers(&self, n: usize) -> Vec<PeerConnections> {
        let shared = &self.shared;
        shared
            .table
            .top(n, |live| Some(*live))
            .into_iter()
            .map(|(bits, live)| PeerConnections {
                key: shared.keying.key_from_bits(bits),
                connections: live as usize,
            })
            .collect()
    }
}

impl PeerLimitBuilder {
    crate::peer::peer_table_builder_methods!();

    refusal_builder_methods!();

    /// # Errors
    ///
    /// [`ConfigError::Zero`] if the limit or the table capacity is 0.
    pub fn build(self) -> Result<PeerLimitLayer, ConfigError> {
        Ok(PeerLimitLayer {
            shared: Striped::new(Shared {
                max_per_peer: AtomicU32::new(
                    u32::try_from(nonzero(self.max_per_peer, "max_per_peer")?).unwrap_or(u32::MAX),
                ),
                keying: self.keying,
                table: PeerTable::new(nonzero(self.max_tracked_peers, "max_tracked_peers")?),
                overflow: self.overflow,
                refusal: self.refusal,
                log: LogThrottle::new(Duration::from_secs(1)),
                admitted: Counter::default(),
                exempt: Counter::default(),
                untracked: Counter::default(),
                refused_peer_limit: Refusals::new("peer_limit", "peer_limit"),
                refused_table_full: Refusals::new("peer_limit", "peer_table_full"),
            }),
        })
    }
}

impl<S> Layer<S> for PeerLimitLayer {
    type Service = PeerLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerLimit::new(inner, self.shared.clone())
    }
}

/// The state every clone shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Changed by a reload.
    max_per_peer: AtomicU32,
    keying: PeerKeying,
    table: PeerTable<u32>,
    overflow: Overflow,
    pub(super) refusal: Refusal,
    pub(super) log: LogThrottle,
    admitted: Counter,
    exempt: Counter,
    untracked: Counter,
    refused_peer_limit: Refusals,
    refused_table_full: Refusals,
}

/// The decision on one connection.
pub(super) enum Admission {
    /// Counted against its peer until the slot is dropped.
    Tracked(PeerSlot),
    /// Let through without counting: exempt, or the table was full.
    Untracked,
    /// Over the limit; in dry run, served anyway with this slot.
    Refused(Reason, Slot),
}

impl Shared {
    pub(super) fn admit(this: &Striped<Self>, ip: IpAddr) -> Admission {
        let Some(Classified { key, at }) = this.keying.classify(ip) else {
            this.exempt.add();
            this.admitted.add();
            return Admission::Untracked;
        };
        let max_per_peer = this.max_per_peer.load(Ordering::Relaxed);
        let mut shard = this.table.lock(&at);
        if let Some(live) = shard.get_mut() {
            if *live >= max_per_peer {
                let reason = Reason::PeerLimit {
                    key,
                    limit: max_per_peer as usize,
                };
                if !this.refusal.is_dry_run() {
                    return Admission::Refused(reason, Slot::None);
                }
                // Counted over the limit, so that the count stays true.
                *live += 1;
                drop(shard);
                this.admitted.add();
                return Admission::Refused(reason, Slot::Peer(PeerSlot::new(this.local(), at)));
            }
            *live += 1;
        } else if shard.insert(1).is_err() {
            drop(shard);
            return match this.overflow {
                Overflow::Admit => {
                    this.untracked.add();
                    this.admitted.add();
                    Admission::Untracked
                }
                Overflow::Refuse => {
                    if this.refusal.is_dry_run() {
                        this.admitted.add();
                    }
                    let reason = Reason::PeerTableFull {
                        capacity: this.table.capacity(),
                    };
                    Admission::Refused(reason, Slot::None)
                }
            };
        }
        drop(shard);
        this.admitted.add();
        Admission::Tracked(PeerSlot::new(this.local(), at))
    }

    /// The counters of refusals for `reason`.
    pub(super) fn refusals(&self, reason: &Reason) -> &Refusals {
        match reason {
            Reason::PeerLimit { .. } => &self.refused_peer_limit,
            _ => &self.refused_table_full,
        }
    }

    pub(super) fn release(&self, at: &Located) {
        let mut shard = self.table.lock(at);
        if let Some(live) = shard.get_mut() {
            *live -= 1;
            if *live == 0 {
                shard.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line() {
        let stats = PeerLimitStats {
            admitted: 40,
            exempt: 2,
            untracked: 1,
            dry_run_refusals: 0,
            refused_peer_limit: 3,
            refused_table_full: 4,
            tracked_peers: 5,
        };
        assert_eq!(
            stats.to_string(),
            "admitted 40 (exempt 2, untracked 1, dry run 0), refused 7 (peer limit 3, table full 4), 5 peers tracked"
        );
    }
}
