use std::{io, time::Duration};

/// What the accept loop does about an accept error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// The connection died between the kernel queueing it and us accepting it: skip it.
    Connection,
    /// The process or the kernel is out of something (descriptors, buffers, memory): wait
    /// for connections to close and retry, without spinning.
    Resources,
    /// The listener itself is gone: stop.
    Fatal,
}

impl AcceptError {
    pub(crate) fn classify(error: &io::Error) -> Self {
        use io::ErrorKind::*;
        if let Some(class) = error.raw_os_error().and_then(classify_os_error) {
            return class;
        }
        match error.kind() {
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
            | TimedOut | PermissionDenied | HostUnreachable | NetworkUnreachable | NetworkDown => {
                Self::Connection
            }
            InvalidInput | NotConnected => Self::Fatal,
            // Unknown errors are retried with back-off: never spin, never give up on a
            // listener that may still work.
            _ => Self::Resources,
        }
    }
}

#[cfg(unix)]
fn classify_os_error(code: i32) -> Option<AcceptError> {
    // accept(2) on Linux: "network errors for the new socket ... should be treated like
    // EAGAIN by retrying".
    match code {
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => Some(AcceptError::Resources),
        libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT => Some(AcceptError::Fatal),
        libc::ECONNABORTED
        | libc::EPROTO
        | libc::ENETDOWN
        | libc::ENOPROTOOPT
        | libc::EHOSTDOWN
        | libc::EHOSTUNREACH
        | libc::EOPNOTSUPP
        | libc::ENETUNREACH
        | libc::EPERM
        | libc::ETIMEDOUT
        | libc::EINTR
        | libc::EAGAIN => Some(AcceptError::Connection),
        _ => None,
    }
}

#[cfg(not(unix))]
fn classify_os_error(_code: i32) -> Option<AcceptError> {
    None
}

/// Exponential back-off for resource exhaustion: short at first, since a closing
/// connection frees a descriptor at once, doubling up to a cap while the shortage lasts.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_exhaustion_is_retried_and_a_dead_listener_is_fatal() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let error = io::Error::from_raw_os_error(code);
            assert_eq!(
                AcceptError::classify(&error),
                AcceptError::Resources,
                "{error}"
            );
        }
        for code in [libc::ECONNABORTED, libc::EPROTO, libc::EINTR] {
            let error = io::Error::from_raw_os_error(code);
            assert_eq!(
                AcceptError::classify(&error),
                AcceptError::Connection,
                "{error}"
            );
        }
        for code in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK] {
            let error = io::Error::from_raw_os_error(code);
            assert_eq!(AcceptError::classify(&error), AcceptError::Fatal, "{error}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(30));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(5));
    }
}
