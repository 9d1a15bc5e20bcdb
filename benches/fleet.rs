//! The fleet's figures in BENCHMARKS.md, on a real Redis this benchmark starts on a free
//! loopback port and stops at the end:
//!
//! 1. What a replica in a fleet pays on its hot paths, against the same login alone, in
//!    interleaved rounds (medians): admission (the ban check, every admission layer),
//!    and a connection that fails one login, where the fleet adds a `try_send`.
//! 2. How long a ban or an unban made on one replica takes to reach another: two
//!    logins in this process, each with its own runtime and its own Redis connections.
//! 3. What Redis runs per failed login, per ban and per unban (`INFO commandstats`),
//!    and per periodic reload.
//!
//! ```text
//! cargo bench --bench fleet --features redis            # 21 rounds, 1000 bans (~30 s)
//! cargo bench --bench fleet --features redis -- --quick # 5 rounds, 300 bans
//! ```

mod support;

#[path = "../examples/siege/redis.rs"]
mod redis_server;

use std::{
    collections::BTreeMap,
    future::{Ready, ready},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use redis_server::{Redis, RedisBinary};
use tokio::runtime::Runtime;
use tower::{Layer, Service, service_fn, util::ServiceFn};
use tower_bouncer::{
    BoxError, Conn,
    fleet::{Fleet, RedisBackend},
    login::{Login, LoginBuilder},
};

use support::*;

/// Connections per round for the admission figures, as in `ratios`.
const CONNECTIONS: u64 = 200_000;
/// High enough that no peer here is ever banned for failed logins.
const NEVER_BANNED: u32 = 1_000_000;
const BAN: Duration = Duration::from_secs(600);
/// The longest wait for anything the fleet does; a benchmark that waits longer fails.
const PATIENCE: Duration = Duration::from_secs(10);
/// The longest wait for one ban or unban to arrive; a sample that waits longer is
/// counted as lost.
const PROPAGATION_PATIENCE: Duration = Duration::from_secs(2);
/// Long enough that no periodic reload falls inside a measurement, except where it is
/// the measurement.
const NO_RESYNC: Duration = Duration::from_secs(3600);
const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (rounds, propagation_samples, events) = if quick {
        (5, 300, 200)
    } else {
        (21, 1000, 500)
    };
    // As the tests do: installed when missing and this runs as root; otherwise the
    // benchmark fails, rather than succeed having measured nothing.
    let Some(binary) = RedisBinary::find_or_install() else {
        eprintln!(
            "error: redis-server is not installed and could not be (apt-get install redis-server): nothing measured"
        );
        std::process::exit(1);
    };
    let redis = binary.start();
    println!("redis-server on 127.0.0.1:{}", redis.port);
    println!("{rounds} interleaved rounds; medians.\n");

    hot_paths(&redis, rounds);
    propagation(&redis, propagation_samples);
    commands(&redis, events);
    reload_cost(&redis);
}

/// A runtime with one worker: a replica's own, as if it were a process of its own.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A login in the fleet under `prefix`, connected and with its first reload done.
struct Replica {
    login: Login,
    fleet: Fleet,
}

impl Replica {
    fn join(
        runtime: &Runtime,
        redis: &Redis,
        prefix: &str,
        builder: LoginBuilder,
        resync_every: Duration,
    ) -> Self {
        let login = builder.build().unwrap();
        let backend = RedisBackend::new(&redis.url())
            .unwrap()
            .prefix(prefix)
            .unwrap();
        let fleet = {
            let _context = runtime.enter();
            Fleet::builder(backend)
                .resync_every(resync_every)
                .join(&login)
                .unwrap()
        };
        let ready = wait_until(PATIENCE, || {
            let stats = fleet.stats();
            stats.connected && stats.resyncs >= 1
        });
        assert!(
            ready,
            "the replica did not connect to Redis: {:?}",
            fleet.stats()
        );
        Self { login, fleet }
    }
}

