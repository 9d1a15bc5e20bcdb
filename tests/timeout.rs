//! The timeout layer on paused time over in-memory streams.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream},
    time::Instant,
};
use tower::{Layer, ServiceExt, service_fn};
use tower_bouncer::{
    BoxError, ConfigError, Conn,
    timeout::{TimedIo, TimeoutBuilder, TimeoutError, TimeoutLayer},
};

use support::*;

type Timed = Conn<TimedIo<DuplexStream>>;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Idle timeouts fire between S and S + S/8 after the last byte: the timer samples the
/// byte counts every eighth of the timeout.
fn assert_idle_expiry(elapsed: Duration, last_byte: Duration, idle: Duration) {
    let earliest = last_byte + idle;
    assert!(
        elapsed >= earliest && elapsed <= earliest + idle / 8,
        "closed at {elapsed:?}, expected {earliest:?} to {:?}",
        earliest + idle / 8
    );
}

fn layer(builder: TimeoutBuilder) -> TimeoutLayer {
    builder.build().unwrap()
}

/// The deadline that closed a connection.
fn expired(outcome: Result<(), BoxError>) -> TimeoutError {
    let error = outcome.expect_err("the connection should have timed out");
    let io = error
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    *io.get_ref()
        .unwrap()
        .downcast_ref::<TimeoutError>()
        .unwrap()
}

/// Reads and discards until the client closes: a protocol that never times anything
/// out itself.
async fn drain(mut conn: Timed) -> Result<(), BoxError> {
    let mut sink = Vec::new();
    conn.io_mut().read_to_end(&mut sink).await?;
    Ok(())
}

/// A line protocol: answers each line, marking each as a finished request.
async fn lines(conn: Timed) -> Result<(), BoxError> {
    let timer = conn.request_timer().unwrap();
    let mut io = BufReader::new(conn.into_io());
    let mut line = String::new();
    while io.read_line(&mut line).await? > 0 {
        timer.finish();
        io.get_mut().write_all(b"ok\n").await?;
        line.clear();
        timer.next(io.buffer());
    }
    Ok(())
}

/// Spawns one connection through `layer` and `protocol`; returns its task and the
/// client's end.
fn open<F, Fut>(
    layer: &TimeoutLayer,
    protocol: F,
) -> (tokio::task::JoinHandle<Result<(), BoxError>>, DuplexStream)
where
    F: FnMut(Timed) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let (conn, client) = duplex_conn("192.0.2.1:1");
    let service = layer.layer(service_fn(protocol));
    (tokio::spawn(service.oneshot(conn)), client)
}

