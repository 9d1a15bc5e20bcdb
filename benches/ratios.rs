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
    future::{Ready, ready},
    net::SocketAddr,
    pin::{Pin, pin},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tower::{Layer, Service, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    limit::ConnectionLimitLayer,
    overload::Overload,
    proxy_protocol::ProxyProtocolLayer,
    timeout::{TimedIo, TimeoutLayer},
};

use support::*;

/// Connections per round for the admission figures.
const CONNECTIONS: u64 = 200_000;
/// Read events per round for the per-read figures.
const READ_EVENTS: u64 = 2_000_000;
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

/// A connection's protocol that reads until its stream is pending, forever: each poll
/// is one wake-up of the connection's task, with one read event (a ready read, then a
/// pending one).
struct ReadLoop<R>(R);

impl<R: AsyncRead + Unpin> Future for ReadLoop<R> {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut storage = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut storage);
            match Pin::new(&mut self.0).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    std::hint::black_box(buf.filled().len());
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Polls `future` `events` times, as a task woken `events` times, each time for one
/// read event.
fn wakeups<F: Future>(mut future: Pin<&mut F>, events: u64) -> Duration {
    let mut cx = Context::from_waker(Waker::noop());
    let began = Instant::now();
    for _ in 0..events {
        assert!(future.as_mut().poll(&mut cx).is_pending());
    }
    began.elapsed()
}

/// A PROXY v2 header as a balancer sends it: TCP over IPv4, client 192.0.2.7:40000,
/// front end 198.51.100.1:443, no TLV.
const V2_HEADER: &[u8] = &[
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
    0x21, 0x11, 0x00, 0x0C, // v2 PROXY, TCP over IPv4, 12 bytes
    192, 0, 2, 7, 198, 51, 100, 1, 0x9C, 0x40, 0x01, 0xBB,
];

