//! What a connection's stream has done, and when its deadlines fall.
//!
//! [`TimedIo`](super::TimedIo) counts the bytes it moves here on every read and write: a
//! relaxed load and store, no clock read. The connection's timer reads the counts only
//! when it fires, and works out from them whether a deadline has passed or when to look
//! again. That is the lazy deadline: one timer per connection, re-armed when it fires,
//! never per read.
//!
//! For the idle timeout the timer samples the counts: it looks at least every eighth of
//! the timeout, and a connection whose counts have not moved since a look is idle since
//! that look. So an idle connection is closed between S and S + S/8 after its last byte,
//! for a read that costs nanoseconds. Requests are timed from the clock, read once when
//! each starts.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use super::TimeoutError;

/// No request in progress.
const IDLE: u64 = u64::MAX;
/// The idle timeout is sampled this many times over its length.
const IDLE_SAMPLES: u32 = 8;

/// The deadlines watched on one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deadlines {
    pub(crate) first_byte: Option<Duration>,
    pub(crate) idle: Option<Duration>,
    pub(crate) request: Option<RequestLimit>,
    pub(crate) lifetime: Option<Lifetime>,
}

/// How long a request may take once its first byte has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestLimit {
    pub(crate) base: Duration,
    /// Apache's `MinRate`: each `bytes_per_second` bytes received extends the limit by
    /// one second, up to `max`.
    pub(crate) min_rate: Option<MinRate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MinRate {
    pub(crate) bytes_per_second: u64,
    pub(crate) max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) after: Duration,
    pub(crate) grace: Duration,
}

impl Deadlines {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What the timer found when it looked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// A deadline has passed: close now.
    Expired(TimeoutError),
    /// The connection has lived its time: ask it to close gracefully, and look again at
    /// the returned instant, the end of its grace.
    WindDown(Instant),
    /// Nothing has passed: look again then, or never.
    Next(Option<Instant>),
}

/// One connection's activity, shared by its stream and its timer. Times are nanoseconds
/// since the connection started.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// When the request in progress started, or [`IDLE`].
    request_started: AtomicU64,
    /// `bytes_read` when it started.
    request_bytes_start: AtomicU64,
    /// Whether the next byte read starts a request.
    request_armed: AtomicBool,
    /// Set when a request starts: its deadline may come before the timer's.
    rearm: AtomicBool,
    /// Whether the timer's task is polling the protocol right now, and so will look at
    /// `rearm` without being woken.
    polling: AtomicBool,
    wound_down: AtomicBool,
    /// The timer's task, woken to re-arm when a request starts.
    timer: AtomicWaker,
}

impl Activity {
    /// Activity starting now. With `requests_auto_start`, the first byte read (and the
    /// first after each finished request) starts a request.
    pub(crate) fn new(requests_auto_start: bool) -> Self {
        Self {
            started: Instant::now(),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            request_started: AtomicU64::new(IDLE),
            request_bytes_start: AtomicU64::new(0),
            request_armed: AtomicBool::new(requests_auto_start),
            rearm: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            wound_down: AtomicBool::new(false),
            timer: AtomicWaker::new(),
        }
    }

    fn now(&self) -> u64 {
        nanos(self.started.elapsed())
    }

    /// `n` bytes were read. Only the stream writes the counts, so a load and a store
    /// suffice where an atomic add would cost more.
    pub(crate) fn on_read(&self, n: usize) {
        let before = self.bytes_read.load(Ordering::Relaxed);
        self.bytes_read.store(before + n as u64, Ordering::Relaxed);
        if self.request_armed.load(Ordering::Relaxed) {
            self.request_armed.store(false, Ordering::Relaxed);
            self.start_request_at(self.now(), before);
        }
    }

    /// `n` bytes were written.
    pub(crate) fn on_write(&self, n: usize) {
        let before = self.bytes_written.load(Ordering::Relaxed);
        self.bytes_written
            .store(before + n as u64, Ordering::Relaxed);
    }

