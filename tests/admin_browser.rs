//! The admin page in a real browser: headless Chromium, driven through chromedriver,
//! sees the ban a real login flood caused, lifts it, and the peer gets in again.
//!
//! Every socket is on loopback: the login server and the admin page on 127.0.0.1, the
//! attacker on 127.0.0.2, chromedriver on a free port. Chromium and chromedriver come
//! from the Debian packages `chromium` and `chromium-driver`, installed here when
//! missing and the test runs as root; otherwise the test fails saying so.
#![cfg(feature = "admin")]

mod support;

use std::{
    future::IntoFuture,
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    process::{Child, Command, Stdio},
    task::{Context, Poll},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tower::{Service, ServiceBuilder};
use tower_bouncer::{
    Conn,
    admin::Admin,
    limit::ConnectionLimitLayer,
    login::{AfterFailure, Login},
    serve::Server,
};

use support::*;

const TOKEN: &str = "browser-test-admin-token";
/// The whole test, browser start included.
const WHOLE_TEST: Duration = Duration::from_secs(180);
/// Each step the browser takes: a page load, a refresh of the tables.
const STEP: Duration = Duration::from_secs(30);

/// `command -v NAME`.
fn find(name: &str) -> Option<PathBuf> {
    let output = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8(output.stdout).ok()?;
    let path = path.trim();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Chromium and chromedriver, installed from Debian's packages if missing and root.
fn chromium_and_driver() -> (PathBuf, PathBuf) {
    if let (Some(chromium), Some(driver)) = (find("chromium"), find("chromedriver")) {
        return (chromium, driver);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
    assert!(
        root,
        "chromium and chromedriver are missing and this test is not root to install \
         them: run `apt-get install chromium chromium-driver` (as .ci/run does)"
    );
    eprintln!("installing chromium and chromium-driver (apt-get)");
    let installed = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -qq chromium chromium-driver",
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    match (installed, find("chromium"), find("chromedriver")) {
        (true, Some(chromium), Some(driver)) => (chromium, driver),
        _ => panic!(
            "could not install chromium and chromium-driver with apt-get: the browser test \
             needs them"
        ),
    }
}

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts chromedriver, on a fresh port each time it fails to (killing the one that
    /// failed as it is dropped): a port found free on 127.0.0.1 may be taken, there or on
    /// [::1], before chromedriver binds both, and chromedriver then exits at once.
    async fn start(path: &PathBuf) -> Self {
        let mut failures = Vec::new();
        // 4 ports, 5 s each: the 20 s a single start was given.
        for _ in 0..4 {
            let mut driver = Self::spawn(path);
            match driver.listen_within(Duration::from_secs(5)).await {
                Ok(()) => return driver,
                Err(why) => failures.push(format!("port {}: {why}", driver.port)),
            }
        }
        panic!(
            "chromedriver did not start; {}; where it exited, its stderr, above, says why",
            failures.join("; ")
        );
    }

    fn spawn(path: &PathBuf) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        // No `--allowed-ips`: with it chromedriver binds [::], which fails while any
        // address has a socket on the port, such as the TIME_WAIT of a client bound to
        // 127.0.0.x; without it, it binds only 127.0.0.1 and [::1].
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chromedriver starts");
        Self { child, port }
    }

    /// Waits up to `limit` for chromedriver to accept connections, tried every 50 ms,
    /// giving up as soon as it exits; why it did not.
    async fn listen_within(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let refused = match TcpStream::connect(("127.0.0.1", self.port)).await {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            if let Some(status) = self.child.try_wait().expect("chromedriver's status") {
                return Err(format!("it exited, {status}"));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no connection within {limit:?}: {refused}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A tiny line protocol: `LOGIN user password` answers `OK` (`alice`/`secret`) or
/// `DENIED`, a failure closing the connection; `ECHO text` answers `text` once logged
/// in.
#[derive(Clone, Copy)]
struct LineLogin;

impl Service<Conn<TcpStream>> for LineLogin {
    type Response = ();
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, conn: Conn<TcpStream>) -> Self::Future {
        let session = conn.login_session().cloned();
        Box::pin(async move {
            let session = session.expect("under the session layer");
            let mut io = BufReader::new(conn.into_io()).take(64 * 1024);
            let mut line = String::new();
            // A bounded number of lines per connection.
            for _ in 0..100 {
                line.clear();
                if io.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                let reply = match line.trim().split_once(' ') {
                    Some(("LOGIN", "alice secret")) => {
                        session.succeeded();
                        "OK".to_owned()
                    }
                    Some(("LOGIN", _)) => {
                        io.get_mut().get_mut().write_all(b"DENIED\n").await?;
                        if session.failed() == AfterFailure::Closing {
                            return Ok(());
                        }
                        continue;
                    }
                    Some(("ECHO", text)) if session.is_authenticated() => text.to_owned(),
                    _ => "ERROR".to_owned(),
                };
                io.get_mut()
                    .get_mut()
                    .write_all(format!("{reply}\n").as_bytes())
                    .await?;
            }
            Ok(())
        })
    }
}

/// Sends `line` from a new connection from 127.0.0.`last`; the first line answered, or
/// what the server said before closing.
async fn ask_from(last: u8, server: SocketAddr, line: &str) -> String {
    let mut stream = within(PATIENCE, connect_from(last, server)).await;
    // A refused connection may be closed before the line is written.
    stream.write_all(format!("{line}\n").as_bytes()).await.ok();
    let mut answer = String::new();
    within(PATIENCE, BufReader::new(stream).read_line(&mut answer))
        .await
        .ok();
    answer.trim_end().to_owned()
}

/// The ban table's rows, each as its target and its text, read in one go (the page
/// redraws the table on each refresh, so elements found one by one may go stale).
async fn ban_rows(browser: &Client) -> Vec<(String, String)> {
    let rows = browser
        .execute(
            "return Array.from(document.querySelectorAll('#bans tbody tr'))\
               .map((row) => [row.dataset.target, row.textContent]);",
            Vec::new(),
        )
        .await
        .expect("the ban table");
    serde_json::from_value(rows).expect("rows of two strings")
}

/// Waits, up to a step, for the targets in the ban table to be `expected`.
async fn ban_rows_become(browser: &Client, expected: &[&str]) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    // Every 100 ms; the page refreshes every 2 s and after each action.
    for _ in 0..(STEP.as_millis() / 100) {
        rows = ban_rows(browser).await;
        if rows
            .iter()
            .map(|(target, _)| target.as_str())
            .eq(expected.iter().copied())
        {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ban table shows {rows:?}, not {expected:?}");
}

/// Clicks the element `css` finds, finding it again if the page redrew it meanwhile.
async fn click(browser: &Client, css: &str) -> Result<(), fantoccini::error::CmdError> {
    let mut tries = 0;
    loop {
        let clicked = async { browser.find(Locator::Css(css)).await?.click().await }.await;
        match clicked {
            Err(error) if error.is_stale_element_reference() && tries < 20 => tries += 1,
            clicked => return clicked,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_flood_ban_and_lifts_it_in_a_real_browser() {
    let (chromium, driver_path) = chromium_and_driver();
    tokio::time::timeout(WHOLE_TEST, run(chromium, driver_path))
        .await
        .expect("the browser test finished in time");
}

async fn run(chromium: PathBuf, driver_path: PathBuf) {
    // The protected login server: 3 failed logins ban a peer.
    let login = Login::builder()
        .max_failures(3)
        .ban_message(&b"ERROR banned\n"[..])
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let cap = ConnectionLimitLayer::builder(100).build().unwrap();
    let service = ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(cap.clone())
        .layer(login.session_layer())
        .service(LineLogin);
    let server = tokio::spawn(
        Server::new(listener)
            .with_graceful_shutdown(async {
                server_stopped.await.ok();
            })
            .serve(service),
    );

    // The admin page, on another loopback port.
    let admin = Admin::builder()
        .token(TOKEN)
        .login(&login)
        .connection_limit(&cap)
        .build()
        .unwrap()
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin_addr = admin.local_addr();
    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
    let admin = tokio::spawn(
        admin
            .with_graceful_shutdown(async {
                admin_stopped.await.ok();
            })
            .into_future(),
    );

    // A real login flood from 127.0.0.2: bad passwords over TCP until it is banned.
    assert_eq!(ask_from(2, server_addr, "LOGIN alice secret").await, "OK");
    for _ in 0..3 {
        assert_eq!(
            ask_from(2, server_addr, "LOGIN alice guess").await,
            "DENIED"
        );
    }
    // The last failure is counted once its reply is sent, as the client reads it.
    within(PATIENCE, async {
        while login
            .bans()
            .banned_for("127.0.0.2".parse().unwrap())
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        ask_from(2, server_addr, "LOGIN alice secret").await,
        "ERROR banned"
    );
    assert!(
        login
            .bans()
            .banned_for("127.0.0.2".parse().unwrap())
            .is_some()
    );

    let driver = Driver::start(&driver_path).await;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1280,1000",
            ],
        }),
    );
    let browser = within(
        STEP * 2,
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port)),
    )
    .await
    .expect("a browser session");

    let outcome = browse(&browser, admin_addr, &login, server_addr).await;
    browser.close().await.ok();
    drop(driver);
    stop_server.send(()).ok();
    stop_admin.send(()).ok();
    within(PATIENCE, server).await.unwrap().unwrap();
    within(PATIENCE, admin).await.unwrap().unwrap();
    outcome.unwrap();
}

/// What the operator does in the browser.
async fn browse(
    browser: &Client,
    admin: SocketAddr,
    login: &Login,
    server: SocketAddr,
) -> Result<(), fantoccini::error::CmdError> {
    within(STEP, browser.goto(&format!("http://{admin}/"))).await?;
    // The page asks for the token before it shows anything.
    let dashboard = browser.find(Locator::Id("dashboard")).await?;
    assert_eq!(dashboard.attr("hidden").await?.as_deref(), Some("true"));
    within(STEP, browser.find(Locator::Id("token")))
        .await?
        .send_keys(TOKEN)
        .await?;
    browser
        .find(Locator::Id("token-submit"))
        .await?
        .click()
        .await?;

    // The flood's ban is in the table.
    ban_rows_become(browser, &["127.0.0.2/32"]).await;
    let banned = browser
        .find(Locator::Id("fig-banned"))
        .await?
        .text()
        .await?;
    assert_eq!(banned, "1");

    // A ban made with the form shows its reason.
    browser
        .find(Locator::Id("ban-target"))
        .await?
        .send_keys("127.0.0.3")
        .await?;
    browser
        .find(Locator::Id("ban-reason"))
        .await?
        .send_keys("seen scanning")
        .await?;
    browser
        .find(Locator::Id("ban-submit"))
        .await?
        .click()
        .await?;
    let rows = ban_rows_become(browser, &["127.0.0.2/32", "127.0.0.3/32"]).await;
    assert!(rows[1].1.contains("seen scanning"), "{rows:?}");
    assert!(
        login
            .bans()
            .banned_for("127.0.0.3".parse().unwrap())
            .is_some()
    );

    // Unban the flood's peer: it gets in again.
    click(browser, r#"button.unban[data-target="127.0.0.2/32"]"#).await?;
    ban_rows_become(browser, &["127.0.0.3/32"]).await;
    assert!(
        login
            .bans()
            .banned_for("127.0.0.2".parse().unwrap())
            .is_none()
    );
    assert_eq!(ask_from(2, server, "LOGIN alice secret").await, "OK");
    assert_eq!(
        ask_from(3, server, "LOGIN alice secret").await,
        "ERROR banned"
    );

    // The chart draws the live connections sampled each second.
    within(
        STEP,
        browser
            .wait()
            .at_most(STEP)
            .for_element(Locator::Css("#chart polyline.live")),
    )
    .await?;
    Ok(())
}
