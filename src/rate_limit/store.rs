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
    /// What this thread's last check did to its peer's word.
    static WRITTEN: Cell<Written> = const { Cell::new(Written::Nothing) };
}

/// What a check did to its peer's word in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// Nothing: no check, or one that refused the connection.
    Nothing,
    /// The peer found no room in the table: it was decided on as a new peer but not
    /// stored.
    Untracked,
    /// The word `after` was stored over `before`, or as a new key if `before` is `None`:
    /// what a connection refused afterwards gives back.
    Stored { before: Option<u64>, after: u64 },
}

/// What this thread's last check did to the table; cleared for the next check. Told
/// this way, not by a look at the table before or after the check, so that a check
/// looks the peer up once.
pub(super) fn take_written() -> Written {
    WRITTEN.replace(Written::Nothing)
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
        let mut written = Written::Nothing;
        let changed = self.table.change(at, |before| {
            let arrival = before.map(|arrival| Nanos::from(arrival.saturating_sub(self.start)));
            let (outcome, next) = decide(arrival)?;
            let after = next.as_u64().saturating_add(self.start);
            written = Written::Stored { before, after };
            Ok((outcome, Some(after)))
        })?;
        WRITTEN.set(match changed.fit {
            // Full: the layer applies its overflow policy to this peer.
            Fit::NoRoom => Written::Untracked,
            Fit::Stored => written,
        });
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
