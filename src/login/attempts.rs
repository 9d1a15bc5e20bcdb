//! MaxAuthTries for multiplexed protocols: on one HTTP/2 connection, requests carrying
//! credentials run at most as many at once as the connection has tries left, so a
//! client that sends 200 guesses together gets its tries' worth of password checks, not
//! 200. Once a connection has logged in, its requests are no longer held back; once it
//! has used up its tries, none waits: each is answered at once.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

use super::{LoginSession, session::SessionState};

/// The attempts in flight on one connection, and the requests waiting for a place.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    in_flight: u32,
    waiting: Vec<Waker>,
    /// How many times the waiting were woken (and so taken off the list).
    wakes: u64,
}

/// A connection that has used up its tries: the attempt must not reach the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TriesUsedUp;

/// A place for one login attempt, given back when its outcome is known (or the attempt
/// is dropped). Report the outcome first: the waiters then see the tries it used.
#[derive(Debug)]
pub(super) struct AttemptPermit {
    state: Arc<SessionState>,
}

impl LoginSession {
    /// Waits for a place for a login attempt: `None` once the connection has logged in
    /// (nothing is held back), an error once its tries are used up.
    pub(super) fn attempt(&self) -> AttemptWait {
        AttemptWait {
            state: self.state.clone(),
            registered: None,
        }
    }
}

fn lock(state: &SessionState) -> MutexGuard<'_, Attempts> {
    state
        .attempts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The future returned by [`LoginSession::attempt`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub(super) struct AttemptWait {
    state: Arc<SessionState>,
    /// The waker it left among the waiting, if any, and the wake count then.
    registered: Option<(u64, Waker)>,
}

impl Future for AttemptWait {
    type Output = Result<Option<AttemptPermit>, TriesUsedUp>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = &self.state;
        if state.is_authenticated() {
            return Poll::Ready(Ok(None));
        }
        let tries_left = state.tries_left();
        if tries_left == 0 {
            return Poll::Ready(Err(TriesUsedUp));
        }
        // Under the lock a permit is given back with, so no release is missed.
        let mut attempts = lock(state);
        if attempts.in_flight < tries_left {
            attempts.in_flight += 1;
            drop(attempts);
            return Poll::Ready(Ok(Some(AttemptPermit {
                state: state.clone(),
            })));
        }
        let listed = self
            .registered
            .as_ref()
            .is_some_and(|(wakes, waker)| *wakes == attempts.wakes && waker.will_wake(cx.waker()));
        if !listed {
            attempts.waiting.push(cx.waker().clone());
            let wakes = attempts.wakes;
            drop(attempts);
            self.registered = Some((wakes, cx.waker().clone()));
        }
        Poll::Pending
    }
}

impl Drop for AttemptPermit {
    fn drop(&mut self) {
        let waiting = {
            let mut attempts = lock(&self.state);
            attempts.in_flight -= 1;
            attempts.wakes += 1;
            std::mem::take(&mut attempts.waiting)
        };
        // Every waiter looks again: with a try used, some may now be refused.
        for waker in waiting {
            waker.wake();
        }
    }
}
