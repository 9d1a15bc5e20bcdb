use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

/// Asks one connection to finish what it is doing and close.
///
/// Every connection served by [`serve`](crate::serve) carries one in its
/// [`Conn`](crate::Conn) extensions (a connection built by hand gets one from the HTTP
/// adapter), and the HTTP adapter copies it into every request, so a layer, a handler
/// or an operator can raise it:
///
/// - HTTP/1.1 answers the current request with `Connection: close` and closes once the
///   response is flushed; an idle connection closes at once;
/// - HTTP/2 sends GOAWAY and lets the open streams finish;
/// - a raw protocol awaits [`requested`](Self::requested) next to its reads.
///
/// Whoever raised it may cut the connection after a grace period if it does not finish.
/// Clones share one signal.
///
/// A connection polls its signal every time it is woken, so looking costs one atomic
/// load, and a waiter takes a lock only when it registers or moves to another task.
#[derive(Debug, Clone, Default)]
pub struct GracefulClose {
    signal: Arc<Signal>,
}

#[derive(Debug, Default)]
struct Signal {
    requested: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// The tasks waiting on a signal, each under an id its [`Requested`] keeps.
#[derive(Debug, Default)]
struct Waiters {
    next_id: u64,
    list: Vec<(u64, Waker)>,
}

impl GracefulClose {
    /// A signal that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the connection to close gracefully. Raising it again does nothing.
    pub fn request(&self) {
        if self.signal.requested.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiting = std::mem::take(&mut self.signal.lock().list);
        for (_, waker) in waiting {
            waker.wake();
        }
    }

    /// Whether a graceful close has been asked for.
    pub fn is_requested(&self) -> bool {
        self.signal.requested.load(Ordering::Acquire)
    }

    /// Resolves once a graceful close has been asked for.
    pub fn requested(&self) -> Requested {
        Requested {
            signal: self.signal.clone(),
            registered: None,
        }
    }
}

impl Signal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The future returned by [`GracefulClose::requested`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Requested {
    signal: Arc<Signal>,
    /// Its id among the waiters and the waker it registered, once it has.
    registered: Option<(u64, Waker)>,
}

impl Future for Requested {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = &self.signal;
        if signal.requested.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &self.registered
            && waker.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        let mut waiters = signal.lock();
        // Raised between the look above and the lock: `request` sets the flag first.
        if signal.requested.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let id = match &self.registered {
            Some((id, _)) => {
                let id = *id;
                if let Some((_, waker)) = waiters.list.iter_mut().find(|(other, _)| *other == id) {
                    waker.clone_from(cx.waker());
                }
                id
            }
            None => {
                let id = waiters.next_id;
                waiters.next_id += 1;
                waiters.list.push((id, cx.waker().clone()));
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
            && !self.signal.requested.load(Ordering::Acquire)
        {
            self.signal.lock().list.retain(|(other, _)| *other != id);
        }
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
    fn a_dropped_waiter_leaves_the_list() {
        let close = GracefulClose::new();
        let mut waiter = task::spawn(close.requested());
        assert_pending!(waiter.poll());
        assert_pending!(waiter.poll());
        assert_eq!(
            close.signal.lock().list.len(),
            1,
            "polled twice, registered once"
        );
        drop(waiter);
        assert!(close.signal.lock().list.is_empty());
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
}
