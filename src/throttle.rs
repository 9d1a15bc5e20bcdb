use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// Lets at most one log event through per interval, and counts the ones it held back,
/// so that an attack or a failing syscall cannot flood the logs. Lock-free: callers on
/// every thread share one throttle.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    origin: Instant,
    interval_nanos: u64,
    next_allowed_nanos: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            origin: Instant::now(),
            interval_nanos: duration_nanos(interval),
            next_allowed_nanos: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if this event may be logged, `n` being how many were held back since the
    /// last one that was; `None` if it must be dropped.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = duration_nanos(self.origin.elapsed());
        let next = self.next_allowed_nanos.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_allowed_nanos
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_nanos),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lets_one_event_through_per_interval_and_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(1));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);

        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(throttle.allow(), None);

        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(throttle.allow(), Some(3));
        assert_eq!(throttle.allow(), None);
    }
}
