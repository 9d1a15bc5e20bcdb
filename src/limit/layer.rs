use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tower_layer::Layer;

use super::{ConnectionLimit, GlobalSlot};
use crate::{
    ConfigError,
    admission::{Mode, Refusal, Refusals, refusal_builder_methods},
    config::nonzero,
    counter::Counter,
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
    shared: Arc<Shared>,
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
            live: shared.live.load(Ordering::Relaxed),
            limit: shared.max(),
        }
    }

    crate::admission::dry_run_switch!();

    /// Changes the cap of this layer and its clones, for a reload without a restart.
    /// Live connections are kept: under a lower cap, new ones are refused (or wait, in
    /// backpressure mode) until enough have ended.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a cap of 0; the cap is then unchanged.
    pub fn set_max(&self, max_connections: usize) -> Result<(), ConfigError> {
        let max = nonzero(max_connections, "max_connections")?;
        self.shared.max.store(max, Ordering::Relaxed);
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
    /// where a new connection waits unseen in the backlog, nothing is evicted. See the
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
        let shared = Arc::new(Shared {
            max: AtomicUsize::new(nonzero(self.max, "max_connections")?),
            mode: self.mode,
            live: AtomicUsize::new(0),
            freed: Arc::new(Notify::new()),
            refusal: self.refusal,
            log: LogThrottle::new(Duration::from_secs(1)),
            admitted: Counter::default(),
            refused: Refusals::new("connection_limit", "connection_limit"),
            #[cfg(feature = "overload")]
            evict: self
                .overload
                .as_ref()
                .and_then(|overload| overload.registry()),
        });
        // The manager reads the live count.
        #[cfg(feature = "overload")]
        if let Some(overload) = &self.overload {
            overload.watch_cap(shared.clone())?;
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

/// The state every clone shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The cap; changed by a reload.
    max: AtomicUsize,
    pub(super) mode: Mode,
    live: AtomicUsize,
    /// Notified when a slot frees, for services waiting in backpressure mode.
    pub(super) freed: Arc<Notify>,
    pub(super) refusal: Refusal,
    pub(super) log: LogThrottle,
    pub(super) admitted: Counter,
    pub(super) refused: Refusals,
    /// The idle connections an overload manager may evict to make room.
    #[cfg(feature = "overload")]
    pub(super) evict: Option<Arc<crate::overload::Registry>>,
}

impl Shared {
    pub(super) fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Connections being served now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The live connections against the cap.
    pub(crate) fn load(&self) -> f64 {
        self.live() as f64 / self.max() as f64
    }

    pub(super) fn has_room(&self) -> bool {
        self.live.load(Ordering::Acquire) < self.max()
    }

    pub(super) fn try_acquire(self: &Arc<Self>) -> Option<GlobalSlot> {
        let max = self.max();
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < max).then_some(live + 1)
            })
            .ok()?;
        self.admitted.add();
        Some(GlobalSlot::new(self.clone()))
    }

    /// A slot over the cap, for a connection admitted in the place of an idle one
    /// being evicted, or in dry run.
    pub(super) fn acquire_over_cap(self: &Arc<Self>) -> GlobalSlot {
        self.live.fetch_add(1, Ordering::AcqRel);
        self.admitted.add();
        GlobalSlot::new(self.clone())
    }

    /// Asks an idle connection to close to make room, if an overload manager evicts and
    /// few connections are closing that way already; whether one was asked. The cap is
    /// exceeded by those still closing: at most one for every
    /// [`CAP_SHARE_PER_EVICTION`] connections of the cap.
    #[cfg(feature = "overload")]
    pub(super) fn evict_idle(&self) -> bool {
        self.evict
            .as_ref()
            .is_some_and(|registry| registry.evict_one(self.max().div_ceil(CAP_SHARE_PER_EVICTION)))
    }

    /// Whether a full cap keeps the service from being ready: in backpressure mode,
    /// unless in dry run.
    pub(super) fn waits_for_room(&self) -> bool {
        self.mode == Mode::Backpressure && !self.refusal.is_dry_run()
    }

    pub(super) fn release(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        if self.waits_for_room() {
            self.freed.notify_waiters();
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
