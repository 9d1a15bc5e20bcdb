use std::{io, time::Duration};

/// What the accept loop does about an accept error.
///
/// Only a listener that is gone stops the loop, and only a shortage of resources makes it
/// wait: anything else is taken to concern one connection (or one client of a custom
/// listener, such as a failed TLS handshake) and skipped, so that no client can stop the
/// server or slow down everyone else's accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// One connection failed (it died before we accepted it, or its client misbehaved):
    /// skip it.
    Connection,
    /// The process or the kernel is out of something (descriptors, buffers, memory): wait
    /// for connections to close and retry, without spinning.
    Resources,
    /// The listener itself is gone: stop.
    Fatal,
}

impl AcceptError {
    pub(crate) fn classify(error: &io::Error) -> Self {
        match error.raw_os_error() {
            Some(code) => classify_os_error(code),
            None if error.kind() == io::ErrorKind::OutOfMemory => Self::Resources,
            // Errors without an OS code come from a custom listener, or from mio, which
            // returns `InvalidInput` for a connection reset before `accept` on macOS.
            None => Self::Connection,
        }
    }
}

#[cfg(unix)]
fn classify_os_error(code: i32) -> AcceptError {
    match code {
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => AcceptError::Resources,
        libc::EBADF | libc::ENOTSOCK | libc::EFAULT => AcceptError::Fatal,
        // On Linux `EINVAL` means the socket is not listening; on macOS and the BSDs,
        // `accept` and `getsockname` return it for a connection the peer already reset.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        libc::EINVAL => AcceptError::Fatal,
        // accept(2) on Linux: "network errors for the new socket ... should be treated
        // like EAGAIN by retrying"; the other systems say much the same.
        _ => AcceptError::Connection,
    }
}

#[cfg(not(unix))]
fn classify_os_error(_code: i32) -> AcceptError {
    AcceptError::Connection
}

/// Per-connection errors in a row after which the accept loop pauses for
/// [`SKIP_PAUSE`]: a listener that fails every accept the same way must not spin the loop,
/// and a flood of bad clients must still be accepted (and dropped) at tens of thousands a
/// second.
const SKIPS_PER_PAUSE: u32 = 32;
/// The pause after every [`SKIPS_PER_PAUSE`] per-connection errors in a row.
const SKIP_PAUSE: Duration = Duration::from_millis(1);

/// The pauses between accept attempts after errors: an exponential back-off for resource
/// exhaustion, short at first since a closing connection frees a descriptor at once and
/// doubling up to a cap while the shortage lasts; and a short pause now and then during
/// a long run of per-connection errors. A successful accept resets both.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    skipped: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
            skipped: 0,
        }
    }

    /// The pause after an error that means resources are short.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// The pause, if any, after an error that concerned one connection.
    pub(crate) fn after_skip(&mut self) -> Option<Duration> {
        self.skipped = self.skipped.wrapping_add(1);
        self.skipped
            .is_multiple_of(SKIPS_PER_PAUSE)
            .then_some(SKIP_PAUSE)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
        self.skipped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(code: i32) -> AcceptError {
        AcceptError::classify(&io::Error::from_raw_os_error(code))
    }

    #[test]
    fn only_a_dead_listener_is_fatal_and_only_a_shortage_backs_off() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(class_of(code), AcceptError::Resources, "{code}");
        }
        for code in [libc::EBADF, libc::ENOTSOCK, libc::EFAULT] {
            assert_eq!(class_of(code), AcceptError::Fatal, "{code}");
        }
        for code in [
            libc::ECONNABORTED,
            libc::EPROTO,
            libc::EINTR,
            libc::ENOTCONN,
            libc::ECONNRESET,
            libc::EPERM,
        ] {
            assert_eq!(class_of(code), AcceptError::Connection, "{code}");
        }
        let einval = if cfg!(any(target_os = "linux", target_os = "android")) {
            AcceptError::Fatal
        } else {
            AcceptError::Connection
        };
        assert_eq!(class_of(libc::EINVAL), einval);
    }

    #[test]
    fn errors_without_an_os_code_concern_one_connection() {
        use io::ErrorKind::*;
        for kind in [
            InvalidInput,
            NotConnected,
            InvalidData,
            UnexpectedEof,
            Other,
        ] {
            assert_eq!(
                AcceptError::classify(&kind.into()),
                AcceptError::Connection,
                "{kind:?}"
            );
        }
        assert_eq!(
            AcceptError::classify(&OutOfMemory.into()),
            AcceptError::Resources
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(30));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(5));
    }

    #[test]
    fn backoff_saturates_under_an_unbounded_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::MAX);
        let last = (0..100).map(|_| backoff.next_delay()).last();
        assert_eq!(last, Some(Duration::MAX));
    }
}
