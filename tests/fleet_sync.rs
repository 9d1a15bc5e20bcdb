//! The fleet's sync task over an in-memory store, on paused time: what it sends, what
//! it applies, and how it rides out a store that goes away. Another decision source
//! plugs in the same way, through the `Backend` trait.
#![cfg(feature = "fleet")]

mod support;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnet::IpNet;
use tokio::sync::mpsc;
use tower_bouncer::{
    ConfigError,
    fleet::{
        Backend, BackendError, BoxFuture, Change, Decision, Fleet, FleetPolicy, Link, Snapshot,
    },
    login::Login,
};

use support::PATIENCE;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn key(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A store in memory that can be taken down and brought back.
#[derive(Clone, Default)]
struct MemoryStore(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    down: bool,
    connects: usize,
    received: Vec<Change>,
    in_force: Snapshot,
    decisions: Option<mpsc::Sender<Decision>>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    fn set_down(&self, down: bool) {
        let mut state = self.state();
        state.down = down;
        if down {
            // The link is lost: its decisions stop.
            state.decisions = None;
        }
    }

    fn received(&self) -> Vec<Change> {
        self.state().received.clone()
    }

    async fn decide(&self, decision: Decision) {
        let sender = self.state().decisions.clone().expect("connected");
        sender.send(decision).await.unwrap();
    }

    /// Waits (on paused time) until `condition` holds of the store.
    async fn until(&self, what: &str, condition: impl Fn(&State) -> bool) {
        let began = tokio::time::Instant::now();
        while !condition(&self.state()) {
            assert!(began.elapsed() < PATIENCE * 6, "waited too long: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn unavailable() -> BackendError {
    BackendError::new("the store is down")
}

impl Backend for MemoryStore {
    fn connect(
        &self,
        _policy: FleetPolicy,
        decisions: mpsc::Sender<Decision>,
    ) -> BoxFuture<'_, Result<Box<dyn Link>, BackendError>> {
        Box::pin(async move {
            let mut state = self.state();
            if state.down {
                return Err(unavailable());
            }
            state.connects += 1;
            state.decisions = Some(decisions);
            Ok(Box::new(self.clone()) as Box<dyn Link>)
        })
    }
}

impl Link for MemoryStore {
    fn send<'a>(&'a mut self, change: &'a Change) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut state = self.state();
            if state.down {
                return Err(unavailable());
            }
            state.received.push(change.clone());
            Ok(())
        })
    }

    fn snapshot(&mut self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        Box::pin(async move {
            let state = self.state();
            if state.down {
                return Err(unavailable());
            }
            Ok(state.in_force.clone())
        })
    }
}

fn login() -> Login {
    Login::builder()
        .max_failures(3)
        .ban(secs(60))
        .build()
        .unwrap()
}

fn join(login: &Login, store: &MemoryStore) -> Fleet {
    Fleet::builder(store.clone())
        .resync_every(secs(30))
        .join(login)
        .unwrap()
}

/// A login in a fleet on `store`, once its link is made.
async fn connected(store: &MemoryStore) -> (Login, Fleet) {
    let login = login();
    let fleet = join(&login, store);
    store
        .until("connected", |state| state.decisions.is_some())
        .await;
    (login, fleet)
}