/// An in-memory stream that reads its bytes at once, then ends; writes are dropped.
struct Preloaded(&'static [u8]);

impl AsyncRead for Preloaded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let given = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..given]);
        self.0 = &self.0[given..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Preloaded {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The protocol, over any stream: done as soon as it starts.
fn done_over<IO>(_: Conn<IO>) -> Ready<Result<(), BoxError>> {
    ready(Ok(()))
}

/// Runs `iterations` connections from a balancer, each stream holding `bytes`,
/// through `service`, as [`support::run`] does; returns the time it took.
fn run_preloaded<S>(service: &mut S, bytes: &'static [u8], iterations: u64) -> Duration
where
    S: Service<Conn<Preloaded>, Response = ()>,
    S::Error: std::fmt::Debug,
{
    let balancer: SocketAddr = "10.0.0.2:50000".parse().unwrap();
    let local: SocketAddr = "10.0.0.9:8443".parse().unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let began = Instant::now();
    for _ in std::hint::black_box(0..iterations) {
        assert!(service.poll_ready(&mut cx).is_ready());
        let conn = Conn::new(Preloaded(bytes), balancer, local);
        let connection = pin!(service.call(conn));
        match connection.poll(&mut cx) {
            Poll::Ready(outcome) => outcome.unwrap(),
            Poll::Pending => unreachable!("the header is read at once"),
        }
    }
    began.elapsed()
}

/// Runs `iterations` connections through `service` as [`support::run`] does, each
/// carrying the [`GracefulClose`] the accept loop gives it; returns the time it took.
fn run_served<S>(service: &mut S, iterations: u64) -> Duration
where
    S: Service<Conn<Io>, Response = ()>,
    S::Error: std::fmt::Debug,
{
    let local: SocketAddr = "127.0.0.1:80".parse().unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let began = Instant::now();
    for n in std::hint::black_box(0..iterations) {
        assert!(service.poll_ready(&mut cx).is_ready());
        let mut conn = Conn::new(tokio::io::empty(), peer(0, n as u32), local);
        conn.graceful_close();
        let connection = pin!(service.call(conn));
        match connection.poll(&mut cx) {
            Poll::Ready(outcome) => outcome.unwrap(),
            Poll::Pending => unreachable!("the inner service finishes at once"),
        }
    }
    began.elapsed()
}

/// The total cap (of a million) over the timeouts (idle only), with `overload` or
/// without, over a protocol done at once.
fn cap_and_timeouts(
    overload: Option<&Overload>,
) -> impl Service<Conn<Io>, Response = (), Error = BoxError> {
    let mut cap = ConnectionLimitLayer::builder(1_000_000);
    let mut timeouts = TimeoutLayer::builder().idle(IDLE);
    if let Some(overload) = overload {
        cap = cap.overload(overload);
        timeouts = timeouts.overload(overload);
    }
    tower::ServiceBuilder::new()
        .layer(cap.build().unwrap())
        .layer(timeouts.build().unwrap())
        .service(service_fn(done_over::<TimedIo<Io>>))
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

    // The admission hot path: every admission layer stacked, per connection, on one
    // thread, on two, and on every thread the machine has, each thread with its own
    // peers. In a runtime's context, as in a server, where the layers' sweeps run: the
    // runtime is never driven, and its tasks never run.
    let server = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server_context = server.enter();
    let every_thread = std::thread::available_parallelism().map_or(1, usize::from);
    let mut thread_counts = vec![1, 2];
    if every_thread > 2 {
        thread_counts.push(every_thread.min(usize::from(u8::MAX)));
    }
    // Every thread count in the same rounds: in each round, one thread (bare, stacked),
    // then each wider count (bare, stacked, and the control: the same stack built on
    // each thread, sharing nothing, which shows what the machine gives threads running
    // at once). A wider count's ratio to one thread is the median of its per-round
    // ratios, each of figures taken side by side, so that the machine's phase moves
    // numerator and denominator alike. Per thread count: its threads, its bare and
    // stacked services, and per round its figures in ns: bare, stacked and (wider counts
    // only) the control.
    let cases: Vec<_> = thread_counts
        .iter()
        .map(|&threads| (threads as u8, inner(), all_admission(inner())))
        .collect();
    let mut figures: Vec<[Vec<f64>; 3]> = cases
        .iter()
        .map(|_| std::array::from_fn(|_| Vec::with_capacity(rounds)))
        .collect();
    for _ in 0..rounds {
        for ((workers, bare, stacked), figures) in cases.iter().zip(&mut figures) {
            let workers = *workers;
            figures[0].push(per_op(run_threads(bare, workers, CONNECTIONS), CONNECTIONS));
            figures[1].push(per_op(
                run_threads(stacked, workers, CONNECTIONS),
                CONNECTIONS,
            ));
            if workers > 1 {
                let apart = run_threads_each(workers, CONNECTIONS, || all_admission(inner()));
                figures[2].push(per_op(apart, CONNECTIONS));
            }
        }
    }
    let one = &figures[0];
    let one_overhead: Vec<f64> = one[1].iter().zip(&one[0]).map(|(s, b)| s - b).collect();
    for (&(threads, _, _), [bare, stacked, apart]) in cases.iter().zip(&figures) {
        let (bare_ns, stacked_ns) = (median(bare.clone()), median(stacked.clone()));
        let overhead = stacked_ns - bare_ns;
        if threads == 1 {
            println!(
                "| admission, all layers stacked, 1 thread | no layer | {bare_ns:.0} ns | {stacked_ns:.0} ns | +{overhead:.0} ns per connection | ≤ 215 ns | {} |",
                yes(overhead <= 215.0)
            );
            continue;
        }
        // Per round: this count's overhead, and the control's, over one thread's.
        let per_round = |over: &Vec<f64>| {
            median(
                over.iter()
                    .zip(bare)
                    .zip(&one_overhead)
                    .map(|((over, bare), one)| (over - bare) / one)
                    .collect(),
            )
        };
        let (ratio, apart) = (per_round(stacked), per_round(apart));
        let (target, met) = if threads == 2 {
            ("≤ 1.3× one thread's", yes(ratio <= 1.3))
        } else {
            ("reported", "—")
        };
        println!(
            "| admission, all layers stacked, {threads} threads at once, distinct peers | no layer | {bare_ns:.0} ns | {stacked_ns:.0} ns | +{overhead:.0} ns per connection and thread ({ratio:.2}× one thread's, median of the rounds' ratios; a stack on each thread, sharing nothing: {apart:.2}×) | {target} | {met} |"
        );
    }

    drop(server_context);

    // The overload manager at zero pressure: the cap alone, then the cap and the
    // timeouts, which look up the connection's close signal to evict it later. On a
    // runtime, as in a server: its sampler is a task there, never run here.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let context = runtime.enter();
    let overload = Overload::builder().build().unwrap();
    let mut plain = limit().layer(inner());
    let mut managed = ConnectionLimitLayer::builder(1_000_000)
        .overload(&overload)
        .build()
        .unwrap()
        .layer(inner());
    let [plain_cap, managed_cap] = interleaved(
        rounds,
        [
            &mut || per_op(run(&mut plain, 0, CONNECTIONS), CONNECTIONS),
            &mut || per_op(run(&mut managed, 0, CONNECTIONS), CONNECTIONS),
        ],
    );
    let cap_over = managed_cap - plain_cap;
    println!(
        "| admission, total cap, overload manager at zero pressure | the cap alone | {plain_cap:.0} ns | {managed_cap:.0} ns | {cap_over:+.1} ns per connection | ≤ 20 ns | {} |",
        yes(cap_over <= 20.0)
    );
    let overload = Overload::builder().build().unwrap();
    let mut plain = cap_and_timeouts(None);
    let mut managed = cap_and_timeouts(Some(&overload));
    let [plain_stack, managed_stack] = interleaved(
        rounds,
        [
            &mut || per_op(run_served(&mut plain, CONNECTIONS), CONNECTIONS),
            &mut || per_op(run_served(&mut managed, CONNECTIONS), CONNECTIONS),
        ],
    );
    let stack_over = managed_stack - plain_stack;
    println!(
        "| admission and timeouts, overload manager at zero pressure | the same without it | {plain_stack:.0} ns | {managed_stack:.0} ns | {stack_over:+.1} ns per connection | ≤ 20 ns | {} |",
        yes(stack_over <= 20.0)
    );
    assert_eq!(overload.pressure(), 0.0, "measured at zero pressure");
    drop(context);

    // The PROXY layer on a balancer's connection: the v2 header read, the peer
    // rewritten, the inner service called.
    let mut bare = service_fn(done_over::<Preloaded>);
    let mut proxied = ProxyProtocolLayer::builder()
        .trusted(["10.0.0.0/24".parse().unwrap()])
        .build()
        .unwrap()
        .layer(service_fn(done_over));
    let [bare_conn, proxied_conn] = interleaved(
        rounds,
        [
            &mut || per_op(run_preloaded(&mut bare, &[], CONNECTIONS), CONNECTIONS),
            &mut || {
                per_op(
                    run_preloaded(&mut proxied, V2_HEADER, CONNECTIONS),
                    CONNECTIONS,
                )
            },
        ],
    );
    let proxy_over = proxied_conn - bare_conn;
    println!(
        "| PROXY v2 header read and rewrite, per connection | no layer | {bare_conn:.0} ns | {proxied_conn:.0} ns | +{proxy_over:.0} ns per connection | ≤ 300 ns | {} |",
        yes(proxy_over <= 300.0)
    );

    // The idle timeout, per read event, each side as a connection's task drives it: a
    // protocol reading until pending, polled once a wake-up. The crate's side is the
    // timeout layer's future around that protocol on its `TimedIo`, as a server polls
    // it: that future is what enforces the timeout (it marks the connection polling,
    // polls the protocol, and looks at the timer), `TimedIo` only counts the bytes.
    // tokio-io-timeout's `TimeoutReader` enforces its timeout inside each read.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _context = runtime.enter();
    let idle = TimeoutLayer::builder().idle(IDLE).build().unwrap();
    let mut raw = Box::pin(ReadLoop(Alternating::default()));
    let mut service = idle.layer(service_fn(|conn: Conn<TimedIo<Alternating>>| {
        ReadLoop(conn.into_io())
    }));
    let conn = Conn::new(
        Alternating::default(),
        "192.0.2.1:1".parse().unwrap(),
        "127.0.0.1:80".parse().unwrap(),
    );
    let mut timed_connection = Box::pin(service.call(conn));
    let mut reset = Box::pin(ReadLoop(ResetEveryRead {
        inner: Alternating::default(),
        sleep: Box::pin(tokio::time::sleep(IDLE)),
    }));
    let mut crate_reader = tokio_io_timeout::TimeoutReader::new(Alternating::default());
    crate_reader.set_timeout(Some(IDLE));
    let mut crate_reader = Box::pin(ReadLoop(Box::pin(crate_reader)));
    let [raw_read, timed_read, reset_read, crate_read] = interleaved(
        rounds,
        [
            &mut || per_op(wakeups(raw.as_mut(), READ_EVENTS), READ_EVENTS),
            &mut || per_op(wakeups(timed_connection.as_mut(), READ_EVENTS), READ_EVENTS),
            &mut || per_op(wakeups(reset.as_mut(), READ_EVENTS), READ_EVENTS),
            &mut || per_op(wakeups(crate_reader.as_mut(), READ_EVENTS), READ_EVENTS),
        ],
    );
    let timed_over = (timed_read - raw_read).max(0.0);
    let crate_over = crate_read - raw_read;
    println!(
        "| idle timeout, per read event (one wake-up each), the layer's future and its stream | raw stream | {raw_read:.1} ns | {timed_read:.1} ns | +{timed_over:.1} ns | ≤ 40 ns over raw | {} |",
        yes(timed_over <= 40.0)
    );
    // A floor of 0.1 ns keeps the ratio finite when the difference is below the noise.
    let cheaper = crate_over / timed_over.max(0.1);
    println!(
        "| idle timeout, per read event (one wake-up each) | tokio-io-timeout | +{crate_over:.1} ns over raw | +{timed_over:.1} ns over raw | {cheaper:.0}× cheaper (a Sleep reset per read: +{:.1} ns) | ≥ 10× cheaper | {} |",
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
