//! A real `redis-server` on a free loopback port, for a fleet of replicas: no
//! persistence, stopped when dropped, and able to be killed, frozen and started again
//! on the same port.

// The siege and the end-to-end tests each compile this module and use part of it.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct RedisBinary(PathBuf);

impl RedisBinary {
    pub fn find() -> Option<Self> {
        let output = Command::new("sh")
            .args(["-c", "command -v redis-server"])
            .output()
            .ok()?;
        let path = String::from_utf8(output.stdout).ok()?;
        let path = path.trim();
        (!path.is_empty()).then(|| Self(PathBuf::from(path)))
    }

    /// Finds `redis-server`, or installs it from the Debian package when this process
    /// runs as root with apt-get, as the project's scripts do.
    pub fn find_or_install() -> Option<Self> {
        if let Some(found) = Self::find() {
            return Some(found);
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
        if !root {
            return None;
        }
        eprintln!("  installing redis-server (apt-get install redis-server)");
        let installed = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if installed { Self::find() } else { None }
    }

    /// Starts Redis on a free loopback port.
    pub fn start(&self) -> Redis {
        self.start_with(&[])
    }

    /// Starts Redis on a free loopback port with `settings` too (say, a password or a
    /// TLS port).
    pub fn start_with(&self, settings: &[String]) -> Redis {
        let mut redis = Redis {
            binary: self.0.clone(),
            port: free_port(),
            settings: settings.to_vec(),
            child: None,
        };
        redis.restart();
        redis
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A running Redis; killed when dropped.
pub struct Redis {
    binary: PathBuf,
    pub port: u16,
    settings: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills Redis at once, as a crash would: everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts Redis (again) on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .args(&self.settings)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let began = Instant::now();
        // A Redis with a password answers too, asking for it.
        let answers = |reply: Option<String>| {
            reply.is_some_and(|reply| reply == "+PONG" || reply.starts_with("-NOAUTH"))
        };
        while !answers(self.command(&["PING"])) {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the process: a Redis that accepts
    /// connections and never answers.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
    }

    /// One command in Redis's inline protocol; the first line of the reply, or `None`
    /// if Redis did not answer within a second.
    pub fn command(&self, words: &[&str]) -> Option<String> {
        self.reply_lines(words, 1).into_iter().next()
    }

    /// How many clients are subscribed to the decisions channel of the fleet under
    /// `prefix` (each replica, once it has joined); 0 if Redis does not say.
    pub fn fleet_subscribers(&self, prefix: &str) -> usize {
        let channel = format!("{{{prefix}}}:decisions");
        // `*2`, `$N`, the channel, then the count as `:N`.
        self.reply_lines(&["PUBSUB", "NUMSUB", &channel], 4)
            .iter()
            .find_map(|line| line.strip_prefix(':')?.parse().ok())
            .unwrap_or(0)
    }

    /// Up to `lines` lines of the reply to one inline command, each waited for at most
    /// a second.
    fn reply_lines(&self, words: &[&str], lines: usize) -> Vec<String> {
        use std::io::{BufRead, BufReader, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return Vec::new();
        };
        let written = stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .and_then(|()| stream.write_all(format!("{}\r\n", words.join(" ")).as_bytes()));
        if written.is_err() {
            return Vec::new();
        }
        let mut reader = BufReader::new(stream);
        let mut reply = Vec::new();
        for _ in 0..lines {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(read) if read > 0 => reply.push(line.trim_end().to_owned()),
                _ => break,
            }
        }
        reply
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SIGKILL ends a frozen process too.
        self.kill();
    }
}
