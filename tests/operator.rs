//! The operator's view of the example servers, from outside the process: the admin
//! page on `--admin-addr` (the second stdout line), its token, and bans lifted from it.

mod support;

use std::{net::SocketAddr, process::Command, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use support::{example::*, *};

const EXAMPLES: [&str; 3] = ["axum_server", "login_server", "tonic_server"];
const TOKEN: &str = "an-operator-token-of-some-length";

/// One HTTP/1.1 request to the admin page; the status and the body.
async fn admin(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = within(PATIENCE, TcpStream::connect(addr)).await.unwrap();
    let authorization = token.map_or(String::new(), |token| {
        format!("authorization: Bearer {token}\r\n")
    });
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\n{authorization}connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    within(PATIENCE, stream.read_to_string(&mut response))
        .await
        .unwrap();
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

#[tokio::test]
async fn every_example_serves_its_admin_page_behind_the_token() {
    for name in EXAMPLES {
        for mode in [&[][..], &["--unprotected"][..]] {
            let mut args = vec!["--admin-addr", "127.0.0.1:0", "--admin-token", TOKEN];
            args.extend(mode);
            let mut server = Example::start(name, &args).await;
            let page = server.admin_addr().await;
            assert!(
                page.ip().is_loopback() && page.port() != 0,
                "{name}: {page}"
            );
            let (status, html) = admin(page, "GET", "/", None).await;
            assert_eq!(status, 200, "{name} {mode:?}");
            assert!(html.contains("<html"), "{name}: {html}");
            assert_eq!(admin(page, "GET", "/stats", None).await.0, 401, "{name}");
            assert_eq!(
                admin(page, "GET", "/stats", Some("a-wrong-token")).await.0,
                401
            );
            let (status, stats) = admin(page, "GET", "/stats", Some(TOKEN)).await;
            assert_eq!(status, 200, "{name} {mode:?}: {stats}");
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn a_ban_from_a_login_flood_is_seen_and_lifted_on_the_admin_page() {
    let file =
        std::env::temp_dir().join(format!("tower-bouncer-{}-admin.toml", std::process::id()));
    // The page's address and token from the configuration file.
    std::fs::write(
        &file,
        format!(
            "[admin]\naddr = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[bans]\nmax_failures = 3\n"
        ),
    )
    .unwrap();
    let mut server = Example::start("login_server", &["--config", file.to_str().unwrap()]).await;
    std::fs::remove_file(&file).ok();
    let page = server.admin_addr().await;

    for _ in 0..3 {
        let mut client = LineClient::connect_from(20, server.addr).await;
        assert_eq!(
            client.ask("LOGIN alice wrong").await.as_deref(),
            Some("DENIED")
        );
        // The server closes after DENIED: wait for it before the next try.
        assert_eq!(client.line().await, None);
    }
    let mut banned = LineClient::connect_from(20, server.addr).await;
    assert_eq!(banned.line().await.as_deref(), Some("ERROR banned"));
    let (status, bans) = admin(page, "GET", "/bans", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(bans.contains("127.0.0.20"), "{bans}");

    let (status, body) = admin(page, "DELETE", "/bans/127.0.0.20", Some(TOKEN)).await;
    assert!((200..300).contains(&status), "{status}: {body}");
    let mut client = None;
    for _ in 0..50 {
        let mut attempt = LineClient::connect_from(20, server.addr).await;
        if attempt.ask("LOGIN alice secret").await.as_deref() == Some("OK") {
            client = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.expect("served again once unbanned");
    server.stop().await;
}

#[test]
fn an_admin_page_off_loopback_without_a_token_is_refused_at_start() {
    for name in EXAMPLES {
        let output = Command::new(example_path(name))
            .args(["--admin-addr", "0.0.0.0:0"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}");
        assert!(output.stdout.is_empty(), "{name}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.starts_with("error: `admin.token` (--admin-token): required"),
            "{name}: {stderr}"
        );
    }
}

/// The value of the first exposition line that starts with `series`, 0 if none.
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_metrics_pass_promtool_and_move_under_an_attack() {
    let mut server = Example::start(
        "login_server",
        &[
            "--admin-addr",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
            "--max-per-peer",
            "1",
            "--max-failures",
            "1",
        ],
    )
    .await;
    let page = server.admin_addr().await;
    let refused = r#"bouncer_rejected_connections_total{layer="peer_limit",reason="peer_limit",outcome="rejected"}"#;
    let active = r#"bouncer_active_connections{listener="default"}"#;
    let (status, before) = admin(page, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(sample(&before, refused), 0.0);
    // The scrape's own connection is the page's, not the application's.
    assert_eq!(sample(&before, active), 0.0, "{before}");

    // One peer over its cap, twice; another fails a login and is banned.
    let mut held = LineClient::connect_from(21, server.addr).await;
    assert_eq!(held.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    for _ in 0..2 {
        let mut over = LineClient::connect_from(21, server.addr).await;
        assert_eq!(over.line().await.as_deref(), Some("ERROR busy"));
    }
    let mut attacker = LineClient::connect_from(22, server.addr).await;
    assert_eq!(
        attacker.ask("LOGIN alice wrong").await.as_deref(),
        Some("DENIED")
    );
    assert_eq!(attacker.line().await, None);
    let mut banned = LineClient::connect_from(22, server.addr).await;
    assert_eq!(banned.line().await.as_deref(), Some("ERROR banned"));

    let (_, after) = admin(page, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(sample(&after, refused), 2.0, "{after}");
    assert_eq!(
        sample(
            &after,
            r#"bouncer_rejected_connections_total{layer="ban",reason="banned",outcome="rejected"}"#
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"bouncer_bans_issued_total{reason="failed_login"}"#
        ),
        1.0
    );
    // The logged-in connection, at least, is still served.
    assert!(sample(&after, active) >= 1.0, "{after}");
    let checked = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(after.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn in_dry_run_a_refusal_is_counted_and_the_connection_served() {
    let mut server = Example::start(
        "login_server",
        &[
            "--dry-run",
            "--max-per-peer",
            "1",
            "--admin-addr",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
        ],
    )
    .await;
    let page = server.admin_addr().await;
    let mut first = LineClient::connect_from(23, server.addr).await;
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    let mut second = LineClient::connect_from(23, server.addr).await;
    assert_eq!(
        second.ask("LOGIN alice secret").await.as_deref(),
        Some("OK"),
        "served over the limit in dry run"
    );
    let (_, metrics) = admin(page, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(
        sample(
            &metrics,
            r#"bouncer_rejected_connections_total{layer="peer_limit",reason="peer_limit",outcome="rejected_dry_run"}"#
        ),
        1.0,
        "{metrics}"
    );
    let (_, stats) = admin(page, "GET", "/stats", Some(TOKEN)).await;
    assert!(
        stats.contains(r#""totals":{"banned":0,"dry_run_refusals":1,"#),
        "{stats}"
    );
    drop((first, second));
    server.stop().await;
}

/// The admin page runs on a server of its own, with its own caps: its connections and
/// refusals are the page's, not the application's. `/stats` leaves them out, and so
/// must `/metrics`, or a dashboard tab, a scraper or anyone knocking on the page's port
/// shows up as the application's live connections and its per-peer refusals.
#[tokio::test]
async fn the_admin_pages_own_connections_and_refusals_are_not_counted_as_the_applications() {
    let mut server = Example::start(
        "login_server",
        &["--admin-addr", "127.0.0.1:0", "--admin-token", TOKEN],
    )
    .await;
    let page = server.admin_addr().await;
    // One client of the page holds 16 connections to it, the page's cap for one peer,
    // and a 17th is refused by the page's own server.
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(connect_from(32, page).await);
    }
    let mut over = connect_from(32, page).await;
    let mut byte = [0; 1];
    assert!(
        matches!(within(PATIENCE, over.read(&mut byte)).await, Ok(0) | Err(_)),
        "the 17th connection to the page is refused"
    );

    let (_, stats) = admin(page, "GET", "/stats", Some(TOKEN)).await;
    let (_, metrics) = admin(page, "GET", "/metrics", Some(TOKEN)).await;
    // The application has served and refused nobody, as /stats says.
    assert!(
        stats.contains(r#""live":0"#) && stats.contains(r#""refused_peer_limit":0"#),
        "{stats}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"bouncer_rejected_connections_total{layer="peer_limit",reason="peer_limit",outcome="rejected"}"#
        ),
        0.0,
        "the page's own refusal is counted as the application's:\n{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"bouncer_active_connections{listener="default"}"#
        ),
        0.0,
        "the page's own connections are counted as the application's:\n{metrics}"
    );
    drop(held);
    server.stop().await;
}

/// The admin token is a secret: the server's logs, which go to files and log
/// collectors that many more people read than hold the token, must not carry it.
#[tokio::test]
async fn the_admin_token_is_not_written_to_the_logs() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(example_path("login_server"))
        .args(["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--admin-token", TOKEN])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Both lines on stdout: the server is up, its start logged.
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        within(PATIENCE, stdout.read_line(&mut line)).await.unwrap();
    }
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut logged = String::new();
    while !logged.contains("protections on") {
        let mut line = String::new();
        if within(PATIENCE, stderr.read_line(&mut line)).await.unwrap() == 0 {
            break;
        }
        logged.push_str(&line);
    }
    child.kill().await.ok();
    assert!(logged.contains("protections on"), "{logged}");
    assert!(
        !logged.contains(TOKEN),
        "the admin token is in the logs:\n{logged}"
    );
}
