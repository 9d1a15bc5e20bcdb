use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use crate::metrics::Count;

/// Stripes of a counter; also the shards of tables split by thread.
pub(crate) const STRIPES: usize = 8;

/// A statistics counter that threads bump without fighting over one cache line: each
/// thread adds to its own stripe, and a read sums them. Reads are rare (`stats()`),
/// bumps happen on every connection.
///
/// A counter made with [`Counter::metric`] also feeds a metric, so that `stats()` and
/// the metrics agree.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    stripes: [Stripe; STRIPES],
    metric: Count,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

impl Counter {
    /// A counter that also counts in the metric `name` with `labels`, registered now.
    pub(crate) fn metric(name: &'static str, labels: &[(&'static str, &str)]) -> Self {
        Self {
            stripes: Default::default(),
            metric: Count::new(name, labels),
        }
    }

    pub(crate) fn add(&self) {
        self.add_n(1);
    }

    pub(crate) fn add_n(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.stripes[stripe()].0.fetch_add(n, Ordering::Relaxed);
        self.metric.add(n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// This thread's stripe of a counter.
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
}
