//! The PROXY protocol layer: trust, headers split anywhere, limits, typed refusals, and
//! the real client reaching the layers below, over in-memory streams on paused time.

mod support;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use ppp::v2::{Builder, Command, Protocol, Type, Version};
use proptest::prelude::*;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf},
    sync::mpsc,
    task::{LocalSet, spawn_local},
    time::Instant,
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, ConfigError, Conn, ConnInfo,
    admission::Reason,
    login::Login,
    proxy_protocol::{
        ProxiedBy, ProxyProtocolBuilder, ProxyProtocolError, ProxyProtocolLayer, Rewind,
    },
};
use tower_test::mock;

use support::*;

const BALANCER: &str = "10.0.0.2:50000";
const LISTENER: &str = "10.0.0.9:8443";
const CLIENT: &str = "192.0.2.7:40000";
const FRONT_END: &str = "198.51.100.1:443";
const V1_HEADER: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n";

/// Trusts the balancers' network, 10.0.0.0/24.
fn proxy() -> ProxyProtocolBuilder {
    ProxyProtocolLayer::builder().trusted(["10.0.0.0/24".parse().unwrap()])
}

fn v2_header(source: &str, destination: &str) -> Vec<u8> {
    let addresses = (addr(source), addr(destination));
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
        .build()
        .unwrap()
}

/// What the protocol under the layer was given.
#[derive(Debug)]
struct Seen {
    info: ConnInfo,
    proxied_by: Option<ProxiedBy>,
    /// Every byte it read, to the end of the stream.
    bytes: Vec<u8>,
}

/// A protocol that reads its connection to the end and reports what it saw, on a
/// `Send` future (for the accept loop too).
fn recorder<IO>() -> (
    impl Service<Conn<Rewind<IO>>, Response = (), Error = BoxError, Future: Send> + Clone + Send,
    mpsc::UnboundedReceiver<Seen>,
)
where
    IO: AsyncRead + Unpin + Send + 'static,
{
    let (report, seen) = mpsc::unbounded_channel();
    let service = service_fn(move |mut conn: Conn<Rewind<IO>>| {
        let report = report.clone();
        async move {
            let mut bytes = Vec::new();
            conn.io_mut().read_to_end(&mut bytes).await?;
            assert_eq!(conn.info().peer_addr, conn.peer_addr());
            assert_eq!(conn.info().local_addr, conn.local_addr());
            report
                .send(Seen {
                    info: conn.info(),
                    proxied_by: conn.extensions().get::<ProxiedBy>().copied(),
                    bytes,
                })
                .unwrap();
            Ok::<_, BoxError>(())
        }
    });
    (service, seen)
}

/// A connection from `peer` whose client side sends `bytes` and closes.
async fn sending(peer: &str, bytes: &[u8]) -> Conn<DuplexStream> {
    let (conn, mut client) = duplex_conn(peer);
    client.write_all(bytes).await.unwrap();
    drop(client);
    conn
}

async fn serve<S, IO>(service: &mut S, conn: Conn<IO>) -> Result<(), BoxError>
where
    S: Service<Conn<IO>, Response = (), Error = BoxError>,
{
    service.ready().await?.call(conn).await
}

fn proxy_error(error: &BoxError) -> &ProxyProtocolError {
    error
        .downcast_ref()
        .unwrap_or_else(|| panic!("expected a ProxyProtocolError, got {error}"))
}

