use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::time::Sleep;

use crate::deadline::deadline_after;

/// Asks one connection to finish what it is doing and close.
///
/// Every connection served by [`serve`](crate::serve) carries one
/// ([`Conn::graceful_close`](crate::Conn::graceful_close); a connection built by hand
/// gets one from the first layer or protocol that asks), and the HTTP adapter hands it
/// to every request (in
/// [`ConnExtensions`](crate::http::ConnExtensions)), so a layer, a handler or an
/// operator can raise it:
///
/// - HTTP/1.1 answers the current request with `Connection: close` and closes once the
///   response is flushed; an idle connection closes at once;
/// - HTTP/2 sends GOAWAY and lets the open streams finish;
/// - a raw protocol awaits [`requested`](Self::requested) next to its reads.
///
/// A connection that does not finish is cut, and who cuts it is one rule: whoever asked
/// with a deadline of its own ([`request_cut_by_caller`](Self::request_cut_by_caller):
/// the server's drain, the lifetime's grace, the eviction grace, the idle timeout's
/// goodbye to an HTTP/2 connection) cuts it on that
/// deadline; a plain [`request`](Self::request) (a handler's, an operator's, an
/// overload eviction's) leaves the cut to the HTTP adapter's close grace.
/// So each grace means what it says, and the shortest of those that apply wins.
/// Clones share one signal.
///
/// A connection polls its signal every time it is woken, so looking costs one atomic
/// load, and a waiter takes a lock only when it registers or moves to another task.
#[derive(Debug, Clone, Default)]
pub struct GracefulClose {
    signal: Arc<Signal>,
}

/// Raised by any request.
const REQUESTED: u8 = 1;
/// Raised by a request that leaves the cut to the connection's protocol.
const CUT_BY_PROTOCOL: u8 = 2;
/// Raised by an eviction, whose grace the login session watches: on the connection's
/// own signal, not one of its own, as that would be an allocation per connection.
#[cfg(feature = "login")]
const EVICTED: u8 = 4;

#[derive(Debug, Default)]
struct Signal {
    /// [`REQUESTED`] and [`CUT_BY_PROTOCOL`], once raised.
    raised: AtomicU8,
    waiters: Mutex<Waiters>,
}

/// The tasks waiting on a signal, each under an id its [`Requested`] keeps, with the
/// bits it waits for. A connection's signals have one or two (its protocol's, an
/// eviction's): those are kept in place, and only more go to the heap.
#[derive(Debug, Default)]
struct Waiters {
    next_id: u32,
    first: [Option<Waiter>; 2],
    more: Vec<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u32,
    bits: u8,
    waker: Waker,
}

impl Waiters {
    fn push(&mut self, waiter: Waiter) {
        match self.first.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(waiter),
            None => self.more.push(waiter),
        }
    }

    fn find(&mut self, id: u32) -> Option<&mut Waiter> {
        self.first
            .iter_mut()
            .flatten()
            .chain(&mut self.more)
            .find(|waiter| waiter.id == id)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Waiter) -> bool) {
        for slot in &mut self.first {
            if slot.as_ref().is_some_and(|waiter| !keep(waiter)) {
                *slot = None;
            }
        }
        self.more.retain(keep);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.first.iter().flatten().count() + self.more.len()
    }
}

impl GracefulClose {
    /// A signal that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the connection to close gracefully; if it does not finish, the HTTP adapter
    /// cuts it after its close grace. Raising it again does nothing.
    pub fn request(&self) {
        self.raise(REQUESTED | CUT_BY_PROTOCOL);
    }

    /// Asks the connection to close gracefully, and says that the caller cuts it itself,
    /// on a deadline of its own, if it does not finish: the HTTP adapter then waits for
    /// that instead of applying its own close grace.
    pub fn request_cut_by_caller(&self) {
        self.raise(REQUESTED);
    }

    /// Asks the connection to close as [`request_cut_by_caller`](Self::request_cut_by_caller)
    /// does, and marks it evicted: the login session cuts it after its grace.
    #[cfg(feature = "login")]
    pub(crate) fn evict(&self) {
        self.raise(REQUESTED | EVICTED);
    }

