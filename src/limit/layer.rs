use std::{
    sync::{
        Arc,
        atomic::{AtomicIsize, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tower_layer::Layer;

use super::ConnectionLimit;
use crate::{
    ConfigError,
    admission::{Mode, Refusal, Refusals, refusal_builder_methods},
    config::nonzero,
    counter::Counter,
    striped::{Handle, Hoards, Striped, stripes},
    throttle::LogThrottle,
};

/// How far evictions may take a full cap over: one connection still closing for every
/// this many of the cap (6 %). A burst of newcomers is admitted as fast as `accept`
/// runs, faster than evicted connections finish closing; with one for every 64, the
/// siege's crowds had a newcomer in two refused while idle connections were there to
/// evict.
#[cfg(feature = "overload")]
const CAP_SHARE_PER_EVICTION: usize = 16;

/// Caps the connections served at once. See the [module documentation](super).
///
/// Clones share one cap: keep a clone to read [`stats`](Self::stats).
#[derive(Debug, Clone)]
pub struct ConnectionLimitLayer {
    shared: Striped<Shared>,
}

/// Builds a [`ConnectionLimitLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ConnectionLimitBuilder {
    max: usize,
    mode: Mode,
    refusal: Refusal,
    #[cfg(feature = "overload")]
    overload: Option<crate::overload::Overload>,
}

/// What a [`ConnectionLimitLayer`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimitStats {
    /// Connections admitted so far.
    pub admitted: u64,
    /// Of those, connections over the cap served anyway in [dry
    /// run](ConnectionLimitBuilder::dry_run).
    pub dry_run_refusals: u64,
    /// Connections refused so far.
    pub refused: u64,
    /// Connections being served now.
    pub live: usize,
    /// The cap.
    pub limit: usize,
}

/// One line: `live 12/100, admitted 40 (dry run 0), refused 3`.
impl std::fmt::Display for ConnectionLimitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "live {}/{}, admitted {} (dry run {}), refused {}",
            self.live, self.limit, self.admitted, self.dry_run_refusals, self.refused
        )
    }
}

impl ConnectionLimitLayer {
    /// A cap of `max_connections`, refusing connections over it.
    pub fn builder(max_connections: usize) -> ConnectionLimitBuilder {
        ConnectionLimitBuilder {
            max: max_connections,
            mode: Mode::Refuse,
            refusal: Refusal::default(),
            #[cfg(feature = "overload")]
            overload: None,
        }
    }

    /// Counters, read without locking.
    pub fn stats(&self) -> ConnectionLimitStats {
        let shared = &self.shared;
        ConnectionLimitStats {
            admitted: shared.admitted.get(),
            dry_run_refusals: shared.refused.dry_run(),
            refused: shared.refused.refused(),
            live: shared.live(),
            limit: shared.max(),
        }
    }

    // An accept loop that waits for room (backpressure) is ready in dry run: no
    // connection's end, which wakes it otherwise, would then.
    crate::admission::dry_run_switch!(|shared| shared.freed.notify_waiters());

    /// Changes the cap of this layer and its clones, for a reload without a restart.
    /// Live connections are kept: under a lower cap, new ones are refused (or wait, in
    /// backpressure mode) until enough have ended. With an overload manager, they evict
    /// idle connections again only once the live count is within the evictions'
    /// allowance of the new cap (one for every 16 of it).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a cap of 0; the cap is then unchanged.
    pub fn set_max(&self, max_connections: usize) -> Result<(), ConfigError> {
        let max = nonzero(max_connections, "max_connections")?;
        self.shared.set_max(max);
        // A higher cap may have room for connections waiting in backpressure mode.
        self.shared.freed.notify_waiters();
        Ok(())
    }
}

impl ConnectionLimitBuilder {
    /// Over the cap, stop accepting instead of refusing: the service is not ready while
    /// full.
    pub fn backpressure(mut self) -> Self {
        self.mode = Mode::Backpressure;
        self
    }

    refusal_builder_methods!();

    /// Counts the live connections in `overload`'s pressure and, with its idle eviction
    /// on, at the cap, asks an idle connection to close to make room for a new one
    /// instead of refusing it: the new one is admitted at once. In backpressure mode,
    /// where a new connection waits unseen in the backlog, nothing is evicted; nor in
    /// dry run, which serves the new one over the cap. See the
    /// [`overload`](crate::overload) module.
    #[cfg(feature = "overload")]
    pub fn overload(mut self, overload: &crate::overload::Overload) -> Self {
        self.overload = Some(overload.clone());
        self
    }

