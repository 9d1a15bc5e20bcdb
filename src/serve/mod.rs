//! The accept loop: accepts connections and runs a connection-level service on each.
//!
//! [`Server`] (or the shortcut [`serve`]) is what turns a listener and a
//! `Service<Conn<IO>>` into a running server:
//!
//! - it waits for the service's `poll_ready` before each accept, so a layer that is
//!   full pauses accepting and new connections wait in the kernel's backlog;
//! - it survives accept errors. Only an error that means the listener is gone ends the
//!   loop (`EBADF`, `ENOTSOCK`, `EFAULT`, and `EINVAL` on Linux). `EMFILE`, `ENFILE`,
//!   `ENOBUFS` and `ENOMEM` are logged (at most once every few seconds) and retried
//!   after a growing back-off; out of descriptors, the clients waiting in the backlog
//!   are closed rather than left hanging, thanks to a descriptor kept in reserve (see
//!   [`Server::reserve_descriptor`]). Any other error, such as `ECONNABORTED` or a custom
//!   listener's failed handshake, concerns one connection and is skipped at once, so no
//!   client can stop the server or slow down accepts for the others; only a long run of
//!   them pauses the loop now and then, so it never spins (see [`Listener::accept`]);
//! - it runs each connection in its own task, inside a `debug` tracing span carrying the
//!   peer address; a connection that fails or panics is logged and never stops the loop;
//! - on shutdown it stops accepting, raises every connection's [`GracefulClose`], waits up
//!   to a drain deadline, cuts what is left, and reports both counts.
//!
//! To keep `axum::serve` or tonic's `Server`, put the layers in a [`ProtectedListener`]
//! instead: it runs this loop, and hands the framework the connections the layers admit
//! (see [its module](protected) for what that path cannot do).
//!
//! # Where the accept loop runs
//!
//! Run the loop in a task of its own, `tokio::spawn(server.serve(service))`, rather
//! than in `#[tokio::main]`'s own future. That future runs on the main thread, which
//! is no runtime worker: each connection's task, spawned from there, has to wake a
//! worker to start, and each connection's state, which the layers allocate when they
//! are called in the loop, is allocated on one thread and freed on another. Spawned
//! from a worker, a connection's task starts on that worker. On the benchmarks' 2-core
//! machine that made a server with one request per connection serve about 1.4 times
//! the connections a second, `axum::serve`'s loop as much as this one (BENCHMARKS.md).
//! [`Bouncer`](crate::bouncer::Bouncer)'s `serve` methods do it themselves.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::service_fn;
//! use tower_bouncer::{Conn, serve::Server};
//! use tokio::{io::AsyncWriteExt, net::TcpStream};
//!
//! # async fn run() -> std::io::Result<()> {
//! let greeter = service_fn(|mut conn: Conn<TcpStream>| async move {
//!     conn.io_mut().write_all(b"hello\n").await
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let report = Server::new(listener)
//!     .drain_timeout(Duration::from_secs(5))
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
//!     .serve(greeter)
//!     .await?;
//! println!("{} connections drained, {} cut", report.drained, report.cut);
//! # Ok(())
//! # }
//! ```

mod accept_error;
mod listener;
pub mod protected;
mod reserve;
mod signal;

