use std::cell::Cell;

use governor::{clock::Clock, nanos::Nanos};
use tokio::time::Instant;

thread_local! {
    /// The instant every [`TokioClock`] on this thread reads while [`at`] runs.
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `check` with every [`TokioClock`] on this thread reading `now`: the per-peer
/// and the global checks of one connection share one clock read.
pub(super) fn at<R>(now: Instant, check: impl FnOnce() -> R) -> R {
    /// Clears the instant however `check` ends, a panic included.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            NOW.set(None);
        }
    }
    NOW.set(Some(now));
    let _reset = Reset;
    check()
}

/// A [`governor`] clock that reads tokio's clock, so rate limits follow
/// `tokio::time::pause` and `advance` in tests (governor's own clocks do not).
///
/// Its instants are the time since the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let now = NOW.get().unwrap_or_else(Instant::now);
        Nanos::from(now.saturating_duration_since(self.origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn reads_the_shared_instant_while_one_is_set() {
        let clock = TokioClock::new();
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            at(later, || clock.now()),
            Nanos::from(Duration::from_secs(5))
        );
        assert_eq!(clock.now(), Nanos::from(0), "cleared afterwards");
    }

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let clock = TokioClock::new();
        assert_eq!(clock.now(), Nanos::from(0));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(Duration::from(clock.now()), Duration::from_millis(1500));
    }
}
