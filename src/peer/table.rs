//! A bounded, sharded table keyed by peer, shared by the keyed layers.
//!
//! Connections from different peers lock different shards, so they do not serialise on
//! one lock. The number of keys is capped; a shard shrinks when it empties, so memory
//! returns to its baseline after a storm.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::PeerKey;

/// The table's own key: a [`PeerKey`] without its prefix, which every key of one family
/// shares in a table.
pub(crate) type Bits = [u8; 16];

/// What a full table does with a peer it is not tracking yet.
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

impl<V> std::fmt::Debug for PeerTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("shards", &self.shards.len())
            .finish()
    }
}

pub(crate) struct PeerTable<V> {
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
    capacity: usize,
    len: AtomicUsize,
}

/// One shard, on its own cache line so that neighbours do not false-share.
#[repr(align(64))]
struct Shard<V>(Mutex<HashMap<Bits, V, RandomState>>);

/// A locked shard.
pub(crate) struct Locked<'a, V> {
    map: MutexGuard<'a, HashMap<Bits, V, RandomState>>,
    len: &'a AtomicUsize,
    capacity: usize,
}

/// The table has no room for another key.
#[derive(Debug)]
pub(crate) struct Full;

impl<V> PeerTable<V> {
    /// A table that holds at most `capacity` keys.
    pub(crate) fn new(capacity: usize) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, usize::from);
        let shard_count = (parallelism * 4).next_power_of_two().clamp(4, 256);
        let hasher = RandomState::new();
        let shards = (0..shard_count)
            .map(|_| Shard(Mutex::new(HashMap::with_hasher(hasher.clone()))))
            .collect();
        Self {
            shards,
            hasher,
            capacity,
            len: AtomicUsize::new(0),
        }
    }

    /// How many keys are tracked.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether `key` is tracked.
    pub(crate) fn contains(&self, key: &PeerKey) -> bool {
        let (mut shard, bits) = self.lock(key);
        shard.get_mut(&bits).is_some()
    }

    /// Locks the shard that holds `key`.
    pub(crate) fn lock(&self, key: &PeerKey) -> (Locked<'_, V>, Bits) {
        let bits = key.bits();
        // The low bits pick the shard; the map itself hashes again, which costs a few
        // nanoseconds and keeps this free of unsafe raw-entry tricks.
        let index = self.hasher.hash_one(bits) as usize & (self.shards.len() - 1);
        (self.lock_shard(index), bits)
    }

    fn lock_shard(&self, index: usize) -> Locked<'_, V> {
        Locked {
            map: self.shards[index]
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            len: &self.len,
            capacity: self.capacity,
        }
    }

    /// Removes every entry for which `keep` is false, shard by shard.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for index in 0..self.shards.len() {
            self.lock_shard(index).retain(&mut keep);
        }
    }
}

impl<V> Locked<'_, V> {
    pub(crate) fn get_mut(&mut self, bits: &Bits) -> Option<&mut V> {
        self.map.get_mut(bits)
    }

    /// Inserts a key the shard does not hold yet, if the table has room.
    pub(crate) fn insert_new(&mut self, bits: Bits, value: V) -> Result<(), Full> {
        debug_assert!(!self.map.contains_key(&bits));
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return Err(Full);
        }
        self.map.insert(bits, value);
        Ok(())
    }

    pub(crate) fn remove(&mut self, bits: &Bits) {
        if self.map.remove(bits).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.shrink_if_sparse();
        }
    }

    pub(crate) fn retain(&mut self, keep: &mut impl FnMut(&V) -> bool) {
        let before = self.map.len();
        self.map.retain(|_, value| keep(value));
        self.len
            .fetch_sub(before - self.map.len(), Ordering::Relaxed);
        self.shrink_if_sparse();
    }

    /// Gives memory back once a shard is mostly empty: a storm's peak does not stay
    /// allocated. Halving at a quarter full keeps this amortised O(1).
    fn shrink_if_sparse(&mut self) {
        const KEEP: usize = 16;
        if self.map.capacity() > KEEP && self.map.len() * 4 < self.map.capacity() {
            let keep = (self.map.len() * 2).max(KEEP);
            self.map.shrink_to(keep);
        }
    }
}

#[cfg(test)]
impl<V> PeerTable<V> {
    /// Bytes the shards' maps have allocated, by their capacities.
    pub(crate) fn allocated_slots(&self) -> usize {
        (0..self.shards.len())
            .map(|index| self.lock_shard(index).map.capacity())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerKeying;

    fn key(n: u32) -> PeerKey {
        PeerKeying::default().key(std::net::Ipv4Addr::from_bits(n).into())
    }

    #[test]
    fn the_capacity_is_a_hard_bound() {
        let table = PeerTable::<u32>::new(3);
        for n in 0..3 {
            let (mut shard, bits) = table.lock(&key(n));
            shard.insert_new(bits, 1).unwrap();
        }
        assert_eq!(table.len(), table.capacity());
        let (mut shard, bits) = table.lock(&key(3));
        assert!(shard.insert_new(bits, 1).is_err());
        drop(shard);
        assert_eq!(table.len(), 3);

        let (mut shard, bits) = table.lock(&key(0));
        shard.remove(&bits);
        drop(shard);
        let (mut shard, bits) = table.lock(&key(3));
        shard.insert_new(bits, 1).unwrap();
    }

    #[test]
    fn memory_returns_to_baseline_after_a_storm() {
        let table = PeerTable::<u32>::new(1 << 20);
        let baseline = table.allocated_slots();
        for n in 0..50_000 {
            let (mut shard, bits) = table.lock(&key(n));
            shard.insert_new(bits, 1).unwrap();
        }
        assert!(table.allocated_slots() >= 50_000);
        for n in 0..50_000 {
            let (mut shard, bits) = table.lock(&key(n));
            shard.remove(&bits);
        }
        assert_eq!(table.len(), 0);
        let left = table.allocated_slots();
        assert!(
            left <= baseline + 32 * table.shards.len(),
            "{left} slots left"
        );
    }

    #[test]
    fn retain_drops_entries_and_their_count() {
        let table = PeerTable::<u32>::new(100);
        for n in 0..10 {
            let (mut shard, bits) = table.lock(&key(n));
            shard.insert_new(bits, n).unwrap();
        }
        table.retain(|value| value % 2 == 0);
        assert_eq!(table.len(), 5);
    }
}
