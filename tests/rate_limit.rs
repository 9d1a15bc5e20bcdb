//! The connection-rate limit, on tower-test mocks and paused time.

mod support;

use std::time::Duration;

use governor::Quota;
use tokio::io::DuplexStream;
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::Layer;
use tower_bouncer::{
    BoxError, ConfigError, Conn,
    admission::Reason,
    peer::{Overflow, PeerKeying},
    rate_limit::{Rate, RateLimit, RateLimitLayer},
};
use tower_test::mock;

use support::*;

type Service = mock::Spawn<RateLimit<mock::Mock<Conn<DuplexStream>, ()>>>;

fn limited(layer: &RateLimitLayer) -> Service {
    let (inner, handle) = mock::pair();
    // The mock's requests are never answered: admitted connections stay live.
    std::mem::forget(handle);
    mock::Spawn::new(layer.layer(inner))
}

/// Calls for `peer`; `Ok` if admitted, the refusal otherwise.
fn connect(service: &mut Service, peer: &str) -> Result<(), BoxError> {
    assert_ready_ok!(service.poll_ready());
    let mut connection = task::spawn(service.call(conn_from(peer)));
    match connection.poll() {
        std::task::Poll::Pending => Ok(()),
        std::task::Poll::Ready(outcome) => outcome,
    }
}

fn key(ip: &str) -> tower_bouncer::peer::PeerKey {
    PeerKeying::default().key(ip.parse().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_peer_over_its_rate_is_refused_with_a_retry_time_and_refills() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(2))
        .build()
        .unwrap();
    let mut service = limited(&layer);

    connect(&mut service, "192.0.2.1:1").unwrap();
    connect(&mut service, "192.0.2.1:2").unwrap();
    let error = connect(&mut service, "192.0.2.1:3").unwrap_err();
    assert_eq!(
        rejected(&error).reason(),
        &Reason::PeerRate {
            key: key("192.0.2.1"),
            retry_after: Duration::from_millis(500)
        }
    );
    assert_eq!(
        rejected(&error).retry_after(),
        Some(Duration::from_millis(500))
    );
    // Another peer has its own bucket.
    connect(&mut service, "192.0.2.2:1").unwrap();

    tokio::time::advance(Duration::from_millis(499)).await;
    assert!(connect(&mut service, "192.0.2.1:4").is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    connect(&mut service, "192.0.2.1:5").unwrap();

    let stats = layer.stats();
    assert_eq!((stats.admitted, stats.refused_peer_rate), (4, 2));
}

#[tokio::test(start_paused = true)]
async fn the_burst_is_separate_from_the_rate() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(60).burst(3))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    for port in 0..3 {
        connect(&mut service, &format!("192.0.2.1:{port}")).unwrap();
    }
    let error = connect(&mut service, "192.0.2.1:9").unwrap_err();
    assert_eq!(rejected(&error).retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn the_global_rate_counts_every_peer_together() {
    let layer = RateLimitLayer::builder()
        .global(Rate::per_second(3))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    for n in 1..=3 {
        connect(&mut service, &format!("192.0.2.{n}:1")).unwrap();
    }
    let error = connect(&mut service, "192.0.2.4:1").unwrap_err();
    assert!(matches!(
        rejected(&error).reason(),
        Reason::GlobalRate { .. }
    ));
    assert_eq!(layer.stats().refused_global_rate, 1);
}

#[tokio::test(start_paused = true)]
async fn global_backpressure_waits_instead_of_refusing() {
    let layer = RateLimitLayer::builder()
        .global(Rate::per_second(2))
        .global_backpressure()
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "192.0.2.1:1").unwrap();
    connect(&mut service, "192.0.2.2:1").unwrap();

    assert_pending!(service.poll_ready());
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(service.is_woken());
    connect(&mut service, "192.0.2.3:1").unwrap();
    assert_eq!(layer.stats().refused_global_rate, 0);
}

