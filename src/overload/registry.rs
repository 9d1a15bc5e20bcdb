//! The connections an overload manager may evict, and the choice of one.
//!
//! Kept only under load (see [`Overload::enrol`](super::Overload::enrol)): a connection
//! joins one of eight shards, the one of the thread it runs on, so that threads seldom
//! wait on each other's lock, and leaves it when it ends. An eviction looks at a bounded
//! number of connections from a rotating start, so its cost does not grow with the
//! cap, and every connection is seen in turn.

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    GracefulClose,
    counter::{Counter, STRIPES, stripe},
    metrics::EVICTIONS,
    peer::{PeerKey, PeerKeying},
    timeout::{Activity, Idleness},
};

/// The most registered connections one eviction looks at.
const SCAN: usize = 256;

/// How long a connection that has read nothing is spared: its first request may be on
/// its way. (Its protocol counts it idle, and the timer has not looked at it yet, so it
/// would seem idle longer than a connection that has just served a request.) A silent
/// one is evictable after that.
const NEWCOMER_GRACE: Duration = Duration::from_secs(1);

/// A connection as the overload manager knows it.
#[derive(Debug)]
pub(crate) enum Standing {
    /// Not registered yet: the load was low when it last looked.
    Unregistered(IpAddr),
    Registered(#[allow(dead_code, reason = "held for its Drop")] Registration),
}

#[derive(Debug)]
pub(crate) struct Registry {
    shards: [Shard; STRIPES],
    /// Where the next eviction starts looking.
    cursor: AtomicUsize,
    /// Evicted connections that have not ended yet.
    evicting: AtomicUsize,
    evicted: Counter,
    keying: PeerKeying,
    quiet_after: Duration,
}

/// One shard, on its own cache line so that neighbours do not false-share.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<Vec<Arc<Member>>>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Member>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A registered connection.
#[derive(Debug)]
struct Member {
    activity: Arc<Activity>,
    close: GracefulClose,
    peer: PeerKey,
    shard: usize,
    /// Its place in its shard, changed under the shard's lock.
    index: AtomicUsize,
    evicted: AtomicBool,
}

/// A connection's place in the registry, given up when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Arc<Registry>,
    member: Arc<Member>,
}

/// An idle connection an eviction may choose.
struct Candidate {
    peer: PeerKey,
    idle_for: Duration,
    member: Arc<Member>,
}

impl Registry {
    pub(super) fn new(keying: PeerKeying, quiet_after: Duration) -> Self {
        Self {
            shards: Default::default(),
            cursor: AtomicUsize::new(0),
            evicting: AtomicUsize::new(0),
            evicted: Counter::metric(EVICTIONS, &[("reason", "overload_shed")]),
            keying,
            quiet_after,
        }
    }

    pub(super) fn register(
        self: &Arc<Self>,
        activity: &Arc<Activity>,
        close: &GracefulClose,
        peer: IpAddr,
    ) -> Registration {
        let shard = stripe();
        let mut members = self.shards[shard].lock();
        let member = Arc::new(Member {
            activity: activity.clone(),
            close: close.clone(),
            peer: self.keying.key(peer),
            shard,
            index: AtomicUsize::new(members.len()),
            evicted: AtomicBool::new(false),
        });
        members.push(member.clone());
        Registration {
            registry: self.clone(),
            member,
        }
    }

    pub(super) fn evicted(&self) -> u64 {
        self.evicted.get()
    }

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// Asks an idle connection to close gracefully, unless `max_evicting` are closing
    /// already or none is idle; whether one was asked.
    pub(crate) fn evict_one(&self, max_evicting: usize) -> bool {
        if self
            .evicting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |evicting| {
                (evicting < max_evicting).then_some(evicting + 1)
            })
            .is_err()
        {
            return false;
        }
        let victim = self.choose();
        match victim {
            Some(victim) if !victim.evicted.swap(true, Ordering::AcqRel) => {
                self.evicted.add();
                victim.close.request();
                tracing::debug!(peer = %victim.peer, "idle connection evicted to make room");
                true
            }
            _ => {
                self.evicting.fetch_sub(1, Ordering::AcqRel);
                false
            }
        }
    }

    /// The idle connection to evict: one of the peer with the most idle connections
    /// among those looked at, the one idle longest.
    fn choose(&self) -> Option<Arc<Member>> {
        let mut candidates = self.idle_candidates();
        candidates.sort_unstable_by_key(|candidate| candidate.peer);
        candidates
            .chunk_by(|a, b| a.peer == b.peer)
            .filter_map(|peer| {
                let longest = peer.iter().max_by_key(|candidate| candidate.idle_for)?;
                Some((peer.len(), longest))
            })
            .max_by_key(|(count, longest)| (*count, longest.idle_for))
            .map(|(_, chosen)| chosen.member.clone())
    }

    /// Up to [`SCAN`] registered connections, from a rotating start, that are idle and
    /// not already evicted.
    fn idle_candidates(&self) -> Vec<Candidate> {
        let now = Instant::now();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut budget = SCAN;
        let mut candidates = Vec::new();
        for shard in 0..STRIPES {
            let members = self.shards[(start + shard) % STRIPES].lock();
            let looked = members.len().min(budget);
            budget -= looked;
            let offset = start % members.len().max(1);
            for at in 0..looked {
                let member = &members[(offset + at) % members.len()];
                if member.evicted.load(Ordering::Relaxed) {
                    continue;
                }
                let Some(idle_for) = self.idle_for(member, now) else {
                    continue;
                };
                candidates.push(Candidate {
                    peer: member.peer,
                    idle_for,
                    member: member.clone(),
                });
            }
            if budget == 0 {
                break;
            }
        }
        candidates
    }

    /// How long `member` has been idle, if it is idle enough to evict: between
    /// requests as its protocol declares, or quiet for [`quiet_after`](Self::quiet_after),
    /// and not a newcomer that has read nothing yet.
    fn idle_for(&self, member: &Member, now: Instant) -> Option<Duration> {
        let activity = &member.activity;
        if activity.bytes_read() == 0
            && now.saturating_duration_since(activity.started()) < NEWCOMER_GRACE
        {
            return None;
        }
        match activity.idleness()? {
            Idleness::Declared { since } => Some(now.saturating_duration_since(since)),
            Idleness::Quiet { since } => Some(now.saturating_duration_since(since))
                .filter(|quiet| *quiet >= self.quiet_after),
        }
    }
}

impl Standing {
    /// Whether the connection has been evicted and is still idle, and so is to be cut
    /// now rather than wait on its protocol: an idle connection has nothing to finish,
    /// and one whose client ignores the goodbye (HTTP/2's GOAWAY waits for the
    /// acknowledgement of a PING) would otherwise hold one of the evictions allowed at
    /// once until its close grace. One that has started a request since it was chosen
    /// finishes it under the graceful close. A look is one relaxed load until then.
    #[inline]
    pub(crate) fn evicted_and_idle(&self) -> bool {
        let Standing::Registered(registration) = self else {
            return false;
        };
        let member = &registration.member;
        member.evicted.load(Ordering::Relaxed)
            && registration
                .registry
                .idle_for(member, Instant::now())
                .is_some()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let member = &self.member;
        let registry = &self.registry;
        let mut members = registry.shards[member.shard].lock();
        let index = member.index.load(Ordering::Relaxed);
        members.swap_remove(index);
        if let Some(moved) = members.get(index) {
            moved.index.store(index, Ordering::Relaxed);
        }
        drop(members);
        if member.evicted.load(Ordering::Acquire) {
            registry.evicting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
