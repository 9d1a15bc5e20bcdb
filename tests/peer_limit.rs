//! The per-peer connection limit, on tower-test mocks, and as a property.

mod support;

use std::{collections::HashMap, future::Pending, time::Duration};

use proptest::prelude::*;
use tokio::io::DuplexStream;
use tokio_test::{assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, service_fn};
use tower_bouncer::{
    BoxError, ConfigError, Conn,
    admission::Reason,
    peer::{Overflow, PeerKeying},
    peer_limit::{PeerLimit, PeerLimitLayer},
};
use tower_test::mock;

use support::*;

type Mock = mock::Mock<Conn<DuplexStream>, ()>;

fn limited(
    layer: &PeerLimitLayer,
) -> (
    mock::Spawn<PeerLimit<Mock>>,
    mock::Handle<Conn<DuplexStream>, ()>,
) {
    let (inner, handle) = mock::pair();
    (mock::Spawn::new(layer.layer(inner)), handle)
}

/// Calls the service for `peer` and polls the connection once: `Ok` if it was admitted
/// (still running), the refusal otherwise. The connection is returned to keep it live.
fn connect(
    service: &mut mock::Spawn<PeerLimit<Mock>>,
    peer: &str,
) -> Result<impl Sized + use<>, BoxError> {
    assert_ready_ok!(service.poll_ready());
    let mut connection = task::spawn(service.call(conn_from(peer)));
    match connection.poll() {
        std::task::Poll::Pending => Ok(connection),
        std::task::Poll::Ready(outcome) => Err(outcome.unwrap_err()),
    }
}

#[tokio::test]
async fn a_peer_over_its_limit_is_refused_while_another_is_served() {
    let layer = PeerLimitLayer::builder(2).build().unwrap();
    let (mut service, _handle) = limited(&layer);

    let _a1 = connect(&mut service, "192.0.2.1:1").unwrap();
    let _a2 = connect(&mut service, "192.0.2.1:2").unwrap();
    let error = connect(&mut service, "192.0.2.1:3").err().unwrap();
    assert_eq!(
        rejected(&error).reason(),
        &Reason::PeerLimit {
            key: PeerKeying::default().key(addr("192.0.2.1:0").ip()),
            limit: 2
        }
    );
    let _b1 = connect(&mut service, "192.0.2.2:1").unwrap();

    let stats = layer.stats();
    assert_eq!(
        (
            stats.admitted,
            stats.refused_peer_limit,
            stats.tracked_peers
        ),
        (3, 1, 2)
    );
}

#[tokio::test]
async fn the_slot_is_released_on_completion_error_and_drop() {
    let layer = PeerLimitLayer::builder(1).build().unwrap();
    let (mut service, mut handle) = limited(&layer);

    assert_ready_ok!(service.poll_ready());
    let mut completing = task::spawn(service.call(conn_from("192.0.2.1:1")));
    handle.next_request().await.unwrap().1.send_response(());
    assert_ready_ok!(completing.poll());
    // At a limit of 1, a new connection is admitted only if the last one's slot is back.
    drop(connect(&mut service, "192.0.2.1:1").unwrap());
    handle.next_request().await.unwrap();

    assert_ready_ok!(service.poll_ready());
    let mut failing = task::spawn(service.call(conn_from("192.0.2.1:1")));
    handle.next_request().await.unwrap().1.send_error("reset");
    assert_ready_err!(failing.poll());
    drop(connect(&mut service, "192.0.2.1:1").unwrap());
    handle.next_request().await.unwrap();

    let dropped = connect(&mut service, "192.0.2.1:1").unwrap();
    assert!(connect(&mut service, "192.0.2.1:1").is_err());
    drop(dropped);
    connect(&mut service, "192.0.2.1:1").unwrap();
}

