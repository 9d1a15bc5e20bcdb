//! Failed logins over HTTP/2: requests multiplexed on one connection get no more
//! password checks than the connection has tries.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::DuplexStream;
use tower::{ServiceBuilder, ServiceExt};
use tower_bouncer::{
    http::ConnExtensions,
    login::{ClassifyLogin, Login, LoginOutcome, StatusClassifier},
};

use support::{
    reporter::{Boxed, Reporter},
    *,
};

const BAD_CREDENTIALS: &str = "Basic YWxpY2U6d3Jvbmc="; // alice:wrong

/// An application whose `/login` counts the password checks it makes and fails them
/// all, after a little work; `/welcome` logs in.
fn app(checks: Arc<AtomicUsize>) -> Router {
    let watch_checks = checks.clone();
    Router::new()
        .route(
            "/login",
            get(move || {
                let checks = checks.clone();
                async move {
                    checks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
        .route(
            "/welcome",
            get(|conn: ConnExtensions| async move {
                conn.login_session().unwrap().succeeded();
                "welcome\n"
            }),
        )
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/watch",
            get(move || {
                let checks = watch_checks.clone();
                async move {
                    checks.fetch_add(1, Ordering::SeqCst);
                    // gRPC's `UNAUTHENTICATED` in the trailers, after the `200` and its
                    // headers: a stream that checks its caller's credentials itself.
                    let trailers = futures_util::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
                        Ok::<_, std::convert::Infallible>(Frame::trailers(trailers))
                    });
                    axum::body::Body::new(StreamBody::new(trailers))
                }
            }),
        )
        .route(
            "/events",
            get(|| async {
                // A healthy stream: data at once, then more, for as long as it lives.
                let events = futures_util::stream::once(async {
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"event\n")))
                })
                .chain(futures_util::stream::pending());
                axum::body::Body::new(StreamBody::new(events))
            }),
        )
        .route(
            "/account",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                "balance: 0\n"
            }),
        )
}

/// One HTTP/2 connection to `login`'s layers over `app`, on an in-memory stream,
/// `reporter` reporting its logins.
async fn h2_connection(
    login: &Login,
    checks: Arc<AtomicUsize>,
    reporter: Reporter,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    h2_connection_to(
        login,
        reporter.http(app(checks), StatusClassifier::default()),
    )
    .await
}

