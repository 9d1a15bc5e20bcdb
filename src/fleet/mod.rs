//! Bans, offences and escalation shared by the replicas of a service (feature `fleet`;
//! Redis with feature `redis`).
//!
//! Each replica keeps its own ban table, and admission reads only that table, as
//! without a fleet: the store is a channel behind it, never on a connection's path. A
//! task per replica ([`Fleet::builder`]) sends the replica's changes to the store and
//! applies the fleet's:
//!
//! - **Offences count across the fleet.** Every offence a replica records (a failed
//!   login, a timeout, ...) is also added to the peer's count in the store, at the time
//!   it happened, which bans the peer when the fleet's count reaches a ban:
//!   `max_failures` failed logins spread over the replicas ban, not `max_failures` on
//!   each. The ban's length escalates by the fleet's count of the peer's bans, also
//!   when a replica's own count banned the peer first; and a ban spends the offences
//!   before it, wherever they are counted, even one served while the store was away.
//! - **Bans and unbans reach every replica**: a ban made anywhere (by offences, by the
//!   operator, by an import) is stored with its expiry and offence count and published;
//!   every replica applies it as the message arrives. Unbans too. Between a ban and an
//!   unban of the same key, the later one wins, whatever order they reach the store in
//!   (an unban is remembered as long as the longest ban, `max_ban`, and a ban shared
//!   with the fleet runs at most that long). Two bans in force merge: the later end.
//! - **Bans outlive the replicas**: a replica loads every ban in force when it connects,
//!   so restarting every replica forgets nothing. If the store itself lost its data
//!   (restarted empty), each replica gives it back the bans it holds, and those its
//!   peers served that it still remembers (for `forget_after`): a repeat offender's
//!   next ban still escalates.
//! - **A replica in dry run only watches**
//!   ([`LoginBuilder::dry_run`](crate::login::LoginBuilder::dry_run)): it applies the
//!   fleet's bans and unbans, and counts and bans on its own so that its ban list shows
//!   what enforcing would do, but it adds nothing to the fleet's: its offences and its
//!   bans (by offences, by an operator, by an import) stay in its own table, and it
//!   gives a store that lost its data nothing back. A canary, or the first replica of
//!   a rolling reload, can try a stricter policy in dry run without the others
//!   enforcing it. An operator's unban made on it still reaches every replica. So a
//!   fleet whose replicas are all in dry run shows each replica's own bans only: a
//!   peer that only the fleet's count together would ban (two failures on each of two
//!   replicas, at a limit of four) is banned nowhere, not even in the lists.
//!
//! # How far behind a replica can be
//!
//! Everything is eventually consistent. While the store is reachable, a decision made
//! elsewhere is applied here one message later (a round trip to the store and back:
//! milliseconds; BENCHMARKS.md has the figures), and the fleet's count of a peer's
//! offences is behind by the offences still queued here. The sync task sends changes in
//! batches of up to 256 (one Redis pipeline each): after an outage, the changes made
//! meanwhile go first, and decisions from elsewhere wait behind them. Messages
//! lost on a broken link are repaired when the link is back (the replica sends what it
//! changed meanwhile, then loads everything in force) and by a full reload every
//! [`resync_every`](FleetBuilder::resync_every) (30 s by default), which also corrects a
//! replica whose change lost to a later one.
//!
//! While the store is unreachable, every replica goes on alone: it admits, refuses and
//! bans with what it knows, never waits, and keeps the bans and unbans it makes for the
//! store (the latest of each key; an unban is never dropped for room). Offences made
//! meanwhile are kept too, up to 4096 (the rest are dropped and counted), and count
//! once the store is back as of when they happened: those older than the window, or
//! than the peer's last unban, no longer count. A slow store delays only the sync task.
//!
//! # What the replicas must share
//!
//! One ban policy (window, limits, ban lengths) and one peer keying (prefix lengths):
//! each replica sends the weights and lengths it is configured with, and keys are
//! shared as networks (a /64 ban is a network banned whole on a replica keyed by /128).
//! A reloaded policy ([`Login::set_policy`], `Bouncer::reload`) goes to the store with
//! the replica's next change: reload every replica the same way, as until they all
//! have, the store bans and escalates each change by the policy of the replica that
//! sent it.
//! A replica holds at most 256 networks banned whole; the store keeps at most 65 536
//! bans ([`RedisBackend::max_bans`]; past that, new bans still reach every replica
//! live). Whoever can write the
//! store's keys or publish on its channel bans and unbans on every replica: give the
//! fleet its own Redis user, limited to its prefix.
//!
//! Redis 5 or later; with an eviction policy that never evicts the fleet's keys
//! (`noeviction`, or a `volatile-*` policy: the ban list has no expiry). A failover that
//! loses recent writes loses the bans made in them from the store: the replicas that
//! hold them keep them, but replicas that start later do not get them.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_bouncer::{fleet::{Fleet, RedisBackend}, login::Login};
//!
//! let login = Login::builder().build()?;
//! let backend = RedisBackend::new("redis://127.0.0.1:6379/")?.prefix("api")?;
//! // Inside the tokio runtime: the sync task is spawned on it.
//! let fleet = Fleet::builder(backend).join(&login)?;
//! // ... serve with `login.ban_layer()` and `login.session_layer()` as without a fleet.
//! println!("connected to the fleet: {}", fleet.stats().connected);
//! # Ok(())
//! # }
//! ```

