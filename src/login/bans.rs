//! The failure and ban table: fail2ban's `maxretry`/`findtime`/`bantime` with
//! escalation, bounded, in memory, exportable.

use std::{
    error::Error,
    fmt,
    net::IpAddr,
    sync::{Arc, Weak},
    time::Duration,
};

use tokio::time::Instant;

use crate::peer::{
    PeerKey, PeerKeying,
    table::{Full, Located, PeerTable},
};

/// How failures turn into bans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BanPolicy {
    /// Failures within `window` that ban a peer.
    pub(crate) max_failures: u32,
    pub(crate) window: Duration,
    /// The first ban's length; each repeat offence multiplies it by `factor`, up to
    /// `max_ban`.
    pub(crate) first_ban: Duration,
    pub(crate) factor: u32,
    pub(crate) max_ban: Duration,
    /// A peer neither banned nor failing for this long is forgotten, repeat offences
    /// included. A peer never banned is forgotten sooner, two windows after
    /// its last failure, once its failures no longer count.
    pub(crate) forget_after: Duration,
}

impl BanPolicy {
    /// The length of a peer's `offence`-th ban (the first is 1).
    pub(crate) fn ban_length(&self, offence: u32) -> Duration {
        let factor = self
            .factor
            .checked_pow(offence.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first_ban.saturating_mul(factor).min(self.max_ban)
    }
}

/// One peer's record. Failures are counted in two consecutive windows and weighed by
/// how much of the older one still overlaps the last `window` (a sliding-window
/// estimate in 16 bytes instead of a timestamp per failure).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    window_start: u64,
    current: u32,
    previous: u32,
    banned_until: u64,
    offences: u32,
    last_failure: u64,
}

impl Record {
    /// Since when the peer has been quiet: neither failing nor banned. Time spent
    /// banned is not quiet, or a long ban would end forgotten, escalation and all.
    fn quiet_since(&self) -> u64 {
        self.last_failure.max(self.banned_until)
    }

    /// What keeping this record is worth when its shard is full and a new peer needs
    /// the room, lowest first: a ban is never given up (`None`), a peer with past bans
    /// is worth more than one with failures only, and a recently active one more than
    /// one long quiet.
    fn worth(&self, now: u64) -> Option<(bool, u64)> {
        (self.banned_until <= now).then_some((self.offences > 0, self.quiet_since()))
    }
}

/// What a failure did to its peer's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Counted, below the ban threshold.
    Counted,
    /// This failure banned the peer for this long.
    Banned(Duration),
    /// The peer was banned already (a connection from before its ban).
    AlreadyBanned,
    /// The peer's part of the table holds only banned peers: not recorded.
    Untracked,
}

/// A current ban, as listed and exported.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ban {
    /// Who is banned.
    pub key: PeerKey,
    /// How long the ban still runs.
    pub remaining: Duration,
    /// How many times this peer has been banned while remembered.
    pub offences: u32,
}

#[derive(Debug)]
pub(crate) struct BanTable {
    table: PeerTable<Record>,
    policy: BanPolicy,
    keying: PeerKeying,
    origin: Instant,
}

