//! A bounded table keyed by peer whose values are single words, changed in place with
//! no lock on the way: the tables every connection writes (the rate limit's arrival
//! times, the per-peer limit's counts, the login's live connections). A word may carry
//! a payload set when its key is stored (the live connections' ban notice).
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
//!   comes or goes), and a new key that finds it full is not stored. A table whose idle
//!   keys wait for a sweep can [make way](CellTable::make_way) for a new one at once.
//! - **Memory back after a storm.** The index does not shrink by itself. A sweep that
//!   leaves it holding an eighth of its peak moves what is left into a new index, with
//!   every change held back meanwhile: each thread stripe has a gate, which a change
//!   passes as a reader (a line only its stripe writes) and a move closes.

use std::{
    hash::{BuildHasher, Hash, Hasher},
    sync::{
        Arc, PoisonError, RwLock, RwLockReadGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
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

type Index<P> = papaya::HashMap<Key, Cell<P>, OneWord>;

/// A key's word, and what was stored with it.
struct Cell<P> {
    word: AtomicU64,
    payload: P,
}

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

/// What a change decided, and what it found.
#[derive(Debug)]
pub(crate) struct Changed<T, P> {
    pub(crate) outcome: T,
    pub(crate) fit: Fit,
    /// The key's payload, if the key is tracked once the change is done.
    pub(crate) payload: Option<P>,
}

/// Whether a change that wanted to store a new key could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Stored, or nothing new to store.
    Stored,
    /// The key was not tracked and the table is full: the change was not stored.
    NoRoom,
}

/// See the [module documentation](self). `P` is stored with each word, made with
/// `P::default()` when its key is stored and handed out by [`change`](Self::change).
pub(crate) struct CellTable<P = ()> {
    /// One per stripe, each holding the index: a change reads its own stripe's.
    gates: Box<[Gate<P>]>,
    count: Count,
    capacity: usize,
    reclaim: Reclaim,
}

#[repr(align(64))]
struct Gate<P>(RwLock<Arc<Index<P>>>);

/// On a line of its own: written when a key comes or goes, never by a change to a
/// tracked key.
#[repr(align(64))]
#[derive(Default)]
struct Count {
    keys: AtomicUsize,
    /// The most keys since the index was last made anew.
    peak: AtomicUsize,
}

impl<P: Default + Clone + Send + Sync + 'static> CellTable<P> {
    /// A table that holds at most `capacity` keys (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        let index = Arc::new(new_index(0));
        Self {
            gates: (0..stripes())
                .map(|_| Gate(RwLock::new(index.clone())))
                .collect(),
            count: Count::default(),
            capacity: capacity.max(1),
            reclaim: Reclaim::default(),
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
    ) -> Result<Changed<T, P>, E> {
        let gate = self.index();
        let index = &**gate;
        let guard = index.guard();
        let lookup = Lookup(at);
        loop {
            if let Some(cell) = index.get(&lookup, &guard) {
                let word = &cell.word;
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
                return Ok(Changed {
                    outcome,
                    fit: Fit::Stored,
                    payload: Some(cell.payload.clone()),
                });
            }
            let (outcome, next) = decide(None)?;
            let Some(next) = next.map(below_dead) else {
                return Ok(Changed {
                    outcome,
                    fit: Fit::Stored,
                    payload: None,
                });
            };
            if !self.make_room() {
                return Ok(Changed {
                    outcome,
                    fit: Fit::NoRoom,
                    payload: None,
                });
            }
            let cell = Cell {
                word: AtomicU64::new(next),
                payload: P::default(),
            };
            let Ok(cell) = index.try_insert(Key(*at.bits()), cell, &guard) else {
                // Another thread stored it first: decide again on its word.
                self.count.keys.fetch_sub(1, Ordering::Relaxed);
                continue;
            };
            return Ok(Changed {
                outcome,
                fit: Fit::Stored,
                payload: Some(cell.payload.clone()),
            });
        }
    }

    /// Takes `at` out if its word is still `word` (as [`change`](Self::change) stored
    /// it): undoes a change that stored `at` as a new key, unless another has changed it
    /// since. Whether it took `at` out.
    pub(crate) fn remove_if_still(&self, at: &Located, word: u64) -> bool {
        let gate = self.index();
        let index = &**gate;
        let guard = index.guard();
        let lookup = Lookup(at);
        let Some(cell) = index.get(&lookup, &guard) else {
            return false;
        };
        let marked_dead = cell
            .word
            .compare_exchange(below_dead(word), DEAD, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if marked_dead {
            self.take_out(index, &lookup, &guard);
        }
        marked_dead
    }

    /// [`change`](Self::change); and if a new key found the table full, once more after
    /// the keys `idle` says yes to have [made way](Self::make_way), when that is due.
    pub(crate) fn change_or_make_way<T, E>(
        &self,
        at: &Located,
        idle: impl Fn(u64) -> bool,
        mut decide: impl FnMut(Option<u64>) -> Result<(T, Option<u64>), E>,
    ) -> Result<Changed<T, P>, E> {
        let changed = self.change(at, &mut decide)?;
        if changed.fit == Fit::NoRoom && self.make_way(idle) {
            return self.change(at, decide);
        }
        Ok(changed)
    }

    /// Takes out the keys `idle` says yes to, as a sweep would, when a new key found the
    /// table full; whether that made room. A sweep walks the whole table, so one that
    /// took out little is not repeated until the table has turned away an eighth of its
    /// capacity: a table full of keys in use costs each key turned away a share of one
    /// walk, not a walk.
    fn make_way(&self, idle: impl Fn(u64) -> bool) -> bool {
        let reclaim = &self.reclaim;
        let turned_away = reclaim.turned_away.fetch_add(1, Ordering::Relaxed) + 1;
        let worth = self.capacity.div_ceil(8);
        if !reclaim.paid_off.load(Ordering::Relaxed) && turned_away < worth
            || reclaim.busy.swap(true, Ordering::Acquire)
        {
            return false;
        }
        let before = self.len();
        self.retain(|word| !idle(word));
        let taken_out = before.saturating_sub(self.len());
        reclaim
            .paid_off
            .store(taken_out >= worth, Ordering::Relaxed);
        reclaim.turned_away.store(0, Ordering::Relaxed);
        reclaim.busy.store(false, Ordering::Release);
        taken_out > 0
    }

    /// The index, through this thread's stripe's gate: held open while the guard lives.
    fn index(&self) -> RwLockReadGuard<'_, Arc<Index<P>>> {
        self.gates[local_stripe()]
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
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
    fn take_out<Q>(&self, index: &Index<P>, key: &Q, guard: &impl Guard)
    where
        Q: Equivalent<Key> + Hash + ?Sized,
    {
        let dead = |_: &Key, cell: &Cell<P>| cell.word.load(Ordering::Acquire) == DEAD;
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
            let gate = self.index();
            let index = &**gate;
            let guard = index.guard();
            for (key, cell) in index.iter(&guard) {
                let word = &cell.word;
                let mut current = word.load(Ordering::Acquire);
                while current != DEAD && !keep(current) {
                    match word.compare_exchange(current, DEAD, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            self.take_out(index, key, &guard);
                            break;
                        }
                        Err(now) => current = now,
                    }
                }
            }
        }
        self.shrink_if_sparse();
    }

    /// Changes every word as `rewrite` says, stored as at most `u64::MAX - 1`: for a
    /// change of what the words mean (the rate they are measured against). A change to
    /// a key while the walk looks at it is made before the rewrite or on the rewritten
    /// word, never lost.
    pub(crate) fn rewrite(&self, rewrite: impl Fn(u64) -> u64) {
        let gate = self.index();
        let index = &**gate;
        let guard = index.guard();
        for (_, cell) in index.iter(&guard) {
            let _ = cell
                .word
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                    (word != DEAD).then(|| below_dead(rewrite(word)))
                });
        }
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
        for (key, cell) in old.iter(&old_guard) {
            let word = cell.word.load(Ordering::Relaxed);
            if word != DEAD {
                let moved = Cell {
                    word: AtomicU64::new(word),
                    payload: cell.payload.clone(),
                };
                new.insert(*key, moved, &new_guard);
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
        let gate = self.index();
        let guard = gate.guard();
        let mut best = super::table::Best::new(n);
        for (key, cell) in gate.iter(&guard) {
            let word = cell.word.load(Ordering::Relaxed);
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

fn new_index<P: Send + Sync + 'static>(capacity: usize) -> Index<P> {
    papaya::HashMap::builder()
        .hasher(OneWord)
        .capacity(capacity)
        .build()
}

/// Whether [`CellTable::make_way`] is due.
#[derive(Debug)]
struct Reclaim {
    /// Held by the thread that sweeps.
    busy: AtomicBool,
    /// Whether the last sweep took out an eighth of the capacity or more.
    paid_off: AtomicBool,
    /// New keys turned away since the last sweep.
    turned_away: AtomicUsize,
}

impl Default for Reclaim {
    fn default() -> Self {
        Self {
            busy: AtomicBool::new(false),
            paid_off: AtomicBool::new(true),
            turned_away: AtomicUsize::new(0),
        }
    }
}

impl<P> std::fmt::Debug for CellTable<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellTable")
            .field("len", &self.count.keys.load(Ordering::Relaxed))
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
    fn add<P: Default + Clone + Send + Sync + 'static>(
        table: &CellTable<P>,
        n: u32,
        by: i64,
    ) -> (Option<u64>, Fit) {
        let Ok(changed) = table.change(&at(n), |word| {
            let next = word
                .unwrap_or(0)
                .checked_add_signed(by)
                .expect("no word below 0");
            Ok::<_, Infallible>((word, Some(next)))
        });
        (changed.outcome, changed.fit)
    }

    fn word<P: Default + Clone + Send + Sync + 'static>(
        table: &CellTable<P>,
        n: u32,
    ) -> Option<u64> {
        let Ok(changed) = table.change(&at(n), |word| Ok::<_, Infallible>((word, None)));
        changed.outcome
    }

    fn index(table: &CellTable) -> Arc<Index<()>> {
        table.gates[0].0.read().unwrap().clone()
    }

    #[test]
    fn words_change_in_place_and_a_new_key_is_stored_only_if_asked() {
        let table = CellTable::<()>::new(10);
        assert_eq!(word(&table, 1), None);
        assert_eq!(table.len(), 0, "a look stores nothing");
        assert_eq!(add(&table, 1, 5), (None, Fit::Stored));
        assert_eq!(add(&table, 1, -2), (Some(5), Fit::Stored));
        assert_eq!(word(&table, 1), Some(3));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_key_is_removed_only_while_its_word_is_the_one_given() {
        let table = CellTable::<()>::new(10);
        add(&table, 1, 5);
        assert!(!table.remove_if_still(&at(1), 4));
        assert!(!table.remove_if_still(&at(2), 5), "not tracked");
        assert_eq!(table.len(), 1);
        assert!(table.remove_if_still(&at(1), 5));
        assert_eq!((word(&table, 1), table.len()), (None, 0));
    }

    #[test]
    fn a_rewrite_changes_every_word_and_no_key() {
        let table = CellTable::<()>::new(10);
        add(&table, 1, 5);
        add(&table, 2, 7);
        table.rewrite(|word| word * 10);
        assert_eq!((word(&table, 1), word(&table, 2)), (Some(50), Some(70)));
        table.rewrite(|_| DEAD);
        assert_eq!((word(&table, 1), table.len()), (Some(DEAD - 1), 2));
    }

    #[test]
    fn a_payload_is_made_with_its_key_kept_with_it_and_handed_out_while_tracked() {
        let table = CellTable::<Arc<u8>>::new(100_000);
        let Ok(first) = table.change(&at(1), |_| Ok::<_, Infallible>(((), Some(1))));
        let Ok(again) = table.change(&at(1), |_| Ok::<_, Infallible>(((), Some(2))));
        let payload = again.payload.unwrap();
        assert!(Arc::ptr_eq(&first.payload.unwrap(), &payload));
        let Ok(absent) = table.change(&at(2), |_| Ok::<_, Infallible>(((), None)));
        assert!(absent.payload.is_none());

        // Through a shrink, the payload moves with its word.
        for n in 10..10 + LEAST_PEAK_TO_SHRINK as u32 {
            add(&table, n, 1);
        }
        table.retain(|word| word == 2);
        assert_eq!(table.len(), 1);
        let Ok(moved) = table.change(&at(1), |word| Ok::<_, Infallible>((word, None)));
        assert_eq!(moved.outcome, Some(2));
        assert!(Arc::ptr_eq(&moved.payload.unwrap(), &payload));

        // Swept out and stored again: a new payload.
        table.retain(|_| false);
        let Ok(new) = table.change(&at(1), |_| Ok::<_, Infallible>(((), Some(1))));
        assert!(!Arc::ptr_eq(&new.payload.unwrap(), &payload));
    }

    #[test]
    fn a_word_at_the_top_of_its_range_stays_tracked() {
        let table = CellTable::<()>::new(10);
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
        let table = CellTable::<()>::new(3);
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
        let table = CellTable::<()>::new(100_000);
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
        let table = CellTable::<()>::new(1_000_000);
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
        let table = CellTable::<()>::new(100);
        for n in 0..10 {
            add(&table, n, i64::from(n));
        }
        let top = table.top(3, |word| (word % 2 == 1).then_some(word));
        let ranks: Vec<u64> = top.iter().map(|(_, rank)| *rank).collect();
        assert_eq!(ranks, [9, 7, 5]);
        assert_eq!(top[0].0, *at(9).bits());
    }

    #[test]
    fn a_table_full_of_keys_in_use_makes_way_again_only_after_an_eighth_is_turned_away() {
        let table = CellTable::<()>::new(16);
        for n in 0..16 {
            add(&table, n, 1);
        }
        let idle = |word| word == 0;
        // The first full table is swept at once, and nothing is idle.
        assert!(!table.make_way(idle));
        // A key goes idle; the sweep that found nothing waits for 2 turned away.
        add(&table, 0, -1);
        assert!(!table.make_way(idle));
        assert_eq!(table.len(), 16, "not swept yet");
        assert!(table.make_way(idle));
        assert_eq!(table.len(), 15);
    }
}