mod backend;
#[cfg(feature = "redis")]
mod redis;
mod sync;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ipnet::IpNet;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

pub use backend::{
    BAN_WEIGHT, Backend, BackendError, BoxFuture, Change, Decision, FleetPolicy, Link, Snapshot,
};
#[cfg(feature = "redis")]
pub use redis::RedisBackend;

use crate::{
    ConfigError,
    counter::Counter,
    deadline::FAR_FUTURE,
    login::Login,
    metrics::{FLEET_CONNECTED, FLEET_DROPPED, FLEET_FAILURES, FLEET_PENDING, Level},
};

/// The most offences waiting for the store; more are dropped (and counted).
const OFFENCE_QUEUE: usize = 4096;
/// The most bans and unbans waiting for the store, one per key; more are dropped (and
/// counted). A ban table holds 65 536 peers by default.
const MAX_PENDING: usize = 65_536 + 256;
const DEFAULT_RESYNC_EVERY: Duration = Duration::from_secs(30);

/// A replica's membership of a fleet: its sync task runs as long as the [`Login`] it
/// joined lives. Cheap to clone; keep one to read [`stats`](Self::stats).
#[derive(Debug, Clone)]
pub struct Fleet {
    shared: Arc<Shared>,
}

/// Builds a [`Fleet`] membership over a [`Backend`].
#[must_use]
pub struct FleetBuilder {
    backend: Arc<dyn Backend>,
    resync_every: Duration,
}

/// What the sync task has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetStats {
    /// Whether the store is reachable now.
    pub connected: bool,
    /// Times the link to the store was made.
    pub connects: u64,
    /// Times connecting failed, or a made link was lost.
    pub failures: u64,
    /// Changes sent to the store: offences, bans, unbans.
    pub sent: u64,
    /// Decisions applied as they came (a replica's own changes come back too).
    pub applied: u64,
    /// Full reloads of what is in force.
    pub resyncs: u64,
    /// Bans and unbans made here that the store has not had yet.
    pub pending: usize,
    /// Offences and bans not sent: too many were waiting for the store, or a batch of
    /// offences failed (offences are not sent twice). The replica still acts on them.
    pub dropped: u64,
}

/// One line: `connected, connects 1, failures 0, sent 12, applied 14, resyncs 3,
/// pending 0, dropped 0`.
impl std::fmt::Display for FleetStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, connects {}, failures {}, sent {}, applied {}, resyncs {}, pending {}, dropped {}",
            if self.connected {
                "connected"
            } else {
                "disconnected"
            },
            self.connects,
            self.failures,
            self.sent,
            self.applied,
            self.resyncs,
            self.pending,
            self.dropped
        )
    }
}

impl Fleet {
    /// Joins the fleet whose store is `backend`.
    pub fn builder(backend: impl Backend) -> FleetBuilder {
        FleetBuilder {
            backend: Arc::new(backend),
            resync_every: DEFAULT_RESYNC_EVERY,
        }
    }

    /// What the sync task has done so far.
    pub fn stats(&self) -> FleetStats {
        let counters = &self.shared.counters;
        FleetStats {
            connected: self.shared.connected.load(Ordering::Relaxed),
            connects: counters.connects.get(),
            failures: counters.failures.get(),
            sent: counters.sent.get(),
            applied: counters.applied.get(),
            resyncs: counters.resyncs.get(),
            pending: self.shared.outbox.pending_len(),
            dropped: counters.dropped.get(),
        }
    }
}

impl FleetBuilder {
    /// How often everything in force is reloaded from the store, to repair what a
    /// lost message missed; 30 s by default. A period too long for the clock
    /// (`Duration::MAX`) is taken as never.
    pub fn resync_every(mut self, every: Duration) -> Self {
        self.resync_every = every.min(FAR_FUTURE);
        self
    }

