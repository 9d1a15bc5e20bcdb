//! Login-failure eviction, and bans for failed logins and every other offence: the
//! protocol and the layers report, the ban check acts.
//!
//! The 2005 server leaked a connection for every failed login, because the login failed
//! deep inside the protocol and nothing outside it could close the socket or remember
//! the peer. Here:
//!
//! - [`SessionLayer`] opens a [`LoginSession`] for each connection
//!   ([`Conn::login_session`](crate::Conn::login_session); the HTTP adapter hands it to
//!   every request, in its `ConnExtensions`). The protocol reports on it:
//!   [`succeeded`](LoginSession::succeeded), [`failed`](LoginSession::failed).
//! - **Eviction** (OpenSSH's `MaxAuthTries`, 1 by default): once a connection has used
//!   up its tries, its [`GracefulClose`](crate::GracefulClose) is raised, so it ends
//!   right after the failure reply is flushed (HTTP: `Connection: close` / GOAWAY after
//!   the response), and it is cut if it has not ended within the eviction grace.
//! - **Bans** (fail2ban's `maxretry`/`findtime`/`bantime`, OpenSSH's
//!   `PerSourcePenalties`): enough offences from one peer key within the window ban it;
//!   each repeat offence multiplies the ban (×2 by default, up to 24 hours), and a peer
//!   quiet for long enough is forgotten. [`BanLayer`] refuses a banned peer's new
//!   connections at accept, before any byte is read; its live connections can be
//!   evicted too. Exempt networks are never banned. The table is bounded and cleans
//!   itself (a peer that offended without being banned is forgotten two windows after
//!   its last offence); when full, it makes way for a new peer by forgetting the one
//!   that matters least, never a banned one (it fills by shards: see [`Overflow`]).
//!   [`Bans`] adds, lists, lifts, exports and imports bans, of peer keys or of whole
//!   networks.
//! - **Penalties** (OpenSSH's `PerSourcePenalties`, generalised): a failed login is one
//!   [`Offence`]; so is every other abuse a layer detects, seen by the ban check when a
//!   connection fails: a first-byte, request, login or TLS handshake timeout, a TLS
//!   handshake the client broke, a malformed HTTP request, and a connection refused by
//!   the per-peer rate or cap while its peer is over it. All feed one record per peer,
//!   one escalation and one ban list. Each kind bans on its own after its
//!   [limit](LoginBuilder::max_offences) within the window, and an offence of any kind
//!   is that fraction of a ban, so kinds add up.
//! - **Kernel bans** (Linux, feature `kernel-bans`): `Bans::kernel_filter` puts a
//!   socket filter on the listener, and a banned peer that keeps reconnecting is
//!   dropped by the kernel until its ban ends, at no cost to the server.
//! - **Pre-authentication budget** (OpenSSH's `MaxStartups start:rate:full` and
//!   `PerSourceMaxStartups`) and a **login timeout** (`LoginGraceTime`), both off unless
//!   set: for protocols where every connection logs in.
//!
//! ## The penalties' defaults
//!
//! None of them bans an honest client; a peer doing it dozens of times within the
//! 10-minute window is not one:
//!
//! - **5 failed logins**, as fail2ban's `maxretry`. Each `401` to a request with
//!   credentials is one, whatever they are: a page that makes six calls at once with an
//!   expired bearer token, over six HTTP/1.1 connections, makes six. Where clients send
//!   tokens that expire, give the HTTP classifier an
//!   [`is_attempt`](ClassifyLogin::is_attempt) that picks only password logins, or
//!   raise [`max_failures`](LoginBuilder::max_failures).
//! - **30 timeouts** ([`max_timeouts`](LoginBuilder::max_timeouts)): browsers open
//!   speculative connections that never send a byte, and mobile networks stall
//!   requests, a few times an hour; 30 in 10 minutes is a silent connection every 20
//!   seconds, all along. A peer holding 32 connections silent until a 10 s first-byte
//!   timeout reaches it in 10 seconds.
//! - **30 TLS handshake failures**: a client may abort a handshake, with an alert, over
//!   a certificate prompt, once per visit.
//! - **30 HTTP protocol errors**: a browser never sends a malformed request; a scanner
//!   or a fuzzer sends many.
//! - **300 refusals over a per-peer limit**: a client that bursts past its rate once,
//!   a page fetching everything at once, is refused a few dozen times at most; a peer
//!   refused 300 times within the window keeps hammering, and a flood reaches 300 in
//!   well under a second.
//!
//! Not offences: idle timeouts and lifetime cuts (a normal end), a client that hangs
//! up (mid-handshake too: it freed what it held), refusals by a global limit (not the
//! peer's doing), and the ban check's own refusals. Neither are PROXY protocol errors:
//! they happen above the ban check and come from the trusted balancer, not the client.
//! A balancer that does not send the PROXY header is the peer of all its clients'
//! connections: exempt it, or it is banned for them.
//!
//! Both layers come from one [`Login`], which holds the state they share. Put the ban
//! check outermost and the session just above the protocol:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_bouncer::login::{AfterFailure, Login, LoginSession};
//! use tower_bouncer::{Conn, timeout::TimedIo};
//! # use tokio::net::TcpStream;
//!
//! let login = Login::builder()
//!     .max_auth_tries(1)
//!     .max_failures(5)
//!     .failure_window(Duration::from_secs(600))
//!     .ban(Duration::from_secs(600))
//!     .login_timeout(Duration::from_secs(30))
//!     .ban_message(&b"ERROR banned\n"[..])
//!     .build()
//!     .expect("a valid policy");
//!
//! let protocol = tower::service_fn(|mut conn: Conn<TcpStream>| async move {
//!     let session = conn.login_session().cloned().expect("from the layer");
//!     // ... read a login; on a bad password, write the reply, then:
//!     if session.failed() == AfterFailure::Closing {
//!         return Ok(()); // closes the connection
//!     }
//!     Ok::<_, std::io::Error>(())
//! });
//! let service = ServiceBuilder::new()
//!     .layer(login.ban_layer())
//!     // rate limits, connection limits, timeouts...
//!     .layer(login.session_layer())
//!     .service(protocol);
//! # let _ = service;
//! let bans = login.bans(); // for an operator: list, lift, export
//! ```
//!
//! For HTTP (feature `http`), the adapter's
//! [`report_logins`](crate::http::HttpServiceBuilder::report_logins), or a
//! [`ReportLoginLayer`] around the application, turns `401` responses and gRPC
//! `UNAUTHENTICATED` to requests that carry credentials into failed logins (a `401` to
//! an anonymous request guessed nothing, and bans no visitor; see [`ClassifyLogin`]).

