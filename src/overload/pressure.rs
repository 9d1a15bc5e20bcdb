//! Where the load comes from between the live connection count: descriptors, memory and
//! the user's monitors, sampled once per period; and the scaled trigger that turns the
//! load into pressure.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use super::Monitor;

/// Envoy's scaled trigger.
#[derive(Debug, Clone, Copy)]
pub(super) struct Trigger {
    pub(super) start: f64,
    pub(super) full: f64,
}

impl Trigger {
    /// 0 below `start`, rising linearly to 1 at `full`.
    pub(super) fn pressure(&self, load: f64) -> f64 {
        ((load - self.start) / (self.full - self.start)).clamp(0.0, 1.0)
    }
}

/// A load not known: the source is off or could not be read.
const UNKNOWN: u64 = u64::MAX;

/// What the sampler last read.
pub(super) struct Sampled {
    descriptors: bool,
    memory: Option<CgroupMemory>,
    monitors: Vec<Monitor>,
    /// Open descriptors at the last sample that were not the cap's connections
    /// (listeners, files, refused connections not yet closed).
    other_descriptors: AtomicU64,
    /// The soft descriptor limit at the last sample; 0 if not known.
    descriptor_limit: AtomicU64,
    /// The bits of an `f64` load, or [`UNKNOWN`].
    memory_load: AtomicU64,
    monitor_load: AtomicU64,
}

impl Sampled {
    pub(super) fn new(descriptors: bool, cgroup_memory: bool, monitors: Vec<Monitor>) -> Self {
        Self {
            descriptors,
            memory: cgroup_memory.then(CgroupMemory::find).flatten(),
            monitors,
            other_descriptors: AtomicU64::new(0),
            descriptor_limit: AtomicU64::new(0),
            memory_load: AtomicU64::new(UNKNOWN),
            monitor_load: AtomicU64::new(UNKNOWN),
        }
    }

    /// Reads every source; `live` is the cap's live connection count, if there is a cap.
    pub(super) fn sample(&self, live: Option<usize>) {
        if self.descriptors {
            let (other, limit) = match (open_descriptors(), descriptor_limit()) {
                (Some(open), Some(limit)) => (open.saturating_sub(live.unwrap_or(0) as u64), limit),
                _ => (0, 0),
            };
            self.other_descriptors.store(other, Ordering::Relaxed);
            self.descriptor_limit.store(limit, Ordering::Relaxed);
        }
        if let Some(memory) = &self.memory {
            let load = memory.load().map_or(UNKNOWN, f64::to_bits);
            self.memory_load.store(load, Ordering::Relaxed);
        }
        if !self.monitors.is_empty() {
            let load = self
                .monitors
                .iter()
                .map(|monitor| sanitize(monitor()))
                .fold(0.0, f64::max);
            self.monitor_load.store(load.to_bits(), Ordering::Relaxed);
        }
    }

    /// The descriptors' load with `live` connections: those sampled that were not
    /// connections, and one for each live connection.
    pub(super) fn descriptors(&self, live: usize) -> Option<f64> {
        let limit = self.descriptor_limit.load(Ordering::Relaxed);
        (limit > 0).then(|| {
            let open = self.other_descriptors.load(Ordering::Relaxed) + live as u64;
            open as f64 / limit as f64
        })
    }

    pub(super) fn memory(&self) -> Option<f64> {
        known(self.memory_load.load(Ordering::Relaxed))
    }

    pub(super) fn monitors(&self) -> Option<f64> {
        known(self.monitor_load.load(Ordering::Relaxed))
    }

    /// The fewest live connections with which the sampled sources may reach `level`
    /// (0: they have already; `usize::MAX`: none can), rounded down so that no count
    /// that reaches it is above.
    pub(super) fn live_reaching(&self, level: f64) -> usize {
        if self.sampled_load() >= level {
            return 0;
        }
        let limit = self.descriptor_limit.load(Ordering::Relaxed);
        if limit == 0 {
            return usize::MAX;
        }
        let other = self.other_descriptors.load(Ordering::Relaxed);
        let open = (level * limit as f64).floor() as u64;
        usize::try_from(open.saturating_sub(other)).unwrap_or(usize::MAX)
    }

    /// The highest sampled load but the descriptors', which follow the live count.
    pub(super) fn sampled_load(&self) -> f64 {
        let memory = self.memory().unwrap_or(0.0);
        memory.max(self.monitors().unwrap_or(0.0))
    }
}

impl std::fmt::Debug for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampled")
            .field("descriptors", &self.descriptors)
            .field("memory", &self.memory)
            .field("monitors", &self.monitors.len())
            .finish_non_exhaustive()
    }
}

