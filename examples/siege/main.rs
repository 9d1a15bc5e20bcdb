//! The siege: each attack, against the same server twice, unprotected and protected with
//! the crate's documented defaults, on loopback, in under two minutes.
//!
//! ```text
//! cargo run --release --example siege -- [--quick | --long] [--json FILE] [--plot FILE.svg]
//! cargo run --release --features redis --example siege -- --fleet
//! ```
//!
//! Each server runs in its own process (the siege re-executes itself in a server mode,
//! with the common default limit of 1024 open descriptors), so its descriptors, memory
//! and CPU are measured apart from the attackers. Throughout each attack a legitimate
//! client, on an address of its own, makes a request every 100 ms on a new connection.
//! Every attack is bounded in connections and in time, and only touches 127.0.0.0/8.
//! The banned reconnect storm also runs against the protected server with its bans kept
//! in user space (`--no-kernel-bans`), for the CPU the kernel filter saves.
//!
//! With `--haproxy`, the HTTP attacks also run against the unprotected server behind
//! HAProxy configured with its nearest equivalents (`haproxy` must be installed).
//!
//! Last, a flood from one client through HAProxy as a plain load balancer, against the
//! protected server without and with the PROXY protocol: without it every client is
//! the balancer. It runs when `haproxy` is installed (the siege installs it from the
//! Debian package when it runs as root and it is missing); otherwise it is skipped,
//! with a note.
//!
//! With `--fleet` (built with `--features redis`), a last part: a login flood across a
//! fleet. One attacker alternates failed logins between two replicas of the protected
//! login server, first each banning alone, then sharing bans and offences on one Redis;
//! the report counts the failed tries each allowed before both refused the attacker.
//! It needs `redis-server` (the siege installs it from the Debian package when it runs
//! as root and it is missing). `--fleet-only` runs that part and nothing else.
//!
//! The siege exits with status 3, after its report, when the protected server answered
//! under 95 % of its legitimate client's requests in any attack.

mod attacks;
#[path = "../common/mod.rs"]
mod common;
mod fleet;
mod haproxy;
mod monitor;
mod redis;
mod report;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use attacks::{App, Attack};
use report::{Row, Side};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The descriptor limit the servers start with: the common default.
const SERVER_DESCRIPTORS: u32 = 1024;

/// The siege's exit status when the protected server answered under 95 % of its
/// legitimate client's requests in some attack (bad flags exit 2, panics 101).
const PROTECTION_FAILED: i32 = 3;

#[derive(Debug, Clone)]
struct Options {
    /// How long each attack runs.
    duration: Duration,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    haproxy: bool,
    /// The nine attacks and the flood behind a load balancer; off with `--fleet-only`.
    attacks: bool,
    /// The login flood across a fleet.
    fleet: bool,
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("serve") {
        argv.next();
        serve_mode(argv);
        return;
    }
    let options = parse(argv);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(siege(options));
}

fn parse(mut argv: impl Iterator<Item = String>) -> Options {
    let mut options = Options {
        duration: Duration::from_secs(4),
        json: None,
        plot: None,
        haproxy: false,
        attacks: true,
        fleet: false,
    };
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--quick" => options.duration = Duration::from_millis(1500),
            "--long" => options.duration = Duration::from_secs(15),
            "--json" => options.json = Some(common::value(&flag, argv.next())),
            "--plot" => options.plot = Some(common::value(&flag, argv.next())),
            "--haproxy" => options.haproxy = true,
            "--fleet" => options.fleet = true,
            "--fleet-only" => {
                options.fleet = true;
                options.attacks = false;
            }
            "-h" | "--help" => {
                println!(
                    "usage: siege [--quick | --long] [--json FILE] [--plot FILE.svg] [--haproxy] [--fleet | --fleet-only]"
                );
                std::process::exit(0);
            }
            _ => common::fail(format_args!("unknown flag `{flag}` (see --help)")),
        }
    }
    if options.fleet && !cfg!(feature = "redis") {
        common::fail(
            "--fleet needs Redis: cargo run --release --features redis --example siege -- --fleet",
        );
    }
    if !options.attacks && (options.haproxy || options.plot.is_some()) {
        common::fail("--haproxy and --plot are about the attacks, which --fleet-only leaves out");
    }
    options
}