mod attempts;
mod ban_layer;
mod bans;
#[cfg(feature = "http")]
mod http;
#[cfg(all(feature = "kernel-bans", target_os = "linux"))]
mod kernel_bans;
mod offence;
mod session;
mod session_layer;
mod startups;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{
    ConfigError,
    admission::{Refusal, Refusals},
    counter::Counter,
    deadline::Scaler,
    janitor::Janitor,
    metrics::{BANS_ISSUED, EVICTIONS, PENALTIES},
    peer::{Classified, Overflow, PeerKeying},
    striped::Striped,
    throttle::LogThrottle,
};
pub use ban_layer::{BanCheck, BanLayer, PenaltyFuture};
pub use bans::{Ban, BanError, Bans};
use bans::{BanPolicy, BanTable, Recorded};
#[cfg(feature = "admin")]
pub use bans::{Offender, OffenderRank};
#[cfg(feature = "http")]
pub(crate) use http::{Answer, PendingOutcome, SharedClassifier, report_outcome};
#[cfg(feature = "http")]
pub use http::{
    ClassifyLogin, LoginOutcome, ReportBody, ReportFuture, ReportLogin, ReportLoginLayer,
    StatusClassifier,
};
#[cfg(all(feature = "kernel-bans", target_os = "linux"))]
pub use kernel_bans::{KernelBans, KernelBansStats};
pub use offence::Offence;
pub use session::{AfterFailure, EvictReason, Evicted, LoginSession};
use session_layer::LivePeers;
pub use session_layer::{LoginSessions, SessionFuture, SessionLayer};
use startups::{MaxStartups, Startups};

const DEFAULT_MAX_TRACKED_PEERS: usize = 65_536;

/// How often, at most, the count of bans in force is refreshed for the metrics.
const BANS_ACTIVE_REFRESH: Duration = Duration::from_secs(5);

/// Each kind's default limit; see the [module documentation](self) for why.
const DEFAULT_MAX_FAILURES: u32 = 5;
const DEFAULT_MAX_TIMEOUTS: u32 = 30;
const DEFAULT_MAX_PROTOCOL_ERRORS: u32 = 30;
const DEFAULT_MAX_REFUSALS: u32 = 300;

/// The login policy and the state its two layers share. Cheap to clone.
///
/// See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Login {
    shared: Arc<Shared>,
}

/// Builds a [`Login`]. The defaults: 1 try per connection, a 1 s eviction grace; 5
/// failed logins, or 30 timeouts, TLS handshake failures or HTTP protocol errors, or
/// 300 refusals over a per-peer limit, within 10 minutes ban a peer for 10 minutes,
/// doubling per repeat offence up to 24 hours; a peer forgotten after 24 quiet hours,
/// 65 536 tracked peers; no login timeout and no pre-authentication budget.
///
/// A full table makes way for a new peer by forgetting the one that matters least: a
/// peer with offences only before one with past bans, the stalest first, never a banned
/// one. The table fills by shards, each an equal share of `max_tracked_peers`, so this
/// happens in the new peer's shard once that is full, which may be while the table
/// holds two thirds of its capacity (see [`Overflow`]). Only where that shard holds
/// nothing but bans is a new peer left untracked ([`Overflow::Admit`]) or refused
/// ([`Overflow::Refuse`]).
#[derive(Debug, Clone)]
#[must_use]
pub struct LoginBuilder {
    keying: PeerKeying,
    max_auth_tries: u32,
    eviction_grace: Duration,
    policy: BanPolicy,
    max_tracked_peers: usize,
    overflow: Overflow,
    login_timeout: Option<Duration>,
    max_startups: Option<MaxStartups>,
    per_source_max_startups: Option<usize>,
    evict_banned: bool,
    early_drop_seed: Option<u64>,
    ban_refusal: Refusal,
    startup_refusal: Refusal,
    scaler: Scaler,
}