    /// Resolves once the connection has been evicted.
    #[cfg(feature = "login")]
    pub(crate) fn evicted(&self) -> Requested {
        self.waiter(EVICTED)
    }

    fn raise(&self, bits: u8) {
        let before = self.signal.raised.fetch_or(bits, Ordering::AcqRel);
        if before & bits == bits {
            return;
        }
        let raised = before | bits;
        let mut waiting = Vec::new();
        self.signal.lock().retain(|waiter| {
            let done = raised & waiter.bits == waiter.bits;
            if done {
                waiting.push(waiter.waker.clone());
            }
            !done
        });
        for waker in waiting {
            waker.wake();
        }
    }

    /// Whether a graceful close has been asked for.
    pub fn is_requested(&self) -> bool {
        self.signal.is_raised(REQUESTED)
    }

    /// Resolves once a graceful close has been asked for.
    pub fn requested(&self) -> Requested {
        self.waiter(REQUESTED)
    }

    /// Resolves once a close has been asked for with [`request`](Self::request), whose
    /// cut is the protocol's to make.
    pub(crate) fn cut_left_to_protocol(&self) -> Requested {
        self.waiter(CUT_BY_PROTOCOL)
    }

    fn waiter(&self, bits: u8) -> Requested {
        Requested {
            signal: self.signal.clone(),
            bits,
            registered: None,
        }
    }
}

impl Signal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn is_raised(&self, bits: u8) -> bool {
        self.raised.load(Ordering::Acquire) & bits == bits
    }
}

/// The future returned by [`GracefulClose::requested`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Requested {
    signal: Arc<Signal>,
    /// What it waits for.
    bits: u8,
    /// Its id among the waiters and the waker it registered, once it has.
    registered: Option<(u32, Waker)>,
}

impl Future for Requested {
    type Output = ();

    // Inlined where it is polled, on every wake-up of a connection: a look is one
    // atomic load and a waker comparison; registering is a call.
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_raised(self.bits) {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &self.registered
            && waker.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        self.register(cx)
    }
}

