use governor::{
    nanos::Nanos,
    state::{StateStore, keyed::ShrinkableKeyedStateStore},
};

use std::sync::Arc;

use crate::peer::table::{Located, PeerTable};

/// governor's keyed state in a bounded peer table: each peer's theoretical arrival time.
#[derive(Debug)]
pub(super) struct RateStore {
    pub(super) table: Arc<PeerTable<Nanos>>,
}

impl StateStore for RateStore {
    type Key = Located;

    fn measure_and_replace<T, F, E>(&self, at: &Located, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self.table.lock(at);
        if let Some(arrival) = shard.get_mut() {
            let (outcome, next) = decide(Some(*arrival))?;
            *arrival = next;
            return Ok(outcome);
        }
        let (outcome, next) = decide(None)?;
        // Full: the layer has applied its overflow policy before asking, so a peer that
        // gets this far is let through untracked.
        shard.insert(next).ok();
        Ok(outcome)
    }
}

/// What governor's `retain_recent` uses to forget peers whose bucket has refilled: for
/// the limiter, such a peer is the same as one never seen.
impl ShrinkableKeyedStateStore<Located> for RateStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.table.retain(|arrival| *arrival >= drop_below);
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn is_empty(&self) -> bool {
        self.table.len() == 0
    }
}
