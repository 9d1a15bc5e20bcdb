use governor::{clock::Clock, nanos::Nanos};
use tokio::time::Instant;

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
        Nanos::from(self.origin.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let clock = TokioClock::new();
        assert_eq!(clock.now(), Nanos::from(0));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(Duration::from(clock.now()), Duration::from_millis(1500));
    }
}