impl Requested {
    /// Registers the task's waker, under the waiters' lock.
    fn register(&mut self, cx: &Context<'_>) -> Poll<()> {
        let signal = &self.signal;
        let mut waiters = signal.lock();
        // Raised between the look in `poll` and the lock: `raise` sets the bits first.
        if signal.is_raised(self.bits) {
            return Poll::Ready(());
        }
        let id = match &self.registered {
            Some((id, _)) => {
                let id = *id;
                if let Some(waiter) = waiters.find(id) {
                    waiter.waker.clone_from(cx.waker());
                }
                id
            }
            None => {
                let id = waiters.next_id;
                // Ids only tell apart the few waiters of one connection.
                waiters.next_id = waiters.next_id.wrapping_add(1);
                waiters.push(Waiter {
                    id,
                    bits: self.bits,
                    waker: cx.waker().clone(),
                });
                id
            }
        };
        drop(waiters);
        self.registered = Some((id, cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Requested {
    fn drop(&mut self) {
        if let Some((id, _)) = self.registered.take()
            && !self.signal.is_raised(self.bits)
        {
            self.signal.lock().retain(|waiter| waiter.id != id);
        }
    }
}

/// The cut of a connection asked to close with a plain [`GracefulClose::request`], for
/// whoever serves its protocol (the HTTP adapter, the protected listener): due its grace
/// after that. Its timer is made only then, so that a connection never asked carries
/// none.
pub(crate) struct Cut {
    asked: Requested,
    grace: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Cut {
    pub(crate) fn new(close: &GracefulClose, grace: Duration) -> Self {
        Self {
            asked: close.cut_left_to_protocol(),
            grace,
            timer: None,
        }
    }

    /// Resolves when the cut is due; pending forever without a plain request.
    pub(crate) async fn due(&mut self) {
        std::future::poll_fn(|cx| self.poll_due(cx)).await;
    }

    /// Whether the cut is due; the task is woken when it is.
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timer = match &mut self.timer {
            Some(timer) => timer,
            None => {
                std::task::ready!(Pin::new(&mut self.asked).poll(cx));
                self.timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline_after(
                        self.grace,
                    ))))
            }
        };
        timer.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready, task};

    #[test]
    fn request_wakes_every_waiter_and_is_sticky() {
        let close = GracefulClose::new();
        let mut first = task::spawn(close.requested());
        let mut second = task::spawn(close.requested());
        assert_pending!(first.poll());
        assert_pending!(second.poll());
        assert!(!close.is_requested());

        close.clone().request();
        assert!(first.is_woken() && second.is_woken());
        assert_ready!(first.poll());
        assert_ready!(second.poll());
        assert!(close.is_requested());
        assert_ready!(task::spawn(close.requested()).poll());
    }

    #[test]
    fn waiters_in_place_and_on_the_heap_are_all_woken_and_each_leaves_alone() {
        let close = GracefulClose::new();
        let mut waiters: Vec<_> = (0..5).map(|_| task::spawn(close.requested())).collect();
        for waiter in &mut waiters {
            assert_pending!(waiter.poll());
        }
        assert_eq!(close.signal.lock().len(), 5);
        // One kept in place and one on the heap leave.
        drop(waiters.remove(3));
        drop(waiters.remove(0));
        assert_eq!(close.signal.lock().len(), 3);
        // A new one takes the freed place.
        let mut late = task::spawn(close.requested());
        assert_pending!(late.poll());
        assert_eq!(close.signal.lock().len(), 4);
        waiters.push(late);
        close.request();
        for waiter in &mut waiters {
            assert!(waiter.is_woken());
            assert_ready!(waiter.poll());
        }
        assert_eq!(close.signal.lock().len(), 0);
    }

    #[cfg(feature = "login")]
    #[test]
    fn an_eviction_is_a_request_and_only_an_eviction_is_an_eviction() {
        let close = GracefulClose::new();
        let mut evicted = task::spawn(close.evicted());
        assert_pending!(evicted.poll());
        close.request();
        assert_pending!(evicted.poll(), "a plain request is no eviction");
        close.evict();
        assert!(evicted.is_woken());
        assert_ready!(evicted.poll());

        let close = GracefulClose::new();
        close.evict();
        assert!(close.is_requested());
        assert_pending!(
            task::spawn(close.cut_left_to_protocol()).poll(),
            "the evicter cuts, not the protocol"
        );
    }

    #[test]
    fn a_dropped_waiter_leaves_the_list() {
        let close = GracefulClose::new();
        let mut waiter = task::spawn(close.requested());
        assert_pending!(waiter.poll());
        assert_pending!(waiter.poll());
        assert_eq!(
            close.signal.lock().len(),
            1,
            "polled twice, registered once"
        );
        drop(waiter);
        assert_eq!(close.signal.lock().len(), 0);
    }

    #[test]
    fn a_waiter_moved_to_another_task_wakes_that_task() {
        let close = GracefulClose::new();
        let mut requested = close.requested();
        let mut first = task::spawn(());
        let mut second = task::spawn(());
        first.enter(|cx, _| assert!(Pin::new(&mut requested).poll(cx).is_pending()));
        second.enter(|cx, _| assert!(Pin::new(&mut requested).poll(cx).is_pending()));
        close.request();
        assert!(second.is_woken());
        assert!(!first.is_woken());
    }

    #[test]
    fn a_close_cut_by_its_caller_leaves_the_protocol_no_cut_to_make() {
        let close = GracefulClose::new();
        let mut requested = task::spawn(close.requested());
        let mut protocol_cut = task::spawn(close.cut_left_to_protocol());
        assert_pending!(requested.poll());
        assert_pending!(protocol_cut.poll());

        close.request_cut_by_caller();
        assert_ready!(requested.poll());
        assert!(!protocol_cut.is_woken(), "not woken for other bits");
        assert_pending!(protocol_cut.poll());

        close.request();
        assert!(protocol_cut.is_woken());
        assert_ready!(protocol_cut.poll());
    }
}
