use std::{
    convert::Infallible,
    net::IpAddr,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use governor::{Quota, RateLimiter, clock::Clock, middleware::NoOpMiddleware, nanos::Nanos};
use tokio::sync::futures::OwnedNotified;
use tower_layer::Layer;

use super::{
    RateLimit, TokioClock, clock,
    global::GlobalRate,
    store::{self, RateStore, Written},
};
use crate::{
    ConfigError,
    admission::{Mode, Reason, Refusal, Refusals, refusal_builder_methods},
    counter::Counter,
    janitor::Janitor,
    peer::{Classified, Overflow, PeerKeying, cells::CellTable, table::Located},
    throttle::LogThrottle,
};

const DEFAULT_MAX_TRACKED_PEERS: usize = 65_536;

/// How many connections a period allows, and how many may arrive at once.
///
/// A rate so slow that an emptied bucket would take more than a century to refill (a
/// `Quota::with_period(Duration::MAX)` meant as "once, ever") saturates: it is counted
/// as a refill in about 146 years.
///
/// ```
/// use tower_bouncer::rate_limit::Rate;
///
/// let steady = Rate::per_second(10); // 10 a second, up to 10 at once
/// let bursty = Rate::per_minute(60).burst(20); // 1 a second on average, 20 at once
/// let quota = Rate::from(governor::Quota::per_second(std::num::NonZeroU32::new(5).unwrap()));
/// # let _ = (steady, bursty, quota);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    base: Base,
    burst: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Count { connections: u32, per: Duration },
    Quota(Quota),
}

impl Rate {
    /// `connections` new connections a second, all of them at once if they come so.
    pub fn per_second(connections: u32) -> Self {
        Self::per(connections, Duration::from_secs(1))
    }

    /// `connections` new connections a minute, all of them at once if they come so.
    pub fn per_minute(connections: u32) -> Self {
        Self::per(connections, Duration::from_secs(60))
    }

    fn per(connections: u32, per: Duration) -> Self {
        Self {
            base: Base::Count { connections, per },
            burst: None,
        }
    }

    /// How many connections may arrive at once; by default, the whole period's worth.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    fn quota(self, setting: &'static str) -> Result<Quota, ConfigError> {
        let zero = || ConfigError::Zero { setting };
        let quota = match self.base {
            Base::Quota(quota) => quota,
            Base::Count { connections, per } => {
                let connections = NonZeroU32::new(connections).ok_or_else(zero)?;
                // Over a billion a second is a period under governor's nanosecond: as
                // good as one a nanosecond, not an error.
                Quota::with_period((per / connections.get()).max(Duration::from_nanos(1)))
                    .ok_or_else(zero)?
                    .allow_burst(connections)
            }
        };
        let quota = match self.burst {
            None => quota,
            Some(burst) => quota.allow_burst(NonZeroU32::new(burst).ok_or_else(zero)?),
        };
        Ok(saturated(quota))
    }
}

/// The longest a bucket may take to refill. governor counts time in `u64` nanoseconds
/// (584 years) and adds a refill time to the clock's reading, so half of that range is
/// left for the clock. A slower rate is as good as "never again", and saturates here.
const LONGEST_REFILL: Duration = Duration::from_nanos(1 << 62);

/// `quota` with its period, then its burst, cut down so that the bucket refills within
/// [`LONGEST_REFILL`] (a quota that already does is unchanged), and its period at least
/// 1 ns, as governor counts it anyway.
fn saturated(quota: Quota) -> Quota {
    let period = quota
        .replenish_interval()
        .clamp(Duration::from_nanos(1), LONGEST_REFILL);
    // At least 1, as the period is at most the longest refill.
    let most_burst = u32::try_from(LONGEST_REFILL.as_nanos() / period.as_nanos())
        .ok()
        .and_then(NonZeroU32::new)
        .unwrap_or(NonZeroU32::MAX);
    Quota::with_period(period)
        .expect("the period is at least 1 ns")
        .allow_burst(quota.burst_size().min(most_burst))
}

impl From<Quota> for Rate {
    fn from(quota: Quota) -> Self {
        Self {
            base: Base::Quota(quota),
            burst: None,
        }
    }
}

/// Limits new connections per second. See the [module documentation](super).
///
/// Clones share one state: keep a clone to read [`stats`](Self::stats).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

/// Builds a [`RateLimitLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimitBuilder {
    per_peer: Option<Rate>,
    global: Option<Rate>,
    global_mode: Mode,
    keying: PeerKeying,
    max_tracked_peers: usize,
    overflow: Overflow,
    refusal: Refusal,
}