/// A faster global rate set while backpressure waits for the old rate's next token:
/// the wait ends at once, not when the old rate would have allowed one.
#[tokio::test(start_paused = true)]
async fn a_faster_global_rate_reloaded_during_backpressure_is_used_at_once() {
    let layer = RateLimitLayer::builder()
        .global(Rate::per_minute(1))
        .global_backpressure()
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "192.0.2.1:1").unwrap();
    assert_pending!(service.poll_ready());
    layer.set_global(Rate::per_second(1000)).unwrap();
    assert!(service.is_woken(), "the waiting loop is not told");
    assert_ready_ok!(service.poll_ready());
    // Reloaded again while it waits again: told again. The connection spends the
    // token reserved under the last rate; the slower bucket keeps the two connections
    // the faster one gave, so the loop waits again.
    layer.set_global(Rate::per_minute(1)).unwrap();
    connect(&mut service, "192.0.2.1:2").unwrap();
    assert_pending!(service.poll_ready());
    layer.set_global(Rate::per_second(1000)).unwrap();
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn with_global_backpressure_connections_refused_per_peer_or_exempt_spend_no_global_rate() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1))
        .global(Rate::per_second(2))
        .global_backpressure()
        .keying(
            PeerKeying::default()
                .exempt(["10.0.0.0/8".parse().unwrap()])
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "192.0.2.1:1").unwrap();
    // `connect` asserts that the service is ready at once: none of these spends the
    // global rate's second connection.
    for port in 2..10 {
        assert!(connect(&mut service, &format!("192.0.2.1:{port}")).is_err());
    }
    for port in 0..10 {
        connect(&mut service, &format!("10.0.0.1:{port}")).unwrap();
    }
    connect(&mut service, "192.0.2.2:1").unwrap();
    assert_pending!(service.poll_ready());

    let stats = layer.stats();
    assert_eq!(
        (stats.admitted, stats.exempt, stats.refused_peer_rate),
        (12, 10, 8)
    );
}

#[tokio::test(start_paused = true)]
async fn exempt_peers_skip_the_rates() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1))
        .global(Rate::per_second(1))
        .keying(
            PeerKeying::default()
                .exempt(["10.0.0.0/8".parse().unwrap()])
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut service = limited(&layer);
    for port in 0..20 {
        connect(&mut service, &format!("10.0.0.1:{port}")).unwrap();
    }
    assert_eq!(layer.stats().exempt, 20);
    connect(&mut service, "192.0.2.1:1").unwrap();
    assert!(connect(&mut service, "192.0.2.1:2").is_err());
}

#[tokio::test(start_paused = true)]
async fn addresses_in_one_ipv6_64_share_a_bucket_and_mapped_ipv4_is_ipv4() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "[2001:db8:1:2::1]:1").unwrap();
    assert!(connect(&mut service, "[2001:db8:1:2::99]:1").is_err());
    connect(&mut service, "192.0.2.1:1").unwrap();
    assert!(connect(&mut service, "[::ffff:192.0.2.1]:1").is_err());
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_rate() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(3))
        .build()
        .unwrap();
    let (inner, handle) = mock::pair::<Conn<DuplexStream>, ()>();
    std::mem::forget(handle);
    let service = layer.layer(inner);
    let admitted = (0..10)
        .filter(|port| {
            let mut clone = mock::Spawn::new(service.clone());
            connect(&mut clone, &format!("192.0.2.1:{port}")).is_ok()
        })
        .count();
    assert_eq!(admitted, 3);
}

#[tokio::test(start_paused = true)]
async fn refilled_peers_are_forgotten_without_any_help() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(5))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    for n in 0..200u32 {
        let peer = std::net::Ipv4Addr::from_bits(0xC633_6400 + n);
        connect(&mut service, &format!("{peer}:1")).unwrap();
    }
    assert_eq!(layer.stats().tracked_peers, 200);
    // The layer's own sweep runs about once a refill period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(layer.stats().tracked_peers, 0);
}