#[tokio::test(start_paused = true)]
async fn a_connection_has_a_request_timer_only_under_a_request_timeout() {
    let (bare, _client) = duplex_conn("192.0.2.1:1000");
    assert!(bare.request_timer().is_none(), "no timeout layer");
    for (builder, expected) in [
        (TimeoutLayer::builder().idle(secs(10)), false),
        (TimeoutLayer::builder().request(secs(10)), true),
    ] {
        let (seen, mut sees) = tokio::sync::mpsc::unbounded_channel();
        let service = layer(builder).layer(service_fn(move |conn: Timed| {
            seen.send(conn.request_timer().is_some()).unwrap();
            async { Ok::<_, BoxError>(()) }
        }));
        let (conn, _client) = duplex_conn("192.0.2.1:1000");
        within(secs(60), service.oneshot(conn)).await.unwrap();
        assert_eq!(sees.recv().await, Some(expected));
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_at_the_idle_timeout() {
    let timeouts = layer(TimeoutLayer::builder().idle(secs(10)));
    let began = Instant::now();
    let (connection, _client) = open(&timeouts, drain);
    assert_eq!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::Idle(secs(10))
    );
    assert_eq!(began.elapsed(), secs(10));
    assert_eq!(timeouts.stats().idle, 1);
}

#[tokio::test(start_paused = true)]
async fn a_reload_holds_new_connections_to_new_deadlines_and_live_ones_to_theirs() {
    let timeouts = layer(TimeoutLayer::builder().idle(secs(60)));
    let began = Instant::now();
    let (before, _client) = open(&timeouts, drain);
    tokio::task::yield_now().await;
    timeouts
        .set_deadlines(TimeoutLayer::builder().idle(secs(10)))
        .unwrap();
    let (after, _other) = open(&timeouts, drain);
    assert_eq!(
        expired(within(secs(600), after).await.unwrap()),
        TimeoutError::Idle(secs(10))
    );
    assert_eq!(began.elapsed(), secs(10));
    assert_eq!(
        expired(within(secs(600), before).await.unwrap()),
        TimeoutError::Idle(secs(60))
    );
    // One set of counters, across the reload.
    assert_eq!(timeouts.stats().idle, 2);
    // A reload that cannot work changes nothing.
    assert_eq!(
        timeouts.set_deadlines(TimeoutLayer::builder()).unwrap_err(),
        ConfigError::Empty {
            needs: "a first-byte, idle, request or lifetime timeout"
        }
    );
    let (last, _third) = open(&timeouts, drain);
    assert_eq!(
        expired(within(secs(600), last).await.unwrap()),
        TimeoutError::Idle(secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn bytes_read_postpone_the_idle_timeout() {
    let timeouts = layer(TimeoutLayer::builder().idle(secs(10)));
    let began = Instant::now();
    let (connection, mut client) = open(&timeouts, drain);
    tokio::time::sleep(secs(6)).await;
    client.write_all(b"x").await.unwrap();
    assert_eq!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::Idle(secs(10))
    );
    assert_idle_expiry(began.elapsed(), secs(6), secs(10));
}

#[tokio::test(start_paused = true)]
async fn bytes_written_count_as_activity_too() {
    let timeouts = layer(TimeoutLayer::builder().idle(secs(10)));
    let began = Instant::now();
    let (connection, _client) = open(&timeouts, |mut conn: Timed| async move {
        tokio::time::sleep(secs(7)).await;
        conn.io_mut().write_all(b"still here\n").await?;
        std::future::pending::<()>().await;
        Ok(())
    });
    assert_eq!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::Idle(secs(10))
    );
    assert_idle_expiry(began.elapsed(), secs(7), secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_first_byte_timeout() {
    let timeouts = layer(TimeoutLayer::builder().first_byte(secs(5)).idle(secs(60)));
    let began = Instant::now();
    let (connection, _client) = open(&timeouts, drain);
    assert_eq!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::FirstByte(secs(5))
    );
    assert_eq!(began.elapsed(), secs(5));

    // One byte in time, and the first-byte deadline is gone: idle takes over.
    let began = Instant::now();
    let (connection, mut client) = open(&timeouts, drain);
    tokio::time::sleep(secs(4)).await;
    client.write_all(b"x").await.unwrap();
    assert_eq!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::Idle(secs(60))
    );
    assert_idle_expiry(began.elapsed(), secs(4), secs(60));
    assert_eq!(timeouts.stats().first_byte, 1);
}

#[tokio::test(start_paused = true)]
async fn a_trickled_request_is_cut_at_the_request_deadline() {
    let timeouts = layer(TimeoutLayer::builder().request(secs(10)).idle(secs(3)));
    let began = Instant::now();
    let (connection, mut client) = open(&timeouts, lines);
    // A byte every two seconds keeps the idle timeout away, but never ends the line.
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(secs(2)).await;
            if client.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    assert_eq!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::Request(secs(10))
    );
    // The request started with the first byte, at 2 s.
    assert_eq!(began.elapsed(), secs(12));
    trickle.abort();
}

#[tokio::test(start_paused = true)]
async fn requests_that_finish_in_time_are_never_cut() {
    let timeouts = layer(TimeoutLayer::builder().request(secs(10)));
    let (connection, client) = open(&timeouts, lines);
    let mut client = BufReader::new(client);
    let mut answer = String::new();
    // A minute of lines, each taking 8 seconds to arrive.
    for _ in 0..8 {
        client.get_mut().write_all(b"sl").await.unwrap();
        tokio::time::sleep(secs(8)).await;
        client.get_mut().write_all(b"ow\n").await.unwrap();
        answer.clear();
        client.read_line(&mut answer).await.unwrap();
        assert_eq!(answer, "ok\n");
        tokio::time::sleep(secs(30)).await;
    }
    drop(client);
    within(secs(600), connection).await.unwrap().unwrap();
    assert_eq!(timeouts.stats().request, 0);
}

/// A client that sends a whole line and the start of the next in one write, then stays
/// silent: the protocol's reader takes both in one read, so no later read starts the
/// half line's request. The protocol tells the timer what it read past the first line,
/// and the half line is held to the request timeout, not the idle timeout.
#[tokio::test(start_paused = true)]
async fn a_half_line_read_with_a_whole_one_is_held_to_the_request_timeout() {
    let timeouts = layer(TimeoutLayer::builder().request(secs(10)).idle(secs(60)));
    let began = Instant::now();
    let (connection, client) = open(&timeouts, lines);
    let mut client = BufReader::new(client);
    client.get_mut().write_all(b"whole\nhal").await.unwrap();
    let mut answer = String::new();
    client.read_line(&mut answer).await.unwrap();
    assert_eq!(answer, "ok\n");
    assert_eq!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::Request(secs(10)),
        "after {:?}",
        began.elapsed()
    );
    assert_eq!(began.elapsed(), secs(10));
    assert_eq!(timeouts.stats().request, 1);
}