#[tokio::test(start_paused = true)]
async fn a_v1_header_from_a_trusted_balancer_makes_the_client_the_peer() {
    let layer = proxy().build().unwrap();
    let (protocol, mut seen) = recorder();
    let mut service = layer.layer(protocol);

    let conn = sending(BALANCER, &[V1_HEADER, b"GET / HTTP/1.1\r\n\r\n"].concat()).await;
    let conn = Conn::new(conn.into_io(), addr(BALANCER), addr(LISTENER));
    serve(&mut service, conn).await.unwrap();

    let seen = seen.recv().await.unwrap();
    assert_eq!(seen.info.peer_addr, addr(CLIENT));
    assert_eq!(seen.info.local_addr, addr(FRONT_END));
    let proxied_by = seen.proxied_by.unwrap();
    assert_eq!(proxied_by.balancer, addr(BALANCER));
    assert_eq!(proxied_by.accepted_on, addr(LISTENER));
    assert_eq!(seen.bytes, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(layer.stats().proxied, 1);
}

#[tokio::test(start_paused = true)]
async fn a_v2_header_over_ipv6_with_tlvs_is_read_and_its_tlvs_skipped() {
    let layer = proxy().build().unwrap();
    let (protocol, mut seen) = recorder();
    let mut service = layer.layer(protocol);

    let header = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (addr("[2001:db8::7]:40000"), addr("[2001:db8::1]:443")),
    )
    .write_tlv(Type::Authority, b"example.com".as_slice())
    .unwrap()
    .write_tlv(Type::UniqueId, [7; 32].as_slice())
    .unwrap()
    .write_tlv(Type::NoOp, [0; 100].as_slice())
    .unwrap()
    .build()
    .unwrap();
    serve(
        &mut service,
        sending(BALANCER, &[&header[..], b"after"].concat()).await,
    )
    .await
    .unwrap();

    let seen = seen.recv().await.unwrap();
    assert_eq!(seen.info.peer_addr, addr("[2001:db8::7]:40000"));
    assert_eq!(seen.info.local_addr, addr("[2001:db8::1]:443"));
    assert_eq!(seen.bytes, b"after");
}

/// A stream that hands out its pieces one per read, each after a pending poll, then
/// ends; what is written to it is dropped.
struct Pieces {
    pieces: VecDeque<Vec<u8>>,
    pending: bool,
}

