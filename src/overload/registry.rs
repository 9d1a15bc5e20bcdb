//! The connections an overload manager may evict, and the choice of one.
//!
//! The victim is an idle connection; when none is idle, the oldest of those judged by
//! their bytes (a WebSocket, a raw protocol with no request in progress, answers that
//! stream), so that a crowd that keeps such connections alive with a byte now and then
//! cannot hold the cap for good.
//!
//! Kept only under load, but for connections under a timeout layer without an idle
//! timeout (see [`Overload::enrol`](super::Overload::enrol)): a connection joins one of
//! eight shards, the one of the thread it runs on, so that threads seldom wait on each
//! other's lock, and leaves it when it ends. An eviction looks at a bounded number of
//! connections, so its cost does not grow with the cap: that number shared out evenly
//! among the shards that hold any, and in each shard from where the last look in it
//! ended, so that every connection is seen in turn, however the shards are filled.

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
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

/// How long output must have waited with not a byte of it taken before the connection
/// counts as idle: its client holds the place and takes nothing (an HTTP/2 window kept
/// at zero, a socket never read).
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// How long an evicted connection may go on, whatever it is doing, before it is cut at
/// its next wake-up, unless its protocol cuts it after a grace of its own (the HTTP
/// adapter's close grace): one that a request or a moved byte has kept from its cut
/// would otherwise hold one of the evictions allowed at once for as long as its client
/// keeps it busy.
const EVICTED_CUT_AFTER: Duration = Duration::from_secs(30);

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
    /// The shard the next eviction gives first what does not share out evenly.
    next_shard: AtomicUsize,
    /// Evicted connections that have not ended yet.
    evicting: AtomicUsize,
    evicted: Counter,
    /// Evicted for their age, no connection being idle.
    evicted_long_lived: Counter,
    keying: PeerKeying,
    quiet_after: Duration,
}

/// One shard, on its own cache line so that neighbours do not false-share.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<Members>);

/// A shard's registered connections, in no order.
#[derive(Debug, Default)]
struct Members {
    list: Vec<Arc<Member>>,
    /// Where the next look in this shard starts: where the last one ended.
    cursor: usize,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Members> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A member's states. An eviction and the end of its connection each move it on with
/// one atomic operation, so that exactly one of them ends the eviction's count: the
/// eviction, if the connection had ended first; the end, if it had been evicted.
const REGISTERED: u8 = 0;
const EVICTED: u8 = 1;
const GONE: u8 = 2;

/// A registered connection.
#[derive(Debug)]
struct Member {
    activity: Arc<Activity>,
    close: GracefulClose,
    peer: PeerKey,
    shard: usize,
    /// Its place in its shard, changed under the shard's lock.
    index: AtomicUsize,
    /// [`REGISTERED`], [`EVICTED`] or [`GONE`].
    state: AtomicU8,
    /// Evicted with nothing for a goodbye to wait on but what may never end (for its age,
    /// or while only answers streamed on it): cut as soon as its protocol has been told,
    /// busy or not.
    cut_when_told: AtomicBool,
    /// When it was evicted, in nanoseconds since its connection started; `u64::MAX`
    /// until then.
    evicted_at: AtomicU64,
}

/// A connection's place in the registry, given up when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Arc<Registry>,
    member: Arc<Member>,
}

/// A connection an eviction may choose: idle for `rank`, or, among the long-lived,
/// alive for it.
struct Candidate {
    peer: PeerKey,
    rank: Duration,
    member: Arc<Member>,
}

/// The connections an eviction looked at that it may choose.
#[derive(Default)]
struct Candidates {
    idle: Vec<Candidate>,
    /// Busy, judged by their bytes, and older than `quiet_after`.
    long_lived: Vec<Candidate>,
}