/// A client pipelines two whole lines in one write: `slow`, which the server takes 15 s
/// to answer, and `quick`. The protocol marks each line's end as the module's example
/// does, right after reading it, and tells the timer what its reader holds once it has
/// answered: the whole `quick` line. The server's 15 s on the line before it are not
/// the client's, and neither line should be cut at the 10 s request timeout (as the
/// HTTP adapter does not cut a request pipelined behind a slow answer).
#[tokio::test(start_paused = true)]
async fn a_whole_line_pipelined_behind_a_slow_one_is_not_timed_through_the_servers_wait() {
    let timeouts = layer(TimeoutLayer::builder().request(secs(10)).idle(secs(60)));
    let (connection, client) = open(&timeouts, |conn: Timed| async move {
        let timer = conn.request_timer().unwrap();
        let mut io = BufReader::new(conn.into_io());
        let mut line = String::new();
        while io.read_line(&mut line).await? > 0 {
            timer.finish();
            if line.trim() == "slow" {
                tokio::time::sleep(secs(15)).await;
            }
            io.get_mut().write_all(b"ok\n").await?;
            line.clear();
            timer.next(io.buffer());
        }
        Ok(())
    });
    let mut client = BufReader::new(client);
    client.get_mut().write_all(b"slow\nquick\n").await.unwrap();
    let mut answers = String::new();
    for _ in 0..2 {
        if within(secs(60), client.read_line(&mut answers))
            .await
            .unwrap_or(0)
            == 0
        {
            break;
        }
    }
    drop(client);
    let ended = within(secs(60), connection).await.unwrap();
    assert_eq!(
        (answers.as_str(), timeouts.stats().request),
        ("ok\nok\n", 0),
        "the connection ended {ended:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_minimum_rate_extends_a_moving_request_and_cuts_a_trickle() {
    let timeouts = layer(
        TimeoutLayer::builder()
            .request(secs(5))
            .request_min_rate(100, secs(30)),
    );
    // 120 bytes a second for 20 s: each second earns 1.2 s, so it never runs out.
    let (connection, client) = open(&timeouts, lines);
    let mut client = BufReader::new(client);
    for _ in 0..20 {
        client.get_mut().write_all(&[b'a'; 120]).await.unwrap();
        tokio::time::sleep(secs(1)).await;
    }
    client.get_mut().write_all(b"\n").await.unwrap();
    let mut answer = String::new();
    client.read_line(&mut answer).await.unwrap();
    assert_eq!(answer, "ok\n");
    drop(client);
    within(secs(600), connection).await.unwrap().unwrap();

    // 10 bytes a second: 5 s plus a tenth of the elapsed time; out of time at 5.56 s.
    let began = Instant::now();
    let (connection, mut client) = open(&timeouts, lines);
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if client.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(matches!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::Request(_)
    ));
    let elapsed = began.elapsed();
    assert!(
        elapsed > Duration::from_millis(5500) && elapsed < Duration::from_millis(5700),
        "{elapsed:?}"
    );
    trickle.abort();
}

