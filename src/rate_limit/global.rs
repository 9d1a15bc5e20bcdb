//! The global rate, spent a batch at a time per thread stripe.
//!
//! One bucket for the whole server is one cache line every thread writes on every
//! connection. Instead, a stripe whose hoard is empty takes a batch of tokens from the
//! bucket at once and admits the next connections from its hoard, so that most
//! connections write only their own stripe's line.
//!
//! The slack: tokens taken but not yet spent were counted by the bucket when taken, so
//! a burst may exceed the bucket's by the tokens the hoards hold, at most
//! `stripes × (batch − 1)`, where a batch is an eighth of the burst shared out among the
//! stripes, at most [`MOST_BATCH`]. That is at most an eighth of the burst, and nothing
//! for a burst under 16 per stripe (128 on up to 8 threads), where every connection
//! takes its token from the bucket. Over time the rate is exact: every token spent was
//! taken from the bucket, and a stripe whose hoard and the bucket are both empty spends
//! a token another stripe hoards before it refuses, so that no hoard is left unspent.
//!
//! A reload keeps what the bucket has spent: the bucket it makes starts from the old
//! one's word, the time the bucket is full again, rescaled to a new rate as the
//! per-peer table's words are. Each bucket keeps its own word, so that a connection
//! checked by the old bucket as the reload replaces it writes in the old rate's units
//! to the old word only: it may be left out of the new bucket's count, never counted
//! at the wrong rate.

use std::{
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use governor::{
    Quota, RateLimiter,
    clock::Clock,
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{NotKeyed, StateStore},
};
use tokio::sync::{Notify, futures::OwnedNotified};

use super::{TokioClock, clock, layer::rescaled};
use crate::striped::{Hoards, local_stripe, stripes};

/// The most tokens a stripe takes from the bucket at once.
const MOST_BATCH: u32 = 16;

type Limiter = RateLimiter<NotKeyed, Level, TokioClock, NoOpMiddleware<Nanos>>;

#[derive(Debug)]
pub(super) struct GlobalRate {
    /// Replaced by a reload that changes the rate.
    bucket: ArcSwap<Bucket>,
    /// The bucket's quota, held by a reload while it replaces the bucket, so that two
    /// reloads carry its word over in turn.
    in_force: Mutex<Quota>,
    hoards: Hoards,
    clock: TokioClock,
    /// Told of a reload: an accept loop waiting for the old rate's next token looks
    /// again at once.
    reloaded: Arc<Notify>,
}

/// governor's state for one bucket: its theoretical arrival time, the time it is full
/// again, kept from the clock's origin (0 for a bucket never used), so that the bucket
/// a reload makes can start from it.
#[derive(Debug)]
struct Level {
    full_at: Arc<AtomicU64>,
    /// The limiter's start, from the clock's origin: governor counts from there.
    start: u64,
}

impl StateStore for Level {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _: &NotKeyed, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let from_start =
            |full_at: u64| (full_at != 0).then(|| Nanos::from(full_at.saturating_sub(self.start)));
        let mut full_at = self.full_at.load(Ordering::Acquire);
        loop {
            let (outcome, next) = decide(from_start(full_at))?;
            let next = next.as_u64().saturating_add(self.start);
            match self.full_at.compare_exchange_weak(
                full_at,
                next,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(outcome),
                Err(changed) => full_at = changed,
            }
        }
    }
}

#[derive(Debug)]
struct Bucket {
    limiter: Limiter,
    /// The limiter's [`Level`] word, for a reload to carry over.
    full_at: Arc<AtomicU64>,
    /// Tokens a stripe takes at once; none where each connection takes its own.
    batch: Option<NonZeroU32>,
}