    /// Shares `login`'s bans and offences with the fleet, from a task spawned on the
    /// current tokio runtime; it connects (and reconnects) on its own.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero resync period, [`ConfigError::Inconsistent`]
    /// outside a tokio runtime or if `login` is in a fleet already.
    pub fn join(self, login: &Login) -> Result<Fleet, ConfigError> {
        if self.resync_every.is_zero() {
            return Err(ConfigError::Zero {
                setting: "resync_every",
            });
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ConfigError::Inconsistent {
                reason: "a fleet's sync task needs a tokio runtime: join from inside one",
            })?;
        let (offences, queued) = mpsc::channel(OFFENCE_QUEUE);
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            connected_metric: Level::new(FLEET_CONNECTED, &[]),
            counters: Counters::new(),
            outbox: Outbox {
                offences,
                pending: Mutex::default(),
                pending_metric: Level::new(FLEET_PENDING, &[]),
                wake: Notify::new(),
            },
        });
        if !login.attach_fleet(shared.clone()) {
            return Err(ConfigError::Inconsistent {
                reason: "this login is in a fleet already",
            });
        }
        let task = sync::SyncTask::new(
            login,
            self.backend,
            shared.clone(),
            queued,
            self.resync_every,
        );
        let task = runtime.spawn(task.run());
        runtime.spawn(async move {
            if let Err(error) = task.await
                && error.is_panic()
            {
                tracing::error!(%error, "the fleet's sync task panicked: this replica bans alone from now on");
            }
        });
        Ok(Fleet { shared })
    }
}

impl std::fmt::Debug for FleetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("resync_every", &self.resync_every)
            .finish_non_exhaustive()
    }
}

/// What the login's ban table and the sync task share.
#[derive(Debug)]
pub(crate) struct Shared {
    connected: AtomicBool,
    connected_metric: Level,
    counters: Counters,
    outbox: Outbox,
}

#[derive(Debug)]
struct Counters {
    connects: Counter,
    failures: Counter,
    sent: Counter,
    applied: Counter,
    resyncs: Counter,
    dropped: Counter,
}

impl Counters {
    fn new() -> Self {
        Self {
            connects: Counter::default(),
            failures: Counter::metric(FLEET_FAILURES, &[]),
            sent: Counter::default(),
            applied: Counter::default(),
            resyncs: Counter::default(),
            dropped: Counter::metric(FLEET_DROPPED, &[]),
        }
    }
}

impl Shared {
    /// Whether the store is reachable now.
    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.connected_metric.set(f64::from(u8::from(connected)));
    }

    /// An offence by `key` of `weight`, for the fleet's count.
    pub(crate) fn offence(&self, key: IpNet, weight: u32) {
        let offence = QueuedOffence {
            key,
            weight,
            at: Instant::now(),
        };
        if self.outbox.offences.try_send(offence).is_err() {
            self.counters.dropped.add();
        }
    }

    /// A ban made here: `key` for `length` from now, its `offences`-th; `by_offences`
    /// if this replica's count of the peer's offences made it.
    pub(crate) fn ban(&self, key: IpNet, length: Duration, offences: u32, by_offences: bool) {
        let ban = Pending::Ban {
            length,
            at: Instant::now(),
            offences,
            by_offences,
            lifted_at: None,
        };
        let mut pending = self.outbox.lock();
        if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
            // The ban holds here; the store has it if it reloads this replica's bans.
            self.counters.dropped.add();
            return;
        }
        let ban = match pending.get(&key) {
            Some(earlier) => ban.after(*earlier),
            None => ban,
        };
        pending.insert(key, ban);
        drop(pending);
        self.outbox.wake.notify_one();
    }

    /// An unban made here. Unbans are never dropped for room: only an operator makes
    /// them, and a lost one would bring the ban back.
    pub(crate) fn unban(&self, key: IpNet) {
        self.outbox
            .lock()
            .insert(key, Pending::Unban { at: Instant::now() });
        self.outbox.wake.notify_one();
    }
}

/// An offence waiting for the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueuedOffence {
    key: IpNet,
    weight: u32,
    at: Instant,
}

impl QueuedOffence {
    fn change(self, now: Instant) -> Change {
        Change::Offence {
            key: self.key,
            weight: self.weight,
            ago: now.saturating_duration_since(self.at),
        }
    }
}

/// What waits for the store: offences in order, bans and unbans by key (the latest
/// change of each key is the one that matters).
#[derive(Debug)]
struct Outbox {
    offences: mpsc::Sender<QueuedOffence>,
    pending: Mutex<HashMap<IpNet, Pending>>,
    /// How many are pending, as a metric: set each time the lock is let go.
    pending_metric: Level,
    /// Raised when a ban or unban is added.
    wake: Notify,
}

impl Outbox {
    fn lock(&self) -> PendingGuard<'_> {
        PendingGuard {
            pending: self.pending.lock().unwrap_or_else(PoisonError::into_inner),
            metric: &self.pending_metric,
        }
    }

    fn pending_len(&self) -> usize {
        self.lock().len()
    }
}

