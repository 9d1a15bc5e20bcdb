//! The example servers' command-line contract (`shared/EXAMPLES.md`) and protocols,
//! run as the real binaries on loopback.

mod support;

use std::process::{Command, Output};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use support::{example::*, *};

fn run_to_exit(name: &str, args: &[&str]) -> Output {
    Command::new(example_path(name))
        .args(args)
        .output()
        .unwrap()
}

const EXAMPLES: [&str; 3] = ["axum_server", "login_server", "tonic_server"];

#[tokio::test]
async fn every_example_announces_its_port_and_exits_cleanly_on_sigterm() {
    for name in EXAMPLES {
        for mode in [&[][..], &["--unprotected"][..]] {
            let server = Example::start(name, mode).await;
            within(PATIENCE, TcpStream::connect(server.addr))
                .await
                .unwrap();
            server.stop().await;
        }
    }
}

#[test]
fn a_bad_flag_or_value_exits_2_with_a_one_line_error() {
    for name in EXAMPLES {
        for args in [
            &["--no-such-flag"][..],
            &["--addr", "not-an-address"],
            &["--addr"],
        ] {
            let output = run_to_exit(name, args);
            assert_eq!(output.status.code(), Some(2), "{name} {args:?}");
            assert!(output.stdout.is_empty(), "{name} {args:?}");
            let stderr = String::from_utf8(output.stderr).unwrap();
            assert_eq!(stderr.lines().count(), 1, "{name} {args:?}: {stderr}");
            assert!(stderr.starts_with("error: "), "{name} {args:?}: {stderr}");
        }
    }
}

#[test]
fn only_login_server_takes_a_login_timeout() {
    for name in ["axum_server", "tonic_server"] {
        let output = run_to_exit(name, &["--login-timeout", "5"]);
        assert_eq!(output.status.code(), Some(2), "{name}");
    }
    let output = run_to_exit("login_server", &["--login-timeout", "soon"]);
    assert_eq!(output.status.code(), Some(2));
}

/// The flags of the examples' command-line contract that all three take.
const CONTRACT_FLAGS: [&str; 31] = [
    "--addr",
    "--unprotected",
    "--max-connections",
    "--backpressure",
    "--max-per-peer",
    "--ipv6-prefix",
    "--rate",
    "--burst",
    "--global-rate",
    "--idle-timeout",
    "--first-byte-timeout",
    "--request-timeout",
    "--max-lifetime",
    "--max-auth-tries",
    "--max-failures",
    "--failure-window",
    "--ban",
    "--exempt",
    "--max-timeouts",
    "--no-kernel-bans",
    "--proxy-protocol-from",
    "--proxy-protocol-timeout",
    "--tls-cert",
    "--tls-key",
    "--tls-handshake-timeout",
    "--redis",
    "--redis-prefix",
    "--config",
    "--admin-addr",
    "--admin-token",
    "--dry-run",
];

#[test]
fn every_examples_help_lists_its_flags_in_one_aligned_column() {
    // Where every description starts.
    const COLUMN: usize = 24;
    for name in EXAMPLES {
        let help = String::from_utf8(run_to_exit(name, &["--help"]).stdout).unwrap();
        let mut lines = help.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with(&format!("usage: {name} "))
        );
        let mut listed = Vec::new();
        for line in lines {
            assert!(line.len() <= 100, "{name}: too long: {line:?}");
            if let Some(flags) = line.strip_prefix("  --") {
                // A flag, then its description from the column, or alone on its line
                // with the description on the next.
                let head = format!("--{flags}");
                listed.extend(
                    head.split([' ', ','])
                        .filter(|word| word.starts_with("--"))
                        .map(str::to_owned),
                );
                if let Some(gap) = line[2..].find("  ") {
                    let description = line[2 + gap..].len() - line[2 + gap..].trim_start().len();
                    assert_eq!(
                        2 + gap + description,
                        COLUMN,
                        "{name}: not aligned: {line:?}"
                    );
                }
            } else {
                let indent = line.len() - line.trim_start().len();
                assert_eq!(indent, COLUMN, "{name}: not aligned: {line:?}");
            }
        }
        for flag in CONTRACT_FLAGS {
            assert!(
                listed.iter().any(|listed| listed == flag),
                "{name} --help: no {flag}"
            );
        }
        let login_timeout = listed.iter().any(|flag| flag == "--login-timeout");
        assert_eq!(login_timeout, name == "login_server", "{name}");
    }
}

