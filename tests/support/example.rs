//! Running the example servers as real processes, and talking to them.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use super::{PATIENCE, connect_from, within};

/// The path of a built example; `cargo test` builds the examples next to the tests.
pub fn example_path(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join(name)
}

/// A running example server, killed if the test fails before stopping it.
pub struct Example {
    child: Option<Child>,
    /// The rest of its stdout, after the `listening on` line.
    stdout: BufReader<tokio::process::ChildStdout>,
    pub addr: SocketAddr,
}

impl Example {
    pub async fn start(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(example_path(name))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start example {name}: {error}"));
        let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
        let mut stdout = BufReader::new(stdout);
        let mut first_line = String::new();
        within(PATIENCE, stdout.read_line(&mut first_line))
            .await
            .unwrap();
        let addr = first_line
            .strip_suffix('\n')
            .and_then(|line| line.strip_prefix("listening on "))
            .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
            .parse::<SocketAddr>()
            .unwrap();
        assert_ne!(addr.port(), 0, "the real bound port is printed");
        Self {
            child: Some(child),
            stdout,
            addr,
        }
    }

    /// The address of the admin page, from stdout's second line, `admin on IP:PORT`.
    pub async fn admin_addr(&mut self) -> SocketAddr {
        let mut line = String::new();
        within(PATIENCE, self.stdout.read_line(&mut line))
            .await
            .unwrap();
        line.strip_suffix('\n')
            .and_then(|line| line.strip_prefix("admin on "))
            .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
            .parse()
            .unwrap()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// How many descriptors the server process has open now.
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("the server's /proc entry")
            .count()
    }

    /// Sends SIGTERM and expects a clean exit.
    pub async fn stop(self) {
        self.stop_within(PATIENCE).await;
    }

    /// Sends SIGTERM and expects a clean exit within `limit`.
    pub async fn stop_within(mut self, limit: std::time::Duration) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = within(limit, tokio::task::spawn_blocking(move || child.wait()))
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "exit status {status}");
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// A line-protocol client.
pub struct LineClient {
    pub io: BufReader<TcpStream>,
}

impl LineClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_from(1, addr).await
    }

    /// Connects from `127.0.0.<last>`, a distinct peer.
    pub async fn connect_from(last: u8, addr: SocketAddr) -> Self {
        Self {
            io: BufReader::new(within(PATIENCE, connect_from(last, addr)).await),
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.io.get_mut().write_all(line.as_bytes()).await.unwrap();
        self.io.get_mut().write_all(b"\r\n").await.unwrap();
    }

    /// The next line, or `None` once the server has closed.
    pub async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match within(PATIENCE, self.io.read_line(&mut line)).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    pub async fn ask(&mut self, line: &str) -> Option<String> {
        self.send(line).await;
        self.line().await
    }
}

/// Waits for the server to close `stream`; returns how long that took.
pub async fn closed_after(stream: &mut TcpStream) -> std::time::Duration {
    let began = std::time::Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match within(PATIENCE, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return began.elapsed(),
            Ok(_) => {}
        }
    }
}