    /// # Errors
    ///
    /// [`ConfigError::Zero`] if the cap is 0; [`ConfigError::Inconsistent`] with an
    /// overload manager already given to another cap.
    pub fn build(self) -> Result<ConnectionLimitLayer, ConfigError> {
        let max = nonzero(self.max, "max_connections")?;
        let shared = Striped::new(Shared {
            max: AtomicUsize::new(max),
            batch: AtomicUsize::new(batch_for(max)),
            pool: Pool(AtomicIsize::new(signed(max))),
            hoards: Hoards::new(),
            mode: self.mode,
            freed: Arc::new(Notify::new()),
            refusal: self.refusal,
            log: LogThrottle::new(Duration::from_secs(1)),
            admitted: Counter::default(),
            refused: Refusals::new("connection_limit", "connection_limit"),
            // In backpressure mode nothing is evicted, even when two accept loops sharing
            // the cap both saw its last slot free: the one that loses the race is refused.
            #[cfg(feature = "overload")]
            evict: self
                .overload
                .as_ref()
                .filter(|_| self.mode != Mode::Backpressure)
                .and_then(|overload| overload.registry()),
        });
        // The manager reads the live count.
        #[cfg(feature = "overload")]
        if let Some(overload) = &self.overload {
            overload.watch_cap(shared.arc().clone())?;
        }
        Ok(ConnectionLimitLayer { shared })
    }
}

impl<S> Layer<S> for ConnectionLimitLayer {
    type Service = ConnectionLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectionLimit::new(inner, self.shared.clone())
    }
}

/// The most slots a stripe takes from the pool at once.
const MOST_BATCH: usize = 32;

/// How many slots a stripe takes from the pool at once under a cap of `max`: up to
/// [`MOST_BATCH`], and 0, every slot taken from the pool and given back to it, under a
/// cap below 16 per stripe (128 on up to 8 threads), where the pool is rarely fought
/// over and hoards would be a large share of the cap.
fn batch_for(max: usize) -> usize {
    (max / (16 * stripes())).min(MOST_BATCH)
}

fn signed(slots: usize) -> isize {
    isize::try_from(slots).unwrap_or(isize::MAX)
}

/// The state every clone shares.
///
/// The cap's slots are counted per stripe: a stripe takes a batch of slots from the
/// pool, then admits from its own hoard, and a connection gives its slot back to the
/// hoard it came from, so that most connections write only their own stripe's cache
/// lines. A stripe keeps at most two batches; beyond, and whenever the pool is empty, a
/// slot goes back to the pool. A stripe whose hoard and the pool are empty takes a slot
/// from another stripe's hoard before refusing, so the cap is exact: never more live
/// connections than the cap (but for evictions and dry run), and no refusal while a
/// slot is free in some hoard.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The cap; changed by a reload.
    max: AtomicUsize,
    /// See [`batch_for`]; changed by a reload.
    batch: AtomicUsize,
    pool: Pool,
    hoards: Hoards,
    pub(super) mode: Mode,
    /// Notified when a slot frees, for services waiting in backpressure mode.
    pub(super) freed: Arc<Notify>,
    pub(super) refusal: Refusal,
    pub(super) log: LogThrottle,
    pub(super) admitted: Counter,
    pub(super) refused: Refusals,
    /// The idle connections an overload manager may evict to make room; `None` in
    /// backpressure mode.
    #[cfg(feature = "overload")]
    pub(super) evict: Option<Arc<crate::overload::Registry>>,
}

/// The slots no stripe holds: the cap less the live connections and the hoards. Below
/// zero while more connections are live than the cap allows (a lowered cap, evictions,
/// dry run). On its own cache line: the stripes take from it a batch at a time.
#[derive(Debug)]
#[repr(align(64))]
struct Pool(AtomicIsize);

impl Shared {
    pub(crate) fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Connections being served now: a sum of counts read one after the other, so it
    /// may be off by the connections admitted or ended while it is read.
    pub(crate) fn live(&self) -> usize {
        self.live_at_most().saturating_sub(self.hoards.held())
    }