#[test]
fn every_example_takes_max_timeouts() {
    for name in EXAMPLES {
        let help = run_to_exit(name, &["--help"]);
        assert!(String::from_utf8_lossy(&help.stdout).contains("--max-timeouts N"));
        let output = run_to_exit(name, &["--max-timeouts", "many"]);
        assert_eq!(output.status.code(), Some(2), "{name}");
    }
}

#[tokio::test]
async fn login_server_speaks_its_protocol() {
    for mode in [&[][..], &["--unprotected"][..]] {
        let server = Example::start("login_server", mode).await;
        let mut client = LineClient::connect(server.addr).await;
        assert_eq!(
            client.ask("ECHO early").await.as_deref(),
            Some("ERROR not logged in")
        );
        assert_eq!(
            client.ask("HELLO").await.as_deref(),
            Some("ERROR unknown command")
        );
        assert_eq!(
            client.ask("LOGIN alice secret").await.as_deref(),
            Some("OK")
        );
        assert_eq!(
            client.ask("ECHO hi there").await.as_deref(),
            Some("hi there")
        );
        client.send("QUIT").await;
        assert_eq!(client.line().await, None);

        let mut client = LineClient::connect(server.addr).await;
        assert_eq!(
            client.ask(&"x".repeat(1024)).await.as_deref(),
            Some("ERROR unknown command")
        );
        assert_eq!(
            client.ask(&"x".repeat(1025)).await.as_deref(),
            Some("ERROR line too long")
        );
        assert_eq!(client.line().await, None);
        server.stop().await;
    }
}

#[tokio::test]
async fn login_server_closes_after_a_failed_login_only_when_protected() {
    let protected = Example::start("login_server", &[]).await;
    let mut client = LineClient::connect(protected.addr).await;
    assert_eq!(
        client.ask("LOGIN alice wrong").await.as_deref(),
        Some("DENIED")
    );
    assert_eq!(client.line().await, None, "closed right after DENIED");
    protected.stop().await;

    let unprotected = Example::start("login_server", &["--unprotected"]).await;
    let mut client = LineClient::connect(unprotected.addr).await;
    assert_eq!(
        client.ask("LOGIN alice wrong").await.as_deref(),
        Some("DENIED")
    );
    assert_eq!(
        client.ask("LOGIN alice secret").await.as_deref(),
        Some("OK")
    );
    unprotected.stop().await;
}

