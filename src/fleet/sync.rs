//! The task that keeps one replica and the fleet's store in step.

use std::{collections::HashSet, sync::Arc, time::Duration};

use ipnet::IpNet;
use tokio::{sync::mpsc, time::Instant};

use super::{Backend, BackendError, Change, Decision, Link, QueuedOffence, Shared, Snapshot};
use crate::{
    login::{Login, WeakLogin},
    throttle::LogThrottle,
};

/// The first pause before reconnecting; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Decisions from the store waiting to be applied.
const DECISION_QUEUE: usize = 1024;
/// How often the task looks whether its login is still there.
const LOGIN_CHECK: Duration = Duration::from_secs(1);
/// Bans applied from a reload between two yields to the runtime.
const APPLY_BATCH: usize = 1024;
/// The most changes sent to the store together.
const SEND_BATCH: usize = 256;

/// Why serving a link ended.
enum Ended {
    /// The login is gone: nothing left to sync.
    LoginGone,
    /// The link failed; reconnect.
    Lost(BackendError),
}

impl From<BackendError> for Ended {
    fn from(error: BackendError) -> Self {
        Ended::Lost(error)
    }
}

pub(super) struct SyncTask {
    login: WeakLogin,
    backend: Arc<dyn Backend>,
    shared: Arc<Shared>,
    offences: mpsc::Receiver<QueuedOffence>,
    resync_every: Duration,
    /// The store's epoch at the last snapshot: when it changes, the store has lost its
    /// data and is given this replica's bans.
    epoch: Option<String>,
    failure_log: LogThrottle,
}

impl SyncTask {
    pub(super) fn new(
        login: &Login,
        backend: Arc<dyn Backend>,
        shared: Arc<Shared>,
        offences: mpsc::Receiver<QueuedOffence>,
        resync_every: Duration,
    ) -> Self {
        Self {
            login: login.downgrade(),
            backend,
            shared,
            offences,
            resync_every,
            epoch: None,
            failure_log: LogThrottle::new(Duration::from_secs(60)),
        }
    }

