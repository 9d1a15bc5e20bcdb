//! What counts against a peer: the kinds of offence, and how a failed connection tells
//! which one it committed.

use std::{error::Error, fmt};

use crate::admission::{Reason, Rejected};

/// Something a peer did that counts toward its ban. Every kind feeds the same record per
/// peer, so offences of different kinds add up, and a ban for one kind escalates the
/// next ban for any other.
///
/// Each kind bans on its own after its [limit](super::LoginBuilder::max_offences) within
/// the failure window; an offence is that fraction of a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Offence {
    /// A failed login, reported with [`LoginSession::failed`](super::LoginSession::failed).
    FailedLogin,
    /// A connection sent nothing within the first-byte timeout (a
    /// [`TimeoutError::FirstByte`](crate::timeout::TimeoutError::FirstByte)).
    FirstByteTimeout,
    /// A request was not complete in time, a minimum-rate cut included (a
    /// [`TimeoutError::Request`](crate::timeout::TimeoutError::Request)).
    RequestTimeout,
    /// A connection did not authenticate within the
    /// [login timeout](super::LoginBuilder::login_timeout), counted when it is evicted.
    LoginTimeout,
    /// A TLS handshake was not complete in time (a `TlsError::Timeout`).
    TlsHandshakeTimeout,
    /// A TLS handshake was refused: the client broke TLS's rules, sent something
    /// other than TLS, or aborted with an alert (a `TlsError::Protocol`). A client that
    /// just hangs up mid-handshake is not counted, nor one whose handshake a draining
    /// server ends (a `TlsError::CloseRequested`).
    TlsHandshakeFailure,
    /// The HTTP adapter found a malformed request: an HTTP/1 request hyper could not
    /// parse, or an HTTP/2 connection hyper closed for breaking the protocol (a GOAWAY
    /// it sent with an error code, such as for a flood of stream resets).
    HttpProtocolError,
    /// A connection was refused by the per-peer rate, the per-peer cap or the
    /// per-peer pre-authentication budget, because its peer was over it. Refusals by
    /// a global limit are not the peer's doing and are not counted, nor are the ban
    /// check's own refusals.
    OverLimit,
}

// Every kind has its place in the arrays indexed by kind.
const _: () = assert!(Offence::OverLimit as usize + 1 == Offence::COUNT);

impl Offence {
    pub(crate) const COUNT: usize = 8;

    /// The timeouts [`max_timeouts`](super::LoginBuilder::max_timeouts) sets.
    pub(crate) const TIMEOUTS: [Offence; 4] = [
        Offence::FirstByteTimeout,
        Offence::RequestTimeout,
        Offence::LoginTimeout,
        Offence::TlsHandshakeTimeout,
    ];

    /// Every kind, in the order of their index.
    pub(crate) const ALL: [Offence; Offence::COUNT] = [
        Offence::FailedLogin,
        Offence::FirstByteTimeout,
        Offence::RequestTimeout,
        Offence::LoginTimeout,
        Offence::TlsHandshakeTimeout,
        Offence::TlsHandshakeFailure,
        Offence::HttpProtocolError,
        Offence::OverLimit,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The kind as a metric's label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Offence::FailedLogin => "failed_login",
            Offence::FirstByteTimeout => "first_byte_timeout",
            Offence::RequestTimeout => "request_timeout",
            Offence::LoginTimeout => "login_timeout",
            Offence::TlsHandshakeTimeout => "tls_handshake_timeout",
            Offence::TlsHandshakeFailure => "tls_handshake_failure",
            Offence::HttpProtocolError => "http_protocol_error",
            Offence::OverLimit => "over_limit",
        }
    }

    /// The offence a connection that failed with `error` committed, if any. Idle
    /// timeouts and lifetime cuts end connections normally, and a client that hangs up
    /// frees what it held: neither is an offence. Login timeouts are counted when the
    /// session evicts, since most such connections then end without an error.
    pub(crate) fn of(error: &(dyn Error + 'static)) -> Option<Offence> {
        if let Some(rejected) = error.downcast_ref::<Rejected>() {
            return over_limit(rejected).then_some(Offence::OverLimit);
        }
        #[cfg(feature = "timeout")]
        if let Some(error) = error.downcast_ref::<std::io::Error>() {
            use crate::timeout::TimeoutError;

            return match error.get_ref()?.downcast_ref::<TimeoutError>()? {
                TimeoutError::FirstByte(_) => Some(Offence::FirstByteTimeout),
                TimeoutError::Request(_) => Some(Offence::RequestTimeout),
                TimeoutError::Idle(_) | TimeoutError::Lifetime(_) => None,
            };
        }
        #[cfg(feature = "tls")]
        if let Some(error) = error.downcast_ref::<crate::tls::TlsError>() {
            use crate::tls::TlsError;

            return match error {
                TlsError::Timeout(_) => Some(Offence::TlsHandshakeTimeout),
                TlsError::Protocol(_) => Some(Offence::TlsHandshakeFailure),
                // A hang-up, and a close the server asked for (its drain).
                TlsError::Io(_) | TlsError::CloseRequested => None,
            };
        }
        #[cfg(feature = "http")]
        if let Some(error) = error.downcast_ref::<hyper::Error>() {
            return breaks_http(error).then_some(Offence::HttpProtocolError);
        }
        None
    }
}

/// Whether a refusal was the peer's own doing: it was over a limit of its own.
fn over_limit(rejected: &Rejected) -> bool {
    match rejected.reason() {
        #[cfg(feature = "peer-limit")]
        Reason::PeerLimit { .. } => true,
        #[cfg(feature = "rate-limit")]
        Reason::PeerRate { .. } => true,
        Reason::PeerStartups { .. } => true,
        _ => false,
    }
}

/// Whether hyper ended a connection because its client broke HTTP: a request it could
/// not parse, or an HTTP/2 connection error it detected itself.
#[cfg(feature = "http")]
fn breaks_http(error: &hyper::Error) -> bool {
    error.is_parse()
        || error
            .source()
            .and_then(|source| source.downcast_ref::<h2::Error>())
            .is_some_and(|error| {
                error.is_go_away()
                    && error.is_library()
                    && error.reason() != Some(h2::Reason::NO_ERROR)
            })
}

impl fmt::Display for Offence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Offence::FailedLogin => "failed login",
            Offence::FirstByteTimeout => "first-byte timeout",
            Offence::RequestTimeout => "request timeout",
            Offence::LoginTimeout => "login timeout",
            Offence::TlsHandshakeTimeout => "TLS handshake timeout",
            Offence::TlsHandshakeFailure => "TLS handshake failure",
            Offence::HttpProtocolError => "HTTP protocol error",
            Offence::OverLimit => "refused over a per-peer limit",
        })
    }
}