/// What the login layers have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginStats {
    /// Connections that got a session.
    pub sessions: u64,
    /// Sessions that authenticated.
    pub authenticated: u64,
    /// Failed logins reported.
    pub failed_logins: u64,
    /// Connections evicted after using up their tries.
    pub evicted_after_failures: u64,
    /// Connections evicted for not authenticating in time.
    pub evicted_login_timeout: u64,
    /// Live connections evicted because their peer was banned.
    pub evicted_banned: u64,
    /// Connections evicted on request.
    pub evicted_requested: u64,
    /// Bans issued for offences, of any kind.
    pub bans: u64,
    /// New connections refused because their peer was banned (or, with
    /// [`Overflow::Refuse`], because the ban table was full).
    pub refused_banned: u64,
    /// New connections refused by the pre-authentication budget.
    pub refused_startups: u64,
    /// New connections the ban check or the pre-authentication budget would have
    /// refused, served anyway in [dry run](LoginBuilder::dry_run).
    pub dry_run_refusals: u64,
    /// First-byte timeouts counted against their peer (not exempt, the kind not turned
    /// off), as are the offences below.
    pub first_byte_timeouts: u64,
    /// Request timeouts counted against their peer.
    pub request_timeouts: u64,
    /// Login timeouts counted against their peer.
    pub login_timeouts: u64,
    /// TLS handshake timeouts counted against their peer.
    pub tls_handshake_timeouts: u64,
    /// TLS handshakes the client broke, counted against their peer.
    pub tls_handshake_failures: u64,
    /// Malformed HTTP requests counted against their peer.
    pub http_protocol_errors: u64,
    /// Refusals over a per-peer limit counted against their peer.
    pub over_limit_refusals: u64,
    /// Connections not authenticated yet, now (the pre-authentication budget's count;
    /// connections handed to a framework by a `ProtectedListener` have left it).
    pub unauthenticated: usize,
    /// Peers with offences or bans on record, now.
    pub tracked_peers: usize,
}

/// One line: `sessions 40 (authenticated 30), failed logins 12, evicted 6 (failures
/// 5, login timeout 1, banned 0, requested 0), bans 2, refused 9 (banned 8, startups
/// 1, dry run 0), offences 20, 3 unauthenticated, 5 peers tracked`.
impl std::fmt::Display for LoginStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let evicted = self.evicted_after_failures
            + self.evicted_login_timeout
            + self.evicted_banned
            + self.evicted_requested;
        let offences = self.failed_logins
            + self.first_byte_timeouts
            + self.request_timeouts
            + self.login_timeouts
            + self.tls_handshake_timeouts
            + self.tls_handshake_failures
            + self.http_protocol_errors
            + self.over_limit_refusals;
        write!(
            f,
            "sessions {} (authenticated {}), failed logins {}, evicted {} (failures {}, login timeout {}, banned {}, requested {}), bans {}, refused {} (banned {}, startups {}, dry run {}), offences {}, {} unauthenticated, {} peers tracked",
            self.sessions,
            self.authenticated,
            self.failed_logins,
            evicted,
            self.evicted_after_failures,
            self.evicted_login_timeout,
            self.evicted_banned,
            self.evicted_requested,
            self.bans,
            self.refused_banned + self.refused_startups,
            self.refused_banned,
            self.refused_startups,
            self.dry_run_refusals,
            offences,
            self.unauthenticated,
            self.tracked_peers
        )
    }
}

impl Login {
    /// Puts `policy`'s ban policy (offence limits, window, ban lengths and escalation,
    /// forgetting), tries per connection and login timeout in force for this login and
    /// its layers, for a reload without a restart. Bans in force keep their length (in
    /// a fleet, those from the fleet too); offences on record count under the new
    /// window; a live connection is held to the new tries from its next failure (over
    /// HTTP/2, from its next attempt, which is refused and closes it if the new tries
    /// are already used up), and keeps the login deadline it started with. In a
    /// [fleet](crate::fleet), the store bans and escalates by the new policy from this
    /// replica's next change on: reload every replica the same way.
    /// The rest (keying, table sizes, the pre-authentication budget, messages) stays as
    /// built.
    ///
    /// ```
    /// use tower_bouncer::login::Login;
    ///
    /// let login = Login::builder().max_failures(5).build().unwrap();
    /// login.set_policy(Login::builder().max_failures(3)).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// What [`build`](LoginBuilder::build) refuses; nothing changes then.
    pub fn set_policy(&self, policy: LoginBuilder) -> Result<(), ConfigError> {
        policy.check()?;
        let shared = &self.shared;
        shared.bans.set_policy(policy.policy);
        shared
            .max_auth_tries
            .store(policy.max_auth_tries, Ordering::Relaxed);
        shared
            .login_timeout
            .store(login_timeout_nanos(policy.login_timeout), Ordering::Relaxed);
        Ok(())
    }

    /// Turns [dry run](LoginBuilder::dry_run) on or off for the ban check (its kernel
    /// filter included) and the pre-authentication budget, for the connections that
    /// come next, and for the offences and bans a fleet's replica adds to the fleet's.
    pub fn set_dry_run(&self, dry_run: bool) {
        self.shared.ban_refusal.set_dry_run(dry_run);
        self.shared.startup_refusal.set_dry_run(dry_run);
        self.shared.bans.set_dry_run(dry_run);
    }

    /// A policy with the defaults; see [`LoginBuilder`].
    pub fn builder() -> LoginBuilder {
        LoginBuilder {
            keying: PeerKeying::default(),
            max_auth_tries: 1,
            eviction_grace: Duration::from_secs(1),
            policy: BanPolicy {
                max_offences: default_max_offences(),
                window: Duration::from_secs(600),
                first_ban: Duration::from_secs(600),
                factor: 2,
                max_ban: Duration::from_secs(24 * 3600),
                forget_after: Duration::from_secs(24 * 3600),
            },
            max_tracked_peers: DEFAULT_MAX_TRACKED_PEERS,
            overflow: Overflow::default(),
            login_timeout: None,
            max_startups: None,
            per_source_max_startups: None,
            evict_banned: false,
            early_drop_seed: None,
            ban_refusal: Refusal::default(),
            startup_refusal: Refusal::default(),
            scaler: Scaler::default(),
        }
    }

