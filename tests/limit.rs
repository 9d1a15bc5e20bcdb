//! The total connection limit, on tower-test mocks and paused time.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, ConfigError, Conn,
    admission::Reason,
    limit::{ConnectionLimitBuilder, ConnectionLimitLayer, GlobalSlot},
};
use tower_test::mock;

use support::*;

type Mock = mock::Mock<Conn<DuplexStream>, ()>;
type Handle = mock::Handle<Conn<DuplexStream>, ()>;

fn layer(builder: ConnectionLimitBuilder) -> ConnectionLimitLayer {
    builder.build().unwrap()
}

fn limited(
    layer: &ConnectionLimitLayer,
) -> (
    mock::Spawn<tower_bouncer::limit::ConnectionLimit<Mock>>,
    Handle,
) {
    let (inner, handle) = mock::pair();
    (mock::Spawn::new(layer.layer(inner)), handle)
}

#[tokio::test(start_paused = true)]
async fn connections_over_the_limit_are_refused_with_the_reason() {
    let limit = layer(ConnectionLimitLayer::builder(2));
    let (mut service, mut handle) = limited(&limit);

    assert_ready_ok!(service.poll_ready());
    let _first = task::spawn(service.call(conn_from("192.0.2.1:1")));
    assert_ready_ok!(service.poll_ready());
    let _second = task::spawn(service.call(conn_from("192.0.2.2:2")));
    assert_ready_ok!(service.poll_ready());
    let mut third = task::spawn(service.call(conn_from("192.0.2.3:3")));

    let error = assert_ready_err!(third.poll());
    let refusal = rejected(&error);
    assert_eq!(refusal.reason(), &Reason::ConnectionLimit { limit: 2 });
    assert_eq!(refusal.peer(), addr("192.0.2.3:3"));
    assert_eq!(
        handle.next_request().await.unwrap().0.peer_addr(),
        addr("192.0.2.1:1")
    );
    assert_eq!(
        handle.next_request().await.unwrap().0.peer_addr(),
        addr("192.0.2.2:2")
    );
    assert_pending!(handle.poll_request());

    let stats = limit.stats();
    assert_eq!(
        (stats.admitted, stats.refused, stats.live, stats.limit),
        (2, 1, 2, 2)
    );
}

/// Admits one connection under a limit of 1, ends it with `end`, and checks that the
/// slot came back.
async fn slot_is_released_when(
    end: impl FnOnce(
        mock::SendResponse<()>,
        task::Spawn<
            tower_bouncer::admission::ResponseFuture<
                mock::future::ResponseFuture<()>,
                DuplexStream,
                Option<GlobalSlot>,
            >,
        >,
    ),
) {
    let limit = layer(ConnectionLimitLayer::builder(1));
    let (mut service, mut handle) = limited(&limit);
    assert_ready_ok!(service.poll_ready());
    let connection = task::spawn(service.call(conn_from("192.0.2.1:1")));
    let (_, respond) = handle.next_request().await.unwrap();
    assert_eq!(limit.stats().live, 1);

    end(respond, connection);
    assert_eq!(limit.stats().live, 0);
    assert_ready_ok!(service.poll_ready());
    let _next = task::spawn(service.call(conn_from("192.0.2.2:2")));
    assert_eq!(
        handle.next_request().await.unwrap().0.peer_addr(),
        addr("192.0.2.2:2")
    );
}