#[tokio::test(start_paused = true)]
async fn decisions_are_applied_and_local_changes_are_sent() {
    let store = MemoryStore::default();
    let (login, fleet) = connected(&store).await;

    store
        .decide(Decision::Ban {
            key: key("192.0.2.1/32"),
            remaining: secs(45),
            offences: 2,
        })
        .await;
    store.until("applied", |_| fleet.stats().applied == 1).await;
    let remaining = login.bans().banned_for(ip("192.0.2.1")).unwrap();
    assert!(
        remaining <= secs(45) && remaining > secs(44),
        "{remaining:?}"
    );
    assert_eq!(login.bans().list()[0].offences, 2);
    // Applied from the fleet, not sent back.
    assert!(store.received().is_empty());

    login.bans().ban(ip("192.0.2.2"), secs(30)).unwrap();
    login.bans().unban(ip("192.0.2.1"));
    store
        .until("both sent", |state| state.received.len() == 2)
        .await;
    let received = store.received();
    assert!(received.iter().any(|change| matches!(
        change,
        Change::Ban { key: k, offences: 1, issued_ago: Some(_), .. } if *k == key("192.0.2.2/32")
    )));
    assert!(received.iter().any(|change| matches!(
        change,
        Change::Unban { key: k, .. } if *k == key("192.0.2.1/32")
    )));
    assert!(login.bans().banned_for(ip("192.0.2.1")).is_none());
    let stats = fleet.stats();
    assert!(stats.connected && stats.connects == 1 && stats.pending == 0);
}

/// A connection from `peer` that fails one login.
async fn fail_once(login: &Login, peer: &str) {
    use tokio::io::AsyncReadExt;
    use tower::{Layer, ServiceExt, service_fn};
    use tower_bouncer::{BoxError, Conn, login::AfterFailure};
    async fn deny(conn: Conn<tokio::io::DuplexStream>) -> Result<(), BoxError> {
        let session = conn.login_session().cloned().unwrap();
        assert_eq!(session.failed(), AfterFailure::Closing);
        Ok(())
    }
    let (conn, mut client) = tokio::io::duplex(1024);
    let conn = Conn::new(conn, support::addr(peer), support::addr("127.0.0.1:80"));
    let service = login
        .ban_layer()
        .layer(login.session_layer().layer(service_fn(deny)));
    let _ = service.oneshot(conn).await;
    let _ = client.read_to_end(&mut Vec::new()).await;
}