    /// The layer that refuses banned peers at accept; put it outermost.
    pub fn ban_layer(&self) -> BanLayer {
        BanLayer {
            shared: Striped::from_arc(self.shared.clone()),
        }
    }

    /// The layer that gives each connection its [`LoginSession`]; put it just above the
    /// protocol.
    pub fn session_layer(&self) -> SessionLayer {
        SessionLayer {
            shared: Striped::from_arc(self.shared.clone()),
        }
    }

    /// The operator's handle on the bans.
    pub fn bans(&self) -> Bans {
        Bans {
            table: self.shared.bans.clone(),
            login: Arc::downgrade(&self.shared),
        }
    }

    /// Counters, read without locking.
    pub fn stats(&self) -> LoginStats {
        let shared = &self.shared;
        let stats = &shared.stats;
        LoginStats {
            sessions: stats.sessions.get(),
            authenticated: stats.authenticated.get(),
            failed_logins: stats.failed_logins.get(),
            evicted_after_failures: stats.evicted_after_failures.get(),
            evicted_login_timeout: stats.evicted_login_timeout.get(),
            evicted_banned: stats.evicted_banned.get(),
            evicted_requested: stats.evicted_requested.get(),
            bans: stats.bans.iter().map(Counter::get).sum(),
            refused_banned: stats.refused(&stats.ban_refusals()),
            refused_startups: stats.refused(&stats.startup_refusals()),
            dry_run_refusals: stats
                .ban_refusals()
                .into_iter()
                .chain(stats.startup_refusals())
                .map(Refusals::dry_run)
                .sum(),
            first_byte_timeouts: stats.offences(Offence::FirstByteTimeout),
            request_timeouts: stats.offences(Offence::RequestTimeout),
            login_timeouts: stats.offences(Offence::LoginTimeout),
            tls_handshake_timeouts: stats.offences(Offence::TlsHandshakeTimeout),
            tls_handshake_failures: stats.offences(Offence::TlsHandshakeFailure),
            http_protocol_errors: stats.offences(Offence::HttpProtocolError),
            over_limit_refusals: stats.offences(Offence::OverLimit),
            unauthenticated: shared.startups.unauthenticated(),
            tracked_peers: shared.bans.len(),
        }
    }
}

impl LoginBuilder {
    // With the login layers, exempt peers are never banned and have no per-peer budget;
    // a table full of bans leaves a new peer's offences unrecorded, or refuses it.
    crate::peer::peer_table_builder_methods!();

    /// Failed logins a connection may make before it is closed (OpenSSH's
    /// `MaxAuthTries`); 1 by default.
    pub fn max_auth_tries(mut self, tries: u32) -> Self {
        self.max_auth_tries = tries;
        self
    }

    /// How long an evicted connection has to finish its reply and close before it is
    /// cut; 1 s by default.
    pub fn eviction_grace(mut self, grace: Duration) -> Self {
        self.eviction_grace = grace;
        self
    }

    /// Failed logins from one peer within the [window](Self::failure_window) that ban it
    /// (fail2ban's `maxretry`); 5 by default, at least 1. The same as
    /// [`max_offences`](Self::max_offences) for [`Offence::FailedLogin`].
    pub fn max_failures(self, failures: u32) -> Self {
        self.max_offences(Offence::FailedLogin, failures)
    }

    /// Timeouts from one peer within the [window](Self::failure_window) that ban it:
    /// first-byte, request (a minimum-rate cut included), login and TLS handshake
    /// timeouts, each one offence; 30 by default, 0 counts none. Sets
    /// [`max_offences`](Self::max_offences) for each of these kinds.
    pub fn max_timeouts(mut self, timeouts: u32) -> Self {
        for offence in Offence::TIMEOUTS {
            self = self.max_offences(offence, timeouts);
        }
        self
    }

    /// Offences of this kind alone from one peer within the
    /// [window](Self::failure_window) that ban it; 0 counts none (but failed logins need
    /// at least 1). Kinds add up: each offence is `1/limit` of a ban, its kind's limit.
    /// The defaults are in the [module documentation](self).
    pub fn max_offences(mut self, offence: Offence, limit: u32) -> Self {
        self.policy.max_offences[offence.index()] = limit;
        self
    }

    /// The window offences are counted in (fail2ban's `findtime`); 10 minutes by
    /// default.
    pub fn failure_window(mut self, window: Duration) -> Self {
        self.policy.window = window;
        self
    }

    /// The first ban's length (fail2ban's `bantime`); 10 minutes by default.
    pub fn ban(mut self, length: Duration) -> Self {
        self.policy.first_ban = length;
        self
    }

    /// Each repeat offence multiplies the ban by `factor`, up to `max`; ×2 up to 24
    /// hours by default.
    pub fn ban_escalation(mut self, factor: u32, max: Duration) -> Self {
        self.policy.factor = factor;
        self.policy.max_ban = max;
        self
    }

    /// A peer neither banned nor offending for this long (counted from its last offence
    /// or the end of its ban, whichever is later) is forgotten, repeat offences included;
    /// 24 hours by default. A peer never banned is forgotten sooner, once its
    /// offences have left the window (two windows after the last).
    pub fn forget_after(mut self, quiet: Duration) -> Self {
        self.policy.forget_after = quiet;
        self
    }

