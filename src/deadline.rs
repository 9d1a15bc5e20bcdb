//! Deadlines from configured durations, which may be huge: `Duration::MAX` is a natural
//! way to say "forever", and must not panic when added to the clock.

use std::time::Duration;

use tokio::time::Instant;

/// The furthest ahead any deadline is set: thirty years, tokio's own "far future". Later
/// than any process lives, and far enough from the clock's limits for every sum.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// The instant `after` from now, or [`FAR_FUTURE`] from now if `after` is longer:
/// a duration meant as "forever" waits as good as forever instead of overflowing.
pub(crate) fn deadline_after(after: Duration) -> Instant {
    deadline_from(Instant::now(), after)
}

/// The instant `after` from `start`, or [`FAR_FUTURE`] from it if `after` is longer.
pub(crate) fn deadline_from(start: Instant, after: Duration) -> Instant {
    start + after.min(FAR_FUTURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_huge_duration_saturates_at_the_far_future() {
        let now = Instant::now();
        assert_eq!(deadline_after(Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            deadline_after(Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }
}
