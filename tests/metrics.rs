//! The layers' metrics move as their stats do: a recorder per test (the
//! layers register their handles when built, so a local recorder in force while they
//! are built is the one they report to, from any task), then a real attack on
//! loopback rendered by the Prometheus exporter and checked by `promtool`.
#![cfg(all(
    feature = "metrics",
    feature = "serve",
    feature = "limit",
    feature = "peer-limit",
    feature = "rate-limit",
    feature = "timeout",
    feature = "login",
    feature = "proxy-protocol",
    feature = "overload"
))]

mod support;

use std::{
    net::IpAddr,
    process::Command,
    sync::{Mutex, atomic::Ordering},
    time::Duration,
};

use metrics::{Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_util::registry::{AtomicStorage, Registry};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream},
    net::{TcpListener, TcpStream},
};
use tokio_test::{assert_ready_ok, task};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    limit::ConnectionLimitLayer,
    login::{AfterFailure, Login},
    metrics::{
        ACCEPT_PAUSE_DURATION, ACCEPT_PAUSED, ACTIVE_CONNECTIONS, BANS_ACTIVE, BANS_ISSUED,
        CONNECTION_DURATION, EVICTIONS, OVERLOAD_PRESSURE, PENALTIES, PROXY_PROTOCOL_ERRORS,
        REJECTED_CONNECTIONS, TIMEOUTS,
    },
    peer_limit::PeerLimitLayer,
    rate_limit::{Rate, RateLimitLayer},
    serve::Server,
    timeout::{TimedIo, TimeoutLayer},
};
use tower_test::mock;

use support::*;

/// A recorder for tests: metrics-util's registry, read without resetting anything
/// (its debugging recorder resets what it reads), and what was described.
struct Recorded {
    registry: Registry<Key, AtomicStorage>,
    /// Each metric's name, unit and description, as given.
    described: Mutex<Vec<(String, Option<Unit>, String)>>,
}

