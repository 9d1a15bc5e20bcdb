//! TLS through the whole protected stack against bare tokio-rustls and hyper, both
//! serving the same router on loopback in this process: new connections a second (a
//! full handshake and one request each) and keep-alive requests a second. Each round
//! runs the bare server and the protected one back to back, with the same clients; the
//! figure is the median of the rounds' ratios, so that a noisy neighbour slows both
//! sides alike.
//!
//! ```text
//! cargo bench --bench tls --features tls            # 21 rounds
//! cargo bench --bench tls --features tls -- --quick # 7 rounds
//! ```

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower::ServiceBuilder;
use tower_bouncer::{
    Conn,
    http::HttpService,
    limit::ConnectionLimitLayer,
    login::{Login, StatusClassifier},
    peer_limit::PeerLimitLayer,
    rate_limit::{Rate, RateLimitLayer},
    serve::Server,
    timeout::TimeoutLayer,
    tls::{
        ServerCertificate, TlsLayer,
        rustls::{
            ClientConfig, RootCertStore, ServerConfig,
            client::Resumption,
            crypto::{CryptoProvider, ring},
            pki_types::{PrivateKeyDer, ServerName, pem::PemObject},
        },
    },
};

/// Clients at once, in both measurements.
const CLIENTS: usize = 4;
/// New connections per client per round.
const CONNECTIONS: usize = 150;
/// Requests per client per round, each client on one keep-alive connection.
const REQUESTS: usize = 2_500;
/// The longest a round may take: a stalled server or client fails the benchmark
/// rather than hang it. One timeout a round, so that no step pays for a timer.
const PATIENCE: Duration = Duration::from_secs(120);

/// `future`'s output, or a panic naming `what` after [`PATIENCE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {PATIENCE:?}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello\n" }))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// What `axum::serve` does, over TLS: a task per connection, the handshake, then
/// hyper-util's auto builder. Both servers set `TCP_NODELAY`: without it, the first
/// response on a connection waits for the client to acknowledge the session tickets
/// written after the handshake (Nagle's algorithm against a delayed ACK, 40 ms).
async fn serve_bare(listener: TcpListener, config: Arc<ServerConfig>) {
    let acceptor = TlsAcceptor::from(config);
    let app = app();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tcp.set_nodelay(true).unwrap();
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(app))
                .await
                .ok();
        });
    }
}

/// The README's stack with TLS in its place: bans, rates, caps, TLS, timeouts, login
/// session, the HTTP adapter. The limits are far above what the clients reach.
async fn serve_protected(listener: TcpListener, certificate: ServerCertificate) {
    let login = Login::builder().build().unwrap();
    let unbounded = Rate::per_second(1_000_000_000).burst(1_000_000_000);
    let connections = ServiceBuilder::new()
        .map_request(|conn: Conn<TcpStream>| {
            conn.io().set_nodelay(true).unwrap();
            conn
        })
        .layer(login.ban_layer())
        .layer(
            RateLimitLayer::builder()
                .per_peer(unbounded)
                .global(unbounded)
                .build()
                .unwrap(),
        )
        .layer(PeerLimitLayer::builder(100_000).build().unwrap())
        .layer(ConnectionLimitLayer::builder(100_000).build().unwrap())
        .layer(TlsLayer::builder(certificate).build().unwrap())
        .layer(
            TimeoutLayer::builder()
                .first_byte(Duration::from_secs(10))
                .idle(Duration::from_secs(60))
                .request(Duration::from_secs(10))
                .lifetime(Duration::from_secs(3600))
                .build()
                .unwrap(),
        )
        .layer(login.session_layer())
        .service(
            HttpService::builder(app())
                .report_logins(StatusClassifier::default())
                .build()
                .unwrap(),
        );
    Server::new(listener).serve(connections).await.ok();
}

/// An HTTP/1.1 connection over TLS; every handshake a full one.
async fn connect(addr: SocketAddr, connector: &TlsConnector) -> Http1 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    Http1 { sender }
}