/// What a [`RateLimitLayer`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Connections let through, exempt and untracked ones included.
    pub admitted: u64,
    /// Of those, connections from exempt peers.
    pub exempt: u64,
    /// Of those, connections let through untracked because the table was full.
    pub untracked: u64,
    /// Of those, connections that would have been refused, served anyway in [dry
    /// run](RateLimitBuilder::dry_run).
    pub dry_run_refusals: u64,
    /// Connections refused for their peer's rate.
    pub refused_peer_rate: u64,
    /// Connections refused for the global rate.
    pub refused_global_rate: u64,
    /// Connections refused because the peer table was full.
    pub refused_table_full: u64,
    /// Peers whose bucket is not full, tracked now.
    pub tracked_peers: usize,
}

/// One line: `admitted 40 (exempt 2, untracked 0, dry run 0), refused 12 (peer rate
/// 10, global rate 2, table full 0), 5 peers tracked`.
impl std::fmt::Display for RateLimitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "admitted {} (exempt {}, untracked {}, dry run {}), refused {} (peer rate {}, global rate {}, table full {}), {} peers tracked",
            self.admitted,
            self.exempt,
            self.untracked,
            self.dry_run_refusals,
            self.refused_peer_rate + self.refused_global_rate + self.refused_table_full,
            self.refused_peer_rate,
            self.refused_global_rate,
            self.refused_table_full,
            self.tracked_peers
        )
    }
}

impl RateLimitLayer {
    /// A rate limit with no rate yet: set a [per-peer](RateLimitBuilder::per_peer) or a
    /// [global](RateLimitBuilder::global) rate, or both.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder {
            per_peer: None,
            global: None,
            global_mode: Mode::Refuse,
            keying: PeerKeying::default(),
            max_tracked_peers: DEFAULT_MAX_TRACKED_PEERS,
            overflow: Overflow::default(),
            refusal: Refusal::default(),
        }
    }

    /// Counters, read without locking.
    pub fn stats(&self) -> RateLimitStats {
        let shared = &self.shared;
        RateLimitStats {
            admitted: shared.admitted.get(),
            exempt: shared.exempt.get(),
            untracked: shared.untracked.get(),
            dry_run_refusals: shared.refused_peer_rate.dry_run()
                + shared.refused_global_rate.dry_run()
                + shared.refused_table_full.dry_run(),
            refused_peer_rate: shared.refused_peer_rate.refused(),
            refused_global_rate: shared.refused_global_rate.refused(),
            refused_table_full: shared.refused_table_full.refused(),
            tracked_peers: shared.tracked_peers(),
        }
    }

    crate::admission::dry_run_switch!();

    /// Changes the per-peer rate of this layer and its clones, for a reload without a
    /// restart. What each peer has used is kept, measured against the new rate: a peer
    /// that has 6 connections of its burst still to refill refills them at the new
    /// rate, whether the old one was faster or slower. A new rate walks the peer table
    /// once, here, not on the connection path, before the new rate is put in force: a
    /// connection checked meanwhile is counted at the old rate, once. Refilled peers are forgotten on the new rate's schedule
    /// from the next second.
    ///
    /// ```
    /// use tower_bouncer::rate_limit::{Rate, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder().per_peer(Rate::per_second(20)).build().unwrap();
    /// layer.set_per_peer(Rate::per_second(5)).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero rate or burst; [`ConfigError::Inconsistent`] if
    /// the layer was built without a per-peer rate. The rate is then unchanged.
    pub fn set_per_peer(&self, rate: impl Into<Rate>) -> Result<(), ConfigError> {
        let per_peer = self
            .shared
            .per_peer
            .as_ref()
            .ok_or(ConfigError::Inconsistent {
                reason: "the layer was built without a per-peer rate",
            })?;
        per_peer.reload(rate.into().quota("per_peer")?, self.shared.clock);
        Ok(())
    }

    /// Changes the global rate of this layer and its clones, for a reload without a
    /// restart. What the bucket has spent is kept, counted in connections at the new
    /// rate: no fresh burst, whether the rate is raised or lowered, and the rate in
    /// force set again changes nothing. Tokens the threads took from the bucket ahead
    /// of need (with a burst of 128 or more) are dropped, as spent.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero rate or burst; [`ConfigError::Inconsistent`] if
    /// the layer was built without a global rate. The rate is then unchanged.
    pub fn set_global(&self, rate: impl Into<Rate>) -> Result<(), ConfigError> {
        let global = self
            .shared
            .global
            .as_ref()
            .ok_or(ConfigError::Inconsistent {
                reason: "the layer was built without a global rate",
            })?;
        global.set(rate.into().quota("global")?);
        Ok(())
    }
}