impl BanTable {
    pub(crate) fn new(policy: BanPolicy, keying: PeerKeying, capacity: usize) -> Self {
        Self {
            table: PeerTable::new(capacity),
            policy,
            keying,
            origin: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        nanos(self.origin.elapsed())
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// How long the peer `at` stays banned, if it is.
    pub(crate) fn banned_for(&self, at: &Located) -> Option<Duration> {
        if self.table.is_empty_at(at) {
            return None;
        }
        let until = self.table.lock(at).get_mut()?.banned_until;
        let now = self.now();
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Whether the new peer `at` would find no room: its shard is full of banned peers.
    /// Scans the shard, and only when it is full.
    pub(crate) fn is_full_for(&self, at: &Located) -> bool {
        if !self.table.is_full_at(at) {
            return false;
        }
        let now = self.now();
        let mut shard = self.table.lock(at);
        shard.get_mut().is_none() && !shard.has_room(|record| record.worth(now))
    }

    /// Counts a failed login from the peer `at`, and bans it if that makes too many.
    pub(crate) fn record_failure(&self, at: &Located) -> Failure {
        let policy = &self.policy;
        let window = nanos(policy.window);
        let mut shard = self.table.lock(at);
        // Under the lock: a failure never lands before the window another has started.
        let now = self.now();
        let Some(record) = shard.get_mut() else {
            let mut record = Record {
                window_start: now,
                current: 0,
                previous: 0,
                banned_until: 0,
                offences: 0,
                last_failure: now,
            };
            let failure = count(&mut record, now, window, policy);
            return match shard.insert_evicting(record, |old| old.worth(now)) {
                Ok(()) => failure,
                Err(Full) => Failure::Untracked,
            };
        };
        if record.banned_until > now {
            record.last_failure = now;
            return Failure::AlreadyBanned;
        }
        count(record, now, window, policy)
    }

    /// Bans `key` for `length` from now, whatever its record says; `Full` if its shard
    /// holds only banned peers.
    pub(crate) fn ban(&self, key: &PeerKey, length: Duration, offences: u32) -> Result<(), Full> {
        let mut shard = self.table.lock(&Located::new(key));
        let now = self.now();
        let until = now.saturating_add(nanos(length));
        if let Some(record) = shard.get_mut() {
            record.banned_until = until;
            record.offences = record.offences.max(offences);
            record.last_failure = now;
            return Ok(());
        }
        let record = Record {
            window_start: now,
            current: 0,
            previous: 0,
            banned_until: until,
            offences,
            last_failure: now,
        };
        shard.insert_evicting(record, |old| old.worth(now))
    }

    /// Lifts `key`'s ban and forgets its record; `false` if there was none.
    pub(crate) fn unban(&self, key: &PeerKey) -> bool {
        let mut shard = self.table.lock(&Located::new(key));
        let known = shard.get_mut().is_some();
        shard.remove();
        known
    }

    /// The bans in force.
    pub(crate) fn list(&self) -> Vec<Ban> {
        let now = self.now();
        let mut bans: Vec<Ban> = self
            .table
            .entries()
            .into_iter()
            .filter(|(_, record)| record.banned_until > now)
            .map(|(bits, record)| Ban {
                key: self.keying.key_from_bits(bits),
                remaining: Duration::from_nanos(record.banned_until - now),
                offences: record.offences,
            })
            .collect();
        bans.sort_by_key(|ban| ban.key);
        bans
    }

    /// Forgets the peers whose records no longer change any decision: a peer never
    /// banned once its failures are out of the sliding window (two windows after the
    /// last), and any peer quiet (neither banned nor failing) for `forget_after`.
    pub(crate) fn forget_quiet(&self) {
        let now = self.now();
        let policy = &self.policy;
        let forget_offences = nanos(policy.forget_after);
        let forget_failures = nanos(policy.window).saturating_mul(2).min(forget_offences);
        self.table.retain(|record| {
            let keep_for = if record.offences == 0 {
                forget_failures
            } else {
                forget_offences
            };
            now.saturating_sub(record.quiet_since()) < keep_for
        });
    }

    pub(crate) fn keying(&self) -> &PeerKeying {
        &self.keying
    }
}

/// Counts one failure at `now` in `record`; bans when the sliding-window estimate
/// reaches the threshold. A `now` before the record's window counts in that window.
fn count(record: &mut Record, now: u64, window: u64, policy: &BanPolicy) -> Failure {
    let now = now.max(record.window_start);
    record.last_failure = now;
    let windows_passed = (now - record.window_start) / window;
    match windows_passed {
        0 => {}
        1 => {
            record.previous = record.current;
            record.current = 0;
            record.window_start += window;
        }
        _ => {
            record.previous = 0;
            record.current = 0;
            record.window_start += windows_passed * window;
        }
    }
    record.current += 1;
    let overlap = 1.0 - (now - record.window_start) as f64 / window as f64;
    let estimate = f64::from(record.previous) * overlap + f64::from(record.current);
    // A hair of slack against rounding: N failures at once must ban.
    if estimate + 1e-9 < f64::from(policy.max_failures) {
        return Failure::Counted;
    }
    record.offences += 1;
    let length = policy.ban_length(record.offences);
    record.banned_until = now.saturating_add(nanos(length));
    record.current = 0;
    record.previous = 0;
    Failure::Banned(length)
}

/// The operator's handle on the bans: add, list, lift, export and import them.
///
/// Cheap to clone; get one from [`Login::bans`](super::Login::bans).
#[derive(Debug, Clone)]
pub struct Bans {
    pub(super) table: Arc<BanTable>,
}

impl Bans {
    /// Bans `ip`'s peer key (its /32 or /64 by default) for `length`.
    ///
    /// # Errors
    ///
    /// [`BanError::TableFull`] if the table has no room for another peer.
    pub fn ban(&self, ip: IpAddr, length: Duration) -> Result<(), BanError> {
        let key = self.table.keying().key(ip);
        self.table
            .ban(&key, length, 1)
            .map_err(|Full| BanError::TableFull)
    }

    /// Lifts the ban on `ip`'s peer key and forgets its failures; `false` if nothing was
    /// recorded for it.
    pub fn unban(&self, ip: IpAddr) -> bool {
        self.table.unban(&self.table.keying().key(ip))
    }

    /// How long `ip`'s peer key stays banned, if it is.
    pub fn banned_for(&self, ip: IpAddr) -> Option<Duration> {
        let key = self.table.keying().key(ip);
        self.table.banned_for(&Located::new(&key))
    }

    /// The bans in force, by key.
    pub fn list(&self) -> Vec<Ban> {
        self.table.list()
    }

    /// The bans in force as text, one per line: the network, the seconds left, and the
    /// offence count (`203.0.113.7/32 598.250 1`). [`import`](Self::import) reads it back,
    /// so a restart does not forget attackers.
    pub fn export(&self) -> String {
        self.list()
            .iter()
            .map(|ban| {
                format!(
                    "{} {:.3} {}\n",
                    ban.key,
                    ban.remaining.as_secs_f64(),
                    ban.offences
                )
            })
            .collect()
    }

    /// Reads bans written by [`export`](Self::export); each runs for its remaining time
    /// from now. Returns how many were imported.
    ///
    /// # Errors
    ///
    /// A line that does not parse, naming it; the lines before it are imported.
    pub fn import(&self, text: &str) -> Result<usize, BanError> {
        let mut imported = 0;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || BanError::BadLine {
                line: index + 1,
                text: line.to_owned(),
            };
            let mut fields = line.split_whitespace();
            let network: ipnet::IpNet =
                fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let remaining: f64 = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let offences: u32 = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let remaining = Duration::try_from_secs_f64(remaining).map_err(|_| bad())?;
            let key = self.table.keying().key(network.addr());
            self.table
                .ban(&key, remaining, offences)
                .map_err(|Full| BanError::TableFull)?;
            imported += 1;
        }
        Ok(imported)
    }
}

/// An operator's ban that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BanError {
    /// The ban table has no room for another peer.
    TableFull,
    /// A line of an import does not parse.
    BadLine {
        /// Its number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
}

impl fmt::Display for BanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanError::TableFull => f.write_str("the ban table is full"),
            BanError::BadLine { line, text } => {
                write!(f, "line {line} is not `NETWORK SECONDS OFFENCES`: {text:?}")
            }
        }
    }
}

