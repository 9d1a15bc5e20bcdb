//! Bans enforced in the kernel, on real loopback sockets: a filtered peer's `connect`
//! never completes, everyone else is served, and the door reopens when the ban ends.
#![cfg(all(
    feature = "kernel-bans",
    feature = "proxy-protocol",
    target_os = "linux"
))]

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};
use tower::{Layer, service_fn};
use tower_bouncer::{
    Conn,
    login::{KernelBans, Login, LoginBuilder},
    peer::PeerKeying,
    proxy_protocol::{ProxyProtocolLayer, Rewind},
};

use support::*;

/// How long a filtered peer's `connect` is given: its SYN is dropped, so it would wait
/// for the kernel's retransmissions (1 s, then 3 s, ...) and never be answered.
const FILTERED_WAIT: Duration = Duration::from_millis(300);
const BAN: Duration = Duration::from_secs(600);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A server under the ban check of its own `Login`, with the kernel filter attached to
/// its listener. Answers `hello` to every peer it admits.
struct Guarded {
    login: Login,
    kernel: KernelBans,
    server: LoopbackServer,
}

impl Guarded {
    async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    fn start_on(listener: TcpListener) -> Self {
        Self::start_with(Login::builder(), listener)
    }

    /// With a login of its own settings (and the ban message).
    fn start_with(login: LoginBuilder, listener: TcpListener) -> Self {
        let login = login.ban_message(&b"ERROR banned\n"[..]).build().unwrap();
        let kernel = login.bans().kernel_filter();
        let listener = Arc::new(listener);
        kernel.attach(&listener).unwrap();
        let hello = service_fn(say_hello);
        let server = LoopbackServer::start_on(
            listener,
            login.ban_layer().layer(hello),
            Duration::from_secs(1),
        );
        Self {
            login,
            kernel,
            server,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Bans `ip` and puts its key in the filter; waits until the filter holds `keys`.
    async fn filter(&self, ip: IpAddr, keys: usize) {
        self.login.bans().ban(ip, BAN).unwrap();
        assert!(self.kernel.move_to_kernel(ip));
        self.filter_holds(keys).await;
    }

    async fn filter_holds(&self, keys: usize) {
        filter_holds(&self.kernel, keys).await;
    }
}

/// Waits until `kernel`'s filter holds `keys` keys.
async fn filter_holds(kernel: &KernelBans, keys: usize) {
    within(PATIENCE, async {
        while kernel.stats().keys != keys {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The service behind the filter: says hello.
async fn say_hello(conn: Conn<TcpStream>) -> std::io::Result<()> {
    conn.into_io().write_all(b"hello\n").await
}

/// What the server says to a connection from `127.0.0.<last>`, up to its close.
async fn reply_to(last: u8, server: SocketAddr) -> String {
    let stream = within(PATIENCE, connect_from(last, server)).await;
    read_all(stream).await
}

async fn read_all(mut stream: TcpStream) -> String {
    let mut reply = String::new();
    within(PATIENCE, stream.read_to_string(&mut reply))
        .await
        .unwrap();
    reply
}

/// Whether a connection from `127.0.0.<last>` completes within [`FILTERED_WAIT`].
async fn connects_from(last: u8, server: SocketAddr) -> bool {
    tokio::time::timeout(FILTERED_WAIT, connect_from(last, server))
        .await
        .is_ok()
}

#[tokio::test]
async fn a_peer_that_keeps_reconnecting_while_banned_is_dropped_in_the_kernel() {
    let guarded = Guarded::start().await;
    guarded
        .kernel
        .set_user_space_refusals(NonZeroU32::new(3).unwrap());
    let banned = ip("127.0.0.2");
    guarded.login.bans().ban(banned, BAN).unwrap();

    // Its first refusals are answered, so a person learns why.
    for _ in 0..3 {
        assert_eq!(reply_to(2, guarded.addr()).await, "ERROR banned\n");
    }
    guarded.filter_holds(1).await;
    // From then on its SYNs go unanswered, and never reach the server.
    assert!(!connects_from(2, guarded.addr()).await);
    assert_eq!(reply_to(3, guarded.addr()).await, "hello\n");
    assert_eq!(guarded.login.stats().refused_banned, 3);
    let stats = guarded.kernel.stats();
    assert_eq!((stats.keys, stats.sockets), (1, 1));
    assert!(stats.rebuilds >= 1 && stats.instructions > 0, "{stats:?}");
    guarded.server.stop().await;
}

#[tokio::test]
async fn an_unban_reopens_the_door() {
    let guarded = Guarded::start().await;
    guarded.filter(ip("127.0.0.2"), 1).await;
    assert!(!connects_from(2, guarded.addr()).await);

    assert!(guarded.login.bans().unban(ip("127.0.0.2")));
    guarded.filter_holds(0).await;
    assert_eq!(reply_to(2, guarded.addr()).await, "hello\n");
    assert_eq!(guarded.kernel.stats().instructions, 0, "no filter left");
    guarded.server.stop().await;
}

#[tokio::test]
async fn the_filter_lets_a_peer_in_again_when_its_ban_expires() {
    let guarded = Guarded::start().await;
    let banned = ip("127.0.0.2");
    guarded
        .login
        .bans()
        .ban(banned, Duration::from_millis(1500))
        .unwrap();
    assert!(guarded.kernel.move_to_kernel(banned));
    guarded.filter_holds(1).await;
    assert!(!connects_from(2, guarded.addr()).await);

    // Real time: the filter is kernel state, taken off by the task at the ban's end.
    guarded.filter_holds(0).await;
    assert_eq!(guarded.login.bans().banned_for(banned), None);
    assert_eq!(reply_to(2, guarded.addr()).await, "hello\n");
    guarded.server.stop().await;
}

#[tokio::test]
async fn on_ipv6_a_64_is_dropped_and_other_64s_are_not() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    let guarded = Guarded::start_on(listener);
    let connect =
        || async { tokio::time::timeout(FILTERED_WAIT, TcpStream::connect(guarded.addr())).await };
    // Loopback has one IPv6 address, ::1: a key that does not hold it...
    guarded.filter(ip("2001:db8::1"), 1).await;
    let stream = connect().await.unwrap().unwrap();
    assert_eq!(read_all(stream).await, "hello\n");
    // ...and the one that does (::/64).
    guarded.filter(ip("::1"), 2).await;
    assert!(connect().await.is_err(), "::1 connected through the filter");
    guarded.server.stop().await;
}

#[tokio::test]
async fn an_ipv4_peer_of_a_dual_stack_socket_is_dropped_by_its_ipv4_address() {
    // An IPv6 socket bound to an IPv4-mapped loopback address takes IPv4 connections:
    // their packets carry IPv4 headers.
    let socket = TcpSocket::new_v6().unwrap();
    if socket.bind(addr("[::ffff:127.0.0.1]:0")).is_err() {
        eprintln!("IPv6 sockets are IPv6-only here: skipped");
        return;
    }
    let guarded = Guarded::start_on(socket.listen(128).unwrap());
    let port = guarded.addr().port();
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);

    guarded.filter(ip("::ffff:127.0.0.2"), 1).await;
    assert!(!connects_from(2, server).await);
    assert_eq!(reply_to(3, server).await, "hello\n");
    guarded.server.stop().await;
}

#[tokio::test]
async fn every_socket_of_a_reuseport_group_drops_the_filtered_peer() {
    let bind = |port| {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseport(true).unwrap();
        socket
            .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .unwrap();
        socket.listen(128).unwrap()
    };
    let first = Arc::new(bind(0));
    let port = first.local_addr().unwrap().port();
    let second = Arc::new(bind(port));
    let login = Login::builder().build().unwrap();
    let kernel = login.bans().kernel_filter();
    kernel.attach(&first).unwrap();
    kernel.attach(&second).unwrap();
    login.bans().ban(ip("127.0.0.2"), BAN).unwrap();
    assert!(kernel.move_to_kernel(ip("127.0.0.2")));
    filter_holds(&kernel, 1).await;
    assert_eq!(kernel.stats().sockets, 2);

    // The kernel spreads connections over the group by their ports: 8 tries, at once,
    // reach both sockets with near certainty; none completes.
    let server = first.local_addr().unwrap();
    let tries = (0..8).map(|_| connects_from(2, server));
    let connected = futures_util::future::join_all(tries).await;
    assert!(
        connected.iter().all(|connected| !connected),
        "{connected:?}"
    );
    // Another peer's handshakes complete, in the backlog of whichever socket.
    for _ in 0..8 {
        assert!(connects_from(3, server).await);
    }
}

#[tokio::test]
async fn a_full_filter_still_lets_everyone_else_in() {
    let guarded = Guarded::start().await;
    let bans = guarded.login.bans();
    for n in 0..1000_u32 {
        let attacker = IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n * 7919));
        bans.ban(attacker, BAN).unwrap();
        assert!(guarded.kernel.move_to_kernel(attacker));
    }
    guarded.filter_holds(1000).await;
    let stats = guarded.kernel.stats();
    assert!(stats.instructions <= 4096, "{stats:?}");
    eprintln!("1000 keys: {stats:?}");

    let began = std::time::Instant::now();
    for _ in 0..200 {
        assert_eq!(reply_to(3, guarded.addr()).await, "hello\n");
    }
    eprintln!(
        "200 connections through the filter in {:?}",
        began.elapsed()
    );
    guarded.server.stop().await;
}

#[tokio::test]
async fn the_filter_does_not_keep_a_stopped_servers_listener_open() {
    let guarded = Guarded::start().await;
    guarded.filter(ip("127.0.0.2"), 1).await;
    let (addr, kernel) = (guarded.addr(), guarded.kernel.clone());
    guarded.server.stop().await;

    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(kernel.stats().sockets, 0);
}

#[tokio::test]
async fn a_peer_named_by_a_balancer_never_goes_into_the_filter() {
    // The balancer is 127.0.0.1; its packets carry its own address, not the peer's.
    let login = Login::builder()
        .ban_message(&b"ERROR banned\n"[..])
        .build()
        .unwrap();
    let kernel = login.bans().kernel_filter();
    kernel.set_user_space_refusals(NonZeroU32::new(3).unwrap());
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
    kernel.attach(&listener).unwrap();
    let proxy = ProxyProtocolLayer::builder()
        .trusted(["127.0.0.1/32".parse().unwrap()])
        .build()
        .unwrap();
    let hello = service_fn(|conn: Conn<Rewind<TcpStream>>| async move {
        conn.into_io().write_all(b"hello\n").await
    });
    let service = proxy.layer(login.ban_layer().layer(hello));
    let server = LoopbackServer::start_on(listener, service, Duration::from_secs(1));
    login.bans().ban(ip("127.0.0.2"), BAN).unwrap();

    for _ in 0..6 {
        let mut stream = within(PATIENCE, connect_from(1, server.addr)).await;
        stream
            .write_all(b"PROXY TCP4 127.0.0.2 127.0.0.1 4000 80\r\n")
            .await
            .unwrap();
        assert_eq!(read_all(stream).await, "ERROR banned\n");
    }
    // Refused from the peer itself, it goes in at its third refusal.
    for _ in 0..3 {
        assert_eq!(reply_to(2, server.addr).await, "ERROR banned\n");
    }
    filter_holds(&kernel, 1).await;
    assert_eq!(kernel.stats().rebuilds, 1, "not before");
    server.stop().await;
}

/// An `ERROR banned` answer from `127.0.0.<last>`, or `None` if its `connect` is
/// dropped by the filter.
async fn answer_from(last: u8, server: SocketAddr) -> Option<String> {
    let stream = tokio::time::timeout(FILTERED_WAIT, connect_from(last, server))
        .await
        .ok()?;
    Some(read_all(stream).await)
}

#[tokio::test]
async fn in_dry_run_a_banned_peer_that_keeps_reconnecting_is_never_dropped() {
    // Bans are made and counted, every connection served anyway (the bouncer's
    // `dry_run`, with `bans.kernel` on by default).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let guarded = Guarded::start_with(Login::builder().dry_run(true), listener);
    let (login, kernel) = (&guarded.login, &guarded.kernel);
    kernel.set_user_space_refusals(NonZeroU32::new(3).unwrap());
    login.bans().ban(ip("127.0.0.2"), BAN).unwrap();
    for attempt in 0..6 {
        assert_eq!(
            answer_from(2, guarded.addr()).await.as_deref(),
            Some("hello\n"),
            "connection {attempt} of a peer banned in dry run"
        );
        // Time for the maintaining task to act on what it was told.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kernel.stats().keys, 0);
    // Enforced from now on: the connections served in dry run were not refusals, and
    // its next 3 are answered.
    login.set_dry_run(false);
    for attempt in 0..3 {
        assert_eq!(
            answer_from(2, guarded.addr()).await.as_deref(),
            Some("ERROR banned\n"),
            "refusal {attempt} once dry run is off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    guarded.server.stop().await;
}

#[tokio::test]
async fn turning_dry_run_on_takes_the_filter_off() {
    let guarded = Guarded::start().await;
    guarded.filter(ip("127.0.0.2"), 1).await;
    assert!(!connects_from(2, guarded.addr()).await);

    guarded.login.set_dry_run(true);
    guarded.filter_holds(0).await;
    assert_eq!(reply_to(2, guarded.addr()).await, "hello\n");
    assert_eq!(guarded.kernel.stats().instructions, 0, "no filter left");
    // Turned off again, the key still banned goes back in.
    guarded.login.set_dry_run(false);
    guarded.filter_holds(1).await;
    assert!(!connects_from(2, guarded.addr()).await);
    guarded.server.stop().await;
}

#[tokio::test]
async fn a_key_that_holds_an_exempt_peer_stays_out_of_the_filter() {
    // IPv4 keyed by /24: 127.0.0.2 and 127.0.0.5 share the key 127.0.0.0/24, and
    // 127.0.0.5 is exempt (a health checker, say): user space never refuses it.
    let keying = PeerKeying::with_prefixes(24, 64)
        .unwrap()
        .exempt(["127.0.0.5/32".parse().unwrap()])
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let guarded = Guarded::start_with(Login::builder().keying(keying), listener);
    guarded
        .kernel
        .set_user_space_refusals(NonZeroU32::new(3).unwrap());
    guarded.login.bans().ban(ip("127.0.0.2"), BAN).unwrap();
    assert!(!guarded.kernel.move_to_kernel(ip("127.0.0.2")));

    // Refused in user space until its key qualifies, its exempt neighbour served...
    for _ in 0..3 {
        assert_eq!(reply_to(2, guarded.addr()).await, "ERROR banned\n");
    }
    assert_eq!(reply_to(5, guarded.addr()).await, "hello\n");
    // ...and still after a rebuild that saw it qualify (for a key that holds no
    // exempt peer).
    guarded.filter(ip("10.0.0.1"), 1).await;
    assert_eq!(
        answer_from(2, guarded.addr()).await.as_deref(),
        Some("ERROR banned\n")
    );
    assert_eq!(reply_to(5, guarded.addr()).await, "hello\n");
    guarded.server.stop().await;
}

#[tokio::test]
async fn a_peer_made_exempt_by_a_reload_comes_out_of_the_filter() {
    let keying = PeerKeying::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let guarded = Guarded::start_with(Login::builder().keying(keying.clone()), listener);
    guarded.filter(ip("127.0.0.2"), 1).await;
    assert!(!connects_from(2, guarded.addr()).await);

    // A network that holds the key (127.0.0.2/32) is made exempt: seen within the
    // filter's one-second recheck.
    keying.set_exempt(["127.0.0.0/8".parse().unwrap()]).unwrap();
    guarded.filter_holds(0).await;
    assert_eq!(reply_to(2, guarded.addr()).await, "hello\n");
    guarded.server.stop().await;
}

#[tokio::test]
async fn the_filter_comes_off_its_listener_when_its_bans_are_dropped() {
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
    {
        let login = Login::builder().build().unwrap();
        let kernel = login.bans().kernel_filter();
        kernel.attach(&listener).unwrap();
        login.bans().ban(ip("127.0.0.2"), BAN).unwrap();
        assert!(kernel.move_to_kernel(ip("127.0.0.2")));
        filter_holds(&kernel, 1).await;
        // The application replaces its stack: the login and its bans are dropped.
    }
    let hello = service_fn(say_hello);
    let server = LoopbackServer::start_on(listener, hello, Duration::from_secs(1));
    // No ban is left anywhere: 127.0.0.2 gets in once the task that kept the filter
    // notices, within a second (10 tries of 300 ms).
    let mut tries = 0;
    while !connects_from(2, server.addr).await {
        tries += 1;
        assert!(
            tries < 10,
            "127.0.0.2 is still dropped by a filter nobody keeps"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn refusals_under_a_lifted_ban_do_not_count_toward_the_next() {
    let guarded = Guarded::start().await;
    guarded
        .kernel
        .set_user_space_refusals(NonZeroU32::new(3).unwrap());
    let peer = ip("127.0.0.2");
    guarded.login.bans().ban(peer, BAN).unwrap();
    for _ in 0..2 {
        assert_eq!(reply_to(2, guarded.addr()).await, "ERROR banned\n");
    }
    // The operator lifts the ban (it was a person), and later it is banned again.
    assert!(guarded.login.bans().unban(peer));
    assert_eq!(reply_to(2, guarded.addr()).await, "hello\n");
    guarded.login.bans().ban(peer, BAN).unwrap();
    // A new ban: its first 3 refusals are answered in user space, as documented.
    for attempt in 0..3 {
        assert_eq!(
            answer_from(2, guarded.addr()).await.as_deref(),
            Some("ERROR banned\n"),
            "refusal {attempt} of the new ban"
        );
        // Time for the maintaining task to act on what it was told.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    guarded.server.stop().await;
}

#[tokio::test]
async fn a_listener_keeps_the_filter_of_the_login_that_attached_it_last() {
    // A stack rebuilt on a reload: a new login attaches its filter to the listener the
    // old one had, then the old one changes its bans and is dropped.
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let old = Login::builder().build().unwrap();
    let old_kernel = old.bans().kernel_filter();
    old_kernel.attach(&listener).unwrap();
    let new = Login::builder().build().unwrap();
    let new_kernel = new.bans().kernel_filter();
    new_kernel.attach(&listener).unwrap();
    new.bans().ban(ip("127.0.0.3"), BAN).unwrap();
    assert!(new_kernel.move_to_kernel(ip("127.0.0.3")));
    filter_holds(&new_kernel, 1).await;
    let hello = service_fn(say_hello);
    let server = LoopbackServer::start_on(
        listener,
        new.ban_layer().layer(hello),
        Duration::from_secs(1),
    );
    assert!(!connects_from(3, server.addr).await, "in the new filter");

    // The old login's rebuild leaves the listener to the new one's filter.
    old.bans().ban(ip("127.0.0.4"), BAN).unwrap();
    assert!(old_kernel.move_to_kernel(ip("127.0.0.4")));
    filter_holds(&old_kernel, 1).await;
    assert!(
        !connects_from(3, server.addr).await,
        "the old login's rebuild replaced the new one's filter"
    );

    // Its task, finding its bans gone within a second, leaves the new filter on.
    drop(old_kernel);
    drop(old);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(new_kernel.stats().keys, 1);
    assert!(
        !connects_from(3, server.addr).await,
        "the old login's task took the new one's filter off the listener"
    );
    server.stop().await;
}

/// What the server says to a client, 192.0.2.7, that the balancer `127.0.0.1` brings
/// with `request`; `None` if the balancer's `connect` is dropped by the filter.
async fn through_balancer(server: SocketAddr, request: &[u8]) -> Option<String> {
    let mut stream = tokio::time::timeout(FILTERED_WAIT, connect_from(1, server))
        .await
        .ok()?;
    let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 80\r\n";
    stream
        .write_all(&[&header[..], request].concat())
        .await
        .unwrap();
    Some(read_all(stream).await)
}

#[tokio::test]
async fn a_key_that_holds_a_trusted_balancer_stays_out_of_the_filter() {
    // IPv4 keyed by /24: the balancer, 127.0.0.1, shares the key 127.0.0.0/24 with
    // 127.0.0.2, a neighbour that connects directly, misbehaves and is banned. User
    // space keys the balancer's connections on the clients its headers name, and
    // serves them; the filter would drop every packet the balancer sends.
    let keying = PeerKeying::with_prefixes(24, 64).unwrap();
    let login = Login::builder()
        .keying(keying)
        .ban_message(&b"ERROR banned\n"[..])
        .build()
        .unwrap();
    let kernel = login.bans().kernel_filter();
    kernel.set_user_space_refusals(NonZeroU32::new(3).unwrap());
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
    kernel.attach(&listener).unwrap();
    let proxy = ProxyProtocolLayer::builder()
        .trusted(["127.0.0.1/32".parse().unwrap()])
        .build()
        .unwrap();
    // As a stack of one's own must: the filter is told the balancers.
    kernel.set_balancers(proxy.trusted().iter().copied());
    let hello = service_fn(|conn: Conn<Rewind<TcpStream>>| async move {
        conn.into_io().write_all(b"hello\n").await
    });
    let service = proxy.layer(login.ban_layer().layer(hello));
    let server = LoopbackServer::start_on(listener, service, Duration::from_secs(1));
    login.bans().ban(ip("127.0.0.2"), BAN).unwrap();

    // The neighbour keeps reconnecting while banned: refused in user space...
    for _ in 0..3 {
        assert_eq!(reply_to(2, server.addr).await, "ERROR banned\n");
    }
    // ...then a rebuild of the filter (for another key) sees its key qualify.
    login.bans().ban(ip("10.0.0.1"), BAN).unwrap();
    assert!(kernel.move_to_kernel(ip("10.0.0.1")));
    within(PATIENCE, async {
        while kernel.stats().keys == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // A client the balancer brings, banned nowhere, is still served.
    assert_eq!(
        through_balancer(server.addr, b"").await.as_deref(),
        Some("hello\n"),
        "the balancer's connection (filter keys: {})",
        kernel.stats().keys
    );
    assert!(!kernel.move_to_kernel(ip("127.0.0.2")), "nor moved there");
    server.stop().await;
}

#[tokio::test]
async fn a_trusted_balancer_banned_itself_stays_out_of_the_filter() {
    // The balancer, 127.0.0.1, may send no header (health checks, say): those
    // connections are its own, and it is banned. User space refuses them, and serves
    // the clients its headers name; the filter would drop them all.
    let login = Login::builder()
        .ban_message(&b"ERROR banned\n"[..])
        .build()
        .unwrap();
    let kernel = login.bans().kernel_filter();
    kernel.set_user_space_refusals(NonZeroU32::new(3).unwrap());
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
    kernel.attach(&listener).unwrap();
    let proxy = ProxyProtocolLayer::builder()
        .trusted(["127.0.0.1/32".parse().unwrap()])
        .optional_from_trusted(true)
        .build()
        .unwrap();
    kernel.set_balancers(proxy.trusted().iter().copied());
    let hello = service_fn(|conn: Conn<Rewind<TcpStream>>| async move {
        conn.into_io().write_all(b"hello\n").await
    });
    let service = proxy.layer(login.ban_layer().layer(hello));
    let server = LoopbackServer::start_on(listener, service, Duration::from_secs(1));
    login.bans().ban(ip("127.0.0.1"), BAN).unwrap();

    // Without a header, its connections are refused as its own, up to the threshold...
    for _ in 0..3 {
        let mut stream = within(PATIENCE, connect_from(1, server.addr)).await;
        stream.write_all(b"HELLO\r\n").await.unwrap();
        assert_eq!(read_all(stream).await, "ERROR banned\n");
    }
    // ...and a rebuild of the filter (for another key) leaves its key out.
    login.bans().ban(ip("10.0.0.1"), BAN).unwrap();
    assert!(kernel.move_to_kernel(ip("10.0.0.1")));
    filter_holds(&kernel, 1).await;

    assert_eq!(
        through_balancer(server.addr, b"").await.as_deref(),
        Some("hello\n"),
        "the balancer's connection (filter keys: {})",
        kernel.stats().keys
    );
    server.stop().await;
}

#[cfg(feature = "bouncer")]
#[tokio::test]
async fn a_bouncer_keeps_its_trusted_balancers_out_of_the_filter_across_a_reload() {
    use axum::{Router, routing::get};
    use tower_bouncer::bouncer::{Bouncer, BouncerConfig};

    let mut config = BouncerConfig::default();
    config.proxy_protocol.trusted = vec!["127.0.0.1/32".parse().unwrap()];
    let bouncer = Bouncer::from_config(config.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new().route("/", get(|| async { "hello\n" }));
    let server = tokio::spawn({
        let bouncer = bouncer.clone();
        async move {
            let stopped = async {
                stopped.await.ok();
            };
            bouncer.serve_http_until(listener, app, stopped).await
        }
    });
    let get = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    // Served once: the bouncer has set up its listener, filter included.
    let answer = through_balancer(addr, get).await.unwrap();
    assert!(answer.ends_with("hello\n"), "{answer:?}");

    // A reload, of what a reload may change.
    config.rates.global += 1;
    bouncer.reload(config).unwrap();
    let kernel = bouncer.login().bans().kernel_filter();
    bouncer.login().bans().ban(ip("127.0.0.1"), BAN).unwrap();
    assert!(!kernel.move_to_kernel(ip("127.0.0.1")));
    // A rebuild (for another key) leaves the balancer's out.
    bouncer.login().bans().ban(ip("10.0.0.1"), BAN).unwrap();
    assert!(kernel.move_to_kernel(ip("10.0.0.1")));
    filter_holds(&kernel, 1).await;
    let answer = through_balancer(addr, get).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|answer| answer.ends_with("hello\n")),
        "{answer:?}"
    );
    stop.send(()).unwrap();
    within(PATIENCE, server).await.unwrap().unwrap();
}
