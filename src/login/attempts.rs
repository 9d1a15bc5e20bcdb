//! MaxAuthTries for multiplexed protocols: on one HTTP/2 connection, requests carrying
//! credentials run at most as many at once as the connection has tries left, so a
//! client that sends 200 guesses together gets its tries' worth of password checks, not
//! 200. Once a connection has logged in, its requests with the credentials that logged
//! it in are no longer held back, and those waiting go on; every other attempt (other
//! credentials, or a login by path that carries none) still waits for a place, so that
//! logging in with an account of one's own buys no guesses at another's. Once a
//! connection has used up its tries or is being closed, none waits: each is answered
//! at once.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, MutexGuard, PoisonError, atomic::Ordering},
    task::{Context, Poll, Waker},
};

use super::{LoginSession, session::SessionState};

/// The attempts in flight on one connection, and the requests waiting for a place,
/// each under an id its [`AttemptWait`] keeps (a request given up leaves the list).
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    in_flight: u32,
    next_id: u64,
    waiting: Vec<(u64, Waker)>,
    /// The credentials of the attempt last given a place: those the connection logged
    /// in with, if it logs in while attempts are in flight.
    last_admitted: Credentials,
}

/// A request's credentials (its `Authorization` and `Proxy-Authorization` values), as
/// a keyed 64-bit hash: enough to tell whether an attempt repeats the credentials a
/// connection logged in with, under a per-process random key, so that no client can
/// aim a collision. [`NONE`](Self::NONE) for a request that carries none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Credentials(u64);

impl Credentials {
    /// No credentials: an attempt by its path (a login form), never let through as
    /// the connection's own.
    pub(crate) const NONE: Self = Self(0);

    /// From a keyed hash of the credentials; a hash of 0 is taken as 1, not as none.
    pub(crate) fn from_hash(hash: u64) -> Self {
        Self(hash.max(1))
    }
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
    /// Waits for a place for a login attempt with `credentials`: `None` once the
    /// connection has logged in with them (nothing is held back), an error once its
    /// tries are used up.
    pub(super) fn attempt(&self, credentials: Credentials) -> AttemptWait {
        AttemptWait {
            state: self.state.clone(),
            credentials,
            registered: None,
        }
    }
}

impl SessionState {
    /// Whether the connection logged in with `credentials`: an attempt with them goes
    /// on at once. Read without the lock by a request as it is dispatched, and under it
    /// by a waiting attempt, which a login wakes once the credentials are stored.
    pub(super) fn logged_in_with(&self, credentials: Credentials) -> bool {
        credentials != Credentials::NONE
            && self.logged_in_with.load(Ordering::Relaxed) == credentials.0
    }

    /// The connection has logged in: the credentials of the attempt in flight (the one
    /// last given a place, if more are) go on at once from now, and the waiting
    /// attempts look again. With no attempt in flight (a login by a request that is
    /// none), every attempt still waits for a place.
    pub(super) fn logged_in(&self) {
        if let Some(attempts) = self.attempts.get() {
            let waiting = {
                let mut attempts = attempts.lock().unwrap_or_else(PoisonError::into_inner);
                if attempts.in_flight > 0 {
                    self.logged_in_with
                        .store(attempts.last_admitted.0, Ordering::Relaxed);
                }
                std::mem::take(&mut attempts.waiting)
            };
            wake(waiting);
        }
    }
}

