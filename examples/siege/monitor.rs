//! What a server process uses, sampled from /proc while an attack runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

/// One sample of the server.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub at: Duration,
    pub descriptors: usize,
}

/// What the server (and its proxy, if any) used over an attack.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub series: Vec<Point>,
    pub peak_descriptors: usize,
    /// The server's peak resident memory (VmHWM), in KiB.
    pub peak_rss_kib: u64,
    /// CPU time of the server and its proxy together.
    pub cpu: Duration,
}

pub struct Monitor {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Usage>,
}

/// Samples the processes `pids` (a server, and its proxy if any) every 50 ms from now:
/// their descriptors, peak memory and CPU, added up.
pub fn start(pids: Vec<u32>, began: Instant) -> Monitor {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let task = tokio::spawn(async move {
        let cpu_before: Duration = pids.iter().map(|pid| cpu_time(*pid)).sum();
        let mut usage = Usage::default();
        // Bounded: at most ten minutes of samples.
        for _ in 0..12_000 {
            let descriptors = pids.iter().map(|pid| descriptors(*pid)).sum();
            usage.peak_descriptors = usage.peak_descriptors.max(descriptors);
            usage.series.push(Point {
                at: began.elapsed(),
                descriptors,
            });
            if stopping.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        usage.peak_rss_kib = pids.iter().map(|pid| peak_rss_kib(*pid)).sum();
        let cpu_after: Duration = pids.iter().map(|pid| cpu_time(*pid)).sum();
        usage.cpu = cpu_after.saturating_sub(cpu_before);
        usage
    });
    Monitor { stop, task }
}

impl Monitor {
    pub async fn finish(self) -> Usage {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// User and system CPU time of `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|ticks| ticks.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
