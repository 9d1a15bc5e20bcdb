//! Heap memory per tracked peer in the per-peer limit's and the rate limit's tables,
//! measured with dhat's allocator, and what is left after the storm ends.
//!
//! ```text
//! cargo bench --bench peer_memory
//! ```
//!
//! - Per-peer limit: N connections from N distinct peers are held open through the
//!   layer, and the same N through the bare inner service; the difference over N is
//!   what the layer costs per live peer (table entry and the slot each connection
//!   future carries). Then they close: peers stay at 0 until the layer's sweep.
//! - Rate limit: N distinct peers each connect once; the table keeps a bucket for each
//!   until it refills. Measured at 100 000 peers, and at 1 000 000 distinct IPv6 /64s
//!   against the default cap of 65 536 tracked peers.

use std::{
    future::{Pending, Ready, pending, ready},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::Pin,
    task::{Context, Waker},
};

use tower::{Layer, Service, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    peer_limit::PeerLimitLayer,
    rate_limit::{Rate, RateLimitLayer},
};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

type Io = tokio::io::Empty;

fn heap() -> usize {
    dhat::HeapStats::get().curr_bytes
}

fn peer(n: u32) -> SocketAddr {
    // Distinct /64s.
    let ip = Ipv6Addr::from_bits(0x2001_0db8_0000_0000_0000_0000_0000_0001 | (u128::from(n) << 64));
    SocketAddr::new(IpAddr::V6(ip), 40000)
}

const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 80);

fn conn(n: u32) -> Conn<Io> {
    Conn::new(tokio::io::empty(), peer(n), LOCAL)
}

/// Holds `n` connections from `n` peers open through `service`; returns the heap growth.
fn hold_open<S>(mut service: S, n: u32) -> usize
where
    S: Service<Conn<Io>>,
    S::Future: Unpin,
{
    let mut cx = Context::from_waker(Waker::noop());
    let before = heap();
    let mut live = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut connection = service.call(conn(i));
        assert!(
            Pin::new(&mut connection).poll(&mut cx).is_pending(),
            "admitted"
        );
        live.push(connection);
    }
    let grown = heap() - before;
    drop(live);
    grown
}

fn never(_: Conn<Io>) -> Pending<Result<(), BoxError>> {
    pending()
}

fn done(_: Conn<Io>) -> Ready<Result<(), BoxError>> {
    ready(Ok(()))
}

/// `n` peers each hold a connection open; then they all close, and the layer's own
/// sweep takes out the peers left at 0 (on paused time, so the ten seconds pass at once).
fn per_peer_limit(n: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let layer = PeerLimitLayer::builder(8)
            .max_tracked_peers(n as usize)
            .build()
            .unwrap();
        let baseline = heap();
        let bare = hold_open(service_fn(never), n);
        let layered = hold_open(layer.layer(service_fn(never)), n);
        let per_peer = (layered - bare) as f64 / f64::from(n);
        let closed = heap().saturating_sub(baseline);
        let tracked = layer.stats().tracked_peers;
        tokio::time::sleep(std::time::Duration::from_secs(11)).await;
        let swept = heap().saturating_sub(baseline);
        println!(
            "per-peer limit | {n:>9} live peers | {per_peer:>6.1} B per peer | {closed:>9} B left after they close ({tracked} tracked at 0), {swept:>7} B after the sweep ({} tracked)",
            layer.stats().tracked_peers
        );
    });
}

/// `n` distinct peers connect once each; then the storm ends, and the layer's own
/// sweep forgets the refilled peers (on paused time, so the five minutes pass at once).
fn rate_limit(n: u32, cap: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let baseline = heap();
        let layer = RateLimitLayer::builder()
            .per_peer(Rate::per_minute(1))
            .max_tracked_peers(cap)
            .build()
            .unwrap();
        let built = heap();
        let mut service = layer.layer(service_fn(done));
        let mut cx = Context::from_waker(Waker::noop());
        let mut peak = 0;
        for i in 0..n {
            let mut connection = service.call(conn(i));
            assert!(Pin::new(&mut connection).poll(&mut cx).is_ready());
            peak = peak.max(heap());
        }
        let tracked = layer.stats().tracked_peers;
        let per_peer = (heap() - built) as f64 / tracked as f64;
        tokio::time::sleep(std::time::Duration::from_secs(300)).await;
        let after = heap() - baseline;
        let peak = peak - baseline;
        println!(
            "rate limit     | {n:>9} peers, cap {cap:>7} | {per_peer:>6.1} B per tracked peer | {tracked:>7} tracked | peak {peak:>9} B | {after:>7} B ({:.1}% of the peak) after the storm, {} tracked",
            after as f64 * 100.0 / peak as f64,
            layer.stats().tracked_peers
        );
    });
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    println!("What each tracked peer costs on the heap (this machine, this build):");
    per_peer_limit(10_000);
    per_peer_limit(100_000);
    rate_limit(100_000, 100_000);
    rate_limit(1_000_000, 65_536);
}
