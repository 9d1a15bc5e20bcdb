//! The attacks and the legitimate client. Every loop here is bounded in count and in
//! time, and every address is in 127.0.0.0/8.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};

/// The server an attack goes after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Axum,
    Login,
}

impl App {
    pub fn name(self) -> &'static str {
        match self {
            App::Axum => "axum_server",
            App::Login => "login_server",
        }
    }

    pub fn arg(self) -> &'static str {
        match self {
            App::Axum => "axum",
            App::Login => "login",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// The 2005 bug: thousands of connections, a wrong password on each, never closed.
    LoginFlood,
    /// Connections that send nothing; one in four sends half an HTTP/2 preface.
    Silent,
    /// Request heads trickled a byte a second.
    Slowloris,
    /// One address opening connections as fast as it can, and keeping them.
    SinglePeerFlood,
    /// Many addresses, each under the per-peer limit, keeping idle connections.
    AddressSpray,
    /// Bad credentials on `/login`, over and over, keep-alive.
    UnauthorizedFlood,
    /// One client flooding through a load balancer for the whole attack, keeping its
    /// connections, as the single-peer flood does.
    BehindBalancer,
    /// Keep-alive connections from many more addresses than the cap allows, each
    /// address within every per-peer limit: several times the cap in all.
    BotnetSpray,
    /// A banned peer reconnecting as fast as it can, from several tasks.
    BannedReconnectStorm,
    /// HTTP/2 connections from many addresses, each making one request, then kept up
    /// by PINGs alone.
    PingCrowd,
}

/// The legitimate client's address.
const LEGIT: Ipv4Addr = Ipv4Addr::new(127, 0, 9, 9);

/// How long any single exchange may take before it counts as failed: on loopback an
/// answer takes milliseconds, so a second means the server is not serving.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);

impl Attack {
    pub const ALL: [Attack; 9] = [
        Attack::LoginFlood,
        Attack::Silent,
        Attack::Slowloris,
        Attack::SinglePeerFlood,
        Attack::AddressSpray,
        Attack::UnauthorizedFlood,
        Attack::BotnetSpray,
        Attack::BannedReconnectStorm,
        Attack::PingCrowd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::LoginFlood => "login flood (2005)",
            Attack::Silent => "silent connections",
            Attack::Slowloris => "slowloris",
            Attack::SinglePeerFlood => "single-peer flood",
            Attack::AddressSpray => "address spray",
            Attack::UnauthorizedFlood => "HTTP 401 flood",
            Attack::BehindBalancer => "flood behind an LB",
            Attack::BotnetSpray => "botnet spray",
            Attack::BannedReconnectStorm => "banned reconnects",
            Attack::PingCrowd => "HTTP/2 PING crowd",
        }
    }

    /// How long the attack runs at least, whatever the siege's duration: a crowd wider
    /// than the cap takes seconds to open (an HTTP/2 handshake and a request per
    /// connection), and the quick siege's 1.5 s is not enough on a loaded machine.
    pub fn shortest(self) -> Duration {
        match self {
            Attack::BotnetSpray | Attack::PingCrowd => Duration::from_secs(4),
            _ => Duration::ZERO,
        }
    }

    pub fn app(self) -> App {
        match self {
            Attack::LoginFlood => App::Login,
            _ => App::Axum,
        }
    }

    /// Runs the attack against `target` until `ends`; returns how many connections the
    /// attacker opened. Its sockets are held until `ends`, and closed when it returns.
    pub async fn run(self, target: SocketAddr, ends: Instant) -> usize {
        let opener = Opener {
            held: Held::default(),
            target,
            ends,
        };
        let mut workers = JoinSet::new();
        match self {
            Attack::LoginFlood => opener.spawn(&mut workers, 8, 3000, |_| peer(0, 2), login_wrong),
            Attack::Silent => opener.spawn(&mut workers, 32, 1500, |n| peer(1, n % 8), silent),
            Attack::Slowloris => {
                opener.spawn(&mut workers, 32, 1500, |n| peer(2, n % 8), slowloris_start);
                workers.spawn(trickle(opener.held.clone(), ends));
            }
            Attack::SinglePeerFlood => {
                opener.spawn(&mut workers, 16, 3000, |_| peer(0, 3), one_request);
            }
            // Paced, so that it lasts the whole attack: 16 workers, a connection every
            // 50 ms each.
            Attack::BehindBalancer => {
                opener.spawn(&mut workers, 16, 100_000, |_| peer(5, 0), paced_request);
            }
            // 800 addresses, 4 connections each: about four times the cap the siege
            // gives the protected server for this attack.
            Attack::BotnetSpray => {
                opener.spawn(&mut workers, 32, 3200, |n| peer(6, n % 800), one_request);
            }
            Attack::BannedReconnectStorm => {
                let attacker = peer(7, 0);
                get_banned(attacker, target).await;
                for _ in 0..8 {
                    let opened = opener.held.opened.clone();
                    workers.spawn(reconnect_loop(attacker, target, ends, opened));
                }
            }
            // 400 addresses, 4 connections each, opened at the pace the server accepts
            // them.
            Attack::PingCrowd => {
                let pinged = move |stream| ping_kept(stream, ends);
                opener.spawn(&mut workers, 32, 1600, |n| peer(8, n % 400), pinged);
            }
            // 250 addresses, 6 connections each: every peer stays under any sane
            // per-peer limit and rate.
            Attack::AddressSpray => {
                opener.spawn(&mut workers, 16, 1500, |n| peer(3, n % 250), one_request);
            }
            Attack::UnauthorizedFlood => {
                for n in 0..16 {
                    let opened = opener.held.opened.clone();
                    workers.spawn(unauthorized_loop(peer(4, n % 4), target, ends, opened));
                }
            }
        }
        while workers.join_next().await.is_some() {}
        tokio::time::sleep_until(ends.into()).await;
        opener.held.opened.load(Ordering::SeqCst)
    }
}