/// Waits, up to `patience`, until `done()`; whether it came.
fn wait_until(patience: Duration, mut done: impl FnMut() -> bool) -> bool {
    let began = Instant::now();
    while !done() {
        if began.elapsed() > patience {
            return false;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    true
}

/// The protocol: every connection fails one login.
fn fail_login(conn: Conn<Io>) -> Ready<Result<(), BoxError>> {
    let session = conn
        .login_session()
        .cloned()
        .expect("the session layer gives every connection a session");
    let _closing = session.failed();
    ready(Ok(()))
}

type FailLogin = ServiceFn<fn(Conn<Io>) -> Ready<Result<(), BoxError>>>;

/// The ban check and the session layer over a protocol whose connections fail a login.
fn failing(
    login: &Login,
) -> impl Service<Conn<Io>, Response = (), Error = BoxError> + Clone + Send + 'static + use<> {
    let protocol: FailLogin = service_fn(fail_login as fn(_) -> _);
    login
        .ban_layer()
        .layer(login.session_layer().layer(protocol))
}

/// One connection from `peer` through `service`, run to its end.
fn connect<S>(service: &mut S, peer: SocketAddr)
where
    S: Service<Conn<Io>, Response = ()>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let connection = pin!(service.call(Conn::new(tokio::io::empty(), peer, LOCAL)));
    match connection.poll(&mut cx) {
        Poll::Ready(outcome) => outcome.unwrap(),
        Poll::Pending => unreachable!("the protocol finishes at once"),
    }
}

/// Changes the fleet has sent to Redis; 0 for a login alone.
fn sent(fleet: Option<&Fleet>) -> u64 {
    fleet.map_or(0, |fleet| fleet.stats().sent)
}

/// Where a failed login is reported from.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// A task on the replica's runtime, as a server's connections run: waking the sync
    /// task puts it in this worker's own queue.
    Worker,
    /// A thread outside the runtime (a blocking pool's, say): waking the idle sync task
    /// means waking the runtime's parked worker.
    Outside,
}

/// Runs `work` as `caller` does, on `runtime`.
fn run_as<T: Send + 'static>(
    runtime: &Runtime,
    caller: Caller,
    work: impl Future<Output = T> + Send + 'static,
) -> T {
    match caller {
        Caller::Worker => runtime
            .block_on(runtime.spawn(work))
            .expect("the task finishes"),
        Caller::Outside => runtime.block_on(work),
    }
}

/// How failed logins come in a round.
#[derive(Debug, Clone, Copy)]
struct Pattern {
    /// Failed logins timed back to back.
    burst: u64,
    bursts: u64,
    /// The least pause after each burst, fleet or not.
    pause: Duration,
}

/// Failed logins back to back, half the fleet's offence queue (4096) at a time, so
/// that none is dropped: the sync task is busy sending while they come.
const BURSTS: Pattern = Pattern {
    burst: 2048,
    bursts: 2,
    pause: Duration::ZERO,
};

/// Failed logins one at a time, each after the fleet has sent the one before: each
/// finds the sync task idle and wakes it, as sparse failures do.
const ONE_BY_ONE: Pattern = Pattern {
    burst: 1,
    bursts: 300,
    pause: Duration::from_micros(300),
};

