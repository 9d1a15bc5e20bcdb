//! The pre-authentication budget: OpenSSH's `MaxStartups start:rate:full` and
//! `PerSourceMaxStartups`. A connection holds a place in it from its start until it
//! authenticates or ends.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use crate::{
    admission::Reason,
    peer::{
        Classified,
        table::{Located, PeerTable},
    },
};

/// `MaxStartups start:rate:full`: from `start` unauthenticated connections, refuse a
/// new one with probability `rate`%, rising linearly to 100% at `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaxStartups {
    pub(crate) start: usize,
    pub(crate) rate_percent: u8,
    pub(crate) full: usize,
}

impl MaxStartups {
    /// The chance that a new connection is refused when `unauthenticated` are waiting.
    pub(crate) fn drop_probability(&self, unauthenticated: usize) -> f64 {
        if unauthenticated >= self.full {
            return 1.0;
        }
        if unauthenticated < self.start {
            return 0.0;
        }
        let rate = f64::from(self.rate_percent) / 100.0;
        let progress = (unauthenticated - self.start) as f64 / (self.full - self.start) as f64;
        rate + (1.0 - rate) * progress
    }
}

#[derive(Debug)]
pub(crate) struct Startups {
    budget: Option<MaxStartups>,
    per_peer: Option<(usize, PeerTable<u32>)>,
    unauthenticated: AtomicUsize,
    /// splitmix64's counter: each draw adds the golden gamma and mixes.
    random: AtomicU64,
}

/// A connection's place in the budget, given back when dropped. Without a budget,
/// nothing is counted.
#[derive(Debug)]
pub(crate) struct StartupSlot {
    startups: Option<Arc<Startups>>,
    at: Option<Located>,
}

impl Startups {
    pub(crate) fn new(
        budget: Option<MaxStartups>,
        per_peer: Option<(usize, usize)>,
        seed: u64,
    ) -> Self {
        Self {
            budget,
            per_peer: per_peer.map(|(limit, capacity)| (limit, PeerTable::new(capacity))),
            unauthenticated: AtomicUsize::new(0),
            random: AtomicU64::new(seed),
        }
    }

    pub(crate) fn unauthenticated(&self) -> usize {
        self.unauthenticated.load(Ordering::Relaxed)
    }

