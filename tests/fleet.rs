//! Replicas sharing bans and offences through a real Redis, started by each test on a
//! free loopback port: two (or three) logins in this process, each with its own fleet
//! membership and its own connections to Redis.
#![cfg(feature = "redis")]

mod support;

#[path = "../examples/siege/redis.rs"]
mod redis_server;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use redis_server::{Redis, RedisBinary};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tower::{Layer, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    fleet::{Fleet, FleetBuilder, RedisBackend},
    login::{AfterFailure, Login, LoginBuilder},
};

use support::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A fresh Redis; `redis-server` is installed first if missing (as root), once for
/// all the tests here.
fn redis() -> Redis {
    static BINARY: std::sync::OnceLock<Option<RedisBinary>> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(RedisBinary::find_or_install)
        .as_ref()
        .expect("redis-server is installed (apt-get install redis-server; .ci/run does)")
        .start()
}

/// One replica: a login in the fleet on `redis`, under `prefix`.
struct Replica {
    login: Login,
    fleet: Fleet,
}

impl Replica {
    /// A login from `builder` joined to the fleet `fleet` builds.
    fn on(fleet: FleetBuilder, builder: LoginBuilder) -> Self {
        let login = builder.build().unwrap();
        let fleet = fleet.join(&login).unwrap();
        Self { login, fleet }
    }

    fn join(redis: &Redis, builder: LoginBuilder) -> Self {
        Self::join_prefixed(redis, "test", builder)
    }

    fn join_prefixed(redis: &Redis, prefix: &str, builder: LoginBuilder) -> Self {
        let backend = RedisBackend::new(&redis.url())
            .unwrap()
            .prefix(prefix)
            .unwrap()
            .timeout(Duration::from_millis(500))
            .unwrap();
        Self::on(Fleet::builder(backend).resync_every(secs(1)), builder)
    }

    async fn connected(&self) {
        eventually("the replica connects", || self.fleet.stats().connected).await;
    }

    fn banned(&self, peer: &str) -> bool {
        self.login.bans().banned_for(ip(peer)).is_some()
    }

    /// A connection from `peer` that fails one login; its reply, or `None` if refused.
    async fn fail_once(&self, peer: &str) -> Option<String> {
        let (conn, client) = tokio::io::duplex(1024);
        let conn = Conn::new(conn, addr(&format!("{peer}:1")), addr("127.0.0.1:80"));
        let service = self
            .login
            .ban_layer()
            .layer(self.login.session_layer().layer(service_fn(deny)));
        let connection = tokio::spawn(service.oneshot(conn));
        let mut client = BufReader::new(client);
        let mut reply = String::new();
        client.read_line(&mut reply).await.ok()?;
        let _ = within(PATIENCE, connection).await;
        (reply.trim_end() == "DENIED").then(|| reply.trim_end().to_owned())
    }
}

/// A protocol whose every connection fails one login.
async fn deny(conn: Conn<DuplexStream>) -> Result<(), BoxError> {
    let session = conn.login_session().cloned().unwrap();
    let mut io = conn.into_io();
    io.write_all(b"DENIED\n").await?;
    io.flush().await?;
    assert_eq!(session.failed(), AfterFailure::Closing);
    Ok(())
}