impl RateLimitBuilder {
    /// New connections allowed from each peer key.
    pub fn per_peer(mut self, rate: impl Into<Rate>) -> Self {
        self.per_peer = Some(rate.into());
        self
    }

    /// New connections allowed from all peers together.
    pub fn global(mut self, rate: impl Into<Rate>) -> Self {
        self.global = Some(rate.into());
        self
    }

    /// Over the global rate, stop accepting until the rate allows one more instead of
    /// refusing. The per-peer rate still refuses, and a connection it refuses (or one
    /// from an exempt peer) does not spend the global rate.
    pub fn global_backpressure(mut self) -> Self {
        self.global_mode = Mode::Backpressure;
        self
    }

    crate::peer::peer_table_builder_methods!();

    refusal_builder_methods!();

    /// # Errors
    ///
    /// [`ConfigError::Empty`] without any rate; [`ConfigError::Zero`] for a rate, a burst
    /// or a table capacity of 0.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        if self.per_peer.is_none() && self.global.is_none() {
            return Err(ConfigError::Empty {
                needs: "a per-peer or a global rate",
            });
        }
        if self.max_tracked_peers == 0 {
            return Err(ConfigError::Zero {
                setting: "max_tracked_peers",
            });
        }
        let clock = TokioClock::new();
        let per_peer = match self.per_peer {
            None => None,
            Some(rate) => {
                let quota = rate.quota("per_peer")?;
                let table = Arc::new(CellTable::new(self.max_tracked_peers));
                Some(PerPeer {
                    limiter: Arc::new(ArcSwap::from_pointee(keyed_limiter(quota, &table, clock))),
                    in_force: Mutex::new(quota),
                    table,
                    sweep_every: AtomicU64::new(sweep_interval(quota)),
                    swept_at: AtomicU64::new(0),
                    janitor: Janitor::default(),
                })
            }
        };
        let global = match self.global {
            None => None,
            Some(rate) => Some(GlobalRate::new(rate.quota("global")?, clock)),
        };
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                keying: self.keying,
                per_peer,
                global,
                global_mode: self.global_mode,
                clock,
                overflow: self.overflow,
                refusal: self.refusal,
                log: LogThrottle::new(Duration::from_secs(1)),
                admitted: Counter::default(),
                exempt: Counter::default(),
                untracked: Counter::default(),
                refused_peer_rate: Refusals::new("rate_limit", "peer_rate"),
                refused_global_rate: Refusals::new("rate_limit", "global_rate"),
                refused_table_full: Refusals::new("rate_limit", "peer_table_full"),
            }),
        })
    }
}

/// A bucket's word, the time it is full again, moved from the old interval between two
/// connections to the new one: what it has used is a time ahead of `now`, which counts
/// connections at the rate it was written under, and counts as many at the new one.
pub(super) fn rescaled(full_at: u64, now: u64, old: Duration, new: Duration) -> u64 {
    if full_at <= now {
        return full_at;
    }
    let to_refill = u128::from(full_at - now) * new.as_nanos() / old.as_nanos();
    now.saturating_add(u64::try_from(to_refill).unwrap_or(u64::MAX))
}

/// How often the sweep task looks whether refilled peers are due to be forgotten: the
/// shortest time between two sweeps, so that a reload to a faster rate is followed
/// from the next look.
const SWEEP_LOOK_EVERY: Duration = Duration::from_secs(1);

/// How often refilled peers are forgotten, in nanoseconds: once a bucket has had time
/// to refill, within bounds so that neither the sweep nor the memory it frees is
/// wasted.
fn sweep_interval(quota: Quota) -> u64 {
    let every = quota
        .burst_size_replenished_in()
        .clamp(SWEEP_LOOK_EVERY, Duration::from_secs(60));
    u64::try_from(every.as_nanos()).expect("a minute in nanoseconds fits")
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone())
    }
}

type KeyedLimiter = RateLimiter<Located, RateStore, TokioClock, NoOpMiddleware<Nanos>>;

/// A service's view of the per-peer limiter in force: a reload is seen by comparing one
/// pointer, not by a load that writes to arc-swap's per-thread state.
pub(super) type LimiterCache = arc_swap::Cache<Arc<ArcSwap<KeyedLimiter>>, Arc<KeyedLimiter>>;

/// The per-peer limiter of `quota` over `table`: a reload makes a new one over the same
/// table, so that what each peer used carries over.
fn keyed_limiter(quota: Quota, table: &Arc<CellTable>, clock: TokioClock) -> KeyedLimiter {
    // governor counts a limiter's arrival times from its own start: the table keeps
    // them from the clock's origin, so that a limiter made by a reload reads them alike.
    clock::at(tokio::time::Instant::now(), || {
        let store = RateStore {
            table: table.clone(),
            start: clock.now().as_u64(),
        };
        RateLimiter::new(quota, store, clock)
    })
}

