//! What the timeout layer's stream wrapper costs.
//!
//! - **per read event**: a stream that alternates "not ready" and "64 bytes ready", as a
//!   socket does, read through nothing, through `TimedIo` (byte counts per read, the
//!   timer left alone), through a wrapper that resets a `Sleep` on every read (the
//!   obvious design), and through `tokio-io-timeout` (the crate people reach for);
//! - **bulk transfer**: 64 MiB through an in-memory pipe, read raw and through
//!   `TimedIo`.
//!
//! ```text
//! cargo bench --bench timeout
//! ```

mod support;

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::{
    io::{AsyncRead, ReadBuf},
    runtime::Runtime,
    time::{Instant, Sleep},
};
use tower_bouncer::timeout::TimeoutLayer;

use support::{Alternating, BULK, bulk_transfer, read_events, timed};

const IDLE: Duration = Duration::from_secs(60);

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
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(outcome) => {
                this.sleep.as_mut().reset(Instant::now() + IDLE);
                Poll::Ready(outcome)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

fn per_read(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let _context = runtime.enter();
    let idle = TimeoutLayer::builder().idle(IDLE).build().unwrap();

    let mut group = c.benchmark_group("per read event");
    group.bench_function("raw stream", |b| {
        let mut reader = Alternating::default();
        b.iter_custom(|events| read_events(&mut reader, events));
    });
    group.bench_function("TimedIo (lazy deadline)", |b| {
        let mut reader = timed(Alternating::default(), &idle);
        b.iter_custom(|events| read_events(&mut reader, events));
    });
    group.bench_function("Sleep::reset on every read", |b| {
        let mut reader = ResetEveryRead {
            inner: Alternating::default(),
            sleep: Box::pin(tokio::time::sleep(IDLE)),
        };
        b.iter_custom(|events| read_events(&mut reader, events));
    });
    group.bench_function("tokio-io-timeout", |b| {
        let mut reader = tokio_io_timeout::TimeoutReader::new(Alternating::default());
        reader.set_timeout(Some(IDLE));
        let mut reader = Box::pin(reader);
        b.iter_custom(|events| read_events(&mut reader, events));
    });
    group.finish();
}

fn bulk(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let idle = {
        let _context = runtime.enter();
        Arc::new(TimeoutLayer::builder().idle(IDLE).build().unwrap())
    };
    let mut group = c.benchmark_group("bulk transfer, 64 MiB");
    group.throughput(Throughput::Bytes(BULK as u64));
    group.sample_size(20);
    group.bench_function("raw stream", |b| {
        b.iter(|| runtime.block_on(bulk_transfer(|io| io)));
    });
    group.bench_function("TimedIo", |b| {
        b.iter(|| {
            let idle = idle.clone();
            runtime.block_on(bulk_transfer(move |io| timed(io, &idle)))
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = per_read, bulk
}
criterion_main!(benches);