fn known(bits: u64) -> Option<f64> {
    (bits != UNKNOWN).then(|| f64::from_bits(bits))
}

/// A load within 0..1; NaN is 0.
fn sanitize(load: f64) -> f64 {
    if load.is_nan() {
        0.0
    } else {
        load.clamp(0.0, 1.0)
    }
}

/// The process's open descriptors, counted in `/proc/self/fd` (Linux), the one the count
/// opens aside.
fn open_descriptors() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some((entries.count() as u64).saturating_sub(1))
}

/// The soft limit on open descriptors, if there is one.
fn descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (soft, _) = rlimit::Resource::NOFILE.get().ok()?;
        (soft != rlimit::INFINITY).then_some(soft)
    }
    #[cfg(not(unix))]
    None
}

/// The process's cgroup v2 memory files.
#[derive(Debug)]
struct CgroupMemory {
    current: PathBuf,
    max: PathBuf,
}

impl CgroupMemory {
    /// The files of the cgroup the process is in, as `/proc/self/cgroup` names it (`0::`
    /// and a path under `/sys/fs/cgroup`), if they exist.
    fn find() -> Option<Self> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
        let dir = PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        let memory = Self {
            current: dir.join("memory.current"),
            max: dir.join("memory.max"),
        };
        memory.current.exists().then_some(memory)
    }

    /// `memory.current` against `memory.max`; `None` without a limit (`max`).
    fn load(&self) -> Option<f64> {
        let read =
            |path| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
        let max = read(&self.max).filter(|max| *max > 0)?;
        Some(sanitize(read(&self.current)? as f64 / max as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaled_trigger_is_zero_below_start_and_linear_to_full() {
        let trigger = Trigger {
            start: 0.5,
            full: 0.9,
        };
        assert_eq!(trigger.pressure(0.0), 0.0);
        assert_eq!(trigger.pressure(0.5), 0.0);
        assert!((trigger.pressure(0.7) - 0.5).abs() < 1e-9);
        assert_eq!(trigger.pressure(0.9), 1.0);
        assert_eq!(trigger.pressure(1.2), 1.0);
    }

    #[test]
    fn descriptors_follow_the_live_connections_between_samples() {
        let sampled = Sampled::new(true, false, Vec::new());
        sampled.sample(Some(0));
        let Some(before) = sampled.descriptors(0) else {
            // No /proc or no limit here: nothing to follow.
            return;
        };
        let limit = sampled.descriptor_limit.load(Ordering::Relaxed) as f64;
        let after = sampled.descriptors(100).unwrap();
        assert!((after - before - 100.0 / limit).abs() < 1e-9);
    }

    #[test]
    fn monitors_are_clamped_and_the_highest_counts() {
        let monitors: Vec<Monitor> = vec![
            std::sync::Arc::new(|| 0.3),
            std::sync::Arc::new(|| f64::NAN),
            std::sync::Arc::new(|| 7.0),
        ];
        let sampled = Sampled::new(false, false, monitors);
        assert_eq!(sampled.monitors(), None);
        sampled.sample(None);
        assert_eq!(sampled.monitors(), Some(1.0));
        assert_eq!(sampled.sampled_load(), 1.0);
        assert_eq!(sampled.descriptors(10), None);
    }

    #[test]
    fn the_live_count_reaching_a_level_is_the_least_that_does() {
        // Nothing sampled can reach it.
        assert_eq!(
            Sampled::new(false, false, Vec::new()).live_reaching(0.4),
            usize::MAX
        );
        // A monitor has reached it: any count does.
        let busy = Sampled::new(false, false, vec![std::sync::Arc::new(|| 0.5) as Monitor]);
        busy.sample(None);
        assert_eq!(busy.live_reaching(0.4), 0);
        assert_eq!(busy.live_reaching(0.6), usize::MAX);
        // The descriptors: 130 of 1 000 open besides the connections.
        let sampled = Sampled::new(false, false, Vec::new());
        sampled.other_descriptors.store(130, Ordering::Relaxed);
        sampled.descriptor_limit.store(1000, Ordering::Relaxed);
        for level in [0.3, 0.4, 0.45, 0.7] {
            let from = sampled.live_reaching(level);
            assert!(sampled.descriptors(from).unwrap() >= level, "{level}");
            assert!(sampled.descriptors(from - 1).unwrap() < level, "{level}");
        }
        assert_eq!(sampled.live_reaching(0.1), 0, "reached with none");
    }
}