    /// At least [`live`](Self::live), from the pool alone: what the stripes hoard is
    /// not live either, but summing it reads every stripe's line.
    pub(crate) fn live_at_most(&self) -> usize {
        usize::try_from(signed(self.max()) - self.pool.0.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// The live connections against the cap.
    pub(crate) fn load(&self) -> f64 {
        self.load_at(self.live())
    }

    /// `live` connections against the cap.
    pub(crate) fn load_at(&self, live: usize) -> f64 {
        live as f64 / self.max() as f64
    }

    pub(super) fn has_room(&self) -> bool {
        self.pool.0.load(Ordering::Acquire) > 0 || self.hoards.any()
    }

    fn set_max(&self, max: usize) {
        let old = self.max.swap(max, Ordering::Relaxed);
        self.batch.store(batch_for(max), Ordering::Relaxed);
        // The hoards go back to the pool: under a lower cap, they may be more than the
        // cap still has room for.
        let change = signed(max) - signed(old) + signed(self.hoards.drain());
        self.pool.0.fetch_add(change, Ordering::AcqRel);
    }

    /// Takes a slot for a connection of `stripe`: from its hoard, from the pool, or
    /// from another stripe's hoard.
    fn take_slot(&self, stripe: usize) -> bool {
        if self.hoards.take(stripe) {
            return true;
        }
        let batch = signed(self.batch.load(Ordering::Relaxed).max(1));
        let pool = &self.pool.0;
        if let Ok(before) = pool.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
            (free > 0).then(|| free - free.min(batch))
        }) {
            let spare = before.min(batch) - 1;
            if spare > 0 {
                self.hoards.put(stripe, spare.unsigned_abs());
            }
            return true;
        }
        self.hoards.take_any()
    }

    /// Gives a slot back to `stripe`'s hoard, or to the pool.
    fn give_slot(&self, stripe: usize) {
        let batch = self.batch.load(Ordering::Relaxed);
        let pool = &self.pool.0;
        if batch == 0 || pool.load(Ordering::Relaxed) <= 0 {
            pool.fetch_add(1, Ordering::AcqRel);
        } else if self.hoards.put(stripe, 1) > 2 * batch && self.hoards.take_many(stripe, batch) {
            pool.fetch_add(signed(batch), Ordering::AcqRel);
        }
    }

    /// Whether this cap makes room by evicting idle connections.
    #[cfg(feature = "overload")]
    pub(crate) fn evicts(&self) -> bool {
        self.evict.is_some()
    }

    /// Asks an idle connection to close to make room, if an overload manager evicts and
    /// few connections are closing that way already; whether one was asked. The cap is
    /// exceeded by those still closing: at most one for every
    /// [`CAP_SHARE_PER_EVICTION`] connections of the cap.
    ///
    /// None is asked in dry run, which enforces nothing: the newcomer is served as a
    /// refusal counted, and no real connection closes for it. Nor while the live count
    /// is over the cap by more than the evictions under way (a reload has lowered the
    /// cap below it, by however little): a newcomer would take the place of the
    /// connection it evicts, and the live count would never come down to the new cap;
    /// it is refused, as [`set_max`](super::ConnectionLimitLayer::set_max) says, until
    /// enough connections have ended. (An evicted connection leaves the evictions under
    /// way a moment before its slot is back: a newcomer that looks in that moment is
    /// refused.)
    #[cfg(feature = "overload")]
    pub(super) fn evict_idle(&self) -> bool {
        let Some(registry) = &self.evict else {
            return false;
        };
        if self.refusal.is_dry_run() {
            return false;
        }
        // Each eviction under way explains one connection over the cap.
        if self.pool.0.load(Ordering::Acquire) < -signed(registry.evicting()) {
            return false;
        }
        registry.evict_one(self.max().div_ceil(CAP_SHARE_PER_EVICTION))
    }

    /// Whether a full cap keeps the service from being ready: in backpressure mode,
    /// unless in dry run.
    pub(super) fn waits_for_room(&self) -> bool {
        self.mode == Mode::Backpressure && !self.refusal.is_dry_run()
    }
}

/// A connection's place under the cap, held by [`ConnectionLimit`](super::ConnectionLimit)'s
/// future while the connection lives: taken through this thread's handle, and given back
/// to the same stripe when the connection ends or the future is dropped.
#[derive(Debug)]
pub struct GlobalSlot(Arc<Handle<Shared>>);

impl GlobalSlot {
    pub(super) fn try_acquire(shared: &Striped<Shared>) -> Option<Self> {
        let handle = shared.local();
        if !handle.take_slot(handle.stripe()) {
            return None;
        }
        handle.admitted.add();
        Some(Self(handle))
    }

    /// A slot over the cap, for a connection admitted in the place of an idle one
    /// being evicted, or in dry run.
    pub(super) fn over_cap(shared: &Striped<Shared>) -> Self {
        shared.pool.0.fetch_sub(1, Ordering::AcqRel);
        shared.admitted.add();
        Self(shared.local())
    }
}

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        let shared = &self.0;
        shared.give_slot(shared.stripe());
        if shared.waits_for_room() {
            shared.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line() {
        let stats = ConnectionLimitStats {
            admitted: 40,
            dry_run_refusals: 1,
            refused: 3,
            live: 12,
            limit: 100,
        };
        assert_eq!(
            stats.to_string(),
            "live 12/100, admitted 40 (dry run 1), refused 3"
        );
    }
}