/// The per-peer rate: governor's limiter over a bounded table.
#[derive(Debug)]
struct PerPeer {
    /// Replaced by a reload, over the same table.
    limiter: Arc<ArcSwap<KeyedLimiter>>,
    /// The limiter's quota, held by a reload while it rescales the table, so that two
    /// reloads rescale it in turn.
    in_force: Mutex<Quota>,
    /// The limiter's table, also held here to ask it about capacity.
    table: Arc<CellTable>,
    /// How often the rate in force needs refilled peers forgotten, in nanoseconds: set
    /// again by a reload, read by the sweep task at each look.
    sweep_every: AtomicU64,
    /// When refilled peers were last forgotten (at first, when the layer was built), on
    /// the layer's clock.
    swept_at: AtomicU64,
    janitor: Janitor,
}

/// The state every clone shares.
#[derive(Debug)]
pub(crate) struct Shared {
    keying: PeerKeying,
    per_peer: Option<PerPeer>,
    global: Option<GlobalRate>,
    pub(super) global_mode: Mode,
    clock: TokioClock,
    overflow: Overflow,
    pub(super) refusal: Refusal,
    pub(super) log: LogThrottle,
    admitted: Counter,
    exempt: Counter,
    untracked: Counter,
    refused_peer_rate: Refusals,
    refused_global_rate: Refusals,
    refused_table_full: Refusals,
}

impl Shared {
    /// Decides on a connection from `ip`. `global_reserved`: one connection's worth of
    /// the global rate, taken while the service waited to be ready (backpressure). It is
    /// spent only on a connection the global rate applies to: one that is exempt or
    /// refused for its peer's rate leaves it to the next. In dry run, a connection
    /// refused is counted as admitted too, since it is served.
    pub(super) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limiter: Option<&mut LimiterCache>,
        global_reserved: &mut bool,
    ) -> Result<(), Reason> {
        let Some(peer) = self.keying.classify(ip) else {
            self.exempt.add();
            self.admitted.add();
            return Ok(());
        };
        let mut written = Written::Nothing;
        let decision = clock::at(tokio::time::Instant::now(), || {
            if let (Some(per_peer), Some(limiter)) = (&self.per_peer, limiter) {
                per_peer.start_janitor(self);
                written = self.check_peer(per_peer, limiter.load(), peer)?;
            }
            if !std::mem::take(global_reserved) {
                self.check_global().map_err(|retry_after| {
                    // Not the peer's doing: its rate is left as it was, unless the
                    // connection is served anyway.
                    if let (Some(per_peer), Written::Stored { before, after }) =
                        (&self.per_peer, written)
                        && !self.refusal.is_dry_run()
                    {
                        per_peer.give_back(&peer.at, before, after, self.clock.now());
                    }
                    Reason::GlobalRate { retry_after }
                })?;
            }
            Ok(())
        });
        if decision.is_ok() || self.refusal.is_dry_run() {
            self.admitted.add();
            if written == Written::Untracked {
                self.untracked.add();
            }
        }
        decision
    }

    /// A cache of the per-peer limiter in force, for a service to pass to
    /// [`admit`](Self::admit).
    pub(super) fn limiter_cache(&self) -> Option<LimiterCache> {
        let per_peer = self.per_peer.as_ref()?;
        Some(arc_swap::Cache::new(per_peer.limiter.clone()))
    }

    /// The counters of refusals for `reason`.
    pub(super) fn refusals(&self, reason: &Reason) -> &Refusals {
        match reason {
            Reason::PeerRate { .. } => &self.refused_peer_rate,
            Reason::GlobalRate { .. } => &self.refused_global_rate,
            _ => &self.refused_table_full,
        }
    }

    /// Takes one connection from the peer's rate; what that wrote to the table, for
    /// [`admit`](Self::admit) to count an untracked peer once the connection is
    /// admitted, or to undo if the global rate refuses it.
    fn check_peer(
        &self,
        per_peer: &PerPeer,
        limiter: &KeyedLimiter,
        Classified { key, at }: Classified,
    ) -> Result<Written, Reason> {
        let checked = limiter
            .check_key(&at)
            .map_err(|not_until| Reason::PeerRate {
                key,
                retry_after: not_until.wait_time_from(self.clock.now()),
            });
        let written = store::take_written();
        if written == Written::Untracked && self.overflow == Overflow::Refuse {
            return Err(Reason::PeerTableFull {
                capacity: per_peer.table.capacity(),
            });
        }
        checked.map(|()| written)
    }

    /// Takes one connection from the global rate, or says how long until it allows one.
    pub(super) fn check_global(&self) -> Result<(), Duration> {
        self.global.as_ref().map_or(Ok(()), GlobalRate::check)
    }

    /// Resolves when the global rate is reloaded, if there is one.
    pub(super) fn next_global_reload(&self) -> Option<Pin<Box<OwnedNotified>>> {
        self.global.as_ref().map(GlobalRate::next_reload)
    }

    /// Whether the global rate keeps the service from being ready: in backpressure
    /// mode, unless in dry run.
    pub(super) fn has_global_backpressure(&self) -> bool {
        self.global.is_some()
            && self.global_mode == Mode::Backpressure
            && !self.refusal.is_dry_run()
    }

    fn tracked_peers(&self) -> usize {
        self.per_peer
            .as_ref()
            .map_or(0, |per_peer| per_peer.table.len())
    }
}