use std::{
    future::{Future, Pending, poll_fn},
    io,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::task::JoinHandle;
use tower::Service;

use crate::{
    BoxError, Conn, GracefulClose,
    metrics::{
        ACCEPT_PAUSE_DURATION, ACCEPT_PAUSED, ACTIVE_CONNECTIONS, CONNECTION_DURATION, Level,
        Seconds, Stopwatch,
    },
    throttle::LogThrottle,
};
use accept_error::{AcceptError, Backoff};
pub use listener::Listener;
pub use protected::{Handoff, ProtectedIo, ProtectedListener};
use reserve::{ReserveDescriptor, Shed, is_descriptor_shortage};
use signal::Shutdown;

/// The first back-off after an accept fails for lack of resources; it doubles from here.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// How often, at most, a persistent accept failure is logged.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Serves `service` on every connection from `listener` until the listener fails.
///
/// Shorthand for `Server::new(listener).serve(service)`; use [`Server`] for graceful
/// shutdown.
pub async fn serve<L, S>(listener: L, service: S) -> io::Result<ShutdownReport>
where
    L: Listener,
    S: Service<Conn<L::Io>, Response = ()>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
{
    Server::new(listener).serve(service).await
}

/// The accept loop, with its shutdown signal and drain deadline.
///
/// See the [module documentation](self).
#[derive(Debug)]
#[must_use = "a server does nothing until `serve` is awaited"]
pub struct Server<L, F = Pending<()>> {
    listener: L,
    shutdown: F,
    drain_timeout: Duration,
    max_accept_backoff: Duration,
    reserve_descriptor: bool,
    /// The `listener` label of its metrics.
    name: String,
}

impl<L: Listener> Server<L> {
    /// A server on `listener` that runs until the listener fails, with a 10 second drain
    /// deadline, accept back-off capped at 1 second, and (on Unix) a descriptor in
    /// reserve.
    pub fn new(listener: L) -> Self {
        Self {
            listener,
            shutdown: std::future::pending(),
            drain_timeout: Duration::from_secs(10),
            max_accept_backoff: Duration::from_secs(1),
            reserve_descriptor: cfg!(unix),
            name: DEFAULT_NAME.to_owned(),
        }
    }
}

impl<L: Listener, F> Server<L, F> {
    /// Shuts down gracefully when `signal` completes: stop accepting, ask every connection
    /// to close gracefully, wait up to the [drain deadline](Self::drain_timeout), then cut
    /// the connections that are left.
    pub fn with_graceful_shutdown<G>(self, signal: G) -> Server<L, G>
    where
        G: Future<Output = ()>,
    {
        self.map_shutdown(|_| signal)
    }

    /// The same server, its shutdown signal made from the one it had.
    pub(crate) fn map_shutdown<G>(self, make: impl FnOnce(F) -> G) -> Server<L, G> {
        Server {
            listener: self.listener,
            shutdown: make(self.shutdown),
            drain_timeout: self.drain_timeout,
            max_accept_backoff: self.max_accept_backoff,
            reserve_descriptor: self.reserve_descriptor,
            name: self.name,
        }
    }

    /// The server's name in its metrics (feature `metrics`), the value of their
    /// `listener` label, to tell a public listener from an internal one; `"default"`
    /// unless set. Keep it to a few fixed names: each is a series of its own.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long shutdown waits for live connections to finish before cutting them.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The longest pause between accept attempts while the process is out of
    /// descriptors or memory. The pause starts at 5 ms and doubles up to this cap.
    pub fn max_accept_backoff(mut self, max: Duration) -> Self {
        self.max_accept_backoff = max.max(MIN_ACCEPT_BACKOFF);
        self
    }

    /// Keeps one descriptor in reserve (`/dev/null`), so that connections the server
    /// cannot accept for want of descriptors are closed instead of left hanging; on by
    /// default on Unix, where `/dev/null` is.
    ///
    /// Out of descriptors (`EMFILE`, `ENFILE`), when an accept fails the loop closes its
    /// spare, accepts and closes the connections waiting in the backlog (256 at a time),
    /// and opens the spare again. With the backlog empty it goes back to accepting at
    /// once, without spinning since the accept waits for a client: a client that comes
    /// while the shortage lasts sees its connection closed as soon as it arrives, and
    /// the first to come after a descriptor frees is served. Where the backlog cannot
    /// be emptied (no spare could be opened again, say) the loop backs off as it does
    /// without the reserve, where a client waits in the backlog until a descriptor
    /// frees, and then up to one back-off pause.
    pub fn reserve_descriptor(mut self, reserve: bool) -> Self {
        self.reserve_descriptor = reserve;
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the accept loop until the shutdown signal completes or the listener fails,
    /// then drains the live connections.
    ///
    /// # Errors
    ///
    /// An error that means the listener is gone (`EBADF`, `ENOTSOCK`, `EFAULT`, and
    /// `EINVAL` on Linux), or the service failing in `poll_ready` (wrapped in
    /// `io::Error::other`). Live connections are drained before the error is
    /// returned.
    ///
    /// The server's metrics (feature `metrics`) are registered when this is called,
    /// with the recorder installed then, as the layers' are when they are built.
    pub fn serve<S>(self, service: S) -> impl Future<Output = io::Result<ShutdownReport>>
    where
        F: Future<Output = ()>,
        S: Service<Conn<L::Io>, Response = ()>,
        S::Error: Into<BoxError> + 'static,
        S::Future: Send + 'static,
    {
        let metrics = ServeMetrics::new(&self.name);
        self.run(service, metrics)
    }

    async fn run<S>(self, mut service: S, metrics: ServeMetrics) -> io::Result<ShutdownReport>
    where
        F: Future<Output = ()>,
        S: Service<Conn<L::Io>, Response = ()>,
        S::Error: Into<BoxError> + 'static,
        S::Future: Send + 'static,
    {
        let Server {
            mut listener,
            shutdown,
            drain_timeout,
            max_accept_backoff,
            reserve_descriptor,
            name: _,
        } = self;
        let mut shutdown = Shutdown::new(shutdown);
        let mut connections = Connections::default();
        let mut backoff = Backoff::new(MIN_ACCEPT_BACKOFF, max_accept_backoff);
        let mut reserve = ReserveDescriptor::new(reserve_descriptor);
        // A listener bound to one address accepts every connection on it: no need to
        // ask each socket.
        let bound = listener
            .local_addr()
            .ok()
            .filter(|addr| !addr.ip().is_unspecified());
        let error_log = LogThrottle::new(ACCEPT_ERROR_LOG_INTERVAL);

        let mut paused = Pause::new(&metrics);
        let outcome = loop {
            // Ready before accept: a full service leaves connections in the backlog.
            // Readiness first: the shutdown future is looked at only while the service
            // is not ready, and by the accept just below, which puts it first so that a
            // flood of connections cannot hold a shutdown back (it is polled only once
            // it has woken the loop: see `signal`).
            let ready = tokio::select! {
                biased;
                ready = poll_fn(|cx| {
                    let ready = service.poll_ready(cx).map_err(Into::into);
                    paused.polled(ready.is_pending());
                    ready
                }) => ready,
                () = &mut shutdown => break Ok(()),
            };
            paused.end();
            if let Err(error) = ready {
                tracing::error!(%error, "connection service failed; shutting down");
                break Err(io::Error::other(error));
            }

            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                accepted = listener.accept() => accepted,
            };
            let accepted = accepted
                .map_err(|error| (AcceptError::classify(&error), error))
                .and_then(|(io, peer_addr)| {
                    let local_addr = match bound {
                        Some(addr) => addr,
                        // Fails only if the peer reset the connection since it was
                        // accepted: that one connection is skipped.
                        None => listener
                            .connection_local_addr(&io)
                            .map_err(|error| (AcceptError::Connection, error))?,
                    };
                    Ok(Conn::new(io, peer_addr, local_addr))
                });
            let (class, error) = match accepted {
                Ok(conn) => {
                    backoff.reset();
                    reserve.refill();
                    connections.spawn(&mut service, conn, &metrics);
                    continue;
                }
                Err(failure) => failure,
            };
            let pause = match class {
                AcceptError::Connection => {
                    tracing::debug!(%error, "accept failed for one connection; skipped");
                    let pause = backoff.after_skip();
                    if let Some(pause) = pause
                        && let Some(suppressed) = error_log.allow()
                    {
                        tracing::warn!(%error, ?pause, suppressed, "accepts keep failing; pausing");
                    }
                    pause
                }
                AcceptError::Resources => {
                    let shed = if is_descriptor_shortage(&error) {
                        reserve.shed(&mut listener)
                    } else {
                        Shed::NoSpare
                    };
                    let pause = match shed {
                        // Nothing waits: the next accept waits for a client and closes
                        // it at once if the shortage lasts, or serves it.
                        Shed::Emptied => None,
                        Shed::MoreWaiting => Some(MIN_ACCEPT_BACKOFF),
                        Shed::Failed | Shed::NoSpare => Some(backoff.next_delay()),
                    };
                    if let Some(suppressed) = error_log.allow() {
                        tracing::warn!(%error, ?pause, ?shed, suppressed, "accept failed; backing off");
                    }
                    pause
                }
                AcceptError::Fatal => {
                    tracing::error!(%error, "listener failed; shutting down");
                    break Err(error);
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break Ok(()),
                    () = tokio::time::sleep(pause) => {}
                }
            }
        };

        paused.end();
        // Closing the listener makes the kernel refuse new connections instead of
        // queueing them for a server that will never accept them.
        drop(listener);
        let report = connections.drain(drain_timeout).await;
        tracing::info!(drained = report.drained, cut = report.cut, "server stopped");
        outcome.map(|()| report)
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit, as Go's
/// runtime does when a program starts, and returns the new soft limit.
///
/// Many systems start processes with a soft limit of 1024 descriptors, far below what
/// the kernel allows them. A server left there runs out of descriptors before it runs
/// out of anything else, and a connection cap set from the raised limit is what binds
/// instead. Call it once, at startup.
///
/// # Errors
///
/// If the limit cannot be read or set.
#[cfg(unix)]
pub fn raise_descriptor_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// A server's name in its metrics unless [`Server::name`] sets one.
const DEFAULT_NAME: &str = "default";

/// The accept loop's metrics.
struct ServeMetrics {
    active: Level,
    duration: Seconds,
    paused: Level,
    pause: Seconds,
}

impl ServeMetrics {
    fn new(name: &str) -> Self {
        let listener = [("listener", name)];
        Self {
            active: Level::new(ACTIVE_CONNECTIONS, &listener),
            duration: Seconds::new(CONNECTION_DURATION, &listener),
            paused: Level::new(ACCEPT_PAUSED, &listener),
            pause: Seconds::new(ACCEPT_PAUSE_DURATION, &listener),
        }
    }
}

/// Since when the accept loop waits for its service to be ready, if it does. The wait
/// ends when the loop drops it too (its task aborted, its future dropped in a
/// `select!`): no loop waits any more. The gauge counts the paused loops, each up
/// once and down once: loops of one name (two unnamed listeners, IPv4 and IPv6, are
/// both `default`) share it, and one that ends leaves the others counted.
struct Pause<'a> {
    since: Option<tokio::time::Instant>,
    metrics: &'a ServeMetrics,
}

impl<'a> Pause<'a> {
    fn new(metrics: &'a ServeMetrics) -> Self {
        Self {
            since: None,
            metrics,
        }
    }

    /// The service was polled, and was `pending` or ready.
    fn polled(&mut self, pending: bool) {
        if pending && self.since.is_none() {
            self.since = Some(tokio::time::Instant::now());
            self.metrics.paused.up();
        }
    }

    /// The wait is over, if there was one.
    fn end(&mut self) {
        if let Some(since) = self.since.take() {
            self.metrics.paused.down();
            self.metrics.pause.record(since.elapsed());
        }
    }
}

impl Drop for Pause<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

/// A connection counted in `bouncer.active_connections` while it lives; its duration
/// is recorded when it ends.
struct Served {
    active: Level,
    _duration: Stopwatch,
}

impl Served {
    fn new(metrics: &ServeMetrics) -> Self {
        metrics.active.up();
        Self {
            active: metrics.active.clone(),
            _duration: metrics.duration.start(),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.active.down();
    }
}

/// A connection's task: its service's future, polled and dropped in the connection's
/// span, a panic in it caught and logged with the peer, and the connection counted as
/// served until the task ends or is dropped (cut, aborted, panicked).
///
/// The span is kept here rather than by `tracing`'s `Instrumented` around the task's
/// box: tokio's task cell then holds the box alone, and fits in 128 bytes instead of 256.
#[pin_project::pin_project(PinnedDrop)]
struct ConnectionTask<F> {
    /// The service's future, until it ends: it is dropped then, in the span.
    #[pin]
    connection: Option<F>,
    peer: SocketAddr,
    served: Option<Served>,
    span: tracing::Span,
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for ConnectionTask<F> {
    fn drop(self: Pin<&mut Self>) {
        let mut this = self.project();
        let _entered = this.span.enter();
        this.connection.set(None);
    }
}

impl<F, E> Future for ConnectionTask<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let Some(connection) = this.connection.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| connection.poll(cx)));
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(outcome)) => Ok(outcome),
            Err(panic) => Err(panic),
        };
        // The connection's futures go (and with them its places under the caps), then
        // its count.
        this.connection.set(None);
        this.served.take();
        match outcome {
            Ok(Ok(())) => tracing::trace!("connection closed"),
            Ok(Err(error)) => {
                let error: BoxError = error.into();
                tracing::debug!(%error, "connection ended with an error");
            }
            Err(panic) => {
                let peer = *this.peer;
                tracing::error!(%peer, panic = panic_message(&*panic), "connection panicked");
            }
        }
        Poll::Ready(())
    }
}

