//! A bounded, sharded table keyed by peer, for the login's tables whose entries are more
//! than a word: its bans and offence counts, and its per-source startup counts. The
//! tables every connection writes in the recommended stack are `CellTable`s.
//! [`Located`], the hashed key, serves both.
//!
//! A key is hashed once per connection, with a per-process random key (SipHash, so an
//! attacker who picks addresses cannot pick collisions), and that one hash both picks
//! the shard and finds the entry, in every table: all tables share the key. Peers in
//! different shards never wait on each other's lock. Each shard holds at most its share
//! of the capacity, so the bound is checked under the shard's own lock (a count of the
//! whole table would be a write every thread shares, twice per connection for the
//! startup counts), and a key whose shard is full is refused while others have room:
//! [`Overflow`] says from when. A shard shrinks as it empties, so memory returns to its
//! baseline after a storm.

use std::{
    hash::{BuildHasher, Hasher, RandomState},
    sync::{
        LazyLock, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use hashbrown::HashTable;

use super::PeerKey;

/// What a full table does with a peer it is not tracking yet.
///
/// The per-peer limit's and the rate limit's tables hold exactly `max_tracked_peers`
/// keys; the per-peer limit first makes room by forgetting peers with no live
/// connection. The login's ban table (bans and offence counts) and its per-source
/// startup counts are split into shards, each holding an equal share of
/// `max_tracked_peers` (rounded down) and filling on its own, so there a new peer
/// finds the table full when its shard is, while other shards still have room. A table
/// of up to 127 keys is one shard; a larger one has shares of at least 64 keys, and up
/// to 64 shards per thread of the machine (1024 at most). Peers fall into shards at
/// random, so the first shard fills when the table holds about two thirds of
/// `max_tracked_peers` with shares of 64 keys (three fifths in an unlucky draw; the
/// default 65 536 on 16 threads or more), and about nine tenths with shares of 512 or
/// more (the default on 2 threads). The ban table first makes room by forgetting a peer
/// of that shard that is not banned, so there this policy applies only to a shard full
/// of bans; the startup counts always let such a peer in, uncounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Let the peer through without tracking it (OpenSSH's `permissive`): an address
    /// spray cannot lock everyone out, and the global limits still apply.
    #[default]
    Admit,
    /// Refuse the peer (OpenSSH's `deny-all`): nobody new gets in until entries expire.
    Refuse,
}

/// The process's one hash key, shared by every table.
static HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// The bits in one write, without the length prefix `Hash` gives an array.
pub(super) fn hash(bits: &[u8; 16]) -> u64 {
    let mut hasher = HASHER.build_hasher();
    hasher.write(bits);
    hasher.finish()
}

/// A key, hashed: computed once per connection, good for a lookup in any table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Located {
    /// The key without its prefix (the same for every key of one family in a table).
    bits: [u8; 16],
    hash: u64,
}

impl Located {
    pub(crate) fn new(key: &PeerKey) -> Self {
        let bits = key.bits();
        Self {
            bits,
            hash: hash(&bits),
        }
    }

    pub(super) fn bits(&self) -> &[u8; 16] {
        &self.bits
    }

    pub(super) fn hash(&self) -> u64 {
        self.hash
    }
}

/// The best `n` of what a walk is offered, by rank; ties go to the lower key.
#[cfg(feature = "admin")]
pub(super) struct Best<R> {
    n: usize,
    /// The lowest of the best so far on top, to be dropped for a better one; on a tie
    /// in rank, the higher key is the lower.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(R, std::cmp::Reverse<[u8; 16]>)>>,
}

#[cfg(feature = "admin")]
impl<R: Ord> Best<R> {
    pub(super) fn new(n: usize) -> Self {
        Self {
            n,
            heap: std::collections::BinaryHeap::with_capacity(n.saturating_add(1).min(1024)),
        }
    }

    pub(super) fn offer(&mut self, key: [u8; 16], rank: R) {
        use std::cmp::Reverse;

        if self.n == 0 {
            return;
        }
        self.heap.push(Reverse((rank, Reverse(key))));
        if self.heap.len() > self.n {
            self.heap.pop();
        }
    }

    /// The best, highest first, with their rank.
    pub(super) fn into_vec(self) -> Vec<([u8; 16], R)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|std::cmp::Reverse((rank, std::cmp::Reverse(key)))| (key, rank))
            .collect()
    }
}

/// The fewest keys a shard holds, where the capacity allows.
const KEYS_PER_SHARD: usize = 64;

pub(crate) struct PeerTable<V> {
    shards: Box<[Shard<V>]>,
    shard_capacity: usize,
}