    /// Closes a connection that has not authenticated within `timeout` of connecting
    /// (OpenSSH's `LoginGraceTime`); off by default, since an HTTP server has
    /// anonymous connections. Not applied to connections handed to a framework by a
    /// [`ProtectedListener`](crate::serve::ProtectedListener): nothing there reports a
    /// login.
    pub fn login_timeout(mut self, timeout: Duration) -> Self {
        self.login_timeout = Some(timeout);
        self
    }

    /// Shrinks the login timeout as `overload`'s pressure rises. See the
    /// [`overload`](crate::overload) module.
    #[cfg(feature = "overload")]
    pub fn overload(mut self, overload: &crate::overload::Overload) -> Self {
        self.scaler = Scaler::new(overload);
        self
    }

    /// OpenSSH's `MaxStartups start:rate:full`: from `start` unauthenticated
    /// connections, refuse a new one with probability `rate_percent`%, rising linearly to
    /// every one at `full`. Off by default. A connection handed to a framework by a
    /// [`ProtectedListener`](crate::serve::ProtectedListener) stops counting then (its
    /// TLS handshake and PROXY header done): nothing there reports a login.
    pub fn max_startups(mut self, start: usize, rate_percent: u8, full: usize) -> Self {
        self.max_startups = Some(MaxStartups {
            start,
            rate_percent,
            full,
        });
        self
    }

    /// OpenSSH's `PerSourceMaxStartups`: at most `max` unauthenticated connections per
    /// peer key. Off by default. Under a
    /// [`ProtectedListener`](crate::serve::ProtectedListener), as for
    /// [`max_startups`](Self::max_startups), only until the framework is handed the
    /// connection.
    pub fn per_source_max_startups(mut self, max: usize) -> Self {
        self.per_source_max_startups = Some(max);
        self
    }

    /// Also evict a newly banned peer's live connections, whoever banned it: its
    /// offences, an operator ([`Bans::ban`], an import, the admin page) or the fleet.
    /// Off by default (its new connections are always refused). Not in dry run, which
    /// serves banned peers; nor for a network banned whole that is wider than a peer
    /// key: its peers' new connections are refused, their live ones go on.
    pub fn evict_banned_connections(mut self, evict: bool) -> Self {
        self.evict_banned = evict;
        self
    }

    /// Seeds the early drop's random draw, for reproducible tests; random otherwise.
    pub fn early_drop_seed(mut self, seed: u64) -> Self {
        self.early_drop_seed = Some(seed);
        self
    }

    /// A short message written to a banned peer's refused connection, such as
    /// `b"ERROR banned\n"`. None by default.
    pub fn ban_message(mut self, message: impl Into<bytes::Bytes>) -> Self {
        self.ban_refusal.set_message(message.into());
        self
    }

    /// A short message written to a connection refused by the pre-authentication
    /// budget. None by default.
    pub fn startup_message(mut self, message: impl Into<bytes::Bytes>) -> Self {
        self.startup_refusal.set_message(message.into());
        self
    }

    /// Dry run for the ban check and the pre-authentication budget: a connection they
    /// would refuse is counted (in `dry_run_refusals`) and logged, and served anyway.
    /// Offences are still counted and bans still made, so that the ban list shows what
    /// enforcing would do; the kernel filter (`Bans::kernel_filter`) drops nobody. In a
    /// [fleet](crate::fleet), a replica in dry run applies the fleet's bans but adds
    /// none: its offences and its bans (by offences, by an operator, by an import) stay
    /// in its own table. Off by default. See [dry run](crate::admission#dry-run).
    pub fn dry_run(self, dry_run: bool) -> Self {
        self.ban_refusal.set_dry_run(dry_run);
        self.startup_refusal.set_dry_run(dry_run);
        self
    }

    /// Answers a banned peer's connection with an HTTP `429` and a connection refused by
    /// the pre-authentication budget with a `503`, in its own protocol (HTTP/1.1,
    /// HTTP/2 or gRPC), instead of a message: see the admission layers'
    /// `refusal_http`, such as
    /// [`ConnectionLimitBuilder::refusal_http`](crate::limit::ConnectionLimitBuilder::refusal_http).
    #[cfg(feature = "http")]
    pub fn refusal_http(mut self) -> Self {
        self.ban_refusal.set_http();
        self.startup_refusal.set_http();
        self
    }

    /// How long writing a refusal message may take; 100 ms by default.
    pub fn refusal_write_timeout(mut self, timeout: Duration) -> Self {
        self.ban_refusal.set_write_timeout(timeout);
        self.startup_refusal.set_write_timeout(timeout);
        self
    }