/// "Refilled peers are forgotten without any help", about once a refill period: of
/// the rate in force. A server running at a slow rate (a minute to refill) and
/// reloaded to a fast one (a second) must forget refilled peers on the fast rate's
/// schedule, or its table stays full of peers the limiter no longer needs, and the
/// full table lets new peers through untracked, at no rate at all.
#[tokio::test(start_paused = true)]
async fn refilled_peers_are_forgotten_on_the_reloaded_rates_schedule() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1).burst(60))
        .max_tracked_peers(200)
        .build()
        .unwrap();
    let mut service = limited(&layer);
    let peer = |n: u32| format!("{}:1", std::net::Ipv4Addr::from_bits(0xC633_6400 + n));
    // The first peer comes under the rate the layer was built with: its sweep runs.
    connect(&mut service, &peer(0)).unwrap();
    layer.set_per_peer(Rate::per_second(5)).unwrap();
    for n in 1..200 {
        connect(&mut service, &peer(n)).unwrap();
    }
    assert_eq!(layer.stats().tracked_peers, 200);
    // As for a layer built at 5 a second: a sweep about once its refill period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A new peer then gets its burst of 5, and no more.
    let admitted = (1..=20)
        .filter(|port| connect(&mut service, &format!("192.0.2.250:{port}")).is_ok())
        .count();
    assert_eq!(
        admitted, 5,
        "a new peer found the table full of refilled peers and went untracked, at no rate"
    );
    assert_eq!(
        layer.stats().tracked_peers,
        1,
        "the new peer alone is tracked: the refilled ones are forgotten"
    );
}

#[tokio::test(start_paused = true)]
async fn the_peer_table_is_bounded_with_an_overflow_policy() {
    let admit = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1))
        .max_tracked_peers(1)
        .build()
        .unwrap();
    let mut service = limited(&admit);
    connect(&mut service, "192.0.2.1:1").unwrap();
    connect(&mut service, "192.0.2.3:1").unwrap();
    connect(&mut service, "192.0.2.3:2").unwrap();
    let stats = admit.stats();
    assert_eq!((stats.tracked_peers, stats.untracked), (1, 2));
    assert!(connect(&mut service, "192.0.2.1:2").is_err());

    let refuse = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1))
        .max_tracked_peers(1)
        .overflow(Overflow::Refuse)
        .build()
        .unwrap();
    let mut service = limited(&refuse);
    connect(&mut service, "192.0.2.1:1").unwrap();
    let error = connect(&mut service, "192.0.2.2:1").unwrap_err();
    assert_eq!(
        rejected(&error).reason(),
        &Reason::PeerTableFull { capacity: 1 }
    );
}

#[tokio::test(start_paused = true)]
async fn rates_meant_as_forever_saturate_instead_of_panicking() {
    let forever = || Rate::from(Quota::with_period(Duration::MAX).unwrap());
    let layer = RateLimitLayer::builder()
        .per_peer(forever())
        .global(forever())
        .global_backpressure()
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "192.0.2.1:1").unwrap();
    assert_pending!(service.poll_ready());
    tokio::time::advance(Duration::from_secs(10 * 365 * 86_400)).await;
    assert_pending!(service.poll_ready());

    // A burst too large to count in governor's nanoseconds, and a peer that waits
    // "forever".
    let layer = RateLimitLayer::builder()
        .per_peer(forever())
        .global(Rate::per_minute(1).burst(u32::MAX))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "192.0.2.1:1").unwrap();
    let error = connect(&mut service, "192.0.2.1:2").unwrap_err();
    let retry_after = rejected(&error).retry_after().unwrap();
    assert!(
        retry_after > Duration::from_secs(100 * 365 * 86_400),
        "{retry_after:?}"
    );
    for n in 2..100 {
        connect(&mut service, &format!("192.0.2.{n}:1")).unwrap();
    }
}