fn lock(state: &SessionState) -> MutexGuard<'_, Attempts> {
    state
        .attempts
        .get_or_init(Box::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The future returned by [`LoginSession::attempt`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub(super) struct AttemptWait {
    state: Arc<SessionState>,
    credentials: Credentials,
    /// Its id among the waiting, and the waker it left there, once it has.
    registered: Option<(u64, Waker)>,
}

impl Future for AttemptWait {
    type Output = Result<Option<AttemptPermit>, TriesUsedUp>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let state = &this.state;
        // Everything is read under the lock the waiting are woken with (a place given
        // back, a login, an eviction), so no wake-up is missed.
        let mut attempts = lock(state);
        if state.logged_in_with(this.credentials) {
            return Poll::Ready(Ok(None));
        }
        let tries_left = state.tries_left();
        if tries_left == 0 {
            drop(attempts);
            state.tries_used_up();
            return Poll::Ready(Err(TriesUsedUp));
        }
        let listed = this
            .registered
            .as_ref()
            .and_then(|(id, _)| attempts.waiting.iter().position(|(other, _)| other == id));
        if attempts.in_flight < tries_left {
            attempts.in_flight += 1;
            attempts.last_admitted = this.credentials;
            if let Some(index) = listed {
                attempts.waiting.swap_remove(index);
            }
            drop(attempts);
            this.registered = None;
            return Poll::Ready(Ok(Some(AttemptPermit {
                state: state.clone(),
            })));
        }
        match (listed, &mut this.registered) {
            (Some(index), Some((_, waker))) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                    attempts.waiting[index].1.clone_from(cx.waker());
                }
            }
            // Not listed yet, or taken off the list when it was woken.
            _ => {
                let id = attempts.next_id;
                attempts.next_id += 1;
                attempts.waiting.push((id, cx.waker().clone()));
                this.registered = Some((id, cx.waker().clone()));
            }
        }
        Poll::Pending
    }
}

impl Drop for AttemptWait {
    fn drop(&mut self) {
        if let Some((id, _)) = self.registered.take() {
            lock(&self.state).waiting.retain(|(other, _)| *other != id);
        }
    }
}

impl Drop for AttemptPermit {
    fn drop(&mut self) {
        let waiting = {
            let mut attempts = lock(&self.state);
            attempts.in_flight -= 1;
            std::mem::take(&mut attempts.waiting)
        };
        // Every waiter looks again: with a try used, some may now be refused.
        wake(waiting);
    }
}

impl SessionState {
    /// Wakes every attempt waiting for a place, to look again: the connection is being
    /// closed. Only connections that have had attempts wait take the lock.
    pub(super) fn wake_waiting_attempts(&self) {
        if let Some(attempts) = self.attempts.get() {
            let waiting = std::mem::take(
                &mut attempts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .waiting,
            );
            wake(waiting);
        }
    }
}

/// Wakes the waiters taken off the list, out of its lock.
fn wake(waiting: Vec<(u64, Waker)>) {
    for (_, waker) in waiting {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Conn,
        login::{Login, LoginSession},
    };
    use tokio_test::{assert_pending, assert_ready, task};
    use tower::{Layer, Service, ServiceExt};

    /// A session of a connection under `login`, with `max_auth_tries(1)`.
    async fn session() -> LoginSession {
        let login = Login::builder().max_auth_tries(1).build().unwrap();
        let (io, _client) = tokio::io::duplex(8);
        let conn = Conn::new(
            io,
            "192.0.2.1:1".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        let (seen, mut sessions) = tokio::sync::mpsc::unbounded_channel();
        let mut service = login.session_layer().layer(tower::service_fn(
            move |conn: Conn<tokio::io::DuplexStream>| {
                seen.send(conn.login_session().cloned()).ok();
                std::future::pending::<Result<(), std::io::Error>>()
            },
        ));
        let _connection = tokio::spawn(service.ready().await.unwrap().call(conn));
        sessions.recv().await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_request_given_up_leaves_the_waiting_list() {
        let session = session().await;
        let mut first = task::spawn(session.attempt(Credentials::from_hash(7)));
        let permit = assert_ready!(first.poll()).unwrap();
        for _ in 0..1000 {
            let mut waiting = task::spawn(session.attempt(Credentials::from_hash(7)));
            assert_pending!(waiting.poll());
            assert_pending!(waiting.poll());
        }
        assert!(lock(&session.state).waiting.is_empty());
        drop(permit);
    }

    #[tokio::test]
    async fn a_place_given_back_lets_the_next_in() {
        let session = session().await;
        let mut first = task::spawn(session.attempt(Credentials::from_hash(7)));
        let permit = assert_ready!(first.poll()).unwrap();
        let mut second = task::spawn(session.attempt(Credentials::from_hash(7)));
        assert_pending!(second.poll());
        drop(permit);
        assert!(second.is_woken());
        assert!(assert_ready!(second.poll()).unwrap().is_some());
    }
}