    /// What `build` refuses.
    fn check(&self) -> Result<(), ConfigError> {
        let zero = |setting| ConfigError::Zero { setting };
        let policy = &self.policy;
        if self.max_auth_tries == 0 {
            return Err(zero("max_auth_tries"));
        }
        if policy.max_offences[Offence::FailedLogin.index()] == 0 {
            return Err(zero("max_failures"));
        }
        for (value, setting) in [
            (policy.window, "failure_window"),
            (policy.first_ban, "ban"),
            (policy.forget_after, "forget_after"),
            (self.login_timeout.unwrap_or(Duration::MAX), "login_timeout"),
        ] {
            if value.is_zero() {
                return Err(zero(setting));
            }
        }
        if policy.factor == 0 {
            return Err(zero("ban_escalation"));
        }
        if policy.max_ban < policy.first_ban {
            return Err(ConfigError::Inconsistent {
                reason: "the ban escalation's maximum is below the first ban",
            });
        }
        if self.max_tracked_peers == 0 {
            return Err(zero("max_tracked_peers"));
        }
        if let Some(startups) = self.max_startups {
            if startups.full == 0 {
                return Err(zero("max_startups"));
            }
            if startups.start > startups.full || startups.rate_percent > 100 {
                return Err(ConfigError::Inconsistent {
                    reason: "max_startups needs start <= full and a rate of at most 100%",
                });
            }
        }
        if self.per_source_max_startups == Some(0) {
            return Err(zero("per_source_max_startups"));
        }
        Ok(())
    }

    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero count or length, [`ConfigError::Inconsistent`]
    /// for a ban cap below the first ban or a start above `full`.
    pub fn build(self) -> Result<Login, ConfigError> {
        self.check()?;
        let policy = self.policy;
        let seed = self
            .early_drop_seed
            .unwrap_or_else(|| std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0));
        let bans = BanTable::new(policy, self.keying.clone(), self.max_tracked_peers);
        bans.set_dry_run(self.ban_refusal.is_dry_run());
        Ok(Login {
            shared: Arc::new(Shared {
                bans: Arc::new(bans),
                // Often enough to forget peers whose offences have left the window
                // within about two windows, and quiet ones soon after `forget_after`.
                // With metrics, often enough for the count of bans in force to be
                // current.
                sweep_every: (policy.forget_after / 8)
                    .min(policy.window)
                    .clamp(Duration::from_secs(1), Duration::from_secs(3600))
                    .min(if cfg!(feature = "metrics") {
                        BANS_ACTIVE_REFRESH
                    } else {
                        Duration::MAX
                    }),
                janitor: Janitor::default(),
                keying: self.keying,
                max_auth_tries: AtomicU32::new(self.max_auth_tries),
                eviction_grace: self.eviction_grace,
                login_timeout: AtomicU64::new(login_timeout_nanos(self.login_timeout)),
                scaler: self.scaler,
                overflow: self.overflow,
                startups: Arc::new(Startups::new(
                    self.max_startups,
                    self.per_source_max_startups
                        .map(|max| (max, self.max_tracked_peers)),
                    seed,
                )),
                live: self
                    .evict_banned
                    .then(|| LivePeers::new(self.max_tracked_peers)),
                ban_refusal: self.ban_refusal,
                startup_refusal: self.startup_refusal,
                refusal_log: LogThrottle::new(Duration::from_secs(1)),
                ban_log: LogThrottle::new(Duration::from_secs(1)),
                stats: Counters::new(),
            }),
        })
    }
}

/// [`Shared::login_timeout`] when there is none.
const NO_LOGIN_TIMEOUT: u64 = u64::MAX;

fn login_timeout_nanos(timeout: Option<Duration>) -> u64 {
    timeout.map_or(NO_LOGIN_TIMEOUT, |timeout| {
        u64::try_from(timeout.as_nanos()).map_or(NO_LOGIN_TIMEOUT - 1, |nanos| {
            nanos.min(NO_LOGIN_TIMEOUT - 1)
        })
    })
}

/// The state both layers share.
#[derive(Debug)]
pub(crate) struct Shared {
    keying: PeerKeying,
    bans: Arc<BanTable>,
    sweep_every: Duration,
    janitor: Janitor,
    /// Changed by a reload, as is the login timeout.
    max_auth_tries: AtomicU32,
    eviction_grace: Duration,
    /// In nanoseconds; [`NO_LOGIN_TIMEOUT`] for none.
    login_timeout: AtomicU64,
    /// What shrinks the login timeout under load.
    scaler: Scaler,
    overflow: Overflow,
    startups: Arc<Startups>,
    /// Live connections per peer, to evict them when their peer is banned.
    live: Option<LivePeers>,
    ban_refusal: Refusal,
    startup_refusal: Refusal,
    refusal_log: LogThrottle,
    ban_log: LogThrottle,
    stats: Counters,
}

/// A [`Login`] that does not keep it alive: what a fleet's sync task holds.
#[cfg(feature = "fleet")]
#[derive(Debug, Clone)]
pub(crate) struct WeakLogin(std::sync::Weak<Shared>);

#[cfg(feature = "fleet")]
impl WeakLogin {
    pub(crate) fn upgrade(&self) -> Option<Login> {
        self.0.upgrade().map(|shared| Login { shared })
    }
}

/// What a fleet's sync task does with a login.
#[cfg(feature = "fleet")]
impl Login {
    pub(crate) fn downgrade(&self) -> WeakLogin {
        WeakLogin(Arc::downgrade(&self.shared))
    }

    /// Shares this login's bans and offences with `fleet`; `false` if they are shared
    /// with one already.
    pub(crate) fn attach_fleet(&self, fleet: Arc<crate::fleet::Shared>) -> bool {
        let joined = self.shared.bans.join_fleet(fleet);
        if joined {
            self.shared.start_janitor();
        }
        joined
    }

    /// Whether this replica adds its bans to the fleet's: not in dry run.
    pub(crate) fn adds_to_fleet(&self) -> bool {
        self.shared.fleet_to_tell().is_some()
    }

    pub(crate) fn fleet_policy(&self) -> crate::fleet::FleetPolicy {
        let policy = self.shared.bans.policy();
        crate::fleet::FleetPolicy::new(
            policy.window,
            policy.first_ban,
            policy.factor,
            policy.max_ban,
            policy.forget_after,
        )
    }

