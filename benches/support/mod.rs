//! What the benchmarks share: a connection service that finishes at once, peers, a
//! stream that behaves like a socket, and the stream a timeout layer hands its protocol.

// Each benchmark compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::{
    future::{Ready, ready},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::{Pin, pin},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower::{Layer, Service, ServiceBuilder, service_fn, util::ServiceFn};
use tower_bouncer::{
    BoxError, Conn,
    limit::ConnectionLimitLayer,
    login::Login,
    peer_limit::PeerLimitLayer,
    rate_limit::{Rate, RateLimitLayer},
    timeout::{TimedIo, TimeoutLayer},
};

pub type Io = tokio::io::Empty;

/// The protocol: done as soon as it starts.
fn done(_: Conn<Io>) -> Ready<Result<(), BoxError>> {
    ready(Ok(()))
}

pub type Inner = ServiceFn<fn(Conn<Io>) -> Ready<Result<(), BoxError>>>;

pub fn inner() -> Inner {
    service_fn(done as fn(_) -> _)
}

/// Peers cycle through 4096 addresses of `10.<thread>.x.y`.
pub fn peer(thread: u8, n: u32) -> SocketAddr {
    let host = n % 4096;
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, thread, (host >> 8) as u8, host as u8)),
        40000,
    )
}

/// The median of `values`: what a round's figure is reported as.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs every case once per round, `rounds` times, and returns each case's median, so
/// that a noisy neighbour slows every case alike.
pub fn interleaved<const N: usize>(
    rounds: usize,
    mut cases: [&mut dyn FnMut() -> f64; N],
) -> [f64; N] {
    let mut results: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(rounds));
    for _ in 0..rounds {
        for (case, result) in cases.iter_mut().zip(results.iter_mut()) {
            result.push(case());
        }
    }
    results.map(median)
}

/// Nanoseconds per operation.
pub fn per_op(elapsed: Duration, ops: u64) -> f64 {
    elapsed.as_secs_f64() * 1e9 / ops as f64
}

const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);

/// Runs `iterations` connections through `service` (ready, call, run to the end,
/// drop) and returns the time it took.
pub fn run<S>(service: &mut S, thread: u8, iterations: u64) -> Duration
where
    S: Service<Conn<Io>, Response = ()>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let began = Instant::now();
    for n in std::hint::black_box(0..iterations) {
        assert!(service.poll_ready(&mut cx).is_ready());
        let conn = Conn::new(tokio::io::empty(), peer(thread, n as u32), LOCAL);
        let connection = pin!(service.call(conn));
        match connection.poll(&mut cx) {
            Poll::Ready(outcome) => outcome.unwrap(),
            Poll::Pending => unreachable!("the inner service finishes at once"),
        }
    }
    began.elapsed()
}

/// Runs `iterations` connections on each of `threads` threads at once, each with its
/// own clone and its own peers, in the caller's runtime context if it has one; returns
/// the slowest thread's time.
pub fn run_threads<S>(service: &S, threads: u8, iterations: u64) -> Duration
where
    S: Service<Conn<Io>, Response = ()> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let service = std::sync::Mutex::new(service.clone());
    run_threads_each(threads, iterations, || service.lock().unwrap().clone())
}

/// [`run_threads`] with a service that `make` gives each thread: with a new stack on
/// each, nothing is shared, and the figure shows what the machine gives threads that
/// share nothing.
pub fn run_threads_each<S>(threads: u8, iterations: u64, make: impl Fn() -> S + Sync) -> Duration
where
    S: Service<Conn<Io>, Response = ()>,
    S::Error: std::fmt::Debug,
{
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let (runtime, make) = (runtime.clone(), &make);
                scope.spawn(move || {
                    let _context = runtime.as_ref().map(tokio::runtime::Handle::enter);
                    run(&mut make(), thread, iterations)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap()
    })
}

pub fn limit() -> ConnectionLimitLayer {
    ConnectionLimitLayer::builder(1_000_000).build().unwrap()
}

