//! The examples driven by a configuration file (`--config FILE`), as an operator runs
//! them: the file's settings enforced, flags overriding it, a bad file refused with one
//! line naming the key and its line.

mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, ChildStderr},
};

use support::{example::*, *};

const EXAMPLES: [&str; 3] = ["axum_server", "login_server", "tonic_server"];

/// A configuration file in the temporary directory, removed when dropped.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("tower-bouncer-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

#[tokio::test]
async fn the_file_sets_the_per_peer_cap() {
    let file = ConfigFile::new("per-peer", "[connections]\nper_peer = 1\n");
    let server = Example::start("login_server", &["--config", file.path()]).await;
    let mut first = LineClient::connect_from(2, server.addr).await;
    let mut second = LineClient::connect_from(2, server.addr).await;
    assert_eq!(second.line().await.as_deref(), Some("ERROR busy"));
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    server.stop().await;
}

#[tokio::test]
async fn flags_override_the_file() {
    let file = ConfigFile::new("override", "[connections]\nper_peer = 1\n");
    // Before or after `--config`, the flag wins.
    for args in [
        ["--config", file.path(), "--max-per-peer", "2"],
        ["--max-per-peer", "2", "--config", file.path()],
    ] {
        let server = Example::start("login_server", &args).await;
        let mut first = LineClient::connect_from(3, server.addr).await;
        let mut second = LineClient::connect_from(3, server.addr).await;
        assert_eq!(
            second.ask("LOGIN alice secret").await.as_deref(),
            Some("OK")
        );
        let mut third = LineClient::connect_from(3, server.addr).await;
        assert_eq!(third.line().await.as_deref(), Some("ERROR busy"));
        assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
        server.stop().await;
    }
}

