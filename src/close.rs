use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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
/// Clones share one signal. A signal made with [`child`](Self::child) is raised
/// whenever its parent is, which is how a server's shutdown reaches every connection.
#[derive(Debug, Clone, Default)]
pub struct GracefulClose {
    token: CancellationToken,
}

impl GracefulClose {
    /// A signal that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// A signal that is raised with this one, and can also be raised on its own without
    /// raising this one.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
        }
    }

    /// Asks the connection to close gracefully. Raising it again does nothing.
    pub fn request(&self) {
        self.token.cancel();
    }

    /// Whether a graceful close has been asked for.
    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once a graceful close has been asked for.
    pub fn requested(&self) -> Requested {
        Requested {
            inner: self.token.clone().cancelled_owned(),
        }
    }
}

/// The future returned by [`GracefulClose::requested`].
#[pin_project::pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Requested {
    #[pin]
    inner: WaitForCancellationFutureOwned,
}

impl Future for Requested {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready, task};

    #[test]
    fn request_wakes_a_waiter_and_is_sticky() {
        let close = GracefulClose::new();
        let mut waiter = task::spawn(close.requested());
        assert_pending!(waiter.poll());
        assert!(!close.is_requested());

        close.clone().request();
        assert!(waiter.is_woken());
        assert_ready!(waiter.poll());
        assert!(close.is_requested());
        assert_ready!(task::spawn(close.requested()).poll());
    }

    #[test]
    fn a_parent_reaches_its_children_but_not_the_reverse() {
        let server = GracefulClose::new();
        let first = server.child();
        let second = server.child();

        first.request();
        assert!(first.is_requested());
        assert!(!second.is_requested());
        assert!(!server.is_requested());

        server.request();
        assert!(second.is_requested());
    }
}