#[tokio::test(start_paused = true)]
async fn at_its_lifetime_a_connection_winds_down_gracefully() {
    let timeouts = layer(
        TimeoutLayer::builder()
            .lifetime(secs(60))
            .lifetime_grace(secs(5)),
    );
    let began = Instant::now();
    let (connection, _client) = open(&timeouts, |mut conn: Timed| async move {
        let close = conn.graceful_close();
        close.requested().await;
        Ok(())
    });
    within(secs(600), connection).await.unwrap().unwrap();
    assert_eq!(began.elapsed(), secs(60));
    assert_eq!(timeouts.stats().lifetime_wound_down, 1);
    assert_eq!(timeouts.stats().lifetime_cut, 0);
}

#[tokio::test(start_paused = true)]
async fn past_its_lifetime_and_grace_a_connection_is_cut() {
    let timeouts = layer(
        TimeoutLayer::builder()
            .lifetime(secs(60))
            .lifetime_grace(secs(5)),
    );
    let began = Instant::now();
    let (connection, _client) = open(&timeouts, |_conn: Timed| std::future::pending());
    assert_eq!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::Lifetime(secs(60))
    );
    assert_eq!(began.elapsed(), secs(65));
    assert_eq!(timeouts.stats().lifetime_cut, 1);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_closes_the_connection_even_if_the_protocol_ignores_the_stream() {
    let timeouts = layer(TimeoutLayer::builder().first_byte(secs(5)));
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let (connection, mut client) = open(&timeouts, move |conn: Timed| {
        let flag = flag.clone();
        async move {
            // Holds the stream and waits on something else entirely.
            let _stream = conn;
            let _guard = SetOnDrop(flag);
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    assert_eq!(
        expired(within(secs(600), connection).await.unwrap()),
        TimeoutError::FirstByte(secs(5))
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "the protocol's future was dropped"
    );
    let mut byte = [0u8; 1];
    assert_eq!(
        client.read(&mut byte).await.unwrap(),
        0,
        "the stream is closed"
    );
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_ends_on_its_own_is_not_counted() {
    let timeouts = layer(TimeoutLayer::builder().idle(secs(10)).first_byte(secs(5)));
    let (connection, mut client) = open(&timeouts, drain);
    client.write_all(b"bye").await.unwrap();
    drop(client);
    within(secs(600), connection).await.unwrap().unwrap();
    let stats = timeouts.stats();
    assert_eq!((stats.idle, stats.first_byte), (0, 0));
}

#[test]
fn bad_timeouts_are_refused_when_built() {
    assert!(matches!(
        TimeoutLayer::builder().build(),
        Err(ConfigError::Empty { .. })
    ));
    assert_eq!(
        TimeoutLayer::builder()
            .idle(Duration::ZERO)
            .build()
            .unwrap_err(),
        ConfigError::Zero { setting: "idle" }
    );
    assert!(matches!(
        TimeoutLayer::builder()
            .request_min_rate(100, secs(10))
            .build(),
        Err(ConfigError::Inconsistent { .. })
    ));
    assert!(matches!(
        TimeoutLayer::builder()
            .request(secs(10))
            .request_min_rate(100, secs(5))
            .build(),
        Err(ConfigError::Inconsistent { .. })
    ));
    assert!(matches!(
        TimeoutLayer::builder()
            .request(secs(10))
            .request_min_rate(0, secs(20))
            .build(),
        Err(ConfigError::Zero { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_request_read_on_another_task_is_timed_too() {
    // A protocol that reads on a task of its own, and awaits it. (A protocol that lets
    // go of the stream while another task keeps it, as hyper does with an upgrade, is
    // the HTTP adapter's to watch: see tests/upgrade.rs.)
    let timeouts = layer(TimeoutLayer::builder().request(secs(10)));
    let began = Instant::now();
    let (connection, mut client) = open(&timeouts, |conn: Timed| async move {
        tokio::spawn(lines(conn)).await.unwrap()
    });
    tokio::time::sleep(secs(1)).await;
    client.write_all(b"no newline").await.unwrap();
    let outcome = within(secs(60), connection).await.unwrap();
    assert_eq!(expired(outcome), TimeoutError::Request(secs(10)));
    assert_eq!(began.elapsed(), secs(11));
}