/// A round of failed logins from `first_peer` on, in `pattern`, reported by `caller`;
/// after each burst it waits until the pause is over and (in a fleet) Redis has every
/// offence. Returns the time per failed login, and the offences a second the sync task
/// sent to Redis counted from each burst's start.
async fn failed_logins<S>(
    mut service: S,
    fleet: Option<Fleet>,
    first_peer: u32,
    pattern: Pattern,
    caller: Caller,
) -> (f64, f64)
where
    S: Service<Conn<Io>, Response = ()>,
    S::Error: std::fmt::Debug,
{
    let fleet = fleet.as_ref();
    let mut peer_number = first_peer;
    let mut timed = Duration::ZERO;
    let mut forwarding = Duration::ZERO;
    for _ in 0..pattern.bursts {
        let target = sent(fleet) + fleet.map_or(0, |_| pattern.burst);
        let began = Instant::now();
        for _ in 0..pattern.burst {
            connect(&mut service, peer(2, peer_number));
            peer_number = peer_number.wrapping_add(1);
        }
        timed += began.elapsed();
        while began.elapsed() < pattern.pause || sent(fleet) < target {
            assert!(
                began.elapsed() < PATIENCE,
                "the fleet did not send the offences"
            );
            match caller {
                Caller::Worker => tokio::task::yield_now().await,
                // As a blocking pool's thread does between jobs: off the core.
                Caller::Outside => std::thread::sleep(Duration::from_micros(50)),
            }
        }
        forwarding += began.elapsed();
    }
    let count = pattern.burst * pattern.bursts;
    (
        per_op(timed, count),
        count as f64 / forwarding.as_secs_f64(),
    )
}

fn hot_paths(redis: &Redis, rounds: usize) {
    let runtime = runtime();
    let alone = Login::builder().max_failures(NEVER_BANNED).build().unwrap();
    let member = Replica::join(
        &runtime,
        redis,
        "hot-paths",
        Login::builder().max_failures(NEVER_BANNED),
        NO_RESYNC,
    );
    // Both logins' janitors start alike, on the first connection.
    let _context = runtime.enter();

    println!("## Hot paths: a login alone against the same login in a fleet (Redis connected)\n");
    println!("| what | alone | in a fleet | difference | ratio | target | met |");
    println!("|---|---|---|---|---|---|---|");
    let row = |what: &str, alone: f64, fleet: f64, target: &str, met: Option<bool>| {
        let met = met.map_or("—", |met| if met { "yes" } else { "no" });
        println!(
            "| {what} | {alone:.1} ns | {fleet:.1} ns | {:+.1} ns | {:.3}× | {target} | {met} |",
            fleet - alone,
            fleet / alone
        );
    };

    // A second login alone, against the first: how far two identical cases differ.
    let other = Login::builder().max_failures(NEVER_BANNED).build().unwrap();
    let mut check_alone = alone.ban_layer().layer(inner());
    let mut check_member = member.login.ban_layer().layer(inner());
    let mut check_other = other.ban_layer().layer(inner());
    let [check_alone, check_member, check_other] = interleaved(
        rounds,
        [
            &mut || per_op(run(&mut check_alone, 0, CONNECTIONS), CONNECTIONS),
            &mut || per_op(run(&mut check_member, 0, CONNECTIONS), CONNECTIONS),
            &mut || per_op(run(&mut check_other, 0, CONNECTIONS), CONNECTIONS),
        ],
    );
    row(
        "admission, the ban check alone, per connection",
        check_alone,
        check_member,
        "≤ +5 %",
        Some(check_member <= 1.05 * check_alone),
    );
    row(
        "the same, a second login alone in the fleet's place (the noise floor)",
        check_alone,
        check_other,
        "—",
        None,
    );

    let mut stack_alone = all_admission_with(&alone, inner());
    let mut stack_member = all_admission_with(&member.login, inner());
    let [stack_alone, stack_member] = interleaved(
        rounds,
        [
            &mut || per_op(run(&mut stack_alone, 0, CONNECTIONS), CONNECTIONS),
            &mut || per_op(run(&mut stack_member, 0, CONNECTIONS), CONNECTIONS),
        ],
    );
    row(
        "admission, every admission layer stacked, per connection",
        stack_alone,
        stack_member,
        "≤ +5 %",
        Some(stack_member <= 1.05 * stack_alone),
    );

    let failing_alone = failing(&alone);
    let failing_member = failing(&member.login);
    let mut forwarded = Vec::new();
    for (caller, pattern, what) in [
        (
            Caller::Worker,
            BURSTS,
            "on a runtime worker, 2048 back to back",
        ),
        (
            Caller::Worker,
            ONE_BY_ONE,
            "on a runtime worker, one at a time",
        ),
        (
            Caller::Outside,
            ONE_BY_ONE,
            "outside the runtime, one at a time",
        ),
    ] {
        // Every failed login from a peer of its own (4096 in turn), as many in each case.
        let count = (pattern.burst * pattern.bursts) as u32;
        let (mut peers_alone, mut peers_member) = (0u32, 0u32);
        let mut rates = Vec::with_capacity(rounds);
        let [alone_ns, member_ns] = interleaved(
            rounds,
            [
                &mut || {
                    let work =
                        failed_logins(failing_alone.clone(), None, peers_alone, pattern, caller);
                    peers_alone = peers_alone.wrapping_add(count);
                    run_as(&runtime, caller, work).0
                },
                &mut || {
                    let fleet = Some(member.fleet.clone());
                    let work =
                        failed_logins(failing_member.clone(), fleet, peers_member, pattern, caller);
                    peers_member = peers_member.wrapping_add(count);
                    let (ns, rate) = run_as(&runtime, caller, work);
                    rates.push(rate);
                    ns
                },
            ],
        );
        row(
            &format!("a connection that fails one login, {what}"),
            alone_ns,
            member_ns,
            "—",
            None,
        );
        if pattern.burst > 1 {
            forwarded.push(format!("{:.0}/s {what}", median(rates)));
        }
    }
    let stats = member.fleet.stats();
    println!(
        "\nOffences the sync task sent to Redis while catching up with a burst (one script \
         call each, up to 256 in a pipeline; median of the rounds): {}. Dropped: {}; link failures: {}.\n",
        forwarded.join(", "),
        stats.dropped,
        stats.failures
    );
}