#[tokio::test]
async fn the_slot_is_released_when_the_connection_panics() {
    let layer = PeerLimitLayer::builder(1).build().unwrap();
    let service = layer.layer(service_fn(|_: Conn<DuplexStream>| async {
        panic!("the protocol panicked");
        #[allow(unreachable_code)]
        Ok::<(), BoxError>(())
    }));
    let joined = tokio::spawn(tower::ServiceExt::oneshot(
        service,
        conn_from("192.0.2.1:1"),
    ))
    .await;
    assert!(joined.unwrap_err().is_panic());
    let (mut service, _handle) = limited(&layer);
    connect(&mut service, "192.0.2.1:1").unwrap();
}

#[tokio::test]
async fn addresses_in_one_ipv6_64_count_as_one_peer_and_mapped_ipv4_as_ipv4() {
    let layer = PeerLimitLayer::builder(1).build().unwrap();
    let (mut service, _handle) = limited(&layer);

    let _v6 = connect(&mut service, "[2001:db8:1:2::1]:1").unwrap();
    assert!(connect(&mut service, "[2001:db8:1:2:ffff::9]:1").is_err());
    let _next_64 = connect(&mut service, "[2001:db8:1:3::1]:1").unwrap();

    let _v4 = connect(&mut service, "192.0.2.9:1").unwrap();
    assert!(connect(&mut service, "[::ffff:192.0.2.9]:2").is_err());
}

#[tokio::test]
async fn the_ipv6_prefix_is_configurable() {
    let keying = PeerKeying::with_prefixes(32, 48).unwrap();
    let layer = PeerLimitLayer::builder(1).keying(keying).build().unwrap();
    let (mut service, _handle) = limited(&layer);
    let _first = connect(&mut service, "[2001:db8:1:2::1]:1").unwrap();
    assert!(
        connect(&mut service, "[2001:db8:1:9::1]:1").is_err(),
        "same /48"
    );
}

#[tokio::test]
async fn exempt_peers_pass_untracked() {
    let keying = PeerKeying::default()
        .exempt(["10.0.0.0/8".parse().unwrap()])
        .unwrap();
    let layer = PeerLimitLayer::builder(1).keying(keying).build().unwrap();
    let (mut service, _handle) = limited(&layer);
    let held: Vec<_> = (0..5)
        .map(|port| connect(&mut service, &format!("10.1.1.1:{port}")).unwrap())
        .collect();
    let stats = layer.stats();
    assert_eq!(
        (stats.admitted, stats.exempt, stats.tracked_peers),
        (5, 5, 0)
    );
    drop(held);
}

#[tokio::test]
async fn a_full_table_admits_new_peers_untracked_by_default() {
    let layer = PeerLimitLayer::builder(1)
        .max_tracked_peers(1)
        .build()
        .unwrap();
    let (mut service, _handle) = limited(&layer);
    let _a = connect(&mut service, "192.0.2.1:1").unwrap();
    let _b1 = connect(&mut service, "192.0.2.2:1").unwrap();
    let _b2 = connect(&mut service, "192.0.2.2:2").unwrap();
    let stats = layer.stats();
    assert_eq!((stats.untracked, stats.tracked_peers), (2, 1));
    // Tracked peers are still held to their limit.
    assert!(connect(&mut service, "192.0.2.1:2").is_err());
}

#[tokio::test]
async fn a_full_table_set_to_refuse_refuses_new_peers() {
    let layer = PeerLimitLayer::builder(1)
        .max_tracked_peers(1)
        .overflow(Overflow::Refuse)
        .build()
        .unwrap();
    let (mut service, _handle) = limited(&layer);
    let a = connect(&mut service, "192.0.2.1:1").unwrap();
    let error = connect(&mut service, "192.0.2.2:1").err().unwrap();
    assert_eq!(
        rejected(&error).reason(),
        &Reason::PeerTableFull { capacity: 1 }
    );
    drop(a);
    connect(&mut service, "192.0.2.2:1").unwrap();
}

#[tokio::test]
async fn clones_share_one_table() {
    let layer = PeerLimitLayer::builder(2).build().unwrap();
    let (inner, _handle) = mock::pair::<Conn<DuplexStream>, ()>();
    let service = layer.layer(inner);
    let mut held = Vec::new();
    let mut admitted = 0;
    for port in 0..10 {
        let mut clone = mock::Spawn::new(service.clone());
        if let Ok(connection) = connect(&mut clone, &format!("192.0.2.1:{port}")) {
            admitted += 1;
            held.push(connection);
        }
    }
    assert_eq!(admitted, 2);
}

