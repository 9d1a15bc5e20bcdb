//! The offence and ban table: fail2ban's `maxretry`/`findtime`/`bantime` with
//! escalation, bounded, in memory, exportable.

use std::{
    error::Error,
    fmt,
    net::IpAddr,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::time::Instant;

use super::Offence;
#[cfg(all(feature = "kernel-bans", target_os = "linux"))]
use super::kernel_bans::{KernelBans, KernelState};
use crate::metrics::{BANS_ACTIVE, BANS_ISSUED, Count, Level};
use crate::peer::{
    Classified, PeerKey, PeerKeying, keyed_network,
    table::{Full, Located, PeerTable},
};

/// The most networks banned whole at once. Each is checked against every new
/// connection while any is in force: this is for a few wide networks, not a block list.
const MAX_NETWORK_BANS: usize = 256;

/// The longest line [`Bans::import`] reads; an exported line is under 80 bytes.
const MAX_IMPORT_LINE: usize = 200;

/// The points that ban a peer within the window: an offence of a kind whose limit is
/// `n` weighs `BAN_POINTS / n`, rounded up so that `n` of them always ban. Integer
/// points keep a record small and exact; with limits up to 30 000, `n - 1` offences of
/// one kind never ban.
const BAN_POINTS: u32 = 1_000_000_000;
// A fleet's store counts offences in the same points.
#[cfg(feature = "fleet")]
const _: () = assert!(BAN_POINTS == crate::fleet::BAN_WEIGHT);

/// How offences turn into bans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BanPolicy {
    /// Offences of each kind alone within `window` that ban a peer; 0 counts none.
    pub(crate) max_offences: [u32; Offence::COUNT],
    pub(crate) window: Duration,
    /// The first ban's length; each repeat offence multiplies it by `factor`, up to
    /// `max_ban`.
    pub(crate) first_ban: Duration,
    pub(crate) factor: u32,
    pub(crate) max_ban: Duration,
    /// A peer neither banned nor offending for this long is forgotten, repeat offences
    /// included. A peer never banned is forgotten sooner, two windows after
    /// its last offence, once its offences no longer count.
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

    /// What one `offence` weighs; 0 if its kind is not counted.
    pub(crate) fn points(&self, offence: Offence) -> u32 {
        match self.max_offences[offence.index()] {
            0 => 0,
            limit => BAN_POINTS.div_ceil(limit),
        }
    }
}

/// One peer's record, 40 bytes. Offence points are counted in two consecutive windows
/// and the older one weighed by how much of it still overlaps the last `window` (a
/// sliding-window estimate in 16 bytes instead of a timestamp per offence).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    window_start: u64,
    /// Points in the window from `window_start`, and in the one before it.
    current: u32,
    previous: u32,
    banned_until: u64,
    /// Bans so far, which escalate the next.
    offences: u32,
    last_offence: u64,
}

impl Record {
    /// Since when the peer has been quiet: neither offending nor banned. Time spent
    /// banned is not quiet, or a long ban would end forgotten, escalation and all.
    fn quiet_since(&self) -> u64 {
        self.last_offence.max(self.banned_until)
    }

    /// The offence points that count at `now`: the sliding-window estimate the next
    /// offence is added to, without counting one.
    #[cfg(feature = "admin")]
    fn points_at(&self, now: u64, window: u64) -> u64 {
        let elapsed = now.saturating_sub(self.window_start);
        let (older, newer, into_newer) = match elapsed / window {
            0 => (self.previous, self.current, elapsed),
            1 => (self.current, 0, elapsed - window),
            _ => return 0,
        };
        let overlap = u128::from(window - into_newer);
        let estimate = u128::from(older) * overlap / u128::from(window) + u128::from(newer);
        u64::try_from(estimate).unwrap_or(u64::MAX)
    }

    /// What keeping this record is worth when its shard is full and a new peer needs
    /// the room, lowest first: a ban is never given up (`None`), a peer with past bans
    /// is worth more than one with offences only, and a recently active one more than
    /// one long quiet.
    fn worth(&self, now: u64) -> Option<(bool, u64)> {
        (self.banned_until <= now).then_some((self.offences > 0, self.quiet_since()))
    }
}

/// What an offence did to its peer's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Not counted: its kind is turned off.
    Off,
    /// Counted, below the ban threshold.
    Counted,
    /// This offence banned the peer for this long.
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
    /// Who is banned: a peer key, or a network wider than one, banned whole
    /// ([`Bans::ban_network`]).
    pub key: PeerKey,
    /// How long the ban still runs.
    pub remaining: Duration,
    /// How many times this peer has been banned while remembered.
    pub offences: u32,
}

/// A peer on record, as [`Bans::top_offenders`] lists it.
#[cfg(feature = "admin")]
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Offender {
    /// The peer.
    pub key: PeerKey,
    /// How close its recent offences bring it to a ban, from 0 to 1: offences of every
    /// kind add up, each weighing `1 / limit` of its kind (a failed login 1/5 with the
    /// defaults), counted over the sliding failure window. A ban spends them: 0 while
    /// banned.
    pub toward_ban: f64,
    /// How many times it has been banned while remembered (as [`Ban::offences`]).
    pub bans: u32,
    /// How long its own ban still runs, if it is banned (a network banned whole is not
    /// counted here).
    pub banned_for: Option<Duration>,
}

/// What [`Bans::top_offenders`] ranks peers by.
#[cfg(feature = "admin")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OffenderRank {
    /// Recent offences: those nearest a ban first ([`Offender::toward_ban`]); peers
    /// with none are left out.
    Offences,
    /// Past bans: repeat offenders first ([`Offender::bans`]), then by recent offences;
    /// peers never banned are left out.
    Bans,
}

/// What a ban made on a key or network already banned does to the ban in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BanEnd {
    /// The new ban's end holds, sooner or later: an operator's ban, or the fleet's word.
    Replace,
    /// The later of the two ends holds: an import adds bans, it never shortens one.
    KeepLater,
}

/// Networks wider than a peer key, banned whole: a short list beside the table.
#[derive(Debug, Default)]
struct NetworkBans {
    /// Whether `bans` holds any. Written only when the list changes, so while it holds
    /// none a ban check reads just this flag, from a cache line nobody writes.
    any: AtomicBool,
    bans: RwLock<Vec<NetworkBan>>,
}

#[derive(Debug, Clone, Copy)]
struct NetworkBan {
    network: IpNet,
    banned_until: u64,
    offences: u32,
}

