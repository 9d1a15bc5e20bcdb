//! A bounded table keyed by peer whose values are single words, changed in place with
//! no lock on the way: the tables every connection writes (the rate limit's arrival
//! times, the per-peer limit's counts).
//!
//! A [`PeerTable`](super::table::PeerTable) locks a shard to read or write a key, so two
//! threads admitting different peers still write the same lock and bucket lines, and
//! each connection waits for a line the other core wrote last: on two threads, that was
//! most of what admission cost beyond one thread's. Here a lookup only reads the index
//! (papaya's lock-free map), and each entry is an allocation of its own, written only by
//! the threads that admit its peer.
//!
//! - **Removal in two steps.** A sweep marks a word dead, so that no change lands on it
//!   after the sweep decided, then takes it out. A change that meets a dead word helps
//!   take it out and looks again.
//! - **An exact capacity.** The table counts its keys (a line written only when a key
//!   comes or goes), and a new key that finds it full is not stored.
//! - **Memory back after a storm.** The index does not shrink by itself. A sweep that
//!   leaves it holding an eighth of its peak moves what is left into a new index, with
//!   every change held back meanwhile: each thread stripe has a gate, which a change
//!   passes as a reader (a line only its stripe writes) and a move closes.

use std::{
    hash::{BuildHasher, Hash, Hasher},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use papaya::{Equivalent, Guard};

use super::table::{Located, hash};
use crate::striped::{local_stripe, stripes};

/// A word no value takes (a value is stored as at most one less): its key is being
/// taken out.
const DEAD: u64 = u64::MAX;

/// The fewest keys an index must have held before a sweep moves what is left into a
/// smaller one: below this, the memory it would give back is not worth a pause.
const LEAST_PEAK_TO_SHRINK: usize = 4096;

type Index = papaya::HashMap<Key, AtomicU64, OneWord>;

/// A stored key: hashed, when the index grows, as [`Located`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key([u8; 16]);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(hash(&self.0));
    }
}

/// A lookup by a key hashed already, once per connection.
struct Lookup<'a>(&'a Located);

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash());
    }
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0.bits() == &key.0
    }
}

/// Passes on the one word a [`Key`] or a [`Lookup`] hashes to: the keyed hash of
/// [`Located`].
#[derive(Debug, Clone, Copy, Default)]
struct OneWord;

impl BuildHasher for OneWord {
    type Hasher = WordHasher;

    fn build_hasher(&self) -> WordHasher {
        WordHasher(0)
    }
}

struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Keys and lookups write one word; this only keeps the hasher total.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

/// Whether a change that wanted to store a new key could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Stored, or nothing new to store.
    Stored,
    /// The key was not tracked and the table is full: the change was not stored.
    NoRoom,
}

pub(crate) struct CellTable {
    /// One per stripe, each holding the index: a change reads its own stripe's.
    gates: Box<[Gate]>,
    count: Count,
    capacity: usize,
}

#[repr(align(64))]
struct Gate(RwLock<Arc<Index>>);

/// On a line of its own: written when a key comes or goes, never by a change to a
/// tracked key.
#[repr(align(64))]
#[derive(Default)]
struct Count {
    keys: AtomicUsize,
    /// The most keys since the index was last made anew.
    peak: AtomicUsize,
}

