//! Deadlines from configured durations, which may be huge: `Duration::MAX` is a natural
//! way to say "forever", and must not panic when added to the clock.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep};

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

/// What shrinks deadlines under load: an overload manager's pressure, or nothing. Every
/// layer with a deadline holds one, so that the deadline code is the same with the
/// `overload` feature or without it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scaler {
    #[cfg(feature = "overload")]
    overload: Option<crate::overload::Overload>,
}

impl Scaler {
    /// Deadlines scaled by `overload`'s pressure.
    #[cfg(feature = "overload")]
    pub(crate) fn new(overload: &crate::overload::Overload) -> Self {
        Self {
            overload: Some(overload.clone()),
        }
    }

    /// The overload manager, if there is one.
    #[cfg(feature = "overload")]
    pub(crate) fn overload(&self) -> Option<&crate::overload::Overload> {
        self.overload.as_ref()
    }

    /// Whether deadlines may shrink, and so must be looked at before they fall.
    pub(crate) fn is_active(&self) -> bool {
        #[cfg(feature = "overload")]
        return self.overload.is_some();
        #[cfg(not(feature = "overload"))]
        false
    }

    /// What deadlines are multiplied by now: 1 without pressure, down to the overload
    /// manager's minimum at full pressure.
    pub(crate) fn factor(&self) -> f64 {
        #[cfg(feature = "overload")]
        if let Some(overload) = &self.overload {
            return overload.timeout_factor();
        }
        1.0
    }

    /// The least [`factor`](Self::factor) can be, at full pressure.
    pub(crate) fn min_factor(&self) -> f64 {
        #[cfg(feature = "overload")]
        if let Some(overload) = &self.overload {
            return overload.min_timeout_factor();
        }
        1.0
    }
}

/// `limit` multiplied by `factor` (at most 1).
pub(crate) fn scaled(limit: Duration, factor: f64) -> Duration {
    if factor >= 1.0 {
        return limit;
    }
    Duration::try_from_secs_f64(limit.as_secs_f64() * factor).unwrap_or(limit)
}

/// A deadline `limit` after its start that shrinks with the pressure. Without an
/// overload manager it is one timer; with one, it also looks every eighth of `limit`,
/// so that a rise in pressure takes effect within that.
#[pin_project]
#[derive(Debug)]
pub(crate) struct ShrinkingDeadline {
    start: Instant,
    limit: Duration,
    #[pin]
    sleep: Sleep,
}

impl ShrinkingDeadline {
    /// A deadline `limit` from now, scaled by `scaler`.
    pub(crate) fn after(limit: Duration, scaler: &Scaler) -> Self {
        let start = Instant::now();
        Self {
            start,
            limit,
            sleep: tokio::time::sleep_until(next_look(start, limit, scaler, start)),
        }
    }

    /// Ready once the deadline, scaled by `scaler` (the one it was made with), has
    /// passed, with the limit that applied.
    pub(crate) fn poll_passed(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        scaler: &Scaler,
    ) -> Poll<Duration> {
        let mut this = self.project();
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            let limit = scaled(*this.limit, scaler.factor());
            let now = Instant::now();
            if now >= deadline_from(*this.start, limit) {
                return Poll::Ready(limit);
            }
            let look = next_look(*this.start, *this.limit, scaler, now);
            this.sleep.as_mut().reset(look);
        }
    }
}

/// When a deadline of `limit` from `start` is next worth a look, at `now`: when it falls
/// at the current pressure, or within an eighth of `limit` if the pressure may change it.
fn next_look(start: Instant, limit: Duration, scaler: &Scaler, now: Instant) -> Instant {
    let due = deadline_from(start, scaled(limit, scaler.factor()));
    if scaler.is_active() {
        due.min(deadline_from(now, limit / 8))
    } else {
        due
    }
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