#[test]
fn bad_rates_are_refused_when_built() {
    assert_eq!(
        RateLimitLayer::builder().build().unwrap_err(),
        ConfigError::Empty {
            needs: "a per-peer or a global rate"
        }
    );
    assert_eq!(
        RateLimitLayer::builder()
            .per_peer(Rate::per_second(0))
            .build()
            .unwrap_err(),
        ConfigError::Zero {
            setting: "per_peer"
        }
    );
    assert!(
        RateLimitLayer::builder()
            .global(Rate::per_second(5).burst(0))
            .build()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_changes_the_rates_and_keeps_what_each_peer_used() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(2))
        .global(Rate::per_second(100))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "192.0.2.1:1").unwrap();
    // What 192.0.2.1 used counts under the new rate: one more, not four.
    layer.set_per_peer(Rate::per_second(2)).unwrap();
    connect(&mut service, "192.0.2.1:2").unwrap();
    assert!(connect(&mut service, "192.0.2.1:3").is_err());
    // A higher rate: the peer's use so far (2 connections) is not forgotten, so no
    // fresh burst of 5 but the 3 left of it; it refills at the new rate, one every
    // 200 ms.
    layer.set_per_peer(Rate::per_second(5)).unwrap();
    for port in 4..=6 {
        connect(&mut service, &format!("192.0.2.1:{port}")).unwrap();
    }
    assert!(connect(&mut service, "192.0.2.1:7").is_err());
    tokio::time::advance(Duration::from_millis(200)).await;
    connect(&mut service, "192.0.2.1:8").unwrap();
    assert!(connect(&mut service, "192.0.2.1:9").is_err());
    // The global rate, lowered to 1 a second: what it has spent counts at the new
    // rate too, so the last connection's second passes first; then one a second.
    layer.set_global(Rate::per_second(1)).unwrap();
    let refusal = connect(&mut service, "192.0.2.2:1").unwrap_err();
    assert!(matches!(
        rejected(&refusal).reason(),
        Reason::GlobalRate { retry_after } if *retry_after == Duration::from_secs(1)
    ));
    tokio::time::advance(Duration::from_secs(1)).await;
    connect(&mut service, "192.0.2.2:2").unwrap();
    let refusal = connect(&mut service, "192.0.2.3:1").unwrap_err();
    assert!(matches!(
        rejected(&refusal).reason(),
        Reason::GlobalRate { .. }
    ));
    // A reload that cannot work changes nothing.
    assert_eq!(
        layer.set_per_peer(Rate::per_second(0)),
        Err(ConfigError::Zero {
            setting: "per_peer"
        })
    );
    let per_peer_only = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1))
        .build()
        .unwrap();
    assert!(matches!(
        per_peer_only.set_global(Rate::per_second(1)),
        Err(ConfigError::Inconsistent { .. })
    ));
}

/// A reload keeps what the global bucket has spent, as it keeps each peer's: under a
/// flood held at the global rate, a reload that leaves the rate as it is (a certificate
/// renewed, a SIGHUP sent twice) lets no one more in, and one that changes it counts
/// the connections already let in at the new rate, raised or lowered, rather than
/// handing out a fresh burst.
#[tokio::test(start_paused = true)]
async fn a_reloaded_global_rate_keeps_what_its_bucket_has_spent() {
    let layer = RateLimitLayer::builder()
        .global(Rate::per_second(10))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    // Each connection from a new peer: only the global rate can refuse it.
    let mut peers =
        (0..200u32).map(|n| format!("{}:1", std::net::Ipv4Addr::from_bits(0xC633_6400 + n)));
    let mut flood = |service: &mut Service, connections: usize| {
        (0..connections)
            .filter(|_| connect(service, &peers.next().unwrap()).is_ok())
            .count()
    };
    assert_eq!(flood(&mut service, 20), 10, "the burst of 10");
    layer.set_global(Rate::per_second(10)).unwrap();
    assert_eq!(flood(&mut service, 20), 0, "the same rate: nothing new");
    // Raised to 20 a second: the 10 let in count against its burst of 20.
    layer.set_global(Rate::per_second(20)).unwrap();
    assert_eq!(flood(&mut service, 20), 10, "the 10 left of the new burst");
    // Lowered to 5 a second: 20 let in are 4 s of it, a burst of 5 is 0.8 s.
    layer.set_global(Rate::per_second(5)).unwrap();
    let refusal = connect(&mut service, &peers.next().unwrap()).unwrap_err();
    assert!(matches!(
        rejected(&refusal).reason(),
        Reason::GlobalRate { retry_after } if *retry_after == Duration::from_millis(3200)
    ));
}