struct Http1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Http1 {
    async fn get(&mut self) {
        self.sender.ready().await.unwrap();
        let request = http::Request::get("/")
            .header(http::header::HOST, "localhost")
            .body(Empty::new())
            .unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
}

/// New connections a second: `CLIENTS` at once, each opening `CONNECTIONS` in turn,
/// with one request on each.
async fn connections_per_second(addr: SocketAddr, connector: &TlsConnector) -> f64 {
    let began = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(async move {
                for _ in 0..CONNECTIONS {
                    connect(addr, &connector).await.get().await;
                }
            })
        })
        .collect();
    within("a round of new connections", async {
        for client in clients {
            client.await.unwrap();
        }
    })
    .await;
    (CLIENTS * CONNECTIONS) as f64 / began.elapsed().as_secs_f64()
}

/// Keep-alive requests a second: `CLIENTS` connections, `REQUESTS` on each.
async fn requests_per_second(addr: SocketAddr, connector: &TlsConnector) -> f64 {
    let mut connections = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        connections.push(within("a keep-alive connection", connect(addr, connector)).await);
    }
    let began = Instant::now();
    let clients: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            tokio::spawn(async move {
                for _ in 0..REQUESTS {
                    connection.get().await;
                }
            })
        })
        .collect();
    within("a round of keep-alive requests", async {
        for client in clients {
            client.await.unwrap();
        }
    })
    .await;
    (CLIENTS * REQUESTS) as f64 / began.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 7 } else { 21 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let generated = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
    let (chain_pem, key_pem) = (generated.cert.pem(), generated.signing_key.serialize_pem());
    let certificate =
        ServerCertificate::from_pem(chain_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    // The bare server presents the same certificate with the same settings.
    let mut bare_config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![generated.cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    bare_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let mut roots = RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let mut client_config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    client_config.resumption = Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(client_config));

    let servers = runtime.block_on(async {
        let bare = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let protected = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = [bare.local_addr().unwrap(), protected.local_addr().unwrap()];
        tokio::spawn(serve_bare(bare, Arc::new(bare_config)));
        tokio::spawn(serve_protected(protected, certificate));
        addrs
    });

    println!("{rounds} interleaved rounds; medians. {CLIENTS} clients at once.\n");
    println!("| what | baseline | baseline | with the crate | figure | target | met |");
    println!("|---|---|---|---|---|---|---|");

    let [bare_rate, protected_rate, ratio] = interleaved(rounds, servers, |addr| {
        runtime.block_on(connections_per_second(addr, &connector))
    });
    println!(
        "| TLS handshake and one request, new connections/s | tokio-rustls + hyper-util | {bare_rate:.0}/s | {protected_rate:.0}/s | {ratio:.3}× | ≥ 0.97× | {} |",
        yes(ratio >= 0.97)
    );
    let [bare_rate, protected_rate, ratio] = interleaved(rounds, servers, |addr| {
        runtime.block_on(requests_per_second(addr, &connector))
    });
    println!(
        "| TLS keep-alive, HTTP/1.1 requests/s | tokio-rustls + hyper-util | {bare_rate:.0}/s | {protected_rate:.0}/s | {ratio:.3}× | ≥ 0.97× | {} |",
        yes(ratio >= 0.97)
    );
}

/// Measures the bare server, then the protected one, `rounds` times; returns the
/// medians of each and of the rounds' ratios, and prints the ratios' range.
fn interleaved(
    rounds: usize,
    [bare, protected]: [SocketAddr; 2],
    mut measure: impl FnMut(SocketAddr) -> f64,
) -> [f64; 3] {
    let (mut bare_rates, mut protected_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Each goes first every other round, so that a drift favours neither.
        let (bare_rate, protected_rate) = if round % 2 == 0 {
            let bare_rate = measure(bare);
            (bare_rate, measure(protected))
        } else {
            let protected_rate = measure(protected);
            (measure(bare), protected_rate)
        };
        bare_rates.push(bare_rate);
        protected_rates.push(protected_rate);
        ratios.push(protected_rate / bare_rate);
    }
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(0.0, f64::max);
    eprintln!("rounds' ratios {lowest:.3}–{highest:.3}");
    [median(bare_rates), median(protected_rates), median(ratios)]
}

fn yes(met: bool) -> &'static str {
    if met { "yes" } else { "no" }
}
