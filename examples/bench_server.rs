//! The helper binary of `bench/e2e.sh`: two accept-and-close servers to compare the
//! crate's accept loop and admission layers against a bare tokio accept loop, and two
//! clients that load a server and read its CPU time or memory from `/proc`.
//!
//! ```text
//! bench_server --mode bare|protected [--addr IP:PORT]
//! bench_server --mode churn --target IP:PORT --connections N [--concurrency C]
//!              [--server-pid PID] [--deadline S]
//! bench_server --mode hold  --target IP:PORT --connections N [--concurrency C]
//!              [--server-pid PID] [--deadline S]
//! ```
//!
//! Servers follow the example servers' contract: `--addr` (default `127.0.0.1:0`), a
//! first stdout line `listening on IP:PORT`, logs on stderr (`RUST_LOG`), exit status 2
//! on a bad flag, and a clean exit on SIGINT/SIGTERM.
//!
//! - `bare`: accept, `tokio::spawn` a task that drops the stream. The least a tokio
//!   server can do per connection.
//! - `protected`: `tower_bouncer::serve::Server` over every admission layer (bans, rate,
//!   per-peer cap, total cap, timeouts, login sessions) in the examples' order, with the
//!   limits lifted so that nothing is refused, around a service that drops the
//!   connection. The difference from `bare` is the crate's cost per connection.
//!
//! Clients (a single-threaded runtime, so that on a 2-core machine the server keeps a
//! core to itself while the client saturates the other):
//!
//! - `churn`: opens and closes N connections, C at a time; each waits for the server to
//!   close it (EOF), so when the client ends, the server has handled every connection.
//!   With `--server-pid`, prints the server's utime+stime (clock ticks, from
//!   `/proc/PID/stat`) before and after, and its on-CPU nanoseconds from
//!   `/proc/PID/task/*/schedstat` as a finer cross-check.
//! - `hold`: warms the server up with a few HTTP/1.1 requests on connections it then
//!   closes, then opens N keep-alive connections, sends `GET /` on each, reads the `200`,
//!   and keeps them all open. With `--server-pid`, prints the server's `VmRSS` before the
//!   N connections and once they are all established and answered.
//!
//! Every client run is bounded by `--deadline` (default 120 s) and each connection
//! step by 10 s.

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    process,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{bind, fail, init_logging, shutdown_signal, value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::ServiceBuilder;
use tower_bouncer::{
    Conn,
    limit::ConnectionLimitLayer,
    login::Login,
    peer::PeerKeying,
    peer_limit::PeerLimitLayer,
    rate_limit::{Rate, RateLimitLayer},
    serve::Server,
    timeout::{TimedIo, TimeoutLayer},
};

/// Lifted limits, the same values `bench/e2e.sh` passes to axum_server: far above what
/// loopback can reach, so every connection is admitted and the layers' admission path
/// (not their refusal path) is what gets measured.
const LIFTED_RATE: u32 = 100_000_000;
const LIFTED_CONNECTIONS: usize = 1_000_000;

/// One step of one client connection (connect, write, read) may take this long before
/// the run is declared failed: far above loopback latency, well under the run deadline.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Time for the server to finish the work the client's last connections gave it
/// (dropping tasks, freeing buffers) before it is sampled again.
const SETTLE: Duration = Duration::from_millis(300);

/// Connections opened, used and closed before the memory baseline is read, so that
/// one-time allocations (thread-local caches, malloc arenas, lazily built router
/// state) land before the "before" sample and not in the per-connection figure.
const WARMUP_CONNECTIONS: usize = 64;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    Protected,
    Churn,
    Hold,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "bare" => Ok(Mode::Bare),
            "protected" => Ok(Mode::Protected),
            "churn" => Ok(Mode::Churn),
            "hold" => Ok(Mode::Hold),
            _ => Err("expected bare, protected, churn or hold".to_owned()),
        }
    }
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    addr: SocketAddr,
    target: Option<SocketAddr>,
    connections: usize,
    concurrency: usize,
    server_pid: Option<u32>,
    deadline: Duration,
}

const USAGE: &str = "\
usage: bench_server --mode bare|protected [--addr IP:PORT]
       bench_server --mode churn|hold --target IP:PORT --connections N
                    [--concurrency C] [--server-pid PID] [--deadline S]
  --mode M          bare or protected: a server; churn or hold: a client
  --addr IP:PORT    where a server listens (default 127.0.0.1:0)
  --target IP:PORT  the server a client loads
  --connections N   churn: connections to open and close; hold: connections to keep open
  --concurrency C   connections being opened at once (default 64)
  --server-pid PID  read this process's CPU time (churn) or VmRSS (hold) before and after
  --deadline S      give up after S seconds (default 120)";

