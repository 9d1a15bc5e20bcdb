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
    admission::{Mode, Refusal, refusal_builder_methods},
    config::nonzero,
    counter::Counter,
    throttle::LogThrottle,
};

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
}

/// What a [`ConnectionLimitLayer`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimitStats {
    /// Connections admitted so far.
    pub admitted: u64,
    /// Connections refused so far.
    pub refused: u64,
    /// Connections being served now.
    pub live: usize,
    /// The cap.
    pub limit: usize,
}

impl ConnectionLimitLayer {
    /// A cap of `max_connections`, refusing connections over it.
    pub fn builder(max_connections: usize) -> ConnectionLimitBuilder {
        ConnectionLimitBuilder {
            max: max_connections,
            mode: Mode::Refuse,
            refusal: Refusal::default(),
        }
    }

    /// Counters, read without locking.
    pub fn stats(&self) -> ConnectionLimitStats {
        let shared = &self.shared;
        ConnectionLimitStats {
            admitted: shared.admitted.get(),
            refused: shared.refused.get(),
            live: shared.live.load(Ordering::Relaxed),
            limit: shared.max,
        }
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

    /// # Errors
    ///
    /// [`ConfigError::Zero`] if the cap is 0.
    pub fn build(self) -> Result<ConnectionLimitLayer, ConfigError> {
        Ok(ConnectionLimitLayer {
            shared: Arc::new(Shared {
                max: nonzero(self.max, "max_connections")?,
                mode: self.mode,
                live: AtomicUsize::new(0),
                freed: Arc::new(Notify::new()),
                refusal: self.refusal,
                log: LogThrottle::new(Duration::from_secs(1)),
                admitted: Counter::default(),
                refused: Counter::default(),
            }),
        })
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
    pub(super) max: usize,
    pub(super) mode: Mode,
    live: AtomicUsize,
    /// Notified when a slot frees, for services waiting in backpressure mode.
    pub(super) freed: Arc<Notify>,
    pub(super) refusal: Refusal,
    pub(super) log: LogThrottle,
    pub(super) admitted: Counter,
    pub(super) refused: Counter,
}

impl Shared {
    pub(super) fn has_room(&self) -> bool {
        self.live.load(Ordering::Acquire) < self.max
    }

    pub(super) fn try_acquire(self: &Arc<Self>) -> Option<GlobalSlot> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < self.max).then_some(live + 1)
            })
            .ok()?;
        self.admitted.add();
        Some(GlobalSlot::new(self.clone()))
    }

    pub(super) fn release(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        if self.mode == Mode::Backpressure {
            self.freed.notify_waiters();
        }
    }
}