impl Registry {
    pub(super) fn new(keying: PeerKeying, quiet_after: Duration) -> Self {
        Self {
            shards: Default::default(),
            next_shard: AtomicUsize::new(0),
            evicting: AtomicUsize::new(0),
            evicted: Counter::metric(EVICTIONS, &[("reason", "overload_shed")]),
            evicted_long_lived: Counter::metric(EVICTIONS, &[("reason", "overload_long_lived")]),
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
            index: AtomicUsize::new(members.list.len()),
            state: AtomicU8::new(REGISTERED),
            cut_when_told: AtomicBool::new(false),
            evicted_at: AtomicU64::new(u64::MAX),
        });
        members.list.push(member.clone());
        Registration {
            registry: self.clone(),
            member,
        }
    }

    pub(super) fn evicted(&self) -> u64 {
        self.evicted.get()
    }

    pub(super) fn evicted_long_lived(&self) -> u64 {
        self.evicted_long_lived.get()
    }

    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().list.len())
            .sum()
    }

    /// Evictions asked for whose connections have not yet left the registry.
    pub(crate) fn evicting(&self) -> usize {
        self.evicting.load(Ordering::Acquire)
    }

    /// Asks an idle connection (or, none being idle, a long-lived one) to close
    /// gracefully, unless `max_evicting` are closing already or none may be evicted;
    /// whether one was asked.
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
        let Candidates {
            mut idle,
            mut long_lived,
        } = self.candidates();
        let chosen = loop {
            let (list, for_its_age) = if idle.is_empty() {
                (&mut long_lived, true)
            } else {
                (&mut idle, false)
            };
            let Some(at) = choose(list) else {
                break None;
            };
            let victim = list.swap_remove(at).member;
            if victim
                .state
                .compare_exchange(REGISTERED, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break Some((victim, for_its_age));
            }
            // Evicted by another newcomer since it was looked at, or its connection has
            // ended: the next choice.
        };
        let Some((victim, for_its_age)) = chosen else {
            self.evicting.fetch_sub(1, Ordering::AcqRel);
            return false;
        };
        // A graceful close would wait on a WebSocket, or on responses that may never
        // end; a request begun since the choice finishes under it.
        if for_its_age || victim.activity.only_answers_stream() {
            victim.cut_when_told.store(true, Ordering::Release);
        }
        victim
            .evicted_at
            .store(victim.lived_nanos(Instant::now()), Ordering::Relaxed);
        if for_its_age {
            self.evicted_long_lived.add();
            tracing::debug!(peer = %victim.peer, "long-lived connection evicted to make room, none being idle");
        } else {
            self.evicted.add();
            tracing::debug!(peer = %victim.peer, "idle connection evicted to make room");
        }
        victim.close.request();
        // Its own task, which nothing else may wake (a raw protocol that does not await
        // the request, a silent client, no deadline ahead), looks at its cut.
        victim.activity.wake_evicted();
        true
    }

    /// Up to [`SCAN`] registered connections that may be evicted and are not already:
    /// [`SCAN`] shared out evenly among the shards that hold any, each looked at from
    /// where the last look in it ended, so that a shard full of connections none may
    /// evict does not take a whole look from the idle ones of the next, and the next
    /// evictions look further in each. Two locks a shard: one to count it, one to look.
    fn candidates(&self) -> Candidates {
        let now = Instant::now();
        let first_shard = self.next_shard.fetch_add(1, Ordering::Relaxed);
        let lengths = std::array::from_fn(|shard| self.shards[shard].lock().list.len());
        let shares = shares(lengths, first_shard);
        let mut candidates = Candidates::default();
        for (shard, share) in shares.into_iter().enumerate() {
            if share == 0 {
                continue;
            }
            let mut members = self.shards[shard].lock();
            let len = members.list.len();
            let looked = len.min(share);
            let offset = members.cursor % len.max(1);
            members.cursor = (offset + looked) % len.max(1);
            for at in 0..looked {
                let member = &members.list[(offset + at) % len];
                if member.state.load(Ordering::Relaxed) != REGISTERED {
                    continue;
                }
                let (list, rank) = match self.idle_for(member, now) {
                    Some(idle_for) => (&mut candidates.idle, idle_for),
                    None => match self.long_lived_for(member, now) {
                        Some(lived) => (&mut candidates.long_lived, lived),
                        None => continue,
                    },
                };
                list.push(Candidate {
                    peer: member.peer,
                    rank,
                    member: member.clone(),
                });
            }
        }
        candidates
    }

    /// How long `member` has been idle, if it is idle enough to evict: between
    /// requests as its protocol declares, quiet for [`quiet_after`](Self::quiet_after),
    /// or its output stalled for [`STALLED_AFTER`]; and not a newcomer that has read
    /// nothing yet.
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
            Idleness::Stalled { since } => Some(now.saturating_duration_since(since))
                .filter(|stalled| *stalled >= STALLED_AFTER),
        }
    }

    /// How long `member` has lived, if it is judged by its bytes (its protocol declares
    /// no exchanges, or only answers stream; and no request is arriving: the request
    /// timeout bounds that) and has lived [`quiet_after`](Self::quiet_after): such a
    /// connection may never fall quiet, and gives way to a newcomer when nothing is
    /// idle.
    fn long_lived_for(&self, member: &Member, now: Instant) -> Option<Duration> {
        let activity = &member.activity;
        if activity.in_request()
            || (activity.declares_exchanges() && !activity.only_answers_stream())
        {
            return None;
        }
        Some(now.saturating_duration_since(activity.started()))
            .filter(|lived| *lived >= self.quiet_after)
    }
}

