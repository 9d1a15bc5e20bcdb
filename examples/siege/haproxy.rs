//! The same axum app behind HAProxy, configured with its nearest equivalents of the
//! crate's defaults, for comparison.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

pub struct HaproxyBinary(PathBuf);

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

    /// Starts HAProxy in front of `backend` on a free loopback port.
    pub async fn start(&self, backend: SocketAddr) -> Proxy {
        let port = free_port();
        let config = std::env::temp_dir().join(format!("siege-haproxy-{}.cfg", std::process::id()));
        std::fs::write(&config, config_text(port, backend)).expect("writing the HAProxy config");
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

/// HAProxy's nearest equivalents of the crate's defaults: `maxconn` for the connection
/// cap, a stick table tracking each source's concurrent connections, connection rate
/// and HTTP error rate for the per-peer limit, the rate limit and the bans, and its
/// client, request and keep-alive timeouts for the timeouts.
fn config_text(port: u16, backend: SocketAddr) -> String {
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