    /// Connects, serves the link until it fails, and again, until the login is gone.
    pub(super) async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let Some(policy) = self.login.upgrade().map(|login| login.fleet_policy()) else {
                return;
            };
            let (decisions_to, mut decisions) = mpsc::channel(DECISION_QUEUE);
            let error = match self.backend.connect(policy, decisions_to).await {
                Ok(link) => {
                    self.shared.counters.connects.add();
                    self.shared.set_connected(true);
                    let ended = self.serve(link, &mut decisions, &mut backoff).await;
                    self.shared.set_connected(false);
                    match ended {
                        Ended::LoginGone => return,
                        Ended::Lost(error) => error,
                    }
                }
                Err(error) => error,
            };
            self.shared.counters.failures.add();
            if let Some(suppressed) = self.failure_log.allow() {
                tracing::warn!(%error, suppressed, "the fleet's store is unreachable; going on alone");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn serve(
        &mut self,
        mut link: Box<dyn Link>,
        decisions: &mut mpsc::Receiver<Decision>,
        backoff: &mut Duration,
    ) -> Ended {
        // What changed here while the link was down first, then everything in force.
        if let Err(ended) = self.flush(&mut *link).await {
            return ended;
        }
        if let Err(ended) = self.resync(&mut *link).await {
            return ended;
        }
        // Only a link that works resets the backoff: one that connects and fails at
        // once (say, on a store it cannot read) is retried no faster than any other.
        *backoff = MIN_BACKOFF;
        tracing::info!("in step with the fleet's store");
        let mut resyncs =
            tokio::time::interval_at(Instant::now() + self.resync_every, self.resync_every);
        resyncs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut login_checks = tokio::time::interval_at(Instant::now() + LOGIN_CHECK, LOGIN_CHECK);
        loop {
            let outcome = tokio::select! {
                decision = decisions.recv() => match decision {
                    Some(decision) => self.apply(decision),
                    None => Err(Ended::Lost(BackendError::new("the store's decisions stopped"))),
                },
                Some(offence) = self.offences.recv() => self.send_offences(&mut *link, offence).await,
                () = self.shared.outbox.wake.notified() => self.flush(&mut *link).await,
                _ = resyncs.tick() => self.resync(&mut *link).await,
                _ = login_checks.tick() => self.login().map(drop),
            };
            if let Err(ended) = outcome {
                return ended;
            }
        }
    }

    /// Gives `link` the ban policy in force: a reload changes it.
    fn policy_to(&self, link: &mut dyn Link) -> Result<(), Ended> {
        link.set_policy(self.login()?.fleet_policy());
        Ok(())
    }

    async fn send_all(&self, link: &mut dyn Link, changes: &[Change]) -> Result<(), Ended> {
        self.policy_to(link)?;
        link.send_all(changes).await?;
        self.shared.counters.sent.add_n(changes.len());
        Ok(())
    }

    /// Sends `first` and the offences queued behind it, a batch at a time.
    async fn send_offences(
        &mut self,
        link: &mut dyn Link,
        first: QueuedOffence,
    ) -> Result<(), Ended> {
        let now = Instant::now();
        let mut batch = vec![first.change(now)];
        while batch.len() < SEND_BATCH
            && let Ok(offence) = self.offences.try_recv()
        {
            batch.push(offence.change(now));
        }
        let sent = self.send_all(link, &batch).await;
        if sent.is_err() {
            // Not sent again: an offence counted twice would be worse than one lost.
            self.shared.counters.dropped.add_n(batch.len());
        }
        sent
    }

    /// Sends the bans and unbans made here, a batch at a time; those not sent stay for
    /// the next link.
    async fn flush(&self, link: &mut dyn Link) -> Result<(), Ended> {
        let pending: Vec<_> = std::mem::take(&mut *self.shared.outbox.lock())
            .into_iter()
            .collect();
        for (n, batch) in pending.chunks(SEND_BATCH).enumerate() {
            let now = Instant::now();
            let changes: Vec<Change> = batch
                .iter()
                .flat_map(|(key, change)| change.changes(*key, now))
                .collect();
            if let Err(error) = self.send_all(link, &changes).await {
                // Back in the outbox, under any later change of the same key made
                // meanwhile. (Some of the batch may have reached the store: sent again,
                // they change nothing.)
                let mut outbox = self.shared.outbox.lock();
                for (key, change) in &pending[n * SEND_BATCH..] {
                    let merged = match outbox.get(key) {
                        Some(later) => later.after(*change),
                        None => *change,
                    };
                    outbox.insert(*key, merged);
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Loads everything in force and applies it; first gives a store that is new to
    /// this replica (or lost its data) every ban held or remembered here, unless in
    /// dry run.
    async fn resync(&mut self, link: &mut dyn Link) -> Result<(), Ended> {
        self.policy_to(link)?;
        let mut snapshot = link.snapshot().await?;
        if self.epoch.as_ref() != Some(&snapshot.epoch) {
            let held = self.given_back(&self.login()?);
            for batch in held.chunks(SEND_BATCH) {
                self.send_all(link, batch).await?;
            }
            snapshot = link.snapshot().await?;
            self.epoch = Some(snapshot.epoch.clone());
        }
        self.apply_snapshot(snapshot).await?;
        self.shared.counters.resyncs.add();
        Ok(())
    }

    /// What a store that is new to this replica (or lost its data) is given: every ban
    /// held here, and every ban served that is still remembered, as served (no time
    /// left: it only counts, so that a repeat offender's next ban escalates). Except
    /// those still in the outbox (they go as themselves: issued when, by offences or
    /// not), and nothing in dry run, where the bans held here only show what enforcing
    /// would do.
    fn given_back(&self, login: &Login) -> Vec<Change> {
        if !login.adds_to_fleet() {
            return Vec::new();
        }
        let longest = login.fleet_policy().max_ban;
        let pending: HashSet<IpNet> = self.shared.outbox.lock().keys().copied().collect();
        login
            .bans()
            .remembered()
            .into_iter()
            .filter(|ban| !pending.contains(&ban.key.network()))
            .map(|ban| Change::Ban {
                key: ban.key.network(),
                // As long as an unban is remembered, as every shared ban.
                remaining: ban.remaining.min(longest),
                offences: ban.offences,
                issued_ago: None,
                by_offences: false,
            })
            .collect()
    }

    /// Makes the table what the store holds, except for the keys changed here and not
    /// sent yet: every ban in force, and no ban the store says was lifted.
    async fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), Ended> {
        let login = self.login()?;
        let pending: HashSet<IpNet> = self.shared.outbox.lock().keys().copied().collect();
        let mut in_force = HashSet::with_capacity(snapshot.bans.len());
        for (n, ban) in snapshot.bans.into_iter().enumerate() {
            if let Decision::Ban { key, .. } = &ban {
                in_force.insert(*key);
                if !pending.contains(key) {
                    apply(&login, ban);
                }
            }
            // A long list is applied without holding the runtime's thread.
            if n % APPLY_BATCH == APPLY_BATCH - 1 {
                tokio::task::yield_now().await;
            }
        }
        for (n, key) in snapshot.lifted.into_iter().enumerate() {
            if !in_force.contains(&key) && !pending.contains(&key) {
                login.apply_fleet_unban(key);
            }
            if n % APPLY_BATCH == APPLY_BATCH - 1 {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    /// Applies a decision from elsewhere, unless this replica changed the key since:
    /// its own change goes to the store next and wins there.
    fn apply(&self, decision: Decision) -> Result<(), Ended> {
        let (Decision::Ban { key, .. } | Decision::Unban { key }) = &decision;
        if self.shared.outbox.lock().contains_key(key) {
            return Ok(());
        }
        apply(&self.login()?, decision);
        self.shared.counters.applied.add();
        Ok(())
    }

    fn login(&self) -> Result<Login, Ended> {
        self.login.upgrade().ok_or(Ended::LoginGone)
    }
}

fn apply(login: &Login, decision: Decision) {
    match decision {
        Decision::Ban {
            key,
            remaining,
            offences,
        } => login.apply_fleet_ban(key, remaining, offences),
        Decision::Unban { key } => {
            login.apply_fleet_unban(key);
        }
    }
}