impl Bucket {
    /// A bucket for `quota` whose word starts at `full_at`.
    fn new(quota: Quota, full_at: u64, clock: TokioClock) -> Self {
        let full_at = Arc::new(AtomicU64::new(full_at));
        let stripes = u32::try_from(stripes()).unwrap_or(u32::MAX);
        let batch = (quota.burst_size().get() / 8 / stripes).min(MOST_BATCH);
        // One reading of the clock for the limiter's start and the level's.
        let limiter = clock::at(tokio::time::Instant::now(), || {
            let level = Level {
                full_at: full_at.clone(),
                start: clock.now().as_u64(),
            };
            RateLimiter::new(quota, level, clock)
        });
        Self {
            limiter,
            full_at,
            batch: NonZeroU32::new(batch).filter(|batch| batch.get() > 1),
        }
    }
}

impl GlobalRate {
    pub(super) fn new(quota: Quota, clock: TokioClock) -> Self {
        Self {
            bucket: ArcSwap::from_pointee(Bucket::new(quota, 0, clock)),
            in_force: Mutex::new(quota),
            hoards: Hoards::new(),
            clock,
            reloaded: Arc::default(),
        }
    }

    /// Puts `quota` in force; the same quota changes nothing. What the bucket has spent
    /// is kept, counted in connections at the new rate (its word is rescaled to the
    /// new interval); tokens the stripes hoarded under the old rate are dropped, as
    /// spent. Whoever waits for the old rate's next token looks again.
    pub(super) fn set(&self, quota: Quota) {
        let mut in_force = self.in_force.lock().unwrap_or_else(PoisonError::into_inner);
        if *in_force == quota {
            return;
        }
        let (old, new) = (in_force.replenish_interval(), quota.replenish_interval());
        let full_at = self.bucket.load().full_at.load(Ordering::Acquire);
        let full_at = rescaled(full_at, self.clock.now().as_u64(), old, new);
        self.bucket
            .store(Arc::new(Bucket::new(quota, full_at, self.clock)));
        *in_force = quota;
        self.hoards.drain();
        self.reloaded.notify_waiters();
    }

    /// Resolves at the next reload; subscribed already, so a reload after this call is
    /// not missed.
    pub(super) fn next_reload(&self) -> Pin<Box<OwnedNotified>> {
        let mut reloaded = Box::pin(self.reloaded.clone().notified_owned());
        reloaded.as_mut().enable();
        reloaded
    }

    /// Takes one connection's token: from this stripe's hoard, the bucket, or, as a
    /// last resort, another stripe's hoard; or says how long until the bucket has one.
    pub(super) fn check(&self) -> Result<(), Duration> {
        let stripe = local_stripe();
        if self.hoards.take(stripe) {
            return Ok(());
        }
        let bucket = self.bucket.load();
        if let Some(batch) = bucket.batch
            && let Ok(Ok(())) = bucket.limiter.check_n(batch)
        {
            self.hoards.put(stripe, batch.get() as usize - 1);
            return Ok(());
        }
        bucket.limiter.check().or_else(|not_until| {
            // Tokens another stripe hoards were taken from the bucket already: spent
            // here rather than kept there by a stripe whose threads may admit no more.
            if self.hoards.take_any() {
                return Ok(());
            }
            Err(not_until.wait_time_from(self.clock.now()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens_taken(burst: u32) -> u32 {
        let quota = Quota::per_hour(NonZeroU32::new(1).unwrap())
            .allow_burst(NonZeroU32::new(burst).unwrap());
        let global = GlobalRate::new(quota, TokioClock::new());
        let mut admitted = 0;
        while global.check().is_ok() {
            admitted += 1;
            assert!(admitted <= burst, "more than the burst from one thread");
        }
        admitted
    }

    #[tokio::test(start_paused = true)]
    async fn one_thread_spends_the_burst_exactly() {
        for burst in [1, 7, 127, 128, 1000, 100_000] {
            assert_eq!(tokens_taken(burst), burst);
        }
    }

    #[test]
    fn threads_spend_no_token_the_bucket_did_not_give() {
        // No refill while the test runs: every token is the burst's.
        let quota = Quota::per_hour(NonZeroU32::new(1).unwrap())
            .allow_burst(NonZeroU32::new(10_000).unwrap());
        let global = GlobalRate::new(quota, TokioClock::new());
        let admitted: usize = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..20_000).take_while(|_| global.check().is_ok()).count()))
                .collect();
            threads
                .into_iter()
                .map(|thread| thread.join().unwrap())
                .sum()
        });
        // What the threads did not spend is still hoarded, and nothing else.
        assert_eq!(admitted + global.hoards.held(), 10_000);
        assert!(global.hoards.held() <= stripes() * (MOST_BATCH as usize - 1));
    }