/// One shard, on its own cache line so that neighbours do not false-share.
#[repr(align(64))]
struct Shard<V> {
    entries: Mutex<HashTable<([u8; 16], V)>>,
    /// Written under the lock, read without it.
    len: AtomicUsize,
}

/// A locked shard, at one key.
pub(crate) struct Locked<'a, V> {
    entries: MutexGuard<'a, HashTable<([u8; 16], V)>>,
    len: &'a AtomicUsize,
    room: usize,
    at: Located,
}

/// The key's shard has no room for another key.
#[derive(Debug)]
pub(crate) struct Full;

impl<V> PeerTable<V> {
    /// A table that holds at most `capacity` keys (at least 1): each shard holds its
    /// equal share, so a key is refused when its shard is full, from when the table
    /// holds about two thirds of `capacity` (see [`Overflow`]), never after it holds
    /// `capacity`.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let parallelism = std::thread::available_parallelism().map_or(4, usize::from);
        // A power of two; many more shards than threads, so that two threads rarely
        // want one shard's lock at once (at 8 shards a thread, the two threads of the
        // `ratios` bench spent a twentieth of their time waiting for each other); yet
        // at least 64 keys a shard, so that a shard does not fill long before the table.
        let most_shards = 1 << (capacity / KEYS_PER_SHARD).max(1).ilog2();
        let shard_count = (parallelism * 64)
            .next_power_of_two()
            .clamp(1, 1024)
            .min(most_shards);
        let shards = (0..shard_count)
            .map(|_| Shard {
                entries: Mutex::new(HashTable::new()),
                len: AtomicUsize::new(0),
            })
            .collect();
        Self {
            shards,
            shard_capacity: capacity / shard_count,
        }
    }

    /// How many keys are tracked.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.len.load(Ordering::Relaxed))
            .sum()
    }

    /// The most keys the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.shard_capacity * self.shards.len()
    }

    fn shard(&self, at: &Located) -> &Shard<V> {
        // The middle bits: hashbrown uses the low ones for the bucket and the top seven
        // for its tags.
        &self.shards[(at.hash >> 32) as usize & (self.shards.len() - 1)]
    }

    /// Whether `at`'s shard is at its capacity, without taking its lock.
    pub(crate) fn is_full_at(&self, at: &Located) -> bool {
        self.shard(at).len.load(Ordering::Relaxed) >= self.shard_capacity
    }

    /// Whether `at`'s shard holds nothing, without taking its lock: the common case of
    /// a table that is mostly empty, such as one of bans, costs one load.
    pub(crate) fn is_empty_at(&self, at: &Located) -> bool {
        self.shard(at).len.load(Ordering::Relaxed) == 0
    }

    /// Whether `at` is tracked.
    #[cfg(test)]
    pub(crate) fn contains(&self, at: &Located) -> bool {
        self.lock(at).get_mut().is_some()
    }

    /// Locks the shard that holds `at`.
    pub(crate) fn lock(&self, at: &Located) -> Locked<'_, V> {
        let shard = self.shard(at);
        Locked {
            entries: shard.entries.lock().unwrap_or_else(PoisonError::into_inner),
            len: &shard.len,
            room: self.shard_capacity,
            at: *at,
        }
    }

    /// A copy of every entry, shard by shard (each shard consistent in itself).
    pub(crate) fn entries(&self) -> Vec<([u8; 16], V)>
    where
        V: Clone,
    {
        let mut all = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let entries = shard.entries.lock().unwrap_or_else(PoisonError::into_inner);
            all.extend(entries.iter().cloned());
        }
        all
    }

    /// The `n` entries that `rank` ranks highest, highest first, with their rank; an
    /// entry ranked `None` is left out, and ties go to the lower key.
    ///
    /// Walks every shard, one at a time, each locked only while its own share of the
    /// table is read, keeping the best `n` on the way: O(len · log n) time, O(n) memory,
    /// and no lock held across shards. A shard changed while the walk is elsewhere is
    /// seen as it was when the walk passed it.
    #[cfg(feature = "admin")]
    pub(crate) fn top<R: Ord>(
        &self,
        n: usize,
        rank: impl Fn(&V) -> Option<R>,
    ) -> Vec<([u8; 16], R)> {
        let mut best = Best::new(n);
        for shard in self.shards.iter() {
            let entries = shard.entries.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, value) in entries.iter() {
                if let Some(rank) = rank(value) {
                    best.offer(*key, rank);
                }
            }
        }
        best.into_vec()
    }

    /// How many entries `counts` says yes to: walks every shard as [`top`](Self::top)
    /// does.
    #[cfg(feature = "admin")]
    pub(crate) fn count(&self, counts: impl Fn(&V) -> bool) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let entries = shard.entries.lock().unwrap_or_else(PoisonError::into_inner);
                entries.iter().filter(|(_, value)| counts(value)).count()
            })
            .sum()
    }

    /// Whether `a` and `b` are kept in one shard.
    #[cfg(test)]
    pub(crate) fn shares_shard(&self, a: &Located, b: &Located) -> bool {
        std::ptr::eq(self.shard(a), self.shard(b))
    }

    /// Removes every entry for which `keep` is false, shard by shard.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for shard in self.shards.iter() {
            let mut entries = shard.entries.lock().unwrap_or_else(PoisonError::into_inner);
            entries.retain(|(_, value)| keep(value));
            shard.len.store(entries.len(), Ordering::Relaxed);
            shrink_if_sparse(&mut entries);
        }
    }
}