/// How many of each shard's connections, `lengths`, one eviction looks at: [`SCAN`]
/// shared out evenly, what a shard holding less than its share leaves going to the
/// others, and what does not divide evenly to the shards from `first_shard` on.
fn shares(lengths: [usize; STRIPES], first_shard: usize) -> [usize; STRIPES] {
    let mut shares = [0; STRIPES];
    let mut budget = SCAN;
    // Each round gives every shard with more to look at an even part of what is left
    // (at least one): it ends a shard's wants or the budget, so there are few rounds.
    loop {
        let wanting = (0..STRIPES)
            .filter(|&shard| shares[shard] < lengths[shard])
            .count();
        if wanting == 0 || budget == 0 {
            return shares;
        }
        let even = (budget / wanting).max(1);
        for at in 0..STRIPES {
            let shard = (first_shard + at) % STRIPES;
            let more = even.min(lengths[shard] - shares[shard]).min(budget);
            shares[shard] += more;
            budget -= more;
        }
    }
}

/// Where the connection to evict is in `candidates`, which it sorts by peer: one of the
/// peer with the most of them, so that a peer hoarding connections loses them first;
/// then the one ranked highest (idle longest, or oldest).
fn choose(candidates: &mut [Candidate]) -> Option<usize> {
    candidates.sort_unstable_by_key(|candidate| candidate.peer);
    let mut chosen = None;
    let mut start = 0;
    for peer in candidates.chunk_by(|a, b| a.peer == b.peer) {
        let (at, highest) = peer
            .iter()
            .enumerate()
            .max_by_key(|(_, candidate)| candidate.rank)?;
        let standing = (peer.len(), highest.rank);
        if chosen.is_none_or(|(best, _)| standing >= best) {
            chosen = Some((standing, start + at));
        }
        start += peer.len();
    }
    chosen.map(|(_, at)| at)
}