#[tokio::test]
async fn the_file_sets_the_login_timeout() {
    let file = ConfigFile::new("login-timeout", "[logins]\ntimeout = \"300ms\"\n");
    let server = Example::start("login_server", &["--config", file.path()]).await;
    let mut stream = connect_from(4, server.addr).await;
    let started = Instant::now();
    let closed_after = closed_after(&mut stream).await;
    assert!(
        closed_after < Duration::from_secs(5) && started.elapsed() >= Duration::from_millis(300),
        "closed after {closed_after:?}, not at the file's 300 ms (the default is 30 s)"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_sample_file_runs_every_example() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bouncer.toml");
    for name in EXAMPLES {
        let server = Example::start(name, &["--config", sample]).await;
        within(PATIENCE, tokio::net::TcpStream::connect(server.addr))
            .await
            .unwrap();
        server.stop().await;
    }
}

#[test]
fn a_bad_file_exits_2_with_one_line_naming_the_key_and_its_line() {
    let cases = [
        (
            "typo",
            "[connections]\nper_peer = 4\nmax_conections = 10\n",
            "3: `connections.max_conections`",
        ),
        (
            "zero",
            "[rates]\n\nper_peer = 0\n",
            "3: `rates.per_peer`: must be at least 1",
        ),
        ("type", "[timeouts]\nidle = 60\n", "2: `timeouts.idle`"),
        ("section", "[timeout]\nidle = \"60s\"\n", "1: `timeout`"),
    ];
    for (name, text, expected) in cases {
        let file = ConfigFile::new(name, text);
        for example in EXAMPLES {
            let output = Command::new(example_path(example))
                .args(["--config", file.path()])
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(2), "{example} {name}");
            assert!(output.stdout.is_empty(), "{example} {name}");
            let stderr = String::from_utf8(output.stderr).unwrap();
            assert_eq!(stderr.lines().count(), 1, "{example} {name}: {stderr}");
            assert!(
                stderr.starts_with(&format!("error: --config {}:{expected}", file.path())),
                "{example} {name}: {stderr}"
            );
        }
    }
    let output = Command::new(example_path("axum_server"))
        .args(["--config", "/nonexistent/bouncer.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_flag_that_cannot_work_names_its_key_and_flag() {
    let output = Command::new(example_path("login_server"))
        .args(["--max-per-peer", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "error: `connections.per_peer` (--max-per-peer): must be at least 1\n"
    );
}

/// Sends SIGHUP to the server whose process id is `pid`.
fn hang_up(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Whether a new connection from 127.0.0.`last` is served (not refused as busy).
async fn admitted(last: u8, server: &Example) -> (bool, LineClient) {
    let mut client = LineClient::connect_from(last, server.addr).await;
    let answer = client.ask("LOGIN alice secret").await;
    (answer.as_deref() == Some("OK"), client)
}

#[tokio::test]
async fn a_sighup_reloads_the_file_and_a_bad_one_keeps_what_is_in_force() {
    let file = ConfigFile::new("reload", "[connections]\nper_peer = 1\n");
    let server = Example::start("login_server", &["--config", file.path()]).await;
    let (first_in, first) = admitted(5, &server).await;
    assert!(first_in);
    assert!(!admitted(5, &server).await.0, "the file's limit of 1");

    std::fs::write(&file.0, "[connections]\nper_peer = 2\n").unwrap();
    hang_up(server.pid());
    let mut second = None;
    for _ in 0..100 {
        let (admitted, client) = admitted(5, &server).await;
        if admitted {
            second = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = second.expect("the reloaded limit of 2 within two seconds");

    // A bad file: the limit of 2 stays in force, and the server serves on.
    std::fs::write(&file.0, "[connections]\nper_peer = 0\n").unwrap();
    hang_up(server.pid());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!admitted(5, &server).await.0, "still the limit of 2");
    drop((first, second));
    let mut in_again = None;
    for _ in 0..100 {
        let (admitted, client) = admitted(5, &server).await;
        if admitted {
            in_again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _in_again = in_again.expect("served once the first two closed");
    server.stop().await;
}

#[tokio::test]
async fn the_last_config_given_is_the_one_read_at_start_and_on_sighup() {
    let earlier = ConfigFile::new("earlier", "[connections]\nper_peer = 3\n");
    let last = ConfigFile::new("last", "[connections]\nper_peer = 1\n");
    let args = ["--config", earlier.path(), "--config", last.path()];
    let server = Example::start("login_server", &args).await;
    let (first_in, _first) = admitted(6, &server).await;
    assert!(first_in);
    assert!(!admitted(6, &server).await.0, "the last file's limit of 1");

    std::fs::write(&last.0, "[connections]\nper_peer = 2\n").unwrap();
    hang_up(server.pid());
    let mut second = None;
    for _ in 0..100 {
        let (admitted, client) = admitted(6, &server).await;
        if admitted {
            second = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.expect("the last file's new limit of 2 within two seconds");
    server.stop().await;

    // A last file that cannot be read is an error, whatever came before it.
    let mut child = tokio::process::Command::new(example_path("login_server"))
        .args([
            "--config",
            last.path(),
            "--config",
            "/nonexistent/override.toml",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().unwrap();
    within(PATIENCE, pipe.read_to_string(&mut stderr))
        .await
        .unwrap();
    let status = within(PATIENCE, child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: --config /nonexistent/override.toml"),
        "{stderr}"
    );
}

/// An example server started by a command of one's own (through a shell, with its own
/// environment), whose log is read; killed when dropped.
struct LoggingServer {
    child: Child,
    log: BufReader<ChildStderr>,
    addr: SocketAddr,
}

impl LoggingServer {
    /// Starts `command` (which gives `--addr 127.0.0.1:0`), logging at `info`; panics
    /// with what it logged if it does not start.
    async fn start(mut command: tokio::process::Command) -> Self {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        within(PATIENCE, stdout.read_line(&mut first))
            .await
            .unwrap();
        let Some(addr) = first.trim_end().strip_prefix("listening on ") else {
            let mut logged = String::new();
            within(PATIENCE, log.read_to_string(&mut logged))
                .await
                .unwrap();
            panic!("did not start: {logged}");
        };
        let addr = addr.parse().unwrap();
        Self { child, log, addr }
    }

    /// Starts the example `name` with `args`.
    async fn example(name: &str, args: &[&str]) -> Self {
        let mut command = tokio::process::Command::new(example_path(name));
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        Self::start(command).await
    }

    fn hang_up(&self) {
        hang_up(self.child.id().expect("running"));
    }

    /// Sends SIGTERM and expects a clean exit.
    async fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().expect("running").to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = within(PATIENCE, self.child.wait()).await.unwrap();
        assert!(status.success(), "exit status {status}");
    }

    /// What is logged up to the next line that holds `text`, among the next 100.
    async fn logged(&mut self, text: &str) -> String {
        let mut logged = String::new();
        for _ in 0..100 {
            let start = logged.len();
            let read = within(PATIENCE, self.log.read_line(&mut logged))
                .await
                .unwrap();
            if read == 0 {
                break;
            }
            if logged[start..].contains(text) {
                return logged;
            }
        }
        panic!("nothing logged holds {text:?}: {logged}");
    }
}

/// Flags override the file: a file whose value makes sense only with the flag given
/// beside it (here a longest ban of 5 minutes, with `--ban 60` making the first one a
/// minute; as well an `[admin]` address with the token on the command line, or
/// `tls.cert` with `--tls-key`) is checked with the flag over it, at start and on
/// SIGHUP, not refused for what the flag changes. A flag that makes the file's value
/// wrong is refused with the key and line of that value, and the flag.
#[tokio::test]
async fn a_file_completed_by_a_flag_is_checked_with_the_flag_over_it() {
    let file = ConfigFile::new("completed", "[bans]\nmax = \"5m\"\n");
    let mut server =
        LoggingServer::example("login_server", &["--config", file.path(), "--ban", "60"]).await;
    server.hang_up();
    let said = server.logged("reloaded").await;
    assert!(!said.contains("not reloaded"), "{said}");
    let mut client = LineClient::connect_from(9, server.addr).await;
    assert_eq!(
        client.ask("LOGIN alice secret").await.as_deref(),
        Some("OK")
    );

    let output = Command::new(example_path("login_server"))
        .args(["--config", file.path(), "--ban", "3600"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "error: --config {}:2: `bans.max`: must be at least the first ban (`bans.first`); \
             --ban sets `bans.first`\n",
            file.path()
        )
    );
}

/// The README: on SIGHUP "a file that cannot be used is logged, naming the key and its
/// line". A key the running server cannot change (`connections.backpressure`, the
/// PROXY networks, `bans.kernel`...) is such a file too: the operator who edited it is
/// told which file and which line, as for any other setting that cannot work.
#[tokio::test]
async fn a_sighup_naming_a_key_that_needs_a_restart_logs_its_file_and_line() {
    let file = ConfigFile::new("restart-key", "[connections]\nper_peer = 4\n");
    let mut server = LoggingServer::example("login_server", &["--config", file.path()]).await;
    std::fs::write(
        &file.0,
        "[connections]\nper_peer = 4\nbackpressure = true\n",
    )
    .unwrap();
    server.hang_up();
    let logged = server.logged("not reloaded").await;
    let warning = logged.lines().last().unwrap();
    assert!(
        warning.contains("connections.backpressure"),
        "names the key: {warning}"
    );
    assert!(
        warning.contains(&format!("{}:3", file.path())),
        "names the file and line 3, where the key is: {warning}"
    );
}

/// `--config <(render)`, a file made by a command, is read from a pipe (the crate
/// bounds such a read for that use). A SIGHUP that read it again would find it empty,
/// which reads as every default: a pipe is read once, at start, and a SIGHUP keeps its
/// settings (here a per-peer cap of 1, not the default 32).
#[tokio::test]
async fn a_sighup_does_not_put_the_defaults_in_force_when_the_config_was_a_pipe() {
    let mut command = tokio::process::Command::new("bash");
    command.arg("-c").arg(format!(
        "exec {} --addr 127.0.0.1:0 --config <(printf '[connections]\\nper_peer = 1\\n')",
        example_path("login_server").display()
    ));
    let mut server = LoggingServer::start(command).await;
    let mut held = LineClient::connect_from(7, server.addr).await;
    assert_eq!(held.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    let mut over = LineClient::connect_from(7, server.addr).await;
    assert_eq!(
        over.line().await.as_deref(),
        Some("ERROR busy"),
        "the pipe's cap of 1"
    );

    server.hang_up();
    // Whatever the reload did, it has done it once it says so.
    let said = server.logged("reloaded").await;
    let mut again = LineClient::connect_from(7, server.addr).await;
    assert_ne!(
        again.ask("LOGIN alice secret").await.as_deref(),
        Some("OK"),
        "a second connection from a peer capped at 1 was served after the SIGHUP: {said}"
    );
    assert!(said.contains("not a regular file"), "says why: {said}");
    drop(held);
}

/// A file replaced by a FIFO that no one writes to would hold a SIGHUP's read for ever
/// (opening it waits for a writer): it is not read, and the server, on one runtime
/// worker here, serves on with the settings it has.
#[tokio::test]
async fn a_sighup_does_not_wait_on_a_config_file_replaced_by_a_fifo_without_a_writer() {
    let file = ConfigFile::new("fifo", "[connections]\nper_peer = 1\n");
    let mut command = tokio::process::Command::new(example_path("login_server"));
    command
        .args(["--addr", "127.0.0.1:0", "--config", file.path()])
        .env("TOKIO_WORKER_THREADS", "1");
    let mut server = LoggingServer::start(command).await;
    std::fs::remove_file(&file.0).unwrap();
    let made = Command::new("mkfifo").arg(&file.0).status().unwrap();
    assert!(made.success());

    server.hang_up();
    let said = server.logged("reloaded").await;
    assert!(said.contains("not a regular file"), "says why: {said}");
    let mut first = LineClient::connect_from(8, server.addr).await;
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    let mut second = LineClient::connect_from(8, server.addr).await;
    assert_eq!(
        second.line().await.as_deref(),
        Some("ERROR busy"),
        "still the file's cap of 1"
    );
}

/// A setting a flag makes wrong is named where the operator wrote it. `--ban 100000`
/// (over the default longest ban of a day) beside a file that says nothing of bans
/// makes `bans.max` wrong: the file has no such key (nor a `[bans]` section), so the
/// one-line error must not send the operator to the file, and names the flag instead.
/// Likewise `--admin-addr` off loopback without `--admin-token`. A file that writes the
/// key the check reads (`[bans] first`), with no flag, is still named.
#[tokio::test]
async fn a_setting_a_flag_makes_wrong_is_named_by_the_flag_not_by_a_file_silent_on_it() {
    let file = ConfigFile::new("silent-on-bans", "[connections]\nper_peer = 4\n");
    for (flags, said) in [
        (
            ["--ban", "100000"],
            "error: `bans.max`: must be at least the first ban (`bans.first`); \
             --ban sets `bans.first`\n",
        ),
        (
            ["--admin-addr", "192.0.2.1:9000"],
            "error: `admin.token` (--admin-token): required to serve the admin page on \
             192.0.2.1:9000 (`admin.addr`), not loopback; --admin-addr sets `admin.addr`\n",
        ),
    ] {
        let output = Command::new(example_path("login_server"))
            .args(["--config", file.path()])
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            !stderr.contains(file.path()),
            "{flags:?}: blamed on a file that does not write the key: {stderr}"
        );
        assert_eq!(stderr, said, "{flags:?}");
    }

    let file = ConfigFile::new("long-first-ban", "[bans]\nfirst = \"2d\"\n");
    let output = Command::new(example_path("login_server"))
        .args(["--config", file.path()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "error: --config {}:1: `bans.max`: must be at least the first ban (`bans.first`)\n",
            file.path()
        )
    );
}

/// A TLS key file replaced by a FIFO that no one writes to would hold a SIGHUP's reload
/// for good (opening it waits for a writer), and then the process's exit. The reload is
/// refused at once, naming the file, and the server still stops cleanly.
#[cfg(feature = "tls")]
#[tokio::test]
async fn a_sighup_does_not_wait_on_a_tls_key_replaced_by_a_fifo_without_a_writer() {
    let generated = tls::generate();
    let chain = ConfigFile::new("tls-chain", &generated.chain_pem);
    let key = ConfigFile::new("tls-key", &generated.key_pem);
    let mut server = LoggingServer::example(
        "login_server",
        &["--tls-cert", chain.path(), "--tls-key", key.path()],
    )
    .await;
    std::fs::remove_file(&key.0).unwrap();
    let made = Command::new("mkfifo").arg(&key.0).status().unwrap();
    assert!(made.success());

    server.hang_up();
    let said = server.logged("reloaded").await;
    assert!(said.contains("not reloaded"), "{said}");
    assert!(
        said.contains(key.path()) && said.contains("not a regular file"),
        "names the file and says why: {said}"
    );
    server.stop().await;
}
