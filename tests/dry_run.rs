//! Dry run: every admission layer makes its decision and counts it, and serves the
//! connection anyway, its place taken; on tower-test mocks and paused time.

mod support;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::DuplexStream;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    limit::ConnectionLimitLayer,
    login::Login,
    peer_limit::PeerLimitLayer,
    rate_limit::{Rate, RateLimitLayer},
};
use tower_test::mock;

use support::*;

type Mock = mock::Mock<Conn<DuplexStream>, ()>;
type Handle = mock::Handle<Conn<DuplexStream>, ()>;

fn mocked<L: Layer<Mock>>(layer: &L) -> (mock::Spawn<L::Service>, Handle) {
    let (inner, handle) = mock::pair();
    (mock::Spawn::new(layer.layer(inner)), handle)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_connection_limit_in_dry_run_serves_over_its_cap_and_counts_it() {
    let limit = ConnectionLimitLayer::builder(1)
        .dry_run(true)
        .build()
        .unwrap();
    let (mut service, mut handle) = mocked(&limit);

    assert_ready_ok!(service.poll_ready());
    let _first = task::spawn(service.call(conn_from("192.0.2.1:1")));
    assert_ready_ok!(service.poll_ready());
    let mut second = task::spawn(service.call(conn_from("192.0.2.2:2")));
    assert_pending!(second.poll());
    assert_eq!(
        handle.next_request().await.unwrap().0.peer_addr(),
        addr("192.0.2.1:1")
    );
    let (_, respond) = handle.next_request().await.unwrap();
    assert_eq!(limit.stats().live, 2, "the place is taken over the cap");
    assert_eq!(limit.stats().dry_run_refusals, 1);
    assert_eq!(limit.stats().refused, 0);
    assert_eq!(limit.stats().admitted, 2);

    respond.send_response(());
    assert_ready_ok!(second.poll());
    assert_eq!(limit.stats().live, 1, "and given back when it ends");
}

#[tokio::test(start_paused = true)]
async fn a_connection_limit_enforced_refuses_and_counts_no_dry_run() {
    let limit = ConnectionLimitLayer::builder(1).build().unwrap();
    let (mut service, _handle) = mocked(&limit);

    assert_ready_ok!(service.poll_ready());
    let _first = task::spawn(service.call(conn_from("192.0.2.1:1")));
    assert_ready_ok!(service.poll_ready());
    let mut second = task::spawn(service.call(conn_from("192.0.2.2:2")));
    assert_ready_err!(second.poll());
    assert_eq!(limit.stats().refused, 1);
    assert_eq!(limit.stats().dry_run_refusals, 0);
}

#[tokio::test(start_paused = true)]
async fn backpressure_in_dry_run_keeps_accepting() {
    let limit = ConnectionLimitLayer::builder(1)
        .backpressure()
        .dry_run(true)
        .build()
        .unwrap();
    let (mut service, _handle) = mocked(&limit);

    assert_ready_ok!(service.poll_ready());
    let _first = task::spawn(service.call(conn_from("192.0.2.1:1")));
    assert_ready_ok!(
        service.poll_ready(),
        "full, yet ready: dry run never pauses"
    );
    let mut second = task::spawn(service.call(conn_from("192.0.2.2:2")));
    assert_pending!(second.poll());
    assert_eq!(limit.stats().dry_run_refusals, 1);
}

#[tokio::test(start_paused = true)]
async fn a_per_peer_limit_in_dry_run_serves_and_keeps_the_peer_count_true() {
    let per_peer = PeerLimitLayer::builder(1).dry_run(true).build().unwrap();
    let (mut service, mut handle) = mocked(&per_peer);

    assert_ready_ok!(service.poll_ready());
    let mut first = task::spawn(service.call(conn_from("192.0.2.1:1")));
    assert_ready_ok!(service.poll_ready());
    let _second = task::spawn(service.call(conn_from("192.0.2.1:2")));
    let (_, respond_first) = handle.next_request().await.unwrap();
    handle.next_request().await.unwrap();
    assert_eq!(per_peer.stats().dry_run_refusals, 1);
    assert_eq!(per_peer.stats().refused_peer_limit, 0);

    // The peer still holds one: a third is over the limit too.
    respond_first.send_response(());
    assert_ready_ok!(first.poll());
    assert_ready_ok!(service.poll_ready());
    let _third = task::spawn(service.call(conn_from("192.0.2.1:3")));
    handle.next_request().await.unwrap();
    assert_eq!(per_peer.stats().dry_run_refusals, 2);
    assert_eq!(per_peer.stats().admitted, 3);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_in_dry_run_serves_past_the_rate_and_counts_it() {
    let rate = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(1))
        .global(Rate::per_minute(1))
        .global_backpressure()
        .dry_run(true)
        .build()
        .unwrap();
    let (mut service, mut handle) = mocked(&rate);

    // Past the peer's rate, then past the global rate.
    for peer in ["192.0.2.1:1", "192.0.2.1:2", "192.0.2.2:1"] {
        assert_ready_ok!(service.poll_ready(), "dry run never waits for the rate");
        let _served = task::spawn(service.call(conn_from(peer)));
        handle.next_request().await.unwrap();
    }
    let stats = rate.stats();
    assert_eq!(stats.dry_run_refusals, 2);
    assert_eq!((stats.refused_peer_rate, stats.refused_global_rate), (0, 0));
    assert_eq!(stats.admitted, 3);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_enforced_refuses_past_the_rate() {
    let rate = RateLimitLayer::builder()
        .per_peer(Rate::per_minute(1))
        .build()
        .unwrap();
    let (mut service, _handle) = mocked(&rate);
    assert_ready_ok!(service.poll_ready());
    let _first = task::spawn(service.call(conn_from("192.0.2.1:1")));
    assert_ready_ok!(service.poll_ready());
    let mut second = task::spawn(service.call(conn_from("192.0.2.1:2")));
    assert_ready_err!(second.poll());
    assert_eq!(rate.stats().refused_peer_rate, 1);
    assert_eq!(rate.stats().dry_run_refusals, 0);
}

#[tokio::test(start_paused = true)]
async fn a_ban_check_in_dry_run_serves_a_banned_peer_and_counts_it() {
    let login = Login::builder().dry_run(true).build().unwrap();
    login
        .bans()
        .ban(ip("192.0.2.1"), Duration::from_secs(60))
        .unwrap();
    let (mut service, mut handle) = mocked(&login.ban_layer());

    assert_ready_ok!(service.poll_ready());
    let mut served = task::spawn(service.call(conn_from("192.0.2.1:1")));
    assert_pending!(served.poll());
    handle.next_request().await.unwrap();
    let stats = login.stats();
    assert_eq!(stats.dry_run_refusals, 1);
    assert_eq!(stats.refused_banned, 0);
}

#[tokio::test(start_paused = true)]
async fn a_ban_check_enforced_refuses_a_banned_peer() {
    let login = Login::builder().build().unwrap();
    login
        .bans()
        .ban(ip("192.0.2.1"), Duration::from_secs(60))
        .unwrap();
    let (mut service, _handle) = mocked(&login.ban_layer());
    assert_ready_ok!(service.poll_ready());
    let mut refused = task::spawn(service.call(conn_from("192.0.2.1:1")));
    assert_ready_err!(refused.poll());
    assert_eq!(login.stats().refused_banned, 1);
    assert_eq!(login.stats().dry_run_refusals, 0);
}

/// A connection from `peer` through `service`, in a task the test polls.
async fn open<S>(service: &mut S, peer: &str) -> task::Spawn<S::Future>
where
    S: Service<Conn<DuplexStream>>,
    S::Error: std::fmt::Debug,
{
    task::spawn(service.ready().await.unwrap().call(conn_from(peer)))
}

/// Holds each connection, with its session, until the test ends.
fn holding() -> impl Service<
    Conn<DuplexStream>,
    Response = (),
    Error = BoxError,
    Future = impl Future<Output = Result<(), BoxError>> + Send,
> + Clone {
    service_fn(|conn: Conn<DuplexStream>| async move {
        let _session = conn.login_session().cloned();
        std::future::pending::<()>().await;
        Ok(())
    })
}

#[tokio::test(start_paused = true)]
async fn a_startups_budget_in_dry_run_serves_and_counts_the_connection_waiting() {
    let login = Login::builder()
        .per_source_max_startups(1)
        .dry_run(true)
        .build()
        .unwrap();
    let mut service = login.session_layer().layer(holding());

    let mut first = open(&mut service, "192.0.2.1:1").await;
    let mut second = open(&mut service, "192.0.2.1:2").await;
    assert_pending!(first.poll());
    assert_pending!(second.poll(), "served, not refused");
    let stats = login.stats();
    assert_eq!(stats.dry_run_refusals, 1);
    assert_eq!(stats.refused_startups, 0);
    assert_eq!(stats.unauthenticated, 2, "it waits in the budget too");
    assert_eq!(stats.sessions, 2);
    drop(first);
    drop(second);
    assert_eq!(login.stats().unauthenticated, 0);
}

#[tokio::test(start_paused = true)]
async fn a_startups_budget_enforced_refuses() {
    let login = Login::builder().per_source_max_startups(1).build().unwrap();
    let mut service = login.session_layer().layer(holding());
    let mut first = open(&mut service, "192.0.2.1:1").await;
    let mut second = open(&mut service, "192.0.2.1:2").await;
    assert_pending!(first.poll());
    assert_ready_err!(second.poll());
    assert_eq!(login.stats().refused_startups, 1);
    assert_eq!(login.stats().dry_run_refusals, 0);
}

#[tokio::test(start_paused = true)]
async fn dry_run_says_it_would_refuse_at_most_once_a_second() {
    let logged = Arc::new(Mutex::new(Vec::new()));
    let _capture = capture_warnings(logged.clone());
    let per_peer = PeerLimitLayer::builder(1).dry_run(true).build().unwrap();
    let (mut service, mut handle) = mocked(&per_peer);

    let mut served = Vec::new();
    for port in 1..=4 {
        assert_ready_ok!(service.poll_ready());
        served.push(task::spawn(
            service.call(conn_from(&format!("192.0.2.1:{port}"))),
        ));
        handle.next_request().await.unwrap();
    }
    assert_eq!(per_peer.stats().dry_run_refusals, 3);
    let logged = logged.lock().unwrap();
    assert_eq!(logged.len(), 1, "throttled: {logged:?}");
    assert!(
        logged[0].contains("would be refused") && logged[0].contains("192.0.2.1:2"),
        "{}",
        logged[0]
    );
}