impl<V> Locked<'_, V> {
    /// The value at the key, if tracked.
    pub(crate) fn get_mut(&mut self) -> Option<&mut V> {
        let Located { bits, hash } = self.at;
        self.entries
            .find_mut(hash, |(key, _)| *key == bits)
            .map(|(_, value)| value)
    }

    /// Starts tracking the key (which must not be tracked yet), if its shard has room
    /// (whatever room other shards have).
    pub(crate) fn insert(&mut self, value: V) -> Result<(), Full> {
        if self.entries.len() >= self.room {
            return Err(Full);
        }
        self.entries
            .insert_unique(self.at.hash, (self.at.bits, value), |(key, _)| hash(key));
        self.len.store(self.entries.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Starts tracking the key (which must not be tracked yet). If its shard is full,
    /// the entry `worth` values least makes way for it; an entry worth `None` never does.
    ///
    /// Finding that entry scans the whole shard (its share of the capacity), and only
    /// when the shard is full: lookups never pay for it.
    pub(crate) fn insert_evicting<W: Ord>(
        &mut self,
        value: V,
        worth: impl Fn(&V) -> Option<W>,
    ) -> Result<(), Full> {
        if self.entries.len() >= self.room {
            let (_, least) = self
                .entries
                .iter()
                .filter_map(|(key, value)| Some((worth(value)?, *key)))
                .min_by(|a, b| a.0.cmp(&b.0))
                .ok_or(Full)?;
            if let Ok(entry) = self
                .entries
                .find_entry(hash(&least), |(key, _)| *key == least)
            {
                entry.remove();
            }
        }
        self.insert(value)
    }

    /// Whether [`insert_evicting`](Self::insert_evicting) would find room: the shard is
    /// not full, or one of its entries is worth something. Scans the shard when full.
    pub(crate) fn has_room<W>(&self, worth: impl Fn(&V) -> Option<W>) -> bool {
        self.entries.len() < self.room
            || self.entries.iter().any(|(_, value)| worth(value).is_some())
    }

    /// Stops tracking the key.
    pub(crate) fn remove(&mut self) {
        let Located { bits, hash } = self.at;
        if let Ok(entry) = self.entries.find_entry(hash, |(key, _)| *key == bits) {
            entry.remove();
            self.len.store(self.entries.len(), Ordering::Relaxed);
            shrink_if_sparse(&mut self.entries);
        }
    }
}

/// Gives memory back once a shard is mostly empty: a storm's peak does not stay
/// allocated. Halving at a quarter full keeps this amortised O(1).
fn shrink_if_sparse<V>(entries: &mut HashTable<([u8; 16], V)>) {
    const KEEP: usize = 16;
    if entries.capacity() > KEEP && entries.len() * 4 < entries.capacity() {
        let keep = (entries.len() * 2).max(KEEP);
        entries.shrink_to(keep, |(key, _)| hash(key));
    }
}

impl<V> std::fmt::Debug for PeerTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("shards", &self.shards.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerKeying;

    fn key(n: u32) -> PeerKey {
        PeerKeying::default().key(std::net::Ipv4Addr::from_bits(n).into())
    }

    fn insert(table: &PeerTable<u32>, n: u32) -> Result<(), Full> {
        table.lock(&Located::new(&key(n))).insert(n)
    }

    fn remove(table: &PeerTable<u32>, n: u32) {
        table.lock(&Located::new(&key(n))).remove();
    }

    fn allocated(table: &PeerTable<u32>) -> usize {
        table
            .shards
            .iter()
            .map(|shard| shard.entries.lock().unwrap().capacity())
            .sum()
    }

    #[test]
    fn the_capacity_is_a_hard_bound() {
        let table = PeerTable::<u32>::new(64);
        let inserted = (0..10_000).filter(|n| insert(&table, *n).is_ok()).count();
        assert!(inserted <= table.capacity(), "{inserted}");
        assert_eq!(table.len(), inserted);
        // Shares are filled evenly enough that little capacity is lost.
        assert!(inserted >= table.capacity() * 9 / 10, "{inserted}");
    }

    /// What `Overflow` says of a sharded table: a key is refused when its own shard holds
    /// its share, though the table holds less than its capacity; with keys spread at
    /// random, the first one comes at about two thirds of the capacity with shares of 64
    /// keys. (Before two fifths, or after nine tenths, once in tens of millions of runs.)
    #[test]
    fn a_key_is_refused_when_its_shard_is_full_from_about_two_thirds_of_the_capacity() {
        // 128 shards of 64 keys on any machine with two threads or more; 64 of 128 on one.
        let table = PeerTable::<u32>::new(128 * 64);
        let capacity = table.capacity();
        let first_refused = (0..=capacity as u32)
            .find(|n| insert(&table, *n).is_err())
            .expect("never more than the capacity");
        let its_shard = table.shard(&Located::new(&key(first_refused)));
        assert_eq!(its_shard.len.load(Ordering::Relaxed), table.shard_capacity);
        let held = table.len();
        assert_eq!(held, first_refused as usize);
        assert!(
            held > capacity * 2 / 5 && held < capacity * 9 / 10,
            "the first key refused came after {held} of {capacity}"
        );
    }

    #[test]
    fn a_one_key_table_holds_one_key() {
        let table = PeerTable::<u32>::new(1);
        insert(&table, 1).unwrap();
        assert!(insert(&table, 2).is_err());
        remove(&table, 1);
        insert(&table, 2).unwrap();
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_full_shard_evicts_the_entry_worth_least_and_never_one_worth_nothing() {
        let table = PeerTable::<u32>::new(1);
        // Odd values are worth nothing: never evicted.
        let worth = |value: &u32| value.is_multiple_of(2).then_some(*value);
        insert(&table, 1).unwrap();
        let mut shard = table.lock(&Located::new(&key(2)));
        assert!(!shard.has_room(worth));
        assert!(shard.insert_evicting(2, worth).is_err());
        drop(shard);

        remove(&table, 1);
        insert(&table, 4).unwrap();
        let mut shard = table.lock(&Located::new(&key(2)));
        assert!(shard.has_room(worth));
        shard.insert_evicting(2, worth).unwrap();
        drop(shard);
        assert!(table.contains(&Located::new(&key(2))));
        assert!(!table.contains(&Located::new(&key(4))));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn memory_returns_to_baseline_after_a_storm() {
        let table = PeerTable::<u32>::new(1 << 20);
        let baseline = allocated(&table);
        for n in 0..50_000 {
            insert(&table, n).unwrap();
        }
        assert!(allocated(&table) >= 50_000);
        for n in 0..50_000 {
            remove(&table, n);
        }
        assert_eq!(table.len(), 0);
        let left = allocated(&table);
        assert!(
            left <= baseline + 32 * table.shards.len(),
            "{left} slots left"
        );
    }

    #[cfg(feature = "admin")]
    #[test]
    fn top_keeps_the_highest_ranked_highest_first_and_leaves_out_the_unranked() {
        let table = PeerTable::<u32>::new(1024);
        for n in 0..500 {
            insert(&table, n).unwrap();
        }
        // Multiples of 7 are unranked; the rest rank by value modulo 100, so ranks tie.
        let rank = |value: &u32| (!value.is_multiple_of(7)).then_some(value % 100);
        let top = table.top(3, rank);
        let ranks: Vec<u32> = top.iter().map(|(_, rank)| *rank).collect();
        assert_eq!(ranks, [99, 99, 99]);
        // Of the five values ranked 99 (99, 199, ..., 499), the three lowest keys.
        let keys: Vec<[u8; 16]> = top.iter().map(|(key, _)| *key).collect();
        let mut expected: Vec<[u8; 16]> = [99, 199, 299, 399, 499]
            .iter()
            .map(|n| key(*n).bits())
            .collect();
        expected.sort();
        assert_eq!(keys, expected[..3]);

        let all = table.top(1000, rank);
        assert_eq!(all.len(), 500 - 500usize.div_ceil(7));
        assert!(all.windows(2).all(|pair| pair[0].1 >= pair[1].1));
        assert!(table.top(0, rank).is_empty());
        assert_eq!(
            table.count(|value| value.is_multiple_of(7)),
            500usize.div_ceil(7)
        );
    }

    #[test]
    fn retain_drops_entries_and_their_count() {
        let table = PeerTable::<u32>::new(100);
        for n in 0..10 {
            insert(&table, n).unwrap();
        }
        table.retain(|value| value % 2 == 0);
        assert_eq!(table.len(), 5);
        assert!(table.contains(&Located::new(&key(4))));
        assert!(!table.contains(&Located::new(&key(5))));
    }
}