impl Error for BanError {}

/// Starts the task that forgets quiet peers, every `every`; it ends once the table is
/// dropped.
pub(crate) fn start_janitor(table: &Arc<BanTable>, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let table: Weak<BanTable> = Arc::downgrade(table);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    runtime.spawn(async move {
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(table) = table.upgrade() else {
                return;
            };
            table.forget_quiet();
        }
    });
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn policy() -> BanPolicy {
        BanPolicy {
            max_failures: 3,
            window: secs(60),
            first_ban: secs(100),
            factor: 2,
            max_ban: secs(350),
            forget_after: secs(1000),
        }
    }

    fn table() -> (BanTable, PeerKey) {
        let keying = PeerKeying::default();
        let key = keying.key("192.0.2.1".parse().unwrap());
        (BanTable::new(policy(), keying, 100), key)
    }

    #[test]
    fn escalation_doubles_and_stops_at_the_cap() {
        let lengths: Vec<_> = (1..=5).map(|n| policy().ban_length(n).as_secs()).collect();
        assert_eq!(lengths, [100, 200, 350, 350, 350]);
        assert_eq!(policy().ban_length(u32::MAX), secs(350));
    }

    #[test]
    fn a_failure_timed_before_its_window_start_is_counted_in_that_window() {
        // Another thread read the clock later but took the lock first.
        let mut record = Record {
            window_start: 1_000,
            current: 1,
            previous: 0,
            banned_until: 0,
            offences: 0,
            last_failure: 1_000,
        };
        assert_eq!(
            count(&mut record, 999, nanos(secs(60)), &policy()),
            Failure::Counted
        );
        assert_eq!((record.window_start, record.current), (1_000, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn n_failures_within_the_window_ban() {
        let (bans, key) = table();
        assert_eq!(bans.record_failure(&Located::new(&key)), Failure::Counted);
        tokio::time::advance(secs(20)).await;
        assert_eq!(bans.record_failure(&Located::new(&key)), Failure::Counted);
        tokio::time::advance(secs(20)).await;
        assert_eq!(
            bans.record_failure(&Located::new(&key)),
            Failure::Banned(secs(100))
        );
        assert_eq!(bans.banned_for(&Located::new(&key)), Some(secs(100)));
        assert_eq!(
            bans.record_failure(&Located::new(&key)),
            Failure::AlreadyBanned
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_wider_than_the_window_do_not_ban() {
        let (bans, key) = table();
        for _ in 0..20 {
            assert_eq!(bans.record_failure(&Located::new(&key)), Failure::Counted);
            tokio::time::advance(secs(40)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_across_a_window_boundary_still_count() {
        let (bans, key) = table();
        tokio::time::advance(secs(1)).await;
        bans.record_failure(&Located::new(&key));
        tokio::time::advance(secs(50)).await;
        bans.record_failure(&Located::new(&key));
        // 61 s after the first: the new window sees the old one's failures weighed by
        // their overlap.
        tokio::time::advance(secs(10)).await;
        assert_eq!(
            bans.record_failure(&Located::new(&key)),
            Failure::Banned(secs(100))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_ban_expires_and_the_next_one_is_longer() {
        let (bans, key) = table();
        for _ in 0..3 {
            bans.record_failure(&Located::new(&key));
        }
        tokio::time::advance(secs(100)).await;
        assert_eq!(bans.banned_for(&Located::new(&key)), None);
        for _ in 0..2 {
            assert_eq!(bans.record_failure(&Located::new(&key)), Failure::Counted);
        }
        assert_eq!(
            bans.record_failure(&Located::new(&key)),
            Failure::Banned(secs(200))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_peer_is_forgotten_with_its_offences() {
        let (bans, key) = table();
        for _ in 0..3 {
            bans.record_failure(&Located::new(&key));
        }
        // Quiet from the end of its 100 s ban.
        tokio::time::advance(secs(1099)).await;
        bans.forget_quiet();
        assert_eq!(bans.len(), 1, "not quiet for long enough yet");
        tokio::time::advance(secs(1)).await;
        bans.forget_quiet();
        assert_eq!(bans.len(), 0);
        for _ in 0..2 {
            bans.record_failure(&Located::new(&key));
        }
        assert_eq!(
            bans.record_failure(&Located::new(&key)),
            Failure::Banned(secs(100)),
            "a first offence again"
        );
    }

    fn at(keying: &PeerKeying, n: u32) -> Located {
        Located::new(&keying.key(std::net::Ipv4Addr::from_bits(n).into()))
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded_and_never_evicts_a_ban() {
        let keying = PeerKeying::default();
        let bans = BanTable::new(policy(), keying.clone(), 1);
        let (first, second, third) = (at(&keying, 1), at(&keying, 2), at(&keying, 3));
        assert_eq!(bans.record_failure(&first), Failure::Counted);
        assert!(!bans.is_full_for(&second), "the first peer can make way");
        assert_eq!(bans.record_failure(&second), Failure::Counted);
        assert_eq!(bans.len(), 1);
        assert!(!bans.table.contains(&first));

        for _ in 0..2 {
            bans.record_failure(&second);
        }
        assert!(bans.banned_for(&second).is_some());
        assert!(bans.is_full_for(&third));
        assert_eq!(bans.record_failure(&third), Failure::Untracked);
        assert!(bans.banned_for(&second).is_some());
        assert!(
            bans.ban(&keying.key("192.0.2.3".parse().unwrap()), secs(9), 1)
                .is_err()
        );
        assert_eq!(bans.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_shard_makes_way_by_evicting_its_least_valuable_peer() {
        let keying = PeerKeying::default();
        // At most 256 shards: at least 4 peers a shard.
        let bans = BanTable::new(policy(), keying.clone(), 1024);
        let first = at(&keying, 0);
        let mut one_shard = (0..)
            .map(|n| at(&keying, n))
            .filter(|other| bans.table.shares_shard(&first, other));
        // The stalest peer is banned; the others fail once each, 10 ms apart.
        let banned = one_shard.next().unwrap();
        for _ in 0..3 {
            bans.record_failure(&banned);
        }
        let mut tracked = Vec::new();
        while !bans.table.is_full_at(&first) {
            tokio::time::advance(Duration::from_millis(10)).await;
            let peer = one_shard.next().unwrap();
            assert_eq!(bans.record_failure(&peer), Failure::Counted);
            tracked.push(peer);
        }
        assert!(tracked.len() >= 3);

        // Fresh records all, yet a newcomer is tracked: the stalest unbanned one goes.
        let newcomer = one_shard.next().unwrap();
        assert_eq!(bans.record_failure(&newcomer), Failure::Counted);
        assert!(bans.table.contains(&newcomer));
        assert!(!bans.table.contains(&tracked[0]));
        assert!(bans.table.contains(&tracked[1]));
        assert!(bans.banned_for(&banned).is_some(), "a ban is never evicted");

        // Once its ban is over, a repeat offender outweighs peers with failures only.
        tokio::time::advance(secs(100)).await;
        assert_eq!(bans.banned_for(&banned), None);
        let newcomer = one_shard.next().unwrap();
        assert_eq!(bans.record_failure(&newcomer), Failure::Counted);
        assert!(bans.table.contains(&banned));
        assert!(!bans.table.contains(&tracked[1]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_never_banned_is_forgotten_two_windows_after_its_last_failure() {
        let (bans, key) = table();
        bans.record_failure(&Located::new(&key));
        tokio::time::advance(secs(119)).await;
        bans.forget_quiet();
        assert_eq!(bans.len(), 1);
        tokio::time::advance(secs(1)).await;
        bans.forget_quiet();
        assert_eq!(bans.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bans_survive_an_export_and_import() {
        let (bans, key) = table();
        let bans = Bans {
            table: Arc::new(bans),
        };
        bans.ban("2001:db8:1:2::9".parse().unwrap(), secs(500))
            .unwrap();
        for _ in 0..3 {
            bans.table.record_failure(&Located::new(&key));
        }
        tokio::time::advance(secs(50)).await;
        let text = bans.export();
        assert_eq!(text, "192.0.2.1/32 50.000 1\n2001:db8:1:2::/64 450.000 1\n");

        let (restarted, _) = table();
        let restarted = Bans {
            table: Arc::new(restarted),
        };
        assert_eq!(restarted.import(&text), Ok(2));
        assert_eq!(restarted.list(), bans.list());
        assert_eq!(
            restarted.banned_for("2001:db8:1:2::1".parse().unwrap()),
            Some(secs(450))
        );
        assert!(matches!(
            restarted.import("192.0.2.9/32 ten 1"),
            Err(BanError::BadLine { line: 1, .. })
        ));
        assert!(restarted.unban("192.0.2.1".parse().unwrap()));
        assert_eq!(restarted.list().len(), 1);
    }
}
