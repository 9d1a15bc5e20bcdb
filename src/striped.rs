//! What the admission layers keep per thread stripe, so that a connection writes only
//! cache lines of its own thread's stripe: a cache line every thread writes on every
//! connection moves between cores each time, and on many cores that, not the work,
//! bounds how fast connections are admitted.
//!
//! - [`Striped`]: a layer's state, reached through one handle per stripe. A connection
//!   that holds the state until it ends (to give its slot back, to count an offence)
//!   clones its stripe's handle, whose reference count no other stripe writes, instead
//!   of the state's own `Arc`.
//! - [`Hoards`]: units of a global budget (slots under a cap, tokens of a rate) that a
//!   stripe took in a batch and spends one at a time.
//!
//! Threads are given stripes in turn the first time they ask; there are as many stripes
//! as the machine has threads, rounded up to a power of two, at least
//! [`STRIPES`](crate::counter::STRIPES) and at most [`MOST_STRIPES`].

use std::{
    ops::Deref,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::counter::{STRIPES, thread_number};

/// The most stripes, whatever the machine.
pub(crate) const MOST_STRIPES: usize = 64;

/// How many stripes there are: a power of two.
pub(crate) fn stripes() -> usize {
    static STRIPE_COUNT: LazyLock<usize> = LazyLock::new(|| {
        let threads = std::thread::available_parallelism().map_or(STRIPES, usize::from);
        threads.next_power_of_two().clamp(STRIPES, MOST_STRIPES)
    });
    *STRIPE_COUNT
}

/// This thread's stripe.
pub(crate) fn local_stripe() -> usize {
    thread_number() & (stripes() - 1)
}

/// A state every thread shares, with one [`Handle`] to it per stripe. Clones share the
/// state and the handles; dereferences to the state.
#[derive(Debug)]
pub(crate) struct Striped<T> {
    shared: Arc<T>,
    handles: Arc<[Arc<Handle<T>>]>,
}

/// A handle to a [`Striped`] state, for what one connection holds: its reference count
/// and its stripe's hoard are on cache lines of their own. Dereferences to the state.
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Handle<T> {
    stripe: usize,
    shared: Arc<T>,
}

impl<T> Striped<T> {
    pub(crate) fn new(shared: T) -> Self {
        Self::from_arc(Arc::new(shared))
    }

    /// Handles to a state already shared otherwise.
    pub(crate) fn from_arc(shared: Arc<T>) -> Self {
        let handles = (0..stripes())
            .map(|stripe| {
                Arc::new(Handle {
                    stripe,
                    shared: shared.clone(),
                })
            })
            .collect();
        Self { shared, handles }
    }

    /// The state's own `Arc`, for what lives as long as the layer (a background task's
    /// weak reference), not for a connection.
    pub(crate) fn arc(&self) -> &Arc<T> {
        &self.shared
    }

    /// This thread's handle, for a connection to hold until it ends.
    pub(crate) fn local(&self) -> Arc<Handle<T>> {
        self.handles[local_stripe()].clone()
    }
}

impl<T> Clone for Striped<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            handles: self.handles.clone(),
        }
    }
}

impl<T> Deref for Striped<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.shared
    }
}

impl<T> Handle<T> {
    /// The stripe this handle belongs to.
    pub(crate) fn stripe(&self) -> usize {
        self.stripe
    }
}

impl<T> Deref for Handle<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.shared
    }
}

/// Per stripe, how many units of a global budget the stripe holds unspent.
#[derive(Debug)]
pub(crate) struct Hoards {
    stripes: Box<[Hoard]>,
}

/// One stripe's hoard, on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Hoard(AtomicUsize);

impl Hoards {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..stripes()).map(|_| Hoard::default()).collect(),
        }
    }

    /// Spends one unit of `stripe`'s hoard, if it holds one.
    pub(crate) fn take(&self, stripe: usize) -> bool {
        let hoard = &self.stripes[stripe].0;
        // A load first: an empty hoard, the common case of a small budget, is not written.
        hoard.load(Ordering::Relaxed) > 0
            && hoard
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |units| {
                    units.checked_sub(1)
                })
                .is_ok()
    }

    /// Spends one unit of any stripe's hoard, if one holds one: the last resort of a
    /// budget that is spent everywhere else.
    pub(crate) fn take_any(&self) -> bool {
        (0..self.stripes.len()).any(|stripe| self.take(stripe))
    }

    /// Adds `units` to `stripe`'s hoard; what it then holds.
    pub(crate) fn put(&self, stripe: usize, units: usize) -> usize {
        self.stripes[stripe].0.fetch_add(units, Ordering::Relaxed) + units
    }

    /// Takes `units` out of `stripe`'s hoard if it holds that many.
    pub(crate) fn take_many(&self, stripe: usize, units: usize) -> bool {
        self.stripes[stripe]
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_sub(units)
            })
            .is_ok()
    }

    /// Empties every hoard; what they held.
    pub(crate) fn drain(&self) -> usize {
        self.stripes
            .iter()
            .map(|hoard| hoard.0.swap(0, Ordering::Relaxed))
            .sum()
    }

    /// What every hoard holds.
    pub(crate) fn held(&self) -> usize {
        self.stripes
            .iter()
            .map(|hoard| hoard.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether any hoard holds a unit.
    pub(crate) fn any(&self) -> bool {
        self.stripes
            .iter()
            .any(|hoard| hoard.0.load(Ordering::Relaxed) > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stripe_has_its_own_handle_to_one_state() {
        let striped = Striped::new(AtomicUsize::new(0));
        let local = striped.local();
        assert_eq!(local.stripe(), local_stripe());
        local.fetch_add(1, Ordering::Relaxed);
        assert_eq!(striped.load(Ordering::Relaxed), 1);
        let other = std::thread::spawn({
            let striped = striped.clone();
            move || striped.local().stripe()
        })
        .join()
        .unwrap();
        assert!(other < stripes());
    }

    #[test]
    fn hoards_spend_what_was_put_and_no_more() {
        let hoards = Hoards::new();
        assert!(!hoards.take(0) && !hoards.take_any());
        assert_eq!(hoards.put(1, 3), 3);
        assert!(!hoards.take(0));
        assert!(hoards.take(1));
        assert!(hoards.take_any());
        assert!(!hoards.take_many(1, 2));
        assert_eq!(hoards.held(), 1);
        assert_eq!(hoards.drain(), 1);
        assert!(!hoards.any());
    }
}