/// Sockets the attacker keeps open until the attack ends.
#[derive(Default, Clone)]
struct Held {
    streams: Arc<Mutex<Vec<TcpStream>>>,
    opened: Arc<AtomicUsize>,
}

/// `127.<block + 10>.<host / 250>.<host % 250 + 1>`: attacker addresses, away from the
/// legitimate client's.
pub fn peer(block: u8, host: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, block + 10, (host / 250) as u8, (host % 250) as u8 + 1)
}

/// Connects to `target` from `from`.
pub async fn connect_from(from: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    tokio::time::timeout(EXCHANGE_TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// Opens attacker connections to one target until a deadline, and holds them.
struct Opener {
    held: Held,
    target: SocketAddr,
    ends: Instant,
}

impl Opener {
    /// Spawns `count` tasks that together open up to `most` connections, the n-th from
    /// `from(n)`, run `open` on each, and hold the socket it gives back.
    fn spawn<F, Fut>(
        &self,
        workers: &mut JoinSet<()>,
        count: usize,
        most: usize,
        from: fn(usize) -> Ipv4Addr,
        open: F,
    ) where
        F: Fn(TcpStream) -> Fut + Copy + Send + 'static,
        Fut: Future<Output = Option<TcpStream>> + Send,
    {
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..count {
            let (held, next, target, ends) =
                (self.held.clone(), next.clone(), self.target, self.ends);
            workers.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= most || Instant::now() >= ends {
                        return;
                    }
                    let Ok(stream) = connect_from(from(n), target).await else {
                        // Refused or timed out: the server's backlog is full.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    held.opened.fetch_add(1, Ordering::SeqCst);
                    let remaining = ends.saturating_duration_since(Instant::now());
                    if let Ok(Some(stream)) = tokio::time::timeout(remaining, open(stream)).await {
                        held.streams.lock().unwrap().push(stream);
                    }
                }
            });
        }
    }
}

