use governor::{
    nanos::Nanos,
    state::{StateStore, keyed::ShrinkableKeyedStateStore},
};

use std::{cell::Cell, sync::Arc};

use crate::peer::{
    cells::{CellTable, Fit},
    table::Located,
};

thread_local! {
    /// Whether the last peer this thread asked about found no room in the table, and
    /// was decided on as a new peer but not stored.
    static UNTRACKED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the peer of this thread's last check found no room in the table (and so was
/// not tracked); cleared for the next check. Told this way, not by a look at the table
/// before the check, so that a check looks the peer up once.
pub(super) fn take_untracked() -> bool {
    UNTRACKED.replace(false)
}

/// governor's keyed state in a bounded peer table: each peer's theoretical arrival time.
#[derive(Debug)]
pub(super) struct RateStore {
    pub(super) table: Arc<CellTable>,
    /// The limiter's start, from the clock's origin: the table's words are from the
    /// origin, governor's from its limiter's start.
    pub(super) start: u64,
}

impl StateStore for RateStore {
    type Key = Located;

    fn measure_and_replace<T, F, E>(&self, at: &Located, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let changed = self.table.change(at, |arrival| {
            let arrival = arrival.map(|arrival| Nanos::from(arrival.saturating_sub(self.start)));
            let (outcome, next) = decide(arrival)?;
            Ok((outcome, Some(next.as_u64().saturating_add(self.start))))
        })?;
        if changed.fit == Fit::NoRoom {
            // Full: the layer applies its overflow policy to this peer.
            UNTRACKED.set(true);
        }
        Ok(changed.outcome)
    }
}

/// What governor's `retain_recent` uses to forget peers whose bucket has refilled: for
/// the limiter, such a peer is the same as one never seen.
impl ShrinkableKeyedStateStore<Located> for RateStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64().saturating_add(self.start);
        self.table.retain(|arrival| arrival >= drop_below);
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn is_empty(&self) -> bool {
        self.table.len() == 0
    }
}