impl NetworkBans {
    /// When the longest ban of a network holding `key` ends, if there is one.
    fn banned_until(&self, key: &PeerKey) -> Option<u64> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let peer = key.network().addr();
        self.bans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|ban| ban.network.contains(&peer))
            .map(|ban| ban.banned_until)
            .max()
    }

    /// Bans `network` until `until`, its earlier ban's end replaced or kept if later as
    /// `end` says; whether the ban's end moved.
    fn ban(
        &self,
        network: IpNet,
        until: u64,
        offences: u32,
        now: u64,
        end: BanEnd,
    ) -> Result<bool, BanError> {
        self.change(|bans| {
            if let Some(ban) = bans.iter_mut().find(|ban| ban.network == network) {
                ban.offences = ban.offences.max(offences);
                if end == BanEnd::KeepLater && until <= ban.banned_until.max(now) {
                    return Ok(false);
                }
                ban.banned_until = until;
                return Ok(true);
            }
            if until <= now {
                return Ok(false);
            }
            if bans.len() >= MAX_NETWORK_BANS {
                bans.retain(|ban| ban.banned_until > now);
            }
            if bans.len() >= MAX_NETWORK_BANS {
                return Err(BanError::TooManyNetworks {
                    max: MAX_NETWORK_BANS,
                });
            }
            bans.push(NetworkBan {
                network,
                banned_until: until,
                offences,
            });
            Ok(true)
        })
    }

    /// Lifts `network`'s ban; `false` if there was none.
    fn unban(&self, network: &IpNet) -> bool {
        self.change(|bans| {
            let before = bans.len();
            bans.retain(|ban| ban.network != *network);
            bans.len() < before
        })
    }

    fn forget_expired(&self, now: u64) {
        if self.any.load(Ordering::Relaxed) {
            self.change(|bans| bans.retain(|ban| ban.banned_until > now));
        }
    }

    fn list(&self) -> Vec<NetworkBan> {
        if !self.any.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.bans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the list, keeping `any` true to it.
    fn change<R>(&self, change: impl FnOnce(&mut Vec<NetworkBan>) -> R) -> R {
        let mut bans = self.bans.write().unwrap_or_else(PoisonError::into_inner);
        let outcome = change(&mut bans);
        self.any.store(!bans.is_empty(), Ordering::Relaxed);
        outcome
    }
}

#[derive(Debug)]
pub(crate) struct BanTable {
    table: PeerTable<Record>,
    networks: NetworkBans,
    /// Replaced by a reload.
    policy: ArcSwap<BanPolicy>,
    keying: PeerKeying,
    origin: Instant,
    pub(crate) metrics: BanMetrics,
    /// The kernel filter, once asked for.
    #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
    kernel: std::sync::OnceLock<Arc<KernelState>>,
    /// Whether the ban check serves banned peers anyway (the login's dry run, switched
    /// with its refusal's): the kernel filter then drops nobody.
    #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
    dry_run: AtomicBool,
    /// The fleet this table's changes are shared with, once it joins one.
    #[cfg(feature = "fleet")]
    fleet: std::sync::OnceLock<Arc<crate::fleet::Shared>>,
}

impl BanTable {
    pub(crate) fn new(policy: BanPolicy, keying: PeerKeying, capacity: usize) -> Self {
        Self {
            table: PeerTable::new(capacity),
            networks: NetworkBans::default(),
            policy: ArcSwap::from_pointee(policy),
            keying,
            origin: Instant::now(),
            metrics: BanMetrics {
                operator: Count::new(BANS_ISSUED, &[("reason", "operator")]),
                #[cfg(feature = "fleet")]
                fleet: Count::new(BANS_ISSUED, &[("reason", "fleet")]),
                active: Level::new(BANS_ACTIVE, &[]),
            },
            #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
            kernel: std::sync::OnceLock::new(),
            #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
            dry_run: AtomicBool::new(false),
            #[cfg(feature = "fleet")]
            fleet: std::sync::OnceLock::new(),
        }
    }

    /// The fleet this table's changes go to, if it is in one.
    #[cfg(feature = "fleet")]
    pub(crate) fn fleet(&self) -> Option<&crate::fleet::Shared> {
        self.fleet.get().map(|fleet| &**fleet)
    }

    /// Puts the table in `fleet`; `false` if it is in one already.
    #[cfg(feature = "fleet")]
    pub(crate) fn join_fleet(&self, fleet: Arc<crate::fleet::Shared>) -> bool {
        self.fleet.set(fleet).is_ok()
    }

    /// The policy in force.
    pub(crate) fn policy(&self) -> BanPolicy {
        **self.policy.load()
    }

    /// Puts `policy` in force for every offence and ban from now on; bans in force keep
    /// their length, and offences on record count under the new window.
    pub(crate) fn set_policy(&self, policy: BanPolicy) {
        self.policy.store(Arc::new(policy));
    }

    /// The ban check would refuse `key`'s connection: the kernel filter, if there is
    /// one, counts it, unless in dry run (where the connection is served).
    #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
    pub(crate) fn refused_while_banned(&self, key: &PeerKey, remaining: Duration) {
        if let Some(kernel) = self.kernel.get()
            && !self.is_dry_run()
        {
            kernel.refused(key, remaining);
        }
    }

