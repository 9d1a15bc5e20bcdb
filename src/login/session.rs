use std::{
    error::Error,
    fmt,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{Offence, Shared, attempts::Attempts, startups::StartupSlot};
use crate::{
    GracefulClose,
    peer::{Classified, PeerKey},
    striped::Handle,
};

/// One connection's login, as the protocol reports it.
///
/// [`SessionLayer`](super::SessionLayer) opens one for every connection
/// ([`Conn::login_session`](crate::Conn::login_session)), and the HTTP adapter hands it
/// to every request (`ConnExtensions::login_session`), so a raw
/// protocol, an axum handler or middleware, or a tonic interceptor reports on the same
/// session. Clones report on the same connection.
///
/// A failed login counts against the connection (once it has used up its tries, it is
/// closed right after the failure reply is flushed: the connection's
/// [`GracefulClose`] is raised, and the connection is cut if it has not finished within
/// the eviction grace) and against the peer (enough failures within the window ban it).
#[derive(Debug, Clone)]
pub struct LoginSession {
    pub(super) state: Arc<SessionState>,
}

/// What happens to the connection after a failed login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a protocol should stop reading once its connection is closing"]
pub enum AfterFailure {
    /// The connection may try again.
    TryAgain,
    /// The connection is being closed (it has used up its tries, its peer is banned,
    /// or it was evicted): write the failure reply, flush it, and end; it is cut after
    /// the eviction grace otherwise.
    Closing,
}

/// Why the session layer closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvictReason {
    /// It failed this many logins, its maximum.
    AuthFailures(u32),
    /// It did not authenticate within this long of connecting.
    LoginTimeout(Duration),
    /// Its peer was banned while it was connected.
    Banned,
    /// The protocol or an operator asked for it.
    Requested,
}

impl fmt::Display for EvictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvictReason::AuthFailures(failures) => write!(f, "{failures} failed logins"),
            EvictReason::LoginTimeout(limit) => {
                write!(f, "not authenticated within {limit:?}")
            }
            EvictReason::Banned => f.write_str("its peer was banned"),
            EvictReason::Requested => f.write_str("eviction requested"),
        }
    }
}

/// A connection the session layer cut because it did not finish within the eviction
/// grace after being told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Why it was told to close.
    pub reason: EvictReason,
}

impl fmt::Display for Evicted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection evicted ({}) and cut after its grace",
            self.reason
        )
    }
}

impl Error for Evicted {}

#[derive(Debug)]
pub(crate) struct SessionState {
    pub(super) shared: Arc<Handle<Shared>>,
    /// `None` for an exempt peer: never counted, never banned.
    pub(super) peer: Option<Classified>,
    failures: AtomicU32,
    authenticated: AtomicBool,
    /// Handed to a framework that reports no logins: the login timeout is off.
    handed_over: AtomicBool,
    /// The connection's graceful close, raised on eviction (with its eviction mark,
    /// for the session layer to cut after its grace).
    pub(super) close: GracefulClose,
    reason: OnceLock<EvictReason>,
    /// The connection's place in the pre-authentication budget, left on success.
    startup: Mutex<Option<StartupSlot>>,
    /// Login attempts in flight, held to the tries left (see [`super::attempts`]);
    /// made for the connections that send any.
    pub(super) attempts: OnceLock<Box<Mutex<Attempts>>>,
    /// The [`Credentials`](super::attempts::Credentials) the connection logged in with,
    /// which go on at once from then; 0 until then, or if none did.
    pub(super) logged_in_with: AtomicU64,
}

impl SessionState {
    pub(super) fn new(
        shared: Arc<Handle<Shared>>,
        peer: Option<Classified>,
        close: GracefulClose,
        startup: StartupSlot,
    ) -> Self {
        Self {
            shared,
            peer,
            failures: AtomicU32::new(0),
            authenticated: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            close,
            reason: OnceLock::new(),
            startup: Mutex::new(Some(startup)),
            attempts: OnceLock::new(),
            logged_in_with: AtomicU64::new(0),
        }
    }

    /// Failed logins this connection may still make; 0 once it is being closed.
    pub(super) fn tries_left(&self) -> u32 {
        if self.reason.get().is_some() {
            return 0;
        }
        self.shared
            .max_auth_tries()
            .saturating_sub(self.failures.load(Ordering::Acquire))
    }