pub fn peer_limit() -> PeerLimitLayer {
    PeerLimitLayer::builder(1_000).build().unwrap()
}

pub fn rate() -> RateLimitLayer {
    // Far above what a loop can reach: every connection is admitted.
    let unbounded = Rate::per_second(1_000_000_000).burst(1_000_000_000);
    RateLimitLayer::builder()
        .per_peer(unbounded)
        .global(unbounded)
        .build()
        .unwrap()
}

/// Every admission layer, in the recommended order: bans, rate, per-peer cap, total cap.
pub fn all_admission<S>(
    inner: S,
) -> impl Service<Conn<Io>, Response = (), Error = BoxError> + Clone + Send
where
    S: Service<Conn<Io>, Response = (), Error = BoxError> + Clone + Send,
    S::Future: Send,
{
    all_admission_with(&Login::builder().build().unwrap(), inner)
}

/// [`all_admission`] with `login`'s ban check, so that the login can be set up apart
/// (in a fleet, say).
pub fn all_admission_with<S>(
    login: &Login,
    inner: S,
) -> impl Service<Conn<Io>, Response = (), Error = BoxError> + Clone + Send + use<S>
where
    S: Service<Conn<Io>, Response = (), Error = BoxError> + Clone + Send,
    S::Future: Send,
{
    ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(rate())
        .layer(peer_limit())
        .layer(limit())
        .service(inner)
}

/// A socket seen from its reader: every other poll has 64 bytes, the others have none.
#[derive(Default)]
pub struct Alternating {
    ready: bool,
}

impl AsyncRead for Alternating {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.ready = !self.ready;
        if !self.ready {
            return Poll::Pending;
        }
        let n = buf.remaining().min(64);
        buf.put_slice(&[7u8; 64][..n]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Alternating {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Performs `events` read events (a pending poll, then a ready one) on `reader`.
pub fn read_events<R: AsyncRead + Unpin>(reader: &mut R, events: u64) -> Duration {
    let mut cx = Context::from_waker(Waker::noop());
    let mut storage = [0u8; 64];
    let began = Instant::now();
    for _ in 0..events * 2 {
        let mut buf = ReadBuf::new(&mut storage);
        let _ = std::hint::black_box(Pin::new(&mut *reader).poll_read(&mut cx, &mut buf));
    }
    began.elapsed()
}

/// The stream a [`TimeoutLayer`] hands its protocol, as the layer builds it.
pub fn timed<IO>(io: IO, layer: &TimeoutLayer) -> TimedIo<IO>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (sender, mut receiver) = tokio::sync::oneshot::channel();
    let mut sender = Some(sender);
    let mut service = layer.layer(service_fn(move |conn: Conn<TimedIo<IO>>| {
        let _ = sender.take().map(|sender| sender.send(conn.into_io()));
        std::future::ready(Ok::<(), BoxError>(()))
    }));
    let conn = Conn::new(io, "192.0.2.1:1".parse().unwrap(), LOCAL);
    // The layer's future is dropped at once: only the stream it made is measured.
    drop(service.call(conn));
    receiver.try_recv().expect("the protocol ran")
}

/// What a bulk transfer moves, in chunks of [`CHUNK`].
pub const BULK: usize = 64 << 20;
pub const CHUNK: usize = 64 << 10;

/// Sends [`BULK`] bytes through an in-memory pipe and reads them through `wrap`.
pub async fn bulk_transfer<R, F>(wrap: F)
where
    F: FnOnce(tokio::io::DuplexStream) -> R,
    R: AsyncRead + Unpin,
{
    let (mut sender, receiver) = tokio::io::duplex(CHUNK);
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; CHUNK];
        for _ in 0..BULK / CHUNK {
            sender.write_all(&chunk).await.unwrap();
        }
    });
    let mut reader = wrap(receiver);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    while total < BULK {
        total += reader.read(&mut buf).await.unwrap();
    }
    writer.await.unwrap();
}
