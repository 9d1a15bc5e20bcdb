//! The connections still reading their PROXY header, under a cap of their own.
//!
//! The layer goes first, before any cap has counted the connection, so without this a
//! source that trickles headers would hold descriptors without bound. A balancer sends
//! its header with a connection's first bytes, so a legitimate reader waits one round
//! trip: at a full cap, a newcomer closes the reader that has waited longest, the one
//! least likely to be a balancer's.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

/// Every reader, oldest first.
#[derive(Debug)]
pub(super) struct Readers {
    max: AtomicUsize,
    /// Every reader below this id has left or been evicted: eviction takes the oldest,
    /// so a reader still here with a lower id was evicted. Read without the lock.
    evicted_below: AtomicU64,
    waiting: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// The next reader's id: ids grow with arrival.
    next: u64,
    /// By id, so by arrival; with the waker to wake on eviction, once one waits.
    by_arrival: VecDeque<(u64, Option<Waker>)>,
}

/// One connection's place among the readers; [`Readers::leave`] gives it back.
#[derive(Debug)]
pub(super) struct Reader {
    id: u64,
}

impl Readers {
    /// `max` is not zero.
    pub(super) fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max),
            evicted_below: AtomicU64::new(0),
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
        let mut to_wake = Vec::new();
        let mut waiting = self.lock();
        while waiting.by_arrival.len() >= self.max() {
            let Some((oldest, waker)) = waiting.by_arrival.pop_front() else {
                break;
            };
            self.evicted_below.store(oldest + 1, Ordering::Release);
            to_wake.extend(waker);
        }
        let id = waiting.next;
        waiting.next += 1;
        waiting.by_arrival.push_back((id, None));
        drop(waiting);
        for waker in to_wake {
            waker.wake();
        }
        Reader { id }
    }

    /// Gives back `reader`'s place, unless it was evicted.
    pub(super) fn leave(&self, reader: &Reader) {
        let mut waiting = self.lock();
        if let Ok(at) = waiting.find(reader.id) {
            waiting.by_arrival.remove(at);
        }
    }

    /// Ready once `reader` has been evicted; otherwise wakes the task when it is.
    pub(super) fn poll_evicted(&self, reader: &Reader, cx: &Context<'_>) -> Poll<()> {
        if self.evicted(reader) {
            return Poll::Ready(());
        }
        let mut waiting = self.lock();
        // Evicted since the look: its place is gone.
        let Ok(at) = waiting.find(reader.id) else {
            return Poll::Ready(());
        };
        let (_, waker) = &mut waiting.by_arrival[at];
        match waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn evicted(&self, reader: &Reader) -> bool {
        reader.id < self.evicted_below.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Waiting {
    fn find(&self, id: u64) -> Result<usize, usize> {
        self.by_arrival.binary_search_by_key(&id, |(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, atomic::AtomicBool},
        task::Wake,
    };

    use super::*;

    #[derive(Default)]
    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn evicted(readers: &Readers, reader: &Reader) -> bool {
        readers
            .poll_evicted(reader, &Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn at_a_full_cap_a_newcomer_evicts_the_reader_that_waited_longest() {
        let readers = Readers::new(2);
        let first = readers.join();
        let second = readers.join();
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        assert!(
            readers
                .poll_evicted(&first, &Context::from_waker(&waker))
                .is_pending()
        );
        let third = readers.join();
        assert!(
            woken.0.load(Ordering::Relaxed),
            "the evicted reader's task is woken"
        );
        assert!(evicted(&readers, &first));
        assert!(!evicted(&readers, &second) && !evicted(&readers, &third));
        assert_eq!(readers.len(), 2);
        // The evicted reader's leaving frees nothing; another's does.
        readers.leave(&first);
        assert_eq!(readers.len(), 2);
        readers.leave(&second);
        let fourth = readers.join();
        assert!(!evicted(&readers, &third) && !evicted(&readers, &fourth));
    }

    #[test]
    fn a_reader_that_left_out_of_order_is_not_taken_for_evicted() {
        let readers = Readers::new(2);
        let first = readers.join();
        let second = readers.join();
        readers.leave(&second);
        let third = readers.join();
        let fourth = readers.join();
        assert!(evicted(&readers, &first));
        assert!(!evicted(&readers, &third) && !evicted(&readers, &fourth));
    }

    #[test]
    fn a_lower_cap_evicts_down_to_it_at_the_next_arrival() {
        let readers = Readers::new(3);
        let joined: Vec<_> = (0..3).map(|_| readers.join()).collect();
        readers.set_max(1);
        let newest = readers.join();
        assert!(joined.iter().all(|reader| evicted(&readers, reader)));
        assert!(!evicted(&readers, &newest));
        assert_eq!(readers.len(), 1);
    }
}
