//! Per-connection cost of the admission layers, each alone and all three stacked,
//! against the same inner service with no layer, on one thread and on two threads at
//! once (distinct peers on each).
//!
//! One iteration is one connection: `poll_ready`, `call`, the connection's future run
//! to completion (the inner service finishes at once), and the future dropped. Rates are
//! set too high to refuse, so this is the cost of admitting.
//!
//! ```text
//! cargo bench --bench admission
//! ```

use std::{
    future::{Ready, ready},
    hint::black_box,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceBuilder, service_fn, util::ServiceFn};
use tower_bouncer::{
    BoxError, Conn,
    limit::ConnectionLimitLayer,
    peer_limit::PeerLimitLayer,
    rate_limit::{Rate, RateLimitLayer},
};

type Io = tokio::io::Sink;

/// The protocol: done as soon as it starts.
fn done(_: Conn<Io>) -> Ready<Result<(), BoxError>> {
    ready(Ok(()))
}

type Inner = ServiceFn<fn(Conn<Io>) -> Ready<Result<(), BoxError>>>;

fn inner() -> Inner {
    service_fn(done as fn(_) -> _)
}

/// Peers cycle through 4096 addresses of `10.<thread>.x.y`.
fn peer(thread: u8, n: u32) -> SocketAddr {
    let host = n % 4096;
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, thread, (host >> 8) as u8, host as u8)),
        40000,
    )
}

const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);

/// Runs `iterations` connections through `service` and returns the time it took.
fn run<S>(service: &mut S, thread: u8, iterations: u64) -> Duration
where
    S: Service<Conn<Io>, Response = ()>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let began = Instant::now();
    for n in black_box(0..iterations) {
        assert!(service.poll_ready(&mut cx).is_ready());
        let conn = Conn::new(tokio::io::sink(), peer(thread, n as u32), LOCAL);
        let connection = pin!(service.call(conn));
        match connection.poll(&mut cx) {
            Poll::Ready(outcome) => outcome.unwrap(),
            Poll::Pending => unreachable!("the inner service finishes at once"),
        }
    }
    began.elapsed()
}

fn limit() -> ConnectionLimitLayer {
    ConnectionLimitLayer::builder(1_000_000).build().unwrap()
}

fn peer_limit() -> PeerLimitLayer {
    PeerLimitLayer::builder(1_000).build().unwrap()
}

fn rate() -> RateLimitLayer {
    // Far above what a loop can reach: every connection is admitted.
    let unbounded = Rate::per_second(1_000_000_000).burst(1_000_000_000);
    RateLimitLayer::builder()
        .per_peer(unbounded)
        .global(unbounded)
        .build()
        .unwrap()
}

/// Benchmarks `make()`'s service on one thread and on two.
fn bench<S, F>(c: &mut Criterion, name: &str, make: F)
where
    F: Fn() -> S + Sync,
    S: Service<Conn<Io>, Response = ()> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let mut group = c.benchmark_group(name);
    group.bench_function("1 thread", |b| {
        let mut service = make();
        b.iter_custom(|iterations| run(&mut service, 0, iterations));
    });
    group.bench_function("2 threads", |b| {
        let service = make();
        b.iter_custom(|iterations| {
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..2u8)
                    .map(|thread| {
                        let mut service = service.clone();
                        scope.spawn(move || run(&mut service, thread, iterations))
                    })
                    .collect();
                // Both threads ran `iterations` connections side by side: the slower
                // one's time is the time per connection under contention.
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap())
                    .max()
                    .unwrap()
            })
        });
    });
    group.finish();
}

fn admission(c: &mut Criterion) {
    bench(c, "no layer", inner);
    bench(c, "total limit", || limit().layer(inner()));
    bench(c, "per-peer limit", || peer_limit().layer(inner()));
    bench(c, "rate limit (per peer + global)", || {
        rate().layer(inner())
    });
    bench(c, "all three stacked", || {
        ServiceBuilder::new()
            .layer(rate())
            .layer(peer_limit())
            .layer(limit())
            .service(inner())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = admission
}
criterion_main!(benches);
