//! The kernel ban filter's costs: how long a rebuild takes (building the program and
//! setting it on a listener) for 100 and 1000 keys, and what a filter of 1000 keys costs
//! the connections it lets through, against the same listener without a filter.
//!
//! ```text
//! cargo bench --bench kernel_bans
//! ```

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the kernel ban filter is Linux only");
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
        sync::Arc,
        time::{Duration, Instant},
    };

    use tokio::{io::AsyncReadExt, net::TcpListener};
    use tower_bouncer::login::{Bans, KernelBans, Login};

    const ROUNDS: usize = 41;
    const BAN: Duration = Duration::from_secs(3600);
    /// Connections per round of the throughput figure.
    const CONNECTIONS: u32 = 2000;
    /// The longest wait for a rebuild to land, or for a round of connections: a
    /// benchmark that waits longer fails, rather than spin or hang.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// `future`'s output, or a panic naming `what` after [`PATIENCE`].
    async fn within<T>(what: impl std::fmt::Display, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(PATIENCE, future)
            .await
            .unwrap_or_else(|_| panic!("{what}: not done within {PATIENCE:?}"))
    }

    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    fn ipv4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n.wrapping_mul(7919)))
    }

    fn ipv6(n: u32) -> IpAddr {
        let n = u128::from(n.wrapping_mul(7919));
        IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8 << 96) | (n << 64) | 1))
    }

    async fn settle(kernel: &KernelBans, keys: usize) {
        within(format_args!("the filter reaching {keys} keys"), async {
            while kernel.stats().keys != keys {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
        .await;
    }

    /// Puts `count` peers in the filter, or as many as fit; returns how many.
    async fn fill(bans: &Bans, kernel: &KernelBans, peer: fn(u32) -> IpAddr, count: u32) -> u32 {
        for n in 0..count {
            bans.ban(peer(n), BAN).unwrap();
            assert!(kernel.move_to_kernel(peer(n)));
        }
        // Settled: no change for 100 ms.
        within(
            format_args!("the filter settling with {count} peers banned"),
            async {
                let mut last = (0, 0);
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let stats = kernel.stats();
                    if stats.keys > 0 && (stats.keys, stats.rebuilds) == last {
                        return stats.keys as u32;
                    }
                    last = (stats.keys, stats.rebuilds);
                }
            },
        )
        .await
    }

    /// A filter of `count` keys, or as many as fit, on a listener; and how many.
    async fn filter(
        peer: fn(u32) -> IpAddr,
        count: u32,
    ) -> (Login, KernelBans, Arc<TcpListener>, u32) {
        let login = Login::builder().build().unwrap();
        let kernel = login.bans().kernel_filter();
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        kernel.attach(&listener).unwrap();
        let filled = fill(&login.bans(), &kernel, peer, count).await;
        (login, kernel, listener, filled)
    }

    /// The median time of a rebuild that puts the `count`th key in a filter of
    /// `count - 1` (or as many as fit), the filter's length, and its keys.
    async fn rebuild(peer: fn(u32) -> IpAddr, count: u32) -> (f64, usize, u32) {
        let (mut login, mut kernel, mut _listener, filled) = filter(peer, count).await;
        let count = if filled < count {
            // Again, with only the keys that fit: each round then rebuilds.
            (login, kernel, _listener, _) = filter(peer, filled).await;
            filled
        } else {
            count
        };
        let bans = login.bans();
        let last = peer(count - 1);
        let mut took = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            bans.unban(last);
            settle(&kernel, count as usize - 1).await;
            bans.ban(last, BAN).unwrap();
            kernel.move_to_kernel(last);
            settle(&kernel, count as usize).await;
            took.push(kernel.stats().last_rebuild_nanos as f64);
        }
        (median(took), kernel.stats().instructions, count)
    }

    /// Connections a second that connect, are accepted and closed, and see the close.
    /// One timeout for the whole round, not one a connection: a stalled server fails the
    /// benchmark, and nothing is added to what each connection measures.
    async fn churn(server: SocketAddr) -> f64 {
        let began = Instant::now();
        within(
            format_args!("{CONNECTIONS} connections to {server}"),
            async {
                for _ in 0..CONNECTIONS {
                    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
                    let mut byte = [0_u8; 1];
                    let _ = stream.read(&mut byte).await;
                }
            },
        )
        .await;
        f64::from(CONNECTIONS) / began.elapsed().as_secs_f64()
    }

    /// An accept loop that closes every connection at once.
    async fn accept_and_close(listener: Arc<TcpListener>) {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    }

    pub(super) fn main() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            println!("| keys | family | instructions | rebuild (median of {ROUNDS}) |");
            println!("|-----:|--------|-------------:|--------------:|");
            for (family, peer) in [("IPv4", ipv4 as fn(u32) -> IpAddr), ("IPv6 /64", ipv6)] {
                for asked in [100, 1000] {
                    let (nanos, instructions, keys) = rebuild(peer, asked).await;
                    let fit = if keys < asked {
                        format!(" (of {asked}: the rest do not fit)")
                    } else {
                        String::new()
                    };
                    println!(
                        "| {keys}{fit} | {family} | {instructions} | {:.1} µs |",
                        nanos / 1e3
                    );
                }
            }

            // Two listeners, one with 1000 IPv4 keys in its filter, loaded in turns.
            let (_login, _kernel, filtered, _) = filter(ipv4, 1000).await;
            let plain = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
            let addresses = [plain.local_addr().unwrap(), filtered.local_addr().unwrap()];
            tokio::spawn(accept_and_close(plain));
            tokio::spawn(accept_and_close(filtered));
            let (mut without, mut with) = (Vec::new(), Vec::new());
            for _ in 0..7 {
                without.push(churn(addresses[0]).await);
                with.push(churn(addresses[1]).await);
            }
            let (without, with) = (median(without), median(with));
            println!(
                "\naccept-and-close, {CONNECTIONS} connections a round, median of 7: \
                 {without:.0}/s without a filter, {with:.0}/s through 1000 keys ({:+.1} %)",
                (with / without - 1.0) * 100.0
            );
        });
    }
}