    /// Turns dry run on or off for the kernel filter, with the ban check's: on, it
    /// counts no refusal and holds no key (taken off the listeners at once).
    #[cfg_attr(
        not(all(feature = "kernel-bans", target_os = "linux")),
        expect(unused_variables, reason = "only the kernel filter has a dry run")
    )]
    pub(crate) fn set_dry_run(&self, dry_run: bool) {
        #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
        {
            self.dry_run.store(dry_run, Ordering::Relaxed);
            if let Some(kernel) = self.kernel.get() {
                kernel.recheck();
            }
        }
    }

    /// Whether the ban check serves banned peers anyway.
    #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
    pub(crate) fn is_dry_run(&self) -> bool {
        self.dry_run.load(Ordering::Relaxed)
    }

    /// A ban on `network` (a key, or a network banned whole) was lifted: the kernel
    /// filter, if there is one, lets its peers in again and forgets their refusals.
    #[cfg_attr(
        not(all(feature = "kernel-bans", target_os = "linux")),
        expect(unused_variables, reason = "only the kernel filter counts refusals")
    )]
    pub(crate) fn lifted(&self, network: IpNet) {
        #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
        if let Some(kernel) = self.kernel.get() {
            kernel.lifted(crate::peer::canonical_network(network), self);
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

    /// How long `peer` stays banned, by its key or a network holding it, if it is.
    ///
    /// With no ban in its shard and no network banned, this reads two atomics and
    /// neither locks nor reads the clock: it runs for every new connection.
    pub(crate) fn banned_for(&self, peer: &Classified) -> Option<Duration> {
        let key_ban = if self.table.is_empty_at(&peer.at) {
            None
        } else {
            self.table
                .lock(&peer.at)
                .get_mut()
                .map(|record| record.banned_until)
        };
        let until = key_ban.max(self.networks.banned_until(&peer.key))?;
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

    /// Counts `offence` against the peer `at`, and bans it if that makes too many.
    pub(crate) fn record_offence(&self, at: &Located, offence: Offence) -> Recorded {
        let policy = &self.policy();
        let points = policy.points(offence);
        if points == 0 {
            return Recorded::Off;
        }
        let window = nanos(policy.window);
        let mut shard = self.table.lock(at);
        // Under the lock: an offence never lands before the window another has started.
        let now = self.now();
        let Some(record) = shard.get_mut() else {
            let mut record = Record {
                window_start: now,
                current: 0,
                previous: 0,
                banned_until: 0,
                offences: 0,
                last_offence: now,
            };
            let recorded = count(&mut record, points, now, window, policy);
            return match shard.insert_evicting(record, |old| old.worth(now)) {
                Ok(()) => recorded,
                Err(Full) => Recorded::Untracked,
            };
        };
        if record.banned_until > now {
            record.last_offence = now;
            return Recorded::AlreadyBanned;
        }
        count(record, points, now, window, policy)
    }

    /// Bans `key` for `length` from now, a ban in force replaced or kept if it ends
    /// later as `end` says; whether the ban's end moved, or `Full` if its shard holds
    /// only banned peers.
    pub(crate) fn ban(
        &self,
        key: &PeerKey,
        length: Duration,
        offences: u32,
        end: BanEnd,
    ) -> Result<bool, Full> {
        let mut shard = self.table.lock(&Located::new(key));
        let now = self.now();
        let until = now.saturating_add(nanos(length));
        if let Some(record) = shard.get_mut() {
            record.offences = record.offences.max(offences);
            if end == BanEnd::KeepLater && until <= record.banned_until.max(now) {
                return Ok(false);
            }
            record.banned_until = until;
            record.last_offence = now;
            // As a ban by offences does: those that led to it are spent.
            record.current = 0;
            record.previous = 0;
            return Ok(true);
        }
        let record = Record {
            window_start: now,
            current: 0,
            previous: 0,
            banned_until: until,
            offences,
            last_offence: now,
        };
        shard.insert_evicting(record, |old| old.worth(now))?;
        Ok(!length.is_zero())
    }

    /// Bans `network` for `length` from now: as a whole if it spans more than one key,
    /// or else the key that holds it; a ban in force replaced or kept if it ends later
    /// as `end` says. One that holds all of NAT64's well-known prefix is refused
    /// ([`keyed_network`]). Whether the ban's end moved.
    pub(crate) fn ban_network(
        &self,
        network: IpNet,
        length: Duration,
        offences: u32,
        end: BanEnd,
    ) -> Result<bool, BanError> {
        let network = keyed_network(network)?;
        if self.keying.is_wider_than_a_key(&network) {
            let now = self.now();
            let until = now.saturating_add(nanos(length));
            return self.networks.ban(network, until, offences, now, end);
        }
        self.ban(&self.keying.key(network.addr()), length, offences, end)
            .map_err(|Full| BanError::TableFull)
    }

    /// Lifts the ban on `network` as a whole, or on the key that holds it (forgetting
    /// its record); `false` if there was none.
    pub(crate) fn unban_network(&self, network: IpNet) -> bool {
        let Ok(network) = keyed_network(network) else {
            return false;
        };
        if self.keying.is_wider_than_a_key(&network) {
            return self.networks.unban(&network);
        }
        self.unban(&self.keying.key(network.addr()))
    }

    /// How long `target` (a key, or a network banned whole) is still banned (zero if it
    /// is not), and how many times it has been banned, as far as the table remembers.
    #[cfg(feature = "fleet")]
    pub(crate) fn standing(&self, target: IpNet) -> (Duration, u32) {
        let Ok(target) = keyed_network(target) else {
            return (Duration::ZERO, 0);
        };
        let (until, offences) = if self.keying.is_wider_than_a_key(&target) {
            self.networks
                .list()
                .iter()
                .find(|ban| ban.network == target)
                .map_or((0, 0), |ban| (ban.banned_until, ban.offences))
        } else {
            let key = self.keying.key(target.addr());
            self.table
                .lock(&Located::new(&key))
                .get_mut()
                .map_or((0, 0), |record| (record.banned_until, record.offences))
        };
        let remaining = Duration::from_nanos(until.saturating_sub(self.now()));
        (remaining, offences)
    }

    /// What banning `network` bans: the network whole if it is wider than a key, or
    /// else the key that holds it; refused as [`ban_network`](Self::ban_network) refuses
    /// it.
    #[cfg(any(feature = "fleet", feature = "admin"))]
    pub(crate) fn ban_target(&self, network: IpNet) -> Result<IpNet, BanError> {
        let network = keyed_network(network)?;
        Ok(if self.keying.is_wider_than_a_key(&network) {
            network
        } else {
            self.keying.key(network.addr()).network()
        })
    }

    /// Lifts `key`'s ban and forgets its record; `false` if there was none.
    pub(crate) fn unban(&self, key: &PeerKey) -> bool {
        let mut shard = self.table.lock(&Located::new(key));
        let known = shard.get_mut().is_some();
        shard.remove();
        known
    }

    /// The bans in force, of keys and of networks.
    pub(crate) fn list(&self) -> Vec<Ban> {
        self.bans(|remaining, _| !remaining.is_zero())
    }

    /// The bans in force and those served that the table still remembers (for
    /// `forget_after`), with no time left: every key and network banned at least once.
    #[cfg(feature = "fleet")]
    pub(crate) fn remembered(&self) -> Vec<Ban> {
        self.bans(|remaining, offences| !remaining.is_zero() || offences > 0)
    }

    /// The bans of keys and networks that `keep` keeps, by the time left and the
    /// count of bans, sorted by key.
    fn bans(&self, keep: impl Fn(Duration, u32) -> bool) -> Vec<Ban> {
        let now = self.now();
        let keys = self.table.entries().into_iter().map(|(bits, record)| {
            let key = self.keying.key_from_bits(bits);
            (key, record.banned_until, record.offences)
        });
        let networks = self.networks.list().into_iter().map(|ban| {
            let key = PeerKey::from_network(ban.network);
            (key, ban.banned_until, ban.offences)
        });
        let mut bans: Vec<Ban> = keys
            .chain(networks)
            .map(|(key, until, offences)| Ban {
                key,
                remaining: Duration::from_nanos(until.saturating_sub(now)),
                offences,
            })
            .filter(|ban| keep(ban.remaining, ban.offences))
            .collect();
        bans.sort_by_key(|ban| ban.key);
        bans
    }

    /// The `n` peers `rank` puts first. Walks the table as [`PeerTable::top`] does.
    #[cfg(feature = "admin")]
    pub(crate) fn top_offenders(&self, n: usize, rank: OffenderRank) -> Vec<Offender> {
        let now = self.now();
        let window = nanos(self.policy().window).max(1);
        // Ranked by the first two; the last two carried along for the answer.
        let top = self.table.top(n, |record| {
            let points = record.points_at(now, window);
            let bans = record.offences;
            let ranked = match rank {
                OffenderRank::Offences => (points > 0).then_some((points, u64::from(bans))),
                OffenderRank::Bans => (bans > 0).then_some((u64::from(bans), points)),
            };
            ranked.map(|(first, second)| (first, second, points, record.banned_until))
        });
        top.into_iter()
            .map(|(bits, (first, second, points, banned_until))| {
                let bans = match rank {
                    OffenderRank::Offences => second,
                    OffenderRank::Bans => first,
                };
                Offender {
                    key: self.keying.key_from_bits(bits),
                    toward_ban: (points as f64 / f64::from(BAN_POINTS)).min(1.0),
                    bans: u32::try_from(bans).unwrap_or(u32::MAX),
                    banned_for: (banned_until > now)
                        .then(|| Duration::from_nanos(banned_until - now)),
                }
            })
            .collect()
    }

    /// How many bans are in force, of keys and of networks. Walks the table as
    /// [`PeerTable::top`] does, copying nothing.
    #[cfg(feature = "admin")]
    pub(crate) fn active(&self) -> usize {
        let now = self.now();
        let networks = self
            .networks
            .list()
            .iter()
            .filter(|ban| ban.banned_until > now)
            .count();
        self.table.count(|record| record.banned_until > now) + networks
    }

    /// Forgets the peers whose records no longer change any decision: a peer never
    /// banned once its offences are out of the sliding window (two windows after the
    /// last), and any peer quiet (neither banned nor offending) for `forget_after`.
    /// Counts the bans in force on the way, for the `bouncer.bans.active` metric.
    pub(crate) fn forget_quiet(&self) {
        let now = self.now();
        self.networks.forget_expired(now);
        let policy = self.policy();
        let forget_banned = nanos(policy.forget_after);
        let forget_unbanned = nanos(policy.window).saturating_mul(2).min(forget_banned);
        let mut active = self.networks.list().len();
        self.table.retain(|record| {
            let keep_for = if record.offences == 0 {
                forget_unbanned
            } else {
                forget_banned
            };
            active += usize::from(record.banned_until > now);
            now.saturating_sub(record.quiet_since()) < keep_for
        });
        self.metrics.active.set(active as f64);
    }

    pub(crate) fn keying(&self) -> &PeerKeying {
        &self.keying
    }
}

/// The ban table's metrics that no `stats()` counter matches.
#[derive(Debug)]
pub(crate) struct BanMetrics {
    /// Bans made by an operator (imports included).
    operator: Count,
    /// Bans applied from the fleet.
    #[cfg(feature = "fleet")]
    pub(crate) fleet: Count,
    /// Bans in force, counted at each sweep.
    active: Level,
}

/// Counts an offence of `points` at `now` in `record`; bans when the sliding-window
/// estimate reaches [`BAN_POINTS`]. A `now` before the record's window counts in that
/// window.
fn count(record: &mut Record, points: u32, now: u64, window: u64, policy: &BanPolicy) -> Recorded {
    let now = now.max(record.window_start);
    record.last_offence = now;
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
    record.current = record.current.saturating_add(points);
    let overlap = u128::from(window - (now - record.window_start));
    let estimate =
        u128::from(record.previous) * overlap / u128::from(window) + u128::from(record.current);
    if estimate < u128::from(BAN_POINTS) {
        return Recorded::Counted;
    }
    record.offences = record.offences.saturating_add(1);
    let length = policy.ban_length(record.offences);
    record.banned_until = now.saturating_add(nanos(length));
    record.current = 0;
    record.previous = 0;
    Recorded::Banned(length)
}

/// The operator's handle on the bans: add, list, lift, export and import them.
///
/// Cheap to clone; get one from [`Login::bans`](super::Login::bans).
#[derive(Debug, Clone)]
pub struct Bans {
    pub(super) table: Arc<BanTable>,
    /// The login whose live connections a ban made here evicts, if it asks to.
    pub(super) login: std::sync::Weak<super::Shared>,
}

impl Bans {
    /// Bans `ip`'s peer key (its /32 or /64 by default) for `length` from now.
    ///
    /// An operator's ban replaces one in force, longer or shorter: its end is the one
    /// asked for. A ban of no length lifts the key's ban as [`unban`](Self::unban)
    /// does (the kernel filter and the fleet are told, and its offences forgotten).
    ///
    /// # Errors
    ///
    /// [`BanError::TableFull`] if the key's part of the table holds only banned peers.
    pub fn ban(&self, ip: IpAddr, length: Duration) -> Result<(), BanError> {
        if length.is_zero() {
            self.unban(ip);
            return Ok(());
        }
        let key = self.table.keying().key(ip);
        self.table
            .ban(&key, length, 1, BanEnd::Replace)
            .map_err(|Full| BanError::TableFull)?;
        self.shared_ban(key.network(), length);
        Ok(())
    }

    /// Counts a ban an operator made here, evicts the live connections it bans if the
    /// login evicts banned peers' (not those of a network wider than a peer key), has
    /// the kernel filter read its end again (it may be sooner than the one the filter
    /// holds), and tells the fleet, if there is one and the login is not in dry run.
    fn shared_ban(&self, network: IpNet, length: Duration) {
        self.table.metrics.operator.add(1);
        self.table.lifted(network);
        let login = self.login.upgrade();
        if let Some(login) = &login {
            login.evict_banned(network);
        }
        #[cfg(feature = "fleet")]
        if let Some(fleet) = login.as_deref().and_then(super::Shared::fleet_to_tell)
            && let Ok(target) = self.table.ban_target(network)
        {
            let (_, offences) = self.table.standing(target);
            // The fleet keeps a ban no longer than the longest by offences, as long as
            // it remembers the unban that may lift it.
            let length = length.min(self.table.policy().max_ban);
            fleet.ban(target, length, offences.max(1), false);
        }
        #[cfg(not(feature = "fleet"))]
        let _ = (network, length);
    }

    /// Tells the fleet, if there is one, of an unban made here.
    fn shared_unban(&self, network: IpNet) {
        #[cfg(feature = "fleet")]
        if let Some(fleet) = self.table.fleet()
            && let Ok(target) = self.table.ban_target(network)
        {
            fleet.unban(target);
        }
        #[cfg(not(feature = "fleet"))]
        let _ = network;
    }

    /// Bans `network` for `length`: as a whole if it is wider than a peer key, so every
    /// peer in it is refused; otherwise (a /128 under /64 keying, say) the peer key that
    /// holds it, like [`ban`](Self::ban). At most 256 networks are banned whole at once,
    /// each checked against every new connection; a long block list belongs in the
    /// firewall. Exempt peers (the keying's exempt networks) are let in all the same:
    /// the ban check skips them. As [`ban`](Self::ban) does, it replaces a ban in force
    /// on the same key or network, and a ban of no length lifts it as
    /// [`unban_network`](Self::unban_network) does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_bouncer::login::Login;
    ///
    /// let login = Login::builder().build().expect("a valid policy");
    /// let bans = login.bans();
    /// bans.ban_network("198.51.100.0/24".parse().unwrap(), Duration::from_secs(3600))
    ///     .expect("room for it");
    /// assert!(bans.banned_for("198.51.100.7".parse().unwrap()).is_some());
    /// assert_eq!(bans.list()[0].key.to_string(), "198.51.100.0/24");
    /// assert!(bans.unban_network("198.51.100.0/24".parse().unwrap()));
    /// ```
    ///
    /// # Errors
    ///
    /// [`BanError::TooManyNetworks`] if 256 networks are banned already,
    /// [`BanError::TableFull`] if a key's part of the table holds only banned peers,
    /// [`BanError::Network`] for an IPv6 network that holds all of NAT64's well-known
    /// prefix, `64:ff9b::/96` (see [`peer`](crate::peer)): its translated peers are
    /// keyed by the IPv4 addresses they carry, so write those IPv4 networks instead.
    pub fn ban_network(&self, network: IpNet, length: Duration) -> Result<(), BanError> {
        if length.is_zero() {
            self.unban_network(network);
            return Ok(());
        }
        self.table
            .ban_network(network, length, 1, BanEnd::Replace)?;
        self.shared_ban(network, length);
        Ok(())
    }

    /// Lifts the ban on `ip`'s peer key and forgets its offences; `false` if nothing was
    /// recorded for it. A network banned whole stays banned.
    pub fn unban(&self, ip: IpAddr) -> bool {
        let key = self.table.keying().key(ip);
        let lifted = self.table.unban(&key);
        self.table.lifted(key.network());
        self.shared_unban(key.network());
        lifted
    }

    /// Lifts a ban made with [`ban_network`](Self::ban_network); `false` if there was
    /// none.
    pub fn unban_network(&self, network: IpNet) -> bool {
        let lifted = self.table.unban_network(network);
        self.table.lifted(network);
        self.shared_unban(network);
        lifted
    }

    /// The kernel filter of these bans (Linux, feature `kernel-bans`): peers that keep
    /// reconnecting while banned are dropped by the listening socket itself. See
    /// [`KernelBans`].
    #[cfg(all(feature = "kernel-bans", target_os = "linux"))]
    pub fn kernel_filter(&self) -> KernelBans {
        let state = self.table.kernel.get_or_init(Arc::default).clone();
        KernelBans::new(self.table.clone(), state)
    }

    /// How long `ip` stays banned, by its peer key or a network banned whole, if it is.
    pub fn banned_for(&self, ip: IpAddr) -> Option<Duration> {
        let key = self.table.keying().key(ip);
        self.table.banned_for(&Classified {
            key,
            at: Located::new(&key),
        })
    }

    /// The bans in force, by key or network.
    pub fn list(&self) -> Vec<Ban> {
        self.table.list()
    }

    /// The bans in force, and the served ones still remembered (no time left).
    #[cfg(feature = "fleet")]
    pub(crate) fn remembered(&self) -> Vec<Ban> {
        self.table.remembered()
    }

    /// How many bans are in force, without copying them as [`list`](Self::list) does:
    /// walks the table one shard at a time, each locked while its share is read.
    #[cfg(feature = "admin")]
    pub fn active(&self) -> usize {
        self.table.active()
    }

    /// The exempt networks of the login's keying: the ban check lets their peers in,
    /// banned or not.
    #[cfg(feature = "admin")]
    pub(crate) fn exempt_networks(&self) -> Vec<IpNet> {
        self.table.keying().exempt_networks()
    }

    /// What [`ban_network`](Self::ban_network) bans, as [`list`](Self::list) shows it:
    /// the network whole if it is wider than a peer key, or else the key that holds it
    /// (`203.0.113.7/32` for `203.0.113.7/32`, `2001:db8::/64` for `2001:db8::1/128`).
    ///
    /// # Errors
    ///
    /// [`BanError::Network`] for a network [`ban_network`](Self::ban_network) refuses.
    #[cfg(feature = "admin")]
    pub fn ban_key(&self, network: IpNet) -> Result<PeerKey, BanError> {
        let target = self.table.ban_target(network)?;
        Ok(if self.table.keying().is_wider_than_a_key(&target) {
            PeerKey::from_network(target)
        } else {
            self.table.keying().key(target.addr())
        })
    }

    /// The `n` peers on record that `rank` puts first, with how close each is to a ban
    /// and how often it has been banned: who is guessing passwords, timing out or
    /// hammering the limits, before and after a ban.
    ///
    /// Walks the whole table one shard at a time, each locked only while its share is
    /// read: O(tracked peers · log n), for an operator's page, not for every
    /// connection.
    ///
    /// ```
    /// use tower_bouncer::login::{Login, OffenderRank};
    ///
    /// let login = Login::builder().build().expect("a valid policy");
    /// let bans = login.bans();
    /// bans.ban("203.0.113.7".parse().unwrap(), std::time::Duration::from_secs(60))
    ///     .expect("room for it");
    /// let top = bans.top_offenders(20, OffenderRank::Bans);
    /// assert_eq!(top[0].key.to_string(), "203.0.113.7/32");
    /// assert_eq!(top[0].bans, 1);
    /// assert!(bans.top_offenders(20, OffenderRank::Offences).is_empty());
    /// ```
    #[cfg(feature = "admin")]
    pub fn top_offenders(&self, n: usize, rank: OffenderRank) -> Vec<Offender> {
        self.table.top_offenders(n, rank)
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
    /// from now, at most the policy's longest ban. Returns how many were imported.
    ///
    /// An import adds bans: a ban in force here that ends later keeps its end (a line
    /// with no time left adds nothing to it), and only the offence count, the higher of
    /// the two, is taken from the line.
    ///
    /// The text is checked as untrusted input: a line is `NETWORK SECONDS OFFENCES` of
    /// at most 200 bytes, blank, or a `#` comment. A network is banned as
    /// [`ban_network`](Self::ban_network) bans it.
    ///
    /// # Errors
    ///
    /// The first line that does not parse ([`BanError::BadLine`]) or cannot be applied
    /// ([`BanError::NotApplied`]), by number; the lines before it are imported.
    pub fn import(&self, text: &str) -> Result<usize, BanError> {
        let longest = self.table.policy().max_ban;
        let mut imported = 0;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let ban = parse_line(line).map_err(|NotABan| BanError::BadLine {
                line: number,
                text: quote(line),
            })?;
            let Some(ban) = ban else {
                continue;
            };
            let remaining = ban.remaining.min(longest);
            let lengthened = self
                .table
                .ban_network(ban.network, remaining, ban.offences, BanEnd::KeepLater)
                .map_err(|error| BanError::NotApplied {
                    line: number,
                    error: Box::new(error),
                })?;
            if lengthened {
                self.shared_ban(ban.network, remaining);
            }
            imported += 1;
        }
        Ok(imported)
    }
}

/// One line of an export, read back.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ExportedBan {
    network: IpNet,
    remaining: Duration,
    offences: u32,
}

/// A line that is not `NETWORK SECONDS OFFENCES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NotABan;

/// Reads one line of an export: `None` for a blank line or a comment.
fn parse_line(line: &str) -> Result<Option<ExportedBan>, NotABan> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.len() > MAX_IMPORT_LINE {
        return Err(NotABan);
    }
    let mut fields = line.split_whitespace();
    let (Some(network), Some(seconds), Some(offences), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(NotABan);
    };
    let seconds: f64 = seconds.parse().map_err(|_| NotABan)?;
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(NotABan);
    }
    Ok(Some(ExportedBan {
        network: network.parse().map_err(|_| NotABan)?,
        // Only too large a number is left to fail here: it saturates.
        remaining: Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX),
        offences: offences.parse().map_err(|_| NotABan)?,
    }))
}