/// How a graceful shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections that were live when shutdown began and finished before the deadline.
    pub drained: usize,
    /// Connections still live at the deadline, which were cut.
    pub cut: usize,
}

/// The live connections: for each, its task and its graceful close. Only the accept loop
/// touches the registry, so it takes no lock, and a connection's task writes nothing the
/// other connections' tasks share (a counter of tasks every worker decrements would be
/// a cache line that moves between cores at every connection's end).
#[derive(Default)]
struct Connections {
    live: Vec<(JoinHandle<()>, GracefulClose)>,
    /// How many entries the last look for finished connections kept.
    kept: usize,
}

impl Connections {
    fn spawn<S, IO>(&mut self, service: &mut S, mut conn: Conn<IO>, metrics: &ServeMetrics)
    where
        S: Service<Conn<IO>, Response = ()>,
        S::Error: Into<BoxError> + 'static,
        S::Future: Send + 'static,
    {
        // At `debug`: under an `info` filter, entering a span on every poll of the
        // connection would cost more than the rest of the accept loop's part of a
        // request. The events a connection logs at `info` and above name its peer.
        let peer = conn.peer_addr();
        let span = tracing::debug_span!("conn", %peer);
        let close = conn.graceful_close();
        let called = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                // Made in its box in one go: the stack of connection-level futures is
                // large, and each move of it on its way into the box is a copy.
                Box::pin(ConnectionTask {
                    connection: Some(service.call(conn)),
                    peer,
                    served: None,
                    // Entered while the service is called; put in below.
                    span: tracing::Span::none(),
                })
            }))
        };
        let mut task = match called {
            Ok(task) => task,
            Err(panic) => {
                tracing::error!(parent: &span, %peer, panic = panic_message(&*panic), "connection service panicked");
                return;
            }
        };
        let this = task.as_mut().project();
        *this.span = span;
        *this.served = Some(Served::new(metrics));
        let handle = tokio::spawn(task);
        self.forget_finished();
        self.live.push((handle, close));
    }

    /// Drops the registry's entries of finished connections once it has doubled since
    /// the last look: amortised, each entry is looked at a constant number of times.
    fn forget_finished(&mut self) {
        if self.live.len() >= 64 && self.live.len() >= 2 * self.kept {
            self.live.retain(|(task, _)| !task.is_finished());
            self.kept = self.live.len();
        }
    }

    async fn drain(mut self, timeout: Duration) -> ShutdownReport {
        self.live.retain(|(task, _)| !task.is_finished());
        let live = self.live.len();
        for (_, close) in &self.live {
            close.request_cut_by_caller();
        }
        let mut cut = 0;
        if tokio::time::timeout(timeout, self.wait_all())
            .await
            .is_err()
        {
            for (task, _) in &self.live {
                if !task.is_finished() {
                    task.abort();
                    cut += 1;
                    tracing::debug!("connection cut at the drain deadline");
                }
            }
            self.wait_all().await;
        }
        ShutdownReport {
            drained: live.saturating_sub(cut),
            cut,
        }
    }

    /// Waits for every connection's task to end, forgetting each as it does: a task is
    /// never waited for again once it has ended.
    async fn wait_all(&mut self) {
        while let Some((task, _)) = self.live.last_mut() {
            // A connection that panicked or was cut ended all the same.
            let _ = task.await;
            self.live.pop();
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finished_connections_are_forgotten_as_the_registry_grows() {
        let metrics = ServeMetrics::new("test");
        let mut connections = Connections::default();
        let mut service =
            tower::service_fn(|_: Conn<tokio::io::Empty>| async { Ok::<_, BoxError>(()) });
        let addr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..1_000 {
            let conn = Conn::new(tokio::io::empty(), addr, addr);
            connections.spawn(&mut service, conn, &metrics);
            // Each connection ends before the next comes.
            while !connections.live.last().unwrap().0.is_finished() {
                tokio::task::yield_now().await;
            }
        }
        assert!(connections.live.len() <= 128, "{}", connections.live.len());
        assert_eq!(connections.drain(Duration::from_secs(1)).await.cut, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn live_connections_are_kept_as_the_registry_grows() {
        let metrics = ServeMetrics::new("test");
        let mut connections = Connections::default();
        let mut service = tower::service_fn(|_: Conn<tokio::io::Empty>| {
            std::future::pending::<Result<(), BoxError>>()
        });
        let addr = "127.0.0.1:1".parse().unwrap();
        // Past every look for finished connections, while none has finished.
        for _ in 0..1_000 {
            let conn = Conn::new(tokio::io::empty(), addr, addr);
            connections.spawn(&mut service, conn, &metrics);
        }
        tokio::task::yield_now().await;
        let report = connections.drain(Duration::from_secs(1)).await;
        assert_eq!((report.drained, report.cut), (0, 1_000));
    }

    /// What a subscriber at `debug` wrote, for the test that set it.
    #[derive(Clone, Default)]
    struct Logged(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logged {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs when it is dropped.
    struct LogsItsDrop;

    impl Drop for LogsItsDrop {
        fn drop(&mut self) {
            tracing::debug!("dropped");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_called_polled_and_dropped_in_its_span() {
        let logged = Logged::default();
        let writer = logged.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);

        let metrics = ServeMetrics::new("test");
        let peer = "127.0.0.1:1".parse().unwrap();
        // Whether a callsite is enabled is cached for the whole process, worked out on
        // the thread that first reaches it: a test running beside this one with no
        // subscriber may have cached the connection's span as never enabled. Reached
        // here first, then asked again from this thread.
        Connections::default().spawn(
            &mut tower::service_fn(|_: Conn<tokio::io::Empty>| async { Ok::<_, BoxError>(()) }),
            Conn::new(tokio::io::empty(), peer, peer),
            &metrics,
        );
        tracing::callsite::rebuild_interest_cache();
        let mut connections = Connections::default();
        let mut service = tower::service_fn(|_: Conn<tokio::io::Empty>| {
            tracing::debug!("called");
            async {
                let _guard = LogsItsDrop;
                tracing::debug!("polled");
                std::future::pending::<Result<(), BoxError>>().await
            }
        });
        connections.spawn(
            &mut service,
            Conn::new(tokio::io::empty(), peer, peer),
            &metrics,
        );
        tokio::task::yield_now().await;
        assert_eq!(connections.drain(Duration::from_secs(1)).await.cut, 1);

        let logged = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
        for event in ["called", "polled", "dropped"] {
            let line = logged.lines().find(|line| line.ends_with(event));
            assert!(
                line.is_some_and(|line| line.contains("conn{peer=127.0.0.1:1}")),
                "{logged}"
            );
        }
    }
}