    /// Whether the connection is being closed by the session layer.
    pub(super) fn is_evicted(&self) -> bool {
        self.reason.get().is_some()
    }

    pub(super) fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Whether the login timeout still applies: not once logged in, nor once handed to
    /// a framework that reports no logins.
    pub(super) fn awaits_login(&self) -> bool {
        !self.is_authenticated() && !self.handed_over.load(Ordering::Acquire)
    }

    pub(super) fn reason(&self) -> EvictReason {
        self.reason.get().copied().unwrap_or(EvictReason::Requested)
    }

    /// Asks the connection to close; the first reason given is the one kept. A login
    /// timeout is an offence: counted here, as most such connections then close
    /// gracefully, with no error for the ban check to see. The attempts waiting for a
    /// place are woken, to be refused.
    pub(super) fn evict(&self, reason: EvictReason) {
        if self.reason.set(reason).is_ok() {
            self.shared.stats.evicted(reason);
            tracing::debug!(%reason, "connection evicted");
            if let (EvictReason::LoginTimeout(_), Some(peer)) = (reason, &self.peer) {
                self.shared.offended(peer, Offence::LoginTimeout);
            }
            self.wake_waiting_attempts();
        }
        self.close.evict();
    }

    /// The connection has used up its tries, found by an attempt that would make one
    /// more: it is closed, if a failure has not closed it already (a reload lowered
    /// the tries below its failures).
    pub(super) fn tries_used_up(&self) {
        if !self.is_evicted() {
            let failures = self.failures.load(Ordering::Acquire);
            self.evict(EvictReason::AuthFailures(failures));
        }
    }

    /// Gives back the place in the pre-authentication budget.
    pub(super) fn leave_startups(&self) {
        drop(
            self.startup
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

impl LoginSession {
    /// The connection is handed to a framework (`axum::serve`, tonic's server, under
    /// [`ProtectedListener`](crate::serve::ProtectedListener)) whose requests carry no
    /// session, so nothing will report its login: the login timeout, which would cut
    /// it and count an offence however busy it is, no longer applies, and it leaves
    /// the pre-authentication budget, which would otherwise count it for its whole life
    /// and refuse its peer's next connections (an offence each).
    #[cfg(feature = "serve")]
    pub(crate) fn hand_over(&self) {
        self.state.handed_over.store(true, Ordering::Release);
        self.state.leave_startups();
    }

    /// The connection authenticated: it leaves the pre-authentication budget, and the
    /// login timeout no longer applies to it.
    pub fn succeeded(&self) {
        let state = &self.state;
        if !state.authenticated.swap(true, Ordering::AcqRel) {
            state.shared.stats.authenticated.add();
            state.leave_startups();
            // The attempts with the credentials that logged in go on from now.
            state.logged_in();
        }
    }

    /// A login failed on this connection. Counts against the connection's tries and
    /// the peer's record, which may ban the peer.
    ///
    /// Answers [`AfterFailure::Closing`] whenever the connection is being closed: it
    /// has used up its tries, this failure banned its peer (whose live connections are
    /// evicted), or it was evicted before (asked for, a ban, the login timeout).
    pub fn failed(&self) -> AfterFailure {
        let state = &self.state;
        let shared = &state.shared;
        let failures = state.failures.fetch_add(1, Ordering::AcqRel) + 1;
        shared.stats.failed_logins.add();
        let banned = state
            .peer
            .as_ref()
            .is_some_and(|peer| shared.offended(peer, Offence::FailedLogin));
        if failures >= shared.max_auth_tries() {
            state.evict(EvictReason::AuthFailures(failures));
        }
        if banned {
            // Its ban notice would evict it at the next poll; it is closing from now.
            state.evict(EvictReason::Banned);
        }
        if state.is_evicted() {
            AfterFailure::Closing
        } else {
            AfterFailure::TryAgain
        }
    }

    /// Asks for the connection to be closed now: gracefully, then cut after the
    /// eviction grace.
    pub fn evict(&self) {
        self.state.evict(EvictReason::Requested);
    }

    /// Whether the connection has authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.state.is_authenticated()
    }

    /// Failed logins on this connection so far.
    pub fn failures(&self) -> u32 {
        self.state.failures.load(Ordering::Acquire)
    }

    /// The connection's peer key; `None` for an exempt peer, which is never banned.
    pub fn peer_key(&self) -> Option<PeerKey> {
        self.state.peer.map(|peer| peer.key)
    }
}
