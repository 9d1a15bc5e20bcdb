//! What a fleet's store is asked to do, and what it answers: the seam between the ban
//! table and Redis (or another source of decisions).

use std::{error::Error, fmt, future::Future, pin::Pin, time::Duration};

use ipnet::IpNet;
use tokio::sync::mpsc;

/// A boxed future, as the backend traits return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An offence's weight is a fraction of a ban in these units: an offence of a kind
/// whose limit is `n` weighs `BAN_WEIGHT / n` (rounded up), and a peer whose weights
/// within the window add up to `BAN_WEIGHT` is banned.
pub const BAN_WEIGHT: u32 = 1_000_000_000;

/// The ban policy every replica shares, as the store needs it to ban at the fleet's
/// threshold and escalate by the fleet's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetPolicy {
    /// The window offences are counted in.
    pub window: Duration,
    /// The first ban.
    pub first_ban: Duration,
    /// Each repeat offence multiplies the ban by this...
    pub factor: u32,
    /// ...up to this.
    pub max_ban: Duration,
    /// A peer quiet this long after its ban is forgotten, its count of bans with it.
    pub forget_after: Duration,
}

impl FleetPolicy {
    /// A policy: offences counted in `window`; bans from `first_ban`, multiplied by
    /// `factor` for each repeat up to `max_ban`; a peer quiet for `forget_after` is
    /// forgotten. (A replica's comes from its login's builder.)
    pub fn new(
        window: Duration,
        first_ban: Duration,
        factor: u32,
        max_ban: Duration,
        forget_after: Duration,
    ) -> Self {
        Self {
            window,
            first_ban,
            factor,
            max_ban,
            forget_after,
        }
    }
}

/// A change made on this replica, for the store to record and pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// An offence by `key`, of `weight` (see [`BAN_WEIGHT`]). The store adds it to the
    /// fleet's count, and when the count reaches a ban it bans the peer for the fleet's
    /// next ban length and passes the ban on as a [`Decision`].
    Offence {
        /// The peer key (or network) that offended.
        key: IpNet,
        /// The offence's weight.
        weight: u32,
        /// How long ago it happened (it may have waited for the store): an offence
        /// older than the window, or than the key's last unban, no longer counts.
        ago: Duration,
    },
    /// `key` is banned for `remaining` from now, its `offences`-th ban (as far as this
    /// replica knows). A ban that ran out before it reached the store comes with no
    /// time left: it was served, and only spends the offences before it, and counts.
    /// So does a served ban given back to a store that lost its data, of unknown age:
    /// it only counts.
    Ban {
        /// The peer key, or a network banned whole.
        key: IpNet,
        /// How long it still runs.
        remaining: Duration,
        /// How many times the peer has been banned.
        offences: u32,
        /// How long ago the ban was issued; `None` if not known (a ban this replica had
        /// before it reached the store), which loses to any other ban or unban.
        issued_ago: Option<Duration>,
        /// Whether this replica's own count of offences banned the peer: the store then
        /// bans for the fleet's next ban, which may be longer, and spends the fleet's
        /// count too.
        by_offences: bool,
    },
    /// `key`'s ban was lifted, `issued_ago` ago. A ban issued after that stays.
    Unban {
        /// The peer key, or a network banned whole.
        key: IpNet,
        /// How long ago it was lifted.
        issued_ago: Duration,
    },
}

/// A decision made elsewhere in the fleet, for this replica to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Ban `key` for `remaining` from now; its `offences`-th ban.
    Ban {
        /// The peer key, or a network banned whole.
        key: IpNet,
        /// How long the ban runs from now.
        remaining: Duration,
        /// How many times the peer has been banned.
        offences: u32,
    },
    /// Lift `key`'s ban.
    Unban {
        /// The peer key, or a network banned whole.
        key: IpNet,
    },
}

/// Everything in force in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Changes when the store has lost its data (restarted empty, flushed): the replica
    /// then sends it every ban it holds, and those served that it remembers.
    pub epoch: String,
    /// The bans in force, as [`Decision::Ban`]s.
    pub bans: Vec<Decision>,
    /// Keys whose bans were lifted recently (within the longest ban): a replica that
    /// still holds one of them lifts it.
    pub lifted: Vec<IpNet>,
}

impl Snapshot {
    /// A snapshot of `bans` and `lifted` keys in the store of `epoch`.
    pub fn new(epoch: impl Into<String>, bans: Vec<Decision>, lifted: Vec<IpNet>) -> Self {
        Self {
            epoch: epoch.into(),
            bans,
            lifted,
        }
    }
}

/// A store of bans and offences shared by a fleet: Redis
/// ([`RedisBackend`](super::RedisBackend)), or any source of decisions that can tell
/// what is in force and what changes.
///
/// The replica calls [`connect`](Self::connect) from its sync task, and again after the
/// link is lost. Nothing here runs on a connection's path.
pub trait Backend: Send + Sync + 'static {
    /// Connects, and from now on sends the decisions made elsewhere to `decisions`;
    /// dropping that sender says the link is lost. The replica reconnects then, and
    /// when any call of the [`Link`] fails. `policy` is the ban policy in force now; a
    /// reload reaches the link through [`Link::set_policy`].
    fn connect(
        &self,
        policy: FleetPolicy,
        decisions: mpsc::Sender<Decision>,
    ) -> BoxFuture<'_, Result<Box<dyn Link>, BackendError>>;
}

/// One connection to the store.
pub trait Link: Send {
    /// Records a change made on this replica, and passes it on to the others.
    fn send<'a>(&'a mut self, change: &'a Change) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Records `changes` in order; a store that can take them together (Redis, in one
    /// pipeline) should, as the replica sends its changes in batches after an outage.
    fn send_all<'a>(
        &'a mut self,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            for change in changes {
                self.send(change).await?;
            }
            Ok(())
        })
    }

    /// Everything in force now.
    fn snapshot(&mut self) -> BoxFuture<'_, Result<Snapshot, BackendError>>;

    /// The ban policy in force on this replica, given before every batch of changes and
    /// every snapshot: it changes when the policy is reloaded
    /// ([`Login::set_policy`](crate::login::Login::set_policy)). A store that bans and
    /// escalates by the policy uses the latest from then on. Nothing by default.
    fn set_policy(&mut self, policy: FleetPolicy) {
        let _ = policy;
    }
}

/// The store could not be reached, or answered something unexpected.
#[derive(Debug)]
pub struct BackendError(Box<dyn Error + Send + Sync>);

impl BackendError {
    /// Wraps the store's own error.
    pub fn new(error: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for BackendError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}