impl Args {
    fn from_env() -> Self {
        let mut args = Args {
            mode: Mode::Bare,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            target: None,
            connections: 10_000,
            concurrency: 64,
            server_pid: None,
            deadline: Duration::from_secs(120),
        };
        let mut mode = None;
        let mut argv = std::env::args().skip(1);
        while let Some(flag) = argv.next() {
            match flag.as_str() {
                "--mode" => mode = Some(value(&flag, argv.next())),
                "--addr" => args.addr = value(&flag, argv.next()),
                "--target" => args.target = Some(value(&flag, argv.next())),
                "--connections" => args.connections = value(&flag, argv.next()),
                "--concurrency" => args.concurrency = value(&flag, argv.next()),
                "--server-pid" => args.server_pid = Some(value(&flag, argv.next())),
                "--deadline" => {
                    args.deadline = Duration::from_secs(value(&flag, argv.next()));
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    process::exit(0);
                }
                _ => fail(format_args!("unknown flag `{flag}` (see --help)")),
            }
        }
        args.mode = mode.unwrap_or_else(|| fail("`--mode` is required (see --help)"));
        if matches!(args.mode, Mode::Churn | Mode::Hold) && args.target.is_none() {
            fail("a client mode needs `--target IP:PORT`");
        }
        if args.concurrency == 0 {
            fail("`--concurrency` must be at least 1");
        }
        args
    }
}

fn main() {
    let args = Args::from_env();
    match args.mode {
        Mode::Bare | Mode::Protected => {
            init_logging();
            // Both servers get the runtime the example servers get (`#[tokio::main]`:
            // one worker per core, the server in a task on one of them), so the only
            // difference between them is the per-connection path.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("building the runtime");
            let server = runtime.spawn(run_server(args));
            runtime
                .block_on(server)
                .expect("the server's task does not panic");
        }
        Mode::Churn | Mode::Hold => {
            // One thread: the client takes one core and leaves the other to the server.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the runtime");
            let outcome = runtime.block_on(async {
                match tokio::time::timeout(args.deadline, run_client(&args)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("not done within {:?}", args.deadline)),
                }
            });
            if let Err(error) = outcome {
                eprintln!("error: {error}");
                process::exit(1);
            }
        }
    }
}

async fn run_server(args: Args) {
    // Installed before the port is announced: a SIGTERM right after the `listening on`
    // line must stop the server cleanly, not kill it.
    let shutdown = shutdown_signal();
    let listener = bind(args.addr).await;

    match args.mode {
        Mode::Bare => bare(listener, shutdown).await,
        Mode::Protected => protected(listener, shutdown).await,
        Mode::Churn | Mode::Hold => unreachable!("not a server mode"),
    }
}

/// The baseline: a plain tokio accept loop.
async fn bare(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                tokio::spawn(async move { drop(stream) });
            }
            Err(error) => {
                // Out of descriptors and the like: without a pause the loop would spin
                // on the same error.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    tracing::info!("server stopped");
}

/// The protocol under the protected stack: done as soon as it starts.
async fn drop_connection(conn: Conn<TimedIo<TcpStream>>) -> Result<(), Infallible> {
    drop(conn);
    Ok(())
}

/// The crate's accept loop over every admission layer, built as
/// `examples/common/protection.rs` builds them (same order, same timeouts) but with the
/// limits lifted.
async fn protected(listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
    let keying = PeerKeying::default();
    let lifted = Rate::per_second(LIFTED_RATE).burst(LIFTED_RATE);
    let build = || -> Result<_, tower_bouncer::ConfigError> {
        let login = Login::builder().keying(keying.clone()).build()?;
        let rate = RateLimitLayer::builder()
            .per_peer(lifted)
            .global(lifted)
            .keying(keying.clone())
            .build()?;
        let per_peer = PeerLimitLayer::builder(LIFTED_CONNECTIONS)
            .keying(keying.clone())
            .build()?;
        let total = ConnectionLimitLayer::builder(LIFTED_CONNECTIONS).build()?;
        // The examples' default timeouts: they arm per connection whatever their length.
        let timeouts = TimeoutLayer::builder()
            .first_byte(Duration::from_secs(10))
            .idle(Duration::from_secs(60))
            .request(Duration::from_secs(10))
            .lifetime(Duration::from_secs(3600))
            .build()?;
        Ok(ServiceBuilder::new()
            .layer(login.ban_layer())
            .layer(rate)
            .layer(per_peer)
            .layer(total)
            .layer(timeouts)
            .layer(login.session_layer())
            .service(tower::service_fn(drop_connection)))
    };
    let service = build().unwrap_or_else(|error| fail(error));
    let report = Server::new(listener)
        .drain_timeout(Duration::from_secs(1))
        .with_graceful_shutdown(shutdown)
        .serve(service)
        .await;
    if let Err(error) = report {
        eprintln!("error: server failed: {error}");
        process::exit(1);
    }
}

async fn run_client(args: &Args) -> Result<(), String> {
    let target = args.target.expect("checked in from_env");
    match args.mode {
        Mode::Churn => churn(target, args).await,
        Mode::Hold => hold(target, args).await,
        Mode::Bare | Mode::Protected => unreachable!("not a client mode"),
    }
}