impl Recorder for Recorded {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        self.describe(key, unit, text);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        self.describe(key, unit, text);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        self.describe(key, unit, text);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
        self.registry
            .get_or_create_counter(key, |counter| metrics::Counter::from_arc(counter.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        self.registry
            .get_or_create_gauge(key, |gauge| metrics::Gauge::from_arc(gauge.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        self.registry.get_or_create_histogram(key, |histogram| {
            metrics::Histogram::from_arc(histogram.clone())
        })
    }
}

impl Recorded {
    fn new() -> Self {
        Self {
            registry: Registry::atomic(),
            described: Mutex::default(),
        }
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        self.described
            .lock()
            .unwrap()
            .push((key.as_str().to_owned(), unit, text.into_owned()));
    }

    /// Builds with this recorder in force, so that what is built reports to it.
    fn build<T>(&self, build: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self, build)
    }

    /// The key of `name` with `labels`, as registered.
    fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
        let labels: Vec<Label> = labels.iter().map(|&(k, v)| Label::new(k, v)).collect();
        Key::from_parts(name, labels)
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> u64 {
        self.registry
            .get_counter_handles()
            .get(&Self::key(name, labels))
            .unwrap_or_else(|| panic!("{name} {labels:?} is not registered"))
            .load(Ordering::Relaxed)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> f64 {
        let bits = self
            .registry
            .get_gauge_handles()
            .get(&Self::key(name, labels))
            .unwrap_or_else(|| panic!("{name} {labels:?} is not registered"))
            .load(Ordering::Relaxed);
        f64::from_bits(bits)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Vec<f64> {
        self.registry
            .get_histogram_handles()
            .get(&Self::key(name, labels))
            .unwrap_or_else(|| panic!("{name} {labels:?} is not registered"))
            .data()
    }

    /// `bouncer.rejected_connections` for `layer`, `reason`, `outcome`.
    fn rejected(&self, layer: &'static str, reason: &'static str, outcome: &'static str) -> u64 {
        self.counter(
            REJECTED_CONNECTIONS,
            &[("layer", layer), ("reason", reason), ("outcome", outcome)],
        )
    }
}

type Mock = mock::Mock<Conn<DuplexStream>, ()>;

fn mocked<L: Layer<Mock>>(
    layer: &L,
) -> (
    mock::Spawn<L::Service>,
    mock::Handle<Conn<DuplexStream>, ()>,
) {
    let (inner, handle) = mock::pair();
    (mock::Spawn::new(layer.layer(inner)), handle)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn refusals_are_counted_by_layer_reason_and_outcome_as_the_stats_count_them() {
    let metrics = Recorded::new();
    let (cap, per_peer, rate) = metrics.build(|| {
        (
            ConnectionLimitLayer::builder(1).build().unwrap(),
            PeerLimitLayer::builder(1).dry_run(true).build().unwrap(),
            RateLimitLayer::builder()
                .per_peer(Rate::per_minute(1))
                .build()
                .unwrap(),
        )
    });

    let (mut capped, _cap_handle) = mocked(&cap);
    let (mut limited, _peer_handle) = mocked(&per_peer);
    let (mut rated, _rate_handle) = mocked(&rate);
    // Each layer's futures hold its own kind of place: three lists.
    let (mut held_cap, mut held_per_peer, mut held_rate) = (Vec::new(), Vec::new(), Vec::new());
    for port in 1..=3 {
        let peer = format!("192.0.2.1:{port}");
        assert_ready_ok!(capped.poll_ready());
        held_cap.push(task::spawn(capped.call(conn_from(&peer))));
        assert_ready_ok!(limited.poll_ready());
        held_per_peer.push(task::spawn(limited.call(conn_from(&peer))));
        assert_ready_ok!(rated.poll_ready());
        held_rate.push(task::spawn(rated.call(conn_from(&peer))));
    }
    held_cap
        .iter_mut()
        .for_each(|connection| drop(connection.poll()));
    held_per_peer
        .iter_mut()
        .for_each(|connection| drop(connection.poll()));
    held_rate
        .iter_mut()
        .for_each(|connection| drop(connection.poll()));

    assert_eq!(cap.stats().refused, 2);
    assert_eq!(
        metrics.rejected("connection_limit", "connection_limit", "rejected"),
        2
    );
    assert_eq!(
        metrics.rejected("connection_limit", "connection_limit", "rejected_dry_run"),
        0
    );

    assert_eq!(per_peer.stats().dry_run_refusals, 2);
    assert_eq!(
        metrics.rejected("peer_limit", "peer_limit", "rejected_dry_run"),
        2
    );
    assert_eq!(metrics.rejected("peer_limit", "peer_limit", "rejected"), 0);
    assert_eq!(
        metrics.rejected("peer_limit", "peer_table_full", "rejected"),
        0
    );

    assert_eq!(rate.stats().refused_peer_rate, 2);
    assert_eq!(metrics.rejected("rate_limit", "peer_rate", "rejected"), 2);
    assert_eq!(metrics.rejected("rate_limit", "global_rate", "rejected"), 0);
}

#[tokio::test(start_paused = true)]
async fn every_metric_is_described_with_a_unit() {
    let metrics = Recorded::new();
    let _cap = metrics.build(|| ConnectionLimitLayer::builder(1).build().unwrap());
    let described = metrics
        .described
        .lock()
        .unwrap()
        .iter()
        .find(|(name, ..)| name == REJECTED_CONNECTIONS)
        .map(|(_, unit, text)| (*unit, text.clone()))
        .expect("described");
    assert_eq!(described.0, Some(Unit::Count));
    assert!(!described.1.is_empty());
}

/// Reads until the client closes.
async fn drain(mut conn: Conn<TimedIo<DuplexStream>>) -> Result<(), BoxError> {
    let mut sink = Vec::new();
    conn.io_mut().read_to_end(&mut sink).await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_counted_by_kind() {
    let metrics = Recorded::new();
    let timeouts = metrics.build(|| {
        TimeoutLayer::builder()
            .first_byte(Duration::from_secs(5))
            .idle(Duration::from_secs(60))
            .build()
            .unwrap()
    });
    let service = timeouts.layer(service_fn(drain));
    let (conn, _client) = duplex_conn("192.0.2.1:1");
    let outcome = within(Duration::from_secs(600), service.oneshot(conn)).await;
    assert!(outcome.is_err());

    assert_eq!(timeouts.stats().first_byte, 1);
    assert_eq!(metrics.counter(TIMEOUTS, &[("kind", "first_byte")]), 1);
    assert_eq!(metrics.counter(TIMEOUTS, &[("kind", "idle")]), 0);
}

#[tokio::test(start_paused = true)]
async fn bans_penalties_and_evictions_are_counted_by_reason() {
    let metrics = Recorded::new();
    let login = metrics.build(|| Login::builder().max_failures(1).build().unwrap());
    let protocol = service_fn(|conn: Conn<DuplexStream>| async move {
        let session = conn.login_session().unwrap().clone();
        assert_eq!(session.failed(), AfterFailure::Closing);
        Ok::<_, BoxError>(())
    });
    let service = ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(login.session_layer())
        .service(protocol);

    service
        .clone()
        .oneshot(conn_from("192.0.2.1:1"))
        .await
        .unwrap();
    let banned = service.clone().oneshot(conn_from("192.0.2.1:2")).await;
    assert!(banned.is_err());
    login
        .bans()
        .ban(ip("192.0.2.9"), Duration::from_secs(60))
        .unwrap();

    let stats = login.stats();
    assert_eq!(stats.bans, 1);
    assert_eq!(
        metrics.counter(BANS_ISSUED, &[("reason", "failed_login")]),
        1
    );
    assert_eq!(metrics.counter(BANS_ISSUED, &[("reason", "operator")]), 1);
    assert_eq!(
        metrics.counter(BANS_ISSUED, &[("reason", "first_byte_timeout")]),
        0
    );
    assert_eq!(stats.failed_logins, 1);
    assert_eq!(metrics.counter(PENALTIES, &[("kind", "failed_login")]), 1);
    assert_eq!(stats.evicted_after_failures, 1);
    assert_eq!(
        metrics.counter(EVICTIONS, &[("reason", "failed_logins")]),
        1
    );
    assert_eq!(stats.refused_banned, 1);
    assert_eq!(metrics.rejected("ban", "banned", "rejected"), 1);

    // The count of bans in force follows within a few seconds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(metrics.gauge(BANS_ACTIVE, &[]), 2.0);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(metrics.gauge(BANS_ACTIVE, &[]), 0.0, "both ran out");
}

/// Polls `condition` every 10 ms for up to 5 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 5 s");
}

/// Says hello, then holds the connection until the client closes.
async fn hello(mut conn: Conn<TcpStream>) -> Result<(), BoxError> {
    conn.io_mut().write_all(b"hello\n").await?;
    let mut rest = Vec::new();
    conn.io_mut().read_to_end(&mut rest).await?;
    Ok(())
}

async fn greeted(client: &mut TcpStream) {
    let mut line = [0; 6];
    within(PATIENCE, client.read_exact(&mut line))
        .await
        .unwrap();
    assert_eq!(&line, b"hello\n");
}

#[tokio::test]
async fn the_accept_loop_counts_active_connections_then_their_duration() {
    let metrics = Recorded::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = metrics.build(|| {
        Server::new(listener)
            .name("public")
            .serve(service_fn(hello))
    });
    let task = tokio::spawn(serving);
    let public = [("listener", "public")];

    let mut first = connect_from(1, addr).await;
    let mut second = connect_from(1, addr).await;
    greeted(&mut first).await;
    greeted(&mut second).await;
    assert_eq!(metrics.gauge(ACTIVE_CONNECTIONS, &public), 2.0);

    drop((first, second));
    eventually("both connections end", || {
        metrics.gauge(ACTIVE_CONNECTIONS, &public) == 0.0
    })
    .await;
    let durations = metrics.histogram(CONNECTION_DURATION, &public);
    assert_eq!(durations.len(), 2);
    assert!(
        durations
            .iter()
            .all(|seconds| *seconds >= 0.0 && *seconds < 60.0)
    );
    task.abort();
}

#[tokio::test]
async fn the_accept_loop_says_when_backpressure_pauses_it() {
    let metrics = Recorded::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = metrics.build(|| {
        let cap = ConnectionLimitLayer::builder(1)
            .backpressure()
            .build()
            .unwrap();
        Server::new(listener).serve(cap.layer(service_fn(hello)))
    });
    let task = tokio::spawn(serving);
    let default = [("listener", "default")];

    let mut first = connect_from(1, addr).await;
    greeted(&mut first).await;
    eventually("the loop pauses", || {
        metrics.gauge(ACCEPT_PAUSED, &default) == 1.0
    })
    .await;
    // A client waits in the backlog until the first leaves; then the cap is full again.
    let mut waiting = connect_from(1, addr).await;
    drop(first);
    greeted(&mut waiting).await;
    assert_eq!(metrics.histogram(ACCEPT_PAUSE_DURATION, &default).len(), 1);
    eventually("the loop pauses again", || {
        metrics.gauge(ACCEPT_PAUSED, &default) == 1.0
    })
    .await;
    drop(waiting);
    eventually("the loop accepts again", || {
        metrics.gauge(ACCEPT_PAUSED, &default) == 0.0
    })
    .await;
    assert_eq!(metrics.histogram(ACCEPT_PAUSE_DURATION, &default).len(), 2);
    task.abort();
}

/// A line protocol: `bad` is a failed login, answered `DENIED`; anything else `OK`.
async fn logins(conn: Conn<TcpStream>) -> Result<(), BoxError> {
    let session = conn.login_session().cloned().unwrap();
    let mut io = BufReader::new(conn.into_io());
    let mut line = String::new();
    while io.read_line(&mut line).await? > 0 {
        if line.trim() == "bad" {
            io.get_mut().write_all(b"DENIED\n").await?;
            if session.failed() == AfterFailure::Closing {
                return Ok(());
            }
        } else {
            io.get_mut().write_all(b"OK\n").await?;
        }
        line.clear();
    }
    Ok(())
}

/// What the server answers to `line`, or what it sent before closing.
async fn ask(client: &mut TcpStream, line: &str) -> String {
    client.write_all(line.as_bytes()).await.ok();
    let mut answer = Vec::new();
    let mut byte = [0];
    while answer.last() != Some(&b'\n') {
        match within(PATIENCE, client.read(&mut byte)).await {
            Ok(1) => answer.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_prometheus_exposition_after_an_attack_passes_promtool() {
    let recorder = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .build_recorder();
    let prometheus = recorder.handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (serving, login) = metrics::with_local_recorder(&recorder, || {
        let login = Login::builder().max_failures(1).build().unwrap();
        let service = ServiceBuilder::new()
            .layer(login.ban_layer())
            .layer(PeerLimitLayer::builder(1).build().unwrap())
            .layer(ConnectionLimitLayer::builder(100).build().unwrap())
            .layer(login.session_layer())
            .service(service_fn(logins));
        (Server::new(listener).name("public").serve(service), login)
    });
    let task = tokio::spawn(serving);

    // One peer over its cap of one connection, three times.
    let mut held = connect_from(2, addr).await;
    assert_eq!(ask(&mut held, "hi\n").await, "OK\n");
    for _ in 0..3 {
        let mut refused = connect_from(2, addr).await;
        assert_eq!(ask(&mut refused, "hi\n").await, "");
    }
    // Another fails a login, is banned, and comes back.
    let mut attacker = connect_from(3, addr).await;
    assert_eq!(ask(&mut attacker, "bad\n").await, "DENIED\n");
    let mut again = connect_from(3, addr).await;
    assert_eq!(ask(&mut again, "hi\n").await, "");
    assert_eq!(login.stats().refused_banned, 1);

    let exposition = prometheus.render();
    for line in [
        r#"bouncer_rejected_connections_total{layer="peer_limit",reason="peer_limit",outcome="rejected"} 3"#,
        r#"bouncer_rejected_connections_total{layer="ban",reason="banned",outcome="rejected"} 1"#,
        r#"bouncer_bans_issued_total{reason="failed_login"} 1"#,
        r#"bouncer_penalties_total{kind="over_limit"} 3"#,
        r#"bouncer_active_connections{listener="public"} 1"#,
    ] {
        assert!(exposition.contains(line), "{line} is not in:\n{exposition}");
    }
    let file = std::env::temp_dir().join(format!("bouncer-metrics-{}.prom", std::process::id()));
    std::fs::write(&file, &exposition).unwrap();
    let checked = Command::new(support::promtool())
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    std::fs::remove_file(&file).ok();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn the_overload_pressure_is_a_gauge_set_at_each_sample() {
    let metrics = Recorded::new();
    let overload = metrics.build(|| {
        tower_bouncer::overload::Overload::builder()
            .descriptors(false)
            .monitor(|| 0.9)
            .thresholds(0.8, 1.0)
            .sample_every(Duration::from_secs(1))
            .build()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pressure = metrics.gauge(OVERLOAD_PRESSURE, &[]);
    assert!((pressure - 0.5).abs() < 1e-9, "{pressure}");
    assert!((overload.stats().pressure - pressure).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn proxy_protocol_errors_are_counted_by_reason() {
    use tower_bouncer::proxy_protocol::ProxyProtocolLayer;

    let metrics = Recorded::new();
    let proxy = metrics.build(|| {
        ProxyProtocolLayer::builder()
            .trusted(["192.0.2.0/24".parse().unwrap()])
            .build()
            .unwrap()
    });
    let service = proxy.layer(service_fn(|_: Conn<_>| async { Ok::<_, BoxError>(()) }));
    let (conn, mut client) = duplex_conn("192.0.2.1:1");
    client
        .write_all(b"PROXY TCP4 192.0.2.7 nowhere 40000 443\r\n")
        .await
        .unwrap();
    assert!(service.oneshot(conn).await.is_err());

    assert_eq!(proxy.stats().refused_malformed, 1);
    assert_eq!(
        metrics.counter(PROXY_PROTOCOL_ERRORS, &[("reason", "malformed")]),
        1
    );
    assert_eq!(
        metrics.counter(PROXY_PROTOCOL_ERRORS, &[("reason", "missing")]),
        0
    );
}

#[cfg(feature = "tls")]
#[tokio::test(start_paused = true)]
async fn tls_handshake_errors_are_counted_by_reason() {
    use tower_bouncer::{metrics::TLS_HANDSHAKE_ERRORS, tls::TlsLayer};

    let metrics = Recorded::new();
    let certificate = support::tls::generate().certificate();
    let tls = metrics.build(|| TlsLayer::builder(certificate).build().unwrap());
    let service = tls.layer(service_fn(|_: Conn<_>| async { Ok::<_, BoxError>(()) }));
    let (conn, mut client) = duplex_conn("192.0.2.1:1");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(within(PATIENCE, service.oneshot(conn)).await.is_err());

    assert_eq!(tls.stats().handshakes_failed, 1);
    assert_eq!(
        metrics.counter(TLS_HANDSHAKE_ERRORS, &[("reason", "protocol")]),
        1
    );
    assert_eq!(
        metrics.counter(TLS_HANDSHAKE_ERRORS, &[("reason", "timeout")]),
        0
    );
}

#[cfg(feature = "fleet")]
mod fleet {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use tokio::sync::mpsc;
    use tower_bouncer::{
        fleet::{
            Backend, BackendError, BoxFuture, Change, Decision, Fleet, FleetPolicy, Link, Snapshot,
        },
        metrics::{FLEET_CONNECTED, FLEET_DROPPED, FLEET_FAILURES, FLEET_PENDING},
    };

    use super::*;

    /// A store that takes everything while it is up, and never decides.
    #[derive(Clone, Default)]
    struct Store {
        down: Arc<AtomicBool>,
        /// The link's decisions, held open while it lives.
        decisions: Arc<Mutex<Option<mpsc::Sender<Decision>>>>,
    }

    impl Store {
        fn up(&self) -> Result<(), BackendError> {
            match self.down.load(Ordering::Relaxed) {
                true => Err(BackendError::new("the store is down")),
                false => Ok(()),
            }
        }
    }

    impl Backend for Store {
        fn connect(
            &self,
            _: FleetPolicy,
            decisions: mpsc::Sender<Decision>,
        ) -> BoxFuture<'_, Result<Box<dyn Link>, BackendError>> {
            Box::pin(async move {
                self.up()?;
                *self.decisions.lock().unwrap() = Some(decisions);
                Ok(Box::new(self.clone()) as Box<dyn Link>)
            })
        }
    }

    impl Link for Store {
        fn send<'a>(&'a mut self, _: &'a Change) -> BoxFuture<'a, Result<(), BackendError>> {
            Box::pin(async move { self.up() })
        }

        fn snapshot(&mut self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
            Box::pin(async move { self.up().map(|()| Snapshot::default()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_fleet_link_reports_its_health() {
        let metrics = Recorded::new();
        let store = Store::default();
        store.down.store(true, Ordering::Relaxed);
        let (login, fleet) = metrics.build(|| {
            let login = Login::builder().build().unwrap();
            let fleet = Fleet::builder(store.clone()).join(&login).unwrap();
            (login, fleet)
        });
        login
            .bans()
            .ban(ip("192.0.2.1"), Duration::from_secs(60))
            .unwrap();
        eventually_paused("connecting fails", || fleet.stats().failures >= 2).await;
        assert_eq!(metrics.counter(FLEET_FAILURES, &[]), fleet.stats().failures);
        assert_eq!(metrics.gauge(FLEET_CONNECTED, &[]), 0.0);
        assert_eq!(metrics.gauge(FLEET_PENDING, &[]), 1.0, "the ban waits");

        store.down.store(false, Ordering::Relaxed);
        eventually_paused("the link is made", || fleet.stats().connected).await;
        eventually_paused("the ban is sent", || fleet.stats().pending == 0).await;
        assert_eq!(metrics.gauge(FLEET_CONNECTED, &[]), 1.0);
        assert_eq!(metrics.gauge(FLEET_PENDING, &[]), 0.0);
        assert_eq!(metrics.counter(FLEET_DROPPED, &[]), 0);
    }

    /// Polls `condition` every 100 ms of paused time, for up to 10 minutes of it.
    async fn eventually_paused(what: &str, mut condition: impl FnMut() -> bool) {
        for _ in 0..6000 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: not within 10 minutes");
    }
}

/// An accept loop dropped while backpressure pauses it (its task aborted, or
/// `Bouncer::serve_until` dropped in a `select!`) waits for nothing any more: the
/// paused gauge must not stay at 1, where an alert on it fires for good.
#[tokio::test]
async fn an_accept_loop_dropped_while_paused_is_no_longer_counted_as_paused() {
    let metrics = Recorded::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = metrics.build(|| {
        let cap = ConnectionLimitLayer::builder(1)
            .backpressure()
            .build()
            .unwrap();
        Server::new(listener).serve(cap.layer(service_fn(hello)))
    });
    let task = tokio::spawn(serving);
    let default = [("listener", "default")];
    let mut first = connect_from(1, addr).await;
    greeted(&mut first).await;
    eventually("the loop pauses", || {
        metrics.gauge(ACCEPT_PAUSED, &default) == 1.0
    })
    .await;
    task.abort();
    assert!(within(PATIENCE, task).await.unwrap_err().is_cancelled());
    assert_eq!(
        metrics.gauge(ACCEPT_PAUSED, &default),
        0.0,
        "the accept loop is gone, and still counted as paused"
    );
    drop(first);
}

/// `bouncer.accept.paused` counts the paused loops of a name: two unnamed listeners (an
/// IPv4 and an IPv6 one, say) are both `default`. One loop that ends, here dropped
/// while paused, must not set the gauge to 0 while the other is still paused.
#[tokio::test]
async fn two_paused_accept_loops_of_one_name_are_counted_apart() {
    let metrics = Recorded::new();
    let default = [("listener", "default")];
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = metrics.build(|| {
            let cap = ConnectionLimitLayer::builder(1)
                .backpressure()
                .build()
                .unwrap();
            Server::new(listener).serve(cap.layer(service_fn(hello)))
        });
        tasks.push(tokio::spawn(serving));
        let mut client = connect_from(1, addr).await;
        greeted(&mut client).await;
        clients.push(client);
    }
    eventually("both loops pause", || {
        metrics.gauge(ACCEPT_PAUSED, &default) == 2.0
    })
    .await;

    let first = tasks.remove(0);
    first.abort();
    assert!(within(PATIENCE, first).await.unwrap_err().is_cancelled());
    assert_eq!(
        metrics.gauge(ACCEPT_PAUSED, &default),
        1.0,
        "one loop is gone, the other still paused"
    );
    let second = tasks.remove(0);
    second.abort();
    assert!(within(PATIENCE, second).await.unwrap_err().is_cancelled());
    assert_eq!(metrics.gauge(ACCEPT_PAUSED, &default), 0.0);
    drop(clients);
}