#[test]
fn zero_limits_are_refused_when_built() {
    assert_eq!(
        PeerLimitLayer::builder(0).build().unwrap_err(),
        ConfigError::Zero {
            setting: "max_per_peer"
        }
    );
    assert!(
        PeerLimitLayer::builder(1)
            .max_tracked_peers(0)
            .build()
            .is_err()
    );
}

/// One step of a random schedule: a peer connects, or the n-th live connection ends.
#[derive(Debug, Clone)]
enum Step {
    Connect(u8),
    Disconnect(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (0u8..6).prop_map(Step::Connect),
        any::<usize>().prop_map(Step::Disconnect),
    ];
    proptest::collection::vec(step, 0..200)
}

/// A protocol that runs until its connection is dropped.
fn never(_: Conn<tokio::io::Empty>) -> Pending<Result<(), BoxError>> {
    std::future::pending()
}

type LiveConnection = std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>>>>;

/// Runs `steps` against a per-peer limit and calls `check` after each with the
/// connections that are live, by peer, and the layer. Returns the layer at the end,
/// after every connection has been dropped.
fn run_schedule(
    layer: &PeerLimitLayer,
    steps: Vec<Step>,
    mut check: impl FnMut(Option<(u8, bool)>, &HashMap<u8, usize>) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut service = layer.layer(service_fn(never));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut live: Vec<(u8, LiveConnection)> = Vec::new();
    for step in steps {
        let outcome = match step {
            Step::Connect(peer) => {
                let conn = Conn::new(
                    tokio::io::empty(),
                    format!("192.0.2.{peer}:1").parse().unwrap(),
                    "127.0.0.1:80".parse().unwrap(),
                );
                let mut connection = Box::pin(service.call(conn));
                let admitted = connection.as_mut().poll(&mut cx).is_pending();
                if admitted {
                    live.push((peer, connection));
                }
                Some((peer, admitted))
            }
            Step::Disconnect(n) if !live.is_empty() => {
                drop(live.remove(n % live.len()));
                None
            }
            Step::Disconnect(_) => None,
        };
        let mut per_peer = HashMap::new();
        for (peer, _) in &live {
            *per_peer.entry(*peer).or_default() += 1;
        }
        check(outcome, &per_peer)?;
    }
    Ok(())
}

/// Runs `steps` as [`run_schedule`] does, in a runtime whose clock is paused, so that
/// the layer's sweep can be let run afterwards.
fn run_schedule_then_sweep(
    layer: &PeerLimitLayer,
    steps: Vec<Step>,
    check: impl FnMut(Option<(u8, bool)>, &HashMap<u8, usize>) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        run_schedule(layer, steps, check)?;
        // Peers whose connections have all ended stay until the sweep, every 10 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        prop_assert_eq!(layer.stats().tracked_peers, 0);
        Ok(())
    })
}

proptest! {
    #[test]
    fn any_schedule_admits_exactly_up_to_the_limit_and_the_sweep_empties_the_table(
        steps in steps(),
        limit in 1usize..4,
    ) {
        let layer = PeerLimitLayer::builder(limit).build().unwrap();
        let mut before: HashMap<u8, usize> = HashMap::new();
        run_schedule_then_sweep(&layer, steps, |outcome, live| {
            if let Some((peer, admitted)) = outcome {
                let had = before.get(&peer).copied().unwrap_or(0);
                prop_assert_eq!(admitted, had < limit, "peer {} had {}", peer, had);
            }
            prop_assert!(live.values().all(|count| *count <= limit));
            // Live peers, and peers whose last connection ended since the last sweep.
            prop_assert!(layer.stats().tracked_peers >= live.len());
            before = live.clone();
            Ok(())
        })?;
    }

    #[test]
    fn a_full_table_that_refuses_makes_way_for_a_new_peer_only_from_idle_ones(
        steps in steps(),
        limit in 1usize..4,
        capacity in 1usize..5,
    ) {
        let layer = PeerLimitLayer::builder(limit)
            .max_tracked_peers(capacity)
            .overflow(Overflow::Refuse)
            .build()
            .unwrap();
        let mut before: HashMap<u8, usize> = HashMap::new();
        run_schedule_then_sweep(&layer, steps, |outcome, live| {
            if let Some((peer, admitted)) = outcome {
                let had = before.get(&peer).copied().unwrap_or(0);
                let room = had > 0 || before.len() < capacity;
                prop_assert_eq!(admitted, had < limit && room, "peer {} had {} of {:?}", peer, had, before);
            }
            prop_assert!(live.values().all(|count| *count <= limit));
            prop_assert!(layer.stats().tracked_peers <= capacity);
            before = live.clone();
            Ok(())
        })?;
    }
}