    /// The cap takes a slot from another stripe's hoard before refusing; a rate whose
    /// bucket is spent while another stripe hoards tokens must not refuse either, or a
    /// stripe whose threads admit no more keeps its tokens for good and the rate is
    /// below what it was set to.
    #[test]
    fn a_stripe_is_not_refused_while_another_stripe_hoards_tokens() {
        const BURST: u32 = 2048;
        // No refill while the test runs: every token is the burst's.
        let quota = Quota::per_hour(NonZeroU32::new(1).unwrap())
            .allow_burst(NonZeroU32::new(BURST).unwrap());
        let global = GlobalRate::new(quota, TokioClock::new());
        // One connection on one thread: its stripe takes a batch and hoards the rest.
        let first = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    assert!(global.check().is_ok());
                    local_stripe()
                })
                .join()
                .unwrap()
        });
        let hoarded = global.hoards.held();
        assert!(hoarded > 0);
        // Connections on a thread of another stripe spend all they are given.
        let admitted = (0..100)
            .find_map(|_| {
                std::thread::scope(|scope| {
                    scope
                        .spawn(|| {
                            (local_stripe() != first).then(|| {
                                (0..2 * BURST)
                                    .take_while(|_| global.check().is_ok())
                                    .count()
                            })
                        })
                        .join()
                        .unwrap()
                })
            })
            .expect("a thread of another stripe");
        assert_eq!(
            admitted as u32 + 1,
            BURST,
            "refused with {} tokens of the burst hoarded by stripe {first}",
            global.hoards.held()
        );
    }

    #[test]
    fn a_small_burst_takes_every_token_from_the_bucket() {
        let quota = Quota::per_second(NonZeroU32::new(100).unwrap());
        let small = Bucket::new(quota, 0, TokioClock::new());
        assert_eq!(small.batch, None);
        let quota = Quota::per_second(NonZeroU32::new(100_000).unwrap());
        let large = Bucket::new(quota, 0, TokioClock::new());
        assert_eq!(large.batch.map(NonZeroU32::get), Some(MOST_BATCH));
    }

    /// A thread that loaded the bucket for its check just before a reload replaced it
    /// checks once the reload is done: it spends one connection under the old rate, and
    /// must not close the new, faster rate for the old rate's interval (as it did while
    /// every bucket wrote to one word, in the rate it was made for).
    #[tokio::test(start_paused = true)]
    async fn a_check_racing_a_reload_does_not_shut_the_raised_global_rate() {
        // 10 an hour: a connection is 6 minutes of the bucket.
        let slow = Quota::per_hour(NonZeroU32::new(10).unwrap());
        let global = GlobalRate::new(slow, TokioClock::new());
        assert!(global.check().is_ok());
        // The racing thread's `self.bucket.load()` ...
        let straggler = global.bucket.load_full();
        // ... the operator raises the rate to 1000 a second (a burst of 1000) ...
        global.set(Quota::per_second(NonZeroU32::new(1000).unwrap()));
        // ... and the thread's check runs on the bucket it loaded.
        assert!(straggler.limiter.check().is_ok());
        let refused = (0..10).filter(|_| global.check().is_err()).count();
        assert_eq!(
            refused,
            0,
            "refused at 1000 a second after 2 connections, for {:?}",
            global.check().unwrap_err()
        );
    }
}
