//! The connections still reading their PROXY header, under a cap of their own.
//!
//! The layer goes first, before any cap has counted the connection, so without this a
//! source that trickles headers would hold descriptors without bound. A balancer sends
//! its header with a connection's first bytes, so a legitimate reader waits one round
//! trip: at a full cap, a newcomer closes the reader that has waited longest, the one
//! least likely to be a balancer's.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;

/// Every reader, oldest first.
#[derive(Debug)]
pub(super) struct Readers {
    max: AtomicUsize,
    waiting: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// The next reader's id: ids grow with arrival.
    next: u64,
    by_arrival: BTreeMap<u64, Arc<Eviction>>,
}

/// Raised when a reader is closed to make room.
#[derive(Debug, Default)]
struct Eviction {
    evicted: AtomicBool,
    waker: AtomicWaker,
}

/// One connection's place among the readers; [`Readers::leave`] gives it back.
#[derive(Debug)]
pub(super) struct Reader {
    id: u64,
    eviction: Arc<Eviction>,
}

impl Readers {
    /// `max` is not zero.
    pub(super) fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max),
            waiting: Mutex::default(),
        }
    }

    pub(super) fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// `max` is not zero.
    pub(super) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// How many connections are reading their header.
    pub(super) fn len(&self) -> usize {
        self.lock().by_arrival.len()
    }

    /// A place for a new reader, made by evicting the oldest while the cap is full.
    pub(super) fn join(&self) -> Reader {
        let eviction = Arc::new(Eviction::default());
        let mut evicted = Vec::new();
        let mut waiting = self.lock();
        while waiting.by_arrival.len() >= self.max() {
            let Some((_, oldest)) = waiting.by_arrival.pop_first() else {
                break;
            };
            evicted.push(oldest);
        }
        let id = waiting.next;
        waiting.next += 1;
        waiting.by_arrival.insert(id, eviction.clone());
        drop(waiting);
        for reader in &evicted {
            reader.evicted.store(true, Ordering::Release);
            reader.waker.wake();
        }
        Reader { id, eviction }
    }

    /// Gives back `reader`'s place, unless it was evicted.
    pub(super) fn leave(&self, reader: &Reader) {
        self.lock().by_arrival.remove(&reader.id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Reader {
    /// Ready once the reader has been evicted; otherwise wakes the task when it is.
    pub(super) fn poll_evicted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.eviction.evicted.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.eviction.waker.register(cx.waker());
        // Evicted between the look and the registration.
        if self.eviction.evicted.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Wake, Waker};

    use super::*;

    #[derive(Default)]
    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn readers(max: usize) -> Readers {
        Readers::new(max)
    }

    fn evicted(reader: &Reader) -> bool {
        reader
            .poll_evicted(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn at_a_full_cap_a_newcomer_evicts_the_reader_that_waited_longest() {
        let readers = readers(2);
        let first = readers.join();
        let second = readers.join();
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        assert!(
            first
                .poll_evicted(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let third = readers.join();
        assert!(
            woken.0.load(Ordering::Relaxed),
            "the evicted reader's task is woken"
        );
        assert!(evicted(&first));
        assert!(!evicted(&second) && !evicted(&third));
        assert_eq!(readers.len(), 2);
        // The evicted reader's leaving frees nothing; another's does.
        readers.leave(&first);
        assert_eq!(readers.len(), 2);
        readers.leave(&second);
        let _fourth = readers.join();
        assert!(!evicted(&third));
    }

    #[test]
    fn a_lower_cap_evicts_down_to_it_at_the_next_arrival() {
        let readers = readers(3);
        let joined: Vec<_> = (0..3).map(|_| readers.join()).collect();
        readers.set_max(1);
        let newest = readers.join();
        assert!(joined.iter().all(evicted));
        assert!(!evicted(&newest));
        assert_eq!(readers.len(), 1);
    }
}