#[tokio::test(start_paused = true)]
async fn the_slot_is_released_when_the_connection_completes() {
    slot_is_released_when(|respond, mut connection| {
        respond.send_response(());
        assert_ready_ok!(connection.poll());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_slot_is_released_when_the_connection_fails() {
    slot_is_released_when(|respond, mut connection| {
        respond.send_error("protocol error");
        assert_ready_err!(connection.poll());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_slot_is_released_when_the_connection_future_is_dropped() {
    slot_is_released_when(|_respond, connection| drop(connection)).await;
}

#[tokio::test(start_paused = true)]
async fn the_slot_is_released_when_the_connection_panics() {
    let limit = layer(ConnectionLimitLayer::builder(1));
    let panicking = service_fn(|_: Conn<DuplexStream>| async {
        panic!("the protocol panicked");
        #[allow(unreachable_code)]
        Ok::<(), BoxError>(())
    });
    let service = limit.layer(panicking);
    let joined = tokio::spawn(service.clone().oneshot(conn_from("192.0.2.1:1"))).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(limit.stats().live, 0);
    assert_eq!(limit.stats().admitted, 1);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_limit() {
    let limit = layer(ConnectionLimitLayer::builder(3));
    let (inner, _handle) = mock::pair::<Conn<DuplexStream>, ()>();
    let service = limit.layer(inner);
    let mut outcomes = Vec::new();
    for n in 0..10 {
        let mut clone = mock::Spawn::new(service.clone());
        assert_ready_ok!(clone.poll_ready());
        let mut connection = task::spawn(clone.call(conn_from(&format!("192.0.2.{n}:1"))));
        outcomes.push(connection.poll().is_ready());
        std::mem::forget(connection);
    }
    assert_eq!(outcomes.iter().filter(|refused| !**refused).count(), 3);
    assert_eq!(limit.stats().refused, 7);
}

#[tokio::test(start_paused = true)]
async fn backpressure_is_not_ready_while_full_and_wakes_when_a_slot_frees() {
    let limit = layer(ConnectionLimitLayer::builder(1).backpressure());
    let (mut service, mut handle) = limited(&limit);
    assert_ready_ok!(service.poll_ready());
    let mut first = task::spawn(service.call(conn_from("192.0.2.1:1")));
    let (_, respond) = handle.next_request().await.unwrap();

    assert_pending!(service.poll_ready());
    respond.send_response(());
    assert_ready_ok!(first.poll());
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
    assert_eq!(limit.stats().refused, 0);
}

/// Dry run turned on while a full cap holds the accept loop back: the loop goes on, at
/// once and as connections end, for in dry run nothing waits for room.
#[tokio::test(start_paused = true)]
async fn dry_run_turned_on_while_backpressure_waits_lets_the_waiter_go() {
    let limit = layer(ConnectionLimitLayer::builder(1).backpressure());
    let (mut service, mut handle) = limited(&limit);
    assert_ready_ok!(service.poll_ready());
    let mut first = task::spawn(service.call(conn_from("192.0.2.1:1")));
    let (_, respond) = handle.next_request().await.unwrap();
    assert_pending!(service.poll_ready());

    limit.set_dry_run(true);
    assert!(service.is_woken(), "the waiting loop is not told");
    assert_ready_ok!(service.poll_ready());
    // Served over the cap in dry run; enforced again, a waiter waits for room, and a
    // connection's end wakes it, dry run or not.
    let mut second = task::spawn(service.call(conn_from("192.0.2.2:2")));
    let (_, second_respond) = handle.next_request().await.unwrap();
    limit.set_dry_run(false);
    assert_pending!(service.poll_ready());
    respond.send_response(());
    assert_ready_ok!(first.poll());
    assert!(service.is_woken());
    assert_pending!(service.poll_ready(), "still full: the second lives");
    limit.set_dry_run(true);
    assert_ready_ok!(service.poll_ready());
    limit.set_dry_run(false);
    assert_pending!(service.poll_ready());
    second_respond.send_response(());
    assert_ready_ok!(second.poll());
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn a_ready_service_that_is_never_called_holds_no_slot() {
    let limit = layer(ConnectionLimitLayer::builder(1).backpressure());
    let (inner, mut handle) = mock::pair::<Conn<DuplexStream>, ()>();
    let service = limit.layer(inner);
    let mut idle = mock::Spawn::new(service.clone());
    let mut busy = mock::Spawn::new(service);

    assert_ready_ok!(idle.poll_ready());
    assert_ready_ok!(busy.poll_ready());
    let _served = task::spawn(busy.call(conn_from("192.0.2.2:2")));
    assert_eq!(
        handle.next_request().await.unwrap().0.peer_addr(),
        addr("192.0.2.2:2")
    );
    assert_eq!(limit.stats().live, 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_is_told_why_then_closed() {
    let limit = layer(ConnectionLimitLayer::builder(1).refusal_message(&b"ERROR busy\n"[..]));
    let (mut service, _handle) = limited(&limit);
    assert_ready_ok!(service.poll_ready());
    let _held = task::spawn(service.call(conn_from("192.0.2.1:1")));

    let (conn, mut client) = duplex_conn("192.0.2.2:2");
    assert_ready_ok!(service.poll_ready());
    let outcome = service.call(conn).await;
    assert!(rejected(&outcome.unwrap_err()).reason() == &Reason::ConnectionLimit { limit: 1 });
    let mut told = String::new();
    client.read_to_string(&mut told).await.unwrap();
    assert_eq!(told, "ERROR busy\n");
}

#[tokio::test(start_paused = true)]
async fn the_refusal_message_never_waits_on_the_client_past_its_deadline() {
    let limit = layer(
        ConnectionLimitLayer::builder(1)
            .refusal_message(vec![b'x'; 64])
            .refusal_write_timeout(Duration::from_millis(250)),
    );
    let (mut service, _handle) = limited(&limit);
    assert_ready_ok!(service.poll_ready());
    let _held = task::spawn(service.call(conn_from("192.0.2.1:1")));

    // A client whose window takes 8 bytes and who never reads.
    let (server_side, _client) = tokio::io::duplex(8);
    let conn = Conn::new(server_side, addr("192.0.2.2:2"), addr("127.0.0.1:80"));
    let began = tokio::time::Instant::now();
    let mut refusal = task::spawn(service.call(conn));
    assert_pending!(refusal.poll());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(refusal.is_woken());
    assert_ready_err!(refusal.poll());
    assert_eq!(began.elapsed(), Duration::from_millis(250));
}

/// A connection refused under a limit of 1 with `refusal_write_timeout(250 ms)`, from a
/// client that has sent a request: the refusal's future and the client's end.
async fn refusal_after_a_request(
    buffer: usize,
    request: &[u8],
) -> (
    task::Spawn<
        tower_bouncer::admission::ResponseFuture<
            mock::future::ResponseFuture<()>,
            DuplexStream,
            Option<GlobalSlot>,
        >,
    >,
    DuplexStream,
) {
    let limit = layer(
        ConnectionLimitLayer::builder(1)
            .refusal_message(&b"ERROR busy\n"[..])
            .refusal_write_timeout(Duration::from_millis(250)),
    );
    let (mut service, _handle) = limited(&limit);
    assert_ready_ok!(service.poll_ready());
    std::mem::forget(task::spawn(service.call(conn_from("192.0.2.1:1"))));

    let (server_side, mut client) = tokio::io::duplex(buffer);
    let conn = Conn::new(server_side, addr("192.0.2.2:2"), addr("127.0.0.1:80"));
    client.write_all(request).await.unwrap();
    assert_ready_ok!(service.poll_ready());
    (task::spawn(service.call(conn)), client)
}

#[tokio::test(start_paused = true)]
async fn a_refusal_waits_for_the_client_to_close_but_never_past_its_deadline() {
    let (mut refusal, mut client) = refusal_after_a_request(4096, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_pending!(refusal.poll());
    // The message, then the end of the server's side...
    let mut told = String::new();
    client.read_to_string(&mut told).await.unwrap();
    assert_eq!(told, "ERROR busy\n");
    // ...but the server reads on, so that closing with the request unread does not
    // reset the connection, until the client closes or the deadline.
    tokio::time::advance(Duration::from_millis(249)).await;
    assert_pending!(refusal.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(refusal.is_woken());
    assert_ready_err!(refusal.poll());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_ends_as_soon_as_the_client_closes() {
    let (mut refusal, mut client) = refusal_after_a_request(4096, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_pending!(refusal.poll());
    client.read_to_end(&mut Vec::new()).await.unwrap();
    drop(client);
    assert!(refusal.is_woken());
    assert_ready_err!(refusal.poll());
}

#[tokio::test(start_paused = true)]
async fn under_a_flood_of_refusals_only_32_wait_for_their_client_to_close() {
    let limit = layer(ConnectionLimitLayer::builder(1).refusal_message(&b"ERROR busy\n"[..]));
    let (mut service, _handle) = limited(&limit);
    assert_ready_ok!(service.poll_ready());
    let _held = task::spawn(service.call(conn_from("192.0.2.1:1")));
    let mut refuse = || {
        let (conn, client) = duplex_conn("192.0.2.2:2");
        assert_ready_ok!(service.poll_ready());
        (task::spawn(service.call(conn)), client)
    };

    let mut waiting: Vec<_> = (0..32).map(|_| refuse()).collect();
    for (refusal, _client) in &mut waiting {
        assert_pending!(refusal.poll());
    }
    // The next is told, what its client sent is read, and it is closed at once.
    let (mut refusal, mut client) = refuse();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_ready_err!(refusal.poll());
    let mut told = String::new();
    client.read_to_string(&mut told).await.unwrap();
    assert_eq!(told, "ERROR busy\n");

    // Once a waiting one ends, the next may wait again.
    drop(waiting.pop());
    let (mut refusal, _client) = refuse();
    assert_pending!(refusal.poll());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_stops_reading_a_client_that_sends_without_end() {
    let flood = vec![b'x'; 1024 * 1024];
    let (mut refusal, _client) = refusal_after_a_request(flood.len(), &flood).await;
    assert_ready_err!(refusal.poll());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_write_timeout_meant_as_forever_waits_without_panicking() {
    let limit = layer(
        ConnectionLimitLayer::builder(1)
            .refusal_message(vec![b'x'; 64])
            .refusal_write_timeout(Duration::MAX),
    );
    let (mut service, _handle) = limited(&limit);
    assert_ready_ok!(service.poll_ready());
    let _held = task::spawn(service.call(conn_from("192.0.2.1:1")));

    // A client whose window takes 8 bytes, and who reads only after a year.
    let (server_side, mut client) = tokio::io::duplex(8);
    let conn = Conn::new(server_side, addr("192.0.2.2:2"), addr("127.0.0.1:80"));
    assert_ready_ok!(service.poll_ready());
    let refusal = tokio::spawn(service.call(conn));
    tokio::time::sleep(Duration::from_secs(365 * 86_400)).await;
    let mut told = Vec::new();
    client.read_to_end(&mut told).await.unwrap();
    drop(client);
    assert_eq!(told, [b'x'; 64]);
    assert!(refusal.await.unwrap().is_err());
}

#[test]
fn a_zero_limit_is_refused_when_built() {
    assert_eq!(
        ConnectionLimitLayer::builder(0).build().unwrap_err(),
        ConfigError::Zero {
            setting: "max_connections"
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_changes_the_cap_and_a_higher_one_wakes_the_accept_loop() {
    let limit = layer(ConnectionLimitLayer::builder(1).backpressure());
    let (mut service, mut handle) = limited(&limit);
    assert_ready_ok!(service.poll_ready());
    let _first = task::spawn(service.call(conn_from("192.0.2.1:1")));
    handle.next_request().await.unwrap();
    // Full, in backpressure mode: the service is not ready...
    assert_pending!(service.poll_ready());
    // ...until the cap is raised.
    limit.set_max(2).unwrap();
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
    assert_eq!(limit.stats().limit, 2);
    assert_eq!(
        limit.set_max(0),
        Err(ConfigError::Zero {
            setting: "max_connections"
        })
    );
    assert_eq!(limit.stats().limit, 2);
}

/// The cap's slots are counted per thread stripe (see `src/limit/layer.rs`): however
/// connections are admitted and end across threads, and whichever thread ends them,
/// no more are ever served at once than the cap, and once all have ended, the whole cap
/// is free again from any one thread.
mod sharded {
    use std::{
        future::Future,
        pin::Pin,
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Context, Poll, Waker},
    };

    use proptest::prelude::*;
    use tower::{Layer, Service, service_fn};
    use tower_bouncer::{BoxError, Conn, limit::ConnectionLimitLayer};

    type Connection = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    /// Counts the connections being served; the count goes down when one's future is
    /// dropped, before the cap's slot is given back.
    struct Serving(Arc<AtomicUsize>);

    impl Drop for Serving {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    struct Counts {
        serving: Arc<AtomicUsize>,
        most: AtomicUsize,
        admitted: AtomicUsize,
    }

    /// Opens a connection through `service`: `Some` while it is served, `None` if the
    /// cap refused it.
    fn open<S>(service: &mut S, n: usize) -> Option<Connection>
    where
        S: Service<Conn<tokio::io::Empty>, Response = (), Error = BoxError>,
        S::Future: Send + 'static,
    {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(service.poll_ready(&mut cx).is_ready());
        let peer = std::net::SocketAddr::from(([192, 0, 2, (n % 250) as u8], 1000));
        let local = "127.0.0.1:80".parse().unwrap();
        let mut connection: Connection =
            Box::pin(service.call(Conn::new(tokio::io::empty(), peer, local)));
        match connection.as_mut().poll(&mut cx) {
            Poll::Pending => Some(connection),
            Poll::Ready(outcome) => {
                assert!(
                    outcome.is_err(),
                    "served connections do not end by themselves"
                );
                None
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        #[test]
        fn never_more_than_the_cap_across_threads(
            // Small caps take every slot from the pool; larger ones hoard per stripe.
            cap in prop_oneof![1usize..10, 120usize..300, 2_000usize..5_000],
            threads in 2usize..6,
            // Per round and thread: connections to open, then how many of those held
            // to end here, and how many to hand to another thread to end there.
            rounds in proptest::collection::vec((0usize..300, 0usize..300, 0usize..100), 1..12),
        ) {
            let layer = ConnectionLimitLayer::builder(cap).build().unwrap();
            let counts = Arc::new(Counts {
                serving: Arc::new(AtomicUsize::new(0)),
                most: AtomicUsize::new(0),
                admitted: AtomicUsize::new(0),
            });
            let protocol = {
                let counts = counts.clone();
                service_fn(move |_: Conn<tokio::io::Empty>| {
                    let now = counts.serving.fetch_add(1, Ordering::SeqCst) + 1;
                    counts.most.fetch_max(now, Ordering::SeqCst);
                    counts.admitted.fetch_add(1, Ordering::SeqCst);
                    let serving = Serving(counts.serving.clone());
                    async move {
                        let _serving = serving;
                        std::future::pending::<Result<(), BoxError>>().await
                    }
                })
            };
            let handed_over: Mutex<Vec<Connection>> = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    let mut service = layer.layer(protocol.clone());
                    let (rounds, handed_over) = (&rounds, &handed_over);
                    scope.spawn(move || {
                        let mut held = Vec::new();
                        for (n, &(open_count, end, hand)) in rounds.iter().enumerate() {
                            held.extend((0..open_count).filter_map(|i| open(&mut service, n * 1000 + i)));
                            held.truncate(held.len().saturating_sub(end));
                            let handed = held.split_off(held.len().saturating_sub(hand));
                            let mut others = handed_over.lock().unwrap();
                            let theirs = std::mem::replace(&mut *others, handed);
                            drop(others);
                            drop(theirs);
                        }
                    });
                }
            });
            handed_over.lock().unwrap().clear();
            prop_assert!(counts.most.load(Ordering::SeqCst) <= cap, "served {} at once under a cap of {cap}", counts.most.load(Ordering::SeqCst));
            prop_assert_eq!(counts.serving.load(Ordering::SeqCst), 0);
            prop_assert_eq!(layer.stats().live, 0);
            prop_assert_eq!(layer.stats().admitted as usize, counts.admitted.load(Ordering::SeqCst));
            // Every slot came back, to whichever hoard: one thread gets the whole cap.
            let mut service = layer.layer(protocol.clone());
            let all: Vec<_> = (0..cap).map(|i| open(&mut service, i)).collect();
            prop_assert!(all.iter().all(Option::is_some), "a slot was lost");
            prop_assert!(open(&mut service, cap).is_none());
            prop_assert_eq!(layer.stats().live, cap);
        }
    }
}