/// Sends a wrong password, reads the answer, keeps the socket.
async fn login_wrong(mut stream: TcpStream) -> Option<TcpStream> {
    stream.write_all(b"LOGIN alice wrong\n").await.ok()?;
    let mut answer = [0u8; 64];
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.read(&mut answer)).await;
    Some(stream)
}

/// Sends nothing, or one in four times half an HTTP/2 preface.
async fn silent(mut stream: TcpStream) -> Option<TcpStream> {
    if stream.local_addr().ok()?.port() % 4 == 0 {
        stream.write_all(b"PRI * HTTP/2.0\r\n").await.ok()?;
    }
    Some(stream)
}

/// Starts a request head that [`trickle`] continues.
async fn slowloris_start(mut stream: TcpStream) -> Option<TcpStream> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: siege\r\nX-Slow: ")
        .await
        .ok()?;
    Some(stream)
}

/// Adds one header byte a second to every held connection, until `ends`.
async fn trickle(held: Held, ends: Instant) {
    while Instant::now() < ends {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut streams = std::mem::take(&mut *held.streams.lock().unwrap());
        let mut alive = Vec::with_capacity(streams.len());
        for stream in streams.drain(..) {
            // A socket whose buffer is full is not waited on.
            if stream.try_write(b"a").is_ok() {
                alive.push(stream);
            }
        }
        held.streams.lock().unwrap().extend(alive);
    }
}

/// One complete request, its answer read, the connection kept open (keep-alive).
async fn one_request(mut stream: TcpStream) -> Option<TcpStream> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: siege\r\n\r\n")
        .await
        .ok()?;
    let mut answer = [0u8; 512];
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.read(&mut answer)).await;
    Some(stream)
}

/// Gets `from` banned: five wrong passwords, each on a connection of its own (the
/// server closes a connection after its failed login).
async fn get_banned(from: Ipv4Addr, target: SocketAddr) {
    const WRONG: &[u8] =
        b"GET /login HTTP/1.1\r\nHost: siege\r\nAuthorization: Basic YWxpY2U6d3Jvbmc=\r\nConnection: close\r\n\r\n";
    for _ in 0..5 {
        let Ok(mut stream) = connect_from(from, target).await else {
            continue;
        };
        if stream.write_all(WRONG).await.is_ok() {
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.read_to_end(&mut answer)).await;
        }
    }
}

/// Connects, reads whatever the server says, and reconnects, as fast as it can, until
/// `ends`: a banned client that will not take no for an answer.
async fn reconnect_loop(
    from: Ipv4Addr,
    target: SocketAddr,
    ends: Instant,
    opened: Arc<AtomicUsize>,
) {
    // At most this many attempts per task, whatever the time.
    let mut budget = 100_000usize;
    while Instant::now() < ends && budget > 0 {
        budget -= 1;
        // Dropped in the kernel, a connection attempt waits out EXCHANGE_TIMEOUT.
        let Ok(mut stream) = connect_from(from, target).await else {
            continue;
        };
        opened.fetch_add(1, Ordering::SeqCst);
        // A request, as an HTTP client sends: the refusal answers it.
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: siege\r\n\r\n")
            .await;
        let mut answer = [0u8; 256];
        let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.read(&mut answer)).await;
    }
}

/// Makes `stream` an HTTP/2 connection with one request, then leaves a task behind that
/// sends a PING every half second until `ends`, never another request.
async fn ping_kept(stream: TcpStream, ends: Instant) -> Option<TcpStream> {
    let handshake = tokio::time::timeout(EXCHANGE_TIMEOUT, h2::client::handshake(stream)).await;
    let Ok(Ok((mut sender, mut connection))) = handshake else {
        return None;
    };
    let mut pings = connection.ping_pong()?;
    let connection = tokio::spawn(async move {
        connection.await.ok();
    });
    let request = http::Request::get("http://siege/").body(()).unwrap();
    if let Ok((response, _)) = sender.send_request(request, true) {
        let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, response).await;
    }
    tokio::spawn(async move {
        while Instant::now() < ends && !connection.is_finished() {
            let next = (Instant::now() + Duration::from_millis(500)).min(ends);
            tokio::time::sleep_until(next.into()).await;
            let remaining = ends.saturating_duration_since(Instant::now());
            if tokio::time::timeout(remaining, pings.ping(h2::Ping::opaque()))
                .await
                .is_err()
            {
                break;
            }
        }
        // Keeps the request handle alive until here: dropping it would let h2 close.
        drop(sender);
        connection.abort();
    });
    None
}