/// Awaits `future`, failing the run if it takes longer than [`STEP_TIMEOUT`]; `what`
/// names the step in the error.
async fn step<T>(
    what: &str,
    future: impl Future<Output = std::io::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{what}: {error}")),
        Err(_) => Err(format!("{what}: no progress in {STEP_TIMEOUT:?}")),
    }
}

/// Opens and closes `args.connections` connections, `args.concurrency` at a time.
async fn churn(target: SocketAddr, args: &Args) -> Result<(), String> {
    let before = args.server_pid.map(cpu_sample).transpose()?;
    let began = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let total = args.connections as u64;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(args.connections.max(1)) {
        let next = next.clone();
        workers.spawn(async move {
            let mut buf = [0u8; 64];
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let mut stream = step("connect", TcpStream::connect(target)).await?;
                // The server closes first: EOF means it accepted and dropped this one.
                // A reset means the same thing for this benchmark.
                match tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut buf)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(_)) => return Err("the server sent data; expected a close".into()),
                    Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
                    Ok(Err(error)) => return Err(format!("read: {error}")),
                    Err(_) => return Err(format!("read: no close in {STEP_TIMEOUT:?}")),
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|error| format!("client task: {error}"))??;
    }
    let elapsed = began.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = args.server_pid.map(cpu_sample).transpose()?;
    println!(
        "connections={} elapsed_s={:.3} per_second={:.0}",
        args.connections,
        elapsed.as_secs_f64(),
        args.connections as f64 / elapsed.as_secs_f64()
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "server_ticks={} server_cpu_ns={}",
            after.ticks.saturating_sub(before.ticks),
            after.nanos.saturating_sub(before.nanos)
        );
    }
    Ok(())
}

/// A server's CPU time so far.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    /// utime + stime, in clock ticks (`getconf CLK_TCK`).
    ticks: u64,
    /// Time on CPU of its threads, in nanoseconds.
    nanos: u64,
}

fn cpu_sample(pid: u32) -> Result<CpuSample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|error| format!("/proc/{pid}/stat: {error}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // from after its closing parenthesis, where field 3 (state) starts.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state's index 0.
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {}", n + 3))
    };
    let ticks = field(11)? + field(12)?;

    // schedstat's first field is nanoseconds on CPU, per thread; the servers' threads
    // live as long as the process, so the sum is the process's.
    let mut nanos = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|error| format!("/proc/{pid}/task: {error}"))?;
    for task in tasks.flatten() {
        if let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) {
            nanos += schedstat
                .split_whitespace()
                .next()
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(CpuSample { ticks, nanos })
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|error| format!("/proc/{pid}/status: {error}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status has no VmRSS"))
}

/// Opens `count` connections, `concurrency` at a time, each answered once.
async fn open_answered(
    target: SocketAddr,
    count: usize,
    concurrency: usize,
) -> Result<Vec<TcpStream>, String> {
    let mut open = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    while open.len() < count {
        while started < count && pending.len() < concurrency {
            pending.spawn(one_request(target));
            started += 1;
        }
        let joined = pending.join_next().await.expect("a task is pending");
        open.push(joined.map_err(|error| format!("client task: {error}"))??);
    }
    Ok(open)
}

/// Connects, sends `GET /`, reads the whole `200` response, and returns the connection
/// still open.
async fn one_request(target: SocketAddr) -> Result<TcpStream, String> {
    let mut stream = step("connect", TcpStream::connect(target)).await?;
    step("write", stream.write_all(REQUEST)).await?;
    let mut response = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let n = step("read", stream.read(&mut buf)).await?;
        if n == 0 {
            return Err(format!(
                "the server closed the connection; it sent {:?}",
                String::from_utf8_lossy(&response)
            ));
        }
        response.extend_from_slice(&buf[..n]);
        if let Some(complete) = complete_response(&response)? {
            if !complete.starts_with("HTTP/1.1 200") {
                return Err(format!("expected a 200, got {complete:?}"));
            }
            return Ok(stream);
        }
    }
}

/// The status line once head and body are both in, `None` while they are not.
fn complete_response(response: &[u8]) -> Result<Option<String>, String> {
    let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&response[..head_end]);
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| format!("a response without content-length: {head:?}"))?;
    if response.len() < head_end + 4 + length {
        return Ok(None);
    }
    Ok(head.lines().next().map(str::to_owned))
}

/// Keeps `args.connections` answered keep-alive connections open and reports the
/// server's resident memory before and after.
async fn hold(target: SocketAddr, args: &Args) -> Result<(), String> {
    let warmup = open_answered(target, WARMUP_CONNECTIONS, args.concurrency).await?;
    drop(warmup);
    tokio::time::sleep(SETTLE).await;
    let before = args.server_pid.map(rss_kib).transpose()?;
    let began = Instant::now();
    let held = open_answered(target, args.connections, args.concurrency).await?;
    let elapsed = began.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = args.server_pid.map(rss_kib).transpose()?;
    println!(
        "connections={} elapsed_s={:.3}",
        held.len(),
        elapsed.as_secs_f64()
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!("rss_before_kib={before} rss_after_kib={after}");
    }
    // Dropping them closes them all: the server is left as it was found.
    drop(held);
    Ok(())
}