/// The pending bans and unbans, locked; their count goes to the metric when let go.
struct PendingGuard<'a> {
    pending: std::sync::MutexGuard<'a, HashMap<IpNet, Pending>>,
    metric: &'a Level,
}

impl std::ops::Deref for PendingGuard<'_> {
    type Target = HashMap<IpNet, Pending>;

    fn deref(&self) -> &Self::Target {
        &self.pending
    }
}

impl std::ops::DerefMut for PendingGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.pending
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.metric.set(self.pending.len() as f64);
    }
}

/// A ban or unban made here, not yet in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Ban {
        length: Duration,
        at: Instant,
        offences: u32,
        by_offences: bool,
        /// An unban this ban came after, not sent yet either.
        lifted_at: Option<Instant>,
    },
    Unban {
        at: Instant,
    },
}

impl Pending {
    /// This change, made after `earlier` of the same key was (neither sent yet): a ban
    /// keeps the unban before it, to be sent first, or it would only merge with the
    /// ban that unban lifted.
    pub(crate) fn after(self, earlier: Pending) -> Pending {
        match (self, earlier) {
            (
                Pending::Ban {
                    length,
                    at,
                    offences,
                    by_offences,
                    lifted_at: None,
                },
                Pending::Unban { at: lifted }
                | Pending::Ban {
                    lifted_at: Some(lifted),
                    ..
                },
            ) => Pending::Ban {
                length,
                at,
                offences,
                by_offences,
                lifted_at: Some(lifted),
            },
            (later, _) => later,
        }
    }

    /// The changes to send for `key` now, in order: an unban, a ban, or an unban and
    /// the ban made after it. A ban that has run out meanwhile is sent as served (no
    /// time left): it still spends the peer's offences in the store, and counts.
    fn changes(self, key: IpNet, now: Instant) -> impl Iterator<Item = Change> {
        let (lifted_at, ban) = match self {
            Pending::Unban { at } => (Some(at), None),
            Pending::Ban {
                length,
                at,
                offences,
                by_offences,
                lifted_at,
            } => {
                let issued_ago = now.saturating_duration_since(at);
                let ban = Change::Ban {
                    key,
                    remaining: length.saturating_sub(issued_ago),
                    offences,
                    issued_ago: Some(issued_ago),
                    by_offences,
                };
                (lifted_at, Some(ban))
            }
        };
        let unban = lifted_at.map(|at| Change::Unban {
            key,
            issued_ago: now.saturating_duration_since(at),
        });
        unban.into_iter().chain(ban)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line() {
        let stats = FleetStats {
            connected: true,
            connects: 1,
            failures: 0,
            sent: 12,
            applied: 14,
            resyncs: 3,
            pending: 0,
            dropped: 0,
        };
        assert_eq!(
            stats.to_string(),
            "connected, connects 1, failures 0, sent 12, applied 14, resyncs 3, pending 0, dropped 0"
        );
    }

    fn ban(at: Instant, lifted_at: Option<Instant>) -> Pending {
        Pending::Ban {
            length: Duration::from_secs(60),
            at,
            offences: 1,
            by_offences: false,
            lifted_at,
        }
    }

    #[test]
    fn a_ban_after_an_unban_not_sent_yet_sends_the_unban_first() {
        let key: IpNet = "192.0.2.1/32".parse().unwrap();
        let (t0, t1) = (Instant::now(), Instant::now() + Duration::from_secs(1));
        let unban = Pending::Unban { at: t0 };
        let merged = ban(t1, None).after(unban);
        assert_eq!(merged, ban(t1, Some(t0)));
        // Put back after a failed send, under a ban made meanwhile: the same.
        assert_eq!(ban(t1, None).after(ban(t0, Some(t0))), ban(t1, Some(t0)));
        // A later unban replaces whatever waited; a ban after a ban is the later ban.
        assert_eq!(unban.after(ban(t0, Some(t0))), unban);
        assert_eq!(ban(t1, None).after(ban(t0, None)), ban(t1, None));
        let changes: Vec<Change> = merged.changes(key, t1).collect();
        assert!(matches!(
            changes[..],
            [Change::Unban { .. }, Change::Ban { .. }]
        ));
    }

    #[test]
    fn a_ban_that_ran_out_before_it_was_sent_goes_as_served() {
        let key: IpNet = "192.0.2.1/32".parse().unwrap();
        let at = Instant::now();
        let changes: Vec<Change> = ban(at, None)
            .changes(key, at + Duration::from_secs(61))
            .collect();
        assert!(matches!(
            changes[..],
            [Change::Ban {
                remaining: Duration::ZERO,
                issued_ago: Some(_),
                ..
            }]
        ));
    }
}