/// One request, then a pause before the next connection.
async fn paced_request(stream: TcpStream) -> Option<TcpStream> {
    let held = one_request(stream).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    held
}

/// Bad credentials on `/login`, as fast as the server answers, reconnecting when it
/// closes, until `ends`.
async fn unauthorized_loop(
    from: Ipv4Addr,
    target: SocketAddr,
    ends: Instant,
    opened: Arc<AtomicUsize>,
) {
    const REQUEST: &[u8] =
        b"GET /login HTTP/1.1\r\nHost: siege\r\nAuthorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\n";
    // At most this many requests per worker, whatever the time.
    let mut budget = 200_000usize;
    while Instant::now() < ends && budget > 0 {
        let Ok(stream) = connect_from(from, target).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::SeqCst);
        let mut stream = BufReader::new(stream);
        while Instant::now() < ends && budget > 0 {
            budget -= 1;
            if stream.get_mut().write_all(REQUEST).await.is_err() {
                break;
            }
            match tokio::time::timeout(EXCHANGE_TIMEOUT, read_response(&mut stream)).await {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
}

/// Reads one HTTP/1.1 response with a `content-length`; returns its status.
async fn read_response(stream: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        line.clear();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(status)
}

/// One request of the legitimate client: when it was made, and how long it took, or
/// `None` if it failed.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub latency: Option<Duration>,
}

/// The legitimate client: a request every 100 ms on a new connection, from its own
/// address, for `duration` plus the attack's lead-in and a little after. Requests do not
/// wait for each other, so a stalled one does not slow the ones after it.
pub async fn legit(
    app: App,
    target: SocketAddr,
    began: Instant,
    duration: Duration,
) -> Vec<Sample> {
    let ends = Instant::now() + duration + Duration::from_millis(400);
    let mut requests = JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    while Instant::now() < ends {
        ticks.tick().await;
        requests.spawn(async move {
            let start = Instant::now();
            let ok = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(app, target))
                .await
                .unwrap_or(false);
            Sample {
                at: start - began,
                latency: ok.then(|| start.elapsed()),
            }
        });
    }
    let mut samples = Vec::new();
    while let Some(sample) = requests.join_next().await {
        samples.push(sample.expect("a legitimate request"));
    }
    samples.sort_by_key(|sample| sample.at);
    samples
}

/// What a legitimate user does once: fetch `/`, or log in, echo and quit.
async fn exchange(app: App, target: SocketAddr) -> bool {
    let Ok(stream) = connect_from(LEGIT, target).await else {
        return false;
    };
    let mut stream = BufReader::new(stream);
    match app {
        App::Axum => {
            if stream
                .get_mut()
                .write_all(b"GET / HTTP/1.1\r\nHost: siege\r\nConnection: close\r\n\r\n")
                .await
                .is_err()
            {
                return false;
            }
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response).await;
            response.starts_with("HTTP/1.1 200") && response.ends_with("hello\n")
        }
        App::Login => {
            let mut ask = async |line: &str| {
                stream.get_mut().write_all(line.as_bytes()).await.ok()?;
                let mut answer = String::new();
                stream.read_line(&mut answer).await.ok()?;
                Some(answer)
            };
            let served = ask("LOGIN alice secret\n").await.as_deref() == Some("OK\n")
                && ask("ECHO hi\n").await.as_deref() == Some("hi\n");
            let _ = ask("QUIT\n").await;
            served
        }
    }
}