/// A line as an error quotes it: its first 64 characters.
fn quote(line: &str) -> String {
    const QUOTED: usize = 64;
    match line.char_indices().nth(QUOTED) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_owned(),
    }
}

/// An operator's ban that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BanError {
    /// The peer's part of the ban table holds only banned peers.
    TableFull,
    /// As many networks as allowed are banned whole already.
    TooManyNetworks {
        /// How many.
        max: usize,
    },
    /// A line of an import does not parse.
    BadLine {
        /// Its number, from 1.
        line: usize,
        /// The line, its first 64 characters.
        text: String,
    },
    /// A line of an import parses, but its ban could not be applied.
    NotApplied {
        /// Its number, from 1.
        line: usize,
        /// Why.
        error: Box<BanError>,
    },
    /// A network no ban can hold as written
    /// ([`ConfigError::HoldsNat64Prefix`](crate::ConfigError::HoldsNat64Prefix)).
    Network(crate::ConfigError),
}

impl From<crate::ConfigError> for BanError {
    fn from(error: crate::ConfigError) -> Self {
        BanError::Network(error)
    }
}

impl fmt::Display for BanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanError::TableFull => f.write_str("the ban table is full of bans"),
            BanError::TooManyNetworks { max } => {
                write!(
                    f,
                    "{max} networks are banned whole already, the most allowed"
                )
            }
            BanError::BadLine { line, text } => write!(
                f,
                "line {line} is not `NETWORK SECONDS OFFENCES` (seconds finite and at \
                 least 0, offences at most {}): {text:?}",
                u32::MAX
            ),
            BanError::NotApplied { line, error } => write!(f, "line {line}: {error}"),
            BanError::Network(error) => error.fmt(f),
        }
    }
}