#[tokio::test(start_paused = true)]
async fn offences_are_sent_with_their_weight_and_a_local_ban_with_them() {
    let store = MemoryStore::default();
    let (login, _fleet) = connected(&store).await;
    for _ in 0..4 {
        fail_once(&login, "198.51.100.1:1").await;
    }
    store.until("sent", |state| state.received.len() == 4).await;
    // Three offences of a third of a ban each, and the ban the third made here; the
    // fourth connection was refused, which is no offence.
    let weight = tower_bouncer::fleet::BAN_WEIGHT.div_ceil(3);
    let received = store.received();
    let offences = received.iter().filter(|change| {
        matches!(change, Change::Offence { key: k, weight: w, .. } if *k == key("198.51.100.1/32") && *w == weight)
    });
    assert_eq!(offences.count(), 3);
    // Banned by this replica's own count: the store makes it the fleet's next ban.
    assert!(received.iter().any(|change| matches!(
        change,
        Change::Ban {
            offences: 1,
            issued_ago: Some(_),
            by_offences: true,
            ..
        }
    )));
    tokio::time::sleep(secs(1)).await;
    assert_eq!(store.received().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_replica_in_dry_run_adds_nothing_to_the_fleet_but_its_unbans() {
    let store = MemoryStore::default();
    let login = Login::builder()
        .max_failures(3)
        .ban(secs(60))
        .dry_run(true)
        .build()
        .unwrap();
    let fleet = join(&login, &store);
    store
        .until("connected", |state| state.decisions.is_some())
        .await;
    // Banned here by its offences, and by an operator: the list shows it.
    for _ in 0..3 {
        fail_once(&login, "198.51.100.2:1").await;
    }
    login.bans().ban(ip("192.0.2.9"), secs(60)).unwrap();
    assert_eq!(login.bans().list().len(), 2);
    // The store loses its data: a replica in dry run gives it none of its bans.
    store.state().in_force = Snapshot::new("a new epoch", Vec::new(), Vec::new());
    let resyncs = fleet.stats().resyncs;
    tokio::time::sleep(secs(31)).await;
    store
        .until("the periodic reload", |_| fleet.stats().resyncs > resyncs)
        .await;
    assert_eq!(store.received(), Vec::new());
    // An operator's unban still reaches the fleet.
    login.bans().unban(ip("192.0.2.9"));
    store.until("sent", |state| state.received.len() == 1).await;
    assert!(matches!(
        store.received()[..],
        [Change::Unban { key: k, .. }] if k == key("192.0.2.9/32")
    ));
}

#[tokio::test(start_paused = true)]
async fn changes_made_while_the_store_is_down_are_sent_once_it_is_back() {
    let store = MemoryStore::default();
    store.set_down(true);
    let login = login();
    let fleet = join(&login, &store);
    tokio::time::sleep(secs(3)).await;
    let stats = fleet.stats();
    assert!(!stats.connected && stats.failures >= 3, "{stats:?}");

    // The replica goes on alone: its bans hold, and wait for the store; so do its
    // offences, with the time they happened.
    fail_once(&login, "198.51.100.9:1").await;
    login.bans().ban(ip("192.0.2.3"), secs(60)).unwrap();
    login.bans().ban(ip("192.0.2.4"), secs(60)).unwrap();
    login.bans().unban(ip("192.0.2.4"));
    assert!(login.bans().banned_for(ip("192.0.2.3")).is_some());
    assert_eq!(fleet.stats().pending, 2, "one change per key: the unban");

    store.set_down(false);
    store
        .until("reconnected and flushed", |state| state.received.len() >= 2)
        .await;
    let received = store.received();
    assert!(matches!(
        received[..2],
        [Change::Ban { .. }, Change::Unban { .. }] | [Change::Unban { .. }, Change::Ban { .. }]
    ));
    // The store was new to this replica: it was given the bans held here, then loaded.
    store
        .until("held bans pushed", |state| {
            state.received.iter().any(|change| {
                matches!(change, Change::Ban { issued_ago: None, key: k, .. } if *k == key("192.0.2.3/32"))
            })
        })
        .await;
    assert_eq!(fleet.stats().pending, 0);
    store
        .until("the offence sent", |state| {
            state
                .received
                .iter()
                .any(|change| matches!(change, Change::Offence { .. }))
        })
        .await;
    let received = store.received();
    let ago = received.iter().find_map(|change| match change {
        Change::Offence { ago, .. } => Some(*ago),
        _ => None,
    });
    assert!(ago.unwrap() >= Duration::from_millis(50), "{ago:?}");
}

#[tokio::test(start_paused = true)]
async fn a_resync_applies_what_is_in_force_and_lifts_what_was_lifted_elsewhere() {
    let store = MemoryStore::default();
    let login = login();
    login.bans().ban(ip("192.0.2.5"), secs(600)).unwrap();
    let fleet = join(&login, &store);
    store
        .until("connected", |state| state.decisions.is_some())
        .await;
    store
        .until("first resync", |_| fleet.stats().resyncs == 1)
        .await;

    store.state().in_force = Snapshot::new(
        "a new epoch",
        vec![Decision::Ban {
            key: key("192.0.2.6/32"),
            remaining: secs(100),
            offences: 1,
        }],
        vec![key("192.0.2.5/32")],
    );
    // The periodic reload, 30 s on: a new epoch, so this replica's bans are offered
    // first, then what is in force is applied.
    tokio::time::sleep(secs(31)).await;
    store
        .until("second resync", |_| fleet.stats().resyncs >= 2)
        .await;
    assert!(login.bans().banned_for(ip("192.0.2.6")).is_some());
    assert!(login.bans().banned_for(ip("192.0.2.5")).is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_login_ends_the_sync_task() {
    let store = MemoryStore::default();
    let (login, _fleet) = connected(&store).await;
    drop(login);
    store
        .until("the task let go of its link", |state| {
            state.decisions.as_ref().is_none_or(mpsc::Sender::is_closed)
        })
        .await;
}

#[test]
fn joining_needs_a_runtime_a_period_and_one_fleet_per_login() {
    let login = login();
    let outside = Fleet::builder(MemoryStore::default()).join(&login);
    assert!(matches!(outside, Err(ConfigError::Inconsistent { .. })));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let zero = Fleet::builder(MemoryStore::default())
            .resync_every(Duration::ZERO)
            .join(&login);
        assert!(matches!(zero, Err(ConfigError::Zero { .. })));
        join(&login, &MemoryStore::default());
        let twice = Fleet::builder(MemoryStore::default()).join(&login);
        assert!(matches!(twice, Err(ConfigError::Inconsistent { .. })));
    });
}

#[tokio::test(start_paused = true)]
async fn a_ban_in_force_keeps_its_length_when_a_reload_shortens_the_longest_ban() {
    let store = MemoryStore::default();
    let (login, fleet) = connected(&store).await;
    // An hour's ban made elsewhere, in force in the store.
    let hour = Decision::Ban {
        key: key("192.0.2.7/32"),
        remaining: secs(3600),
        offences: 3,
    };
    store.state().in_force = Snapshot::new("one epoch", vec![hour.clone()], Vec::new());
    store.decide(hour).await;
    store.until("applied", |_| fleet.stats().applied == 1).await;
    // A reload shortens the longest ban to ten minutes: "bans in force keep their
    // length" (`Login::set_policy`), as they do without a fleet.
    login
        .set_policy(
            Login::builder()
                .max_failures(3)
                .ban(secs(60))
                .ban_escalation(2, secs(600)),
        )
        .unwrap();
    let resyncs = fleet.stats().resyncs;
    tokio::time::sleep(secs(31)).await;
    store
        .until("the periodic reload", |_| fleet.stats().resyncs > resyncs)
        .await;
    let left = login.bans().banned_for(ip("192.0.2.7")).unwrap_or_default();
    assert!(
        left > secs(3000),
        "the hour's ban runs {left:?} after the reload: cut to the new longest ban by \
         the fleet's reload, though the store still holds the hour"
    );
}

#[tokio::test(start_paused = true)]
async fn a_short_ban_from_the_fleet_on_a_peer_banned_here_before_is_applied() {
    let store = MemoryStore::default();
    let (login, fleet) = connected(&store).await;
    // Banned here once, for five seconds; served, and remembered (its count of bans).
    login.bans().ban(ip("192.0.2.8"), secs(5)).unwrap();
    store.until("sent", |state| state.received.len() == 1).await;
    tokio::time::sleep(secs(6)).await;
    assert!(login.bans().banned_for(ip("192.0.2.8")).is_none());
    // The fleet bans it again, with under a second left by the time it arrives here
    // (or with a first ban of a second).
    store
        .decide(Decision::Ban {
            key: key("192.0.2.8/32"),
            remaining: Duration::from_millis(900),
            offences: 1,
        })
        .await;
    store.until("applied", |_| fleet.stats().applied == 1).await;
    assert!(
        login.bans().banned_for(ip("192.0.2.8")).is_some(),
        "a peer not banned here took the fleet's ban for one it holds already"
    );
}

/// A resync period too long for the clock (`Duration::MAX`, a natural "never") is taken
/// as never: the sync task once added it to the clock and panicked as it connected,
/// leaving the replica alone while its stats said it was connected.
#[tokio::test(start_paused = true)]
async fn a_resync_period_too_long_for_the_clock_is_taken_as_never_and_the_replica_still_syncs() {
    let store = MemoryStore::default();
    let login = login();
    let fleet = Fleet::builder(store.clone())
        .resync_every(Duration::MAX)
        .join(&login)
        .unwrap();
    store
        .until("connected", |state| state.decisions.is_some())
        .await;
    login.bans().ban(ip("192.0.2.9"), secs(30)).unwrap();
    let began = tokio::time::Instant::now();
    while store.received().is_empty() && began.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store.received().len(),
        1,
        "a local ban never reached the store; fleet stats: {}",
        fleet.stats()
    );
}
