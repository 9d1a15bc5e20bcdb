//! Login sessions, eviction and bans, on paused time over in-memory streams.

mod support;

use std::time::Duration;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream},
    task::JoinHandle,
    time::Instant,
};
use tower::{Layer, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, Conn,
    admission::Reason,
    login::{AfterFailure, EvictReason, Evicted, Login, LoginBuilder},
    peer::{Overflow, PeerKeying},
};

use support::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A line protocol: `good` logs in, `bad` fails (closing once the tries are used up),
/// `stall` stops reading and never ends.
async fn protocol(mut conn: Conn<DuplexStream>) -> Result<(), BoxError> {
    let session = conn.login_session().cloned().unwrap();
    let close = conn.graceful_close();
    let mut io = BufReader::new(conn.into_io());
    let mut line = String::new();
    loop {
        line.clear();
        tokio::select! {
            read = io.read_line(&mut line) => if read? == 0 { return Ok(()) },
            () = close.requested() => return Ok(()),
        }
        match line.trim() {
            "good" => {
                session.succeeded();
                io.get_mut().write_all(b"OK\n").await?;
            }
            "bad" => {
                io.get_mut().write_all(b"DENIED\n").await?;
                io.get_mut().flush().await?;
                if session.failed() == AfterFailure::Closing {
                    return Ok(());
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
}

/// Serves one connection from `peer` under both layers of `login`.
fn connect(
    login: &Login,
    peer: &str,
) -> (JoinHandle<Result<(), BoxError>>, BufReader<DuplexStream>) {
    let (conn, client) = duplex_conn(peer);
    let service = login
        .ban_layer()
        .layer(login.session_layer().layer(service_fn(protocol)));
    (tokio::spawn(service.oneshot(conn)), BufReader::new(client))
}

async fn ask(client: &mut BufReader<DuplexStream>, line: &str) -> Option<String> {
    client
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .ok()?;
    let mut answer = String::new();
    match client.read_line(&mut answer).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(answer.trim_end().to_owned()),
    }
}

async fn closed(client: &mut BufReader<DuplexStream>) -> bool {
    let mut rest = Vec::new();
    matches!(
        within(secs(120), client.read_to_end(&mut rest)).await,
        Ok(0)
    )
}

fn ip(address: &str) -> std::net::IpAddr {
    address.parse().unwrap()
}

fn login(builder: LoginBuilder) -> Login {
    builder.build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_failed_login_closes_the_connection_right_after_its_reply() {
    let login = login(Login::builder());
    let (connection, mut client) = connect(&login, "192.0.2.1:1");
    assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
    assert!(closed(&mut client).await);
    within(PATIENCE, connection).await.unwrap().unwrap();
    let stats = login.stats();
    assert_eq!((stats.failed_logins, stats.evicted_after_failures), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_connection_gets_its_configured_tries() {
    let login = login(Login::builder().max_auth_tries(3));
    let (_connection, mut client) = connect(&login, "192.0.2.1:1");
    assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
    assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
    assert_eq!(ask(&mut client, "good").await.as_deref(), Some("OK"));
    assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
    assert!(closed(&mut client).await);
}

#[tokio::test(start_paused = true)]
async fn an_evicted_connection_that_does_not_finish_is_cut_after_the_grace() {
    let login = login(Login::builder().eviction_grace(secs(2)));
    let stubborn = service_fn(|conn: Conn<DuplexStream>| async move {
        let session = conn.login_session().cloned().unwrap();
        let _ = session.failed();
        // Ignores the close it was asked for.
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(())
    });
    let (conn, _client) = duplex_conn("192.0.2.1:1");
    let began = Instant::now();
    let outcome = login.session_layer().layer(stubborn).oneshot(conn).await;
    let error = outcome.unwrap_err();
    assert_eq!(
        error.downcast_ref::<Evicted>(),
        Some(&Evicted {
            reason: EvictReason::AuthFailures(1)
        })
    );
    assert_eq!(began.elapsed(), secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_its_reply_is_cut_after_the_grace() {
    let login = login(Login::builder().eviction_grace(secs(1)));
    // A window of 4 bytes: the reply cannot be flushed until the client reads.
    let (server_side, mut client) = tokio::io::duplex(4);
    let conn = Conn::new(server_side, addr("192.0.2.1:1"), addr("127.0.0.1:80"));
    let service =
        login
            .session_layer()
            .layer(service_fn(|mut conn: Conn<DuplexStream>| async move {
                let session = conn.login_session().cloned().unwrap();
                let _ = session.failed();
                conn.io_mut()
                    .write_all(b"DENIED: a long explanation\n")
                    .await?;
                Ok::<_, BoxError>(())
            }));
    let connection = tokio::spawn(service.oneshot(conn));
    let outcome = within(PATIENCE, connection).await.unwrap();
    assert!(outcome.unwrap_err().downcast_ref::<Evicted>().is_some());
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"DENI", "only what fitted in the window");
}

#[tokio::test(start_paused = true)]
async fn enough_failures_ban_the_peer_and_the_ban_expires() {
    let login = login(
        Login::builder()
            .max_failures(3)
            .ban(secs(60))
            .ban_message(&b"ERROR banned\n"[..]),
    );
    for _ in 0..3 {
        let (_connection, mut client) = connect(&login, "192.0.2.1:1");
        assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
    }
    let bans = login.bans();
    assert_eq!(bans.banned_for(addr("192.0.2.1:0").ip()), Some(secs(60)));

    let (refused, mut client) = connect(&login, "192.0.2.1:2");
    let error = within(PATIENCE, refused).await.unwrap().unwrap_err();
    assert!(
        matches!(rejected(&error).reason(), Reason::Banned { remaining, .. } if *remaining == secs(60))
    );
    let mut told = String::new();
    client.read_line(&mut told).await.unwrap();
    assert_eq!(told, "ERROR banned\n");

    // Another peer is not affected.
    let (_connection, mut other) = connect(&login, "192.0.2.2:1");
    assert_eq!(ask(&mut other, "good").await.as_deref(), Some("OK"));

    tokio::time::advance(secs(60)).await;
    let (_connection, mut client) = connect(&login, "192.0.2.1:3");
    assert_eq!(ask(&mut client, "good").await.as_deref(), Some("OK"));
    let stats = login.stats();
    assert_eq!(
        (stats.bans, stats.refused_banned, stats.failed_logins),
        (1, 1, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn repeat_offences_escalate_up_to_the_cap() {
    let login = login(
        Login::builder()
            .max_failures(1)
            .ban(secs(10))
            .ban_escalation(3, secs(50)),
    );
    let peer = addr("192.0.2.1:0").ip();
    for expected in [10, 30, 50, 50] {
        let (_connection, mut client) = connect(&login, "192.0.2.1:1");
        assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
        assert_eq!(login.bans().banned_for(peer), Some(secs(expected)));
        tokio::time::advance(secs(expected)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_capped_ban_is_remembered_for_forget_after_from_its_end() {
    let login = login(
        Login::builder()
            .max_failures(1)
            .ban(secs(10))
            .ban_escalation(2, secs(40))
            .forget_after(secs(40)),
    );
    let peer = addr("192.0.2.1:0").ip();
    // The last wait covers the ban and one sweep (every 5 s) after it.
    for (ban, wait) in [(10, 10), (20, 20), (40, 45), (40, 0)] {
        let (_connection, mut client) = connect(&login, "192.0.2.1:1");
        assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
        assert_eq!(login.bans().banned_for(peer), Some(secs(ban)));
        tokio::time::sleep(secs(wait)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn exempt_peers_are_never_banned() {
    let keying = PeerKeying::default()
        .exempt(["10.0.0.0/8".parse().unwrap()])
        .unwrap();
    let login = login(Login::builder().keying(keying).max_failures(1));
    for port in 0..5 {
        let (_connection, mut client) = connect(&login, &format!("10.0.0.1:{port}"));
        assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
        assert!(closed(&mut client).await, "still evicted after its tries");
    }
    assert!(login.bans().list().is_empty());
    assert_eq!(login.stats().tracked_peers, 0);
}

#[tokio::test(start_paused = true)]
async fn a_peer_quiet_long_enough_starts_over() {
    let login = login(
        Login::builder()
            .max_failures(2)
            .failure_window(secs(60))
            .ban(secs(10))
            .forget_after(secs(100)),
    );
    let peer = addr("192.0.2.1:0").ip();
    for _ in 0..2 {
        let (_connection, mut client) = connect(&login, "192.0.2.1:1");
        ask(&mut client, "bad").await;
    }
    assert_eq!(login.bans().banned_for(peer), Some(secs(10)));
    // The layer's own sweep forgets the peer after 100 quiet seconds.
    tokio::time::sleep(secs(200)).await;
    assert_eq!(login.stats().tracked_peers, 0);
    for _ in 0..2 {
        let (_connection, mut client) = connect(&login, "192.0.2.1:1");
        ask(&mut client, "bad").await;
    }
    assert_eq!(
        login.bans().banned_for(peer),
        Some(secs(10)),
        "a first offence again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_does_not_log_in_in_time_is_closed() {
    let login = login(Login::builder().login_timeout(secs(30)));
    let began = Instant::now();
    let (connection, mut idle) = connect(&login, "192.0.2.1:1");
    let (_logged_in, mut user) = connect(&login, "192.0.2.2:1");
    assert_eq!(ask(&mut user, "good").await.as_deref(), Some("OK"));
    assert!(closed(&mut idle).await);
    assert_eq!(began.elapsed(), secs(30));
    within(PATIENCE, connection).await.unwrap().unwrap();
    tokio::time::sleep(secs(60)).await;
    assert_eq!(
        ask(&mut user, "good").await.as_deref(),
        Some("OK"),
        "not affected"
    );
    assert_eq!(login.stats().evicted_login_timeout, 1);
}

#[tokio::test(start_paused = true)]
async fn the_pre_authentication_budget_refuses_when_full_and_frees_on_login() {
    let login = login(
        Login::builder()
            .max_startups(2, 100, 2)
            .startup_message(&b"ERROR busy\n"[..]),
    );
    let (_a, mut first) = connect(&login, "192.0.2.1:1");
    let (_b, _second) = connect(&login, "192.0.2.2:1");
    let (refused, mut third) = connect(&login, "192.0.2.3:1");
    let error = within(PATIENCE, refused).await.unwrap().unwrap_err();
    assert_eq!(
        rejected(&error).reason(),
        &Reason::StartupsFull { limit: 2 }
    );
    let mut told = String::new();
    third.read_line(&mut told).await.unwrap();
    assert_eq!(told, "ERROR busy\n");

    assert_eq!(ask(&mut first, "good").await.as_deref(), Some("OK"));
    assert_eq!(login.stats().unauthenticated, 1);
    let (_c, mut fourth) = connect(&login, "192.0.2.4:1");
    assert_eq!(ask(&mut fourth, "good").await.as_deref(), Some("OK"));
}

#[tokio::test(start_paused = true)]
async fn a_peer_holds_at_most_its_share_of_unauthenticated_connections() {
    let login = login(Login::builder().per_source_max_startups(2));
    let held: Vec<_> = (0..2)
        .map(|port| connect(&login, &format!("192.0.2.1:{port}")))
        .collect();
    let (refused, _client) = connect(&login, "192.0.2.1:9");
    let error = within(PATIENCE, refused).await.unwrap().unwrap_err();
    assert!(matches!(
        rejected(&error).reason(),
        Reason::PeerStartups { limit: 2, .. }
    ));
    let (_other, mut other) = connect(&login, "192.0.2.2:1");
    assert_eq!(ask(&mut other, "good").await.as_deref(), Some("OK"));
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_banned_peers_live_connections_can_be_evicted_too() {
    let login = login(
        Login::builder()
            .max_failures(2)
            .max_auth_tries(5)
            .evict_banned_connections(true),
    );
    let (_idle, mut idle) = connect(&login, "192.0.2.1:1");
    let (_failing, mut failing) = connect(&login, "192.0.2.1:2");
    let (_other, mut other) = connect(&login, "192.0.2.2:1");
    assert_eq!(ask(&mut failing, "bad").await.as_deref(), Some("DENIED"));
    assert_eq!(ask(&mut failing, "bad").await.as_deref(), Some("DENIED"));
    assert!(closed(&mut idle).await);
    assert!(closed(&mut failing).await);
    assert_eq!(ask(&mut other, "good").await.as_deref(), Some("OK"));
    assert_eq!(login.stats().evicted_banned, 2);
}

/// A ban made by an operator evicts as one made by offences does: by `ban`, by a ban of
/// a network no wider than a peer key, by an import. A network wider than a key is
/// not looked up peer by peer: its peers' live connections go on, their new ones are
/// refused.
#[tokio::test(start_paused = true)]
async fn an_operators_ban_evicts_the_peers_live_connections_too() {
    let login = login(Login::builder().evict_banned_connections(true));
    let (_banned, mut banned) = connect(&login, "192.0.2.1:1");
    let (_network, mut network) = connect(&login, "192.0.2.2:1");
    let (_imported, mut imported) = connect(&login, "[2001:db8:1:5::1]:1");
    let (_wide, mut wide) = connect(&login, "198.51.100.7:1");
    let (_other, mut other) = connect(&login, "192.0.2.9:1");
    // Every connection admitted and in its session.
    tokio::time::sleep(secs(1)).await;
    assert_eq!(login.stats().sessions, 5);
    let bans = login.bans();
    bans.ban(ip("192.0.2.1"), secs(600)).unwrap();
    assert!(closed(&mut banned).await);
    bans.ban_network("192.0.2.2/32".parse().unwrap(), secs(600))
        .unwrap();
    assert!(closed(&mut network).await);
    bans.import("2001:db8:1:5::/64 600 1\n").unwrap();
    assert!(closed(&mut imported).await);
    assert_eq!(login.stats().evicted_banned, 3);

    bans.ban_network("198.51.100.0/24".parse().unwrap(), secs(600))
        .unwrap();
    assert_eq!(ask(&mut wide, "good").await.as_deref(), Some("OK"));
    let (refused, _) = connect(&login, "198.51.100.8:1");
    assert!(within(secs(5), refused).await.unwrap().is_err());
    assert_eq!(ask(&mut other, "good").await.as_deref(), Some("OK"));
    assert_eq!(login.stats().evicted_banned, 3);
}

/// Dry run serves what a ban would refuse: nor does it evict a banned peer's live
/// connections, or its new ones once the ban check has let them through.
#[tokio::test(start_paused = true)]
async fn in_dry_run_a_banned_peers_connections_are_served_not_evicted() {
    let login = login(
        Login::builder()
            .max_failures(2)
            .max_auth_tries(5)
            .evict_banned_connections(true)
            .dry_run(true),
    );
    let (_idle, mut idle) = connect(&login, "192.0.2.1:1");
    let (_failing, mut failing) = connect(&login, "192.0.2.1:2");
    assert_eq!(ask(&mut failing, "bad").await.as_deref(), Some("DENIED"));
    assert_eq!(ask(&mut failing, "bad").await.as_deref(), Some("DENIED"));
    assert!(login.bans().banned_for(ip("192.0.2.1")).is_some());
    let (_new, mut new) = connect(&login, "192.0.2.1:3");
    login.bans().ban(ip("192.0.2.1"), secs(600)).unwrap();
    tokio::time::sleep(secs(5)).await;
    assert_eq!(ask(&mut idle, "good").await.as_deref(), Some("OK"));
    assert_eq!(ask(&mut new, "good").await.as_deref(), Some("OK"));
    let stats = login.stats();
    assert_eq!(
        (stats.evicted_banned, stats.dry_run_refusals),
        (0, 1),
        "{stats}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_operator_can_ban_list_and_lift() {
    let login = login(Login::builder());
    let bans = login.bans();
    bans.ban(addr("[2001:db8:1:2::7]:0").ip(), secs(300))
        .unwrap();
    let (refused, _client) = connect(&login, "[2001:db8:1:2::99]:1");
    assert!(
        within(PATIENCE, refused).await.unwrap().is_err(),
        "the whole /64"
    );
    assert_eq!(bans.list().len(), 1);
    assert_eq!(bans.list()[0].key.to_string(), "2001:db8:1:2::/64");
    assert!(bans.unban(addr("[2001:db8:1:2::1]:0").ip()));
    let (_connection, mut client) = connect(&login, "[2001:db8:1:2::99]:2");
    assert_eq!(ask(&mut client, "good").await.as_deref(), Some("OK"));
}

/// An operator merges another server's export into this one's bans (a sister
/// service's list, or a cron job that shares bans between replicas without Redis).
/// Here two peers are banned for an hour by their failed logins; the other server's
/// bans of them are nearly over: one minute left, and one whose last millisecond
/// exports as `0.000`. An import adds bans: it must not cut short, or lift, a ban in
/// force here.
#[tokio::test(start_paused = true)]
async fn an_import_neither_shortens_nor_lifts_a_ban_in_force() {
    let login = login(Login::builder().max_failures(1).ban(secs(3600)));
    for peer in ["192.0.2.1:1", "192.0.2.2:1"] {
        let (_connection, mut client) = connect(&login, peer);
        assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
    }
    let bans = login.bans();
    assert_eq!(bans.list().len(), 2);
    let imported = bans.import("192.0.2.1/32 60.000 1\n192.0.2.2/32 0.000 1\n");
    assert_eq!(imported, Ok(2));
    let (shortened, lifted) = (
        bans.banned_for(ip("192.0.2.1")),
        bans.banned_for(ip("192.0.2.2")),
    );
    assert!(
        shortened.is_some_and(|left| left > secs(3000))
            && lifted.is_some_and(|left| left > secs(3000)),
        "bans of an hour in force, after the import: {shortened:?} and {lifted:?} left"
    );
}

/// A /48 spray: each of `peers` /64s fails one login, all at once.
async fn spray_one_failure_each(login: &Login, peers: u16) {
    for n in 0..peers {
        let (_connection, mut client) = connect(login, &format!("[2001:db8:0:{n:x}::1]:1"));
        ask(&mut client, "bad").await;
    }
}

/// A login whose ban table holds 64 peers; 3 failures within a minute ban.
fn small_table(overflow: Overflow) -> Login {
    login(
        Login::builder()
            .max_tracked_peers(64)
            .failure_window(secs(60))
            .max_failures(3)
            .overflow(overflow),
    )
}

const NEWCOMER: &str = "192.0.2.1:1";

async fn fail_three_times(login: &Login, peer: &str) {
    for _ in 0..3 {
        let (_connection, mut client) = connect(login, peer);
        assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
    }
}

#[tokio::test(start_paused = true)]
async fn peers_that_failed_once_are_forgotten_after_two_windows() {
    let login = small_table(Overflow::Admit);
    spray_one_failure_each(&login, 1024).await;
    assert_eq!(login.stats().tracked_peers, 64, "every shard full");
    // Long past two windows, well short of `forget_after` (24 h).
    tokio::time::sleep(secs(3 * 3600 + 120)).await;
    fail_three_times(&login, NEWCOMER).await;
    assert!(login.bans().banned_for(addr(NEWCOMER).ip()).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_table_refusing_when_full_lets_newcomers_in_once_old_failures_are_forgotten() {
    let login = small_table(Overflow::Refuse);
    spray_one_failure_each(&login, 1024).await;
    assert_eq!(login.stats().tracked_peers, 64, "every shard full");
    tokio::time::sleep(secs(3 * 3600 + 120)).await;
    let (_connection, mut client) = connect(&login, NEWCOMER);
    assert_eq!(ask(&mut client, "good").await.as_deref(), Some("OK"));
}

#[tokio::test(start_paused = true)]
async fn a_table_full_of_fresh_failures_makes_way_for_a_new_offender() {
    for overflow in [Overflow::Admit, Overflow::Refuse] {
        let login = small_table(overflow);
        spray_one_failure_each(&login, 1024).await;
        assert_eq!(login.stats().tracked_peers, 64, "every shard full");
        fail_three_times(&login, NEWCOMER).await;
        assert!(
            login.bans().banned_for(addr(NEWCOMER).ip()).is_some(),
            "{overflow:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_network_banned_whole_is_refused_at_accept() {
    let login = login(Login::builder());
    let bans = login.bans();
    let network = "2001:db8:1::/48".parse().unwrap();
    bans.ban_network(network, secs(300)).unwrap();
    let (refused, _client) = connect(&login, "[2001:db8:1:5::1]:1");
    let error = within(PATIENCE, refused).await.unwrap().unwrap_err();
    assert!(
        matches!(rejected(&error).reason(), Reason::Banned { remaining, .. } if *remaining == secs(300))
    );
    let (_outside, mut outside) = connect(&login, "[2001:db8:2::1]:1");
    assert_eq!(ask(&mut outside, "good").await.as_deref(), Some("OK"));

    assert!(bans.unban_network(network));
    let (_connection, mut client) = connect(&login, "[2001:db8:1:5::1]:2");
    assert_eq!(ask(&mut client, "good").await.as_deref(), Some("OK"));
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// One failed login from `peer`, then long enough for the sweep to forget it.
async fn fail_once_and_wait_for_the_sweep(login: &Login, peer: &str) {
    let (_connection, mut client) = connect(login, peer);
    assert_eq!(ask(&mut client, "bad").await.as_deref(), Some("DENIED"));
    assert_eq!(login.stats().tracked_peers, 1);
    tokio::time::sleep(secs(200)).await;
}

#[test]
fn the_sweep_starts_on_a_runtime_after_a_first_connection_outside_one() {
    let login = login(Login::builder().failure_window(secs(60)));
    let (conn, _client) = duplex_conn("192.0.2.1:1");
    let mut service = login.ban_layer().layer(service_fn(protocol));
    drop(tower::Service::call(&mut service, conn));

    paused_runtime().block_on(async {
        fail_once_and_wait_for_the_sweep(&login, "192.0.2.1:1").await;
        assert_eq!(login.stats().tracked_peers, 0);
    });
}

#[test]
fn the_sweep_moves_to_the_next_runtime_when_its_own_ends() {
    let login = login(Login::builder().failure_window(secs(60)));
    paused_runtime().block_on(async {
        let (_connection, mut client) = connect(&login, "192.0.2.1:1");
        assert_eq!(ask(&mut client, "good").await.as_deref(), Some("OK"));
    });
    paused_runtime().block_on(async {
        fail_once_and_wait_for_the_sweep(&login, "192.0.2.2:1").await;
        assert_eq!(login.stats().tracked_peers, 0);
    });
}

#[test]
fn a_policy_that_cannot_work_is_refused_when_built() {
    assert!(Login::builder().max_auth_tries(0).build().is_err());
    assert!(Login::builder().max_failures(0).build().is_err());
    assert!(Login::builder().ban(Duration::ZERO).build().is_err());
    assert!(Login::builder().ban_escalation(2, secs(1)).build().is_err());
    assert!(Login::builder().max_startups(10, 30, 5).build().is_err());
    assert!(Login::builder().max_startups(1, 130, 5).build().is_err());
    assert!(
        Login::builder()
            .login_timeout(Duration::ZERO)
            .build()
            .is_err()
    );
}

/// `AfterFailure::TryAgain` says the connection may try again; the HTTP path refuses
/// every attempt on a connection being closed (`tries_left` is 0 once evicted). A raw
/// protocol that reads its next line on `TryAgain`, as the module's example does, must
/// then be told `Closing` by a failure on a connection that is being closed: here, the
/// failure that bans its peer, whose live connections are evicted, and a failure after
/// the protocol asked for the connection to be evicted.
#[tokio::test(start_paused = true)]
async fn a_failure_on_a_connection_being_closed_says_it_is_closing() {
    let login = login(
        Login::builder()
            .max_failures(1)
            .max_auth_tries(3)
            .evict_banned_connections(true),
    );
    let (told, answers) = std::sync::mpsc::channel();
    let service = login
        .ban_layer()
        .layer(
            login
                .session_layer()
                .layer(service_fn(move |conn: Conn<DuplexStream>| {
                    let session = conn.login_session().cloned().unwrap();
                    let told = told.clone();
                    async move {
                        // The failure that bans the peer.
                        let banning = session.failed();
                        // Asked to close, then one more failure.
                        session.evict();
                        let after_eviction = session.failed();
                        told.send((banning, after_eviction)).unwrap();
                        Ok::<_, BoxError>(())
                    }
                })),
        );
    let (conn, _client) = duplex_conn("192.0.2.1:1");
    within(PATIENCE, service.oneshot(conn)).await.unwrap();
    let (banning, after_eviction) = answers.recv().unwrap();
    assert!(login.bans().banned_for(ip("192.0.2.1")).is_some());
    assert_eq!(
        (banning, after_eviction),
        (AfterFailure::Closing, AfterFailure::Closing),
        "(the failure that banned the peer, a failure once evicted); {}",
        login.stats()
    );
}
