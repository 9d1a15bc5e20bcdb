//! HAProxy in front of a server: configured with its nearest equivalents of the crate's
//! defaults, for comparison; or as a plain load balancer, with or without the PROXY
//! protocol, as servers are deployed behind one.

// The siege and the end-to-end tests each compile this module and use part of it.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

pub struct HaproxyBinary(PathBuf);

/// What HAProxy does in front of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Guards an unprotected server with its own limits, rates and timeouts.
    Guard,
    /// Forwards every connection as it is (TCP mode), from `source`, telling the server
    /// the client's address with the PROXY protocol or not.
    Balancer {
        source: std::net::Ipv4Addr,
        proxy: Option<ProxyProtocol>,
    },
}

/// The PROXY protocol version a balancer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
}

impl HaproxyBinary {
    pub fn find() -> Option<Self> {
        let output = std::process::Command::new("sh")
            .args(["-c", "command -v haproxy"])
            .output()
            .ok()?;
        let path = String::from_utf8(output.stdout).ok()?;
        let path = path.trim();
        (!path.is_empty()).then(|| Self(PathBuf::from(path)))
    }

    /// Finds HAProxy, or installs it from the Debian package when this process runs as
    /// root with apt-get, as the project's scripts do.
    pub fn find_or_install() -> Option<Self> {
        if let Some(found) = Self::find() {
            return Some(found);
        }
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
        if !root {
            return None;
        }
        eprintln!("  installing haproxy (apt-get install haproxy)");
        let installed = std::process::Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if installed { Self::find() } else { None }
    }

    /// Starts HAProxy in front of `backend` on a free loopback port, in `role`.
    pub async fn start(&self, backend: SocketAddr, role: Role) -> Proxy {
        let port = free_port();
        let config =
            std::env::temp_dir().join(format!("haproxy-{}-{port}.cfg", std::process::id()));
        let text = match role {
            Role::Guard => guard_config(port, backend),
            Role::Balancer { source, proxy } => balancer_config(port, backend, source, proxy),
        };
        std::fs::write(&config, text).expect("writing the HAProxy config");
        let child = Command::new(&self.0)
            .args(["-f"])
            .arg(&config)
            .args(["-db"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Proxy { child, addr }
    }
}

pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

/// A load balancer in TCP mode: one server connection per client connection, so that
/// a PROXY header speaks for exactly one client.
fn balancer_config(
    port: u16,
    backend: SocketAddr,
    source: std::net::Ipv4Addr,
    proxy: Option<ProxyProtocol>,
) -> String {
    let send_proxy = match proxy {
        None => "",
        Some(ProxyProtocol::V1) => " send-proxy",
        Some(ProxyProtocol::V2) => " send-proxy-v2",
    };
    format!(
        "global
    maxconn 8192
    nbthread 2

defaults
    mode tcp
    maxconn 8192
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend balancer
    bind 127.0.0.1:{port}
    default_backend app

backend app
    server app {backend} source {source}{send_proxy}
"
    )
}

/// HAProxy's nearest equivalents of the crate's defaults: `maxconn` for the connection
/// cap, a stick table tracking each source's concurrent connections, connection rate
/// and HTTP error rate for the per-peer limit, the rate limit and the bans, and its
/// client, request and keep-alive timeouts for the timeouts.
fn guard_config(port: u16, backend: SocketAddr) -> String {
    format!(
        "global
    maxconn 4096
    nbthread 2

defaults
    mode http
    maxconn 4096
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend siege
    bind 127.0.0.1:{port}
    stick-table type ip size 64k expire 10m store conn_cur,conn_rate(1s),http_err_rate(10m)
    tcp-request connection track-sc0 src
    tcp-request connection reject if {{ sc0_conn_cur gt 32 }}
    tcp-request connection reject if {{ sc0_conn_rate gt 20 }}
    http-request deny deny_status 429 if {{ sc0_http_err_rate gt 5 }}
    default_backend app

backend app
    server app {backend} maxconn 4096
"
    )
}