/// `siege serve axum|login [server flags]`: one of the example servers, in this process;
/// on SIGTERM it prints what its layers did as one `tally` line on stdout.
fn serve_mode(mut argv: impl Iterator<Item = String>) {
    let app = match argv.next().as_deref() {
        Some("axum") => App::Axum,
        Some("login") => App::Login,
        other => common::fail(format_args!("serve what? {other:?}")),
    };
    let args = common::Args::parse(app.name(), app == App::Login, argv);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        common::init_logging();
        // Every server's, for the check that the metrics count what the stats do.
        common::install_metrics_recorder();
        let refusals = match app {
            App::Axum => common::axum_app::refusals(),
            App::Login => common::login_protocol::refusals(),
        };
        let bouncer = common::bouncer(&args, refusals);
        let shutdown = common::shutdown_signal();
        let listener = common::bind(args.addr).await;
        match app {
            App::Axum => common::axum_app::serve(listener, bouncer.as_ref(), shutdown).await,
            App::Login => common::login_protocol::serve(listener, bouncer.as_ref(), shutdown).await,
        }
        let tally = bouncer
            .as_ref()
            .map(common::protection::tally)
            .unwrap_or_default();
        println!(
            "tally refused={} evicted={} banned={} shed={} scaled_ms={} metrics_refused={}",
            tally.refused,
            tally.evicted,
            tally.banned,
            tally.shed,
            tally.scaled.as_millis(),
            metrics_refused()
        );
    });
}