impl Pieces {
    /// `bytes` cut at each of `cuts` (offsets, in any order).
    fn new(bytes: &[u8], cuts: &[usize]) -> Self {
        let mut cuts: Vec<usize> = cuts.iter().map(|&cut| cut.min(bytes.len())).collect();
        cuts.extend([0, bytes.len()]);
        cuts.sort_unstable();
        let pieces = cuts
            .windows(2)
            .map(|pair| bytes[pair[0]..pair[1]].to_vec())
            .filter(|piece| !piece.is_empty())
            .collect();
        Self {
            pieces,
            pending: true,
        }
    }
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if std::mem::take(&mut self.pending) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(piece) = self.pieces.front_mut() {
            let given = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..given]);
            piece.drain(..given);
            if piece.is_empty() {
                self.pieces.pop_front();
                self.pending = true;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pieces {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs `bytes`, cut at `cuts`, from `peer` through `layer`: the outcome and what the
/// protocol saw.
async fn run_pieces(
    layer: &ProxyProtocolLayer,
    peer: &str,
    bytes: &[u8],
    cuts: &[usize],
) -> (Result<(), BoxError>, Option<Seen>) {
    let (protocol, mut seen) = recorder();
    let mut service = layer.layer(protocol);
    let conn = Conn::new(Pieces::new(bytes, cuts), addr(peer), addr(LISTENER));
    let outcome = serve(&mut service, conn).await;
    (outcome, seen.try_recv().ok())
}

#[tokio::test(start_paused = true)]
async fn a_header_cut_at_every_offset_arrives_whole_with_the_bytes_after_it() {
    let layer = proxy().build().unwrap();
    let v2 = v2_header(CLIENT, FRONT_END);
    for header in [V1_HEADER, &v2[..]] {
        let sent = [header, b"protocol bytes"].concat();
        for cut in 1..sent.len() {
            // One cut, and a read of one byte at the cut: the CRLF split included.
            for cuts in [vec![cut], vec![cut, cut + 1]] {
                let (outcome, seen) = run_pieces(&layer, BALANCER, &sent, &cuts).await;
                outcome.unwrap();
                let seen = seen.unwrap();
                assert_eq!(seen.info.peer_addr, addr(CLIENT), "cut at {cuts:?}");
                assert_eq!(seen.bytes, b"protocol bytes", "cut at {cuts:?}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_trusted_source_without_a_header_is_refused_and_closed_by_default() {
    let layer = proxy().build().unwrap();
    let (protocol, mut seen) = recorder();
    let mut service = layer.layer(protocol);

    let (conn, mut client) = duplex_conn(BALANCER);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let error = serve(&mut service, conn).await.unwrap_err();

    assert!(matches!(proxy_error(&error), ProxyProtocolError::Missing));
    assert!(seen.try_recv().is_err(), "the protocol was not called");
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert!(answer.is_empty(), "closed without a message");
    assert_eq!(layer.stats().refused_missing, 1);
}

#[tokio::test(start_paused = true)]
async fn optional_from_trusted_lets_protocol_data_through_as_sent_and_still_reads_headers() {
    let layer = proxy().optional_from_trusted(true).build().unwrap();
    let (protocol, mut seen) = recorder();
    let mut service = layer.layer(protocol);

    // Data, a signature cut short by the end of the stream, and a header.
    for sent in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"\r\n\r\n", b"PROX"] {
        serve(&mut service, sending(BALANCER, sent).await)
            .await
            .unwrap();
        let seen = seen.recv().await.unwrap();
        assert_eq!(seen.bytes, sent);
        assert_eq!(seen.info.peer_addr, addr(BALANCER));
        assert_eq!(seen.proxied_by, None);
    }
    serve(&mut service, sending(BALANCER, V1_HEADER).await)
        .await
        .unwrap();
    assert_eq!(seen.recv().await.unwrap().info.peer_addr, addr(CLIENT));

    let stats = layer.stats();
    assert_eq!((stats.without_header, stats.proxied), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn an_untrusted_source_is_not_read_and_its_header_is_protocol_data() {
    let layer = proxy().build().unwrap();
    let (inner, mut handle) = mock::pair::<Conn<Rewind<DuplexStream>>, ()>();
    let mut service = layer.layer(inner);
    handle.allow(1);

    // Nothing sent yet: the protocol is called at once.
    let (conn, mut client) = duplex_conn("192.0.2.99:1234");
    let connection = service.ready().await.unwrap().call(conn);
    let (mut conn, respond) = handle.next_request().await.unwrap();
    assert_eq!(conn.peer_addr(), addr("192.0.2.99:1234"));
    assert!(conn.extensions().get::<ProxiedBy>().is_none());

    client.write_all(V1_HEADER).await.unwrap();
    drop(client);
    let mut bytes = Vec::new();
    conn.io_mut().read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes, V1_HEADER);
    respond.send_response(());
    connection.await.unwrap();
    assert_eq!(layer.stats().untrusted, 1);
}

#[tokio::test(start_paused = true)]
async fn refuse_untrusted_headers_refuses_a_signature_and_passes_other_bytes_as_sent() {
    let layer = proxy().refuse_untrusted_headers(true).build().unwrap();
    let (protocol, mut seen) = recorder();
    let mut service = layer.layer(protocol);
    let stranger = "192.0.2.99:1234";

    for header in [&b"PROXY "[..], &v2_header(CLIENT, FRONT_END)[..12]] {
        let (conn, mut client) = duplex_conn(stranger);
        client.write_all(header).await.unwrap();
        let error = serve(&mut service, conn).await.unwrap_err();
        assert!(matches!(
            proxy_error(&error),
            ProxyProtocolError::UntrustedHeader
        ));
    }
    for sent in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"PROX"] {
        serve(&mut service, sending(stranger, sent).await)
            .await
            .unwrap();
        let seen = seen.recv().await.unwrap();
        assert_eq!(seen.bytes, sent);
        assert_eq!(seen.info.peer_addr, addr(stranger));
    }
    // Trusted sources are read as usual.
    serve(&mut service, sending(BALANCER, V1_HEADER).await)
        .await
        .unwrap();
    assert_eq!(seen.recv().await.unwrap().info.peer_addr, addr(CLIENT));

    let stats = layer.stats();
    assert_eq!(stats.refused_untrusted_header, 2);
    assert_eq!(stats.untrusted, 2);
}

#[tokio::test(start_paused = true)]
async fn headers_that_name_no_client_keep_the_socket_addresses() {
    let layer = proxy().build().unwrap();
    let (protocol, mut seen) = recorder();
    let mut service = layer.layer(protocol);

    let local = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    let unix = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        ppp::v2::Unix::new([1; 108], [2; 108]),
    )
    .build()
    .unwrap();
    let udp = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Datagram,
        (addr(CLIENT), addr(FRONT_END)),
    )
    .build()
    .unwrap();
    for header in [&b"PROXY UNKNOWN\r\n"[..], &local, &unix, &udp] {
        serve(
            &mut service,
            sending(BALANCER, &[header, b"data"].concat()).await,
        )
        .await
        .unwrap();
        let seen = seen.recv().await.unwrap();
        assert_eq!(seen.info.peer_addr, addr(BALANCER));
        assert_eq!(seen.proxied_by.unwrap().balancer, addr(BALANCER));
        assert_eq!(seen.bytes, b"data");
    }
    assert_eq!(layer.stats().local, 4);
    assert_eq!(layer.stats().proxied, 0);
}

#[tokio::test(start_paused = true)]
async fn a_header_not_complete_within_the_timeout_is_refused() {
    let layer = proxy().build().unwrap();
    let (protocol, _seen) = recorder();
    let mut service = layer.layer(protocol);

    let (conn, mut client) = duplex_conn(BALANCER);
    client.write_all(&V1_HEADER[..20]).await.unwrap();
    let began = Instant::now();
    let error = serve(&mut service, conn).await.unwrap_err();

    assert_eq!(began.elapsed(), Duration::from_secs(5), "the default");
    assert!(matches!(
        proxy_error(&error),
        ProxyProtocolError::TimedOut(limit) if *limit == Duration::from_secs(5)
    ));
    assert_eq!(layer.stats().refused_timed_out, 1);
}

#[tokio::test(start_paused = true)]
async fn a_draining_server_closes_a_connection_still_reading_its_header() {
    let layer = proxy().build().unwrap();
    let (protocol, _seen) = recorder();
    let mut service = layer.layer(protocol);

    let (mut conn, mut client) = duplex_conn(BALANCER);
    client.write_all(&V1_HEADER[..20]).await.unwrap();
    let close = conn.graceful_close();
    let began = Instant::now();
    let (outcome, ()) = tokio::join!(serve(&mut service, conn), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        close.request_cut_by_caller();
    });
    let error = outcome.unwrap_err();
    assert!(matches!(
        proxy_error(&error),
        ProxyProtocolError::CloseRequested
    ));
    assert_eq!(began.elapsed(), Duration::from_millis(100));
    assert_eq!(layer.stats().closed_early, 1);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_of_duration_max_waits_as_good_as_forever() {
    let layer = proxy().timeout(Duration::MAX).build().unwrap();
    let (protocol, mut seen) = recorder();
    let mut service = layer.layer(protocol);

    let (conn, mut client) = duplex_conn(BALANCER);
    let (outcome, ()) = tokio::join!(serve(&mut service, conn), async move {
        tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
        client.write_all(V1_HEADER).await.unwrap();
    });
    outcome.unwrap();
    assert_eq!(seen.recv().await.unwrap().info.peer_addr, addr(CLIENT));
}

#[tokio::test(start_paused = true)]
async fn headers_over_their_size_are_refused_without_reading_them() {
    let layer = proxy().max_v2_len(64).build().unwrap();
    let (protocol, _seen) = recorder();
    let mut service = layer.layer(protocol);

    // A payload of 65 bytes announced: refused on its first 16 bytes, the client still
    // connected and sending nothing more.
    let mut fixed = v2_header(CLIENT, FRONT_END)[..16].to_vec();
    fixed[14..16].copy_from_slice(&65u16.to_be_bytes());
    let (conn, mut client) = duplex_conn(BALANCER);
    client.write_all(&fixed).await.unwrap();
    let error = serve(&mut service, conn).await.unwrap_err();
    assert!(matches!(
        proxy_error(&error),
        ProxyProtocolError::TooLong {
            version: 2,
            max: 64
        }
    ));

    // A version 1 line without its CRLF in 107 bytes.
    let endless = format!("PROXY TCP4 {}", "1".repeat(200));
    let (conn, mut client) = duplex_conn(BALANCER);
    client.write_all(endless.as_bytes()).await.unwrap();
    let error = serve(&mut service, conn).await.unwrap_err();
    assert!(matches!(
        proxy_error(&error),
        ProxyProtocolError::TooLong {
            version: 1,
            max: 107
        }
    ));
    assert_eq!(layer.stats().refused_too_long, 2);
}

#[tokio::test(start_paused = true)]
async fn malformed_headers_are_refused_with_a_typed_error_and_no_message() {
    let layer = proxy().build().unwrap();
    let (protocol, mut seen) = recorder();
    let mut service = layer.layer(protocol);

    let mut version_one = v2_header(CLIENT, FRONT_END);
    version_one[12] = 0x11;
    let mut bad_family = v2_header(CLIENT, FRONT_END);
    bad_family[13] = 0x51;
    for (sent, expected) in [
        (&b"PROXY TCP4 192.0.2.7 nowhere 40000 443\r\n"[..], "v1"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\n", "v1"),
        (&bad_family, "v2"),
        (&version_one, "version 1"),
    ] {
        let (conn, mut client) = duplex_conn(BALANCER);
        client.write_all(sent).await.unwrap();
        let error = serve(&mut service, conn).await.unwrap_err();
        let error = proxy_error(&error);
        assert!(
            matches!(
                error,
                ProxyProtocolError::Malformed { .. } | ProxyProtocolError::UnsupportedVersion(1)
            ),
            "{error}"
        );
        assert!(error.to_string().contains(expected), "{error}");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.is_empty(), "closed without a message");
    }
    assert!(seen.try_recv().is_err(), "the protocol was never called");
    assert_eq!(layer.stats().refused_malformed, 4);
}

#[tokio::test(start_paused = true)]
async fn a_source_that_closes_mid_header_fails_its_connection_as_incomplete() {
    let layer = proxy().build().unwrap();
    let (protocol, _seen) = recorder();
    let mut service = layer.layer(protocol);

    for sent in [&b""[..], &V1_HEADER[..30]] {
        let error = serve(&mut service, sending(BALANCER, sent).await)
            .await
            .unwrap_err();
        assert!(matches!(
            proxy_error(&error),
            ProxyProtocolError::Incomplete { received } if *received == sent.len()
        ));
    }
    assert_eq!(layer.stats().closed_early, 2);
}

#[tokio::test(start_paused = true)]
async fn ipv4_mapped_sources_and_networks_count_as_ipv4() {
    let mapped_network = ProxyProtocolLayer::builder()
        .trusted(["::ffff:10.0.0.0/120".parse().unwrap()])
        .build()
        .unwrap();
    let ipv4_network = proxy().build().unwrap();
    for (layer, balancer) in [
        (&mapped_network, BALANCER),
        (&ipv4_network, "[::ffff:10.0.0.2]:50000"),
    ] {
        let (protocol, mut seen) = recorder();
        let mut service = layer.layer(protocol);
        serve(&mut service, sending(balancer, V1_HEADER).await)
            .await
            .unwrap();
        assert_eq!(seen.recv().await.unwrap().info.peer_addr, addr(CLIENT));
    }
}

#[tokio::test(start_paused = true)]
async fn a_ban_below_the_proxy_layer_applies_to_the_real_client() {
    let login = Login::builder().build().unwrap();
    login
        .bans()
        .ban(addr("192.0.2.66:1").ip(), Duration::from_secs(600))
        .unwrap();
    let (protocol, mut seen) = recorder();
    let mut service = ServiceBuilder::new()
        .layer(proxy().build().unwrap())
        .layer(login.ban_layer())
        .service(protocol);

    let banned = b"PROXY TCP4 192.0.2.66 198.51.100.1 40000 443\r\n";
    let error = serve(&mut service, sending(BALANCER, banned).await)
        .await
        .unwrap_err();
    let rejected = rejected(&error);
    assert!(matches!(rejected.reason(), Reason::Banned { .. }));
    assert_eq!(rejected.peer(), addr("192.0.2.66:40000"));
    assert!(seen.try_recv().is_err());

    // Another client through the same balancer is served.
    serve(&mut service, sending(BALANCER, V1_HEADER).await)
        .await
        .unwrap();
    assert_eq!(seen.recv().await.unwrap().info.peer_addr, addr(CLIENT));
    assert_eq!(login.stats().refused_banned, 1);
}

#[tokio::test(start_paused = true)]
async fn the_ready_inner_service_is_called_once_the_header_is_read() {
    let layer = proxy().build().unwrap();
    let (inner, mut handle) = mock::pair::<Conn<Rewind<DuplexStream>>, ()>();
    let mut service = layer.layer(inner);
    handle.allow(1);

    let (conn, mut client) = duplex_conn(BALANCER);
    let connection = tokio::spawn(service.ready().await.unwrap().call(conn));
    let early = tokio::time::timeout(Duration::from_secs(1), handle.next_request()).await;
    assert!(early.is_err(), "called before the header");

    client.write_all(&V1_HEADER[..10]).await.unwrap();
    client.write_all(&V1_HEADER[10..]).await.unwrap();
    // The mock panics if the service it was given was not the one made ready.
    let (conn, respond) = within(PATIENCE, handle.next_request()).await.unwrap();
    assert_eq!(conn.peer_addr(), addr(CLIENT));
    respond.send_response(());
    connection.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn clones_share_their_counters() {
    let layer = proxy().build().unwrap();
    let (protocol, _seen) = recorder();
    for _ in 0..3 {
        let mut service = layer.clone().layer(protocol.clone());
        serve(&mut service, sending(BALANCER, V1_HEADER).await)
            .await
            .unwrap();
    }
    assert_eq!(layer.stats().proxied, 3);
}

#[tokio::test(start_paused = true)]
async fn at_most_max_reading_connections_wait_for_a_header_and_a_newcomer_closes_the_oldest() {
    // The recorder's futures are not `Send`: spawned on this thread.
    LocalSet::new()
        .run_until(async {
            let layer = proxy().max_reading(2).build().unwrap();
            let (protocol, mut seen) = recorder();
            let mut service = layer.layer(protocol);

            // Two sources trickle their headers, one after the other.
            let mut trickling = Vec::new();
            for _ in 0..2 {
                let (conn, mut client) = duplex_conn(BALANCER);
                client.write_all(&V1_HEADER[..10]).await.unwrap();
                let future = service.ready().await.unwrap().call(conn);
                trickling.push((spawn_local(future), client));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(layer.stats().reading, 2);

            // A balancer's connection arrives: the oldest trickler makes way, long before its
            // header's timeout, and the newcomer is served.
            let began = Instant::now();
            let conn = sending(BALANCER, V1_HEADER).await;
            let newcomer = spawn_local(service.ready().await.unwrap().call(conn));
            let (oldest, _client) = trickling.remove(0);
            let error = oldest.await.unwrap().unwrap_err();
            assert!(
                matches!(proxy_error(&error), ProxyProtocolError::Evicted { max: 2 }),
                "{error}"
            );
            assert!(began.elapsed() < Duration::from_secs(1));
            newcomer.await.unwrap().unwrap();
            assert_eq!(seen.recv().await.unwrap().info.peer_addr, addr(CLIENT));

            // The other trickler kept its place, and gives it back with its header.
            let (other, mut client) = trickling.remove(0);
            client.write_all(&V1_HEADER[10..]).await.unwrap();
            drop(client);
            other.await.unwrap().unwrap();
            let stats = layer.stats();
            assert_eq!((stats.evicted, stats.proxied, stats.reading), (1, 2, 0));
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn untrusted_connections_read_for_a_header_to_refuse_never_close_a_balancers() {
    // The recorder's futures are not `Send`: spawned on this thread.
    LocalSet::new()
        .run_until(async {
            let layer = proxy()
                .refuse_untrusted_headers(true)
                .max_reading(2)
                .build()
                .unwrap();
            let (protocol, mut seen) = recorder();
            let mut service = layer.layer(protocol);

            // The balancer's connection waits for its header...
            let (conn, mut balancer) = duplex_conn(BALANCER);
            let proxied = spawn_local(service.ready().await.unwrap().call(conn));
            tokio::task::yield_now().await;
            // ...while three direct clients connect and send nothing, each read to see
            // whether it sends a header.
            let mut silent = Vec::new();
            for _ in 0..3 {
                let (conn, client) = duplex_conn("203.0.113.5:1234");
                silent.push((
                    spawn_local(service.ready().await.unwrap().call(conn)),
                    client,
                ));
                tokio::task::yield_now().await;
            }
            assert_eq!(layer.stats().reading, 3, "the balancer's and two direct");
            let (oldest, _client) = silent.remove(0);
            let error = oldest.await.unwrap().unwrap_err();
            assert!(
                matches!(proxy_error(&error), ProxyProtocolError::Evicted { max: 2 }),
                "{error}"
            );

            balancer.write_all(V1_HEADER).await.unwrap();
            drop(balancer);
            proxied.await.unwrap().unwrap();
            assert_eq!(seen.recv().await.unwrap().info.peer_addr, addr(CLIENT));
            assert_eq!(layer.stats().evicted, 1);
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_lower_max_reading_applies_to_every_clone() {
    // The recorder's futures are not `Send`: spawned on this thread.
    LocalSet::new()
        .run_until(async {
            let layer = proxy().max_reading(3).build().unwrap();
            let (protocol, _seen) = recorder();
            let mut service = layer.clone().layer(protocol);
            let mut held = Vec::new();
            for _ in 0..2 {
                let (conn, client) = duplex_conn(BALANCER);
                held.push((
                    spawn_local(service.ready().await.unwrap().call(conn)),
                    client,
                ));
                tokio::task::yield_now().await;
            }
            assert_eq!(layer.stats().reading, 2);
            layer.set_max_reading(1).unwrap();
            assert_eq!(layer.max_reading(), 1);
            let (conn, _newest) = duplex_conn(BALANCER);
            let _newest = spawn_local(service.ready().await.unwrap().call(conn));
            for (reader, _client) in held {
                let error = reader.await.unwrap().unwrap_err();
                assert!(matches!(
                    proxy_error(&error),
                    ProxyProtocolError::Evicted { max: 1 }
                ));
            }
            assert_eq!(layer.stats().evicted, 2);
            assert_eq!(
                layer.set_max_reading(0).unwrap_err(),
                ConfigError::Zero {
                    setting: "max_reading"
                }
            );
        })
        .await;
}

#[test]
fn a_layer_without_trust_or_with_zero_limits_is_refused_when_built() {
    assert_eq!(
        ProxyProtocolLayer::builder().build().unwrap_err(),
        ConfigError::Empty {
            needs: "a trusted network"
        }
    );
    assert_eq!(
        proxy().timeout(Duration::ZERO).build().unwrap_err(),
        ConfigError::Zero { setting: "timeout" }
    );
    assert_eq!(
        proxy().max_v2_len(0).build().unwrap_err(),
        ConfigError::Zero {
            setting: "max_v2_len"
        }
    );
    assert_eq!(
        proxy().max_reading(0).build().unwrap_err(),
        ConfigError::Zero {
            setting: "max_reading"
        }
    );
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_connect_info_sees_the_client_behind_the_balancer() {
    use axum::{Router, extract::ConnectInfo, routing::get};
    use tower_bouncer::http::HttpService;

    let app = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let layer = ProxyProtocolLayer::builder()
        .trusted(["127.0.0.0/8".parse().unwrap()])
        .build()
        .unwrap();
    let server = LoopbackServer::start(layer.layer(HttpService::new(app)), PATIENCE).await;
    let mut stream = connect_from(2, server.addr).await;
    stream
        .write_all(&v2_header(CLIENT, &server.addr.to_string()))
        .await
        .unwrap();
    let mut h1 = Http1Client::connect(stream).await;
    assert_eq!(
        within(PATIENCE, h1.get("/peer")).await.unwrap().body,
        CLIENT
    );
    server.stop().await;
}

/// A runtime for one property case: paused time, so no deadline passes while cases run.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(source, source_port, destination, destination_port)| (
                SocketAddr::from((source, source_port)),
                SocketAddr::from((destination, destination_port)),
            )),
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>()
        )
            .prop_map(|(source, source_port, destination, destination_port)| (
                SocketAddr::from((source, source_port)),
                SocketAddr::from((destination, destination_port)),
            )),
    ]
}

/// A valid header naming `client`, version 1 or 2 (with TLVs of any kind).
fn valid_header() -> impl Strategy<Value = (Vec<u8>, SocketAddr)> {
    let v1 = socket_pair().prop_map(|(source, destination)| {
        let line = ppp::v1::Addresses::from((source, destination)).to_string();
        (line.into_bytes(), source)
    });
    let tlv = (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40));
    let v2 = (socket_pair(), proptest::collection::vec(tlv, 0..4)).prop_map(
        |((source, destination), tlvs)| {
            let mut builder = Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (source, destination),
            );
            for (kind, value) in &tlvs {
                builder = builder.write_tlv(*kind, value.as_slice()).unwrap();
            }
            (builder.build().unwrap(), source)
        },
    );
    prop_oneof![v1, v2]
}

/// Bytes that often start like a header.
fn arbitrary_start() -> impl Strategy<Value = Vec<u8>> {
    let starts = prop_oneof![
        Just(Vec::new()),
        Just(b"PROXY ".to_vec()),
        Just(b"PROXY TCP4 ".to_vec()),
        Just(ppp::v2::PROTOCOL_PREFIX.to_vec()),
        Just([ppp::v2::PROTOCOL_PREFIX, &[0x21, 0x11, 0, 12]].concat()),
    ];
    (starts, proptest::collection::vec(any::<u8>(), 0..160))
        .prop_map(|(start, rest)| [start, rest].concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_valid_header_cut_anywhere_gives_the_client_and_every_byte_after_it(
        (header, client) in valid_header(),
        data in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let layer = proxy().build().unwrap();
        let sent = [&header[..], &data].concat();
        paused_runtime().block_on(async {
            for cut in 0..sent.len() {
                let (outcome, seen) = run_pieces(&layer, BALANCER, &sent, &[cut]).await;
                prop_assert!(outcome.is_ok(), "{:?} cut at {}", outcome, cut);
                let seen = seen.unwrap();
                prop_assert_eq!(seen.info.peer_addr, client);
                prop_assert_eq!(&seen.bytes, &data);
            }
            Ok(())
        })?;
    }

    #[test]
    fn any_bytes_cut_anywhere_fail_typed_or_reach_the_protocol_whole(
        sent in arbitrary_start(),
        cuts in proptest::collection::vec(0usize..200, 0..4),
        mode in 0..3,
    ) {
        let (layer, peer) = match mode {
            0 => (proxy().build().unwrap(), BALANCER),
            1 => (proxy().optional_from_trusted(true).build().unwrap(), BALANCER),
            _ => (proxy().refuse_untrusted_headers(true).build().unwrap(), "192.0.2.99:1"),
        };
        let (outcome, seen) = paused_runtime().block_on(run_pieces(&layer, peer, &sent, &cuts));
        match outcome {
            Err(error) => prop_assert!(
                error.downcast_ref::<ProxyProtocolError>().is_some(),
                "untyped error: {}", error
            ),
            Ok(()) => {
                let seen = seen.unwrap();
                if seen.proxied_by.is_some() {
                    prop_assert!(sent.ends_with(&seen.bytes));
                    prop_assert!(seen.bytes.len() < sent.len());
                } else {
                    prop_assert_eq!(&seen.bytes, &sent);
                    prop_assert_eq!(seen.info.peer_addr, addr(peer));
                }
            }
        }
    }
}

/// `max_reading` (which the Bouncer sets to its cap) promises that at its limit a
/// newcomer closes the connection that has waited longest for its header, so that
/// connections that send nothing cannot keep a balancer's out. A cap in backpressure
/// mode below the layer must not undo that: were a connection reading its header to
/// hold a slot of the cap, two silent connections from the balancers' network would
/// fill a cap of two, the accept loop would stop, and the balancer's next connection,
/// header and all, would wait in the backlog until the header timeout closed the
/// silent ones (then again for the next pair).
#[tokio::test(start_paused = true)]
async fn connections_that_send_no_header_do_not_stop_a_backpressure_cap_from_accepting_behind_the_layer()
 {
    use tower_bouncer::{limit::ConnectionLimitLayer, serve::Server};

    let limit = ConnectionLimitLayer::builder(2)
        .backpressure()
        .build()
        .unwrap();
    let (protocol, mut seen) = recorder();
    let service = ServiceBuilder::new()
        .layer(proxy().max_reading(2).build().unwrap())
        .layer(limit.clone())
        .service(protocol);
    let (queue, log, listener) = ChannelListener::new();

    // A host in the balancers' network opens two connections and sends nothing...
    let (first_silent, _first_client) = duplex_conn("10.0.0.66:1001");
    let (second_silent, _second_client) = duplex_conn("10.0.0.66:1002");
    // ...then the balancer forwards a client, its header sent at once.
    let (proxied, mut balancer) = duplex_conn(BALANCER);
    balancer.write_all(V1_HEADER).await.unwrap();
    drop(balancer);
    for conn in [first_silent, second_silent, proxied] {
        queue.send(Ok(conn)).unwrap();
    }
    let server = tokio::spawn(Server::new(listener).serve(service));

    // Well within the header timeout (5 s).
    let served = tokio::time::timeout(Duration::from_secs(1), seen.recv())
        .await
        .ok()
        .flatten()
        .map(|seen| seen.info.peer_addr);
    let stats = limit.stats();
    assert_eq!(
        (served, log.accepted()),
        (Some(addr(CLIENT)), 3),
        "(the balancer's client as served within 1 s, connections accepted); cap: {stats}"
    );
    server.abort();
}