/// The `n`-th address for propagation: one never banned before in this run.
fn fresh(n: u32) -> IpAddr {
    let [_, _, high, low] = n.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(198, 18, high, low))
}

/// When a condition was first seen true, and how long before that it was last seen
/// false: the resolution of that sample.
struct Seen {
    after: Duration,
    poll_gap: Duration,
}

/// Polls `condition` as fast as this thread can (yielding the core between polls),
/// from `began`, up to [`PROPAGATION_PATIENCE`].
fn poll_until(began: Instant, mut condition: impl FnMut() -> bool) -> Option<Seen> {
    let mut last = began;
    loop {
        let now = Instant::now();
        if condition() {
            return Some(Seen {
                after: now - began,
                poll_gap: now - last,
            });
        }
        if now - began > PROPAGATION_PATIENCE {
            return None;
        }
        last = now;
        std::thread::yield_now();
    }
}

/// Percentiles of `samples`, in milliseconds.
struct Spread {
    p50: f64,
    p99: f64,
    max: f64,
}

fn spread(mut samples: Vec<Duration>) -> Spread {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index].as_secs_f64() * 1e3
    };
    Spread {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Waits until both replicas have applied one more decision each (the publisher gets
/// its own back), so the next sample starts with the fleet idle; whether they did.
fn settle(a: &Replica, b: &Replica, applied: (u64, u64)) -> bool {
    wait_until(PROPAGATION_PATIENCE, || {
        a.fleet.stats().applied > applied.0 && b.fleet.stats().applied > applied.1
    })
}

fn propagation(redis: &Redis, samples: u32) {
    let (runtime_a, runtime_b) = (runtime(), runtime());
    let a = Replica::join(
        &runtime_a,
        redis,
        "propagation",
        Login::builder(),
        NO_RESYNC,
    );
    let b = Replica::join(
        &runtime_b,
        redis,
        "propagation",
        Login::builder(),
        NO_RESYNC,
    );
    let (bans_a, bans_b) = (a.login.bans(), b.login.bans());
    let mut bans = Vec::with_capacity(samples as usize);
    let mut unbans = Vec::with_capacity(samples as usize);
    let mut gaps = Vec::with_capacity(2 * samples as usize);
    let mut lost = 0;
    let mut unsettled = 0;
    for n in 0..samples {
        let ip = fresh(n);
        let applied = (a.fleet.stats().applied, b.fleet.stats().applied);
        let began = Instant::now();
        bans_a.ban(ip, BAN).unwrap();
        match poll_until(began, || bans_b.banned_for(ip).is_some()) {
            Some(seen) => {
                bans.push(seen.after);
                gaps.push(seen.poll_gap);
            }
            None => lost += 1,
        }
        unsettled += u32::from(!settle(&a, &b, applied));

        let applied = (a.fleet.stats().applied, b.fleet.stats().applied);
        let began = Instant::now();
        bans_a.unban(ip);
        match poll_until(began, || bans_b.banned_for(ip).is_none()) {
            Some(seen) => {
                unbans.push(seen.after);
                gaps.push(seen.poll_gap);
            }
            None => lost += 1,
        }
        unsettled += u32::from(!settle(&a, &b, applied));
    }

    println!("## Propagation: made on replica A, seen on replica B ({samples} fresh addresses)\n");
    println!("| change | p50 | p99 | max | samples |");
    println!("|---|---|---|---|---|");
    for (what, samples) in [("ban", bans), ("unban", unbans)] {
        let count = samples.len();
        let Spread { p50, p99, max } = spread(samples);
        println!("| {what} | {p50:.3} ms | {p99:.3} ms | {max:.3} ms | {count} |");
    }
    let gap = spread(gaps);
    println!(
        "\nPoll granularity (time since the poll before the one that saw it): p50 {:.1} µs, \
         p99 {:.1} µs. Lost (over {PROPAGATION_PATIENCE:?}): {lost}; fleet not idle before \
         the next sample: {unsettled}; link failures: {}.\n",
        gap.p50 * 1e3,
        gap.p99 * 1e3,
        a.fleet.stats().failures + b.fleet.stats().failures
    );
}

/// Redis's counters: calls and microseconds by command, and every command it ran.
struct CommandStats {
    by_command: BTreeMap<String, (u64, u64)>,
    total: u64,
}

impl CommandStats {
    fn read(connection: &mut redis::Connection) -> Self {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .arg("stats")
            .query(connection)
            .expect("INFO answers");
        let mut by_command = BTreeMap::new();
        let mut total = 0;
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("cmdstat_") {
                let (name, fields) = rest.split_once(':').expect("name:fields");
                let field = |wanted: &str| {
                    fields
                        .split(',')
                        .find_map(|field| field.strip_prefix(wanted)?.strip_prefix('='))
                        .and_then(|value| value.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                by_command.insert(name.to_owned(), (field("calls"), field("usec")));
            } else if let Some(value) = line.strip_prefix("total_commands_processed:") {
                total = value.trim().parse().expect("a count");
            }
        }
        Self { by_command, total }
    }

    /// What ran since `before`, without the INFO that read it.
    fn since(&self, before: &Self) -> Self {
        let mut by_command = BTreeMap::new();
        for (name, &(calls, usec)) in &self.by_command {
            let (calls_before, usec_before) =
                before.by_command.get(name).copied().unwrap_or_default();
            if calls > calls_before && name != "info" {
                by_command.insert(name.clone(), (calls - calls_before, usec - usec_before));
            }
        }
        let infos = self.calls("info") - before.calls("info");
        Self {
            by_command,
            total: self.total - before.total - infos,
        }
    }

    fn calls(&self, name: &str) -> u64 {
        self.by_command.get(name).map_or(0, |&(calls, _)| calls)
    }

    fn usec(&self, name: &str) -> u64 {
        self.by_command.get(name).map_or(0, |&(_, usec)| usec)
    }

    /// Commands run inside scripts and out, per event; each PUBLISH is a message to
    /// each of `subscribers`.
    fn row(&self, what: &str, events: u64, subscribers: u64) {
        let per = |count: u64| count as f64 / events as f64;
        let inside: u64 = self
            .by_command
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "evalsha" | "eval" | "script|load"))
            .map(|(_, &(calls, _))| calls)
            .sum();
        let breakdown: Vec<String> = self
            .by_command
            .iter()
            .map(|(name, &(calls, _))| format!("{name} {:.2}", per(calls)))
            .collect();
        println!(
            "| {what} | {events} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} µs | {} |",
            per(self.calls("evalsha")),
            per(inside),
            per(self.calls("publish")),
            per(self.calls("publish") * subscribers),
            per(self.total),
            self.usec("evalsha") as f64 / self.calls("evalsha").max(1) as f64,
            breakdown.join(", ")
        );
    }
}

/// A connection of this benchmark's own, for `INFO` and `PUBSUB`, that never waits
/// longer than [`PATIENCE`].
fn info_connection(redis: &Redis) -> redis::Connection {
    let connection = redis::Client::open(redis.url())
        .and_then(|client| client.get_connection_with_timeout(PATIENCE))
        .expect("a connection to Redis");
    connection
        .set_read_timeout(Some(PATIENCE))
        .and_then(|()| connection.set_write_timeout(Some(PATIENCE)))
        .expect("timeouts on a TCP connection");
    connection
}

/// Waits until `done()`, or fails the benchmark: counting needs every change in Redis.
fn expect(what: &str, done: impl FnMut() -> bool) {
    assert!(wait_until(PATIENCE, done), "waited too long: {what}");
}

fn commands(redis: &Redis, events: u32) {
    let runtime = runtime();
    let a = Replica::join(&runtime, redis, "commands", Login::builder(), NO_RESYNC);
    let b = Replica::join(&runtime, redis, "commands", Login::builder(), NO_RESYNC);
    let mut info = info_connection(redis);
    let numsub: Vec<(String, u64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("{commands}:decisions")
        .query(&mut info)
        .expect("PUBSUB answers");
    let subscribers = numsub[0].1;
    let mut service = failing(&a.login);
    let count = u64::from(events);

    // Each script once, so that Redis has them all and none is loaded while counting.
    connect(&mut service, "192.0.2.1:1".parse().unwrap());
    let warm_up: IpAddr = "192.0.2.2".parse().unwrap();
    // Apart: an unban made before its ban is sent replaces it.
    a.login.bans().ban(warm_up, BAN).unwrap();
    expect("the warm-up ban reaches Redis", || {
        a.fleet.stats().sent >= 2
    });
    a.login.bans().unban(warm_up);
    expect("the warm-up unban reaches Redis", || {
        a.fleet.stats().sent >= 3
    });
    expect("the warm-up's decisions come back", || {
        a.fleet.stats().applied >= 1 && b.fleet.stats().applied >= 1
    });
    std::thread::sleep(Duration::from_millis(50));

    println!("## Redis per event ({subscribers} replicas subscribed to the decisions)\n");
    println!(
        "| event | events | script calls | commands inside the scripts | PUBLISH | messages to replicas | total_commands_processed | Redis time per script call | by command, per event |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");

    // Failed logins from distinct peers, each its peer's first: an offence each.
    let sent = a.fleet.stats().sent;
    let before = CommandStats::read(&mut info);
    for n in 0..events {
        connect(&mut service, peer(4, n));
    }
    expect("the offences reach Redis", || {
        a.fleet.stats().sent >= sent + count
    });
    CommandStats::read(&mut info).since(&before).row(
        "failed login (below the threshold)",
        count,
        subscribers,
    );

    // Bans made on A, then their unbans.
    let targets: Vec<IpAddr> = (0..events).map(fresh).collect();
    // Bans, then unbans, of the same addresses, each made on A and awaited on both.
    let mut per_decision = |what: &str, decide: &dyn Fn(IpAddr)| {
        let (sent, applied_a, applied_b) = (
            a.fleet.stats().sent,
            a.fleet.stats().applied,
            b.fleet.stats().applied,
        );
        let before = CommandStats::read(&mut info);
        for &ip in &targets {
            decide(ip);
        }
        expect(&format!("the {what}s reach Redis"), || {
            a.fleet.stats().sent >= sent + count
        });
        expect(&format!("the {what}s reach both replicas"), || {
            a.fleet.stats().applied >= applied_a + count
                && b.fleet.stats().applied >= applied_b + count
        });
        CommandStats::read(&mut info)
            .since(&before)
            .row(what, count, subscribers);
    };
    per_decision("ban", &|ip| a.login.bans().ban(ip, BAN).unwrap());
    per_decision("unban", &|ip| {
        a.login.bans().unban(ip);
    });

    // Peers banned by their fifth failed login: five offences and the ban each.
    let banned = count / 5;
    let (sent, applied_b) = (a.fleet.stats().sent, b.fleet.stats().applied);
    let before = CommandStats::read(&mut info);
    for n in 0..banned as u32 {
        for _ in 0..5 {
            connect(&mut service, peer(5, n));
        }
    }
    expect("the offences and bans reach Redis", || {
        a.fleet.stats().sent >= sent + 6 * banned
    });
    expect("the bans reach B", || {
        b.fleet.stats().applied >= applied_b + banned
    });
    std::thread::sleep(Duration::from_millis(50));
    CommandStats::read(&mut info).since(&before).row(
        "ban by the fifth failed login (five offences and the ban)",
        banned,
        subscribers,
    );
    println!();
}

/// What one periodic reload costs Redis, with no ban in force, 1000 and 10 000.
fn reload_cost(redis: &Redis) {
    const EVERY: Duration = Duration::from_millis(100);
    const RELOADS: u64 = 20;
    let runtime = runtime();
    let replica = Replica::join(&runtime, redis, "reloads", Login::builder(), EVERY);
    let mut info = info_connection(redis);
    println!("## One periodic reload (default every 30 s per replica)\n");
    println!("| bans in force | commands | Redis time | longest command |");
    println!("|---|---|---|---|");
    let mut measure = |in_force: u32| {
        let before = CommandStats::read(&mut info);
        let resyncs = replica.fleet.stats().resyncs;
        expect("the reloads", || {
            replica.fleet.stats().resyncs >= resyncs + RELOADS
        });
        let reloads = replica.fleet.stats().resyncs - resyncs;
        let after = CommandStats::read(&mut info).since(&before);
        // A reload is the epoch script, then the ban list and the lifted keys read with
        // HSCAN in batches (what ran out is pruned by a script of its own).
        let scripts = after.calls("evalsha");
        let scans = after.calls("hscan");
        assert!(
            scripts >= reloads.saturating_sub(2) && scans >= 2 * reloads.saturating_sub(2),
            "{scripts} scripts and {scans} scans for {reloads} reloads"
        );
        let per_call = |name: &str| after.usec(name) as f64 / after.calls(name).max(1) as f64;
        println!(
            "| {in_force} | {:.1} | {:.0} µs | {:.0} µs |",
            after.total as f64 / reloads as f64,
            (after.usec("evalsha") + after.usec("hscan")) as f64 / reloads as f64,
            per_call("hscan").max(per_call("evalsha")),
        );
    };
    let mut in_force = 0;
    for target in [0, 1000, 10_000] {
        let sent = replica.fleet.stats().sent;
        for n in in_force..target {
            replica.login.bans().ban(fresh(n), BAN).unwrap();
        }
        let added = u64::from(target - in_force);
        expect("the bans reach Redis", || {
            replica.fleet.stats().sent >= sent + added
        });
        in_force = target;
        measure(in_force);
    }
    println!();
}
