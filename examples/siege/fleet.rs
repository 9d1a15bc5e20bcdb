//! The login flood across a fleet: two replicas of the protected login server, each
//! banning alone, then sharing bans and offences on one Redis, while one attacker
//! alternates failed logins between them. Alone, each replica counts only the failures
//! it sees, so the attacker gets the ban threshold on each; in a fleet the failures add
//! up, and the threshold holds for the whole service.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{
    Server,
    attacks::{self, App, EXCHANGE_TIMEOUT, Sample},
    redis::{Redis, RedisBinary},
};

/// This part's name in the report.
pub const ATTACK: &str = "login flood across 2 replicas";

/// The replicas' Redis key prefix.
const PREFIX: &str = "siege";

/// The attacker's address, in a block of [`attacks::peer`] no other attack uses.
fn attacker() -> Ipv4Addr {
    attacks::peer(9, 0)
}

/// The pause between two tries: about a round trip to a client in the same region.
/// Without it, on loopback, the try right after the one that bans can reach the other
/// replica before the ban's message through Redis does (about a millisecond), and the
/// figure measures that race instead of the threshold.
pub const PACE: Duration = Duration::from_millis(10);

/// At most this many tries, whatever the time.
const MOST_TRIES: usize = 1000;

/// How long the replicas may take to subscribe to the fleet's decisions.
const JOINING: Duration = Duration::from_secs(10);

/// How the two replicas ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Each replica keeps its own bans and counts.
    Alone,
    /// The replicas share bans and offences on one Redis.
    Fleet,
}

impl Sharing {
    pub const BOTH: [Sharing; 2] = [Sharing::Alone, Sharing::Fleet];

    pub fn name(self) -> &'static str {
        match self {
            Sharing::Alone => "alone",
            Sharing::Fleet => "fleet",
        }
    }
}

/// One run of the flood against two replicas.
pub struct FleetRow {
    pub sharing: Sharing,
    /// Wrong passwords the replicas answered (`DENIED`) before both refused the
    /// attacker.
    pub failed_tries: usize,
    /// Tries refused with `ERROR banned`.
    pub refused: usize,
    /// How long after its first try every replica refused the attacker; `None` if they
    /// had not by the end of the attack.
    pub banned_everywhere: Option<Duration>,
    /// The legitimate client's requests, to both replicas.
    pub samples: Vec<Sample>,
}

impl FleetRow {
    pub fn legit_success(&self) -> f64 {
        let ok = self.samples.iter().filter(|s| s.latency.is_some()).count();
        ok as f64 / self.samples.len().max(1) as f64
    }
}

/// Finds `redis-server`, or installs it when the siege runs as root; without it the
/// siege stops here, before any attack.
pub fn redis_binary() -> RedisBinary {
    RedisBinary::find_or_install().unwrap_or_else(|| {
        super::common::fail("--fleet: no redis-server on PATH (apt-get install redis-server)")
    })
}

/// Runs the flood against two fresh replicas, sharing bans on a fresh Redis or not,
/// with the legitimate client on both, for at most `duration`.
pub async fn run(sharing: Sharing, binary: &RedisBinary, duration: Duration) -> FleetRow {
    // Refused in user space, a banned peer reads `ERROR banned`: the kernel filter
    // would drop its later tries unanswered.
    let mut flags = vec!["--no-kernel-bans".to_owned()];
    let redis = (sharing == Sharing::Fleet).then(|| tokio::task::block_in_place(|| binary.start()));
    if let Some(redis) = &redis {
        flags.extend([
            "--redis".to_owned(),
            redis.url(),
            "--redis-prefix".to_owned(),
            PREFIX.to_owned(),
        ]);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let replicas = [
        Server::start(App::Login, true, &flags).await,
        Server::start(App::Login, true, &flags).await,
    ];
    if let Some(redis) = &redis {
        joined(redis, replicas.len()).await;
    }
    let targets = replicas.each_ref().map(|replica| replica.addr);

    let began = Instant::now();
    let legit =
        targets.map(|target| tokio::spawn(attacks::legit(App::Login, target, began, duration)));
    // A moment of legitimate traffic alone, then the attack.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut row = flood(sharing, targets, Instant::now() + duration).await;
    for client in legit {
        row.samples
            .extend(client.await.expect("the legitimate client"));
    }
    row.samples.sort_by_key(|sample| sample.at);
    for replica in replicas {
        replica.stop().await;
    }
    row
}

/// One attacker, one connection per try, a wrong password on each, taking the replicas
/// in turn, a try every [`PACE`], until every replica has refused it or `ends`.
async fn flood(sharing: Sharing, targets: [SocketAddr; 2], ends: Instant) -> FleetRow {
    let mut row = FleetRow {
        sharing,
        failed_tries: 0,
        refused: 0,
        banned_everywhere: None,
        samples: Vec::new(),
    };
    let mut refused_by = [false; 2];
    let first = Instant::now();
    for turn in 0..MOST_TRIES {
        if Instant::now() >= ends {
            break;
        }
        let replica = turn % targets.len();
        match wrong_password(targets[replica]).await.as_deref() {
            Some("DENIED") => row.failed_tries += 1,
            Some("ERROR banned") => {
                row.refused += 1;
                refused_by[replica] = true;
            }
            // Refused for another reason, or not answered: neither a try nor a ban.
            _ => {}
        }
        if refused_by.iter().all(|refused| *refused) {
            row.banned_everywhere = Some(first.elapsed());
            break;
        }
        tokio::time::sleep(PACE).await;
    }
    row
}

/// Logs in with a wrong password; the server's first line, or `None` if it closed
/// without one.
async fn wrong_password(target: SocketAddr) -> Option<String> {
    let stream = attacks::connect_from(attacker(), target).await.ok()?;
    let mut stream = BufReader::new(stream);
    // A refused peer may find the socket closed before it writes: the refusal is
    // read all the same.
    let _ = stream.get_mut().write_all(b"LOGIN alice wrong\n").await;
    let mut line = String::new();
    match tokio::time::timeout(EXCHANGE_TIMEOUT, stream.read_line(&mut line)).await {
        Ok(Ok(read)) if read > 0 => Some(line.trim_end().to_owned()),
        _ => None,
    }
}

/// Waits until `replicas` replicas are subscribed to the fleet's decisions: before
/// that, a ban made elsewhere would not reach them.
async fn joined(redis: &Redis, replicas: usize) {
    let began = Instant::now();
    while redis.fleet_subscribers(PREFIX) < replicas {
        assert!(
            began.elapsed() < JOINING,
            "the replicas did not join the fleet on Redis within {JOINING:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