impl Member {
    /// How long its connection had lived at `now`, in nanoseconds.
    fn lived_nanos(&self, now: Instant) -> u64 {
        let lived = now.saturating_duration_since(self.activity.started());
        u64::try_from(lived.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether it was evicted [`EVICTED_CUT_AFTER`] or more before `now`.
    fn evicted_long_ago(&self, now: Instant) -> bool {
        let evicted_at = self.evicted_at.load(Ordering::Relaxed);
        Duration::from_nanos(self.lived_nanos(now).saturating_sub(evicted_at)) >= EVICTED_CUT_AFTER
    }
}

impl Standing {
    /// Whether the connection has been evicted and is to be cut now rather than wait on
    /// its protocol: it is still idle (an idle connection has nothing to finish, and one
    /// whose client ignores the goodbye, as HTTP/2's GOAWAY waits for the
    /// acknowledgement of a PING, would otherwise hold one of the evictions allowed at
    /// once until its close grace), it was evicted for its age (a WebSocket has no
    /// goodbye the protocol can wait for), or only answers streamed on it when it was
    /// chosen (a goodbye would wait for their end, which a gRPC stream or an event
    /// stream may never reach; and the goodbye's own bytes would make it look busy). One
    /// idle when chosen that has started a request since finishes it under the graceful
    /// close, as does one that a byte has kept busy since: within the close grace of the
    /// HTTP adapter, which cuts it then, or else within [`EVICTED_CUT_AFTER`] of its
    /// eviction. A look is one relaxed load until then.
    #[inline]
    pub(crate) fn to_cut(&self) -> bool {
        let Standing::Registered(registration) = self else {
            return false;
        };
        let member = &registration.member;
        if member.state.load(Ordering::Relaxed) != EVICTED {
            return false;
        }
        let now = Instant::now();
        member.cut_when_told.load(Ordering::Acquire)
            || registration.registry.idle_for(member, now).is_some()
            || (member.evicted_long_ago(now) && !member.activity.cuts_after_its_grace())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let member = &self.member;
        let registry = &self.registry;
        let mut members = registry.shards[member.shard].lock();
        let index = member.index.load(Ordering::Relaxed);
        members.list.swap_remove(index);
        if let Some(moved) = members.list.get(index) {
            moved.index.store(index, Ordering::Relaxed);
        }
        drop(members);
        if member.state.swap(GONE, Ordering::AcqRel) == EVICTED {
            registry.evicting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::timeout::Deadlines;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new(
            PeerKeying::default(),
            Duration::from_secs(10),
        ))
    }

    /// A connection between requests, past a newcomer's grace (it has read a byte).
    fn idle() -> Arc<Activity> {
        let activity = Arc::new(Activity::with_deadlines(Deadlines::default()));
        activity.declare_exchanges();
        activity.on_read(b"x");
        activity
    }

    /// A connection with a request under way.
    fn busy() -> Arc<Activity> {
        let activity = idle();
        activity.open_exchange();
        activity
    }

    fn peer(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn an_idle_connection_evicted_then_answering_a_late_request_finishes_it() {
        let registry = registry();
        let activity = idle();
        let standing =
            Standing::Registered(registry.register(&activity, &GracefulClose::new(), peer(1)));
        assert!(registry.evict_one(usize::MAX));
        assert!(standing.to_cut(), "idle when told: cut");
        // A request its client sent before the goodbye; its answer streams.
        activity.open_exchange();
        activity.answer_exchange();
        assert!(
            !standing.to_cut(),
            "a late request's streaming answer cut under the graceful close"
        );
    }

    /// A connection idle when chosen that starts a request at once, or is kept busy by
    /// its client's bytes, is not cut at its protocol's poll; it still may not hold one
    /// of the evictions allowed at once for as long as its client keeps it busy.
    #[tokio::test(start_paused = true)]
    async fn an_evicted_connection_kept_busy_is_cut_once_its_eviction_is_old() {
        let registry = registry();
        let activity = idle();
        let standing =
            Standing::Registered(registry.register(&activity, &GracefulClose::new(), peer(1)));
        assert!(registry.evict_one(usize::MAX));
        activity.open_exchange();
        assert!(
            !standing.to_cut(),
            "a request begun since the choice is cut"
        );
        tokio::time::advance(EVICTED_CUT_AFTER - Duration::from_millis(1)).await;
        assert!(!standing.to_cut(), "cut before its eviction is old");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            standing.to_cut(),
            "busy {EVICTED_CUT_AFTER:?} after its eviction, and not cut"
        );
    }

    #[test]
    fn evictions_look_past_a_run_of_busy_connections() {
        let registry = registry();
        // More busy connections in a row than one eviction looks at, then idle ones.
        let mut held: Vec<_> = (0..300)
            .map(|n| registry.register(&busy(), &GracefulClose::new(), peer(n)))
            .collect();
        held.extend(
            (300..1000).map(|n| registry.register(&idle(), &GracefulClose::new(), peer(n))),
        );
        // One eviction may look only at busy ones; the next looks further on.
        let found: Vec<bool> = (0..40).map(|_| registry.evict_one(usize::MAX)).collect();
        assert!(
            found.windows(2).all(|pair| pair[0] || pair[1]),
            "two evictions in a row found none of the 700 idle: {found:?}"
        );
    }

    /// Two threads' shards, side by side: the first holds as many busy connections as
    /// one eviction looks at, the next 256 idle ones. Every eviction that starts from a
    /// shard before the first (7 in 8, as the next shard moves on by one) spends its
    /// whole look there: a newcomer at a full cap is refused, with 256 idle
    /// connections registered, 7 times in 8 and for as long as the busy ones last.
    #[test]
    fn a_shard_full_of_busy_connections_does_not_hide_the_idle_ones_of_the_next() {
        let registry = registry();
        let (x, mut held) = std::thread::spawn({
            let registry = registry.clone();
            move || {
                let busy: Vec<_> = (0..SCAN as u32)
                    .map(|n| registry.register(&busy(), &GracefulClose::new(), peer(n)))
                    .collect();
                (stripe(), busy)
            }
        })
        .join()
        .unwrap();
        // A thread whose shard is the next one: threads are numbered in turn.
        let mut next_shard = false;
        for _ in 0..64 {
            let idle = std::thread::spawn({
                let registry = registry.clone();
                move || {
                    (stripe() == (x + 1) % STRIPES).then(|| {
                        (0..SCAN as u32)
                            .map(|n| {
                                registry.register(&idle(), &GracefulClose::new(), peer(1000 + n))
                            })
                            .collect::<Vec<_>>()
                    })
                }
            })
            .join()
            .unwrap();
            if let Some(idle) = idle {
                held.extend(idle);
                next_shard = true;
                break;
            }
        }
        assert!(next_shard, "no thread of the next shard");
        let found = (0..STRIPES)
            .filter(|_| registry.evict_one(usize::MAX))
            .count();
        assert_eq!(
            found, STRIPES,
            "only {found} of {STRIPES} evictions found one of the {SCAN} idle connections \
             registered in the shard after {SCAN} busy ones"
        );
    }

    #[test]
    fn an_eviction_that_races_the_end_of_its_connection_is_counted_out_once() {
        let registry = registry();
        let stop = Arc::new(AtomicBool::new(false));
        // Idle connections that end as soon as they are registered, while evictions
        // choose among them.
        let ending = std::thread::spawn({
            let registry = registry.clone();
            let stop = stop.clone();
            move || {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    drop(registry.register(&idle(), &GracefulClose::new(), peer(n)));
                }
            }
        });
        for _ in 0..200_000 {
            registry.evict_one(usize::MAX);
        }
        stop.store(true, Ordering::Relaxed);
        ending.join().unwrap();
        assert_eq!(registry.len(), 0);
        assert_eq!(
            registry.evicting.load(Ordering::Relaxed),
            0,
            "evictions still counted under way with no connection left"
        );
    }

    #[test]
    fn two_evictions_at_once_each_find_their_own_idle_connection() {
        let mut not_found = 0;
        for _ in 0..2_000 {
            let registry = registry();
            let _held: Vec<_> = (0..2)
                .map(|n| registry.register(&idle(), &GracefulClose::new(), peer(n)))
                .collect();
            let together = Arc::new(std::sync::Barrier::new(2));
            let evictions: Vec<_> = (0..2)
                .map(|_| {
                    let registry = registry.clone();
                    let together = together.clone();
                    std::thread::spawn(move || {
                        together.wait();
                        registry.evict_one(usize::MAX)
                    })
                })
                .collect();
            not_found += evictions
                .into_iter()
                .map(|eviction| eviction.join().unwrap())
                .filter(|found| !found)
                .count();
        }
        assert_eq!(
            not_found, 0,
            "a newcomer refused with an idle connection left"
        );
    }

    /// Two threads' shards: one with a run of 256 busy connections, enough for a whole
    /// look, and one with 2048. The second must not be looked at through the same
    /// windows every time. (When one count picked both the first shard and the offset
    /// in it, every look in the second shard fell in the windows made busy here, and
    /// its 1792 idle connections were never seen.)
    #[test]
    fn every_registered_idle_connection_is_seen_in_turn_whatever_the_shards_hold() {
        let registry = registry();
        let first_shard = std::thread::spawn({
            let registry = registry.clone();
            move || {
                let busy: Vec<_> = (0..256)
                    .map(|n| registry.register(&busy(), &GracefulClose::new(), peer(n)))
                    .collect();
                (stripe(), busy)
            }
        });
        let (x, mut held) = first_shard.join().unwrap();
        let mut idle_registered = 0;
        for _ in 0..32 {
            let other = std::thread::spawn({
                let registry = registry.clone();
                move || {
                    let y = stripe();
                    if y == x {
                        return None;
                    }
                    // The shard an eviction looks in first, for the `k`th eviction.
                    let first = |k: usize| {
                        (0..STRIPES)
                            .map(|at| (k + at) % STRIPES)
                            .find(|shard| *shard == x || *shard == y)
                            .unwrap()
                    };
                    // Busy where evictions look in this shard, idle elsewhere.
                    let members: Vec<_> = (0..2048)
                        .map(|at| {
                            let window = at / SCAN;
                            let activity = if first(window) == y { busy() } else { idle() };
                            let idle = usize::from(first(window) != y);
                            (
                                registry.register(
                                    &activity,
                                    &GracefulClose::new(),
                                    peer(10_000 + at as u32),
                                ),
                                idle,
                            )
                        })
                        .collect();
                    Some(members)
                }
            });
            if let Some(members) = other.join().unwrap() {
                for (member, idle) in members {
                    idle_registered += idle;
                    held.push(member);
                }
                break;
            }
        }
        assert!(idle_registered >= SCAN, "no second shard");
        let found = (0..64).filter(|_| registry.evict_one(usize::MAX)).count();
        assert!(
            found > 0,
            "64 evictions found none of the {idle_registered} idle connections registered"
        );
    }
}