    fn start_request_at(&self, now: u64, bytes_before: u64) {
        if self.request_started.load(Ordering::Relaxed) != IDLE {
            return;
        }
        self.request_bytes_start
            .store(bytes_before, Ordering::Relaxed);
        self.request_started.store(now, Ordering::Release);
        // Sequentially consistent with `set_polling` and `take_rearm`: if this sees the
        // timer's task polling, that task's `take_rearm` comes after this store.
        self.rearm.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.timer.wake();
        }
    }

    /// The timer's task starts or stops polling the protocol.
    pub(crate) fn set_polling(&self, polling: bool) {
        self.polling.store(polling, Ordering::SeqCst);
    }

    /// Starts a request now, unless one is in progress.
    pub(crate) fn start_request(&self) {
        self.request_armed.store(false, Ordering::Relaxed);
        self.start_request_at(self.now(), self.bytes_read.load(Ordering::Relaxed));
    }

    /// Ends the request in progress; the next byte read starts the next one.
    pub(crate) fn finish_request(&self) {
        self.request_started.store(IDLE, Ordering::Release);
        self.request_armed.store(true, Ordering::Relaxed);
    }

    /// No more requests on this connection are timed (HTTP/2, whose frames are not
    /// requests).
    pub(crate) fn stop_timing_requests(&self) {
        self.request_armed.store(false, Ordering::Relaxed);
        self.request_started.store(IDLE, Ordering::Release);
    }

    /// Registers the timer's task, to be woken when a request starts.
    pub(crate) fn register_timer(&self, waker: &std::task::Waker) {
        self.timer.register(waker);
    }

    /// Whether a request started since the timer last looked.
    pub(crate) fn take_rearm(&self) -> bool {
        self.rearm.swap(false, Ordering::SeqCst)
    }

    /// Works out what the deadlines say now. `idle` is the timer's own record of the
    /// counts it last saw.
    pub(crate) fn check(&self, deadlines: &Deadlines, idle: &mut IdleWatch) -> Check {
        let now = self.now();
        let mut next = Earliest(None);

        if let Some(limit) = deadlines.first_byte
            && self.bytes_read.load(Ordering::Relaxed) == 0
            && next.passed(nanos(limit), now)
        {
            return Check::Expired(TimeoutError::FirstByte(limit));
        }
        if let Some(limit) = deadlines.idle {
            let moved = self.bytes_read.load(Ordering::Relaxed)
                + self.bytes_written.load(Ordering::Relaxed);
            if moved != idle.moved {
                idle.moved = moved;
                idle.quiet_since = now;
            }
            if next.passed(idle.quiet_since.saturating_add(nanos(limit)), now) {
                return Check::Expired(TimeoutError::Idle(limit));
            }
            next.passed(now + nanos(limit / IDLE_SAMPLES), now);
        }
        if let Some(limit) = deadlines.request {
            let started = self.request_started.load(Ordering::Acquire);
            if started != IDLE {
                let allowed = self.request_allowance(&limit);
                if next.passed(started.saturating_add(nanos(allowed)), now) {
                    return Check::Expired(TimeoutError::Request(allowed));
                }
            }
        }
        if let Some(lifetime) = deadlines.lifetime {
            let wind_down = nanos(lifetime.after);
            let cut = wind_down.saturating_add(nanos(lifetime.grace));
            if self.wound_down.load(Ordering::Relaxed) {
                if next.passed(cut, now) {
                    return Check::Expired(TimeoutError::Lifetime(lifetime.after));
                }
            } else if now >= wind_down {
                self.wound_down.store(true, Ordering::Relaxed);
                next.passed(cut, now);
                return Check::WindDown(self.instant(next.0.unwrap_or(cut)));
            } else {
                next.passed(wind_down, now);
            }
        }
        Check::Next(next.0.map(|at| self.instant(at)))
    }

    /// How long the request in progress may take: the base, extended by its bytes at
    /// the minimum rate, up to the maximum.
    fn request_allowance(&self, limit: &RequestLimit) -> Duration {
        let Some(rate) = limit.min_rate else {
            return limit.base;
        };
        let received = self.bytes_read.load(Ordering::Relaxed)
            - self.request_bytes_start.load(Ordering::Relaxed);
        let earned = Duration::from_secs_f64(received as f64 / rate.bytes_per_second as f64);
        (limit.base + earned).min(rate.max)
    }

    fn instant(&self, at: u64) -> Instant {
        self.started + Duration::from_nanos(at)
    }
}

/// What the timer saw of the byte counts at its last look.
#[derive(Debug, Default)]
pub(crate) struct IdleWatch {
    /// Bytes read and written, all told.
    moved: u64,
    /// The look since which they have not moved.
    quiet_since: u64,
}

/// The earliest deadline still ahead.
struct Earliest(Option<u64>);

impl Earliest {
    /// Whether `deadline` has passed at `now`; if not, keeps it if it is the earliest.
    fn passed(&mut self, deadline: u64, now: u64) -> bool {
        if now >= deadline {
            return true;
        }
        self.0 = Some(self.0.map_or(deadline, |earliest| earliest.min(deadline)));
        false
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn at(activity: &Activity, n: u64) -> Check {
        Check::Next(Some(activity.started + secs(n)))
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_deadline_is_the_next_look() {
        let activity = Activity::new(false);
        let deadlines = Deadlines {
            first_byte: Some(secs(2)),
            idle: Some(secs(30)),
            lifetime: Some(Lifetime {
                after: secs(60),
                grace: secs(10),
            }),
            ..Deadlines::default()
        };
        let mut idle = IdleWatch::default();
        assert_eq!(activity.check(&deadlines, &mut idle), at(&activity, 2));
        activity.on_read(1);
        // Idle is sampled every eighth of its 30 s.
        assert_eq!(
            activity.check(&deadlines, &mut idle),
            Check::Next(Some(activity.started + Duration::from_millis(3750)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn min_rate_extends_a_request_up_to_its_maximum() {
        let activity = Activity::new(true);
        let limit = RequestLimit {
            base: secs(10),
            min_rate: Some(MinRate {
                bytes_per_second: 100,
                max: secs(20),
            }),
        };
        let deadlines = Deadlines {
            request: Some(limit),
            ..Deadlines::default()
        };
        activity.on_read(1);
        assert_eq!(
            activity.request_allowance(&limit),
            Duration::from_millis(10_010)
        );
        activity.on_read(499);
        assert_eq!(activity.request_allowance(&limit), secs(15));
        assert_eq!(
            activity.check(&deadlines, &mut IdleWatch::default()),
            at(&activity, 15)
        );
        activity.on_read(10_000);
        assert_eq!(activity.request_allowance(&limit), secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_request_arms_the_next_on_the_next_byte() {
        let activity = Activity::new(true);
        let deadlines = Deadlines {
            request: Some(RequestLimit {
                base: secs(10),
                min_rate: None,
            }),
            ..Deadlines::default()
        };
        let mut idle = IdleWatch::default();
        assert_eq!(activity.check(&deadlines, &mut idle), Check::Next(None));
        activity.on_read(3);
        assert!(activity.take_rearm());
        assert_eq!(activity.check(&deadlines, &mut idle), at(&activity, 10));
        activity.finish_request();
        assert_eq!(activity.check(&deadlines, &mut idle), Check::Next(None));
        tokio::time::advance(secs(100)).await;
        activity.on_read(1);
        assert_eq!(activity.check(&deadlines, &mut idle), at(&activity, 110));
    }
}
