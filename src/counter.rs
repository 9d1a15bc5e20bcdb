use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use crate::{metrics::Count, striped::stripes};

/// Stripes of a counter; also the shards of tables split by thread.
pub(crate) const STRIPES: usize = 8;

/// A statistics counter that threads bump without fighting over one cache line or
/// locking the bus: a thread that owns a stripe (see [`owned_stripe`]) adds to it with a
/// load and a store, the others to a shared stripe with an atomic add, and a read sums
/// them. Reads are rare (`stats()`), bumps happen on every connection.
///
/// A counter made with [`Counter::metric`] also feeds a metric, so that `stats()` and
/// the metrics agree.
#[derive(Debug)]
pub(crate) struct Counter {
    /// One per stripe a thread may own ([`stripes`]: as many as the machine has
    /// threads, 8 to 64), then the shared one.
    stripes: Box<[Stripe]>,
    metric: Count,
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            stripes: (0..=stripes()).map(|_| Stripe::default()).collect(),
            metric: Count::default(),
        }
    }
}

/// 128 bytes, not a line of 64: x86 processors fetch lines in aligned pairs, and the
/// first two threads own stripes 0 and 1, which would then share a pair.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Counter {
    /// A counter that also counts in the metric `name` with `labels`, registered now.
    pub(crate) fn metric(name: &'static str, labels: &[(&'static str, &str)]) -> Self {
        Self {
            metric: Count::new(name, labels),
            ..Self::default()
        }
    }

    pub(crate) fn add(&self) {
        self.add_n(1);
    }

    pub(crate) fn add_n(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        match owned_stripe() {
            Some(owned) => {
                let stripe = &self.stripes[owned].0;
                stripe.store(
                    stripe.load(Ordering::Relaxed).wrapping_add(n),
                    Ordering::Relaxed,
                );
            }
            None => {
                let shared = self.stripes.len() - 1;
                self.stripes[shared].0.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.metric.add(n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// The stripe this thread owns, if it could claim one: while it lives, no other thread
/// writes to it. A thread claims one the first time it asks and gives it back when it
/// exits; threads beyond [`stripes`] at once own none.
fn owned_stripe() -> Option<usize> {
    /// Which stripes live threads own, a bit each (there are at most 64).
    static OWNED: AtomicU64 = AtomicU64::new(0);

    struct Ownership(Option<usize>);

    impl Ownership {
        fn claim() -> Self {
            let all = u64::MAX >> (64 - stripes());
            let mut owned = OWNED.load(Ordering::Relaxed);
            loop {
                let free = !owned & all;
                if free == 0 {
                    return Self(None);
                }
                let stripe = free.trailing_zeros() as usize;
                // Acquire: the stripe's last owner's writes come before this thread's.
                match OWNED.compare_exchange_weak(
                    owned,
                    owned | 1 << stripe,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Self(Some(stripe)),
                    Err(now) => owned = now,
                }
            }
        }
    }

    impl Drop for Ownership {
        fn drop(&mut self) {
            if let Some(stripe) = self.0 {
                OWNED.fetch_and(!(1 << stripe), Ordering::Release);
            }
        }
    }

    thread_local! {
        static OWNERSHIP: Ownership = Ownership::claim();
    }
    // Once this thread's ownership is given back (at its exit), the shared stripe.
    OWNERSHIP.try_with(|ownership| ownership.0).ok().flatten()
}

/// This thread's stripe of a table split by thread.
pub(crate) fn stripe() -> usize {
    thread_number() % STRIPES
}

/// This thread's number, handed out in turn the first time a thread asks.
pub(crate) fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: Cell<Option<usize>> = const { Cell::new(None) };
    }
    NUMBER.with(|number| match number.get() {
        Some(number) => number,
        None => {
            let next = NEXT.fetch_add(1, Ordering::Relaxed);
            number.set(Some(next));
            next
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_what_every_thread_added() {
        let counter = Counter::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..1000).for_each(|_| counter.add()));
            }
        });
        counter.add();
        assert_eq!(counter.get(), 4001);
    }

    #[test]
    fn threads_beyond_the_owned_stripes_and_their_successors_lose_nothing() {
        let counter = Counter::default();
        let threads = 2 * stripes();
        let barrier = std::sync::Barrier::new(threads);
        // Twice as many threads at once as there are stripes to own: half share.
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    barrier.wait();
                    (0..1000).for_each(|_| counter.add());
                });
            }
        });
        // Threads that exited gave their stripes back: new ones add to what is there.
        for _ in 0..threads {
            std::thread::scope(|scope| scope.spawn(|| counter.add_n(3)).join().unwrap());
        }
        assert_eq!(counter.get(), (threads * 1000 + threads * 3) as u64);
    }
}