/// As the contract says, a `401` is a failed login in protected mode, credentials or
/// not (the crate's default counts only requests with credentials): the connection is
/// closed once it is sent, though keep-alive was asked for.
#[tokio::test]
async fn axum_server_closes_after_any_401_when_protected() {
    let server = Example::start("axum_server", &[]).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within(PATIENCE, stream.read_to_string(&mut response))
        .await
        .unwrap();
    let response = response.to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 401"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn axum_server_answers_its_routes() {
    for mode in [&[][..], &["--unprotected"][..]] {
        let server = Example::start("axum_server", mode).await;
        let ask = |request: &'static str| async move {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            within(PATIENCE, stream.read_to_string(&mut response))
                .await
                .unwrap();
            response.to_ascii_lowercase()
        };
        let hello = ask("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(
            hello.starts_with("http/1.1 200") && hello.ends_with("\r\n\r\nhello\n"),
            "{hello}"
        );

        let denied = ask("GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(denied.starts_with("http/1.1 401"), "{denied}");
        assert!(
            denied.contains("www-authenticate: basic realm=\"demo\""),
            "{denied}"
        );

        // alice:secret, the scheme's name in any case.
        for login in [
            "GET /login HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\nConnection: close\r\n\r\n",
            "GET /login HTTP/1.1\r\nHost: x\r\nAuthorization: basic YWxpY2U6c2VjcmV0\r\nConnection: close\r\n\r\n",
            "GET /login HTTP/1.1\r\nHost: x\r\nAuthorization: BASIC YWxpY2U6c2VjcmV0\r\nConnection: close\r\n\r\n",
        ] {
            let welcome = ask(login).await;
            assert!(
                welcome.ends_with("\r\n\r\nwelcome alice\n"),
                "{login}: {welcome}"
            );
        }

        let slow = ask("GET /slow?ms=20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(slow.starts_with("http/1.1 200"), "{slow}");
        // `ms` among other parameters, after or before them.
        let began = std::time::Instant::now();
        let slow =
            ask("GET /slow?x=1&ms=300 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(slow.starts_with("http/1.1 200"), "{slow}");
        assert!(
            began.elapsed() >= std::time::Duration::from_millis(300),
            "ms=300 not waited"
        );
        let slow =
            ask("GET /slow?ms=20&x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(slow.starts_with("http/1.1 200"), "{slow}");
        let bad = ask("GET /slow?ms=soon HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(bad.starts_with("http/1.1 400"), "{bad}");

        let ip = ask("GET /ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(ip.ends_with("\r\n\r\n127.0.0.1\n"), "{ip}");
        server.stop().await;
    }
}

#[tokio::test]
async fn tonic_server_checks_health_only_with_the_token() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    for mode in [&[][..], &["--unprotected"][..]] {
        let server = Example::start("tonic_server", mode).await;
        let connect = || async {
            let channel = grpc_channel(server.addr).await;
            HealthClient::new(channel)
        };

        let status = within(
            PATIENCE,
            connect().await.check(HealthCheckRequest::default()),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);

        // Protected, a failed login ends its connection: the next call comes on a new one.
        let mut client = connect().await;
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request
            .metadata_mut()
            .insert("authorization", "Bearer secret".parse().unwrap());
        let response = within(PATIENCE, client.check(request)).await.unwrap();
        assert_eq!(response.into_inner().status, 1, "SERVING");
        server.stop().await;
    }
}

#[tokio::test]
async fn login_server_applies_the_admission_flags() {
    // --max-per-peer: a second connection from one peer is refused, another peer is not.
    let server = Example::start("login_server", &["--max-per-peer", "1"]).await;
    let mut first = LineClient::connect_from(2, server.addr).await;
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    let mut second = LineClient::connect_from(2, server.addr).await;
    assert_eq!(second.line().await.as_deref(), Some("ERROR busy"));
    assert_eq!(second.line().await, None);
    let mut other = LineClient::connect_from(3, server.addr).await;
    assert_eq!(other.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    server.stop().await;

    // --exempt lifts it for the exempt network.
    let server = Example::start(
        "login_server",
        &["--max-per-peer", "1", "--exempt", "127.0.0.0/24"],
    )
    .await;
    let mut first = LineClient::connect_from(2, server.addr).await;
    let mut second = LineClient::connect_from(2, server.addr).await;
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    assert_eq!(
        second.ask("LOGIN alice secret").await.as_deref(),
        Some("OK")
    );
    server.stop().await;

    // --max-connections: at it, a new connection makes an idle one close...
    let server = Example::start("login_server", &["--max-connections", "1"]).await;
    let mut first = LineClient::connect_from(2, server.addr).await;
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    let mut second = LineClient::connect_from(3, server.addr).await;
    assert_eq!(
        second.ask("LOGIN alice secret").await.as_deref(),
        Some("OK")
    );
    assert_eq!(first.line().await, None);
    // ...but not one in the middle of a request: over it then, refused.
    second.io.get_mut().write_all(b"ECHO hal").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut third = LineClient::connect_from(4, server.addr).await;
    assert_eq!(third.line().await.as_deref(), Some("ERROR busy"));
    assert_eq!(second.ask("f").await.as_deref(), Some("half"));
    server.stop().await;

    // --backpressure: over it, the connection waits and is served once there is room.
    let server = Example::start(
        "login_server",
        &["--max-connections", "1", "--backpressure"],
    )
    .await;
    let mut first = LineClient::connect_from(2, server.addr).await;
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    let mut waiting = LineClient::connect_from(3, server.addr).await;
    waiting.send("LOGIN alice secret").await;
    first.send("QUIT").await;
    assert_eq!(waiting.line().await.as_deref(), Some("OK"));
    server.stop().await;

    // --rate and --burst: one new connection a second per peer.
    let server = Example::start("login_server", &["--rate", "1", "--burst", "1"]).await;
    let mut first = LineClient::connect_from(2, server.addr).await;
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    let mut second = LineClient::connect_from(2, server.addr).await;
    assert_eq!(second.line().await.as_deref(), Some("ERROR busy"));
    let mut other = LineClient::connect_from(3, server.addr).await;
    assert_eq!(other.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    server.stop().await;

    // --global-rate: one new connection a second, whoever opens it.
    let server = Example::start("login_server", &["--global-rate", "1"]).await;
    let mut first = LineClient::connect_from(2, server.addr).await;
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    let mut second = LineClient::connect_from(3, server.addr).await;
    assert_eq!(second.line().await.as_deref(), Some("ERROR busy"));
    server.stop().await;
}

#[tokio::test]
async fn axum_server_refuses_over_its_limits_with_http_status_lines() {
    let server = Example::start("axum_server", &["--max-per-peer", "1", "--rate", "100"]).await;
    let _held = connect_from(2, server.addr).await;
    let mut refused = connect_from(2, server.addr).await;
    let response = refusal_to_a_request(&mut refused).await;
    assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
    server.stop().await;

    let server = Example::start("axum_server", &["--rate", "1"]).await;
    let _first = connect_from(2, server.addr).await;
    let mut refused = connect_from(2, server.addr).await;
    let response = refusal_to_a_request(&mut refused).await;
    assert!(response.starts_with("HTTP/1.1 429 "), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_byte_timeout() {
    for name in ["axum_server", "tonic_server", "login_server"] {
        let server = Example::start(name, &["--first-byte-timeout", "0.3"]).await;
        let mut silent = connect_from(2, server.addr).await;
        let waited = closed_after(&mut silent).await;
        assert!(
            waited >= std::time::Duration::from_millis(250),
            "{name}: {waited:?}"
        );
        server.stop().await;
    }

    // The baseline: plain axum::serve keeps it open.
    let server = Example::start("axum_server", &["--unprotected"]).await;
    let mut silent = connect_from(2, server.addr).await;
    let mut byte = [0u8; 1];
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(1), silent.read(&mut byte)).await;
    assert!(read.is_err(), "still open after a second: {read:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_slowloris_request_head_is_cut_at_the_request_timeout() {
    let server = Example::start(
        "axum_server",
        &["--request-timeout", "1", "--idle-timeout", "30"],
    )
    .await;
    let mut slow = connect_from(2, server.addr).await;
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let began = std::time::Instant::now();
    let trickle = async {
        // One header byte every 200 ms: never idle, never done.
        for byte in b"X-Slow: abcdefghijklmnopqrstuvwxyz"
            .iter()
            .cycle()
            .take(200)
        {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
    };
    within(PATIENCE, trickle).await;
    let waited = began.elapsed() + closed_after(&mut slow).await;
    assert!(
        waited >= std::time::Duration::from_millis(900)
            && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    server.stop().await;
}

/// EXAMPLES.md: `--request-timeout S` holds a request to S once its first byte has
/// arrived, however fast its bytes come. The preset extends a request by a second per
/// 500 bytes it brings (Apache's `MinRate`); the examples turn that off, so a head sent
/// at 2 KB/s that never ends is still cut at S, not minutes later.
#[tokio::test]
async fn a_request_head_that_keeps_coming_is_still_cut_at_the_request_timeout() {
    let server = Example::start(
        "axum_server",
        &["--request-timeout", "1", "--idle-timeout", "30"],
    )
    .await;
    let mut fast = connect_from(2, server.addr).await;
    fast.write_all(b"GET / HTTP/1.1\r\nX-Long: ").await.unwrap();
    let began = std::time::Instant::now();
    let sending = async {
        // 100 bytes every 50 ms, for at most 6 s: one header value that never ends.
        for _ in 0..120 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if fast.write_all(&[b'a'; 100]).await.is_err() {
                break;
            }
        }
    };
    within(PATIENCE, sending).await;
    let waited = began.elapsed() + closed_after(&mut fast).await;
    assert!(
        waited >= std::time::Duration::from_millis(900)
            && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_http2_connection_that_never_finishes_its_preface_is_closed() {
    let server = Example::start(
        "axum_server",
        &["--request-timeout", "1", "--idle-timeout", "30"],
    )
    .await;
    let mut stalled = connect_from(2, server.addr).await;
    stalled.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let waited = closed_after(&mut stalled).await;
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "{waited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn login_server_applies_the_timeout_flags() {
    // --request-timeout: a line that never ends.
    let server = Example::start("login_server", &["--request-timeout", "0.5"]).await;
    let mut client = LineClient::connect_from(2, server.addr).await;
    client.io.get_mut().write_all(b"LOGIN ali").await.unwrap();
    assert_eq!(client.line().await, None);
    // Lines that end in time are fine, however long the connection lasts.
    let mut client = LineClient::connect_from(3, server.addr).await;
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(
            client.ask("LOGIN alice secret").await.as_deref(),
            Some("OK")
        );
    }
    server.stop().await;

    // --idle-timeout: logged in, then silent.
    let server = Example::start("login_server", &["--idle-timeout", "0.5"]).await;
    let mut client = LineClient::connect_from(2, server.addr).await;
    assert_eq!(
        client.ask("LOGIN alice secret").await.as_deref(),
        Some("OK")
    );
    assert_eq!(client.line().await, None);
    server.stop().await;

    // --max-lifetime: asked to close, and the session ends cleanly.
    let server = Example::start("login_server", &["--max-lifetime", "0.5"]).await;
    let mut client = LineClient::connect_from(2, server.addr).await;
    assert_eq!(
        client.ask("LOGIN alice secret").await.as_deref(),
        Some("OK")
    );
    assert_eq!(client.line().await, None);
    server.stop().await;
}

#[tokio::test]
async fn a_banned_peer_that_keeps_reconnecting_is_dropped_in_the_kernel_unless_told_not_to() {
    let kernel = cfg!(all(feature = "kernel-bans", target_os = "linux"));
    for (flags, filtered) in [(&[][..], kernel), (&["--no-kernel-bans"][..], false)] {
        let args = [&["--max-failures", "1"][..], flags].concat();
        let server = Example::start("login_server", &args).await;
        let mut client = LineClient::connect_from(2, server.addr).await;
        assert_eq!(
            client.ask("LOGIN alice wrong").await.as_deref(),
            Some("DENIED")
        );
        assert_eq!(client.line().await, None);
        // Its first ten refusals are answered.
        for _ in 0..10 {
            let mut banned = LineClient::connect_from(2, server.addr).await;
            assert_eq!(banned.line().await.as_deref(), Some("ERROR banned"));
        }
        // Then its SYNs are dropped, once the filter is rebuilt: a connection that
        // still gets through is refused as before, until one cannot connect at all or,
        // caught mid-handshake by the rebuild, is never answered.
        let dropped = within(PATIENCE, async {
            for _ in 0..20 {
                let connecting = connect_from(2, server.addr);
                let Ok(stream) =
                    tokio::time::timeout(std::time::Duration::from_millis(300), connecting).await
                else {
                    return true;
                };
                let mut banned = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                let read = banned.read_line(&mut line);
                if tokio::time::timeout(REFUSAL_OR_DROPPED, read)
                    .await
                    .is_err()
                {
                    return true;
                }
                assert_eq!(line, "ERROR banned\n");
            }
            false
        })
        .await;
        assert_eq!(dropped, filtered, "{flags:?}");
        let mut other = LineClient::connect_from(3, server.addr).await;
        assert_eq!(other.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
        server.stop().await;
    }
}

#[tokio::test]
async fn login_server_applies_the_login_flags() {
    // --max-auth-tries: two tries on one connection, then closed.
    let server = Example::start("login_server", &["--max-auth-tries", "2"]).await;
    let mut client = LineClient::connect_from(2, server.addr).await;
    assert_eq!(
        client.ask("LOGIN alice wrong").await.as_deref(),
        Some("DENIED")
    );
    assert_eq!(
        client.ask("LOGIN alice wrong").await.as_deref(),
        Some("DENIED")
    );
    assert_eq!(client.line().await, None);
    server.stop().await;

    // --max-failures and --ban: two failures ban the peer for half a second.
    let server = Example::start("login_server", &["--max-failures", "2", "--ban", "0.5"]).await;
    for _ in 0..2 {
        let mut client = LineClient::connect_from(2, server.addr).await;
        assert_eq!(
            client.ask("LOGIN alice wrong").await.as_deref(),
            Some("DENIED")
        );
        // The server records the failure, then closes: after the close it is counted.
        assert_eq!(client.line().await, None);
    }
    let mut banned = LineClient::connect_from(2, server.addr).await;
    assert_eq!(banned.line().await.as_deref(), Some("ERROR banned"));
    let mut other = LineClient::connect_from(3, server.addr).await;
    assert_eq!(other.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let mut back = LineClient::connect_from(2, server.addr).await;
    assert_eq!(back.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    server.stop().await;

    // --exempt: never banned.
    let server = Example::start(
        "login_server",
        &["--max-failures", "1", "--exempt", "127.0.0.2/32"],
    )
    .await;
    for _ in 0..3 {
        let mut client = LineClient::connect_from(2, server.addr).await;
        assert_eq!(
            client.ask("LOGIN alice wrong").await.as_deref(),
            Some("DENIED")
        );
    }
    server.stop().await;

    // --login-timeout: connected, never logged in.
    let server = Example::start("login_server", &["--login-timeout", "0.5"]).await;
    let mut client = LineClient::connect_from(2, server.addr).await;
    client.send("ECHO hello?").await;
    assert_eq!(client.line().await.as_deref(), Some("ERROR not logged in"));
    assert_eq!(client.line().await, None);
    server.stop().await;
}

#[tokio::test]
async fn bench_servers_accept_and_close_and_stop_cleanly() {
    for mode in ["bare", "protected"] {
        let server = Example::start("bench_server", &["--mode", mode]).await;
        for _ in 0..3 {
            let mut stream = within(PATIENCE, TcpStream::connect(server.addr))
                .await
                .unwrap();
            let waited = closed_after(&mut stream).await;
            assert!(waited < PATIENCE, "{mode}: {waited:?}");
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn an_exempt_network_in_its_mapped_form_exempts_ipv4_peers_of_a_dual_stack_listener() {
    // On `[::]`, an IPv4 peer shows as `::ffff:127.0.0.2`; the operator writes the
    // network as it shows. The listener takes any interface; the clients are loopback.
    let server = Example::start(
        "login_server",
        &[
            "--addr",
            "[::]:0",
            "--max-per-peer",
            "1",
            "--exempt",
            "::ffff:127.0.0.0/104",
        ],
    )
    .await;
    let ipv4 = std::net::SocketAddr::from(([127, 0, 0, 1], server.addr.port()));
    let mut first = LineClient::connect_from(2, ipv4).await;
    let mut second = LineClient::connect_from(2, ipv4).await;
    assert_eq!(first.ask("LOGIN alice secret").await.as_deref(), Some("OK"));
    assert_eq!(
        second.ask("LOGIN alice secret").await.as_deref(),
        Some("OK")
    );
    server.stop().await;
}

/// The examples' drain deadline on SIGINT or SIGTERM, protected or not.
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects to `server`, is answered, then goes silent, its connection left open: on
/// HTTP/2 (both HTTP servers take it), the connection preface but not the settings
/// that must follow it, once the server has sent its own.
async fn a_silent_client(name: &str, server: &Example) -> TcpStream {
    let (request, answer): (&[u8], &[u8]) = match name {
        "login_server" => (b"LOGIN alice secret\n", b"OK\n"),
        // The type, flags and stream of a SETTINGS frame.
        _ => (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x04\0\0\0\0\0"),
    };
    let mut stream = connect_from(2, server.addr).await;
    stream.write_all(request).await.unwrap();
    assert!(
        answered(&mut stream, answer).await,
        "{name}: closed before it answered"
    );
    stream
}

/// Reads from `stream` until `answer` has come: false if it closes first.
async fn answered(stream: &mut TcpStream, answer: &[u8]) -> bool {
    let mut read = Vec::new();
    while !read.windows(answer.len()).any(|window| window == answer) {
        let mut buf = [0u8; 256];
        match within(PATIENCE, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return false,
            Ok(received) => read.extend_from_slice(&buf[..received]),
        }
    }
    true
}

#[tokio::test]
async fn every_example_exits_cleanly_on_sigterm_by_its_drain_deadline_with_a_silent_client() {
    let stop = |name: &'static str, mode: &'static [&'static str]| async move {
        let server = Example::start(name, mode).await;
        let _silent = a_silent_client(name, &server).await;
        server.stop_within(DRAIN_DEADLINE + PATIENCE).await;
    };
    // All at once: an HTTP server waits out its whole deadline for the silent client.
    let mut stops = Vec::new();
    for name in EXAMPLES {
        for mode in [&[][..], &["--unprotected"][..]] {
            stops.push(stop(name, mode));
        }
    }
    futures_util::future::join_all(stops).await;
}

#[tokio::test]
async fn ip_names_an_ipv4_client_of_a_dual_stack_listener_as_ipv4() {
    for mode in [&[][..], &["--unprotected"][..]] {
        let server =
            Example::start("axum_server", &[&["--addr", "[::]:0"][..], mode].concat()).await;
        let ipv4 = std::net::SocketAddr::from(([127, 0, 0, 1], server.addr.port()));
        let mut stream = within(PATIENCE, TcpStream::connect(ipv4)).await.unwrap();
        stream
            .write_all(b"GET /ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        within(PATIENCE, stream.read_to_string(&mut response))
            .await
            .unwrap();
        assert!(
            response.ends_with("\r\n\r\n127.0.0.1\n"),
            "{mode:?}: {response:?}"
        );
        server.stop().await;
    }
}

/// Whether the connection of [`a_silent_client`] is still served: an echo, or on
/// HTTP/2 the acknowledgement of the settings it had held back.
async fn still_served(name: &str, client: &mut TcpStream) -> bool {
    let (request, answer): (&[u8], &[u8]) = match name {
        "login_server" => (b"ECHO still here\n", b"still here\n"),
        _ => (b"\0\0\0\x04\0\0\0\0\0", b"\0\0\0\x04\x01\0\0\0\0"),
    };
    client.write_all(request).await.is_ok() && answered(client, answer).await
}

#[tokio::test]
async fn a_sighup_neither_stops_an_example_nor_drops_its_connections_even_unprotected() {
    for name in EXAMPLES {
        for mode in [&[][..], &["--unprotected"][..]] {
            let server = Example::start(name, mode).await;
            let mut live = a_silent_client(name, &server).await;
            let hangup = Command::new("kill")
                .args(["-HUP", &server.pid().to_string()])
                .status()
                .unwrap();
            assert!(hangup.success());
            assert!(
                still_served(name, &mut live).await,
                "{name} {mode:?}: dropped by SIGHUP"
            );
            drop(live);
            server.stop().await;
        }
    }
}

/// EXAMPLES.md: `--request-timeout S` closes a connection whose request (login_server:
/// one line), once its first byte has arrived, is not complete within S. A line whose
/// first bytes came in the same read as the line before it waits in the protocol's
/// buffer: the timer was told the earlier line was finished after those bytes were
/// read, and starts the next request only at the next byte read, which never comes. The
/// half line is then held to the idle timeout (a minute by default, and no offence)
/// instead of the request timeout.
#[tokio::test]
async fn login_server_times_a_half_line_sent_behind_a_whole_one() {
    let server = Example::start(
        "login_server",
        &["--request-timeout", "0.5", "--idle-timeout", "60"],
    )
    .await;
    let mut client = LineClient::connect_from(2, server.addr).await;
    // One write: a whole line, then the start of the next.
    client
        .io
        .get_mut()
        .write_all(b"LOGIN alice secret\nECHO hal")
        .await
        .unwrap();
    assert_eq!(client.line().await.as_deref(), Some("OK"));
    let mut rest = String::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.io.read_line(&mut rest),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "half a line still open 5 s after it arrived, under a 0.5 s request timeout: {closed:?}"
    );
    server.stop().await;
}