    /// Applies a ban made elsewhere in the fleet, without sending it back; nothing if
    /// the table has it already (a reload brings every ban again).
    pub(crate) fn apply_fleet_ban(&self, key: ipnet::IpNet, remaining: Duration, offences: u32) {
        let shared = &self.shared;
        let (held, held_offences) = shared.bans.standing(key);
        // A ban held here keeps its own end, as bans in force do when a reload
        // shortens the longest ban: only time beyond it is held to the longest now.
        let remaining = if remaining > held {
            remaining.min(shared.bans.policy().max_ban.max(held))
        } else {
            remaining
        };
        // What the store says holds, shorter or not: a ban lifted and made again
        // shorter elsewhere reaches a replica that missed the unban as a shorter ban.
        // A second's slack: the same ban, seen again a little later; but only a ban
        // held can be seen again, however short the fleet's is. (One with no time left
        // holds nothing.)
        if remaining.is_zero()
            || (!held.is_zero()
                && held.abs_diff(remaining) <= Duration::from_secs(1)
                && held_offences >= offences)
        {
            return;
        }
        if let Err(error) = shared
            .bans
            .ban_network(key, remaining, offences, bans::BanEnd::Replace)
        {
            if let Some(suppressed) = shared.ban_log.allow() {
                tracing::warn!(%key, %error, suppressed, "a ban from the fleet could not be applied");
            }
            return;
        }
        shared.bans.metrics.fleet.add(1);
        if held.is_zero() {
            shared.evict_banned(key);
        }
    }

    /// Lifts a ban as the fleet says, without sending it back; `false` if there was
    /// none here (then the table, its offence counts included, is left as it is).
    pub(crate) fn apply_fleet_unban(&self, key: ipnet::IpNet) -> bool {
        let (held, _) = self.shared.bans.standing(key);
        if held.is_zero() {
            return false;
        }
        let lifted = self.shared.bans.unban_network(key);
        self.shared.bans.lifted(key);
        lifted
    }
}

/// The limits of [`LoginBuilder`]'s defaults, by kind.
fn default_max_offences() -> [u32; Offence::COUNT] {
    let mut limits = [0; Offence::COUNT];
    for (offence, limit) in [
        (Offence::FailedLogin, DEFAULT_MAX_FAILURES),
        (Offence::FirstByteTimeout, DEFAULT_MAX_TIMEOUTS),
        (Offence::RequestTimeout, DEFAULT_MAX_TIMEOUTS),
        (Offence::LoginTimeout, DEFAULT_MAX_TIMEOUTS),
        (Offence::TlsHandshakeTimeout, DEFAULT_MAX_TIMEOUTS),
        (Offence::TlsHandshakeFailure, DEFAULT_MAX_PROTOCOL_ERRORS),
        (Offence::HttpProtocolError, DEFAULT_MAX_PROTOCOL_ERRORS),
        (Offence::OverLimit, DEFAULT_MAX_REFUSALS),
    ] {
        limits[offence.index()] = limit;
    }
    limits
}

#[derive(Debug)]
struct Counters {
    sessions: Counter,
    authenticated: Counter,
    failed_logins: Counter,
    evicted_after_failures: Counter,
    evicted_login_timeout: Counter,
    evicted_banned: Counter,
    evicted_requested: Counter,
    /// Bans issued for offences, by the kind of the offence that made each.
    bans: [Counter; Offence::COUNT],
    refused_banned: Refusals,
    refused_table_full: Refusals,
    refused_startups_full: Refusals,
    refused_early_drop: Refusals,
    refused_peer_startups: Refusals,
    /// Offences counted against their peer, by kind.
    offences: [Counter; Offence::COUNT],
}

impl Counters {
    fn new() -> Self {
        let eviction = |reason| Counter::metric(EVICTIONS, &[("reason", reason)]);
        Self {
            sessions: Counter::default(),
            authenticated: Counter::default(),
            failed_logins: Counter::default(),
            evicted_after_failures: eviction("failed_logins"),
            evicted_login_timeout: eviction("login_timeout"),
            evicted_banned: eviction("banned"),
            evicted_requested: eviction("requested"),
            bans: Offence::ALL
                .map(|offence| Counter::metric(BANS_ISSUED, &[("reason", offence.label())])),
            refused_banned: Refusals::new("ban", "banned"),
            refused_table_full: Refusals::new("ban", "peer_table_full"),
            refused_startups_full: Refusals::new("startups", "startups_full"),
            refused_early_drop: Refusals::new("startups", "early_drop"),
            refused_peer_startups: Refusals::new("startups", "peer_startups"),
            offences: Offence::ALL
                .map(|offence| Counter::metric(PENALTIES, &[("kind", offence.label())])),
        }
    }

    fn ban_refusals(&self) -> [&Refusals; 2] {
        [&self.refused_banned, &self.refused_table_full]
    }

    fn startup_refusals(&self) -> [&Refusals; 3] {
        [
            &self.refused_startups_full,
            &self.refused_early_drop,
            &self.refused_peer_startups,
        ]
    }

    fn refused(&self, refusals: &[&Refusals]) -> u64 {
        refusals.iter().map(|refusals| refusals.refused()).sum()
    }