/// An operator raises the rate, and its burst, for clients it throttled: a peer that
/// spent its whole burst of 10 at 1 a second has, under 100 a second with a burst of
/// 100, used 10 of 100 ("what each peer has used is kept, measured against the new
/// rate"), not a lock-out for the 9 s its old bucket took to refill.
#[tokio::test(start_paused = true)]
async fn a_raised_rate_frees_a_throttled_peer_at_the_new_rate_not_the_old_one() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(1).burst(10))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    for port in 1..=10 {
        connect(&mut service, &format!("192.0.2.1:{port}")).unwrap();
    }
    assert!(connect(&mut service, "192.0.2.1:11").is_err());
    layer
        .set_per_peer(Rate::per_second(100).burst(100))
        .unwrap();
    // Even as an empty bucket, one every 10 ms under the new rate.
    tokio::time::advance(Duration::from_millis(20)).await;
    if let Err(refused) = connect(&mut service, "192.0.2.1:12") {
        panic!(
            "refused under a rate of 100 a second: {}",
            rejected(&refused).reason()
        );
    }
}

/// The other way: an operator under a flood lowers the rate, and its burst. A peer that
/// has just spent its burst of 100 under the old rate has nothing left under the new
/// one: it must not be handed most of the new burst of 10 at once.
#[tokio::test(start_paused = true)]
async fn a_lowered_rate_gives_a_peer_that_spent_its_burst_no_fresh_one() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(100))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    for port in 1..=100 {
        connect(&mut service, &format!("192.0.2.1:{port}")).unwrap();
    }
    assert!(connect(&mut service, "192.0.2.1:101").is_err());
    layer.set_per_peer(Rate::per_second(1).burst(10)).unwrap();
    let mut admitted = 0;
    for port in 102..=120 {
        if connect(&mut service, &format!("192.0.2.1:{port}")).is_ok() {
            admitted += 1;
        }
    }
    assert!(
        admitted <= 1,
        "{admitted} admitted at once right after the reload from a peer that had spent its burst"
    );
}

/// A reload makes a new limiter over the same table: what each peer used must read
/// the same to it, however long the server ran before (a `Bouncer` reload sets the
/// per-peer rate every time).
#[tokio::test(start_paused = true)]
async fn a_reload_after_hours_keeps_what_each_peer_used_as_it_was() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(2))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    tokio::time::advance(Duration::from_secs(3600)).await;
    connect(&mut service, "192.0.2.1:1").unwrap();
    connect(&mut service, "192.0.2.2:1").unwrap();
    connect(&mut service, "192.0.2.2:2").unwrap();
    layer.set_per_peer(Rate::per_second(2)).unwrap();
    // 192.0.2.2 spent its burst just now, under the old limiter: still spent.
    assert!(connect(&mut service, "192.0.2.2:3").is_err());
    // Refilled 5 s later, both of them, not locked out for the hour before the reload.
    tokio::time::advance(Duration::from_secs(5)).await;
    for peer in ["192.0.2.1:2", "192.0.2.1:3", "192.0.2.2:4", "192.0.2.2:5"] {
        if let Err(refused) = connect(&mut service, peer) {
            panic!("{peer} refused: {}", rejected(&refused).reason());
        }
    }
    assert!(connect(&mut service, "192.0.2.1:4").is_err());
    // And the layer's sweep forgets them once refilled, as before the reload.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(layer.stats().tracked_peers, 0);
}