impl Error for BanError {}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// 3 failed logins or 7 first-byte timeouts ban; other kinds are not counted.
    fn policy() -> BanPolicy {
        let mut max_offences = [0; Offence::COUNT];
        max_offences[Offence::FailedLogin.index()] = 3;
        max_offences[Offence::FirstByteTimeout.index()] = 7;
        BanPolicy {
            max_offences,
            window: secs(60),
            first_ban: secs(100),
            factor: 2,
            max_ban: secs(350),
            forget_after: secs(1000),
        }
    }

    fn peer(keying: &PeerKeying, ip: IpAddr) -> Classified {
        let key = keying.key(ip);
        Classified {
            key,
            at: Located::new(&key),
        }
    }

    fn table() -> (BanTable, Classified) {
        let keying = PeerKeying::default();
        let peer = peer(&keying, "192.0.2.1".parse().unwrap());
        (BanTable::new(policy(), keying, 100), peer)
    }

    #[cfg(feature = "admin")]
    #[tokio::test(start_paused = true)]
    async fn offenders_are_ranked_by_the_points_that_count_now_and_fade_with_the_window() {
        let (table, first) = table();
        let second = peer(table.keying(), "192.0.2.2".parse().unwrap());
        table.record_offence(&first.at, Offence::FailedLogin);
        for _ in 0..2 {
            table.record_offence(&second.at, Offence::FailedLogin);
        }
        let ranked = |rank| -> Vec<(String, f64)> {
            table
                .top_offenders(10, rank)
                .iter()
                .map(|offender| (offender.key.to_string(), offender.toward_ban))
                .collect()
        };
        let near = |a: f64, b: f64| (a - b).abs() < 1e-6;
        let now = ranked(OffenderRank::Offences);
        assert_eq!(now.len(), 2);
        assert_eq!(now[0].0, "192.0.2.2/32");
        assert!(
            near(now[0].1, 2.0 / 3.0) && near(now[1].1, 1.0 / 3.0),
            "{now:?}"
        );
        assert!(ranked(OffenderRank::Bans).is_empty());

        // Half a window into the next, half of the last window's points still count.
        tokio::time::advance(secs(90)).await;
        let later = ranked(OffenderRank::Offences);
        assert!(
            near(later[0].1, 1.0 / 3.0) && near(later[1].1, 1.0 / 6.0),
            "{later:?}"
        );
        // Reading changed nothing: the next offence counts as it would have.
        assert_eq!(
            table.record_offence(&second.at, Offence::FailedLogin),
            Recorded::Counted
        );
        assert!(near(ranked(OffenderRank::Offences)[0].1, 2.0 / 3.0));

        // Two windows on, nothing counts: nobody is listed.
        tokio::time::advance(secs(120)).await;
        assert!(ranked(OffenderRank::Offences).is_empty());

        // A ban spends the points and is counted.
        for _ in 0..3 {
            table.record_offence(&first.at, Offence::FailedLogin);
        }
        let banned = table.top_offenders(10, OffenderRank::Bans);
        assert_eq!(banned.len(), 1);
        assert_eq!((banned[0].bans, banned[0].toward_ban), (1, 0.0));
        assert_eq!(banned[0].banned_for, Some(secs(100)));
        assert_eq!(table.active(), 1);
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
            last_offence: 1_000,
        };
        assert_eq!(
            count(&mut record, 1, 999, nanos(secs(60)), &policy()),
            Recorded::Counted
        );
        assert_eq!((record.window_start, record.current), (1_000, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn n_failures_within_the_window_ban() {
        let (bans, peer) = table();
        assert_eq!(
            bans.record_offence(&peer.at, Offence::FailedLogin),
            Recorded::Counted
        );
        tokio::time::advance(secs(20)).await;
        assert_eq!(
            bans.record_offence(&peer.at, Offence::FailedLogin),
            Recorded::Counted
        );
        tokio::time::advance(secs(20)).await;
        assert_eq!(
            bans.record_offence(&peer.at, Offence::FailedLogin),
            Recorded::Banned(secs(100))
        );
        assert_eq!(bans.banned_for(&peer), Some(secs(100)));
        assert_eq!(
            bans.record_offence(&peer.at, Offence::FailedLogin),
            Recorded::AlreadyBanned
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_wider_than_the_window_do_not_ban() {
        let (bans, peer) = table();
        for _ in 0..20 {
            assert_eq!(
                bans.record_offence(&peer.at, Offence::FailedLogin),
                Recorded::Counted
            );
            tokio::time::advance(secs(40)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_across_a_window_boundary_still_count() {
        let (bans, peer) = table();
        tokio::time::advance(secs(1)).await;
        bans.record_offence(&peer.at, Offence::FailedLogin);
        tokio::time::advance(secs(50)).await;
        bans.record_offence(&peer.at, Offence::FailedLogin);
        // 61 s after the first: the new window sees the old one's failures weighed by
        // their overlap.
        tokio::time::advance(secs(10)).await;
        assert_eq!(
            bans.record_offence(&peer.at, Offence::FailedLogin),
            Recorded::Banned(secs(100))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn offences_of_every_kind_add_up_by_their_weights() {
        let (bans, peer) = table();
        // A first-byte timeout is a seventh of a ban, a failed login a third.
        for _ in 0..4 {
            let recorded = bans.record_offence(&peer.at, Offence::FirstByteTimeout);
            assert_eq!(recorded, Recorded::Counted);
        }
        let recorded = bans.record_offence(&peer.at, Offence::FailedLogin);
        assert_eq!(recorded, Recorded::Counted, "4/7 + 1/3 < 1");
        let recorded = bans.record_offence(&peer.at, Offence::FirstByteTimeout);
        assert_eq!(recorded, Recorded::Banned(secs(100)), "5/7 + 1/3 > 1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_kind_without_a_limit_is_not_counted() {
        let (bans, peer) = table();
        for _ in 0..100 {
            let recorded = bans.record_offence(&peer.at, Offence::OverLimit);
            assert_eq!(recorded, Recorded::Off);
        }
        assert_eq!(bans.len(), 0);
    }

    #[test]
    fn a_limit_of_n_bans_at_the_nth_offence_not_before() {
        for limit in [1, 3, 7, 30, 300, 9_999, 30_000] {
            let mut policy = policy();
            policy.max_offences[Offence::OverLimit.index()] = limit;
            let points = u64::from(policy.points(Offence::OverLimit));
            let ban = u64::from(BAN_POINTS);
            assert!(points * u64::from(limit) >= ban, "{limit}");
            assert!(points * u64::from(limit - 1) < ban, "{limit}");
        }
    }

    #[test]
    fn a_record_stays_small() {
        assert_eq!(std::mem::size_of::<Record>(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ban_expires_and_the_next_one_is_longer() {
        let (bans, peer) = table();
        for _ in 0..3 {
            bans.record_offence(&peer.at, Offence::FailedLogin);
        }
        tokio::time::advance(secs(100)).await;
        assert_eq!(bans.banned_for(&peer), None);
        for _ in 0..2 {
            assert_eq!(
                bans.record_offence(&peer.at, Offence::FailedLogin),
                Recorded::Counted
            );
        }
        assert_eq!(
            bans.record_offence(&peer.at, Offence::FailedLogin),
            Recorded::Banned(secs(200))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_peer_is_forgotten_with_its_offences() {
        let (bans, peer) = table();
        for _ in 0..3 {
            bans.record_offence(&peer.at, Offence::FailedLogin);
        }
        // Quiet from the end of its 100 s ban.
        tokio::time::advance(secs(1099)).await;
        bans.forget_quiet();
        assert_eq!(bans.len(), 1, "not quiet for long enough yet");
        tokio::time::advance(secs(1)).await;
        bans.forget_quiet();
        assert_eq!(bans.len(), 0);
        for _ in 0..2 {
            bans.record_offence(&peer.at, Offence::FailedLogin);
        }
        assert_eq!(
            bans.record_offence(&peer.at, Offence::FailedLogin),
            Recorded::Banned(secs(100)),
            "a first offence again"
        );
    }

    fn at(keying: &PeerKeying, n: u32) -> Classified {
        peer(keying, std::net::Ipv4Addr::from_bits(n).into())
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded_and_never_evicts_a_ban() {
        let keying = PeerKeying::default();
        let bans = BanTable::new(policy(), keying.clone(), 1);
        let (first, second, third) = (at(&keying, 1), at(&keying, 2), at(&keying, 3));
        assert_eq!(
            bans.record_offence(&first.at, Offence::FailedLogin),
            Recorded::Counted
        );
        assert!(!bans.is_full_for(&second.at), "the first peer can make way");
        assert_eq!(
            bans.record_offence(&second.at, Offence::FailedLogin),
            Recorded::Counted
        );
        assert_eq!(bans.len(), 1);
        assert!(!bans.table.contains(&first.at));

        for _ in 0..2 {
            bans.record_offence(&second.at, Offence::FailedLogin);
        }
        assert!(bans.banned_for(&second).is_some());
        assert!(bans.is_full_for(&third.at));
        assert_eq!(
            bans.record_offence(&third.at, Offence::FailedLogin),
            Recorded::Untracked
        );
        assert!(bans.banned_for(&second).is_some());
        assert!(
            bans.ban(
                &keying.key("192.0.2.3".parse().unwrap()),
                secs(9),
                1,
                BanEnd::Replace
            )
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
            .filter(|other| bans.table.shares_shard(&first.at, &other.at));
        // The stalest peer is banned; the others fail once each, 10 ms apart.
        let banned = one_shard.next().unwrap();
        for _ in 0..3 {
            bans.record_offence(&banned.at, Offence::FailedLogin);
        }
        let mut tracked = Vec::new();
        while !bans.table.is_full_at(&first.at) {
            tokio::time::advance(Duration::from_millis(10)).await;
            let peer = one_shard.next().unwrap();
            assert_eq!(
                bans.record_offence(&peer.at, Offence::FailedLogin),
                Recorded::Counted
            );
            tracked.push(peer);
        }
        assert!(tracked.len() >= 3);

        // Fresh records all, yet a newcomer is tracked: the stalest unbanned one goes.
        let newcomer = one_shard.next().unwrap();
        assert_eq!(
            bans.record_offence(&newcomer.at, Offence::FailedLogin),
            Recorded::Counted
        );
        assert!(bans.table.contains(&newcomer.at));
        assert!(!bans.table.contains(&tracked[0].at));
        assert!(bans.table.contains(&tracked[1].at));
        assert!(bans.banned_for(&banned).is_some(), "a ban is never evicted");

        // Once its ban is over, a repeat offender outweighs peers with failures only.
        tokio::time::advance(secs(100)).await;
        assert_eq!(bans.banned_for(&banned), None);
        let newcomer = one_shard.next().unwrap();
        assert_eq!(
            bans.record_offence(&newcomer.at, Offence::FailedLogin),
            Recorded::Counted
        );
        assert!(bans.table.contains(&banned.at));
        assert!(!bans.table.contains(&tracked[1].at));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_never_banned_is_forgotten_two_windows_after_its_last_failure() {
        let (bans, peer) = table();
        bans.record_offence(&peer.at, Offence::FailedLogin);
        tokio::time::advance(secs(119)).await;
        bans.forget_quiet();
        assert_eq!(bans.len(), 1);
        tokio::time::advance(secs(1)).await;
        bans.forget_quiet();
        assert_eq!(bans.len(), 0);
    }

    fn handle() -> Bans {
        Bans {
            table: Arc::new(BanTable::new(policy(), PeerKeying::default(), 4096)),
            login: std::sync::Weak::new(),
        }
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_imported_network_wider_than_a_key_is_banned_whole() {
        let bans = handle();
        assert_eq!(bans.import("192.0.2.0/24 600 1\n"), Ok(1));
        assert!(bans.banned_for(ip("192.0.2.77")).is_some());
        assert_eq!(bans.banned_for(ip("192.0.3.1")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_import_is_held_to_the_policy() {
        let bans = handle();
        let text = "192.0.2.1/32 1e15 1\n192.0.2.2/32 0 4294967295\n";
        assert_eq!(bans.import(text), Ok(2));
        assert_eq!(bans.banned_for(ip("192.0.2.1")), Some(secs(350)), "max_ban");
        let at = peer(bans.table.keying(), ip("192.0.2.2")).at;
        for _ in 0..2 {
            bans.table.record_offence(&at, Offence::FailedLogin);
        }
        assert_eq!(
            bans.table.record_offence(&at, Offence::FailedLogin),
            Recorded::Banned(secs(350))
        );
    }

    #[test]
    fn an_import_refuses_what_is_not_an_export() {
        let bans = handle();
        let long = format!("192.0.2.1/32 1 1{}", " 1".repeat(10_000));
        for (text, bad_line) in [
            ("192.0.2.1/32 NaN 1", 1),
            ("\n# a comment\n192.0.2.1/32 inf 1", 3),
            ("192.0.2.1/32 -1 1", 1),
            ("192.0.2.1/32 1", 1),
            ("192.0.2.1/32 1 -1", 1),
            ("192.0.2.1/32 1 4294967296", 1),
            ("192.0.2.1/32 1 1 1", 1),
            ("192.0.2.1/33 1 1", 1),
            ("192.0.2.1 1 1", 1),
            (long.as_str(), 1),
        ] {
            match bans.import(text) {
                Err(BanError::BadLine { line, text }) => {
                    assert_eq!(line, bad_line, "{text:?}");
                    assert!(text.len() < 100, "the error quotes a bounded text");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(bans.list().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn bans_survive_an_export_and_import() {
        let (bans, peer) = table();
        let bans = Bans {
            table: Arc::new(bans),
            login: std::sync::Weak::new(),
        };
        bans.ban(ip("2001:db8:1:2::9"), secs(300)).unwrap();
        bans.ban_network(net("2001:db8:ff::/48"), secs(200))
            .unwrap();
        for _ in 0..3 {
            bans.table.record_offence(&peer.at, Offence::FailedLogin);
        }
        tokio::time::advance(secs(50)).await;
        let text = bans.export();
        assert_eq!(
            text,
            "192.0.2.1/32 50.000 1\n2001:db8:1:2::/64 250.000 1\n2001:db8:ff::/48 150.000 1\n"
        );

        let restarted = handle();
        assert_eq!(restarted.import(&text), Ok(3));
        assert_eq!(restarted.list(), bans.list());
        assert_eq!(restarted.banned_for(ip("2001:db8:1:2::1")), Some(secs(250)));
        assert_eq!(
            restarted.banned_for(ip("2001:db8:ff:7::1")),
            Some(secs(150))
        );
        assert!(restarted.unban(ip("192.0.2.1")));
        assert!(restarted.unban_network(net("2001:db8:ff::/48")));
        assert_eq!(restarted.list().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_network_is_banned_whole_or_by_the_key_that_holds_it() {
        let bans = handle();
        bans.ban_network(net("2001:db8:1:2::9/128"), secs(60))
            .unwrap();
        assert_eq!(bans.list()[0].key.to_string(), "2001:db8:1:2::/64");
        assert!(bans.banned_for(ip("2001:db8:1:2::1")).is_some());
        bans.ban_network(net("::ffff:198.51.100.0/120"), secs(60))
            .unwrap();
        assert!(bans.banned_for(ip("198.51.100.200")).is_some());
        assert!(bans.unban_network(net("198.51.100.0/24")));
        assert_eq!(bans.banned_for(ip("198.51.100.200")), None);

        let full = (0..256_u32)
            .map(|n| format!("{}/24 60 1", std::net::Ipv4Addr::from_bits(n << 8)))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(bans.import(&full), Ok(256));
        assert_eq!(
            bans.import("# one too many\n203.0.113.0/24 60 1"),
            Err(BanError::NotApplied {
                line: 2,
                error: Box::new(BanError::TooManyNetworks { max: 256 })
            })
        );
        tokio::time::advance(secs(60)).await;
        bans.ban_network(net("203.0.113.0/24"), secs(60)).unwrap();
        bans.table.forget_quiet();
        assert_eq!(bans.table.networks.list().len(), 1, "expired bans made way");
    }

    /// Behind a NAT64 translator every IPv4 client arrives from NAT64's well-known
    /// prefix, `64:ff9b::/96`, and is keyed by the IPv4 address it carries. An IPv6
    /// network that holds that prefix (`64:ff9b::/64`, the very key all those clients
    /// had before they were told apart, as saved bans, an older replica of the fleet or
    /// an operator reading an older admin page name it; or the translator's /48) holds
    /// every translated client as its socket names it: a ban on it either bans them or
    /// is refused. It is not accepted and then taken for a ban on `0.0.0.0`, nor kept as
    /// a network ban that holds none of their keys.
    #[tokio::test(start_paused = true)]
    async fn a_ban_on_an_ipv6_network_holding_nat64s_prefix_bans_its_clients_or_is_refused() {
        for network in ["64:ff9b::/64", "64:ff9b::/48"] {
            let bans = handle();
            let accepted = bans.ban_network(net(network), secs(60));
            let listed: Vec<String> = bans.list().iter().map(|ban| ban.key.to_string()).collect();
            let translated = bans.banned_for(ip("64:ff9b::192.0.2.1"));
            assert!(
                accepted.is_err() || translated.is_some(),
                "a ban on {network} was accepted, listed as {listed:?}, and its peer \
                 64:ff9b::192.0.2.1 is not banned"
            );
        }
    }

    /// `64:ff9b::/96` holds every translated client, each keyed by the IPv4 address it
    /// carries: a ban on it would ban all of IPv4, native clients too, though it names
    /// an IPv6 network. It is refused; `0.0.0.0/0` says so if that is meant.
    #[tokio::test(start_paused = true)]
    async fn a_ban_on_nat64s_whole_prefix_is_refused_rather_than_banning_all_of_ipv4() {
        let bans = handle();
        let refused = bans.ban_network(net("64:ff9b::/96"), secs(60));
        assert!(
            matches!(
                refused,
                Err(BanError::Network(
                    crate::ConfigError::HoldsNat64Prefix { .. }
                ))
            ),
            "{refused:?}"
        );
        assert_eq!(
            bans.banned_for(ip("198.51.100.1")),
            None,
            "a native peer banned"
        );
        assert!(bans.list().is_empty());
    }

    mod import_fuzz {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use proptest::{collection::vec, prelude::*};

        use super::*;

        fn network() -> impl Strategy<Value = String> {
            prop_oneof![
                (any::<u32>(), 0..=32_u8)
                    .prop_map(|(bits, len)| format!("{}/{len}", Ipv4Addr::from_bits(bits))),
                (any::<u128>(), 0..=128_u8)
                    .prop_map(|(bits, len)| format!("{}/{len}", Ipv6Addr::from_bits(bits))),
            ]
        }

        /// A network a ban can hold: not one that holds all of NAT64's well-known
        /// prefix.
        fn bannable_network() -> impl Strategy<Value = String> {
            network().prop_filter("holds NAT64's well-known prefix", |network| {
                keyed_network(network.parse().unwrap()).is_ok()
            })
        }

        /// A line an import takes: a ban, a blank line or a comment.
        fn good_line() -> impl Strategy<Value = String> {
            prop_oneof![
                (bannable_network(), 0.0..1e9_f64, any::<u32>()).prop_map(
                    |(network, seconds, offences)| format!("{network} {seconds:.3} {offences}")
                ),
                Just(String::new()),
                "#[^\n]{0,40}",
            ]
        }

        /// A line an import refuses.
        fn bad_line() -> impl Strategy<Value = String> {
            prop_oneof![
                (network(), "[a-zA-Z]{1,9}")
                    .prop_map(|(network, seconds)| format!("{network} {seconds} 1")),
                (network(), -1e9..-1e-9_f64)
                    .prop_map(|(network, seconds)| format!("{network} {seconds} 1")),
                (network(), 4_294_967_296_u64..)
                    .prop_map(|(network, offences)| format!("{network} 1 {offences}")),
                network().prop_map(|network| format!("{network} 1")),
                network().prop_map(|network| format!("{network} 1 1 1")),
                "[0-9.]{1,15}".prop_map(|address| format!("{address} 1 1")),
                // Valid but for its length.
                network().prop_map(|network| format!("{network} {}1 1", "0".repeat(200))),
            ]
        }

        proptest! {
            #[test]
            fn never_panics_on_any_text(text in any::<String>()) {
                let _ = handle().import(&text);
            }

            #[test]
            fn never_panics_on_any_bytes(bytes in vec(any::<u8>(), 0..400)) {
                let _ = handle().import(&String::from_utf8_lossy(&bytes));
            }

            #[test]
            fn never_panics_on_lines_of_fields(
                lines in vec("[ 0-9a-fA-F:./#+eEinN-]{0,50}", 0..20)
            ) {
                let _ = handle().import(&lines.join("\n"));
            }

            #[test]
            fn an_error_names_the_first_bad_line(
                before in vec(good_line(), 0..30),
                bad in bad_line(),
                after in vec(any::<String>(), 0..3),
            ) {
                let text = [before.clone(), vec![bad.clone()], after].concat().join("\n");
                match handle().import(&text) {
                    Err(BanError::BadLine { line, .. }) => prop_assert_eq!(line, before.len() + 1),
                    other => prop_assert!(false, "{:?} for {:?}", other, bad),
                }
            }
        }
    }
}
