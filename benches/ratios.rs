//! The in-process figures of BENCHMARKS.md: each against a baseline measured in this
//! same run, in interleaved rounds (baseline, candidate, baseline, ...), reported as the
//! median of the rounds, so that a noisy neighbour slows both sides alike.
//!
//! ```text
//! cargo bench --bench ratios            # 11 rounds
//! cargo bench --bench ratios -- --quick # 5 rounds
//! ```

mod support;

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, ReadBuf},
    time::Sleep,
};
use tower_bouncer::timeout::TimeoutLayer;

use support::*;

/// Connections per round for the admission figures.
const CONNECTIONS: u64 = 200_000;
/// Read events per round for the per-read figures.
const READ_EVENTS: u64 = 2_000_000;
const IDLE: Duration = Duration::from_secs(60);

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs every case once per round, `rounds` times, and returns each case's median.
fn interleaved<const N: usize>(rounds: usize, mut cases: [&mut dyn FnMut() -> f64; N]) -> [f64; N] {
    let mut results: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(rounds));
    for _ in 0..rounds {
        for (case, result) in cases.iter_mut().zip(results.iter_mut()) {
            result.push(case());
        }
    }
    results.map(median)
}

fn per_op(elapsed: Duration, ops: u64) -> f64 {
    elapsed.as_secs_f64() * 1e9 / ops as f64
}

/// The obvious idle timeout: a `Sleep` pushed back on every read.
struct ResetEveryRead<R> {
    inner: R,
    sleep: Pin<Box<Sleep>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for ResetEveryRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(outcome) => {
                this.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE);
                Poll::Ready(outcome)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// [`bulk_transfer`]'s throughput, in bytes per second.
fn throughput<R: AsyncRead + Unpin>(
    runtime: &tokio::runtime::Runtime,
    wrap: impl FnOnce(tokio::io::DuplexStream) -> R,
) -> f64 {
    let began = Instant::now();
    runtime.block_on(bulk_transfer(wrap));
    BULK as f64 / began.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 5 } else { 11 };
    println!("{rounds} interleaved rounds; medians.\n");
    println!("| what | baseline | baseline | with the crate | figure | target | met |");
    println!("|---|---|---|---|---|---|---|");

    // The admission hot path: every admission layer stacked, per connection.
    let mut bare = inner();
    let mut stacked = all_admission(inner());
    let [bare_one, stacked_one] = interleaved(
        rounds,
        [
            &mut || per_op(run(&mut bare, 0, CONNECTIONS), CONNECTIONS),
            &mut || per_op(run(&mut stacked, 0, CONNECTIONS), CONNECTIONS),
        ],
    );
    let overhead_one = stacked_one - bare_one;
    println!(
        "| admission, all layers stacked, 1 thread | no layer | {bare_one:.0} ns | {stacked_one:.0} ns | +{overhead_one:.0} ns per connection | ≤ 300 ns | {} |",
        yes(overhead_one <= 300.0)
    );
    let bare = inner();
    let stacked = all_admission(inner());
    let [bare_two, stacked_two] = interleaved(
        rounds,
        [
            &mut || per_op(run_two(&bare, CONNECTIONS), CONNECTIONS),
            &mut || per_op(run_two(&stacked, CONNECTIONS), CONNECTIONS),
        ],
    );
    let overhead_two = stacked_two - bare_two;
    println!(
        "| admission, all layers stacked, 2 threads, distinct peers | no layer | {bare_two:.0} ns | {stacked_two:.0} ns | +{overhead_two:.0} ns per connection ({:.2}× one thread's) | ≤ 2× one thread's | {} |",
        overhead_two / overhead_one,
        yes(overhead_two <= 2.0 * overhead_one)
    );

    // The idle-timeout wrapper, per read event.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _context = runtime.enter();
    let idle = TimeoutLayer::builder().idle(IDLE).build().unwrap();
    let mut raw = Alternating::default();
    let mut timed_reader = timed(Alternating::default(), &idle);
    let mut reset = ResetEveryRead {
        inner: Alternating::default(),
        sleep: Box::pin(tokio::time::sleep(IDLE)),
    };
    let mut crate_reader = tokio_io_timeout::TimeoutReader::new(Alternating::default());
    crate_reader.set_timeout(Some(IDLE));
    let mut crate_reader = Box::pin(crate_reader);
    let [raw_read, timed_read, reset_read, crate_read] = interleaved(
        rounds,
        [
            &mut || per_op(read_events(&mut raw, READ_EVENTS), READ_EVENTS),
            &mut || per_op(read_events(&mut timed_reader, READ_EVENTS), READ_EVENTS),
            &mut || per_op(read_events(&mut reset, READ_EVENTS), READ_EVENTS),
            &mut || per_op(read_events(&mut crate_reader, READ_EVENTS), READ_EVENTS),
        ],
    );
    let timed_over = (timed_read - raw_read).max(0.0);
    let crate_over = crate_read - raw_read;
    println!(
        "| idle timeout, per read event | raw stream | {raw_read:.1} ns | {timed_read:.1} ns | +{timed_over:.1} ns | ≤ 40 ns over raw | {} |",
        yes(timed_over <= 40.0)
    );
    // A floor of 0.1 ns keeps the ratio finite when the difference is below the noise.
    let cheaper = crate_over / timed_over.max(0.1);
    println!(
        "| idle timeout, per read event | tokio-io-timeout | +{crate_over:.1} ns over raw | +{timed_over:.1} ns over raw | {cheaper:.0}× cheaper (a Sleep reset per read: +{:.1} ns) | ≥ 10× cheaper | {} |",
        reset_read - raw_read,
        yes(cheaper >= 10.0)
    );

    // Bulk transfer through the stream wrapper.
    let bulk_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let [raw_bulk, timed_bulk] = interleaved(
        rounds,
        [&mut || throughput(&bulk_runtime, |io| io), &mut || {
            throughput(&bulk_runtime, |io| timed(io, &idle))
        }],
    );
    let ratio = timed_bulk / raw_bulk;
    println!(
        "| bulk transfer, 64 MiB | raw stream | {:.2} GiB/s | {:.2} GiB/s | {ratio:.3}× | ≥ 0.98× | {} |",
        raw_bulk / f64::from(1 << 30),
        timed_bulk / f64::from(1 << 30),
        yes(ratio >= 0.98)
    );
}

fn yes(met: bool) -> &'static str {
    if met { "yes" } else { "no" }
}