impl PerPeer {
    /// Puts `quota` in force, and the sweep schedule it needs. A peer's word is the time
    /// its bucket is full again: how far that is ahead of now is what the peer used,
    /// counted in the old rate's intervals, so it is rescaled to the new rate's.
    ///
    /// The table is rescaled before the new limiter is put in force: a connection
    /// checked meanwhile is counted at the old rate, once. The other way round, one
    /// checked by the new limiter before the walk reached its key would have its word,
    /// already at the new rate's scale, rescaled again.
    fn reload(&self, quota: Quota, clock: TokioClock) {
        let mut in_force = self.in_force.lock().unwrap_or_else(PoisonError::into_inner);
        let (old, new) = (in_force.replenish_interval(), quota.replenish_interval());
        if old != new {
            let now = clock.now().as_u64();
            self.table
                .rewrite(|full_at| rescaled(full_at, now, old, new));
        }
        self.limiter
            .store(Arc::new(keyed_limiter(quota, &self.table, clock)));
        self.sweep_every
            .store(sweep_interval(quota), Ordering::Relaxed);
        *in_force = quota;
    }

    /// Gives back the connection a check took from `at`'s rate, which had stored
    /// `after` over `before`: the bucket is as it was, and a peer the check added is
    /// taken out of the table again. If another connection of the peer changed the word
    /// since, what this one spent is taken off it.
    fn give_back(&self, at: &Located, before: Option<u64>, after: u64, now: Nanos) {
        if before.is_none() && self.table.remove_if_still(at, after) {
            return;
        }
        // The check stored the later of `before` and now, plus what the connection spent.
        let spent = after.saturating_sub(before.unwrap_or(0).max(now.as_u64()));
        let _ = self.table.change(at, |word| {
            Ok::<_, Infallible>(((), word.map(|word| word.saturating_sub(spent))))
        });
    }

    /// Makes sure a task forgets refilled peers. It holds the state weakly and ends
    /// after the last clone of the layer is dropped.
    fn start_janitor(&self, shared: &Arc<Shared>) {
        self.janitor.ensure(shared, SWEEP_LOOK_EVERY, |shared| {
            if let Some(per_peer) = &shared.per_peer {
                per_peer.sweep_if_due(shared.clock.now());
            }
        });
    }

    /// Forgets refilled peers once the rate in force says it is time. The task looks
    /// every second rather than sleeping out a period, so that a rate reloaded to a
    /// faster one is swept on its schedule, not on the old rate's.
    fn sweep_if_due(&self, now: Nanos) {
        let now = now.as_u64();
        let since = now.saturating_sub(self.swept_at.load(Ordering::Relaxed));
        // Looks come a whole number of looks after the last sweep, give or take the
        // timer's precision: half a look of leeway, so that none is missed for a hair.
        let leeway = u64::try_from((SWEEP_LOOK_EVERY / 2).as_nanos()).unwrap_or(u64::MAX);
        if since.saturating_add(leeway) < self.sweep_every.load(Ordering::Relaxed) {
            return;
        }
        self.swept_at.store(now, Ordering::Relaxed);
        self.limiter.load().retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line() {
        let stats = RateLimitStats {
            admitted: 40,
            exempt: 2,
            untracked: 0,
            dry_run_refusals: 1,
            refused_peer_rate: 10,
            refused_global_rate: 2,
            refused_table_full: 0,
            tracked_peers: 5,
        };
        assert_eq!(
            stats.to_string(),
            "admitted 40 (exempt 2, untracked 0, dry run 1), refused 12 (peer rate 10, global rate 2, table full 0), 5 peers tracked"
        );
    }
}