/// The connections the layers refused, as their Prometheus metrics count them (none
/// without the `metrics` feature): the same figure as the stats' by other means.
fn metrics_refused() -> u64 {
    let exposition = common::rendered_metrics().unwrap_or_default();
    exposition
        .lines()
        .filter(|line| {
            line.starts_with("bouncer_rejected_connections_total{")
                && line.contains(r#"outcome="rejected""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A server process started for one attack.
struct Server {
    child: Child,
    addr: SocketAddr,
    stdout: BufReader<tokio::process::ChildStdout>,
}

impl Server {
    /// Starts `app` in a child process with [`SERVER_DESCRIPTORS`] open descriptors
    /// allowed (`protected` raises that to the hard limit itself, as the examples do),
    /// with `flags` added.
    async fn start(app: App, protected: bool, flags: &[&str]) -> Self {
        let myself = std::env::current_exe().expect("the siege's own path");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -Sn {SERVER_DESCRIPTORS} && exec \"$0\" \"$@\""
            ))
            .arg(myself)
            .args(["serve", app.arg()])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if !protected {
            command.arg("--unprotected");
        }
        command.args(flags);
        let mut child = command.spawn().expect("starting a server process");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
            .await
            .expect("the server announces its address")
            .expect("reading the server's stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            child,
            addr,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Stops the server and reads what its layers did.
    async fn stop(mut self) -> common::protection::Tally {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let mut tally = common::protection::Tally::default();
        let read = async {
            let mut line = String::new();
            while self.stdout.read_line(&mut line).await.unwrap_or(0) > 0 {
                if let Some(rest) = line.trim().strip_prefix("tally ") {
                    for field in rest.split(' ') {
                        let (name, value) = field.split_once('=').unwrap_or((field, "0"));
                        let value = value.parse().unwrap_or(0);
                        match name {
                            "refused" => tally.refused = value,
                            "shed" => tally.shed = value,
                            "scaled_ms" => tally.scaled = Duration::from_millis(value),
                            "evicted" => tally.evicted = value,
                            "banned" => tally.banned = value,
                            "metrics_refused" => tally.metrics_refused = value,
                            _ => {}
                        }
                    }
                }
                line.clear();
            }
        };
        // A server that does not drain in time is killed: the figures are still read.
        if tokio::time::timeout(Duration::from_secs(15), read)
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        tally
    }
}

async fn siege(options: Options) {
    // The attackers hold thousands of sockets.
    let _ = tower_bouncer::serve::raise_descriptor_limit();
    let began = Instant::now();
    if options.attacks {
        println!(
            "tower-bouncer siege: {} attacks, {:.1} s each{}, unprotected then protected{}, and a flood behind a load balancer{}",
            Attack::ALL.len(),
            options.duration.as_secs_f64(),
            match Attack::ALL.iter().map(|attack| attack.shortest()).max() {
                Some(shortest) if shortest > options.duration => format!(
                    " (the crowds wider than the cap {:.1} s)",
                    shortest.as_secs_f64()
                ),
                _ => String::new(),
            },
            if options.haproxy {
                ", then behind HAProxy"
            } else {
                ""
            },
            if options.fleet {
                ", and a login flood across a fleet"
            } else {
                ""
            }
        );
    } else {
        println!(
            "tower-bouncer siege: a login flood across 2 replicas, banning alone then as a fleet on Redis, at most {:.1} s each",
            options.duration.as_secs_f64(),
        );
    }
    // Found (or not) before the attacks, not after them.
    let redis = options.fleet.then(fleet::redis_binary);
    let rows = if options.attacks {
        attack(&options).await
    } else {
        Vec::new()
    };
    let mut fleet_rows = Vec::new();
    if let Some(redis) = &redis {
        for sharing in fleet::Sharing::BOTH {
            eprint!("  {:<29} {:<6} ", fleet::ATTACK, sharing.name());
            let row = fleet::run(sharing, redis, options.duration).await;
            eprintln!(
                "legit {:>5.1}% ok, {} failed tries before both refused the attacker",
                row.legit_success() * 100.0,
                row.failed_tries
            );
            fleet_rows.push(row);
        }
    }
    println!();
    let mut verdicts = Vec::new();
    if !rows.is_empty() {
        print!("{}", report::table(&rows));
        println!();
        verdicts.push(report::verdict(&rows));
    }
    if !fleet_rows.is_empty() {
        print!("{}", report::fleet_table(&fleet_rows));
        println!();
        verdicts.push(report::fleet_verdict(&fleet_rows));
    }
    println!("{}", verdicts.join("\n"));
    println!("(took {:.0} s)", began.elapsed().as_secs_f64());
    if let Some(path) = &options.json {
        let json = report::json(&rows, &fleet_rows, &options.duration);
        std::fs::write(path, json).unwrap_or_else(|error| {
            common::fail(format_args!("writing {}: {error}", path.display()))
        });
        println!("figures written to {}", path.display());
    }
    if let Some(path) = &options.plot {
        report::plot(&rows, path).unwrap_or_else(|error| {
            common::fail(format_args!("plotting {}: {error}", path.display()))
        });
        println!("plot written to {}", path.display());
    }
    if !report::protected_served(&rows) {
        // After the figures are written: they say which attack it was.
        eprintln!(
            "error: the protected server did not keep serving its legitimate client (see the verdict above)"
        );
        std::process::exit(PROTECTION_FAILED);
    }
}

/// Runs every attack against each of its servers, and the flood behind a load balancer
/// when HAProxy is there.
async fn attack(options: &Options) -> Vec<Row> {
    let haproxy = haproxy::HaproxyBinary::find_or_install();
    if options.haproxy && haproxy.is_none() {
        common::fail("--haproxy: no haproxy on PATH (apt-get install haproxy)");
    }
    let guard = haproxy.as_ref().filter(|_| options.haproxy);

    let mut runs = Vec::new();
    for attack in Attack::ALL {
        runs.push((attack, Side::Unprotected));
        runs.push((attack, Side::Protected));
        if attack == Attack::BannedReconnectStorm {
            runs.push((attack, Side::UserSpaceBans));
        }
        if guard.is_some() && attack.app() == App::Axum {
            runs.push((attack, Side::Haproxy));
        }
    }
    if haproxy.is_some() {
        runs.push((Attack::BehindBalancer, Side::Balanced));
        runs.push((Attack::BehindBalancer, Side::BalancedProxy));
    } else {
        eprintln!(
            "  (no haproxy: the flood behind a load balancer is skipped; apt-get install haproxy)"
        );
    }

    let mut rows = Vec::new();
    let count = runs.len();
    for (done, (attack, side)) in runs.into_iter().enumerate() {
        let head = format!(
            "  [{:>2}/{count}] {:<22} {:<13} ",
            done + 1,
            attack.name(),
            side.name()
        );
        eprint!("{head}");
        let progress = Progress::show(head, attack.shortest().max(options.duration));
        let row = run_one(attack, side, options, haproxy.as_ref()).await;
        progress.done();
        eprintln!(
            "legit {:>5.1}% ok, {} server descriptors at peak",
            row.legit_success() * 100.0,
            row.peak_descriptors
        );
        rows.push(row);
    }
    rows
}

/// On a terminal, the seconds an attack has run, rewritten in place every half second
/// until its figures replace them.
struct Progress {
    head: String,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn show(head: String, duration: Duration) -> Self {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Self { head, ticker: None };
        }
        let began = Instant::now();
        let line = head.clone();
        let ticker = tokio::spawn(async move {
            let head = line;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                eprint!(
                    "\r{head}{:>4.1} s of {:.0} s\x1b[K",
                    began.elapsed().as_secs_f64(),
                    duration.as_secs_f64()
                );
            }
        });
        Self {
            head,
            ticker: Some(ticker),
        }
    }

    fn done(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
            eprint!("\r{}\x1b[K", self.head);
        }
    }
}

/// The load balancer's own address, which the protected server trusts for PROXY
/// headers.
const BALANCER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 8, 8);

