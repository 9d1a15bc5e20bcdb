//! The background sweep that keeps a self-cleaning table small.
//!
//! A sweep is a task on the tokio runtime of a connection that needs it. The first such
//! connection may come before any runtime exists, and a layer may outlive the runtime
//! its sweep ran on (one runtime per test, a runtime rebuilt after a restart), so a
//! sweep is started whenever none is alive, not once.
//!
//! A runtime built without timers (no `enable_time`) cannot run a sweep, and tokio has
//! no way to ask whether the current runtime has them short of the panic its timers
//! raise there. So the sweep's timer is made before its task is spawned, under
//! `catch_unwind`: on such a runtime that panics once (the panic hook prints tokio's
//! message, which says to call `enable_time`), the janitor then counts its sweep as
//! alive for good, and no sweep runs, on that runtime or any later one. Built with
//! `panic = "abort"`, the process aborts at that panic instead.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// Runs a sweep over its owner's state every period, on the current runtime.
#[derive(Debug, Default)]
pub(crate) struct Janitor {
    /// Set while a sweep task exists; the task clears it when it ends or is dropped.
    alive: Arc<AtomicBool>,
}

impl Janitor {
    /// Makes sure a task calls `sweep` on `owner` every `every`, starting one on the
    /// current runtime if none is alive (none is started outside a runtime, nor ever
    /// again once a runtime without timers was found). The task holds `owner` weakly
    /// and ends once it is dropped. While one is alive, this costs one relaxed load.
    pub(crate) fn ensure<T>(&self, owner: &Arc<T>, every: Duration, sweep: fn(&T))
    where
        T: Send + Sync + 'static,
    {
        if !self.alive.load(Ordering::Relaxed) {
            self.start(owner, every, sweep);
        }
    }

    #[cold]
    fn start<T>(&self, owner: &Arc<T>, every: Duration, sweep: fn(&T))
    where
        T: Send + Sync + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.alive.swap(true, Ordering::Relaxed) {
            return;
        }
        // Made here rather than in the task, which would panic on a runtime without
        // timers, and leave the next connection to spawn another: the flag stays set.
        let Ok(mut ticks) = std::panic::catch_unwind(|| tokio::time::interval(every)) else {
            return;
        };
        // Taken only now: a weak reference writes a count every thread shares.
        let owner: Weak<T> = Arc::downgrade(owner);
        let alive = Alive(self.alive.clone());
        runtime.spawn(async move {
            let _alive = alive;
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(owner) = owner.upgrade() else {
                    return;
                };
                sweep(&owner);
            }
        });
    }
}

/// Clears the janitor's flag when its task ends, or is dropped with its runtime.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const EVERY: Duration = Duration::from_secs(10);
    /// Half a period past the `n`th sweep, so the count never depends on which of two
    /// timers due at once runs first.
    fn past_sweep(n: u32) -> Duration {
        EVERY * n + EVERY / 2
    }

    #[derive(Default)]
    struct Swept(AtomicUsize);

    fn sweep(swept: &Swept) {
        swept.0.fetch_add(1, Ordering::Relaxed);
    }

    fn sweeps(swept: &Swept) -> usize {
        swept.0.load(Ordering::Relaxed)
    }

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_call_outside_a_runtime_leaves_the_next_one_to_start_the_sweep() {
        let (janitor, swept) = (Janitor::default(), Arc::new(Swept::default()));
        janitor.ensure(&swept, EVERY, sweep);
        paused_runtime().block_on(async {
            janitor.ensure(&swept, EVERY, sweep);
            tokio::time::sleep(past_sweep(3)).await;
        });
        assert_eq!(sweeps(&swept), 3);
    }

    #[test]
    fn the_sweep_starts_again_on_the_next_runtime_when_its_own_ends() {
        let (janitor, swept) = (Janitor::default(), Arc::new(Swept::default()));
        paused_runtime().block_on(async { janitor.ensure(&swept, EVERY, sweep) });
        paused_runtime().block_on(async {
            janitor.ensure(&swept, EVERY, sweep);
            tokio::time::sleep(past_sweep(3)).await;
        });
        assert_eq!(sweeps(&swept), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn one_sweep_at_a_time_and_it_ends_with_its_owner() {
        let (janitor, swept) = (Janitor::default(), Arc::new(Swept::default()));
        for _ in 0..3 {
            janitor.ensure(&swept, EVERY, sweep);
        }
        tokio::time::sleep(past_sweep(2)).await;
        assert_eq!(sweeps(&swept), 2);
        drop(swept);
        tokio::time::sleep(EVERY).await;
        assert!(!janitor.alive.load(Ordering::Relaxed));
    }
}
