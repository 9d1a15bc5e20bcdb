use std::{fs::File, io};

use futures_util::FutureExt;

use super::Listener;

/// The most connections closed at one back-off tick: enough to empty a common backlog
/// (tokio's default is 1024) in a few ticks, few enough that one tick takes a
/// millisecond or so, not the runtime's thread.
pub(crate) const SHED_PER_TICK: usize = 256;

/// One descriptor kept in reserve, so that a process out of descriptors can still
/// close the connections it cannot serve (the trick of libev and nginx).
///
/// Out of descriptors, `accept` fails and leaves the connection in the kernel's
/// backlog, where its client waits with nothing to tell it why. With a descriptor in
/// reserve, the accept loop closes the reserve, accepts and closes what waits in the
/// backlog, and opens the reserve again: those clients see their connection closed at
/// once and can go elsewhere or come back later.
#[derive(Debug)]
pub(crate) struct ReserveDescriptor {
    enabled: bool,
    spare: Option<File>,
}

impl ReserveDescriptor {
    /// A reserve, held from now on if `enabled`.
    pub(crate) fn new(enabled: bool) -> Self {
        let mut reserve = Self {
            enabled,
            spare: None,
        };
        reserve.refill();
        reserve
    }

    /// Opens the spare descriptor again if it is wanted and missing (it may have been
    /// impossible to open while descriptors were short).
    pub(crate) fn refill(&mut self) {
        if self.enabled && self.spare.is_none() {
            self.spare = File::open("/dev/null").ok();
        }
    }

    /// Frees the spare, then accepts and closes the connections that are already
    /// waiting, at most [`SHED_PER_TICK`]. Never waits: it stops at the first accept
    /// that is not ready at once, or fails.
    pub(crate) fn shed<L: Listener>(&mut self, listener: &mut L) -> Shed {
        let Some(spare) = self.spare.take() else {
            return Shed::NoSpare;
        };
        drop(spare);
        let mut closed = 0;
        let outcome = loop {
            if closed == SHED_PER_TICK {
                break Shed::MoreWaiting;
            }
            // Bounded here, not by the runtime's budget, which would stop it early.
            match tokio::task::unconstrained(listener.accept()).now_or_never() {
                Some(Ok((connection, _))) => {
                    drop(connection);
                    closed += 1;
                }
                None => break Shed::Emptied,
                Some(Err(_)) => break Shed::Failed,
            }
        };
        self.refill();
        outcome
    }
}

/// How closing what waits in the backlog ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// The backlog is empty: the next accept waits for a client, without spinning.
    Emptied,
    /// [`SHED_PER_TICK`] closed, and more may wait.
    MoreWaiting,
    /// An accept failed (another thread took the descriptor, say).
    Failed,
    /// No spare to free: none could be opened, or the reserve is off.
    NoSpare,
}

/// Whether `error` says the process or the system is out of descriptors, which the
/// reserve can help with (not out of buffers or memory, which it cannot).
pub(crate) fn is_descriptor_shortage(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}