impl CellTable {
    /// A table that holds at most `capacity` keys (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        let index = Arc::new(new_index(0));
        Self {
            gates: (0..stripes())
                .map(|_| Gate(RwLock::new(index.clone())))
                .collect(),
            count: Count::default(),
            capacity: capacity.max(1),
        }
    }

    /// How many keys are tracked.
    pub(crate) fn len(&self) -> usize {
        self.count.keys.load(Ordering::Relaxed)
    }

    /// The most keys the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes `at`'s word as `decide` says: it is given the word (`None` if `at` is not
    /// tracked) and answers with an outcome and the word to store, if any, stored as at
    /// most `u64::MAX - 1` (a saturated arrival time, say). If another thread changes
    /// the word meanwhile, `decide` is asked again with the new one.
    pub(crate) fn change<T, E>(
        &self,
        at: &Located,
        mut decide: impl FnMut(Option<u64>) -> Result<(T, Option<u64>), E>,
    ) -> Result<(T, Fit), E> {
        let gate = self.gates[local_stripe()]
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let index = &**gate;
        let guard = index.guard();
        let lookup = Lookup(at);
        loop {
            if let Some(word) = index.get(&lookup, &guard) {
                let current = word.load(Ordering::Acquire);
                if current == DEAD {
                    self.take_out(index, &lookup, &guard);
                    continue;
                }
                let (outcome, next) = decide(Some(current))?;
                if let Some(next) = next.map(below_dead)
                    && next != current
                    && word
                        .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                {
                    continue;
                }
                return Ok((outcome, Fit::Stored));
            }
            let (outcome, next) = decide(None)?;
            let Some(next) = next.map(below_dead) else {
                return Ok((outcome, Fit::Stored));
            };
            if !self.make_room() {
                return Ok((outcome, Fit::NoRoom));
            }
            if index
                .try_insert(Key(*at.bits()), AtomicU64::new(next), &guard)
                .is_err()
            {
                // Another thread stored it first: decide again on its word.
                self.count.keys.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            return Ok((outcome, Fit::Stored));
        }
    }

    /// Counts one more key if the table has room for it.
    fn make_room(&self) -> bool {
        let keys = self.count.keys.fetch_add(1, Ordering::Relaxed) + 1;
        if keys > self.capacity {
            self.count.keys.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        if keys > self.count.peak.load(Ordering::Relaxed) {
            self.count.peak.fetch_max(keys, Ordering::Relaxed);
        }
        true
    }

    /// Takes out a key whose word is dead, and uncounts it if this call did.
    fn take_out<Q>(&self, index: &Index, key: &Q, guard: &impl Guard)
    where
        Q: Equivalent<Key> + Hash + ?Sized,
    {
        let dead = |_: &Key, word: &AtomicU64| word.load(Ordering::Acquire) == DEAD;
        if let Ok(Some(_)) = index.remove_if(key, dead, guard) {
            self.count.keys.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Removes every key whose word `keep` says no to. A change to a key while the sweep
    /// looks at it is decided on before the key goes, or after it has gone (as a new
    /// key), never lost. Then, if the index holds an eighth of its peak, moves what is
    /// left into a new one.
    pub(crate) fn retain(&self, mut keep: impl FnMut(u64) -> bool) {
        {
            let gate = self.gates[local_stripe()]
                .0
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let index = &**gate;
            let guard = index.guard();
            for (key, word) in index.iter(&guard) {
                let mut current = word.load(Ordering::Acquire);
                while current != DEAD && !keep(current) {
                    match word.compare_exchange(current, DEAD, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => self.take_out(index, key, &guard),
                        Err(now) => current = now,
                    }
                }
            }
        }
        self.shrink_if_sparse();
    }

    fn shrink_if_sparse(&self) {
        let peak = self.count.peak.load(Ordering::Relaxed);
        if peak < LEAST_PEAK_TO_SHRINK || self.len() > peak / 8 {
            return;
        }
        // Every gate closed, in order, so no change is under way: each reader holds one
        // gate at a time.
        let mut gates: Vec<_> = self
            .gates
            .iter()
            .map(|gate| gate.0.write().unwrap_or_else(PoisonError::into_inner))
            .collect();
        let old = gates[0].clone();
        let new = Arc::new(new_index(self.len()));
        let (old_guard, new_guard) = (old.guard(), new.guard());
        for (key, word) in old.iter(&old_guard) {
            let word = word.load(Ordering::Relaxed);
            if word != DEAD {
                new.insert(*key, AtomicU64::new(word), &new_guard);
            }
        }
        let keys = new.len();
        self.count.keys.store(keys, Ordering::Relaxed);
        self.count.peak.store(keys, Ordering::Relaxed);
        for gate in &mut gates {
            **gate = new.clone();
        }
    }

    /// The `n` keys that `rank` ranks highest, highest first, with their rank; a key
    /// ranked `None` is left out, and ties go to the lower key. Walks the whole index:
    /// O(len · log n), for an operator's page.
    #[cfg(feature = "admin")]
    pub(crate) fn top<R: Ord>(
        &self,
        n: usize,
        rank: impl Fn(u64) -> Option<R>,
    ) -> Vec<([u8; 16], R)> {
        let gate = self.gates[local_stripe()]
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let guard = gate.guard();
        let mut best = super::table::Best::new(n);
        for (key, word) in gate.iter(&guard) {
            let word = word.load(Ordering::Relaxed);
            if let Some(rank) = (word != DEAD).then(|| rank(word)).flatten() {
                best.offer(key.0, rank);
            }
        }
        best.into_vec()
    }
}

fn below_dead(word: u64) -> u64 {
    word.min(DEAD - 1)
}

fn new_index(capacity: usize) -> Index {
    papaya::HashMap::builder()
        .hasher(OneWord)
        .capacity(capacity)
        .build()
}

impl std::fmt::Debug for CellTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, net::Ipv4Addr};

    use super::*;
    use crate::peer::PeerKeying;

    fn at(n: u32) -> Located {
        Located::new(&PeerKeying::default().key(Ipv4Addr::from_bits(n).into()))
    }

    /// Adds `by` to `n`'s word (0 if new); the word it found.
    fn add(table: &CellTable, n: u32, by: i64) -> (Option<u64>, Fit) {
        let Ok(changed) = table.change(&at(n), |word| {
            let next = word
                .unwrap_or(0)
                .checked_add_signed(by)
                .expect("no word below 0");
            Ok::<_, Infallible>((word, Some(next)))
        });
        changed
    }

    fn word(table: &CellTable, n: u32) -> Option<u64> {
        let Ok((word, _)) = table.change(&at(n), |word| Ok::<_, Infallible>((word, None)));
        word
    }

    fn index(table: &CellTable) -> Arc<Index> {
        table.gates[0].0.read().unwrap().clone()
    }

    #[test]
    fn words_change_in_place_and_a_new_key_is_stored_only_if_asked() {
        let table = CellTable::new(10);
        assert_eq!(word(&table, 1), None);
        assert_eq!(table.len(), 0, "a look stores nothing");
        assert_eq!(add(&table, 1, 5), (None, Fit::Stored));
        assert_eq!(add(&table, 1, -2), (Some(5), Fit::Stored));
        assert_eq!(word(&table, 1), Some(3));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_word_at_the_top_of_its_range_stays_tracked() {
        let table = CellTable::new(10);
        let saturate = |table: &CellTable| {
            let Ok(_) = table.change(&at(1), |_| Ok::<_, Infallible>(((), Some(u64::MAX))));
        };
        saturate(&table);
        saturate(&table);
        assert_eq!(word(&table, 1), Some(u64::MAX - 1));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_capacity_is_exact() {
        let table = CellTable::new(3);
        for n in 0..3 {
            assert_eq!(add(&table, n, 1).1, Fit::Stored);
        }
        assert_eq!(add(&table, 3, 1), (None, Fit::NoRoom));
        assert_eq!(word(&table, 3), None);
        assert_eq!(
            add(&table, 0, 1),
            (Some(1), Fit::Stored),
            "a tracked key still changes"
        );
        assert_eq!(table.len(), 3);

        table.retain(|word| word > 1);
        assert_eq!(table.len(), 1);
        assert_eq!(add(&table, 3, 1), (None, Fit::Stored));
        assert_eq!(word(&table, 1), None, "swept");
    }

    #[test]
    fn a_sweep_that_leaves_an_eighth_of_the_peak_moves_the_rest_to_a_new_index() {
        let table = CellTable::new(100_000);
        let peak = LEAST_PEAK_TO_SHRINK as u32 * 2;
        for n in 0..peak {
            add(&table, n, 1);
        }
        for n in 0..peak / 2 {
            add(&table, n, 1);
        }
        add(&table, 0, 6);
        let grown = index(&table);

        // Half left: the index stays.
        table.retain(|word| word >= 2);
        assert_eq!(table.len(), peak as usize / 2);
        assert!(Arc::ptr_eq(&grown, &index(&table)));

        // An eighth or less left: what is left moves, and every gate holds the new index.
        table.retain(|word| word == 8);
        let shrunk = index(&table);
        assert!(!Arc::ptr_eq(&grown, &shrunk));
        assert!(
            table
                .gates
                .iter()
                .all(|gate| Arc::ptr_eq(&gate.0.read().unwrap(), &shrunk))
        );
        assert_eq!(table.len(), 1);
        assert_eq!(word(&table, 0), Some(8));
        assert_eq!(add(&table, 1, 1), (None, Fit::Stored));
        assert_eq!(table.len(), 2);
    }

    /// Threads count connections up and down on shared keys while another sweeps out the
    /// keys at 0 and shrinks the index: no count is lost or doubled.
    #[test]
    fn counts_stay_exact_under_concurrent_sweeps_and_shrinks() {
        const KEYS: u32 = 64;
        const SHRINKS: usize = 20;
        let table = CellTable::new(1_000_000);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..3)
                .map(|worker| {
                    let (table, done) = (&table, &done);
                    scope.spawn(move || {
                        let mut round = 0;
                        while !done.load(Ordering::Relaxed) {
                            let n = (round * 7 + worker) % KEYS;
                            add(table, n, 1);
                            add(table, (n + 1) % KEYS, 1);
                            add(table, n, -1);
                            add(table, (n + 1) % KEYS, -1);
                            round += 1;
                        }
                        add(table, worker, 1);
                    })
                })
                .collect();
            // Whatever happens here, the workers are told to stop.
            struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let stop = Stop(&done);
            let mut shrinks = 0;
            while shrinks < SHRINKS {
                // Filler keys, so that the sweep has a peak to shrink from.
                for n in 0..LEAST_PEAK_TO_SHRINK as u32 {
                    add(&table, 1_000_000 + n, 1_000);
                }
                let before = index(&table);
                table.retain(|word| word != 0 && word != 1_000);
                shrinks += usize::from(!Arc::ptr_eq(&before, &index(&table)));
            }
            drop(stop);
            for worker in workers {
                worker.join().unwrap();
            }
        });
        for n in 0..KEYS {
            let expected = u64::from(n < 3);
            assert_eq!(word(&table, n).unwrap_or(0), expected, "key {n}");
        }
    }

    #[cfg(feature = "admin")]
    #[test]
    fn top_ranks_the_words_and_leaves_out_the_unranked() {
        let table = CellTable::new(100);
        for n in 0..10 {
            add(&table, n, i64::from(n));
        }
        let top = table.top(3, |word| (word % 2 == 1).then_some(word));
        let ranks: Vec<u64> = top.iter().map(|(_, rank)| *rank).collect();
        assert_eq!(ranks, [9, 7, 5]);
        assert_eq!(top[0].0, *at(9).bits());
    }
}