/// Waits (up to [`PATIENCE`]) for `condition`.
async fn eventually(what: &str, condition: impl Fn() -> bool) -> Duration {
    let began = Instant::now();
    while !condition() {
        assert!(began.elapsed() < PATIENCE, "waited too long: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    began.elapsed()
}

fn policy() -> LoginBuilder {
    Login::builder()
        .max_failures(4)
        .failure_window(secs(600))
        .ban(secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_on_one_replica_reaches_the_other_and_so_does_its_unban() {
    let redis = redis();
    let a = Replica::join(&redis, policy());
    let b = Replica::join(&redis, policy());
    a.connected().await;
    b.connected().await;

    a.login.bans().ban(ip("192.0.2.7"), secs(60)).unwrap();
    let took = eventually("B applies A's ban", || b.banned("192.0.2.7")).await;
    assert!(took < secs(1), "the ban took {took:?}");
    assert_eq!(b.fail_once("192.0.2.7").await, None, "B refuses the peer");
    let remaining = b.login.bans().banned_for(ip("192.0.2.7")).unwrap();
    assert!(
        remaining > secs(55) && remaining <= secs(60),
        "{remaining:?}"
    );

    assert!(b.login.bans().unban(ip("192.0.2.7")));
    eventually("A lifts it on B's unban", || !a.banned("192.0.2.7")).await;
    assert_eq!(a.fail_once("192.0.2.7").await.as_deref(), Some("DENIED"));

    // A network banned whole travels too.
    b.login
        .bans()
        .ban_network("198.51.100.0/24".parse().unwrap(), secs(30))
        .unwrap();
    eventually("A applies the network ban", || a.banned("198.51.100.9")).await;
    assert!(a.fleet.stats().applied >= 2);
    assert_eq!(a.fleet.stats().failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_spread_over_replicas_ban_at_the_fleet_threshold_and_escalate_by_the_fleet_count()
{
    let redis = redis();
    let a = Replica::join(&redis, policy());
    let b = Replica::join(&redis, policy());
    a.connected().await;
    b.connected().await;

    // 4 failures ban; 2 on each replica, which alone would ban at 4 each (8 in all).
    for replica in [&a, &b, &a] {
        assert_eq!(
            replica.fail_once("203.0.113.5").await.as_deref(),
            Some("DENIED")
        );
    }
    // Every failure has reached the store before the last one.
    eventually("three offences sent", || {
        a.fleet.stats().sent + b.fleet.stats().sent >= 3
    })
    .await;
    assert!(!a.banned("203.0.113.5") && !b.banned("203.0.113.5"));
    assert_eq!(b.fail_once("203.0.113.5").await.as_deref(), Some("DENIED"));
    eventually("A bans at the fleet's fourth failure", || {
        a.banned("203.0.113.5")
    })
    .await;
    eventually("B bans at the fleet's fourth failure", || {
        b.banned("203.0.113.5")
    })
    .await;
    assert_eq!(
        a.login.stats().bans + b.login.stats().bans,
        0,
        "neither banned alone"
    );
    let first = a.login.bans().banned_for(ip("203.0.113.5")).unwrap();
    assert!(first <= secs(60) && first > secs(55), "{first:?}");

    // Once it has run out, the next four failures, spread the same way, ban for twice
    // as long: the fleet's second ban of the peer.
    // Real time, under load: a ban is read a moment after it starts, so each length is
    // checked to within one first ban (round 2's lies above round 1's whole length).
    let first_ban = secs(3);
    let a = Replica::join(&redis, policy().ban(first_ban).failure_window(secs(600)));
    let b = Replica::join(&redis, policy().ban(first_ban).failure_window(secs(600)));
    a.connected().await;
    b.connected().await;
    for round in 1..=2 {
        for replica in [&a, &b, &a, &b] {
            assert_eq!(
                replica.fail_once("203.0.113.6").await.as_deref(),
                Some("DENIED")
            );
            tokio::task::yield_now().await;
        }
        eventually("A bans", || a.banned("203.0.113.6")).await;
        let length = a.login.bans().banned_for(ip("203.0.113.6")).unwrap();
        let expected = first_ban * round;
        assert!(
            length <= expected && length > expected - first_ban,
            "ban {round}: {length:?}"
        );
        let listed = a.login.bans().list();
        let ban = listed
            .iter()
            .find(|ban| ban.key.network().contains(&ip("203.0.113.6")));
        assert_eq!(ban.unwrap().offences, round);
        eventually("the ban runs out", || {
            !a.banned("203.0.113.6") && !b.banned("203.0.113.6")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_outlive_every_replica() {
    let redis = redis();
    let a = Replica::join(&redis, policy());
    a.connected().await;
    a.login.bans().ban(ip("192.0.2.8"), secs(300)).unwrap();
    eventually("the ban reaches the store", || a.fleet.stats().pending == 0).await;
    drop(a);

    let restarted = Replica::join(&redis, policy());
    eventually("a new replica loads the ban", || {
        restarted.banned("192.0.2.8")
    })
    .await;
    let remaining = restarted.login.bans().banned_for(ip("192.0.2.8")).unwrap();
    assert!(remaining > secs(290), "{remaining:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_under_different_prefixes_keep_their_bans_apart() {
    let redis = redis();
    let api = Replica::join_prefixed(&redis, "api", policy());
    let web = Replica::join_prefixed(&redis, "web", policy());
    let api2 = Replica::join_prefixed(&redis, "api", policy());
    for replica in [&api, &web, &api2] {
        replica.connected().await;
    }
    api.login.bans().ban(ip("192.0.2.9"), secs(60)).unwrap();
    eventually("the other api replica applies it", || {
        api2.banned("192.0.2.9")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!web.banned("192.0.2.9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_replicas_go_on_alone_and_resync_when_it_is_back() {
    let mut redis = redis();
    let a = Replica::join(&redis, policy());
    let b = Replica::join(&redis, policy());
    a.connected().await;
    b.connected().await;
    a.login.bans().ban(ip("192.0.2.10"), secs(300)).unwrap();
    eventually("B has the first ban", || b.banned("192.0.2.10")).await;

    redis.kill();
    eventually("A sees the outage", || !a.fleet.stats().connected).await;
    eventually("B sees the outage", || !b.fleet.stats().connected).await;
    // Each replica serves and bans with what it knows, and never waits.
    let began = Instant::now();
    for _ in 0..4 {
        assert_eq!(a.fail_once("203.0.113.20").await.as_deref(), Some("DENIED"));
    }
    assert!(began.elapsed() < secs(2), "no failure waited on Redis");
    assert!(a.banned("203.0.113.20"), "A bans alone at its own count");
    assert_eq!(
        a.fail_once("192.0.2.10").await,
        None,
        "and enforces the ban it had"
    );
    b.login.bans().ban(ip("192.0.2.11"), secs(300)).unwrap();
    b.login.bans().unban(ip("192.0.2.10"));
    assert!(a.fleet.stats().failures >= 1);
    assert_eq!(b.fleet.stats().pending, 2);

    // Redis comes back empty: both replicas reconnect on their own and give it what
    // they changed; the bans made meanwhile reach the other side, the unban too.
    redis.restart();
    eventually("A gets B's ban", || a.banned("192.0.2.11")).await;
    eventually("B gets A's ban", || b.banned("203.0.113.20")).await;
    eventually("A lifts what B lifted", || !a.banned("192.0.2.10")).await;
    assert!(b.fleet.stats().connected && a.fleet.stats().connected);
    assert_eq!(b.fleet.stats().pending, 0);
    // A replica that starts now sees everything in force.
    let c = Replica::join(&redis, policy());
    eventually("C loads A's ban", || c.banned("203.0.113.20")).await;
    eventually("C loads B's ban", || c.banned("192.0.2.11")).await;
    assert!(!c.banned("192.0.2.10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_delays_no_login_reply_and_no_refusal() {
    let redis = redis();
    let a = Replica::join(&redis, policy());
    a.connected().await;
    a.login.bans().ban(ip("192.0.2.12"), secs(300)).unwrap();
    eventually("the ban reaches the store", || a.fleet.stats().pending == 0).await;

    redis.freeze(true);
    let began = Instant::now();
    for n in 0..20 {
        let peer = format!("203.0.113.{}", 30 + n % 5);
        assert_eq!(a.fail_once(&peer).await.as_deref(), Some("DENIED"));
        assert_eq!(a.fail_once("192.0.2.12").await, None);
    }
    // Redis's 500 ms timeout would show many times over if any reply waited on it.
    assert!(began.elapsed() < secs(1), "took {:?}", began.elapsed());
    a.login.bans().ban(ip("192.0.2.13"), secs(300)).unwrap();
    eventually("the sync task gives up on the frozen Redis", || {
        !a.fleet.stats().connected
    })
    .await;
    redis.freeze(false);
    let b = Replica::join(&redis, policy());
    eventually("the ban made while Redis was frozen reaches B", || {
        b.banned("192.0.2.13")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_by_one_replicas_own_count_escalates_by_the_fleets_count_and_spends_it() {
    let redis = redis();
    // The fleet has banned the peer twice before; this replica, new, knows nothing of
    // it, and one failure bans here.
    redis.command(&[
        "HSET",
        "{test}:offences:203.0.113.40/32",
        "bans",
        "2",
        "current",
        "55",
    ]);
    let fresh = Replica::join(&redis, policy().max_failures(1).ban(secs(10)));
    let other = Replica::join(&redis, policy());
    fresh.connected().await;
    other.connected().await;
    assert_eq!(
        fresh.fail_once("203.0.113.40").await.as_deref(),
        Some("DENIED")
    );
    // The fleet's third ban: 10 s doubled twice, on both replicas.
    for replica in [&fresh, &other] {
        eventually("the fleet's third ban", || {
            replica
                .login
                .bans()
                .banned_for(ip("203.0.113.40"))
                .is_some_and(|left| left > secs(35))
        })
        .await;
        let listed = replica.login.bans().list();
        let ban = listed
            .iter()
            .find(|ban| ban.key.network().contains(&ip("203.0.113.40")));
        assert_eq!(ban.unwrap().offences, 3);
    }
    assert_eq!(
        redis
            .command(&["HGET", "{test}:offences:203.0.113.40/32", "current"])
            .as_deref(),
        Some("$1"),
        "the count that led to the ban is spent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offences_held_through_an_outage_count_when_they_happened() {
    let mut redis = redis();
    // 3 failures within 2 s ban; these come 1.1 s apart, which never does.
    let spread = || policy().max_failures(3).failure_window(secs(2));
    let a = Replica::join(&redis, spread());
    let b = Replica::join(&redis, spread());
    a.connected().await;
    b.connected().await;
    redis.kill();
    eventually("A sees the outage", || !a.fleet.stats().connected).await;
    let sent = a.fleet.stats().sent;
    for n in 0..3 {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        assert_eq!(a.fail_once("203.0.113.41").await.as_deref(), Some("DENIED"));
    }
    assert!(!a.banned("203.0.113.41"));
    redis.restart();
    eventually("the held offences reach the store", || {
        a.fleet.stats().sent >= sent + 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b.banned("203.0.113.41") && !a.banned("203.0.113.41"));
    assert_eq!(
        redis.command(&["HLEN", "{test}:bans"]).as_deref(),
        Some(":0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unban_then_a_shorter_ban_made_while_redis_is_frozen_both_count() {
    let redis = redis();
    let a = Replica::join(&redis, policy());
    let b = Replica::join(&redis, policy());
    a.connected().await;
    b.connected().await;
    a.login.bans().ban(ip("192.0.2.40"), secs(600)).unwrap();
    eventually("B has the long ban", || b.banned("192.0.2.40")).await;

    redis.freeze(true);
    a.login.bans().unban(ip("192.0.2.40"));
    a.login.bans().ban(ip("192.0.2.40"), secs(60)).unwrap();
    redis.freeze(false);
    eventually("B holds the shorter ban", || {
        b.login
            .bans()
            .banned_for(ip("192.0.2.40"))
            .is_some_and(|left| left <= secs(60))
    })
    .await;
    let replica = Replica::join(&redis, policy());
    eventually("a new replica loads the shorter ban", || {
        replica.banned("192.0.2.40")
    })
    .await;
    assert!(replica.login.bans().banned_for(ip("192.0.2.40")).unwrap() <= secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_redis_that_are_not_bans_are_skipped() {
    let redis = redis();
    for (key, value) in [
        ("192.0.2.50/32", "garbage"),
        ("192.0.2.51/32", "99999999999999999999 1 1"),
        ("192.0.2.52/32", "99999999999 4294967296 1"),
        ("not-a-key", "99999999999999 1 1"),
    ] {
        redis.command(&["HSET", "{test}:bans", key, value]);
    }
    let a = Replica::join(&redis, policy());
    a.connected().await;
    a.login.bans().ban(ip("192.0.2.53"), secs(60)).unwrap();
    let b = Replica::join(&redis, policy());
    eventually("B loads the good ban", || b.banned("192.0.2.53")).await;
    eventually("B reloads again", || b.fleet.stats().resyncs >= 2).await;
    assert_eq!(
        b.fleet.stats().connects,
        1,
        "no reconnecting over a bad entry"
    );
    for bad in ["192.0.2.50", "192.0.2.51", "192.0.2.52"] {
        assert!(!b.banned(bad));
    }
}

/// A replica on an already built backend.
fn join_backend(backend: RedisBackend) -> Replica {
    let backend = backend
        .prefix("test")
        .unwrap()
        .timeout(Duration::from_millis(500))
        .unwrap();
    Replica::on(Fleet::builder(backend), policy())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_with_a_password_takes_it_from_the_url_and_refuses_a_wrong_one() {
    let redis = RedisBinary::find()
        .expect("redis-server")
        .start_with(&["--requirepass".to_owned(), "s3cret".to_owned()]);
    let url = |password: &str| format!("redis://:{password}@127.0.0.1:{}/", redis.port);
    let a = join_backend(RedisBackend::new(&url("s3cret")).unwrap());
    let b = join_backend(RedisBackend::new(&url("s3cret")).unwrap());
    let wrong = join_backend(RedisBackend::new(&url("guess")).unwrap());
    a.connected().await;
    b.connected().await;
    a.login.bans().ban(ip("192.0.2.60"), secs(60)).unwrap();
    eventually("B applies the ban", || b.banned("192.0.2.60")).await;
    // The replica with the wrong password goes on alone, and says so.
    eventually("the refused replica counts failures", || {
        wrong.fleet.stats().failures >= 2
    })
    .await;
    assert!(!wrong.fleet.stats().connected && !wrong.banned("192.0.2.60"));
    assert_eq!(
        wrong.fail_once("192.0.2.61").await.as_deref(),
        Some("DENIED")
    );
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_bans_over_tls_with_a_private_ca() {
    let generated = rcgen::generate_simple_self_signed(["127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("fleet-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("redis.crt"), dir.join("redis.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let tls_port = redis_server::free_port();
    let path = |file: &std::path::Path| file.to_str().unwrap().to_owned();
    let redis = RedisBinary::find().expect("redis-server").start_with(&[
        "--tls-port".to_owned(),
        tls_port.to_string(),
        "--tls-cert-file".to_owned(),
        path(&cert),
        "--tls-key-file".to_owned(),
        path(&key),
        "--tls-ca-cert-file".to_owned(),
        path(&cert),
        "--tls-auth-clients".to_owned(),
        "no".to_owned(),
    ]);
    let over_tls = |ca: Option<Vec<u8>>| {
        let client = redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{tls_port}/"),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: ca,
            },
        )
        .unwrap();
        join_backend(RedisBackend::from_client(client))
    };
    let a = over_tls(Some(generated.cert.pem().into_bytes()));
    let plain = join_backend(RedisBackend::new(&redis.url()).unwrap());
    a.connected().await;
    plain.connected().await;
    a.login.bans().ban(ip("192.0.2.62"), secs(60)).unwrap();
    eventually("the plain replica applies the ban made over TLS", || {
        plain.banned("192.0.2.62")
    })
    .await;
    plain.login.bans().ban(ip("192.0.2.63"), secs(60)).unwrap();
    eventually("the TLS replica applies the plain one's", || {
        a.banned("192.0.2.63")
    })
    .await;
    // A replica that does not trust the certificate never connects.
    let untrusting = over_tls(None);
    eventually("it fails", || untrusting.fleet.stats().failures >= 2).await;
    assert_eq!(untrusting.fleet.stats().connects, 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_notices_a_redis_that_stopped_answering_and_comes_back() {
    let redis = redis();
    // No reload for a minute, and nothing to send: only the subscription's pings
    // (every five 500 ms timeouts) can notice.
    let backend = RedisBackend::new(&redis.url())
        .unwrap()
        .prefix("test")
        .unwrap()
        .timeout(Duration::from_millis(500))
        .unwrap();
    let idle = Replica::on(Fleet::builder(backend).resync_every(secs(60)), policy());
    idle.connected().await;
    redis.freeze(true);
    eventually("the idle replica sees the outage", || {
        !idle.fleet.stats().connected
    })
    .await;
    redis.freeze(false);
    eventually("it reconnects", || idle.fleet.stats().connects >= 2).await;
    // And the new link carries decisions.
    let other = Replica::join(&redis, policy());
    other.connected().await;
    other.login.bans().ban(ip("192.0.2.70"), secs(60)).unwrap();
    eventually("the idle replica applies a ban made after", || {
        idle.banned("192.0.2.70")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_closed_by_redis_is_made_again() {
    let redis = redis();
    let a = Replica::join(&redis, policy());
    let b = Replica::join(&redis, policy());
    a.connected().await;
    b.connected().await;
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    eventually("B reconnects", || b.fleet.stats().connects >= 2).await;
    eventually("B subscribes again", || {
        redis.fleet_subscribers("test") >= 2
    })
    .await;
    a.login.bans().ban(ip("192.0.2.71"), secs(60)).unwrap();
    eventually("B applies a ban made after", || b.banned("192.0.2.71")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_served_while_redis_was_down_spends_its_offences_in_the_fleet() {
    let mut redis = redis();
    // Three failures ban for a second; the window is ten minutes.
    let quick = || policy().max_failures(3).ban(secs(1));
    let a = Replica::join(&redis, quick());
    let b = Replica::join(&redis, quick());
    a.connected().await;
    b.connected().await;
    redis.kill();
    eventually("A sees the outage", || !a.fleet.stats().connected).await;
    for _ in 0..3 {
        assert_eq!(a.fail_once("203.0.113.81").await.as_deref(), Some("DENIED"));
    }
    assert!(a.banned("203.0.113.81"));
    eventually("the ban is served", || !a.banned("203.0.113.81")).await;
    let (sent, resyncs) = (a.fleet.stats().sent, a.fleet.stats().resyncs);
    redis.restart();
    // The ban that ran out in the outbox goes as served, the offences after it: the
    // link works, and the fleet does not ban the peer again for offences its ban spent.
    eventually("A is back in step", || a.fleet.stats().resyncs > resyncs).await;
    // The offences go once the link is in step, right after the reload.
    eventually("A sends the ban and its three offences", || {
        a.fleet.stats().sent >= sent + 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.banned("203.0.113.81") && !b.banned("203.0.113.81"));
    assert_eq!(
        redis.command(&["HLEN", "{test}:bans"]).as_deref(),
        Some(":0")
    );
    // It counts: the next ban is the peer's second, twice as long.
    for _ in 0..3 {
        assert_eq!(b.fail_once("203.0.113.81").await.as_deref(), Some("DENIED"));
    }
    eventually("B bans again", || b.banned("203.0.113.81")).await;
    eventually("the fleet's second ban reaches A", || {
        a.login
            .bans()
            .banned_for(ip("203.0.113.81"))
            .is_some_and(|left| left > Duration::from_millis(1500))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_held_through_an_outage_runs_from_when_it_was_issued() {
    let mut redis = redis();
    let once = || policy().max_failures(1).ban(secs(10));
    let a = Replica::join(&redis, once());
    let b = Replica::join(&redis, once());
    a.connected().await;
    b.connected().await;
    redis.kill();
    eventually("A sees the outage", || !a.fleet.stats().connected).await;
    assert_eq!(a.fail_once("203.0.113.82").await.as_deref(), Some("DENIED"));
    tokio::time::sleep(secs(2)).await;
    redis.restart();
    eventually("B gets the ban", || b.banned("203.0.113.82")).await;
    let left = b.login.bans().banned_for(ip("203.0.113.82")).unwrap();
    assert!(
        left < Duration::from_millis(8500),
        "not extended by the wait: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ban_list_escalates_a_peer_once_per_ban() {
    let redis = redis();
    let small = |_: ()| {
        let backend = RedisBackend::new(&redis.url())
            .unwrap()
            .prefix("test")
            .unwrap()
            .max_bans(1)
            .unwrap();
        Replica::on(Fleet::builder(backend), policy())
    };
    assert!(
        RedisBackend::new(&redis.url())
            .unwrap()
            .max_bans(0)
            .is_err()
    );
    let (a, b) = (small(()), small(()));
    a.connected().await;
    b.connected().await;
    a.login.bans().ban(ip("192.0.2.80"), secs(600)).unwrap();
    eventually("the list is full", || b.banned("192.0.2.80")).await;
    // Four failures on A: A's own count and the fleet's both reach the ban.
    for _ in 0..4 {
        assert_eq!(a.fail_once("203.0.113.80").await.as_deref(), Some("DENIED"));
    }
    for replica in [&a, &b] {
        eventually("the fleet's ban", || replica.banned("203.0.113.80")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for replica in [&a, &b] {
        let listed = replica.login.bans().list();
        let ban = listed
            .iter()
            .find(|ban| ban.key.network().contains(&ip("203.0.113.80")))
            .unwrap();
        assert_eq!(ban.offences, 1, "escalated once");
        assert!(ban.remaining <= secs(60), "{:?}", ban.remaining);
    }
    assert_eq!(
        redis.command(&["HLEN", "{test}:bans"]).as_deref(),
        Some(":1")
    );
}

/// Publishes a decision on the fleet's channel (prefix `test`) and waits until
/// `replica` has applied it: every decision published before it has been applied too.
async fn in_step(redis: &Redis, replica: &Replica, marker: &str) {
    // Quoted: Redis's inline protocol splits words at spaces.
    let message = format!("\"ban {marker}/32 60000 1\"");
    redis.command(&["PUBLISH", "{test}:decisions", &message]);
    eventually("the marker is applied", || replica.banned(marker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_in_dry_run_bans_nobody_on_the_other_replicas() {
    let redis = redis();
    // One replica tries the policy in dry run (a canary, or a rolling reload); the
    // other enforces.
    let trial = Replica::join(&redis, policy().dry_run(true));
    let enforcing = Replica::join(&redis, policy());
    trial.connected().await;
    enforcing.connected().await;
    for _ in 0..4 {
        assert_eq!(
            trial.fail_once("203.0.113.90").await.as_deref(),
            Some("DENIED")
        );
    }
    assert!(
        trial.banned("203.0.113.90"),
        "the list shows what enforcing would do"
    );
    assert_eq!(
        trial.fail_once("203.0.113.90").await.as_deref(),
        Some("DENIED"),
        "and the trial serves the peer anyway"
    );
    // An operator's ban made on the trial stays there too.
    trial
        .login
        .bans()
        .ban(ip("198.51.100.90"), secs(60))
        .unwrap();
    // Twice round the trial's sync task (it reloads every second): whatever it was
    // going to send has been sent by then.
    let resyncs = trial.fleet.stats().resyncs;
    eventually("the trial's sync task goes round twice", || {
        trial.fleet.stats().resyncs >= resyncs + 2
    })
    .await;
    let stats = trial.fleet.stats();
    assert_eq!(
        (stats.sent, stats.pending),
        (0, 0),
        "the trial sent its offences or bans"
    );
    in_step(&redis, &enforcing, "192.0.2.90").await;
    assert_eq!(
        enforcing.login.bans().banned_for(ip("203.0.113.90")),
        None,
        "a ban made in dry run is enforced by the other replica"
    );
    assert!(
        !enforcing.banned("198.51.100.90"),
        "and so is an operator's"
    );
    assert_eq!(
        enforcing.fail_once("203.0.113.90").await.as_deref(),
        Some("DENIED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_ban_length_holds_for_a_bouncer_in_a_fleet() {
    use tower_bouncer::bouncer::{Bouncer, BouncerConfig};
    let redis = redis();
    let mut config = BouncerConfig::default();
    config.connections.raise_descriptor_limit = false;
    config.fleet.redis = Some(redis.url());
    config.fleet.prefix = Some("test".into());
    config.bans.max_failures = 4;
    config.bans.first = secs(600);
    let bouncer = Bouncer::from_config(config.clone()).unwrap();
    let replica = Replica {
        login: bouncer.login().clone(),
        fleet: bouncer.fleet().unwrap().clone(),
    };
    replica.connected().await;
    // The operator finds ten minutes too harsh: five seconds from now on.
    config.bans.first = secs(5);
    bouncer.reload(config).unwrap();
    for _ in 0..4 {
        assert_eq!(
            replica.fail_once("203.0.113.91").await.as_deref(),
            Some("DENIED")
        );
    }
    let left = replica.login.bans().banned_for(ip("203.0.113.91")).unwrap();
    assert!(left <= secs(5), "the replica's own ban: {left:?}");
    // Everything sent, then whatever the store published has been applied. (Not
    // "a decision applied": if the store's own count banned while the replica's ban
    // waited to be sent, that decision is skipped, and the store does not publish the
    // same ban again when the replica's arrives.)
    eventually("the replica has sent its offences and its ban", || {
        let stats = replica.fleet.stats();
        stats.sent >= 5 && stats.pending == 0
    })
    .await;
    in_step(&redis, &replica, "192.0.2.91").await;
    let left = replica.login.bans().banned_for(ip("203.0.113.91")).unwrap();
    assert!(
        left <= secs(5),
        "banned for {left:?} after a reload to `bans.first = 5s`: the fleet's store \
         bans by the policy its link was made with"
    );
}

/// Waits until `replica` has reloaded everything in force twice more: once to see a
/// new store, once to load what it gave it back.
async fn resynced(replica: &Replica) {
    let resyncs = replica.fleet.stats().resyncs;
    eventually("the replica reloads", || {
        replica.fleet.stats().resyncs >= resyncs + 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_offender_stays_one_after_redis_loses_its_data() {
    let redis = redis();
    // Two failures ban; the first ban is 2 s, the second a minute.
    let escalating = || {
        policy()
            .max_failures(2)
            .ban(secs(2))
            .ban_escalation(30, secs(120))
    };
    let a = Replica::join(&redis, escalating());
    let b = Replica::join(&redis, escalating());
    a.connected().await;
    b.connected().await;
    for _ in 0..2 {
        assert_eq!(a.fail_once("203.0.113.92").await.as_deref(), Some("DENIED"));
    }
    eventually("B has the first ban", || b.banned("203.0.113.92")).await;
    eventually("the first ban is served", || {
        !a.banned("203.0.113.92") && !b.banned("203.0.113.92")
    })
    .await;
    // Both replicas remember the peer's ban (for `forget_after`, a day).
    for replica in [&a, &b] {
        let top = replica
            .login
            .bans()
            .top_offenders(10, tower_bouncer::login::OffenderRank::Bans);
        assert_eq!(top.first().map(|offender| offender.bans), Some(1));
    }

    // Redis restarts empty (no persistence, a flush, a failover to an empty replica).
    redis.command(&["FLUSHALL"]);
    resynced(&a).await;
    resynced(&b).await;

    // One failure on each replica: the fleet's count bans, the peer's second ban.
    assert_eq!(a.fail_once("203.0.113.92").await.as_deref(), Some("DENIED"));
    assert_eq!(b.fail_once("203.0.113.92").await.as_deref(), Some("DENIED"));
    eventually("the fleet bans again", || a.banned("203.0.113.92")).await;
    in_step(&redis, &a, "192.0.2.92").await;
    let left = a
        .login
        .bans()
        .banned_for(ip("203.0.113.92"))
        .unwrap_or_default();
    assert!(
        left > secs(10),
        "the peer's second ban, after Redis lost its data, runs {left:?}: a first ban \
         again, though both replicas remember the first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_ban_given_back_to_an_empty_redis_counts_and_spends_no_later_offence() {
    use tower_bouncer::fleet::{BAN_WEIGHT, Change};
    let redis = redis();
    let (replica, mut link, _kept) = replica_and_link(&redis, "served", secs(600)).await;
    let key: ipnet::IpNet = "192.0.2.61/32".parse().unwrap();
    let half = Change::Offence {
        key,
        weight: BAN_WEIGHT / 2,
        ago: Duration::ZERO,
    };
    // Half a ban counted by the store that lost its data...
    link.send(&half).await.unwrap();
    // ...then a replica gives it back the peer's first ban, served long ago...
    link.send(&Change::Ban {
        key,
        remaining: Duration::ZERO,
        offences: 1,
        issued_ago: None,
        by_offences: false,
    })
    .await
    .unwrap();
    // ...and the other half bans: the peer's second ban, counted on from the first.
    link.send(&half).await.unwrap();
    assert_eq!(
        redis.command(&["HLEN", "{served}:bans"]).as_deref(),
        Some(":1"),
        "the served ban spent the offence counted after it"
    );
    eventually("the replica applies the ban", || {
        replica.banned("192.0.2.61")
    })
    .await;
    let left = replica.login.bans().banned_for(ip("192.0.2.61")).unwrap();
    assert!(left > secs(60), "a first ban again: {left:?}");
}

/// A connected replica on `prefix` (with `window` as its failure window), and a link of
/// the test's own to the same store, to send changes with the ages it chooses; the
/// receiver keeps the link's decisions channel open.
async fn replica_and_link(
    redis: &Redis,
    prefix: &str,
    window: Duration,
) -> (
    Replica,
    Box<dyn tower_bouncer::fleet::Link>,
    tokio::sync::mpsc::Receiver<tower_bouncer::fleet::Decision>,
) {
    use tower_bouncer::fleet::{Backend, FleetPolicy};
    let backend = || {
        RedisBackend::new(&redis.url())
            .unwrap()
            .prefix(prefix)
            .unwrap()
    };
    let replica = Replica::on(Fleet::builder(backend()), policy().failure_window(window));
    replica.connected().await;
    let (decisions, kept) = tokio::sync::mpsc::channel(16);
    let policy = FleetPolicy::new(window, secs(60), 2, secs(86_400), secs(86_400));
    let link = backend().connect(policy, decisions).await.unwrap();
    (replica, link, kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offence_that_arrives_late_counts_in_the_window_it_happened_in() {
    use tower_bouncer::fleet::{BAN_WEIGHT, Change};
    let redis = redis();
    let (replica, mut link, _kept) = replica_and_link(&redis, "late", secs(1)).await;
    let offence = |hundredths: u32, ago_ms: u64| Change::Offence {
        key: "203.0.113.83/32".parse().unwrap(),
        weight: BAN_WEIGHT / 100 * hundredths,
        ago: Duration::from_millis(ago_ms),
    };
    // 0.9 of a ban 0.9 s ago; 0.3 s on, the window has moved: 0.9 is the older one's.
    link.send(&offence(90, 900)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 0.1 now: about 0.9 x 0.8 + 0.1, no ban.
    link.send(&offence(10, 0)).await.unwrap();
    // 0.05 that happened 0.9 s ago, in the older window, arriving now: weighed as that
    // window is, not counted whole in the newer one (which would make 1.05).
    link.send(&offence(5, 900)).await.unwrap();
    // Older than the window: not counted at all.
    link.send(&offence(90, 1100)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!replica.banned("203.0.113.83"));
    assert_eq!(
        redis.command(&["HLEN", "{late}:bans"]).as_deref(),
        Some(":0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offences_from_two_replicas_arriving_out_of_order_still_add_up() {
    use tower_bouncer::fleet::{BAN_WEIGHT, Change};
    let redis = redis();
    let (replica, mut link, _kept) = replica_and_link(&redis, "order", secs(600)).await;
    let quarter = |ago_ms: u64| Change::Offence {
        key: "203.0.113.84/32".parse().unwrap(),
        weight: BAN_WEIGHT / 4,
        ago: Duration::from_millis(ago_ms),
    };
    // Four quarters, the later ones first, as a slower replica's would arrive.
    for ago in [10, 20, 30, 40] {
        link.send(&quarter(ago)).await.unwrap();
    }
    eventually("four quarters ban", || replica.banned("203.0.113.84")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_given_back_to_an_empty_redis_loses_to_an_unban_made_before() {
    use tower_bouncer::fleet::Change;
    let redis = redis();
    let (replica, mut link, _kept) = replica_and_link(&redis, "reseed", secs(600)).await;
    let key: ipnet::IpNet = "192.0.2.60/32".parse().unwrap();
    // After an outage, one replica gives the store a ban it holds, of unknown age...
    link.send(&Change::Ban {
        key,
        remaining: secs(300),
        offences: 1,
        issued_ago: None,
        by_offences: false,
    })
    .await
    .unwrap();
    eventually("the replica has the ban given back", || {
        replica.banned("192.0.2.60")
    })
    .await;
    // ...then another sends the unban it made during the outage: the ban may have been
    // issued before it, so the unban wins.
    link.send(&Change::Unban {
        key,
        issued_ago: secs(2),
    })
    .await
    .unwrap();
    eventually("the unban reaches the replica", || {
        !replica.banned("192.0.2.60")
    })
    .await;
    assert_eq!(
        redis.command(&["HLEN", "{reseed}:bans"]).as_deref(),
        Some(":0")
    );
}

// End to end: login_server processes sharing one Redis, tried from outside as an
// attacker and an operator would.

mod servers {
    use tokio::{
        io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
        time::timeout,
    };

    use super::*;
    use support::example::Example;

    const ATTACKER: u8 = 20;
    const LEGIT: u8 = 2;

    /// A login_server replica on `redis`, refusing banned peers in user space (so a
    /// refusal reads `ERROR banned`), banning at `max_failures`.
    async fn replica(redis: &Redis, max_failures: u32) -> Example {
        Example::start(
            "login_server",
            &[
                "--redis",
                &redis.url(),
                "--redis-prefix",
                "e2e",
                "--max-failures",
                &max_failures.to_string(),
                "--no-kernel-bans",
            ],
        )
        .await
    }

    /// Logs in from `127.0.0.<from>` with `password`; the server's first line, or
    /// `None` if it closed without one.
    async fn try_login(server: &Example, from: u8, password: &str) -> Option<String> {
        let mut stream = within(PATIENCE, connect_from(from, server.addr)).await;
        // A refused peer may find the socket closed before it writes.
        let _ = stream
            .write_all(format!("LOGIN alice {password}\n").as_bytes())
            .await;
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        let answer = match within(PATIENCE, stream.read_line(&mut line)).await {
            Ok(n) if n > 0 => line.trim_end().to_owned(),
            _ => return None,
        };
        if answer == "DENIED" {
            // The server records the failure, then closes: waiting for the close
            // keeps the next try from racing the count.
            let _ = within(PATIENCE, stream.read_line(&mut String::new())).await;
        }
        Some(answer)
    }

    async fn refused(server: &Example, from: u8) -> bool {
        try_login(server, from, "wrong").await.as_deref() == Some("ERROR banned")
    }

    /// Polls until `server` refuses `127.0.0.<from>`; how long that took.
    async fn refused_within(server: &Example, from: u8, limit: Duration) -> Duration {
        let began = Instant::now();
        loop {
            // A probe that is not refused is a failed login: probe with the right
            // password instead, so probing adds no offence.
            let answer = try_login(server, from, "secret").await;
            if answer.as_deref() == Some("ERROR banned") {
                return began.elapsed();
            }
            assert!(began.elapsed() < limit, "not refused within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_banned_on_one_server_is_refused_by_the_other_within_a_second() {
        let redis = redis();
        let a = replica(&redis, 2).await;
        let b = replica(&redis, 2).await;
        // B's fleet link is up once it answers a probe of Redis's subscribers.
        eventually_subscribed(&redis, 2).await;
        for _ in 0..2 {
            assert_eq!(
                try_login(&a, ATTACKER, "wrong").await.as_deref(),
                Some("DENIED")
            );
        }
        assert!(refused(&a, ATTACKER).await);
        let took = refused_within(&b, ATTACKER, secs(1)).await;
        eprintln!("B refused the peer A banned after {took:?}");
        assert_eq!(try_login(&b, LEGIT, "secret").await.as_deref(), Some("OK"));

        // An operator lifts the ban on another replica (here, one in this process):
        // both servers let the peer in again.
        let operator = Replica::join_prefixed(&redis, "e2e", policy());
        eventually("the operator's replica loads the ban", || {
            operator.banned(&format!("127.0.0.{ATTACKER}"))
        })
        .await;
        operator
            .login
            .bans()
            .unban(ip(&format!("127.0.0.{ATTACKER}")));
        for server in [&a, &b] {
            let began = Instant::now();
            while try_login(server, ATTACKER, "secret").await.as_deref() != Some("OK") {
                assert!(
                    began.elapsed() < secs(1),
                    "the unban did not reach a server"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_split_over_two_servers_ban_at_the_fleet_threshold_not_twice_it() {
        for shared in [true, false] {
            let redis = redis();
            let (a, b) = if shared {
                let a = replica(&redis, 4).await;
                let b = replica(&redis, 4).await;
                eventually_subscribed(&redis, 2).await;
                (a, b)
            } else {
                let alone = ["--max-failures", "4", "--no-kernel-bans"];
                (
                    Example::start("login_server", &alone).await,
                    Example::start("login_server", &alone).await,
                )
            };
            for server in [&a, &b, &a, &b] {
                assert_eq!(
                    try_login(server, ATTACKER, "wrong").await.as_deref(),
                    Some("DENIED")
                );
            }
            if shared {
                // The fourth failure, wherever it happened, banned the peer on both.
                refused_within(&a, ATTACKER, secs(2)).await;
                refused_within(&b, ATTACKER, secs(2)).await;
            } else {
                // Alone, each server has seen two of its four.
                for server in [&a, &b] {
                    assert_eq!(
                        try_login(server, ATTACKER, "secret").await.as_deref(),
                        Some("OK")
                    );
                }
            }
            a.stop().await;
            b.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restarting_both_servers_keeps_the_bans() {
        let redis = redis();
        let a = replica(&redis, 2).await;
        let b = replica(&redis, 2).await;
        eventually_subscribed(&redis, 2).await;
        for _ in 0..2 {
            try_login(&a, ATTACKER, "wrong").await;
        }
        refused_within(&b, ATTACKER, secs(2)).await;
        a.stop().await;
        b.stop().await;

        let a = replica(&redis, 2).await;
        let b = replica(&redis, 2).await;
        refused_within(&a, ATTACKER, secs(5)).await;
        refused_within(&b, ATTACKER, secs(5)).await;
        assert_eq!(try_login(&a, LEGIT, "secret").await.as_deref(), Some("OK"));
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_redis_killed_mid_attack_both_servers_serve_and_enforce_then_resync() {
        const LATE_ATTACKER: u8 = 21;
        let mut redis = redis();
        let a = replica(&redis, 3).await;
        let b = replica(&redis, 3).await;
        eventually_subscribed(&redis, 2).await;
        // The attack begins: one failure on each server.
        for server in [&a, &b] {
            assert_eq!(
                try_login(server, ATTACKER, "wrong").await.as_deref(),
                Some("DENIED")
            );
        }
        redis.kill();
        // Each goes on alone: the legitimate client is served, the attacker banned at
        // each server's own count.
        for server in [&a, &b] {
            for _ in 0..3 {
                assert_eq!(
                    try_login(server, LEGIT, "secret").await.as_deref(),
                    Some("OK")
                );
                let _ = try_login(server, ATTACKER, "wrong").await;
            }
            assert!(refused(server, ATTACKER).await, "a local ban is enforced");
        }
        // A ban made on A while Redis is down...
        for _ in 0..3 {
            try_login(&a, LATE_ATTACKER, "wrong").await;
        }
        assert!(refused(&a, LATE_ATTACKER).await);
        assert_eq!(
            try_login(&b, LATE_ATTACKER, "secret").await.as_deref(),
            Some("OK")
        );
        // ...reaches B once Redis is back (empty), within the reconnect backoff.
        redis.restart();
        let took = refused_within(&b, LATE_ATTACKER, secs(10)).await;
        eprintln!("the ban made during the outage reached B {took:?} after Redis was back");
        assert_eq!(try_login(&b, LEGIT, "secret").await.as_deref(), Some("OK"));
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frozen_redis_delays_no_login_reply_and_no_refusal() {
        let redis = redis();
        let a = replica(&redis, 2).await;
        eventually_subscribed(&redis, 1).await;
        for _ in 0..2 {
            try_login(&a, ATTACKER, "wrong").await;
        }
        redis.freeze(true);
        // Redis's default timeout is 2 s: a reply that waited on it would take that.
        let began = Instant::now();
        for n in 0..10 {
            let answer = timeout(secs(1), try_login(&a, 30 + n, "wrong")).await;
            assert_eq!(answer.unwrap().as_deref(), Some("DENIED"));
            let refusal = timeout(secs(1), refused(&a, ATTACKER)).await;
            assert!(refusal.unwrap());
            let login = timeout(secs(1), try_login(&a, LEGIT, "secret")).await;
            assert_eq!(login.unwrap().as_deref(), Some("OK"));
        }
        eprintln!("30 exchanges with Redis frozen took {:?}", began.elapsed());
        redis.freeze(false);
        a.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_example_joins_the_fleet_and_refuses_a_bad_redis_setting() {
        let redis = redis();
        let mut servers = Vec::new();
        for name in ["axum_server", "tonic_server", "login_server"] {
            let flags = ["--redis", &redis.url(), "--redis-prefix", "e2e"];
            servers.push(Example::start(name, &flags).await);
            eventually_subscribed(&redis, servers.len()).await;
        }
        // A peer banned through the fleet is refused by the HTTP example too.
        let operator = Replica::join_prefixed(&redis, "e2e", policy());
        operator.connected().await;
        operator
            .login
            .bans()
            .ban(ip("127.0.0.23"), secs(60))
            .unwrap();
        // Probing at 10 a second, under the rate limit: a 429 is the ban.
        let began = Instant::now();
        loop {
            let stream = connect_from(23, servers[0].addr).await;
            let answer = Http1Client::connect(stream).await.get("/").await;
            match answer.map(|answer| answer.status) {
                Ok(http::StatusCode::OK) => {}
                Ok(http::StatusCode::TOO_MANY_REQUESTS) | Err(_) => break,
                Ok(other) => panic!("unexpected {other}"),
            }
            assert!(
                began.elapsed() < PATIENCE,
                "axum_server never refused the peer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for server in servers {
            server.stop().await;
        }

        for bad in [
            &["--redis-prefix", "api"][..],
            &["--redis", "not a url"],
            &["--redis", &redis.url(), "--redis-prefix", "a b"],
            &["--redis"],
        ] {
            let output = std::process::Command::new(support::example::example_path("login_server"))
                .args(bad)
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(2), "{bad:?}");
            assert!(output.stdout.is_empty(), "{bad:?}: nothing listens");
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().last().unwrap_or_default();
            assert!(last.starts_with("error: "), "{bad:?}: {stderr}");
        }
    }

    /// Waits until `count` replicas are subscribed to the e2e fleet's decisions.
    async fn eventually_subscribed(redis: &Redis, count: usize) {
        let began = Instant::now();
        loop {
            let subscribed = redis.fleet_subscribers("e2e");
            if subscribed >= count {
                return;
            }
            assert!(
                began.elapsed() < PATIENCE,
                "{subscribed} of {count} replicas subscribed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A Redis timeout too long for the clock (`Duration::MAX`) keeps the link: the
/// subscription's task once multiplied it by 5 to ping, overflowed and panicked at each
/// link, and the replica made its link again ten times a second, reading every ban in
/// the store each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_timeout_too_long_for_the_clock_keeps_the_link() {
    let redis = redis();
    let backend = RedisBackend::new(&redis.url())
        .unwrap()
        .prefix("test")
        .unwrap()
        .timeout(Duration::MAX)
        .unwrap();
    let a = Replica::on(Fleet::builder(backend).resync_every(secs(1)), policy());
    let b = Replica::join(&redis, policy());
    b.connected().await;
    a.connected().await;
    // Two seconds in step: no link lost, as with any other timeout.
    tokio::time::sleep(secs(2)).await;
    let stats = a.fleet.stats();
    assert_eq!(
        (stats.connects, stats.failures),
        (1, 0),
        "A's link to Redis is lost and made again over and over; A's fleet stats: {stats}"
    );
}
