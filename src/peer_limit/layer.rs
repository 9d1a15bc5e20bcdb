use std::{
    convert::Infallible,
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tower_layer::Layer;

use super::{PeerLimit, PeerSlot};
use crate::{
    ConfigError,
    admission::{Reason, Refusal, Refusals, refusal_builder_methods},
    config::nonzero,
    counter::Counter,
    janitor::Janitor,
    peer::{
        Classified, PeerKeying,
        cells::{CellTable, Fit},
        table::{Located, Overflow},
    },
    striped::Striped,
    throttle::LogThrottle,
};

const DEFAULT_MAX_TRACKED_PEERS: usize = 65_536;

/// How often peers whose connections have all ended are taken out of the table.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

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
    /// Peers in the table: those with live connections, and those whose last one ended
    /// since the last sweep (every 10 s, or when the table is full).
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
    /// Walks the whole table without holding admission up: O(tracked peers · log n). For
    /// an operator's page, not for every connection.
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
            .top(n, |live| (live > 0).then_some(live))
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
                table: CellTable::new(nonzero(self.max_tracked_peers, "max_tracked_peers")?),
                janitor: Janitor::default(),
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
    /// Each peer's live connections. A peer whose last one ends stays, at 0, until a
    /// sweep: taking it out on every connection's end would cost every connection a
    /// write to lines other threads write.
    table: CellTable,
    janitor: Janitor,
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
    Refused(Reason, Option<PeerSlot>),
}

impl Shared {
    pub(super) fn admit(this: &Striped<Self>, ip: IpAddr) -> Admission {
        let Some(Classified { key, at }) = this.keying.classify(ip) else {
            this.exempt.add();
            this.admitted.add();
            return Admission::Untracked;
        };
        this.janitor.ensure(this.arc(), SWEEP_EVERY, Self::sweep);
        let max_per_peer = u64::from(this.max_per_peer.load(Ordering::Relaxed));
        let dry_run = this.refusal.is_dry_run();
        // Peers whose connections have all ended make way for a new one.
        let Ok(counted) = this.table.change_or_make_way(
            &at,
            |live| live == 0,
            |live| {
                Ok::<_, Infallible>(match live {
                    // Over the limit: in dry run, counted anyway, so that the count
                    // stays true.
                    Some(live) if live >= max_per_peer && !dry_run => (live, None),
                    Some(live) => (live, Some(live + 1)),
                    None => (0, Some(1)),
                })
            },
        );
        match (counted.outcome, counted.fit) {
            (_, Fit::NoRoom) => match this.overflow {
                Overflow::Admit => {
                    this.untracked.add();
                    this.admitted.add();
                    Admission::Untracked
                }
                Overflow::Refuse => {
                    if dry_run {
                        this.admitted.add();
                    }
                    let reason = Reason::PeerTableFull {
                        capacity: this.table.capacity(),
                    };
                    Admission::Refused(reason, None)
                }
            },
            (live, Fit::Stored) if live >= max_per_peer => {
                let reason = Reason::PeerLimit {
                    key,
                    limit: max_per_peer as usize,
                };
                if !dry_run {
                    return Admission::Refused(reason, None);
                }
                this.admitted.add();
                Admission::Refused(reason, Some(PeerSlot::new(this.local(), at)))
            }
            (_, Fit::Stored) => {
                this.admitted.add();
                Admission::Tracked(PeerSlot::new(this.local(), at))
            }
        }
    }

    /// Takes out the peers with no live connection.
    fn sweep(&self) {
        self.table.retain(|live| live > 0);
    }

    /// The counters of refusals for `reason`.
    pub(super) fn refusals(&self, reason: &Reason) -> &Refusals {
        match reason {
            Reason::PeerLimit { .. } => &self.refused_peer_limit,
            _ => &self.refused_table_full,
        }
    }

    pub(super) fn release(&self, at: &Located) {
        let Ok(_) = self.table.change(at, |live| {
            Ok::<_, Infallible>(((), live.map(|live| live.saturating_sub(1))))
        });
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