    /// The counters of refusals for `reason`, by the ban check or the budget.
    fn refusals(&self, reason: &crate::admission::Reason) -> &Refusals {
        use crate::admission::Reason;
        match reason {
            Reason::Banned { .. } => &self.refused_banned,
            Reason::StartupsFull { .. } => &self.refused_startups_full,
            Reason::EarlyDrop { .. } => &self.refused_early_drop,
            Reason::PeerStartups { .. } => &self.refused_peer_startups,
            _ => &self.refused_table_full,
        }
    }
    fn offences(&self, offence: Offence) -> u64 {
        self.offences[offence.index()].get()
    }

    fn evicted(&self, reason: EvictReason) {
        match reason {
            EvictReason::AuthFailures(_) => &self.evicted_after_failures,
            EvictReason::LoginTimeout(_) => &self.evicted_login_timeout,
            EvictReason::Banned => &self.evicted_banned,
            EvictReason::Requested => &self.evicted_requested,
        }
        .add();
    }
}

impl Shared {
    /// Failed logins a connection may make, as now in force.
    pub(crate) fn max_auth_tries(&self) -> u32 {
        self.max_auth_tries.load(Ordering::Relaxed)
    }

    /// The login timeout now in force.
    pub(crate) fn login_timeout(&self) -> Option<Duration> {
        match self.login_timeout.load(Ordering::Relaxed) {
            NO_LOGIN_TIMEOUT => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Makes sure a task forgets quiet peers.
    fn start_janitor(&self) {
        self.janitor
            .ensure(&self.bans, self.sweep_every, BanTable::forget_quiet);
    }

    /// Counts `offence` against `peer`, which may ban it. Returns whether the peer is
    /// banned and its live connections are evicted for it: the offending connection is
    /// then being closed too, before its ban notice is polled.
    fn offended(&self, peer: &Classified, offence: Offence) -> bool {
        let recorded = self.bans.record_offence(&peer.at, offence);
        match recorded {
            Recorded::Off => return false,
            Recorded::Banned(length) => self.banned(peer, length, offence),
            Recorded::Counted | Recorded::AlreadyBanned | Recorded::Untracked => {}
        }
        self.stats.offences[offence.index()].add();
        #[cfg(feature = "fleet")]
        if let Some(fleet) = self.fleet_to_tell()
            && recorded != Recorded::AlreadyBanned
        {
            let key = peer.key.network();
            fleet.offence(key, self.bans.policy().points(offence));
            if let Recorded::Banned(length) = recorded {
                let (_, offences) = self.bans.standing(key);
                fleet.ban(key, length, offences, true);
            }
        }
        matches!(recorded, Recorded::Banned(_) | Recorded::AlreadyBanned)
            && self.evicting_live().is_some()
    }

    /// The fleet this login's offences and bans go to, if it is in one: none in dry
    /// run, where they only show what enforcing would do (the fleet's bans are still
    /// applied here). One relaxed load, per offence or ban, never per connection.
    #[cfg(feature = "fleet")]
    pub(super) fn fleet_to_tell(&self) -> Option<&crate::fleet::Shared> {
        self.bans.fleet().filter(|_| !self.ban_refusal.is_dry_run())
    }

    /// `offence` just banned `peer` for `length`.
    fn banned(&self, peer: &Classified, length: Duration, offence: Offence) {
        self.stats.bans[offence.index()].add();
        if let Some(suppressed) = self.ban_log.allow() {
            tracing::warn!(peer = %peer.key, ban = ?length, %offence, suppressed, "peer banned");
            if peer.key.network().addr().is_loopback() {
                tracing::warn!(
                    "a loopback peer is banned: to try a server locally, exempt 127.0.0.0/8 \
                     and ::1 (`PeerKeying::exempt`, or `peers.exempt` in a BouncerConfig)"
                );
            }
        }
        if let Some(live) = self.evicting_live() {
            session_layer::evict_live(live, &peer.at);
        }
    }

    /// The live connections per peer, if a newly banned peer's are evicted: asked for,
    /// and not in dry run, where a ban only shows what enforcing would do.
    fn evicting_live(&self) -> Option<&LivePeers> {
        self.live
            .as_ref()
            .filter(|_| !self.ban_refusal.is_dry_run())
    }

    /// Evicts the live connections of the peer key `network` bans, if they are to be.
    /// A network wider than a key holds many peers, none of them looked up by it: their
    /// live connections go on, and their new ones are refused.
    pub(super) fn evict_banned(&self, network: ipnet::IpNet) {
        if let Some(live) = self.evicting_live()
            && !self.keying.is_wider_than_a_key(&network)
        {
            let key = self.keying.key(network.addr());
            session_layer::evict_live(live, &crate::peer::table::Located::new(&key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line() {
        let stats = LoginStats {
            sessions: 40,
            authenticated: 30,
            failed_logins: 12,
            evicted_after_failures: 5,
            evicted_login_timeout: 1,
            evicted_banned: 0,
            evicted_requested: 0,
            bans: 2,
            refused_banned: 8,
            refused_startups: 1,
            dry_run_refusals: 0,
            first_byte_timeouts: 3,
            request_timeouts: 0,
            login_timeouts: 1,
            tls_handshake_timeouts: 0,
            tls_handshake_failures: 0,
            http_protocol_errors: 0,
            over_limit_refusals: 4,
            unauthenticated: 3,
            tracked_peers: 5,
        };
        assert_eq!(
            stats.to_string(),
            "sessions 40 (authenticated 30), failed logins 12, evicted 6 (failures 5, login timeout 1, banned 0, requested 0), bans 2, refused 9 (banned 8, startups 1, dry run 0), offences 20, 3 unauthenticated, 5 peers tracked"
        );
    }
}