/// The server's flags beyond its defaults for `attack` on `side`.
fn server_flags(attack: Attack, side: Side) -> Vec<String> {
    let mut flags = Vec::new();
    if matches!(attack, Attack::BotnetSpray | Attack::PingCrowd) {
        // The cap a server under the common 1024-descriptor limit gets (three quarters
        // of it), so that the crowd is several times the cap.
        flags.extend(["--max-connections".to_owned(), "768".to_owned()]);
    }
    match side {
        Side::BalancedProxy => {
            flags.extend(["--proxy-protocol-from".to_owned(), format!("{BALANCER}/32")]);
        }
        Side::UserSpaceBans => flags.push("--no-kernel-bans".to_owned()),
        _ => {}
    }
    flags
}

/// Runs `attack` against a fresh server on `side`, with the legitimate client and the
/// monitor alongside, and gathers the figures.
async fn run_one(
    attack: Attack,
    side: Side,
    options: &Options,
    haproxy: Option<&haproxy::HaproxyBinary>,
) -> Row {
    let flags = server_flags(attack, side);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(attack.app(), side.is_protected(), &flags).await;
    let role = match side {
        Side::Haproxy => Some(haproxy::Role::Guard),
        Side::Balanced => Some(haproxy::Role::Balancer {
            source: BALANCER,
            proxy: None,
        }),
        Side::BalancedProxy => Some(haproxy::Role::Balancer {
            source: BALANCER,
            proxy: Some(haproxy::ProxyProtocol::V2),
        }),
        Side::Unprotected | Side::Protected | Side::UserSpaceBans => None,
    };
    let proxy = match (role, haproxy) {
        (Some(role), Some(binary)) => Some(binary.start(server.addr, role).await),
        _ => None,
    };
    let target = proxy.as_ref().map_or(server.addr, |proxy| proxy.addr);
    let mut pids = vec![server.pid()];
    pids.extend(proxy.as_ref().map(|proxy| proxy.pid()));

    let duration = attack.shortest().max(options.duration);
    let began = Instant::now();
    let monitor = monitor::start(pids, began);
    let legit = tokio::spawn(attacks::legit(attack.app(), target, began, duration));
    // A moment of legitimate traffic alone, then the attack.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attack_ends = Instant::now() + duration;
    let opened = attack.run(target, attack_ends).await;

    let samples = legit.await.expect("the legitimate client");
    let usage = monitor.finish().await;
    drop(proxy);
    let tally = server.stop().await;
    Row::new(attack, side, opened, samples, usage, tally)
}