/// Threads spending one peer's burst at once admit exactly the burst: each connection's
/// charge lands on the peer's arrival time, none lost to another thread's.
#[test]
fn threads_spending_one_peers_burst_at_once_admit_exactly_the_burst() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Service, service_fn};

    const BURST: u32 = 2_000;
    // One connection a minute after the burst: none comes back during the test.
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(1).burst(BURST))
        .build()
        .unwrap();
    let admitted = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (layer, admitted) = (&layer, &admitted);
            scope.spawn(move || {
                let mut service = layer.layer(service_fn(|_: Conn<tokio::io::Empty>| async {
                    Ok::<_, BoxError>(())
                }));
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                for n in 0..BURST {
                    assert!(service.poll_ready(&mut cx).is_ready());
                    let conn = Conn::new(
                        tokio::io::empty(),
                        format!("192.0.2.1:{}", thread * 1000 + n).parse().unwrap(),
                        "127.0.0.1:80".parse().unwrap(),
                    );
                    let connection = std::pin::pin!(service.call(conn));
                    if let std::task::Poll::Ready(Ok(())) = connection.poll(&mut cx) {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), BURST as usize);
}

/// A connection the global rate refuses was never served: it must not spend its peer's
/// own rate, as one the per-peer rate refuses spends no global rate. Otherwise a crowd
/// that empties the global bucket also empties the bucket of every peer it crowds out,
/// and those peers are then refused "for their own rate" (an offence) once the crowd
/// has gone.
#[tokio::test(start_paused = true)]
async fn a_connection_refused_by_the_global_rate_spends_none_of_its_peers_rate() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(2))
        .global(Rate::per_second(1))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    // The crowd takes the global rate's one token of this second.
    connect(&mut service, "198.51.100.1:1").unwrap();
    for port in 1..=2 {
        let refused = connect(&mut service, &format!("192.0.2.1:{port}")).unwrap_err();
        assert!(matches!(
            rejected(&refused).reason(),
            Reason::GlobalRate { .. }
        ));
    }
    // A second later the global rate has a token again, and 192.0.2.1 has had no
    // connection served in the last minute: its rate allows it two.
    tokio::time::advance(Duration::from_secs(1)).await;
    if let Err(refused) = connect(&mut service, "192.0.2.1:3") {
        panic!(
            "refused though never served: {}",
            rejected(&refused).reason()
        );
    }
}

/// The converse: a connection refused for its peer's rate spends none of the global
/// rate, so one noisy peer does not use up everyone's budget.
#[tokio::test(start_paused = true)]
async fn a_connection_refused_by_its_peers_rate_spends_none_of_the_global_rate() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(1))
        .global(Rate::per_second(2))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "198.51.100.1:1").unwrap();
    for port in 2..10 {
        let refused = connect(&mut service, &format!("198.51.100.1:{port}")).unwrap_err();
        assert!(matches!(
            rejected(&refused).reason(),
            Reason::PeerRate { .. }
        ));
    }
    // The global rate's second connection of this second is still there.
    connect(&mut service, "192.0.2.1:1").unwrap();
    let refused = connect(&mut service, "192.0.2.2:1").unwrap_err();
    assert!(matches!(
        rejected(&refused).reason(),
        Reason::GlobalRate { .. }
    ));
}

/// A rate made looser by a reload: a peer that spent its burst under the old rate
/// refills at the new rate (as `a_reload_changes_the_rates_and_keeps_what_each_peer_used`
/// says, "one every 200 ms" there), not at the old one.
#[tokio::test(start_paused = true)]
async fn a_looser_rate_reloaded_refills_a_spent_burst_at_the_new_rate_not_the_old() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(6))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    for port in 1..=6 {
        connect(&mut service, &format!("192.0.2.1:{port}")).unwrap();
    }
    assert!(connect(&mut service, "192.0.2.1:7").is_err());
    // The operator finds 6 a minute too strict: 6 a second, the same burst.
    layer.set_per_peer(Rate::per_second(6)).unwrap();
    // Under the new rate the whole burst refills within a second.
    tokio::time::advance(Duration::from_secs(2)).await;
    if let Err(refused) = connect(&mut service, "192.0.2.1:8") {
        panic!(
            "still refused under the looser rate: {}",
            rejected(&refused).reason()
        );
    }
}