/// Threads opening connections from one peer at once get exactly its limit between
/// them, and every slot comes back when they close theirs.
#[test]
fn threads_at_one_peer_at_once_get_exactly_its_limit() {
    use std::sync::{
        Barrier,
        atomic::{AtomicUsize, Ordering},
    };

    const LIMIT: usize = 1_000;
    const THREADS: usize = 4;
    let layer = PeerLimitLayer::builder(LIMIT).build().unwrap();
    let open = |attempts: usize| -> Vec<LiveConnection> {
        let mut service = layer.layer(service_fn(never));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut admitted: Vec<LiveConnection> = Vec::new();
        for port in 0..attempts {
            let conn = Conn::new(
                tokio::io::empty(),
                format!("192.0.2.1:{port}").parse().unwrap(),
                "127.0.0.1:80".parse().unwrap(),
            );
            let mut connection: LiveConnection = Box::pin(service.call(conn));
            if connection.as_mut().poll(&mut cx).is_pending() {
                admitted.push(connection);
            }
        }
        admitted
    };
    let held = AtomicUsize::new(0);
    let all_open = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                let mine = open(LIMIT);
                held.fetch_add(mine.len(), Ordering::Relaxed);
                // Everyone's connections are live at once here; then each thread closes
                // its own.
                all_open.wait();
            });
        }
    });
    assert_eq!(held.into_inner(), LIMIT);
    assert_eq!(open(LIMIT + 1).len(), LIMIT, "every slot came back");
}

/// A runtime built without timers (`enable_io` only, say): the layer admits as ever,
/// and its sweep cannot run there. That must cost one panic, caught, whose message
/// says to call `enable_time`; not a sweep task per connection that panics (a message
/// on stderr per connection under a flood, and an abort with `panic = "abort"`).
#[test]
fn a_runtime_without_timers_costs_one_caught_panic_not_one_per_connection() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    const CONNECTIONS: usize = 20;
    let timer_panics = Arc::new(AtomicUsize::new(0));
    let previous: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> =
        Arc::from(std::panic::take_hook());
    let (counted, others) = (timer_panics.clone(), previous.clone());
    std::panic::set_hook(Box::new(move |info| {
        if info.to_string().contains("timers are disabled") {
            counted.fetch_add(1, Ordering::Relaxed);
        } else {
            others(info);
        }
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let layer = PeerLimitLayer::builder(CONNECTIONS).build().unwrap();
    runtime.block_on(async {
        let mut service = layer.layer(service_fn(never));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut live: Vec<LiveConnection> = Vec::new();
        for port in 0..CONNECTIONS as u16 {
            let conn = Conn::new(
                tokio::io::empty(),
                std::net::SocketAddr::from(([192, 0, 2, 1], port)),
                "127.0.0.1:80".parse().unwrap(),
            );
            let mut connection: LiveConnection = Box::pin(service.call(conn));
            assert!(connection.as_mut().poll(&mut cx).is_pending(), "admitted");
            live.push(connection);
            // Let any task the connection spawned run.
            tokio::task::yield_now().await;
        }
    });
    drop(runtime);
    std::panic::set_hook(Box::new(move |info| previous(info)));
    let panics = timer_panics.load(Ordering::Relaxed);
    assert!(panics <= 1, "{panics} panics for {CONNECTIONS} connections");
}
