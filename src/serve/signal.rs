//! The shutdown signal, as the accept loop looks at it: before every accept, but polled
//! only after it has woken the loop. A signal's future (tokio's `ctrl_c`, its Unix
//! signal streams) costs more to poll than the rest of an accept.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;

/// `signal`, polled on the first poll and then only once its waker has fired.
pub(super) struct Shutdown<F> {
    signal: Pin<Box<F>>,
    waker: Arc<SignalWaker>,
}

/// The waker the signal is given: it marks the signal due and wakes the loop's task.
#[derive(Debug)]
struct SignalWaker {
    due: AtomicBool,
    task: AtomicWaker,
}

impl Wake for SignalWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future<Output = ()>> Shutdown<F> {
    pub(super) fn new(signal: F) -> Self {
        Self {
            signal: Box::pin(signal),
            waker: Arc::new(SignalWaker {
                due: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl<F: Future<Output = ()>> Future for Shutdown<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.task.register(cx.waker());
        if !self.waker.due.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.waker.clone());
        self.signal.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicUsize,
        task::{Context, Poll},
    };

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn the_signal_is_polled_first_and_then_only_once_it_has_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let (fire, fired) = oneshot::channel::<()>();
        let mut fired = Some(fired);
        let counted = polls.clone();
        let signal = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            match fired.as_mut().map(|fired| Pin::new(fired).poll(cx)) {
                Some(Poll::Ready(_)) => Poll::Ready(()),
                _ => Poll::Pending,
            }
        });
        let mut shutdown = Box::pin(Shutdown::new(signal));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..10 {
            assert!(shutdown.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "looked at once, then waits"
        );
        fire.send(()).unwrap();
        assert!(shutdown.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_signal_that_fires_wakes_the_loop() {
        let (fire, fired) = oneshot::channel::<()>();
        let mut shutdown = Box::pin(Shutdown::new(async {
            fired.await.ok();
        }));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(shutdown.as_mut().poll(&mut cx).is_pending());
        tokio::spawn(async move { fire.send(()).unwrap() });
        tokio::time::timeout(std::time::Duration::from_secs(10), shutdown)
            .await
            .expect("woken when the signal fires");
    }
}