/// The other way: a rate made tighter with its large burst kept. A peer that just spent
/// the old burst has used 100 connections, which take 100 s to refill at the new rate,
/// not a second's worth of the new burst's tolerance.
#[tokio::test(start_paused = true)]
async fn a_tighter_rate_reloaded_with_its_burst_kept_hands_out_no_extra_connections() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(100))
        .build()
        .unwrap();
    let mut service = limited(&layer);
    for port in 1..=100 {
        connect(&mut service, &format!("192.0.2.1:{port}")).unwrap();
    }
    layer.set_per_peer(Rate::per_second(1).burst(100)).unwrap();
    let refused = connect(&mut service, "192.0.2.1:101")
        .expect_err("the old burst is spent: nothing left at once under the new rate");
    assert!(matches!(
        rejected(&refused).reason(),
        Reason::PeerRate { retry_after, .. } if *retry_after == Duration::from_secs(1)
    ));
    // One a second from now on.
    tokio::time::advance(Duration::from_secs(1)).await;
    connect(&mut service, "192.0.2.1:102").unwrap();
    assert!(connect(&mut service, "192.0.2.1:103").is_err());
}

/// `untracked` counts connections "let through untracked": one that the global rate
/// then refused was not let through; one served anyway in dry run was.
#[tokio::test(start_paused = true)]
async fn a_new_peer_over_a_full_table_refused_by_the_global_rate_is_not_counted_untracked() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_second(10))
        .global(Rate::per_second(1))
        .max_tracked_peers(1)
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "192.0.2.1:1").unwrap();
    let refused = connect(&mut service, "192.0.2.2:1").unwrap_err();
    assert!(matches!(
        rejected(&refused).reason(),
        Reason::GlobalRate { .. }
    ));
    let stats = layer.stats();
    assert_eq!(
        (stats.admitted, stats.untracked, stats.refused_global_rate),
        (1, 0, 1),
        "untracked must be a share of admitted: {stats}"
    );
    layer.set_dry_run(true);
    connect(&mut service, "192.0.2.3:1").unwrap();
    let stats = layer.stats();
    assert_eq!(
        (stats.admitted, stats.untracked, stats.dry_run_refusals),
        (2, 1, 1),
        "served in dry run, so let through untracked: {stats}"
    );
}

/// Connections the global rate refuses take no place in the per-peer table either: a
/// spray of new addresses that the global rate turns away must not fill the table, or
/// (with `Overflow::Refuse`) every new peer is then refused for a full table that holds
/// only peers never served.
#[tokio::test(start_paused = true)]
async fn peers_the_global_rate_refused_take_no_place_in_a_full_table() {
    let layer = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(1))
        .global(Rate::per_second(1))
        .max_tracked_peers(2)
        .overflow(Overflow::Refuse)
        .build()
        .unwrap();
    let mut service = limited(&layer);
    connect(&mut service, "192.0.2.1:1").unwrap();
    // The spray: each refused by the global rate.
    for n in 100..110 {
        let refused = connect(&mut service, &format!("198.51.100.{n}:1")).unwrap_err();
        assert!(matches!(
            rejected(&refused).reason(),
            Reason::GlobalRate { .. } | Reason::PeerTableFull { .. }
        ));
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    // One peer served so far, in a table of two: a new one has room.
    if let Err(refused) = connect(&mut service, "192.0.2.2:1") {
        panic!(
            "refused: {}; {} peers tracked",
            rejected(&refused).reason(),
            layer.stats().tracked_peers
        );
    }
}