/// One HTTP/2 connection to `login`'s layers over `http`, on an in-memory stream.
async fn h2_connection_to(
    login: &Login,
    http: Boxed<DuplexStream>,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let service = ServiceBuilder::new()
        .layer(login.ban_layer())
        .layer(login.session_layer())
        .service(http);
    let (conn, client) = duplex_conn("192.0.2.1:1");
    tokio::spawn(service.oneshot(conn));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// A login form's classifier: a request to `/login` is a login attempt whatever it
/// carries (a form's credentials travel in its body), as `is_attempt` lets a service
/// say; otherwise the defaults.
#[derive(Debug, Clone, Copy)]
struct LoginFormByPath;

impl ClassifyLogin for LoginFormByPath {
    fn classify_response(
        &self,
        status: StatusCode,
        headers: &http::HeaderMap,
    ) -> Option<LoginOutcome> {
        StatusClassifier::default().classify_response(status, headers)
    }

    fn is_attempt(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> bool {
        uri.path() == "/login" || StatusClassifier::default().is_attempt(method, uri, headers)
    }
}

/// A login whose connections have `tries` each, and whose peers are never banned.
fn with_tries(tries: u32) -> Login {
    Login::builder()
        .max_auth_tries(tries)
        .max_failures(10_000)
        .build()
        .unwrap()
}

/// `n` requests with bad credentials.
fn bad_logins(n: usize) -> Vec<http::Request<Empty<Bytes>>> {
    (0..n)
        .map(|_| request("/login", Some(BAD_CREDENTIALS)))
        .collect()
}

fn request(path: &str, authorization: Option<&str>) -> http::Request<Empty<Bytes>> {
    let mut request = http::Request::get(format!("http://localhost{path}"));
    if let Some(value) = authorization {
        request = request.header(http::header::AUTHORIZATION, value);
    }
    request.body(Empty::new()).unwrap()
}

/// Sends `requests` at once on one connection; returns each answer's status, or `None`
/// for a request the server reset or never answered.
async fn send_all(
    sender: &hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    requests: Vec<http::Request<Empty<Bytes>>>,
) -> Vec<Option<StatusCode>> {
    let calls: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let response = sender.send_request(request).await.ok()?;
                let status = response.status();
                response.into_body().collect().await.ok()?;
                Some(status)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(within(PATIENCE, call).await.unwrap());
    }
    statuses
}

/// Sends `sent` bad logins at once on one HTTP/2 connection with `tries`, and checks
/// that they got `tries` password checks and failed logins; returns the answers.
async fn bad_logins_on_one_connection(
    tries: u32,
    sent: usize,
    reporter: Reporter,
) -> Vec<Option<StatusCode>> {
    let login = with_tries(tries);
    let checks = Arc::new(AtomicUsize::new(0));
    let sender = h2_connection(&login, checks.clone(), reporter).await;
    let statuses = send_all(&sender, bad_logins(sent)).await;
    assert_eq!(
        checks.load(Ordering::SeqCst),
        tries as usize,
        "{reporter:?}: {statuses:?}"
    );
    assert_eq!(login.stats().failed_logins, u64::from(tries));
    statuses
}

#[tokio::test(start_paused = true)]
async fn concurrent_bad_credentials_on_one_http2_connection_get_one_password_check() {
    for reporter in Reporter::ALL {
        let statuses = bad_logins_on_one_connection(1, 50, reporter).await;
        let unauthorized = statuses
            .iter()
            .filter(|status| **status == Some(StatusCode::UNAUTHORIZED))
            .count();
        assert_eq!(unauthorized, 1, "{reporter:?}: {statuses:?}");
        assert!(
            statuses.iter().all(|status| matches!(
                status,
                None | Some(StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS)
            )),
            "{reporter:?}: {statuses:?}"
        );
    }
}

/// An attempt whose outcome only its trailers tell (gRPC's `UNAUTHENTICATED` after a
/// `200`) holds its place until they come: one password check with one try.
#[tokio::test(start_paused = true)]
async fn failures_told_in_trailers_get_no_more_password_checks_than_tries() {
    for reporter in Reporter::ALL {
        let login = with_tries(1);
        let checks = Arc::new(AtomicUsize::new(0));
        let sender = h2_connection(&login, checks.clone(), reporter).await;
        let requests = (0..50)
            .map(|_| request("/watch", Some(BAD_CREDENTIALS)))
            .collect();
        send_all(&sender, requests).await;
        assert_eq!(
            checks.load(Ordering::SeqCst),
            1,
            "{reporter:?}: {}",
            login.stats()
        );
        assert_eq!(login.stats().failed_logins, 1);
    }
}

/// An attempt answered `200` with a stream whose trailers have not come: its place is
/// given back with its first data, not held for as long as the stream lives.
#[tokio::test(start_paused = true)]
async fn a_streaming_answer_gives_its_place_back_with_its_first_data() {
    for reporter in Reporter::ALL {
        let login = with_tries(1);
        let checks = Arc::new(AtomicUsize::new(0));
        let mut sender = h2_connection(&login, checks.clone(), reporter).await;
        let response = within(
            PATIENCE,
            sender.send_request(request("/events", Some(BAD_CREDENTIALS))),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut events = response.into_body();
        let event = within(PATIENCE, events.frame()).await.unwrap().unwrap();
        assert_eq!(event.into_data().unwrap(), "event\n");
        // The stream lives on; the next attempt is checked all the same.
        let statuses = send_all(&sender, bad_logins(1)).await;
        assert_eq!(statuses, [Some(StatusCode::UNAUTHORIZED)], "{reporter:?}");
        assert_eq!(checks.load(Ordering::SeqCst), 1, "{reporter:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_gets_as_many_password_checks_as_it_has_tries() {
    for reporter in Reporter::ALL {
        bad_logins_on_one_connection(3, 20, reporter).await;
    }
}

#[tokio::test(start_paused = true)]
async fn requests_without_credentials_are_not_held_back() {
    for reporter in Reporter::ALL {
        let login = Login::builder().max_auth_tries(1).build().unwrap();
        let checks = Arc::new(AtomicUsize::new(0));
        let sender = h2_connection(&login, checks, reporter).await;
        let statuses = send_all(&sender, (0..20).map(|_| request("/", None)).collect()).await;
        assert!(
            statuses
                .iter()
                .all(|status| *status == Some(StatusCode::OK)),
            "{reporter:?}: {statuses:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn once_logged_in_a_connection_sends_credentials_concurrently() {
    for reporter in Reporter::ALL {
        let login = Login::builder().max_auth_tries(1).build().unwrap();
        let checks = Arc::new(AtomicUsize::new(0));
        let sender = h2_connection(&login, checks, reporter).await;
        let good = "Basic YWxpY2U6c2VjcmV0"; // alice:secret
        let statuses = send_all(&sender, vec![request("/welcome", Some(good))]).await;
        assert_eq!(statuses, [Some(StatusCode::OK)]);
        let began = tokio::time::Instant::now();
        let statuses = send_all(
            &sender,
            (0..20).map(|_| request("/account", Some(good))).collect(),
        )
        .await;
        assert!(
            statuses
                .iter()
                .all(|status| *status == Some(StatusCode::OK))
        );
        // 50 ms each, all at once rather than one after another.
        assert!(
            began.elapsed() < Duration::from_millis(200),
            "{:?}",
            began.elapsed()
        );
    }
}

/// A service that checks credentials in `call` itself, as tonic's interceptors and
/// tower-http's header validators do, and fails them all.
#[derive(Clone)]
struct ChecksInCall(Arc<AtomicUsize>);

impl tower::Service<http::Request<hyper::body::Incoming>> for ChecksInCall {
    type Response = http::Response<Empty<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        let mut response = http::Response::new(Empty::new());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        std::future::ready(Ok(response))
    }
}

#[tokio::test(start_paused = true)]
async fn a_service_that_checks_in_call_is_called_only_once_admitted() {
    for reporter in Reporter::ALL {
        let login = with_tries(1);
        let checks = Arc::new(AtomicUsize::new(0));
        let sender = h2_connection_to(
            &login,
            reporter.http(ChecksInCall(checks.clone()), StatusClassifier::default()),
        )
        .await;
        let statuses = send_all(&sender, bad_logins(50)).await;
        assert_eq!(
            checks.load(Ordering::SeqCst),
            1,
            "{reporter:?}: {statuses:?}"
        );
    }
}

/// A request with credentials sent while the connection's first login is in flight
/// waits for a place; once that login succeeds (reported in the handler, as the
/// examples do), the connection is logged in and the request should go on. Here the
/// login's answer is a stream whose first frame has not come (a gRPC subscription, a
/// server-sent event stream before its first event).
#[tokio::test(start_paused = true)]
async fn a_request_waiting_behind_a_login_goes_on_once_that_login_succeeds() {
    for reporter in Reporter::ALL {
        let login = with_tries(1);
        let entered = Arc::new(tokio::sync::Notify::new());
        let notify = entered.clone();
        let app = Router::new()
            .route(
                "/subscribe",
                get(move |conn: ConnExtensions| {
                    let entered = notify.clone();
                    async move {
                        entered.notify_one();
                        // The request behind arrives meanwhile.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        conn.login_session().unwrap().succeeded();
                        // Events come when they come: none yet.
                        let events = futures_util::stream::pending::<
                            Result<Frame<Bytes>, std::convert::Infallible>,
                        >();
                        axum::body::Body::new(StreamBody::new(events))
                    }
                }),
            )
            .route("/account", get(|| async { "balance: 0\n" }));
        let mut sender =
            h2_connection_to(&login, reporter.http(app, StatusClassifier::default())).await;
        let good = "Bearer secret";
        let mut subscriber = sender.clone();
        let subscription = tokio::spawn(async move {
            subscriber
                .send_request(request("/subscribe", Some(good)))
                .await
        });
        within(PATIENCE, entered.notified()).await;
        let account = tokio::spawn({
            let request = request("/account", Some(good));
            let response = sender.send_request(request);
            async move { response.await.map(|response| response.status()) }
        });
        let subscribed = within(PATIENCE, subscription).await.unwrap().unwrap();
        assert_eq!(subscribed.status(), StatusCode::OK, "{reporter:?}");
        assert!(login.stats().authenticated >= 1, "{reporter:?}");
        let answered = tokio::time::timeout(PATIENCE, account).await;
        assert!(
            matches!(answered, Ok(Ok(Ok(StatusCode::OK)))),
            "{reporter:?}: the connection logged in, yet the request that came during its \
             login is still held back {PATIENCE:?} later: {answered:?}"
        );
    }
}

/// A request with credentials waiting behind a login when the connection is evicted
/// (here asked for by the handler, as for a ban or the login timeout) is answered `429`
/// at once, not left waiting until the connection is cut.
#[tokio::test(start_paused = true)]
async fn a_request_waiting_behind_a_login_is_refused_once_the_connection_is_evicted() {
    for reporter in Reporter::ALL {
        let login = with_tries(1);
        let entered = Arc::new(tokio::sync::Notify::new());
        let notify = entered.clone();
        let app = Router::new().route(
            "/login",
            get(move |conn: ConnExtensions| {
                let entered = notify.clone();
                async move {
                    entered.notify_one();
                    // The request behind arrives meanwhile.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    conn.login_session().unwrap().evict();
                    // Never answers: the connection is cut after its grace.
                    std::future::pending::<StatusCode>().await
                }
            }),
        );
        let sender =
            h2_connection_to(&login, reporter.http(app, StatusClassifier::default())).await;
        let mut evicting = sender.clone();
        tokio::spawn(async move {
            evicting
                .send_request(request("/login", Some(BAD_CREDENTIALS)))
                .await
        });
        within(PATIENCE, entered.notified()).await;
        let statuses = send_all(&sender, bad_logins(1)).await;
        assert_eq!(
            statuses,
            [Some(StatusCode::TOO_MANY_REQUESTS)],
            "{reporter:?}: the waiting request was left until the connection was cut"
        );
    }
}

/// A visitor who has not logged in loads a page five times within the window (or five
/// pages): each time its script asks the API who is logged in, and the API answers
/// `401`, as APIs do for a request that carries no credentials at all. None of these
/// requests guessed a password; the crate's documentation says its default penalties
/// never ban an honest client.
#[tokio::test(start_paused = true)]
async fn a_401_to_a_request_without_credentials_is_not_a_failed_login() {
    for reporter in Reporter::ALL {
        // The defaults: one try per connection, five failed logins ban.
        let login = Login::builder().build().unwrap();
        let app = Router::new().route("/api/me", get(|| async { StatusCode::UNAUTHORIZED }));
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let http = reporter.http(app.clone(), StatusClassifier::default());
            let sender = h2_connection_to(&login, http).await;
            statuses.extend(send_all(&sender, vec![request("/api/me", None)]).await);
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let stats = login.stats();
        let banned = login.bans().banned_for("192.0.2.1".parse().unwrap());
        assert!(
            banned.is_none() && stats.failed_logins == 0,
            "{reporter:?}: five anonymous page loads, no credentials sent: {} failed \
             logins, banned for {banned:?}; answers {statuses:?}",
            stats.failed_logins,
        );
    }
}

/// With `count_every_failure`, a `401` counts whatever the request carried, as the
/// example servers' contract says.
#[tokio::test(start_paused = true)]
async fn counting_every_failure_counts_a_401_to_a_request_without_credentials() {
    for reporter in Reporter::ALL {
        let login = with_tries(1);
        let app = Router::new().route("/api/me", get(|| async { StatusCode::UNAUTHORIZED }));
        let classify = StatusClassifier::default().count_every_failure(true);
        let sender = h2_connection_to(&login, reporter.http(app, classify)).await;
        let statuses = send_all(&sender, vec![request("/api/me", None)]).await;
        assert_eq!(statuses, [Some(StatusCode::UNAUTHORIZED)], "{reporter:?}");
        let stats = login.stats();
        assert_eq!(stats.failed_logins, 1, "{reporter:?}");
        assert_eq!(stats.evicted_after_failures, 1, "{reporter:?}");
    }
}

/// A reload that lowers the tries below a live connection's failures closes that
/// connection at its next attempt, which is answered `429`: it is not kept open with
/// every attempt refused.
#[tokio::test(start_paused = true)]
async fn tries_lowered_below_a_connections_failures_close_it_at_its_next_attempt() {
    for reporter in Reporter::ALL {
        let login = with_tries(3);
        let checks = Arc::new(AtomicUsize::new(0));
        let sender = h2_connection(&login, checks.clone(), reporter).await;
        for _ in 0..2 {
            let statuses = send_all(&sender, bad_logins(1)).await;
            assert_eq!(statuses, [Some(StatusCode::UNAUTHORIZED)], "{reporter:?}");
        }
        login
            .set_policy(Login::builder().max_auth_tries(1).max_failures(10_000))
            .unwrap();
        let statuses = send_all(&sender, bad_logins(1)).await;
        assert_eq!(
            statuses,
            [Some(StatusCode::TOO_MANY_REQUESTS)],
            "{reporter:?}"
        );
        assert_eq!(checks.load(Ordering::SeqCst), 2, "{reporter:?}");
        assert_eq!(
            login.stats().evicted_after_failures,
            1,
            "{reporter:?}: kept open, every attempt refused"
        );
        within(PATIENCE, async {
            while !sender.is_closed() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

/// An honest API client whose every request carries its (good) token, as bearer-token
/// APIs and gRPC clients do, gives up on a slow answer: a browser's fetch aborted as
/// its user navigates away, a gRPC deadline, a client timeout. With the default
/// classifier no response is ever a success, so its connection never logs in and every
/// such request is an "attempt"; one it gives up on must not be a failed login, nor
/// count toward its peer's ban: nothing was guessed and nothing failed.
#[tokio::test(start_paused = true)]
async fn an_honest_client_that_gives_up_on_slow_answers_to_its_good_token_is_not_banned() {
    for reporter in Reporter::ALL {
        // The defaults' five failures ban the peer.
        let login = Login::builder().max_failures(5).build().unwrap();
        for _navigation in 0..5 {
            let sender = h2_connection(&login, Arc::default(), reporter).await;
            let mut sender = sender.clone();
            // `/account` answers `200` after 50 ms; the client gives up after 10 ms.
            let given_up = tokio::time::timeout(
                Duration::from_millis(10),
                sender.send_request(request("/account", Some("Bearer good-token"))),
            )
            .await;
            assert!(
                given_up.is_err(),
                "{reporter:?}: answered before it gave up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = login.stats();
        assert!(
            stats.failed_logins == 0
                && login
                    .bans()
                    .banned_for("192.0.2.1".parse().unwrap())
                    .is_none(),
            "{reporter:?}: {} failed logins, {} connections evicted, banned for {:?}, for \
             five requests with a good token given up before their answer",
            stats.failed_logins,
            stats.evicted_after_failures,
            login.bans().banned_for("192.0.2.1".parse().unwrap()),
        );
    }
}

/// An attacker with an account of its own (a free sign-up) logs in on an HTTP/2
/// connection, then sends 50 guesses at another user's password at once on it. The
/// connection has one try (`max_auth_tries(1)`), and the peer is banned at its fifth
/// failure: logging in first must not buy the connection 50 password checks at once,
/// which the gate gives a connection not logged in only one at a time.
#[tokio::test(start_paused = true)]
async fn logging_in_first_buys_no_concurrent_password_checks_for_other_credentials() {
    for reporter in Reporter::ALL {
        // The defaults: one try per connection, five failed logins ban.
        let login = Login::builder().build().unwrap();
        let checks = Arc::new(AtomicUsize::new(0));
        let sender = h2_connection(&login, checks.clone(), reporter).await;
        let own = "Basic bWFsbG9yeTpvd24="; // mallory:own
        let statuses = send_all(&sender, vec![request("/welcome", Some(own))]).await;
        assert_eq!(statuses, [Some(StatusCode::OK)], "{reporter:?}");
        let statuses = send_all(&sender, bad_logins(50)).await;
        let checked = checks.load(Ordering::SeqCst);
        assert!(
            checked <= 1,
            "{reporter:?}: logged in as itself, the connection had {checked} of 50 guesses \
             checked at once with one try; {}; answers {statuses:?}",
            login.stats()
        );
    }
}

/// The same attacker guesses through a login form: its guesses carry no credentials in
/// their headers, and the service's `is_attempt` picks the form's path. Logged in with
/// its own credentials or not, the connection's form posts wait for its tries.
#[tokio::test(start_paused = true)]
async fn logging_in_first_buys_no_concurrent_guesses_through_a_login_form() {
    for reporter in Reporter::ALL {
        let login = Login::builder().build().unwrap();
        let checks = Arc::new(AtomicUsize::new(0));
        let http = reporter.http(app(checks.clone()), LoginFormByPath);
        let sender = h2_connection_to(&login, http).await;
        let own = "Basic bWFsbG9yeTpvd24="; // mallory:own
        let statuses = send_all(&sender, vec![request("/welcome", Some(own))]).await;
        assert_eq!(statuses, [Some(StatusCode::OK)], "{reporter:?}");
        let guesses = (0..50).map(|_| request("/login", None)).collect();
        let statuses = send_all(&sender, guesses).await;
        let checked = checks.load(Ordering::SeqCst);
        assert!(
            checked <= 1,
            "{reporter:?}: logged in as itself, the connection had {checked} of 50 form \
             guesses checked at once with one try; {}; answers {statuses:?}",
            login.stats()
        );
    }
}

/// A login form posts its credentials in the body, where the default `is_attempt` does
/// not look; `count_every_failure` counts its failures but holds nothing, so its
/// documentation points such a service to an `is_attempt` that picks the form's path.
/// With one, 50 form guesses sent at once on one HTTP/2 connection with one try get
/// one password check, as 50 guesses in an `Authorization` header do.
#[tokio::test(start_paused = true)]
async fn a_login_form_picked_by_its_path_holds_concurrent_guesses_to_the_connections_tries() {
    for reporter in Reporter::ALL {
        let login = with_tries(1);
        let checks = Arc::new(AtomicUsize::new(0));
        let http = reporter.http(app(checks.clone()), LoginFormByPath);
        let sender = h2_connection_to(&login, http).await;
        let guesses = (0..50).map(|_| request("/login", None)).collect();
        let statuses = send_all(&sender, guesses).await;
        assert_eq!(
            checks.load(Ordering::SeqCst),
            1,
            "{reporter:?}: {}; answers {statuses:?}",
            login.stats()
        );
        assert_eq!(login.stats().failed_logins, 1, "{reporter:?}");
    }
}