    /// Takes a place for a new connection from `key` (`None` for an exempt peer, which
    /// only counts against the global budget), or says why there is none.
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: Option<&Classified>,
    ) -> Result<StartupSlot, Reason> {
        if self.budget.is_none() && self.per_peer.is_none() {
            return Ok(StartupSlot {
                startups: None,
                at: None,
            });
        }
        if let Some(budget) = self.budget {
            let waiting = self
                .unauthenticated
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                    (waiting < budget.full).then_some(waiting + 1)
                })
                .map_err(|_| Reason::StartupsFull { limit: budget.full })?;
            if self.draw() < budget.drop_probability(waiting) {
                self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
                return Err(Reason::EarlyDrop {
                    unauthenticated: waiting,
                });
            }
        } else {
            self.unauthenticated.fetch_add(1, Ordering::AcqRel);
        }
        let mut slot = StartupSlot {
            startups: Some(self.clone()),
            at: None,
        };
        if let (Some((limit, table)), Some(peer)) = (&self.per_peer, peer) {
            let mut shard = table.lock(&peer.at);
            if let Some(waiting) = shard.get_mut() {
                if *waiting as usize >= *limit {
                    return Err(Reason::PeerStartups {
                        key: peer.key,
                        limit: *limit,
                    });
                }
                *waiting += 1;
            } else if shard.insert(1).is_err() {
                // A full table lets the peer in without a per-peer count.
                return Ok(slot);
            }
            slot.at = Some(peer.at);
        }
        Ok(slot)
    }

    /// Takes a place for a new connection from `peer` whatever the budget says: for a
    /// connection that dry run serves though [`admit`](Self::admit) refused it.
    pub(crate) fn take(self: &Arc<Self>, peer: Option<&Classified>) -> StartupSlot {
        if self.budget.is_none() && self.per_peer.is_none() {
            return StartupSlot {
                startups: None,
                at: None,
            };
        }
        self.unauthenticated.fetch_add(1, Ordering::AcqRel);
        let mut slot = StartupSlot {
            startups: Some(self.clone()),
            at: None,
        };
        if let (Some((_, table)), Some(peer)) = (&self.per_peer, peer) {
            let mut shard = table.lock(&peer.at);
            if let Some(waiting) = shard.get_mut() {
                *waiting += 1;
            } else if shard.insert(1).is_err() {
                return slot;
            }
            slot.at = Some(peer.at);
        }
        slot
    }

    /// A uniform draw in [0, 1).
    fn draw(&self) -> f64 {
        let mut z = self
            .random
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Drop for StartupSlot {
    fn drop(&mut self) {
        let Some(startups) = &self.startups else {
            return;
        };
        startups.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        if let (Some(at), Some((_, table))) = (&self.at, &startups.per_peer) {
            let mut shard = table.lock(at);
            if let Some(waiting) = shard.get_mut() {
                *waiting -= 1;
                if *waiting == 0 {
                    shard.remove();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerKeying;

    const OPENSSH_DEFAULT: MaxStartups = MaxStartups {
        start: 10,
        rate_percent: 30,
        full: 100,
    };

    #[test]
    fn the_drop_probability_rises_from_rate_at_start_to_certainty_at_full() {
        let budget = OPENSSH_DEFAULT;
        assert_eq!(budget.drop_probability(9), 0.0);
        assert!((budget.drop_probability(10) - 0.30).abs() < 1e-9);
        assert!((budget.drop_probability(55) - 0.65).abs() < 1e-9);
        assert_eq!(budget.drop_probability(100), 1.0);
    }

    /// The share of `trials` new connections refused while `waiting` are held.
    fn refused_share(waiting: usize, trials: usize) -> f64 {
        let startups = Arc::new(Startups::new(Some(OPENSSH_DEFAULT), None, 42));
        let held: Vec<_> = (0..waiting)
            .map(|_| {
                startups.unauthenticated.fetch_add(1, Ordering::AcqRel);
                StartupSlot {
                    startups: Some(startups.clone()),
                    at: None,
                }
            })
            .collect();
        let refused = (0..trials)
            .filter(|_| startups.admit(None).is_err())
            .count();
        drop(held);
        assert_eq!(startups.unauthenticated(), 0);
        refused as f64 / trials as f64
    }

    #[test]
    fn early_drop_refuses_about_the_expected_share_with_a_seeded_draw() {
        assert_eq!(refused_share(5, 10_000), 0.0);
        assert!((refused_share(10, 10_000) - 0.30).abs() < 0.02);
        assert!((refused_share(55, 10_000) - 0.65).abs() < 0.02);
        assert_eq!(refused_share(100, 100), 1.0);
    }

    #[test]
    fn a_full_budget_refuses_and_a_released_place_comes_back() {
        let budget = MaxStartups {
            start: 2,
            rate_percent: 100,
            full: 2,
        };
        let startups = Arc::new(Startups::new(Some(budget), None, 1));
        let first = startups.admit(None).unwrap();
        let _second = startups.admit(None).unwrap();
        assert_eq!(
            startups.admit(None).unwrap_err(),
            Reason::StartupsFull { limit: 2 }
        );
        drop(first);
        startups.admit(None).unwrap();
    }

    #[test]
    fn a_peer_holds_at_most_its_own_share() {
        let startups = Arc::new(Startups::new(None, Some((2, 100)), 1));
        let keying = PeerKeying::default();
        let noisy = keying.classify("192.0.2.1".parse().unwrap()).unwrap();
        let other = keying.classify("192.0.2.2".parse().unwrap()).unwrap();
        let held = [
            startups.admit(Some(&noisy)).unwrap(),
            startups.admit(Some(&noisy)).unwrap(),
        ];
        assert!(matches!(
            startups.admit(Some(&noisy)),
            Err(Reason::PeerStartups { limit: 2, .. })
        ));
        let _other = startups.admit(Some(&other)).unwrap();
        drop(held);
        startups.admit(Some(&noisy)).unwrap();
    }
}
