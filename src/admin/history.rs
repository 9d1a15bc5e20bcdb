//! The recent past the dashboard's chart shows on load: the totals sampled every
//! second by a task, the last ten minutes of them kept in a ring.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{extract::State, http::StatusCode, response::Response};
use serde_json::json;
use tokio::time::Instant;

use super::{Shared, figures::Totals, json};

/// How often the sampler reads the totals.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How many samples are kept: ten minutes' worth.
const KEPT: usize = 600;

#[derive(Debug)]
pub(super) struct History {
    started: Instant,
    samples: Mutex<VecDeque<(Instant, Totals)>>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            samples: Mutex::new(VecDeque::with_capacity(KEPT)),
        }
    }
}

impl History {
    pub(super) fn push(&self, totals: Totals) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back((Instant::now(), totals));
    }

    pub(super) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A copy of the samples, oldest first.
    fn samples(&self) -> Vec<(Instant, Totals)> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().copied().collect()
    }
}

/// `GET /stats/history`: each sample's age, its live connections, bans in force and
/// pressure, and the refusals and evictions since the sample before it (the oldest kept
/// has none before it, and is left out).
pub(super) async fn history(State(shared): State<Arc<Shared>>) -> Response {
    shared.ensure_sampler();
    let now = Instant::now();
    let samples = shared.history.samples();
    let points: Vec<_> = samples
        .windows(2)
        .map(|pair| {
            let ((_, before), (at, totals)) = (pair[0], pair[1]);
            json!({
                "age_seconds": now.duration_since(at).as_secs_f64(),
                "live": totals.live,
                "refused": totals.refused.saturating_sub(before.refused),
                "evicted": totals.evicted.saturating_sub(before.evicted),
                "banned": totals.banned,
                "pressure": totals.pressure,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "interval_seconds": SAMPLE_EVERY.as_secs_f64(),
            "samples": points,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(refused: u64) -> Totals {
        Totals {
            live: Some(1),
            refused,
            dry_run_refusals: 0,
            evicted: 0,
            banned: None,
            pressure: None,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_samples_only() {
        let history = History::default();
        for n in 0..(KEPT as u64 + 50) {
            history.push(totals(n));
        }
        let samples = history.samples();
        assert_eq!(samples.len(), KEPT);
        assert_eq!(samples[0].1.refused, 50);
        assert_eq!(samples[KEPT - 1].1.refused, KEPT as u64 + 49);
    }
}
